"""Validate: check a rendered Triton repository before it ever reaches a GPU.

Reads files only (configs, manifest, tokenizer, engine ``config.json``); starts nothing. Every
``config.pbtxt`` is parsed as Triton's ``ModelConfig`` protobuf (the generated messages shipped with
tritonclient), then the models are checked against each other, against NVIDIA's recorded interface
(``generator/data/inflight_batcher_llm_1.2.1.json``), against the spec recorded in ``tritongen.json``
and against the built engine. All problems are returned at once, each with file and line.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from generator.deploy.checks import check_deployment
from generator.repo.llmapi import CPU_ENGINE_MODEL, validate_llmapi
from generator.repo.llmapi import MODEL_NAME as LLMAPI_MODEL
from generator.repo.problems import (
    ConfigText, Problem, Severity, checkpoint_quant_problems, not_built, parse_config,
    type_name, weights_command,
)
from generator.repo.render import (
    BLS, ENSEMBLE, EXTRA_PARAMETERS, LLMAPI_LAYOUT, MANIFEST, POSTPROCESSING, PREPROCESSING, TENSORRT_LLM,
    reference_facts, tensorrt_llm_parameters,
)
from generator.repo.enginecheck import engine_problems
from generator.spec import EngineTarget, Spec

__all__ = ["Problem", "Severity", "validate_repository"]

KNOWN_BACKENDS = ("tensorrtllm", "python")

# How parameter values must read (keys of upstream and tritongen); others are free text.
_INT_PARAMS = {
    "max_beam_width", "max_tokens_in_paged_kv_cache", "max_attention_window_size", "sink_token_length",
    "kv_cache_host_memory_bytes", "cancellation_check_period_ms", "stats_check_period_ms",
    "iter_stats_max_iterations", "request_stats_max_iterations", "lora_cache_optimal_adapter_size",
    "lora_cache_max_adapter_size", "lora_cache_host_memory_bytes", "cuda_graph_cache_size", "num_nodes",
    "max_num_images", "tokens_per_block", "max_num_tokens", "max_input_len", "max_seq_len", "cpu_kv_cache_mib",
    "cpu_threads", "cpu_max_batch_tokens", "max_queue_size", "max_output_len",
}
_FRACTION_PARAMS = {"kv_cache_free_gpu_mem_fraction", "cross_kv_cache_fraction", "lora_cache_gpu_memory_fraction",
                    "gpu_weights_percent"}
_BOOL_PARAMS = {
    "exclude_input_in_output", "enable_kv_cache_reuse", "enable_chunked_context", "normalize_log_probs",
    "kv_cache_onboard_blocks", "enable_trt_overlap", "enable_context_fmha_fp32_acc", "multi_block_mode",
    "cuda_graph_mode", "speculative_decoding_fast_logits", "skip_special_tokens", "add_special_tokens",
    "apply_chat_template", "accumulate_tokens",
}
_BOOL_WORDS = {"true", "false", "1", "0", "yes", "no"}
_ENUM_PARAMS = {
    "gpt_model_type": ("V1", "inflight_batching", "inflight_fused_batching"),
    "batch_scheduler_policy": ("max_utilization", "guaranteed_no_evict", "static_batch"),
    "dtype": ("bfloat16", "float16", "float32"),
}
_STREAMING_PROTOCOLS = ("http-stream", "grpc-stream")
REQUIRED_PARAMETERS = {
    PREPROCESSING: ("tokenizer_dir",), POSTPROCESSING: ("tokenizer_dir",), TENSORRT_LLM: ("gpt_model_path",),
    BLS: ("tensorrt_llm_model_name",),
}
"""Parameters a deployment cannot run without: left as a placeholder they are errors, not notes."""


@dataclass
class Model:
    """A parsed model folder."""

    name: str
    dir: Path
    text: ConfigText
    config: Any  # model_config_pb2.ModelConfig
    role: str = ""
    """NVIDIA's model whose interface this one has, when the folder name differs (tensorrt_llm_cpu)."""

    @property
    def kind(self) -> str:
        return self.role or self.name

    @property
    def file(self) -> str:
        return str(self.text.path)

    @property
    def params(self) -> dict[str, str]:
        return {k: v.string_value for k, v in self.config.parameters.items()}

    def tensors(self, section: str) -> dict[str, Any]:
        return {t.name: t for t in getattr(self.config, section)}

    @property
    def decoupled(self) -> bool:
        return self.config.model_transaction_policy.decoupled


