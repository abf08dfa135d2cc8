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

