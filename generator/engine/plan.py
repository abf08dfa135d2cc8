"""The build plan: which TensorRT-LLM 1.2.1 commands turn the spec into an engine, and why.

Pure functions only: ``make_plan(spec, model_config)`` reads nothing but its arguments and the recorded
parser data (generator/data/trtllm_build_1.2.1.json), starts no process and touches no network. Every
flag it emits carries the reason it is there and the source of that reason; every flag it leaves out
that a user might expect says why. Impossible combinations become ``Plan.errors`` (all of them at once)
instead of a failed build on a GPU host. The memory plan is arithmetic on the model's config.json.
"""

from __future__ import annotations

import fnmatch
import math
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from generator.errors import ArtifactCorrupt, ArtifactMissing, PlanRefused
from generator.engine.gpus import GpuSpec, lookup_gpu
from generator.fsutil import read_json_object
from generator.resources import data_dir, data_json
from generator.spec import Spec

TRTLLM_VERSION = "1.2.1"
FLAG_DATA_FILE = "trtllm_build_1.2.1.json"
REFERENCE_MODEL = "Qwen/Qwen3-8B"
REFERENCE_CONFIG_FILE = "qwen3-8b-config.json"

# Where a decision comes from. The plan shows these next to every flag.
SRC_SPEC = "spec"
SRC_REFERENCE = "reference deployment (Qwen3-8B NVFP4 on SM120, TensorRT-LLM 1.2)"
SRC_FIELD_SM120 = "field report, SM120, TRT-LLM 1.2"
SRC_PARSER = "trtllm-build 1.2.1 parser (commands/build.py, plugin/plugin.py)"
SRC_BUILD_PY = "upstream rule: tensorrt_llm/commands/build.py"
SRC_BUILDER = "upstream rule: tensorrt_llm/builder.py build()"
SRC_MODELING = "upstream rule: tensorrt_llm/models/modeling_utils.py fuse_gate_mlp"
SRC_CHECKPOINT = "upstream rule: PretrainedConfig.from_dict needs a TensorRT-LLM checkpoint"
SRC_GPU = "GPU table (generator/gpus.py)"

GIB = 1 << 30
RUNTIME_RESERVE_BYTES = GIB
"""CUDA context, cuBLAS/TensorRT workspaces and decoder buffers: an assumption, not a measurement."""

MEMORY_ASSUMPTION = (
    "GPU memory minus weights minus a runtime reserve (1 GiB for the CUDA context, cuBLAS/TensorRT "
    "workspaces and decoder buffers, plus activations of max_num_tokens tokens: 4 x hidden + 2 x "
    "intermediate/tp values in the activation dtype, plus FP32 logits of max_batch_size rows); "
    "kv_cache_free_gpu_mem_fraction of the rest becomes KV cache. An estimate, not a measurement."
)

_QUANTIZE_QFORMAT = {"nvfp4": "nvfp4", "fp8": "fp8", "int4_awq": "int4_awq", "int8_sq": "int8_sq", "none": "full_prec"}
_CHECKPOINT_QUANT_ALGO = {
    "nvfp4": ("NVFP4",),
    "fp8": ("FP8",),
    "int4_awq": ("W4A16_AWQ",),
    "int8_sq": ("W8A8_SQ_PER_CHANNEL", "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "W8A8_SQ_PER_TENSOR_PLUGIN"),
    "none": (None,),
}
_CHECKPOINT_KV_ALGO = {"fp8": ("FP8",), "int8": ("INT8",), "none": (None,)}
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2}


def flag_data() -> dict[str, Any]:
    """The recorded trtllm-build 1.2.1 parser (and quantize.py flags, container tag, sources)."""
    return data_json(FLAG_DATA_FILE)


# ---------------------------------------------------------------- model shape and memory


