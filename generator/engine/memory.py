"""The memory plan: weight bytes per format, KV-cache bytes per token and how many tokens fit on the GPU.

Arithmetic on the model's config.json sizes only (generator.engine.shape); an estimate, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from generator.engine.gpus import GpuSpec
from generator.engine.shape import ModelShape, linear_modules
from generator.spec import Spec

GIB = 1 << 30
RUNTIME_RESERVE_BYTES = GIB
"""CUDA context, cuBLAS/TensorRT workspaces and decoder buffers: an assumption, not a measurement."""

MEMORY_ASSUMPTION = (
    "GPU memory minus weights minus a runtime reserve (1 GiB for the CUDA context, cuBLAS/TensorRT "
    "workspaces and decoder buffers, plus activations of max_num_tokens tokens: 4 x hidden + 2 x "
    "intermediate/tp values in the activation dtype, plus FP32 logits of max_batch_size rows); "
    "kv_cache_free_gpu_mem_fraction of the rest becomes KV cache. An estimate, not a measurement."
)
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2}


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
        if q.keeps_unquantized(name):
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



def kv_token_ceiling(memory: MemoryPlan) -> int:
    """The most KV-cache tokens one GPU could ever hold: all its memory after the weights, nothing reserved
    (rule "kv_capacity"). A max_tokens_in_paged_kv_cache above it can never be allocated."""
    return max(memory.gpu_bytes - memory.weights_per_gpu_bytes, 0) // memory.kv_bytes_per_token_per_gpu
