"""The build plan: which TensorRT-LLM 1.2.1 commands turn the spec into an engine, and why.

Pure functions only: ``make_plan(spec, model_config)`` reads nothing but its arguments and the recorded
parser data (generator.engine.flags), starts no process and touches no network. Every flag it emits carries
the reason it is there and the source of that reason; every flag it leaves out that a user might expect says
why. Impossible combinations become ``Plan.errors`` (all of them at once) instead of a failed build on a GPU
host. The model's sizes come from generator.engine.shape, the memory plan from generator.engine.memory.
"""

from __future__ import annotations

import fnmatch
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from generator.engine.facts import QUANTIZE_QFORMAT, TRTLLM_VERSION
from generator.engine.flags import (
    SRC_BUILD_PY, SRC_BUILDER, SRC_CHECKPOINT, SRC_FIELD_SM120, SRC_PARSER, SRC_REFERENCE, SRC_SPEC, Command, Flag,
    Omitted, check_argv, flag_data,
)
from generator.engine.calibration import CalibrationEstimate, calibration_estimate
from generator.engine.gpus import GpuSpec, lookup_gpu
from generator.engine import rules
from generator.engine.memory import MemoryPlan, memory_plan
from generator.engine.shape import ModelShape, model_shape
from generator.errors import PlanRefused
from generator.spec import Spec


@dataclass(frozen=True)
class Plan:
    model: str
    model_config_source: str
    gpu: GpuSpec
    versions: dict[str, str]
    conversion: Command
    flags: tuple[Flag, ...]
    omitted: tuple[Omitted, ...]
    memory: MemoryPlan
    calibration: Optional[CalibrationEstimate]
    """What quantizing costs on this GPU; None when the spec quantizes nothing."""
    notes: tuple[str, ...]
    warnings: tuple[str, ...]
    errors: tuple[str, ...]

    @property
    def build(self) -> Command:
        argv = ["trtllm-build"]
        for f in self.flags:
            argv += [f.flag] if f.value is None else [f.flag, f.value]
        return Command("trtllm-build", tuple(argv), "build the TensorRT engine from the TensorRT-LLM checkpoint", SRC_PARSER)

    def trtllm_build_argv(self, output_dir: Path | str | None = None) -> list[str]:
        """``trtllm-build`` and its arguments; ``output_dir`` replaces the planned engine folder (temp builds)."""
        return self.build.with_values({"--output_dir": str(output_dir)} if output_dir is not None else {})

    def shell_commands(self) -> list[str]:
        return [shlex.join(self.conversion.argv), shlex.join(self.build.argv)]

    def raise_if_refused(self) -> None:
        if self.errors:
            raise PlanRefused("the plan refuses this spec:\n  " + "\n  ".join(self.errors),
                                 where="spec", fix="change the fields named above, then `tritongen plan SPEC`")

    def to_dict(self) -> dict[str, Any]:
        gpu = asdict(self.gpu) | {"native_formats": list(self.gpu.native_formats), "architecture": self.gpu.architecture}
        memory = asdict(self.memory) | {"fits_batch": self.memory.fits_batch}
        return {
            "model": self.model, "model_config_source": self.model_config_source, "gpu": gpu, "versions": self.versions,
            "conversion": asdict(self.conversion), "trtllm_build": asdict(self.build),
            "flags": [asdict(f) for f in self.flags], "omitted": [asdict(o) for o in self.omitted],
            "memory": memory,
            "calibration": self.calibration.model_dump() if self.calibration else None, "notes": list(self.notes), "warnings": list(self.warnings), "errors": list(self.errors),
        }



def _onoff(value: bool) -> str:
    return "enable" if value else "disable"


