"""Quantize stage: ModelOpt post-training quantization into the unified Hugging Face checkpoint.

The checkpoint (safetensors + ``hf_quant_config.json``) is what TensorRT-LLM 1.x builds from and
what the CPU reference engine serves. Steps: load the model in the build dtype, score held-out
text, calibrate with our own loop over local (or hub) text, apply the scale fusion that export
would apply and score the simulated-quantization model, export (destructive: the model cannot run
afterwards), then read the export back through the serving loader and score it. The scores, sizes,
timings, versions and input hash go into a manifest beside the weights.

Deciders (``refusal``, ``modelopt_config``, ``misfit_layers``) are pure; ``quantize`` is the edge that
loads models and writes files. The calibration texts come from ``calibration_data.py``, the manifest's
hashes, sizes and versions from ``manifest.py``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import importlib
import io
import json
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from generator.errors import ArtifactCorrupt, PlanRefused, SpecError
from generator.fsutil import atomic_dir, check_writable_target, copy_kept, keep_copy, kept_folder, reusable
from generator.model.calibration_data import calibration_texts
from generator.model.manifest import library_versions, sha256_files, size_report, tensor_table
from generator.resources import data_dir
from generator.spec import KVCacheFormat, QuantFormat, QuantizationSpec, Spec

MANIFEST_NAME = "tritongen-manifest.json"
LOG_NAME = "tritongen-quantize.log"

Progress = Optional[Callable[[str, int, Optional[int]], None]]
"""``progress(stage, done, total)``: stages load, original, calibrate, simulated, export, exported."""

FORMAT_PRESETS = {
    QuantFormat.nvfp4: "NVFP4_DEFAULT_CFG",
    QuantFormat.fp8: "FP8_DEFAULT_CFG",
    QuantFormat.int4_awq: "INT4_AWQ_CFG",
    QuantFormat.int8_sq: "INT8_SMOOTHQUANT_CFG",
}
"""ModelOpt's preset for each weight format (their defaults also keep routers, vision towers ... unquantized)."""

NVFP4_BLOCK = 16

READ_FILES = ("*.safetensors", "*.json", "*.py", "*.model", "*.txt", "*.jinja", "*.tiktoken")
"""The model folder's files a quantization reads (weights, configs, tokenizer, remote code): what the cache key
hashes (other weight copies, .bin or .gguf, are never read)."""


# ------------------------------------------------------------------ deciders


def refusal(q: QuantizationSpec) -> Optional[str]:
    """Why this format combination cannot be produced with ModelOpt 0.47's unified export, or None."""
    if q.kv_cache is KVCacheFormat.int8:
        return (
            "kv_cache int8 cannot be exported: ModelOpt 0.47's unified Hugging Face export writes KV scales "
            "only for FP8 (and NVFP4) KV caches, and ModelOpt has no INT8 KV preset"
        )
    return None


def modelopt_config(q: QuantizationSpec) -> dict[str, Any]:
    """ModelOpt quant_cfg for the spec: the format preset, KV-cache entries, the spec's exclusions.

    The preset's own ``*lm_head*`` exclusion is dropped so that ``exclude_modules`` alone decides
    (it keeps lm_head by default); each pattern disables every quantizer under matching modules.
    """
    import copy

    import modelopt.torch.quantization as mtq

    if q.format is QuantFormat.none:
        cfg: dict[str, Any] = {"quant_cfg": [{"quantizer_name": "*", "enable": False}], "algorithm": "max"}
    else:
        cfg = copy.deepcopy(getattr(mtq, FORMAT_PRESETS[q.format]))
        cfg["quant_cfg"] = [e for e in cfg["quant_cfg"] if e.get("quantizer_name") != "*lm_head*"]
    if q.format is QuantFormat.int4_awq:
        for entry in cfg["quant_cfg"]:
            if entry.get("quantizer_name") == "*weight_quantizer":
                entry["cfg"]["block_sizes"][-1] = q.awq_block_size
    if q.kv_cache is KVCacheFormat.fp8:
        cfg["quant_cfg"] = cfg["quant_cfg"] + copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
    cfg["quant_cfg"] += [{"quantizer_name": f"{pattern}.*", "enable": False} for pattern in q.exclude_modules]
    return cfg