@dataclass
class _Report:
    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str | Path, line: Optional[int], message: str, fix: str,
            severity: Severity = Severity.error) -> None:
        self.problems.append(Problem(str(file), line, message, fix, severity))

    def extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)


# ---------------------------------------------------------------- reading


def read_manifest(repo: Path, report: _Report) -> dict[str, Any]:
    path = repo / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        report.add(path, exc.lineno, f"not valid JSON: {exc.msg}", "re-render with `tritongen render`")
        return {}
    return data if isinstance(data, dict) else {}


def _spec_from_manifest(repo: Path, manifest: dict[str, Any], report: _Report) -> Optional[Spec]:
    from generator.errors import TritongenError
    from generator.spec import spec_from_dict

    if not isinstance(manifest.get("spec"), dict):
        return None
    try:
        # Relative spec paths resolve against the spec file's folder, as they did when rendering.
        base = manifest.get("spec_base_dir")
        return spec_from_dict(manifest["spec"], base_dir=Path(base) if isinstance(base, str) else Path("."),
                              source=str(repo / MANIFEST))
    except TritongenError as exc:
        report.add(repo / MANIFEST, None, f"recorded spec is invalid: {exc.message}", "re-render from a valid spec")
        return None


_PROBE_TEXT = "Hello, world"


@functools.lru_cache(maxsize=16)
def tokenizer_load_error(path: str) -> Optional[str]:
    """None when the folder holds a tokenizer that transformers loads offline and that turns text into
    tokens with an end id inside its vocabulary, else why not. transformers "loads" a folder without
    tokenizer files as an empty tokenizer that encodes every prompt to nothing, so loading is not enough."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as first:  # noqa: BLE001 - any failure means "does not load"; report its text
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        except Exception:  # noqa: BLE001
            return f"{type(first).__name__}: {first}".splitlines()[0][:300]
    if not tok(_PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        return (f"it is empty: {_PROBE_TEXT!r} encodes to no tokens (no tokenizer.json, tokenizer.model or "
                "vocab.json there, so every request would read as an empty prompt)")
    vocab, of = len(tok), "its vocabulary"
    try:  # the model beside the tokenizer (a checkpoint) can only produce ids below its vocab_size
        model_vocab = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        model_vocab = None
    if isinstance(model_vocab, int) and model_vocab < vocab:
        vocab, of = model_vocab, "the model's vocab_size in config.json"
    end_id = tok.eos_token_id
    if end_id is not None and not 0 <= end_id < vocab:
        return (f"its end token id {end_id} (the END_ID preprocessing sends) is outside {of} ({vocab} tokens), "
                "so generation never stops on it")
    return None


# ---------------------------------------------------------------- per-model checks


def _dims_compatible(a, b) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _check_interface(m: Model, report: _Report) -> None:
    """Tensors of an upstream model name must match NVIDIA's recorded interface (clients rely on it)."""
    facts = reference_facts()["models"].get(m.kind)
    if facts is None:
        return
    for section, key in (("input", "inputs"), ("output", "outputs")):
        have = m.tensors(section)
        for want in facts[key]:
            t = have.get(want["name"])
            if t is None:
                if not want.get("optional"):
                    report.add(m.file, m.text.field(section),
                               f"{section} {want['name']!r} of NVIDIA's {m.kind} model is missing",
                               "re-render; clients of the official repository send/expect it")
                continue
            line = m.text.tensor(section, t.name)
            got_type = type_name(t.data_type)
            if got_type != want["data_type"]:
                report.add(m.file, line, f"{section} {t.name!r} has data_type {got_type}, NVIDIA's {m.kind} uses "
                           f"{want['data_type']}", f"set data_type: {want['data_type']}")
            if list(t.dims) != want["dims"]:
                report.add(m.file, line, f"{section} {t.name!r} has dims {list(t.dims)}, NVIDIA's {m.kind} uses "
                           f"{want['dims']}", f"set dims: {want['dims']}")
            if section == "input" and bool(t.optional) != bool(want.get("optional")):
                report.add(m.file, line, f"input {t.name!r} optional is {str(t.optional).lower()}, NVIDIA's {m.kind} "
                           f"has {str(bool(want.get('optional'))).lower()}",
                           "make it match; a required input that clients do not send fails every request")