def _checkpoint_command(spec: Spec, examples_dir: str) -> tuple[Command, list[str]]:
    """examples/quantization/quantize.py: ModelOpt PTQ from the original model into a TensorRT-LLM checkpoint."""
    q, b = spec.quantization, spec.build
    warnings = []
    argv = ["python3", f"{examples_dir}/quantization/quantize.py", "--model_dir", str(spec.model_dir),
            "--dtype", b.dtype, "--qformat", QUANTIZE_QFORMAT[q.format]]
    if q.kv_cache.value != "none":
        argv += ["--kv_cache_dtype", q.kv_cache.value]
    if q.format.value != "none" or q.kv_cache.value != "none":
        argv += ["--calib_dataset", q.calibration.dataset, "--calib_size", str(q.calibration.size),
                 "--calib_max_seq_length", str(q.calibration.max_seq_len), "--batch_size", str(q.calibration.batch_size),
                 "--seed", str(q.calibration.seed)]
        if Path(q.calibration.dataset).suffix in (".txt", ".jsonl"):
            warnings.append(
                f"quantize.py calibrates from a Hugging Face data set (name or saved folder), not the file "
                f"{q.calibration.dataset}; set quantization.calibration.dataset=cnn_dailymail (or a data set folder) for the GPU build")
    if q.format.value == "int4_awq":
        argv += ["--awq_block_size", str(q.awq_block_size)]
    if not q.keeps_unquantized("lm_head"):
        argv.append("--quantize_lm_head")
    others = [p for p in q.exclude_modules if not fnmatch.fnmatchcase("lm_head", p)]
    if others and q.format.value != "none":
        warnings.append(f"quantize.py keeps only lm_head unquantized; quantization.exclude_modules {others} "
                        "cannot be passed to it and those modules will be quantized in the engine")
    argv += ["--tp_size", str(b.tp_size), "--pp_size", str(b.pp_size), "--output_dir", str(spec.trtllm_checkpoint_dir)]
    reason = ("trtllm-build reads a TensorRT-LLM checkpoint (config.json with architecture, dtype, mapping and "
              "quantization; rank<N>.safetensors). The ModelOpt Hugging Face export in checkpoint_dir has neither, "
              "and qwen/llama convert_checkpoint.py do not read `quant_method: modelopt`, so the checkpoint is "
              "quantized again from the original model with the same ModelOpt settings, split for tp x pp.")
    return Command("checkpoint (ModelOpt PTQ → TensorRT-LLM checkpoint)", tuple(argv), reason, SRC_CHECKPOINT), warnings


@dataclass
class _Draft:
    """The plan as its rules fill it in: refusals, warnings, notes, and each flag passed or left out with why."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    omitted: list[Omitted] = field(default_factory=list)

    def emit(self, flag: str, value: Optional[str], reason: str, source: str, no_effect: Optional[str] = None) -> None:
        self.flags.append(Flag(flag, value, reason, source, no_effect))

    def leave(self, flag: str, reason: str, source: str) -> None:
        self.omitted.append(Omitted(flag, reason, source))

    def collect(self, findings: list[rules.Finding]) -> None:
        """A shared rule's findings (generator.engine.rules), by severity."""
        for f in findings:
            {"error": self.errors, "warning": self.warnings, "note": self.notes}[f.severity].append(
                f.message if f.severity == "note" else f.text)


def _paged_context_users(spec: Spec) -> list[str]:
    """The serving features that need paged context FMHA, by field name."""
    s = spec.serving
    return [n for n, on in (("serving.enable_chunked_context", s.enable_chunked_context),
                            ("serving.enable_kv_cache_reuse", s.enable_kv_cache_reuse)) if on]


def _gpu_refusals(spec: Spec, gpu: GpuSpec, d: _Draft) -> None:
    """Weight and KV formats the GPU's tensor cores (and TensorRT-LLM 1.2 on them) cannot run."""
    fmt, kv = spec.quantization.format.value, spec.quantization.kv_cache.value
    if fmt not in gpu.native_formats:
        if fmt == "nvfp4":
            d.errors.append(f"quantization.format=nvfp4 needs Blackwell tensor cores (SM100 B200 or SM120 RTX); "
                            f"{gpu.name} is SM{gpu.sm} ({gpu.architecture}); use fp8 (SM89+) or int4_awq instead")
        elif fmt == "fp8":
            d.errors.append(f"quantization.format=fp8 needs SM89+ (Ada, Hopper, Blackwell); {gpu.name} is SM{gpu.sm}; "
                            "use int4_awq or int8_sq")
        else:
            d.errors.append(f"quantization.format={fmt}: TensorRT-LLM 1.2 refuses INT8/INT4 quantization and SmoothQuant "
                            f"on SM100-SM119 ({gpu.name}) (builder.build); use nvfp4 or fp8")
    if kv == "fp8" and not gpu.fp8:
        d.errors.append(f"quantization.kv_cache=fp8 needs SM89+; {gpu.name} is SM{gpu.sm}; use int8 or none")
    if kv == "int8" and not gpu.int_quant:
        d.errors.append("quantization.kv_cache=int8 is refused on SM100-SM119 by TensorRT-LLM 1.2 (builder.build); use fp8")