def misfit_layers(linears: dict[str, tuple[int, int]], q: QuantizationSpec) -> list[str]:
    """Quantized linear layers (name -> (in, out) features) whose shape the format's blocks cannot tile."""
    bad = []
    for name, (fan_in, fan_out) in linears.items():
        if q.keeps_unquantized(name):
            continue
        if q.format is QuantFormat.nvfp4 and fan_in % NVFP4_BLOCK:
            bad.append(f"{name} (in {fan_in}, not a multiple of {NVFP4_BLOCK})")
        if q.format is QuantFormat.int4_awq and (fan_in % q.awq_block_size or fan_out % 2):
            bad.append(f"{name} (in {fan_in}, out {fan_out}; needs in a multiple of {q.awq_block_size}, out even)")
    return bad


# ------------------------------------------------------------------ edges: model


@contextlib.contextmanager
def _quiet(log: io.StringIO):
    """Send ModelOpt's prints, library warnings and transformers' progress bars to the log, not the terminal."""
    import transformers

    tlog = transformers.utils.logging
    verbosity, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(log):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                log.write(f"warning: {w.category.__name__}: {w.message}\n")
            tlog.set_verbosity(verbosity)
            if bars:
                tlog.enable_progress_bar()


@contextlib.contextmanager
def _nvfp4_on_cpu():
    """ModelOpt's NVFP4 fake-quantization op asserts a CUDA tensor; on the CPU use the serving loader's
    plain-torch copy of the same kernel (same thresholds and rounding), so the simulated model runs."""
    import modelopt.torch.quantization.tensor_quant as tq

    from generator.model.quality import checkpoint_loader

    original = tq.dynamic_block_quantize_op
    fp4 = checkpoint_loader().nvfp4_fake_quantize

    def op(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits):
        if inputs.is_cuda or (num_bits, exponent_bits, scale_num_bits, scale_exponent_bits) != (4, 2, 8, 4):
            return original(inputs, block_size, amax, num_bits, exponent_bits, scale_num_bits, scale_exponent_bits)
        return fp4(inputs, amax.float().amax() / (6.0 * 448.0), block_size)

    tq.dynamic_block_quantize_op = op
    try:
        yield
    finally:
        tq.dynamic_block_quantize_op = original


def _linear_shapes(model) -> dict[str, tuple[int, int]]:
    import torch

    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _check_layers(model, q: QuantizationSpec) -> None:
    linears = _linear_shapes(model)
    unmatched = [p for p in q.exclude_modules if not any(fnmatch.fnmatchcase(n, p) for n in linears)]
    if unmatched:
        example = next(iter(linears), "model.layers.0.mlp.down_proj")
        raise SpecError(
            f"exclude_modules pattern(s) {unmatched} match no linear layer of this model",
            where="quantization.exclude_modules", fix=f"use fnmatch patterns over module names such as {example!r} or 'lm_head'",
        )
    bad = misfit_layers(linears, q)
    if bad:
        fix = (
            "choose another --format, or exclude those layers (quantization.exclude_modules); "
            "for int4_awq a smaller quantization.awq_block_size may fit"
        )
        raise SpecError(
            f"{q.format.value} cannot quantize {len(bad)} layer(s) of this model: " + "; ".join(bad[:3]),
            where="quantization.format", fix=fix,
        )