def _check_parameters(m: Model, report: _Report) -> None:
    facts = reference_facts()["models"].get(m.kind)
    known = set(facts["parameters"]) | set(EXTRA_PARAMETERS.get(m.kind, ())) if facts else None
    for key, value in m.params.items():
        line = m.text.parameter(key)
        if known is not None and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "the model ignores it"
            report.add(m.file, line, f"unknown parameter {key!r} for {m.name} ({hint})",
                       f"rename it to {close[0]!r}" if close else "remove it")
        v = value.strip()
        if "${" in v:
            if key in REQUIRED_PARAMETERS.get(m.kind, ()):
                report.add(m.file, line, f"parameter {key!r} of {m.name} is still the template placeholder {v!r}; "
                           "the deployment needs it", f"fill it (e.g. fill_template.py {m.name}/config.pbtxt {key}:PATH), "
                           "or re-render with `tritongen render`")
            else:
                report.add(m.file, line, f"optional parameter {key!r} left as placeholder {v!r}: the backend reads it "
                           "as unset", "nothing to do, or set a value / remove the parameter", Severity.note)
            continue
        if v == "":
            report.add(m.file, line, f"parameter {key!r} is empty", "remove it (unset optional parameters are omitted)")
        elif key in _INT_PARAMS:
            if not re.fullmatch(r"-?\d+", v) or int(v) < 0:
                report.add(m.file, line, f"parameter {key!r} must be a non-negative integer, got {value!r}",
                           "write a whole number")
        elif key in _FRACTION_PARAMS:
            try:
                f = float(v)
            except ValueError:
                f = None
            if f is None or not 0.0 < f <= 1.0:
                report.add(m.file, line, f"parameter {key!r} must be a fraction in (0, 1], got {value!r}",
                           f"e.g. 0.9 (spec: serving.{key})" if key == "kv_cache_free_gpu_mem_fraction" else "e.g. 0.5")
        elif key in _BOOL_PARAMS and v.lower() not in _BOOL_WORDS:
            report.add(m.file, line, f"parameter {key!r} must be true or false, got {value!r}", "write true or false")
        elif key in _ENUM_PARAMS and v not in _ENUM_PARAMS[key]:
            report.add(m.file, line, f"parameter {key!r} is {value!r}; allowed: {', '.join(_ENUM_PARAMS[key])}",
                       "pick one of the allowed values")