def _limit_refusals(spec: Spec, shape: ModelShape, d: _Draft) -> None:
    """Sequence, token and KV-block limits that trtllm-build or the runtime refuse or clip."""
    b, s = spec.build, spec.serving
    seq = b.resolved_max_seq_len
    if b.max_input_len >= seq:
        d.errors.append(f"build.max_input_len ({b.max_input_len}) must be below max_seq_len ({seq})")
    if b.max_num_tokens < b.max_input_len and not s.enable_chunked_context:
        d.errors.append(f"build.max_num_tokens ({b.max_num_tokens}) is below build.max_input_len ({b.max_input_len}): a "
                        "full prompt cannot be processed in one step; raise max_num_tokens or set serving.enable_chunked_context=true")
    if b.max_num_tokens > seq * b.max_batch_size:
        d.warnings.append(f"max_num_tokens ({b.max_num_tokens}) exceeds max_batch_size x max_seq_len; trtllm-build clips it "
                          f"to {seq * b.max_batch_size} (check_max_num_tokens)")
    if b.max_num_tokens > 16384:
        d.warnings.append("max_num_tokens above 16384: trtllm-build warns that it may exceed TensorRT tensor volume limits")
    if b.tokens_per_block & (b.tokens_per_block - 1):
        d.errors.append(f"build.tokens_per_block ({b.tokens_per_block}) must be a power of two (KV-cache block manager)")
    if b.kv_cache_type != "paged":
        d.errors.append("build.kv_cache_type=continuous: the tensorrt_llm backend's in-flight batching "
                        f"(serving.batching_strategy={s.batching_strategy}) needs a paged KV cache")
    if shape.max_position_embeddings and seq > shape.max_position_embeddings:
        d.warnings.append(f"max_seq_len {seq} exceeds the model's max_position_embeddings {shape.max_position_embeddings}; "
                          "quality may suffer beyond the trained context")


def _feature_refusals(spec: Spec, d: _Draft) -> None:
    """Serving features whose kernels the build options turn off."""
    plug, kv = spec.build.plugins, spec.quantization.kv_cache.value
    needs_paged_context = _paged_context_users(spec)
    if needs_paged_context and (plug.context_fmha is False or plug.use_paged_context_fmha is False):
        d.errors.append(f"{' and '.join(needs_paged_context)} need paged context FMHA, which build.plugins turn off "
                        "(context_fmha=false disables it too, builder.build)")
    elif needs_paged_context and kv == "int8":
        d.errors.append(f"{' and '.join(needs_paged_context)} need paged context FMHA, which builder.build turns off "
                        "with an INT8 KV cache; use quantization.kv_cache=fp8 or none, or turn them off")


