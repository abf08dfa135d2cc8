"""The model's shape: the sizes of a decoder-only config.json that decide memory, refusals and layout.

Read from the model's own config.json, or (for the default Qwen/Qwen3-8B only) the copy shipped with
tritongen, so a plan works offline on a clean clone. Pure: reads files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from generator.errors import ArtifactCorrupt, ArtifactMissing, PlanRefused
from generator.fsutil import read_json_object
from generator.resources import data_dir
from generator.spec import REFERENCE_MODEL, Spec

REFERENCE_CONFIG_FILE = "qwen3-8b-config.json"


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


SIZE_LIMITS = {"num_hidden_layers": 4096, "num_attention_heads": 4096, "num_key_value_heads": 4096, "head_dim": 65536,
               "hidden_size": 1 << 24, "intermediate_size": 1 << 24, "vocab_size": 1 << 24}
"""The largest size a config.json may give: far past any decoder model (Llama 3.1 405B: 126 layers, 128 heads, hidden
16,384), and small enough that the plan's per-layer and per-head loops stay cheap (review29: 20 million layers took
8 GB and ended in a MemoryError, a huge head count hung the tp_size refusal)."""

_CONFIG_FIX = "pass the model's own config.json with --model-config PATH"


def _size(config: dict[str, Any], key: str, *, required: bool) -> Optional[int]:
    """A size of config.json: a whole number from 1 to its SIZE_LIMITS entry (absent or null where optional)."""
    value = config.get(key)
    if value is None and not required:
        return None
    limit = SIZE_LIMITS.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (limit is not None and value > limit):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        bound = f"from 1 to {limit:,}" if limit is not None else "of at least 1"
        raise ArtifactCorrupt(f"model config.json has {key} = {shown}; a decoder model's {key} is a whole number "
                              f"{bound}", where="config.json", fix=_CONFIG_FIX)
    return value


def model_shape(config: dict[str, Any]) -> ModelShape:
    """Read the sizes from a Hugging Face config.json; dense decoder models only."""
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
               if config.get(k) is None]
    if missing:
        raise ArtifactCorrupt(
            f"model config.json lacks {', '.join(missing)}; the plan needs a decoder model's sizes",
            where="config.json", fix=_CONFIG_FIX)
    if any(config.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise PlanRefused("mixture-of-experts models are not covered by the memory plan", where="config.json",
                          fix="plan a dense decoder model; build MoE models with TensorRT-LLM's own tools")
    sizes = {k: _size(config, k, required=True)
             for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")}
    sizes |= {k: _size(config, k, required=False) for k in ("num_key_value_heads", "head_dim", "max_position_embeddings")}
    heads = sizes["num_attention_heads"]
    architectures = config.get("architectures") or ["unknown"]
    if not isinstance(architectures, list) or not isinstance(architectures[0], str):
        raise ArtifactCorrupt(f"model config.json has architectures = {str(architectures)[:40]!r}; it is a list of "
                              "class names, e.g. [\"Qwen3ForCausalLM\"]", where="config.json", fix=_CONFIG_FIX)
    model_type = str(config.get("model_type", ""))
    attention_bias = bool(config.get("attention_bias", False))
    return ModelShape(
        architecture=architectures[0],
        model_type=model_type,
        hidden_size=sizes["hidden_size"],
        num_layers=sizes["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=sizes["num_key_value_heads"] or heads,
        head_dim=sizes["head_dim"] or max(1, sizes["hidden_size"] // heads),
        intermediate_size=sizes["intermediate_size"],
        vocab_size=sizes["vocab_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        # Qwen2 hard-codes q/k/v biases; Llama-style configs say so with attention_bias (all four projections).
        qkv_bias=attention_bias or model_type == "qwen2",
        o_bias=attention_bias,
        qk_norm=model_type.startswith("qwen3"),
        max_position_embeddings=sizes["max_position_embeddings"],
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

