"""The CPU reference engine's settings and memory sizing, read from the ``tensorrt_llm`` model's parameters.

Kept apart from the engine so the sizing (KV blocks as TensorRT-LLM sizes them, the attention-mask
working memory transformers allocates) can be checked without loading a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model_common import flag, integer, required

POLICIES = ("guaranteed_no_evict", "max_utilization")
MIB = 1024 * 1024
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MODEL = "tensorrt_llm"
"""The model whose parameters these are (named in errors)."""


@dataclass(frozen=True)
class EngineSettings:
    """Engine settings read from the ``tensorrt_llm`` model's config parameters (string values).

    Official TensorRT-LLM keys keep their meaning; ``tokens_per_block``, ``max_num_tokens``,
    ``max_input_len``, ``max_seq_len``, ``cpu_kv_cache_mib``, ``cpu_threads`` and ``dtype`` stand in
    for what a GPU engine reads from its build and from the card; ``cpu_max_batch_tokens`` and
    ``max_queue_size`` bound the engine's memory and queue. ``dtype`` is the compute and KV dtype here:
    float32 keeps greedy output identical to ``generate``; in bfloat16 batched steps round differently
    from ``generate`` and can flip near-tied greedy choices.

    Every value comes from the rendered config (render writes each one from the spec); only the
    optional ones have defaults here: the KV token cap and thread count (unset means none), and
    the two check periods, at the C++ backend's own defaults because render leaves those upstream
    keys out.
    """

    weights_dir: str
    max_batch_size: int
    dtype: str
    tokens_per_block: int
    max_num_tokens: int
    max_input_len: int
    max_seq_len: int
    kv_cache_free_gpu_mem_fraction: float
    cpu_kv_cache_mib: int
    cpu_max_batch_tokens: int
    max_queue_size: int
    enable_kv_cache_reuse: bool
    enable_chunked_context: bool
    batch_scheduler_policy: str
    exclude_input_in_output: bool
    max_tokens_in_paged_kv_cache: int | None = None
    cpu_threads: int | None = None
    cancellation_check_period_ms: int = 100
    stats_check_period_ms: int = 100
    cpu_step_delay_ms: int = 0
    """Added to every forward pass (prefill or decode step): a server slowed by a known amount per token,
    which the release gate's tests must catch. Never rendered; set by hand in a copied repository."""

    _INTS = ("tokens_per_block", "max_num_tokens", "max_input_len", "max_seq_len", "cpu_kv_cache_mib",
             "cpu_max_batch_tokens", "max_queue_size")
    _BOOLS = ("enable_kv_cache_reuse", "enable_chunked_context", "exclude_input_in_output")
    _OPTIONAL_INTS = ("max_tokens_in_paged_kv_cache", "cpu_threads", "cancellation_check_period_ms",
                      "stats_check_period_ms", "cpu_step_delay_ms")

    @classmethod
    def from_parameters(cls, params: dict[str, str], max_batch_size: int) -> "EngineSettings":
        """Parse the set parameters (``model_common.parameters``); a missing required one is an error."""
        try:
            values: dict = {"weights_dir": required(params, "gpt_model_path", MODEL),
                            "max_batch_size": max(1, int(max_batch_size))}
            for key in cls._INTS:
                values[key] = integer(required(params, key, MODEL), key)
            for key in cls._BOOLS:
                values[key] = flag(required(params, key, MODEL), key)
            for key in cls._OPTIONAL_INTS:
                if key in params:
                    values[key] = integer(params[key], key)
            key = "kv_cache_free_gpu_mem_fraction"
            try:
                values[key] = float(required(params, key, MODEL))
            except ValueError as exc:
                raise ValueError(f"parameter {key!r}: {exc}") from None
            for key in ("dtype", "batch_scheduler_policy"):
                values[key] = required(params, key, MODEL)
        except ValueError as exc:
            raise ValueError(f"bad tensorrt_llm parameter: {exc}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.batch_scheduler_policy not in POLICIES:
            raise ValueError(f"batch_scheduler_policy {self.batch_scheduler_policy!r}: expected one of {POLICIES}")
        if self.dtype not in _DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {sorted(_DTYPE_BYTES)}")
        if not 0.0 < self.kv_cache_free_gpu_mem_fraction <= 1.0:
            raise ValueError("kv_cache_free_gpu_mem_fraction must be in (0, 1]")
        for key in ("tokens_per_block", "max_num_tokens", "cpu_kv_cache_mib", "cpu_max_batch_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1")

    @property
    def batch_tokens(self) -> int:
        """Tokens per forward pass given to transformers: max_num_tokens, capped for the CPU's memory."""
        return min(self.max_num_tokens, self.cpu_max_batch_tokens)

    @property
    def guaranteed_no_evict(self) -> bool:
        return self.batch_scheduler_policy == "guaranteed_no_evict"


def kv_bytes_per_block(model_config, dtype: str, tokens_per_block: int) -> int:
    """Bytes of one KV block: keys and values of ``tokens_per_block`` tokens in every layer.

    The CPU cache stores keys and values in the engine dtype (FP8 KV is emulated, not stored).
    """
    cfg = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * _DTYPE_BYTES[dtype] * tokens_per_block


def resolve_num_blocks(settings: EngineSettings, bytes_per_block: int) -> tuple[int, str]:
    """KV blocks as TensorRT-LLM sizes them: the fraction of (here: ``cpu_kv_cache_mib``) memory, capped
    by ``max_tokens_in_paged_kv_cache`` when set; the smaller wins. Returns the count and why.

    Then capped at what ``max_batch_size`` sequences of ``max_seq_len`` tokens can ever hold (plus
    one block each for a partly filled last block): more is never used, and on the CPU every cache
    token also widens the attention mask (``working_memory``)."""
    budget = settings.kv_cache_free_gpu_mem_fraction * settings.cpu_kv_cache_mib * MIB
    by_fraction = int(budget // bytes_per_block)
    why = f"{settings.kv_cache_free_gpu_mem_fraction} x {settings.cpu_kv_cache_mib} MiB / {bytes_per_block} B per block"
    blocks = by_fraction
    if settings.max_tokens_in_paged_kv_cache is not None:
        by_tokens = math.ceil(settings.max_tokens_in_paged_kv_cache / settings.tokens_per_block)
        if by_tokens < blocks:
            blocks = by_tokens
            why = f"max_tokens_in_paged_kv_cache {settings.max_tokens_in_paged_kv_cache} / {settings.tokens_per_block}"
    if blocks < 1:
        raise ValueError(f"the KV cache holds no block ({why}); raise cpu_kv_cache_mib or the KV fraction")
    usable = settings.max_batch_size * (math.ceil(settings.max_seq_len / settings.tokens_per_block) + 1)
    if usable < blocks:
        blocks, why = usable, f"max_batch_size {settings.max_batch_size} x max_seq_len {settings.max_seq_len}"
    return blocks, why


def working_memory(settings: EngineSettings, bytes_per_block: int, num_blocks: int) -> dict[str, int]:
    """Bytes the engine allocates at start, predicted from its settings: the paged KV cache and
    transformers' dense attention mask of batch tokens x (cache tokens + batch tokens) values
    (``ContinuousBatchingConfig`` sizing in transformers 5.24, ``attention_mask_bytes``)."""
    m = settings.batch_tokens
    return {
        "kv_cache": num_blocks * bytes_per_block,
        "attention_mask": m * (num_blocks * settings.tokens_per_block + m) * _DTYPE_BYTES[settings.dtype],
    }