def _core_flags(spec: Spec, shape: ModelShape, d: _Draft) -> Optional[str]:
    """Sizes, plugins and fusions in the reference deployment's order; returns why fused MLP has no effect, if so."""
    b, plug = spec.build, spec.build.plugins
    fmt = spec.quantization.format.value
    seq = b.resolved_max_seq_len
    d.emit("--checkpoint_dir", str(spec.trtllm_checkpoint_dir), "the TensorRT-LLM checkpoint of the step above", SRC_CHECKPOINT)
    d.emit("--output_dir", str(spec.engine_dir), "engine folder (artifacts.engine_dir) that the rendered tensorrt_llm "
           "model loads (gpt_model_path)", SRC_SPEC)
    seq_reason = (f"build.max_input_len {b.max_input_len} + build.max_output_len {b.max_output_len}"
                  if b.max_seq_len is None else "build.max_seq_len")
    d.emit("--max_seq_len", str(seq), seq_reason + " (prompt + output per sequence)", SRC_SPEC)
    d.emit("--max_batch_size", str(b.max_batch_size), "build.max_batch_size: sequences per engine step", SRC_SPEC)
    d.emit("--max_num_tokens", str(b.max_num_tokens), "build.max_num_tokens: tokens (all sequences) per engine step", SRC_SPEC)

    if plug.gemm_plugin is not None:
        d.emit("--gemm_plugin", plug.gemm_plugin, "build.plugins.gemm_plugin", SRC_SPEC,
               "builder.build keeps the NVFP4 GEMM plugin unless the value is `disable`"
               if fmt == "nvfp4" and plug.gemm_plugin != "disable" and plug.gemm_plugin != "nvfp4" else None)
    elif fmt == "nvfp4":
        d.emit("--gemm_plugin", "nvfp4", "NVFP4 GEMMs run in the nvfp4 cuBLASLt plugin (builder.build selects it for NVFP4 "
               "checkpoints unless disabled; saying so keeps the engine config explicit)", SRC_REFERENCE)
    else:
        d.emit("--gemm_plugin", "auto", f"the plugin handles the unquantized GEMMs in the model dtype; {fmt} GEMMs "
               "are chosen by TensorRT", "upstream rule: tensorrt_llm/plugin/plugin.py (gemm_plugin)")
    d.emit("--gpt_attention_plugin", b.dtype, "attention plugin in the activation dtype (build.dtype): in-flight "
           "batching and the paged KV cache run in it", SRC_REFERENCE)
    d.emit("--kv_cache_type", b.kv_cache_type, "build.kv_cache_type: the tensorrt_llm backend's in-flight batching "
           "allocates KV blocks on demand", SRC_SPEC)
    d.emit("--tokens_per_block", str(b.tokens_per_block), "build.tokens_per_block: KV-cache page size", SRC_SPEC)
    d.emit("--remove_input_padding", "enable", "packed sequences: in-flight batching mixes prompts and generation "
           "steps in one batch of max_num_tokens", SRC_REFERENCE)

    fused_mlp = True if plug.use_fused_mlp is None else plug.use_fused_mlp
    fused_mlp_moot = None
    if fused_mlp and fmt not in ("fp8", "none"):
        fused_mlp_moot = (f"{fmt} weights: build.py turns use_fused_mlp off when quant_algo is set and not FP8, and "
                          "fuse_gate_mlp skips non-FP8 quantized MLPs")
    d.emit("--use_fused_mlp", _onoff(fused_mlp), "fuse gate and up projections into one GEMM" if plug.use_fused_mlp is None
           else "build.plugins.use_fused_mlp", SRC_REFERENCE if plug.use_fused_mlp is None else SRC_SPEC, fused_mlp_moot)

    nqf = plug.norm_quant_fusion if plug.norm_quant_fusion is not None else fmt == "nvfp4"
    if nqf:
        effective = shape.architecture == "LlamaForCausalLM" and fmt == "nvfp4"
        d.emit("--norm_quant_fusion", "enable", "fuse RMSNorm with NVFP4 activation quantization"
               if plug.norm_quant_fusion is None else "build.plugins.norm_quant_fusion",
               SRC_REFERENCE if plug.norm_quant_fusion is None else SRC_SPEC,
               None if effective else f"builder.build overrides it to off unless the architecture is LlamaForCausalLM "
               f"with NVFP4 weights (this checkpoint: {shape.architecture}, {fmt})")
    else:
        d.leave("--norm_quant_fusion", "build.plugins.norm_quant_fusion=false" if plug.norm_quant_fusion is False else
                "only NVFP4 LlamaForCausalLM checkpoints use it; builder.build turns it off otherwise (default disable)",
                SRC_SPEC if plug.norm_quant_fusion is False else SRC_BUILDER)
    d.emit("--max_beam_width", str(b.max_beam_width), "build.max_beam_width (1: greedy/sampling)", SRC_SPEC)
    d.emit("--workers", str(b.workers), "build.workers: ranks built in parallel (trtllm-build uses at most the visible GPUs)", SRC_SPEC)
    if b.multiple_profiles:
        d.emit("--multiple_profiles", "enable", "build.multiple_profiles: several TensorRT profiles, faster at small "
               "batches for a longer build", SRC_SPEC)
    else:
        d.leave("--multiple_profiles", "build.multiple_profiles=false (parser default disable)", SRC_SPEC)
    return fused_mlp_moot