@dataclass(frozen=True)
class ModelShape:
    """The parts of a decoder-only config.json that decide sizes."""

    architecture: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    max_position_embeddings: Optional[int]


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Read the sizes from a Hugging Face config.json; dense decoder models only."""
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
               if not isinstance(config.get(k), int)]
    if missing:
        raise ArtifactCorrupt(
            f"model config.json lacks {', '.join(missing)}; the plan needs a decoder model's sizes",
            where="config.json", fix="pass the model's own config.json with --model-config PATH")
    if any(config.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise PlanRefused("mixture-of-experts models are not covered by the memory plan", where="config.json",
                          fix="plan a dense decoder model; build MoE models with TensorRT-LLM's own tools")
    heads = config["num_attention_heads"]
    model_type = str(config.get("model_type", ""))
    attention_bias = bool(config.get("attention_bias", False))
    return ModelShape(
        architecture=(config.get("architectures") or ["unknown"])[0],
        model_type=model_type,
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate_size=config["intermediate_size"],
        vocab_size=config["vocab_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        # Qwen2 hard-codes q/k/v biases; Llama-style configs say so with attention_bias (all four projections).
        qkv_bias=attention_bias or model_type == "qwen2",
        o_bias=attention_bias,
        qk_norm=model_type.startswith("qwen3"),
        max_position_embeddings=config.get("max_position_embeddings"),
    )


def linear_modules(shape: ModelShape) -> list[tuple[str, int, int, bool]]:
    """(Hugging Face module name, in_features, out_features, has_bias) of every Linear, lm_head last."""
    h, q, kv, i = shape.hidden_size, shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim, shape.intermediate_size
    per_layer = [
        ("self_attn.q_proj", h, q, shape.qkv_bias), ("self_attn.k_proj", h, kv, shape.qkv_bias),
        ("self_attn.v_proj", h, kv, shape.qkv_bias), ("self_attn.o_proj", q, h, shape.o_bias),
        ("mlp.gate_proj", h, i, False), ("mlp.up_proj", h, i, False), ("mlp.down_proj", i, h, False),
    ]
    mods = [(f"model.layers.{n}.{name}", fin, fout, bias) for n in range(shape.num_layers) for name, fin, fout, bias in per_layer]
    if not shape.tie_word_embeddings:
        mods.append(("lm_head", h, shape.vocab_size, False))
    return mods


def quantized_linear_bytes(fmt: str, fin: int, fout: int, dtype_bytes: int, awq_block: int) -> tuple[int, int]:
    """(weight bytes, scale bytes) of one Linear in the exported checkpoint.

    nvfp4: 4-bit E2M1 values, one FP8 E4M3 scale per 16 values, FP32 per-tensor weight and input scales.
    fp8: 8-bit E4M3 values, FP32 per-tensor weight and input scales.
    int4_awq: 4-bit values, a 16-bit scale per awq_block inputs per output, a pre-quant scale per input.
    int8_sq: 8-bit values, an FP32 scale per output channel, an FP32 input scale, a smoothing scale per input.
    """
    n = fin * fout
    if fmt == "nvfp4":
        return n // 2, n // 16 + 8
    if fmt == "fp8":
        return n, 8
    if fmt == "int4_awq":
        return n // 2, math.ceil(fin / awq_block) * fout * 2 + fin * dtype_bytes
    if fmt == "int8_sq":
        return n, fout * 4 + 4 + fin * dtype_bytes
    raise ValueError(f"not a quantized weight format: {fmt}")


def is_excluded(module: str, patterns: Iterable[str]) -> bool:
    """ModelOpt-style exclusion: fnmatch patterns against the module name (``lm_head``, ``*mlp*``)."""
    return any(fnmatch.fnmatchcase(module, p) for p in patterns)


@dataclass(frozen=True)
class MemoryPlan:
    parameters: int
    weight_bytes: dict[str, int]
    checkpoint_bytes: int
    weights_per_gpu_bytes: int
    kv_dtype: str
    kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    gpu_bytes: int
    runtime_reserve_bytes: int
    activation_bytes: int
    kv_fraction: float
    kv_budget_bytes: int
    kv_tokens: int
    full_sequences: int
    max_seq_len: int
    demand_tokens: int
    assumption: str = MEMORY_ASSUMPTION

    @property
    def fits_batch(self) -> bool:
        return self.kv_tokens >= self.demand_tokens


def memory_plan(spec: Spec, shape: ModelShape, gpu: GpuSpec) -> MemoryPlan:
    """Weights per format, KV bytes per token and KV capacity, from config.json sizes only."""
    b, q = spec.build, spec.quantization
    fmt, kv = q.format.value, q.kv_cache.value
    dtype_bytes = _DTYPE_BYTES[b.dtype]
    groups = {"quantized linear weights": 0, "quantization scales": 0, "linear weights kept unquantized": 0,
              "embeddings": 0, "norms and biases": 0, "KV-cache scales": 0}
    params = shape.vocab_size * shape.hidden_size
    groups["embeddings"] = params * dtype_bytes
    for name, fin, fout, bias in linear_modules(shape):
        params += fin * fout + (fout if bias else 0)
        groups["norms and biases"] += fout * dtype_bytes if bias else 0
        if fmt == "none" or is_excluded(name, q.exclude_modules):
            groups["linear weights kept unquantized"] += fin * fout * dtype_bytes
        else:
            weights, scales = quantized_linear_bytes(fmt, fin, fout, dtype_bytes, q.awq_block_size)
            groups["quantized linear weights"] += weights
            groups["quantization scales"] += scales
    norms = shape.num_layers * (2 * shape.hidden_size + (2 * shape.head_dim if shape.qk_norm else 0)) + shape.hidden_size
    params += norms
    groups["norms and biases"] += norms * dtype_bytes
    if kv != "none":
        groups["KV-cache scales"] = shape.num_layers * 2 * 4
    total = sum(groups.values())

    tp, pp = b.tp_size, b.pp_size
    kv_value_bytes = 1 if kv in ("fp8", "int8") else dtype_bytes
    kv_per_token = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * kv_value_bytes
    kv_per_token_gpu = 2 * math.ceil(shape.num_layers / pp) * max(1, shape.num_kv_heads // tp) * shape.head_dim * kv_value_bytes
    weights_gpu = math.ceil(total / (tp * pp))
    activations = b.max_num_tokens * (4 * shape.hidden_size + 2 * shape.intermediate_size // tp) * dtype_bytes
    activations += b.max_batch_size * shape.vocab_size * 4
    gpu_bytes = int(gpu.memory_gib * GIB)
    free = gpu_bytes - weights_gpu - RUNTIME_RESERVE_BYTES - activations
    budget = int(max(free, 0) * spec.serving.kv_cache_free_gpu_mem_fraction)
    if spec.serving.max_tokens_in_paged_kv_cache is not None:
        budget = min(budget, spec.serving.max_tokens_in_paged_kv_cache * kv_per_token_gpu)
    kv_tokens = budget // kv_per_token_gpu // b.tokens_per_block * b.tokens_per_block
    seq = b.resolved_max_seq_len
    return MemoryPlan(
        parameters=params, weight_bytes=groups, checkpoint_bytes=total, weights_per_gpu_bytes=weights_gpu,
        kv_dtype=kv if kv != "none" else b.dtype, kv_bytes_per_token=kv_per_token,
        kv_bytes_per_token_per_gpu=kv_per_token_gpu, gpu_bytes=gpu_bytes, runtime_reserve_bytes=RUNTIME_RESERVE_BYTES,
        activation_bytes=activations, kv_fraction=spec.serving.kv_cache_free_gpu_mem_fraction, kv_budget_bytes=budget,
        kv_tokens=kv_tokens, full_sequences=kv_tokens // seq, max_seq_len=seq, demand_tokens=b.max_batch_size * seq,
    )


# ---------------------------------------------------------------- plan objects


@dataclass(frozen=True)
class Flag:
    flag: str
    value: Optional[str]
    reason: str
    source: str
    no_effect: Optional[str] = None
    """Set when the parser accepts the flag but the build ignores or overrides it, with the rule."""


@dataclass(frozen=True)
class Omitted:
    flag: str
    reason: str
    source: str


@dataclass(frozen=True)
class Command:
    title: str
    argv: tuple[str, ...]
    reason: str
    source: str

    def with_values(self, values: dict[str, str], head: Optional[tuple[str, ...]] = None) -> list[str]:
        """The argv with some flag values (e.g. ``--output_dir``) and optionally the program part replaced."""
        argv = list(self.argv)
        for i, arg in enumerate(argv[:-1]):
            if arg in values:
                argv[i + 1] = str(values[arg])
        if head is not None:
            argv[: len(head)] = list(head)
        return argv


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
            "memory": memory, "notes": list(self.notes), "warnings": list(self.warnings), "errors": list(self.errors),
        }


# ---------------------------------------------------------------- flag checking


def check_argv(argv: list[str], table: dict[str, Any], not_accepted: dict[str, str] | None = None) -> list[str]:
    """Problems of an argument list against a recorded parser table: unknown, removed or deprecated flags,
    values outside the choices, non-integers, switches given a value, values missing."""
    aliases = {a: name for name, spec in table.items() for a in spec.get("aliases", [])}
    problems, i = [], 0
    while i < len(argv):
        flag = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        i += 1 if value is None else 2
        spec = table.get(aliases.get(flag, flag))
        if spec is None:
            why = (not_accepted or {}).get(flag, "not in the recorded parser")
            problems.append(f"{flag} is not accepted: {why}")
            continue
        if spec.get("deprecated"):
            problems.append(f"{flag} is deprecated: {spec['deprecated']}")
        kind = spec["type"]
        if kind == "switch":
            if value is not None:
                problems.append(f"{flag} takes no value (got {value!r})")
        elif value is None:
            problems.append(f"{flag} needs a value")
        elif kind == "choice" and value not in spec["choices"]:
            problems.append(f"{flag} {value!r} is not one of {', '.join(spec['choices'])}")
        elif kind == "int" and not value.lstrip("-").isdigit():
            problems.append(f"{flag} needs an integer (got {value!r})")
    return problems


# ---------------------------------------------------------------- the plan


def _onoff(value: bool) -> str:
    return "enable" if value else "disable"


def _checkpoint_command(spec: Spec, examples_dir: str) -> tuple[Command, list[str]]:
    """examples/quantization/quantize.py: ModelOpt PTQ from the original model into a TensorRT-LLM checkpoint."""
    q, b = spec.quantization, spec.build
    warnings = []
    argv = ["python3", f"{examples_dir}/quantization/quantize.py", "--model_dir", str(spec.model_dir),
            "--dtype", b.dtype, "--qformat", _QUANTIZE_QFORMAT[q.format.value]]
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
    if q.format.value != "none" and not is_excluded("lm_head", q.exclude_modules):
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


def make_plan(spec: Spec, model_config: dict[str, Any], *, config_source: str = "config.json") -> Plan:
    """The whole plan for ``spec`` on its target GPU, with every refusal collected in ``errors``."""
    data = flag_data()
    gpu = lookup_gpu(spec.build.gpu)
    shape = model_shape(model_config)
    b, q, s, plug = spec.build, spec.quantization, spec.serving, spec.build.plugins
    fmt, kv = q.format.value, q.kv_cache.value
    seq = b.resolved_max_seq_len
    sm120 = gpu.sm == 120
    errors: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []

    # ---- refusals the GPU decides
    if fmt not in gpu.native_formats:
        if fmt == "nvfp4":
            errors.append(f"quantization.format=nvfp4 needs Blackwell tensor cores (SM100 B200 or SM120 RTX); "
                          f"{gpu.name} is SM{gpu.sm} ({gpu.architecture}); use fp8 (SM89+) or int4_awq instead")
        elif fmt == "fp8":
            errors.append(f"quantization.format=fp8 needs SM89+ (Ada, Hopper, Blackwell); {gpu.name} is SM{gpu.sm}; "
                          "use int4_awq or int8_sq")
        else:
            errors.append(f"quantization.format={fmt}: TensorRT-LLM 1.2 refuses INT8/INT4 quantization and SmoothQuant "
                          f"on SM100-SM119 ({gpu.name}) (builder.build); use nvfp4 or fp8")
    if kv == "fp8" and not gpu.fp8:
        errors.append(f"quantization.kv_cache=fp8 needs SM89+; {gpu.name} is SM{gpu.sm}; use int8 or none")
    if kv == "int8" and not gpu.int_quant:
        errors.append("quantization.kv_cache=int8 is refused on SM100-SM119 by TensorRT-LLM 1.2 (builder.build); use fp8")

    # ---- refusals the limits decide
    if b.max_input_len >= seq:
        errors.append(f"build.max_input_len ({b.max_input_len}) must be below max_seq_len ({seq})")
    if b.max_num_tokens < b.max_input_len and not s.enable_chunked_context:
        errors.append(f"build.max_num_tokens ({b.max_num_tokens}) is below build.max_input_len ({b.max_input_len}): a "
                      "full prompt cannot be processed in one step; raise max_num_tokens or set serving.enable_chunked_context=true")
    if b.max_num_tokens > seq * b.max_batch_size:
        warnings.append(f"max_num_tokens ({b.max_num_tokens}) exceeds max_batch_size x max_seq_len; trtllm-build clips it "
                        f"to {seq * b.max_batch_size} (check_max_num_tokens)")
    if b.max_num_tokens > 16384:
        warnings.append("max_num_tokens above 16384: trtllm-build warns that it may exceed TensorRT tensor volume limits")
    if b.tokens_per_block & (b.tokens_per_block - 1):
        errors.append(f"build.tokens_per_block ({b.tokens_per_block}) must be a power of two (KV-cache block manager)")
    if b.kv_cache_type != "paged":
        errors.append("build.kv_cache_type=continuous: the tensorrt_llm backend's in-flight batching "
                      f"(serving.batching_strategy={s.batching_strategy}) needs a paged KV cache")
    if shape.max_position_embeddings and seq > shape.max_position_embeddings:
        warnings.append(f"max_seq_len {seq} exceeds the model's max_position_embeddings {shape.max_position_embeddings}; "
                        "quality may suffer beyond the trained context")

    # ---- refusals the parallel layout decides
    tp, pp = b.tp_size, b.pp_size
    if shape.num_heads % tp:
        errors.append(f"build.tp_size={tp} does not divide the {shape.num_heads} attention heads")
    if shape.num_kv_heads % tp and tp % shape.num_kv_heads:
        errors.append(f"build.tp_size={tp} neither divides nor is a multiple of the {shape.num_kv_heads} KV heads")
    elif tp > shape.num_kv_heads:
        notes.append(f"tp_size {tp} > {shape.num_kv_heads} KV heads: each KV head is replicated on {tp // shape.num_kv_heads} GPUs")
    if pp > shape.num_layers:
        errors.append(f"build.pp_size={pp} exceeds the {shape.num_layers} layers")
    elif shape.num_layers % pp:
        notes.append(f"pp_size {pp} splits {shape.num_layers} layers unevenly")
    if b.world_size > 1:
        notes.append(f"world size {b.world_size} (tp {tp} x pp {pp}): needs {b.world_size} GPUs of this kind; the engine "
                     f"has one rank<N>.engine per GPU and the server runs under MPI with world_size {b.world_size}")

    # ---- refusals the features decide
    needs_paged_context = [n for n, on in (("serving.enable_chunked_context", s.enable_chunked_context),
                                           ("serving.enable_kv_cache_reuse", s.enable_kv_cache_reuse)) if on]
    if needs_paged_context and (plug.context_fmha is False or plug.use_paged_context_fmha is False):
        errors.append(f"{' and '.join(needs_paged_context)} need paged context FMHA, which build.plugins turn off "
                      "(context_fmha=false disables it too, builder.build)")

    # ---- the checkpoint step
    conversion, conversion_warnings = _checkpoint_command(spec, data["container"]["examples_dir"])
    warnings += conversion_warnings

    # ---- trtllm-build flags, in the reference deployment's order
    flags: list[Flag] = []
    omitted: list[Omitted] = []

    def emit(flag: str, value: Optional[str], reason: str, source: str, no_effect: Optional[str] = None) -> None:
        flags.append(Flag(flag, value, reason, source, no_effect))

    def leave(flag: str, reason: str, source: str) -> None:
        omitted.append(Omitted(flag, reason, source))

    emit("--checkpoint_dir", str(spec.trtllm_checkpoint_dir), "the TensorRT-LLM checkpoint of the step above", SRC_CHECKPOINT)
    emit("--output_dir", str(spec.engine_dir), "engine folder (artifacts.engine_dir) that the rendered tensorrt_llm "
         "model loads (gpt_model_path)", SRC_SPEC)
    seq_reason = (f"build.max_input_len {b.max_input_len} + build.max_output_len {b.max_output_len}"
                  if b.max_seq_len is None else "build.max_seq_len")
    emit("--max_seq_len", str(seq), seq_reason + " (prompt + output per sequence)", SRC_SPEC)
    emit("--max_batch_size", str(b.max_batch_size), "build.max_batch_size: sequences per engine step", SRC_SPEC)
    emit("--max_num_tokens", str(b.max_num_tokens), "build.max_num_tokens: tokens (all sequences) per engine step", SRC_SPEC)

    if plug.gemm_plugin is not None:
        emit("--gemm_plugin", plug.gemm_plugin, "build.plugins.gemm_plugin", SRC_SPEC,
             "builder.build keeps the NVFP4 GEMM plugin unless the value is `disable`"
             if fmt == "nvfp4" and plug.gemm_plugin != "disable" and plug.gemm_plugin != "nvfp4" else None)
    elif fmt == "nvfp4":
        emit("--gemm_plugin", "nvfp4", "NVFP4 GEMMs run in the nvfp4 cuBLASLt plugin (builder.build selects it for NVFP4 "
             "checkpoints unless disabled; saying so keeps the engine config explicit)", SRC_REFERENCE)
    else:
        emit("--gemm_plugin", "auto", f"the plugin handles the unquantized GEMMs in the model dtype; {fmt} GEMMs "
             "are chosen by TensorRT", "upstream rule: tensorrt_llm/plugin/plugin.py (gemm_plugin)")
    emit("--gpt_attention_plugin", b.dtype, "attention plugin in the activation dtype (build.dtype): in-flight "
         "batching and the paged KV cache run in it", SRC_REFERENCE)
    emit("--kv_cache_type", b.kv_cache_type, "build.kv_cache_type: the tensorrt_llm backend's in-flight batching "
         "allocates KV blocks on demand", SRC_SPEC)
    emit("--tokens_per_block", str(b.tokens_per_block), "build.tokens_per_block: KV-cache page size", SRC_SPEC)
    emit("--remove_input_padding", "enable", "packed sequences: in-flight batching mixes prompts and generation "
         "steps in one batch of max_num_tokens", SRC_REFERENCE)

    fused_mlp = True if plug.use_fused_mlp is None else plug.use_fused_mlp
    fused_mlp_moot = None
    if fused_mlp and fmt not in ("fp8", "none"):
        fused_mlp_moot = (f"{fmt} weights: build.py turns use_fused_mlp off when quant_algo is set and not FP8, and "
                          "fuse_gate_mlp skips non-FP8 quantized MLPs")
    emit("--use_fused_mlp", _onoff(fused_mlp), "fuse gate and up projections into one GEMM" if plug.use_fused_mlp is None
         else "build.plugins.use_fused_mlp", SRC_REFERENCE if plug.use_fused_mlp is None else SRC_SPEC, fused_mlp_moot)

    nqf = plug.norm_quant_fusion if plug.norm_quant_fusion is not None else fmt == "nvfp4"
    if nqf:
        effective = shape.architecture == "LlamaForCausalLM" and fmt == "nvfp4"
        emit("--norm_quant_fusion", "enable", "fuse RMSNorm with NVFP4 activation quantization"
             if plug.norm_quant_fusion is None else "build.plugins.norm_quant_fusion",
             SRC_REFERENCE if plug.norm_quant_fusion is None else SRC_SPEC,
             None if effective else f"builder.build overrides it to off unless the architecture is LlamaForCausalLM "
             f"with NVFP4 weights (this checkpoint: {shape.architecture}, {fmt})")
    else:
        leave("--norm_quant_fusion", "build.plugins.norm_quant_fusion=false" if plug.norm_quant_fusion is False else
              "only NVFP4 LlamaForCausalLM checkpoints use it; builder.build turns it off otherwise (default disable)",
              SRC_SPEC if plug.norm_quant_fusion is False else SRC_BUILDER)
    emit("--max_beam_width", str(b.max_beam_width), "build.max_beam_width (1: greedy/sampling)", SRC_SPEC)
    emit("--workers", str(b.workers), "build.workers: ranks built in parallel (trtllm-build uses at most the visible GPUs)", SRC_SPEC)
    if b.multiple_profiles:
        emit("--multiple_profiles", "enable", "build.multiple_profiles: several TensorRT profiles, faster at small "
             "batches for a longer build", SRC_SPEC)
    else:
        leave("--multiple_profiles", "build.multiple_profiles=false (parser default disable)", SRC_SPEC)

    # ---- attention features: overrides, conservative SM120 choices, upstream defaults
    context_fmha_on = plug.context_fmha is not False
    if plug.context_fmha is not None:
        emit("--context_fmha", _onoff(plug.context_fmha), "build.plugins.context_fmha", SRC_SPEC)
    elif sm120:
        leave("--context_fmha", "not forced on: field reports of FMHA failures on SM120 with TensorRT-LLM 1.2. "
              "trtllm-build's default (enable) then applies; set build.plugins.context_fmha=false to turn it off "
              "if the build or the server fails in FMHA", SRC_FIELD_SM120)
    else:
        leave("--context_fmha", "trtllm-build's default (enable) is wanted here", SRC_PARSER)
    if not context_fmha_on:
        emit("--max_input_len", str(b.max_input_len), "context FMHA is off, so trtllm-build uses max_input_len to size "
             "the context phase (builder._init_max_seq_len)", SRC_BUILDER)
    else:
        leave("--max_input_len", "trtllm-build ignores it when padding removal and context FMHA are both on "
              "(builder._init_max_seq_len); the engine's config.json then records the parser default (1024), which "
              "tritongen does not compare", SRC_BUILDER)

    if plug.use_paged_context_fmha is not None:
        emit("--use_paged_context_fmha", _onoff(plug.use_paged_context_fmha), "build.plugins.use_paged_context_fmha", SRC_SPEC,
             "context FMHA is off, so builder.build turns it off" if plug.use_paged_context_fmha and not context_fmha_on else None)
    elif needs_paged_context:
        emit("--use_paged_context_fmha", "enable", f"{' and '.join(needs_paged_context)} need paged context FMHA "
             "(the default, stated explicitly)", "upstream rule: tensorrt_llm/plugin/plugin.py (use_paged_context_fmha)")
    else:
        leave("--use_paged_context_fmha", "trtllm-build's default (enable) applies; chunked context and KV-cache "
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
        emit("--use_fp8_context_fmha", _onoff(plug.use_fp8_context_fmha), "build.plugins.use_fp8_context_fmha", SRC_SPEC, moot)
    elif sm120:
        leave("--use_fp8_context_fmha", "not forced on: field reports of FP8 context FMHA failures and missing "
              "kernels on SM120 with TensorRT-LLM 1.2. Left out, trtllm-build's default (enable) applies and "
              + fp8_fmha_rule + "; build.plugins.context_fmha=false is the way to turn it off", SRC_FIELD_SM120)
    else:
        leave("--use_fp8_context_fmha", "trtllm-build's default (enable) applies; " + fp8_fmha_rule, SRC_BUILDER)

    if plug.fuse_fp4_quant is not None:
        if plug.fuse_fp4_quant and sm120:
            warnings.append("build.plugins.fuse_fp4_quant=true on SM120: field reports of missing FMHA kernels with FP4 "
                            "output there (TensorRT-LLM 1.2)")
        emit("--fuse_fp4_quant", _onoff(plug.fuse_fp4_quant), "build.plugins.fuse_fp4_quant", SRC_SPEC,
             "only NVFP4 attention outputs are fused (set_fuse_fp4_quant)" if plug.fuse_fp4_quant and fmt != "nvfp4" else None)
    elif sm120:
        leave("--fuse_fp4_quant", "not forced on: field reports of missing FMHA kernels with FP4 output on SM120 "
              "(TensorRT-LLM 1.2); trtllm-build's default (disable) applies", SRC_FIELD_SM120)
    else:
        leave("--fuse_fp4_quant", "trtllm-build's default (disable); opt in with build.plugins.fuse_fp4_quant=true", SRC_PARSER)

    # ---- flags users expect that 1.2.1 does not take
    not_accepted = data["not_accepted"]
    for flag in ("--max_output_len", "--exclude_modules", "--tp_size", "--pp_size"):
        leave(flag, not_accepted[flag], SRC_PARSER)
    leave("--opt_num_tokens", "build.py refuses it together with --multiple_profiles enable; TensorRT picks it", SRC_BUILD_PY)
    leave("--paged_kv_cache", "deprecated in 1.2.1; --kv_cache_type paged says the same", SRC_PARSER)

    # ---- every emitted argument against the recorded parsers
    build_argv = [a for f in flags for a in ((f.flag,) if f.value is None else (f.flag, f.value))]
    errors += [f"trtllm-build: {p}" for p in check_argv(build_argv, data["flags"], not_accepted)]
    errors += [f"quantize.py: {p}" for p in check_argv(list(conversion.argv[2:]), data["quantize_py"])]

    # ---- memory
    memory = memory_plan(spec, shape, gpu)
    gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
    if memory.weights_per_gpu_bytes > memory.gpu_bytes:
        errors.append(f"the weights need {gib(memory.weights_per_gpu_bytes)} per GPU but {gpu.name} has "
                      f"{gpu.memory_gib:g} GiB: use a smaller format, a larger GPU or more GPUs (tp_size/pp_size)")
    elif memory.kv_tokens < seq:
        warnings.append(f"the KV cache holds {memory.kv_tokens} tokens, less than one full sequence of max_seq_len "
                        f"{seq}: lower max_seq_len or use a larger GPU or KV format")
    elif not memory.fits_batch:
        warnings.append(f"max_batch_size {b.max_batch_size} sequences of max_seq_len {seq} need {memory.demand_tokens} "
                        f"KV tokens; the cache holds about {memory.kv_tokens} ({memory.full_sequences} full sequences): "
                        "requests will wait for KV blocks (or lower max_batch_size / max_seq_len)")

    notes.append("TensorRT-LLM 1.2.1 is the last release line with trtllm-build and the C++ tensorrtllm Triton backend")
    if fused_mlp_moot or any(f.no_effect for f in flags):
        notes.append("flags marked 'no effect' are accepted by the 1.2.1 parser but ignored or overridden by the build "
                     "for this checkpoint; they are kept so the engine matches the reference command")
    versions = {
        "tensorrt_llm": data["tensorrt_llm_version"],
        "triton_container": data["container"]["image"],
        "triton_server": data["container"]["triton_server"],
        "trtllm_build_parser": f"{data['sources']['build_py']['path']}@{data['sources']['build_py']['commit'][:12]}, "
                               f"{data['sources']['plugin_py']['path']}@{data['sources']['plugin_py']['commit'][:12]}",
    }
    return Plan(
        model=spec.model.source, model_config_source=config_source, gpu=gpu, versions=versions, conversion=conversion,
        flags=tuple(flags), omitted=tuple(omitted), memory=memory, notes=tuple(notes), warnings=tuple(warnings),
        errors=tuple(errors),
    )


# ---------------------------------------------------------------- model config input


def reference_config_path() -> Path:
    return data_dir() / REFERENCE_CONFIG_FILE


def read_model_config(spec: Spec, path: Path | None = None) -> tuple[dict[str, Any], str]:
    """The model's config.json and where it came from: ``path``, the downloaded model, or (for the default
    Qwen/Qwen3-8B only) the copy shipped with tritongen, so a plan works offline on a clean clone."""
    if path is not None:
        candidates = [(Path(path), str(path))]
    else:
        local = spec.model_dir / "config.json"
        candidates = [(local, str(local))]
        if not local.is_file() and spec.model.source == REFERENCE_MODEL:
            candidates.append((reference_config_path(), f"shipped reference config of {REFERENCE_MODEL} "
                               f"({REFERENCE_CONFIG_FILE}); no model downloaded"))
    for candidate, source in candidates:
        if candidate.is_file():
            fix = f"replace it with the model's own config.json (tritongen fetch {spec.model.source}), or pass --model-config PATH"
            return read_json_object(candidate, fix=fix), source
    raise ArtifactMissing(
        f"no config.json for model {spec.model.source}", where=str(candidates[0][0]),
        fix=f"tritongen fetch {spec.model.source}, or pass --model-config PATH/config.json")


# ---------------------------------------------------------------- built engine vs spec


def _dig(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def _compare(tree: dict[str, Any], expected: dict[str, tuple[Any, ...]], prefix: str) -> list[str]:
    problems = []
    for key, allowed in expected.items():
        try:
            value = _dig(tree, key)
        except KeyError:
            problems.append(f"{prefix}{key} is missing")
            continue
        if value not in allowed:
            want = allowed[0] if len(allowed) == 1 else " or ".join(map(str, allowed))
            problems.append(f"{prefix}{key} is {value!r}, the spec wants {want!r}")
    return problems


def _pretrained_expectations(spec: Spec) -> dict[str, tuple[Any, ...]]:
    b = spec.build
    return {
        "mapping.tp_size": (b.tp_size,),
        "mapping.pp_size": (b.pp_size,),
        "mapping.world_size": (b.world_size,),
        "quantization.quant_algo": _CHECKPOINT_QUANT_ALGO[spec.quantization.format.value],
        "quantization.kv_cache_quant_algo": _CHECKPOINT_KV_ALGO[spec.quantization.kv_cache.value],
    }


def checkpoint_config_mismatches(spec: Spec, checkpoint_config: dict[str, Any]) -> list[str]:
    """Differences between a TensorRT-LLM checkpoint's config.json and the spec (mapping, quantization)."""
    return _compare(checkpoint_config, _pretrained_expectations(spec), "")


def engine_config_mismatches(spec: Spec, engine_config: dict[str, Any]) -> list[str]:
    """Differences between a built engine's config.json (TensorRT-LLM 1.2 layout: version, pretrained_config,
    build_config) and the spec: batch size, sequence length, tokens per step, beam width, KV layout, quantization,
    tp/pp. Empty when they agree. Shared by ``tritongen build`` and ``tritongen validate``."""
    b = spec.build
    seq = b.resolved_max_seq_len
    build_expected = {
        "max_batch_size": (b.max_batch_size,),
        "max_seq_len": (seq,),
        "max_num_tokens": (min(b.max_num_tokens, seq * b.max_batch_size),),  # trtllm-build clips (check_max_num_tokens)
        "max_beam_width": (b.max_beam_width,),
        "kv_cache_type": (b.kv_cache_type.upper(),),
        "plugin_config.tokens_per_block": (b.tokens_per_block,),
    }
    problems = _compare(engine_config, {f"build_config.{k}": v for k, v in build_expected.items()}, "")
    pretrained = engine_config.get("pretrained_config")
    if not isinstance(pretrained, dict):
        return problems + ["pretrained_config is missing"]
    return problems + _compare(pretrained, _pretrained_expectations(spec), "pretrained_config.")