def _check_model(m: Model, report: _Report) -> None:
    cfg = m.config
    if cfg.name and cfg.name != m.name:
        report.add(m.file, m.text.field("name"), f"name is {cfg.name!r} but the folder is {m.name!r}",
                   f'set name: "{m.name}" (Triton requires them to match)')
    if cfg.platform != "ensemble" and cfg.backend not in KNOWN_BACKENDS:
        what = f"backend {cfg.backend!r}" if cfg.backend else "no backend"
        report.add(m.file, m.text.field("backend") or m.text.field("platform"),
                   f"{what}; this layout uses {' or '.join(KNOWN_BACKENDS)}", 'set backend: "python" or "tensorrtllm"')
    versions = sorted(p for p in m.dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        report.add(m.dir / "1", None, f"{m.name} has no version folder", f"create {m.dir / '1'}")
    elif cfg.backend == "python" and not (versions[-1] / "model.py").is_file():
        report.add(versions[-1] / "model.py", None, f"Python model {m.name} has no {versions[-1].name}/model.py",
                   "re-render (it is copied from tritongen's model_repo/)")
    if cfg.max_batch_size < 0:
        report.add(m.file, m.text.field("max_batch_size"), "max_batch_size is negative", "use the engine's batch size")
    db = cfg.dynamic_batching
    if cfg.HasField("dynamic_batching") and any(b > cfg.max_batch_size for b in db.preferred_batch_size):
        report.add(m.file, m.text.field("preferred_batch_size"),
                   f"preferred_batch_size {list(db.preferred_batch_size)} exceeds max_batch_size {cfg.max_batch_size}",
                   "use max_batch_size as the preferred size")
    for ig in cfg.instance_group:
        if ig.count < 1:
            report.add(m.file, m.text.field("instance_group"), f"instance_group count is {ig.count}", "use 1 or more")
    _check_interface(m, report)
    _check_parameters(m, report)


# ---------------------------------------------------------------- cross-model checks


def _check_ensemble(ens: Model, models: dict[str, Model], report: _Report) -> None:
    ins, outs = ens.tensors("input"), ens.tensors("output")
    available: dict[str, tuple[int, list[int], str]] = {n: (t.data_type, list(t.dims), f"ensemble input {n!r}")
                                                          for n, t in ins.items()}
    produced: set[str] = set()
    for i, step in enumerate(ens.config.ensemble_scheduling.step):
        sline = ens.text.step(i)
        target = models.get(step.model_name)
        if target is None:
            report.add(ens.file, sline, f"step {i + 1} calls model {step.model_name!r}, which is not in the repository"
                       " (or its config does not parse)", f"add {step.model_name}/config.pbtxt or fix model_name")
            for tensor in step.output_map.values():  # unknown types: don't pile up follow-on problems
                available.setdefault(tensor, (None, None, f"output of missing {step.model_name}"))
                produced.add(tensor)
            continue
        t_in, t_out = target.tensors("input"), target.tensors("output")
        for key, src in step.input_map.items():
            line = ens.text.map_entry(sline, "input_map", key)
            if key not in t_in:
                report.add(ens.file, line, f"{step.model_name} has no input {key!r}",
                           f"use one of {step.model_name}'s inputs (see {target.file})")
                continue
            if src not in available:
                report.add(ens.file, line, f"tensor {src!r} fed to {step.model_name}.{key} is neither an ensemble "
                           "input nor produced by an earlier step", "map an existing tensor")
                continue
            dtype, dims, origin = available[src]
            if dtype is None:
                continue
            want = t_in[key]
            if dtype != want.data_type:
                report.add(ens.file, line, f"{origin} is {type_name(dtype)} but {step.model_name} input {key!r} is "
                           f"{type_name(want.data_type)}", "make the data types equal")
            elif not _dims_compatible(dims, list(want.dims)):
                report.add(ens.file, line, f"{origin} has dims {dims} but {step.model_name} input {key!r} has "
                           f"{list(want.dims)}", "make the dims compatible (-1 matches any size)")
        for key, t in t_in.items():
            if not t.optional and key not in step.input_map:
                report.add(ens.file, sline, f"required input {key!r} of {step.model_name} is not mapped in step {i + 1}",
                           f'add input_map {{ key: "{key}" value: ... }}')
        for key, dst in step.output_map.items():
            line = ens.text.map_entry(sline, "output_map", key)
            if key not in t_out:
                report.add(ens.file, line, f"{step.model_name} has no output {key!r}",
                           f"use one of {step.model_name}'s outputs (see {target.file})")
                continue
            t = t_out[key]
            available[dst] = (t.data_type, list(t.dims), f"{step.model_name} output {key!r}")
            produced.add(dst)
            if dst in outs:
                o = outs[dst]
                oline = ens.text.tensor("output", dst)
                if o.data_type != t.data_type:
                    report.add(ens.file, oline, f"ensemble output {dst!r} is {type_name(o.data_type)} but "
                               f"{step.model_name} produces {type_name(t.data_type)}", "make the data types equal")
                elif not _dims_compatible(list(o.dims), list(t.dims)):
                    report.add(ens.file, oline, f"ensemble output {dst!r} has dims {list(o.dims)} but "
                               f"{step.model_name} produces {list(t.dims)}", "make the dims compatible")
    for name in outs:
        if name not in produced:
            report.add(ens.file, ens.text.tensor("output", name), f"ensemble output {name!r} is produced by no step",
                       "map it in a step's output_map or remove it")


def _check_batch_and_decoupling(models: dict[str, Model], manifest: dict[str, Any], spec: Optional[Spec],
                                report: _Report) -> None:
    ref = models.get(ENSEMBLE) or next(iter(models.values()))
    mbs = ref.config.max_batch_size
    for m in models.values():
        if m.config.max_batch_size != mbs:
            report.add(m.file, m.text.field("max_batch_size"),
                       f"max_batch_size {m.config.max_batch_size} differs from {ref.name}'s {mbs}",
                       "use one batch size in every model (re-render: it comes from the engine or the spec)")
    if isinstance(manifest.get("max_batch_size"), int) and manifest["max_batch_size"] != mbs:
        report.add(ref.file, ref.text.field("max_batch_size"),
                   f"max_batch_size {mbs} differs from the {manifest['max_batch_size']} this repository was rendered "
                   f"with ({manifest.get('max_batch_size_source', MANIFEST)})", "re-render instead of editing")

    trt, bls = models.get(TENSORRT_LLM), models.get(BLS)
    for name in (PREPROCESSING, POSTPROCESSING):
        m = models.get(name)
        if m is not None and m.decoupled:
            report.add(m.file, m.text.field("model_transaction_policy"),
                       f"{name} is decoupled; the ensemble needs exactly one response from it per request",
                       "remove model_transaction_policy (or set decoupled: false)")
    if trt is not None and bls is not None and trt.decoupled != bls.decoupled:
        report.add(bls.file, bls.text.field("model_transaction_policy") or bls.text.field("name"),
                   f"tensorrt_llm_bls decoupled={str(bls.decoupled).lower()} but tensorrt_llm "
                   f"decoupled={str(trt.decoupled).lower()}; BLS streams what tensorrt_llm sends",
                   "use the same decoupled setting in both (spec: serving.decoupled)")
    if trt is not None and spec is not None:
        line = trt.text.field("model_transaction_policy") or trt.text.field("name")
        if trt.decoupled != spec.serving.decoupled:
            report.add(trt.file, line, f"tensorrt_llm decoupled={str(trt.decoupled).lower()} but the spec says "
                       f"serving.decoupled={str(spec.serving.decoupled).lower()}", "re-render from the spec")
        elif not trt.decoupled and spec.loadtest.protocol in _STREAMING_PROTOCOLS:
            report.add(trt.file, line, f"tensorrt_llm is not decoupled, so streaming ({spec.loadtest.protocol}, "
                       "the ensemble's `stream` input) cannot work",
                       "--set serving.decoupled=true, or --set loadtest.protocol=http")


def _check_tokenizers(models: dict[str, Model], spec: Optional[Spec], report: _Report) -> None:
    """Each tokenizer_dir loads; a folder that does not exist yet is one warning, however many models name it."""
    missing: dict[str, list[Model]] = {}
    for m in models.values():
        path = m.params.get("tokenizer_dir")
        if not path or "${" in path:
            continue
        line = m.text.parameter("tokenizer_dir")
        if not Path(path).is_dir():
            missing.setdefault(path, []).append(m)
            continue
        err = tokenizer_load_error(str(Path(path).resolve()))
        if err:
            report.add(m.file, line, f"tokenizer in {path!r} cannot be used: {err}",
                       "copy the model's tokenizer files (tokenizer.json, tokenizer_config.json) there")
    for path, users in missing.items():
        others = f" (also named by {', '.join(u.name for u in users[1:])})" if users[1:] else ""
        report.extend([not_built(users[0].file, users[0].text.parameter("tokenizer_dir"),
                                 f"tokenizer_dir {path!r} does not exist{others}; the checkpoint holds the tokenizer",
                                 weights_command(spec))])


def _check_engine(trt: Model, spec: Optional[Spec], report: _Report) -> None:
    """A built engine (trtllm-build's config.json at gpt_model_path) must agree with the configs and spec."""
    if trt.config.backend == "python":
        _check_cpu_engine(trt, spec, report)
        return
    rendered = dict(tensorrt_llm_parameters(spec, EngineTarget.tensorrtllm)) if spec is not None else {}
    report.extend(engine_problems(trt.file, trt.text, trt.params, trt.config.max_batch_size, spec, rendered))


def _check_cpu_engine(trt: Model, spec: Optional[Spec], report: _Report) -> None:
    """The CPU reference engine reads its limits from parameters and its weights from gpt_model_path."""
    p = trt.params
    ints = {k: int(p[k]) for k in ("max_input_len", "max_seq_len", "max_num_tokens", "tokens_per_block")
            if re.fullmatch(r"\d+", p.get(k, ""))}
    if "max_input_len" in ints and "max_seq_len" in ints and ints["max_input_len"] >= ints["max_seq_len"]:
        report.add(trt.file, trt.text.parameter("max_input_len"),
                   f"max_input_len {ints['max_input_len']} is not below max_seq_len {ints['max_seq_len']}",
                   "raise build.max_seq_len or lower build.max_input_len")
    tpb = ints.get("tokens_per_block")
    if tpb is not None and (tpb < 1 or tpb & (tpb - 1)):
        report.add(trt.file, trt.text.parameter("tokens_per_block"), f"tokens_per_block {tpb} is not a power of two",
                   "use 16, 32, 64 or 128")
    if spec is not None:
        for key, want in (("max_input_len", spec.build.max_input_len), ("max_seq_len", spec.build.resolved_max_seq_len),
                          ("max_num_tokens", spec.build.max_num_tokens)):
            if key in ints and ints[key] != want:
                report.add(trt.file, trt.text.parameter(key), f"{key} {ints[key]} but the spec gives {want}",
                           "re-render from the spec")
    weights = Path(p.get("gpt_model_path", ""))
    line = trt.text.parameter("gpt_model_path")
    if not p.get("gpt_model_path"):
        report.add(trt.file, trt.text.field("parameters"), f"{trt.name} has no gpt_model_path parameter",
                   "re-render; it names the weights folder")
    elif not weights.exists():
        if p.get("tokenizer_dir") != p["gpt_model_path"]:  # else _check_tokenizers already warned about the folder
            report.extend([not_built(trt.file, line, f"weights folder {str(weights)!r} does not exist",
                                     weights_command(spec))])
    elif not (weights / "config.json").is_file():
        report.add(trt.file, line, f"no model config.json in {str(weights)!r}",
                   f"re-run `{weights_command(spec)} (again)` so complete weights are there, or fix the path")
    elif spec is not None:
        report.extend(checkpoint_quant_problems(weights, spec, required=False))


# ---------------------------------------------------------------- entry point


def validate_repository(repo_dir: Path, spec: Optional[Spec] = None) -> list[Problem]:
    """Every problem in the repository at ``repo_dir`` (empty list: it is fine), errors and warnings.

    ``spec`` defaults to the one recorded in ``tritongen.json``; without either, the checks that need
    the spec (engine limits and quantization vs spec, decoupled vs streaming) are skipped. The
    manifest's layout picks the checks: NVIDIA's inflight_batcher_llm, or the LLM-API model.
    """
    repo = Path(repo_dir)
    report = _Report()
    if not repo.is_dir():
        return [Problem(str(repo), None, "repository folder does not exist", "tritongen render SPEC -o DIR")]
    manifest = read_manifest(repo, report)
    spec = spec or _spec_from_manifest(repo, manifest, report)
    if spec is None:
        report.add(repo, None, "no spec (no tritongen.json and no --spec): the engine-vs-spec, quantization-vs-spec "
                   "and decoupled-vs-streaming checks were skipped",
                   f"tritongen import {repo} -o spec.yaml, then tritongen validate {repo} --spec spec.yaml", Severity.note)
    if manifest.get("layout") == LLMAPI_LAYOUT:
        _validate_llmapi(repo, manifest, spec, report)
    else:
        _validate_ifb(repo, manifest, spec, report)
    report.extend(check_deployment(repo, manifest, spec))
    return report.problems


def _load_models(repo: Path, expected: list[str], report: _Report, *, others: bool = True,
                 roles: Optional[dict[str, str]] = None) -> dict[str, Model]:
    """Parse the ``expected`` models (reporting missing ones) and, with ``others``, every other model folder."""
    for name in expected:
        if not (repo / name / "config.pbtxt").is_file():
            report.add(repo / name / "config.pbtxt", None, f"model {name!r} is missing",
                       "re-render with `tritongen render SPEC -o DIR --force`")
    folders = sorted(p.parent for p in repo.glob("*/config.pbtxt")) if others else [repo / n for n in expected]
    models: dict[str, Model] = {}
    for folder in folders:
        if not (folder / "config.pbtxt").is_file():
            continue
        parsed, problems = parse_config(folder / "config.pbtxt")
        report.extend(problems)
        if parsed is not None:
            models[folder.name] = Model(folder.name, folder, *parsed, role=(roles or {}).get(folder.name, ""))
    return models


def _validate_ifb(repo: Path, manifest: dict[str, Any], spec: Optional[Spec], report: _Report) -> None:
    models = _load_models(repo, manifest.get("models") or [ENSEMBLE, PREPROCESSING, TENSORRT_LLM, POSTPROCESSING], report)
    if not models and not any(repo.glob("*/config.pbtxt")):
        report.add(repo, None, "no model folders with config.pbtxt (inflight_batcher_llm layout expected)",
                   "tritongen render SPEC -o DIR")
    for m in models.values():
        _check_model(m, report)
    if ENSEMBLE in models:
        _check_ensemble(models[ENSEMBLE], {**models}, report)
    if models:
        _check_batch_and_decoupling(models, manifest, spec, report)
    _check_tokenizers(models, spec, report)
    if TENSORRT_LLM in models:
        _check_engine(models[TENSORRT_LLM], spec, report)


def _validate_llmapi(repo: Path, manifest: dict[str, Any], spec: Optional[Spec], report: _Report) -> None:
    """The LLM-API model (generator.repo.llmapi), plus, in the CPU stand-in, the engine model it calls.

    The stand-in's engine is the CPU reference engine under another folder name, with the C++
    tensorrt_llm model's interface: the single-model checks of the engine layout apply to it unchanged.
    """
    report.extend(validate_llmapi(repo, spec))
    if CPU_ENGINE_MODEL not in manifest.get("models", []) and not (repo / CPU_ENGINE_MODEL).is_dir():
        return  # the GPU variant: NVIDIA's model.py runs LLM() itself
    engine = _load_models(repo, [CPU_ENGINE_MODEL], report, others=False,
                          roles={CPU_ENGINE_MODEL: TENSORRT_LLM}).get(CPU_ENGINE_MODEL)
    if engine is None:
        return
    _check_model(engine, report)
    _check_tokenizers({engine.name: engine}, spec, report)
    _check_engine(engine, spec, report)
    front_cfg = repo / LLMAPI_MODEL / "config.pbtxt"
    parsed = parse_config(front_cfg)[0] if front_cfg.is_file() else None  # its own problems: validate_llmapi
    if parsed is None:
        return
    front = Model(LLMAPI_MODEL, front_cfg.parent, *parsed)
    named = front.params.get("engine_model")
    if named != engine.name:
        report.add(front.file, front.text.parameter("engine_model") or front.text.field("name"),
                   f"engine_model parameter is {named!r}, but the CPU engine model is {engine.name!r}",
                   f'set the parameter engine_model to "{engine.name}" (re-render)')
    if engine.decoupled != front.decoupled:
        report.add(engine.file, engine.text.field("model_transaction_policy") or engine.text.field("name"),
                   f"{engine.name} decoupled={str(engine.decoupled).lower()} but {front.name} "
                   f"decoupled={str(front.decoupled).lower()}; the stand-in streams what the engine sends",
                   "use one decoupled setting in both (spec: serving.decoupled)")
    if engine.config.max_batch_size < 1:
        report.add(engine.file, engine.text.field("max_batch_size"),
                   f"{engine.name} max_batch_size is {engine.config.max_batch_size}; the stand-in sends [1, n] batches",
                   "re-render (it comes from serving.max_batch_size / build.max_batch_size)")