def _attention_flags(spec: Spec, gpu: GpuSpec, d: _Draft) -> None:
    """Attention features: the spec's overrides, the conservative SM120 choices, otherwise upstream defaults."""
    b, plug = spec.build, spec.build.plugins
    fmt, kv = spec.quantization.format.value, spec.quantization.kv_cache.value
    sm120 = gpu.sm == 120
    needs_paged_context = _paged_context_users(spec)
    context_fmha_on = plug.context_fmha is not False
    if plug.context_fmha is not None:
        d.emit("--context_fmha", _onoff(plug.context_fmha), "build.plugins.context_fmha", SRC_SPEC)
    elif sm120:
        d.leave("--context_fmha", "not forced on: field reports of FMHA failures on SM120 with TensorRT-LLM 1.2. "
                "trtllm-build's default (enable) then applies; set build.plugins.context_fmha=false to turn it off "
                "if the build or the server fails in FMHA", SRC_FIELD_SM120)
    else:
        d.leave("--context_fmha", "trtllm-build's default (enable) is wanted here", SRC_PARSER)
    if not context_fmha_on:
        d.emit("--max_input_len", str(b.max_input_len), "context FMHA is off, so trtllm-build uses max_input_len to size "
               "the context phase (builder._init_max_seq_len)", SRC_BUILDER)
    else:
        d.leave("--max_input_len", "trtllm-build ignores it when padding removal and context FMHA are both on "
                "(builder._init_max_seq_len); the engine's config.json then records the parser default (1024), which "
                "tritongen does not compare", SRC_BUILDER)

    if plug.use_paged_context_fmha is not None:
        d.emit("--use_paged_context_fmha", _onoff(plug.use_paged_context_fmha), "build.plugins.use_paged_context_fmha", SRC_SPEC,
               "context FMHA is off, so builder.build turns it off" if plug.use_paged_context_fmha and not context_fmha_on else None)
    elif needs_paged_context:
        d.emit("--use_paged_context_fmha", "enable", f"{' and '.join(needs_paged_context)} need paged context FMHA "
               "(the default, stated explicitly)", "upstream rule: tensorrt_llm/plugin/plugin.py (use_paged_context_fmha)")
    else:
        d.leave("--use_paged_context_fmha", "trtllm-build's default (enable) applies; chunked context and KV-cache "
                "reuse need it", SRC_PARSER)

    fp8_fmha_rule = ("builder.build keeps FP8 context FMHA only for FP8/W4A8_AWQ/NVFP4 checkpoints on SM89+ and "
                     "turns it on by itself when paged context FMHA and an FP8 KV cache are both on")
    if plug.use_fp8_context_fmha is not None:
        moot = None
        if plug.use_fp8_context_fmha and (fmt not in ("fp8", "nvfp4") or not gpu.fp8 or not context_fmha_on):
            moot = fp8_fmha_rule + " (and never without context FMHA)"
        elif plug.use_fp8_context_fmha is False and kv == "fp8" and context_fmha_on and fmt in ("fp8", "nvfp4") \
                and plug.use_paged_context_fmha is not False:
            moot = "FP8 KV cache with paged context FMHA: builder.build turns FP8 context FMHA back on"
        d.emit("--use_fp8_context_fmha", _onoff(plug.use_fp8_context_fmha), "build.plugins.use_fp8_context_fmha", SRC_SPEC, moot)
    elif sm120:
        d.leave("--use_fp8_context_fmha", "not forced on: field reports of FP8 context FMHA failures and missing "
                "kernels on SM120 with TensorRT-LLM 1.2. Left out, trtllm-build's default (enable) applies and "
                + fp8_fmha_rule + "; build.plugins.context_fmha=false is the way to turn it off", SRC_FIELD_SM120)
    else:
        d.leave("--use_fp8_context_fmha", "trtllm-build's default (enable) applies; " + fp8_fmha_rule, SRC_BUILDER)

    if plug.fuse_fp4_quant is not None:
        if plug.fuse_fp4_quant and sm120:
            d.warnings.append("build.plugins.fuse_fp4_quant=true on SM120: field reports of missing FMHA kernels with FP4 "
                              "output there (TensorRT-LLM 1.2)")
        d.emit("--fuse_fp4_quant", _onoff(plug.fuse_fp4_quant), "build.plugins.fuse_fp4_quant", SRC_SPEC,
               "only NVFP4 attention outputs are fused (set_fuse_fp4_quant)" if plug.fuse_fp4_quant and fmt != "nvfp4" else None)
    elif sm120:
        d.leave("--fuse_fp4_quant", "not forced on: field reports of missing FMHA kernels with FP4 output on SM120 "
                "(TensorRT-LLM 1.2); trtllm-build's default (disable) applies", SRC_FIELD_SM120)
    else:
        d.leave("--fuse_fp4_quant", "trtllm-build's default (disable); opt in with build.plugins.fuse_fp4_quant=true", SRC_PARSER)