def _calibration_loop(samples: list[list[int]], batch_size: int, pad_id: int, progress: Progress):
    """ModelOpt's forward_loop: right-padded batches (masked where padded), progress per batch."""
    import torch

    ordered = sorted(samples, key=len) if batch_size > 1 else samples
    passes = [0]

    def loop(model):
        device = next(model.parameters()).device
        passes[0] += 1
        stage = "calibrate" if passes[0] == 1 else f"calibrate (pass {passes[0]})"
        done = 0
        for i in range(0, len(ordered), batch_size):
            batch = ordered[i : i + batch_size]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, s in enumerate(batch):
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = 1
            # A batch without padding needs no mask, and a mask costs transformers a 4-D mask per pass.
            padded = bool((mask == 0).any())
            with torch.no_grad():
                model(input_ids=ids.to(device), attention_mask=mask.to(device) if padded else None, use_cache=False)
            done += len(batch)
            if progress:
                progress(stage, done, len(ordered))

    return loop


@dataclass
class _Run:
    """What the stages of one quantization share: the loaded model and tokenizer, its inputs, the clock."""

    spec: Spec
    model_dir: Path
    dataset: str
    progress: Progress
    timings: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    dtype: Any = None
    tokenizer: Any = None
    model: Any = None
    samples: list[list[int]] = field(default_factory=list)
    pad_id: int = 0
    chunks: list[Any] = field(default_factory=list)

    @contextlib.contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t

    def step(self, stage: str, done: int, total: Optional[int]) -> None:
        if self.progress:
            self.progress(stage, done, total)


