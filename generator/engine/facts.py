"""Engine facts in one place: what a TensorRT-LLM 1.2.1 engine folder records and what the runtime enforces.

One reader of the engine's ``config.json`` (a corrupt or foreign file is an ``ArtifactCorrupt`` naming the file
and the fix), one derivation of the limits the C++ runtime actually applies (``RuntimeLimits``), the names
checkpoints and engines give each quantization format, and the module-exclusion rule. Every rule is recorded
with its upstream file, symbol and commit in generator/data/trtllm_engine_1.2.1.json (``rules()``); messages
name the rule they apply.
Pure: reads files only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from generator.errors import ArtifactCorrupt
from generator.fsutil import read_json_object
from generator.resources import data_json
from generator.spec import KVCacheFormat, QuantFormat

RULES_FILE = "trtllm_engine_1.2.1.json"
TRTLLM_VERSION = "1.2.1"
"""The TensorRT-LLM release tritongen targets: the engine must have been built by it."""

# TensorRT-LLM / ModelOpt quant_algo names that each spec format may appear as (rule "quant_algo").
QUANT_ALGOS: dict[QuantFormat, tuple[Optional[str], ...]] = {
    QuantFormat.nvfp4: ("NVFP4",),
    QuantFormat.fp8: ("FP8",),
    QuantFormat.int4_awq: ("W4A16_AWQ",),
    QuantFormat.int8_sq: ("W8A8_SQ_PER_CHANNEL", "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "W8A8_SQ_PER_TENSOR_PLUGIN"),
    QuantFormat.none: (None,),
}
KV_ALGOS: dict[KVCacheFormat, tuple[Optional[str], ...]] = {
    KVCacheFormat.fp8: ("FP8",), KVCacheFormat.int8: ("INT8",), KVCacheFormat.none: (None,),
}
QUANTIZE_QFORMAT: dict[QuantFormat, str] = {
    QuantFormat.nvfp4: "nvfp4", QuantFormat.fp8: "fp8", QuantFormat.int4_awq: "int4_awq",
    QuantFormat.int8_sq: "int8_sq", QuantFormat.none: "full_prec",
}
"""quantize.py --qformat per spec format."""

_REBUILD = "rebuild the engine with `tritongen build SPEC --force`"


def rules() -> dict[str, dict[str, Any]]:
    """Every recorded engine rule: name → {rule, source {path, symbol, commit}}."""
    return data_json(RULES_FILE)["rules"]


class EngineFacts(BaseModel):
    """What one engine folder records, typed; read by :func:`read_engine`."""

    config_path: str
    version: str
    dtype: str
    tp_size: int
    pp_size: int
    world_size: int
    quant_algo: Optional[str]
    kv_cache_quant_algo: Optional[str]
    max_batch_size: int
    max_beam_width: int
    max_input_len: int
    """As recorded; the runtime may use another limit (see :func:`runtime_limits`)."""
    max_seq_len: int
    max_num_tokens: Optional[int]
    kv_cache_type: str
    tokens_per_block: int
    remove_input_padding: bool
    context_fmha: bool
    use_paged_context_fmha: bool
    rank_files: list[str]

    @property
    def kv_dtype(self) -> str:
        """The KV-cache dtype: fp8 / int8 from kv_cache_quant_algo, else the model dtype (rule "quant_algo")."""
        return {"FP8": "fp8", "INT8": "int8"}.get(self.kv_cache_quant_algo or "", self.dtype)


class RuntimeLimits(BaseModel):
    """The limits the C++ runtime applies to an engine (rules "runtime_max_input_len", "runtime_batch_and_beam")."""

    max_input_len: int
    max_input_len_rule: str
    max_seq_len: int
    max_batch_size: int
    max_beam_width: int
    max_num_tokens: Optional[int]
    tokens_per_block: int
    kv_dtype: str
    world_size: int


def runtime_limits(facts: EngineFacts, *, chunked_context: bool) -> RuntimeLimits:
    """What trtGptModel.h derives from the engine: the prompt limit depends on chunked context, context FMHA
    and packed input, not on the recorded max_input_len in the common case."""
    seq = facts.max_seq_len
    if chunked_context:
        max_input, why = seq - 1, "max_seq_len - 1 (chunked context is enabled)"
    elif facts.context_fmha and facts.remove_input_padding and facts.max_num_tokens:
        max_input = min(seq - 1, facts.max_num_tokens)
        why = "min(max_seq_len - 1, max_num_tokens) (context FMHA and packed input are on)"
    else:
        max_input, why = facts.max_input_len, "build_config.max_input_len (context FMHA or packed input is off)"
    return RuntimeLimits(max_input_len=max_input, max_input_len_rule=why, max_seq_len=seq,
                         max_batch_size=facts.max_batch_size, max_beam_width=facts.max_beam_width,
                         max_num_tokens=facts.max_num_tokens, tokens_per_block=facts.tokens_per_block,
                         kv_dtype=facts.kv_dtype, world_size=facts.world_size)


# ---------------------------------------------------------------- reading


def _get(tree: dict[str, Any], dotted: str, kind: type | tuple[type, ...], path: Path, *, optional: bool = False) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            if optional:
                return None
            raise ArtifactCorrupt(f"engine config.json has no {dotted} (not written by trtllm-build 1.2)", where=str(path),
                                  fix=_REBUILD)
        node = node[key]
    if node is None and optional:
        return None
    if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
        # the type, never the value: a repository can name any folder's config.json (its text stays unprinted)
        raise ArtifactCorrupt(f"engine config.json {dotted} is a {type(node).__name__}, not a "
                              f"{getattr(kind, '__name__', kind)}", where=str(path), fix=_REBUILD)
    return node


def read_engine(engine_dir: Path) -> EngineFacts:
    """The engine folder's facts. A missing, corrupt or foreign config.json is an ArtifactCorrupt with the fix."""
    path = Path(engine_dir) / "config.json"
    if not path.is_file():
        raise ArtifactCorrupt("engine folder has no config.json (not a trtllm-build output)", where=str(engine_dir),
                              fix=f"{_REBUILD}, or point artifacts.engine_dir at trtllm-build's --output_dir")
    data = read_json_object(path, fix=_REBUILD)
    if "build_config" not in data and ("architectures" in data or "model_type" in data):
        raise ArtifactCorrupt("this is a Hugging Face model config, not a trtllm-build engine config",
                              where=str(path), fix="point artifacts.engine_dir at trtllm-build's --output_dir")
    if "builder_config" in data and "version" not in data:
        raise ArtifactCorrupt("an engine of TensorRT-LLM before 0.9 (builder_config layout); the 1.2.1 runtime "
                              "cannot load it", where=str(path), fix=_REBUILD)
    plugin = "build_config.plugin_config"
    return EngineFacts(
        config_path=str(path),
        version=str(_get(data, "version", (str, int, float), path)),
        dtype=_get(data, "pretrained_config.dtype", str, path),
        tp_size=_get(data, "pretrained_config.mapping.tp_size", int, path),
        pp_size=_get(data, "pretrained_config.mapping.pp_size", int, path),
        world_size=_get(data, "pretrained_config.mapping.world_size", int, path),
        quant_algo=_get(data, "pretrained_config.quantization.quant_algo", str, path, optional=True),
        kv_cache_quant_algo=_get(data, "pretrained_config.quantization.kv_cache_quant_algo", str, path, optional=True),
        max_batch_size=_get(data, "build_config.max_batch_size", int, path),
        max_beam_width=_get(data, "build_config.max_beam_width", int, path),
        max_input_len=_get(data, "build_config.max_input_len", int, path),
        max_seq_len=_get(data, "build_config.max_seq_len", int, path),
        max_num_tokens=_get(data, "build_config.max_num_tokens", int, path, optional=True),
        kv_cache_type=_get(data, "build_config.kv_cache_type", str, path),
        tokens_per_block=_get(data, f"{plugin}.tokens_per_block", int, path),
        remove_input_padding=_get(data, f"{plugin}.remove_input_padding", bool, path),
        context_fmha=_get(data, f"{plugin}.context_fmha", bool, path),
        use_paged_context_fmha=_get(data, f"{plugin}.use_paged_context_fmha", bool, path),
        rank_files=sorted(p.name for p in Path(engine_dir).glob("rank*.engine")),
    )


def read_engine_if_built(engine_dir: Path) -> Optional[EngineFacts]:
    """The engine's facts, or None when no engine folder exists yet (built later on the GPU host)."""
    return read_engine(engine_dir) if (Path(engine_dir) / "config.json").is_file() else None