def _unaccepted_flags(not_accepted: dict[str, str], d: _Draft) -> None:
    """Flags users expect that 1.2.1 does not take, each with the reason."""
    for flag in ("--max_output_len", "--exclude_modules", "--tp_size", "--pp_size"):
        d.leave(flag, not_accepted[flag], SRC_PARSER)
    d.leave("--opt_num_tokens", "build.py refuses it together with --multiple_profiles enable; TensorRT picks it", SRC_BUILD_PY)
    d.leave("--paged_kv_cache", "deprecated in 1.2.1; --kv_cache_type paged says the same", SRC_PARSER)


def _versions(data: dict[str, Any]) -> dict[str, str]:
    """Where the plan's facts come from: release, container and the parser sources with their commits."""
    src = data["sources"]
    return {
        "tensorrt_llm": TRTLLM_VERSION,
        "triton_container": data["container"]["image"],
        "triton_server": data["container"]["triton_server"],
        "trtllm_build_parser": f"{src['build_py']['path']}@{src['build_py']['commit'][:12]}, "
                               f"{src['plugin_py']['path']}@{src['plugin_py']['commit'][:12]}",
    }


def make_plan(spec: Spec, model_config: dict[str, Any], *, config_source: str = "config.json") -> Plan:
    """The whole plan for ``spec`` on its target GPU, with every refusal collected in ``errors``."""
    data = flag_data()
    gpu = lookup_gpu(spec.build.gpu)
    shape = model_shape(model_config)
    b = spec.build
    d = _Draft()
    _gpu_refusals(spec, gpu, d)
    _limit_refusals(spec, shape, d)
    d.collect(rules.parallel_layout(b.tp_size, b.pp_size, shape))
    if b.world_size > 1:
        d.notes.append(f"world size {b.world_size} (tp {b.tp_size} x pp {b.pp_size}): needs {b.world_size} GPUs of "
                         "this kind; the engine has one rank<N>.engine per GPU and the server runs under MPI with "
                         f"world_size {b.world_size}")
    _feature_refusals(spec, d)
    conversion, conversion_warnings = _checkpoint_command(spec, data["container"]["examples_dir"])
    d.warnings += conversion_warnings
    fused_mlp_moot = _core_flags(spec, shape, d)
    _attention_flags(spec, gpu, d)
    _unaccepted_flags(data["not_accepted"], d)

    # every emitted argument against the recorded parsers
    build_argv = [a for f in d.flags for a in ((f.flag,) if f.value is None else (f.flag, f.value))]
    d.errors += [f"trtllm-build: {p}" for p in check_argv(build_argv, data["flags"], data["not_accepted"])]
    d.errors += [f"quantize.py: {p}" for p in check_argv(list(conversion.argv[2:]), data["quantize_py"])]

    memory = memory_plan(spec, shape, gpu)
    d.collect(rules.kv_cap_fits(spec.serving.max_tokens_in_paged_kv_cache, memory, gpu.name)
              + rules.memory_fits(memory, gpu, b.tp_size, b.pp_size, b.max_batch_size))
    d.notes.append(f"TensorRT-LLM {TRTLLM_VERSION} is the last release line with trtllm-build and the C++ tensorrtllm "
                     "Triton backend")
    if fused_mlp_moot or any(f.no_effect for f in d.flags):
        d.notes.append(f"flags marked 'no effect' are accepted by the {TRTLLM_VERSION} parser but ignored or overridden "
                         "by the build for this checkpoint; they are kept so the engine matches the reference command")
    return Plan(
        model=spec.model.source, model_config_source=config_source, gpu=gpu, versions=_versions(data),
        conversion=conversion, flags=tuple(d.flags), omitted=tuple(d.omitted), memory=memory, notes=tuple(d.notes),
        warnings=tuple(d.warnings), errors=tuple(d.errors),
        calibration=calibration_estimate(spec, shape, memory.parameters, gpu) if spec.quantization.quantizes_anything else None,
    )