def _load(run: _Run, texts: list[str]) -> None:
    """The model and tokenizer on the device, the tokenized calibration samples and the held-out chunks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from generator.model.quality import heldout_chunks

    spec, q = run.spec, run.spec.quantization
    run.device = "cuda" if torch.cuda.is_available() else "cpu"
    run.dtype = getattr(torch, spec.build.dtype)
    run.step("load", 0, None)
    trust = spec.model.trust_remote_code
    run.tokenizer = AutoTokenizer.from_pretrained(str(run.model_dir), trust_remote_code=trust)
    run.model = AutoModelForCausalLM.from_pretrained(str(run.model_dir), dtype=run.dtype,
                                                     trust_remote_code=trust).to(run.device).eval()
    _check_layers(run.model, q)
    cal = q.calibration
    run.samples = [ids for ids in (run.tokenizer(t, add_special_tokens=False)["input_ids"][: cal.max_seq_len]
                                   for t in texts) if len(ids) > 1]
    if not run.samples:
        raise ArtifactCorrupt("no calibration sample has two tokens or more", where=run.dataset,
                              fix="calibrate on longer texts (--dataset), or raise quantization.calibration.max_seq_len")
    tok = run.tokenizer
    run.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    run.chunks = heldout_chunks(tok, max_tokens=q.quality_tokens, chunk_len=cal.max_seq_len) if q.quality_tokens else []
    run.step("load", 1, 1)


def _calibrate(run: _Run) -> tuple[Any, Any, Optional[int]]:
    """ModelOpt calibration; returns the original and the simulated-quantization scores and the GPU peak."""
    import torch

    import modelopt.torch.quantization as mtq
    from modelopt.torch.export.unified_export_hf import requantize_resmooth_fused_llm_layers

    from generator.model.quality import next_token_logits

    q = run.spec.quantization
    with run.timed("score_original_s"):
        original = next_token_logits(run.model, run.chunks, stage="original", progress=run.progress)
    with _nvfp4_on_cpu() if run.device == "cpu" else contextlib.nullcontext():
        if run.device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # the peak of calibration alone, not of scoring
        with run.timed("calibrate_s"):
            mtq.quantize(run.model, modelopt_config(q),
                         forward_loop=_calibration_loop(run.samples, q.calibration.batch_size, run.pad_id, run.progress))
        peak_gpu_bytes = torch.cuda.max_memory_allocated() if run.device == "cuda" else None
        # Export unifies the global scales of layers that share an input (q/k/v, gate/up) and
        # re-quantizes; doing it first (idempotent) makes the simulated model what export writes.
        simulated = None
        if run.chunks:  # export applies the same fusion itself; only the score needs it first
            with run.timed("score_simulated_s"):
                with torch.no_grad():
                    requantize_resmooth_fused_llm_layers(run.model)
                simulated = next_token_logits(run.model, run.chunks, stage="simulated", progress=run.progress)
    return original, simulated, peak_gpu_bytes


def _export(run: _Run, tmp: Path) -> None:
    """The Hugging Face checkpoint with the tokenizer files beside it (ModelOpt's exporter writes none)."""
    from modelopt.torch.export import export_hf_checkpoint

    from generator.model.fetch import TOKENIZER_FILES, add_legacy_rope_theta

    with run.timed("export_s"):
        run.step("export", 0, 1)
        export_hf_checkpoint(run.model, dtype=run.dtype, export_dir=str(tmp))
        add_legacy_rope_theta(tmp / "config.json")
        for name in TOKENIZER_FILES:
            if (run.model_dir / name).is_file():
                shutil.copy2(run.model_dir / name, tmp / name)
        run.step("export", 1, 1)
    run.model = None
    gc.collect()


def _score_exported(run: _Run, tmp: Path, original: Any, simulated: Any) -> Optional[dict[str, Any]]:
    """Perplexity, top-1 agreement and KL of the written checkpoint against the original and simulated models."""
    from generator.model.quality import checkpoint_loader, figures, next_token_logits

    if not run.chunks:
        return None
    served = checkpoint_loader().load_causal_lm(tmp, dtype=run.dtype).to(run.device)
    exported = next_token_logits(served, run.chunks, stage="exported", progress=run.progress)
    del served
    return {**figures(original, simulated, exported, run.chunks), "dtype": run.spec.build.dtype}


def _manifest(run: _Run, tmp: Path, input_hash: dict[str, Any], peak_gpu_bytes: Optional[int],
              quality: Optional[dict[str, Any]]) -> dict[str, Any]:
    """What was quantized, how, with which versions, how long each step took and what it cost in quality."""
    import torch

    spec, q = run.spec, run.spec.quantization
    cal = q.calibration
    return {
        "tool": "tritongen quantize",
        "versions": library_versions(),
        "created_unix": int(time.time()),
        "device": torch.cuda.get_device_name(0) if run.device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "input_model": {"source": spec.model.source, "revision": spec.model.revision, "dir": str(run.model_dir),
                        **input_hash},
        "format": q.format.value,
        "kv_cache": q.kv_cache.value,
        "hf_quant_config": json.loads((tmp / "hf_quant_config.json").read_text())["quantization"],
        "exclude_patterns": list(q.exclude_modules),
        "export_dtype": spec.build.dtype,
        "calibration": {"dataset": run.dataset, "requested_samples": cal.size, "samples": len(run.samples),
                        "tokens": sum(len(s) for s in run.samples), "max_seq_len": cal.max_seq_len,
                        "batch_size": cal.batch_size, "seed": cal.seed},
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "calibration_s_per_sample": round(run.timings["calibrate_s"] / len(run.samples), 4),
        "peak_gpu_bytes": peak_gpu_bytes,
        "sizes": size_report(tensor_table(run.model_dir), tensor_table(tmp)),
        "quality": quality,
    }


def cache_key(spec: Spec, model_dir: Path, texts: list[str]) -> Optional[str]:
    """What decides the checkpoint's bytes, hashed: the model's files, the quantization settings and export dtype,
    the calibration text, this code and its held-out text, the libraries and the device. None when the model's
    weights exceed ``quantization.cache_max_mib`` (or it is 0): such checkpoints are not kept."""
    import hashlib
    import platform

    import torch

    q = spec.quantization
    weights = sorted(model_dir.glob("*.safetensors"))
    if not weights or sum(w.stat().st_size for w in weights) > q.cache_max_mib * 2**20:
        return None
    here = Path(__file__).parent
    facts = {
        "model": sha256_files(sorted({f for pattern in READ_FILES for f in model_dir.glob(pattern) if f.is_file()}))["sha256"],
        "trust_remote_code": spec.model.trust_remote_code,
        "quantization": q.model_dump(mode="json", exclude={"cache_max_mib"}), "dtype": spec.build.dtype,
        "calibration": hashlib.sha256(json.dumps(texts).encode()).hexdigest(),
        "code": sha256_files([*sorted(here.glob("*.py")), data_dir() / "heldout.txt"])["sha256"],
        "versions": library_versions(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available()
        else [platform.machine(), torch.backends.cpu.get_cpu_capability()],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _kept_manifest(kept: Optional[Path]) -> Optional[dict[str, Any]]:
    """The manifest of a kept checkpoint, or None when there is none to reuse (a cache folder emptied or edited by
    hand is quantized afresh)."""
    if kept is None or not reusable(kept):
        return None
    try:
        manifest = json.loads((kept / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("input_model"), dict) else None


def _reuse(kept: Path, manifest: dict[str, Any], run: _Run, out: Path, force: bool, protected: Any) -> dict[str, Any]:
    """The kept checkpoint copied to ``out``; its manifest says how it was made and that this run copied it."""
    started = time.perf_counter()
    manifest["input_model"]["dir"] = str(run.model_dir)  # the same files (the key holds their hash), found here
    with atomic_dir(out, force=force, command_hint="tritongen quantize ...", protected=protected) as tmp:
        run.step("reuse", 0, 1)
        copy_kept(kept, tmp)
        manifest["reused"] = {"from_cache": str(kept), "copied_unix": int(time.time()),
                              "copy_s": round(time.perf_counter() - started, 3)}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        run.step("reuse", 1, 1)
    return manifest


def quantize(spec: Spec, *, out_dir: Path | None = None, force: bool = False, progress: Progress = None) -> dict[str, Any]:
    """Quantize ``spec``'s model and write the checkpoint, tokenizer and manifest; returns the manifest.

    Formats that quantize nothing (format none, kv_cache none) write nothing: the original model
    folder is what is served.
    """
    q = spec.quantization
    if not q.quantizes_anything:
        return {"skipped": "format none with kv_cache none quantizes nothing; the model folder is served as is",
                "serving_weights_dir": str(spec.model_dir)}
    reason = refusal(q)
    if reason:
        raise PlanRefused(reason, where="quantization.kv_cache", fix="use --kv-cache fp8 (or none)")
    out = Path(out_dir) if out_dir else spec.checkpoint_dir
    protected = spec.named_paths(except_=("checkpoint_dir",))
    check_writable_target(out.resolve(), force, "tritongen quantize ...", protected)

    from generator.model.fetch import fetch

    started = time.perf_counter()
    texts, dataset = calibration_texts(spec)  # before a download, so a bad data set fails fast
    run = _Run(spec=spec, model_dir=fetch(spec), dataset=dataset, progress=progress)
    key = cache_key(spec, run.model_dir, texts)
    kept = kept_folder("quantize", key) if key else None
    reused = _kept_manifest(kept)
    if reused is not None:
        return _reuse(kept, reused, run, out, force, protected)
    # Hashing 16 GB of input takes seconds of CPU while the GPU calibrates: do it beside the work.
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tritongen-sha256")
    input_hash = hashing.submit(sha256_files, sorted(run.model_dir.glob("*.safetensors")))
    hashing.shutdown(wait=False)
    log = io.StringIO()
    with _quiet(log):
        with run.timed("import_s"):  # most of the start-up, measured apart from loading
            for module in ("torch", "transformers", "modelopt.torch.quantization", "modelopt.torch.export"):
                importlib.import_module(module)
        with run.timed("load_s"):
            _load(run, texts)
        original, simulated, peak_gpu_bytes = _calibrate(run)
        with atomic_dir(out, force=force, command_hint="tritongen quantize ...", protected=protected) as tmp:
            _export(run, tmp)
            with run.timed("score_exported_s"):
                quality = _score_exported(run, tmp, original, simulated)
            run.timings["total_s"] = time.perf_counter() - started
            manifest = _manifest(run, tmp, input_hash.result(), peak_gpu_bytes, quality)
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            (tmp / LOG_NAME).write_text(log.getvalue(), encoding="utf-8")
            if kept is not None:
                keep_copy(tmp, kept)
    return manifest
