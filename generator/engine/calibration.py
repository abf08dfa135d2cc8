"""What a quantize run costs on a GPU: calibration peak memory and time per sample, from the shape alone.

Why: calibration holds the whole unquantized model on one GPU, so whether an 8B model calibrates on
a 24 GB card, and how long 512 samples take, must be known before a GPU is rented, not after it
runs out of memory.

Peak memory = BF16/FP16 weights + the larger of two moments: the end of the forward pass (one
batch's logits, ``lm_head`` over every position, beside three hidden-state tensors) and the busiest
layer (the MLP's gate, up and product tensors plus a float32 working copy of the largest quantized
weight while ModelOpt fake-quantizes it).

Time per forward pass = a fixed cost per quantized linear layer (ModelOpt's quantizer hooks run in
Python around every product, whatever the batch) + the pass's FLOPs at a share of the GPU's dense
BF16 tensor rate. At batch 1 the fixed part is most of it, which is why batching calibration pays.
Both constants were fitted on two H200 runs and checked on others; ``MEASURED`` and
docs/benchmarks.md hold the figures.
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from generator.engine.gpus import GpuSpec
from generator.engine.shape import ModelShape
from generator.spec import QuantFormat, Spec

GIB = 1 << 30

MEASURED = {
    "gpu": "h200",
    "shape": "Qwen3-8B (random weights), BF16, 2048 tokens per sample, NVFP4 + FP8 KV",
    "peak_bytes": 17_057_100_800,
    "seconds_per_sample": {1: 0.2399, 2: 0.1548},
    "source": "bench/quantize_gpu.py on a lent H200: ModelOpt 0.47.0, torch 2.11, transformers 5.17 (docs/benchmarks.md)",
}
"""The runs the constants below are fitted on: peak at batch 1, seconds per sample by batch size."""

TENSOR_RATE_SHARE = 0.4677
"""Share of the dense BF16 rate the products reach: the extra 3.224e13 FLOP of a second 2048-token
sample in a batch took 0.0697 s more (4.63e14 FLOP/s against the H200's 989 TFLOP/s)."""

SECONDS_PER_QUANTIZED_LINEAR = 6.754e-4
"""Fixed time per quantized linear layer and forward pass: the 0.170 s left of a batch-1 pass once
its FLOPs are paid, over Qwen3-8B's 252 quantized linears. Assumed the same on every GPU."""


class CalibrationEstimate(BaseModel):
    """Predicted cost of calibrating the spec's model on the spec's GPU."""

    model_config = ConfigDict(frozen=True)

    batch_size: int
    """Samples per forward pass (``quantization.calibration.batch_size``)."""
    tokens_per_sample: int
    """``quantization.calibration.max_seq_len``: samples are truncated to it."""
    weight_bytes: int
    """The unquantized model on the GPU: every parameter in the build dtype."""
    logits_bytes: int
    """One batch's logits, batch × tokens × vocabulary in the build dtype, with three hidden states."""
    layer_transient_bytes: int
    """The largest per-layer working set: MLP intermediates plus a float32 copy of the largest weight."""
    peak_bytes: int
    """What ``torch.cuda.max_memory_allocated`` should read at the end of calibration."""
    gpu_bytes: int
    """The GPU's memory from the GPU table."""
    flops_per_sample: float
    """Forward-pass FLOPs of one sample: matrix products and causal attention."""
    seconds_per_sample: Optional[float]
    """Predicted calibration time per sample; None where the GPU table has no BF16 rate for the card."""
    samples: int
    """``quantization.calibration.size``."""

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.gpu_bytes

    @property
    def calibration_seconds(self) -> Optional[float]:
        return None if self.seconds_per_sample is None else self.seconds_per_sample * self.samples


def calibration_estimate(spec: Spec, shape: ModelShape, parameters: int, gpu: GpuSpec) -> CalibrationEstimate:
    """Peak memory and time of calibrating ``shape`` (``parameters`` in all) as ``spec`` says; pure arithmetic."""
    cal = spec.quantization.calibration
    b, s = cal.batch_size, cal.max_seq_len
    dtype_bytes = 2  # build.dtype is bfloat16 or float16
    h, i = shape.hidden_size, shape.intermediate_size
    weights = parameters * dtype_bytes
    logits = b * s * (shape.vocab_size + 3 * h) * dtype_bytes
    # The MLP projections are a dense decoder's largest quantized weights (lm_head stays unquantized).
    transient = 3 * b * s * i * dtype_bytes + 4 * h * i
    # The embedding lookup is no product; tied, its matrix is still multiplied once as lm_head.
    matmul_params = parameters - (0 if shape.tie_word_embeddings else shape.vocab_size * h)
    # QK^T and PV: 4·s²·d per layer, half of it under the causal mask.
    attention = 2 * shape.num_layers * s * s * shape.num_heads * shape.head_dim
    flops = 2.0 * matmul_params * s + attention
    quantized_linears = 7 * shape.num_layers if spec.quantization.format is not QuantFormat.none else 0
    seconds = None
    if gpu.bf16_dense_tflops:
        per_pass = quantized_linears * SECONDS_PER_QUANTIZED_LINEAR + b * flops / (gpu.bf16_dense_tflops * 1e12 * TENSOR_RATE_SHARE)
        seconds = per_pass / b
    return CalibrationEstimate(
        batch_size=b, tokens_per_sample=s, weight_bytes=weights, logits_bytes=logits,
        layer_transient_bytes=transient, peak_bytes=weights + max(logits, transient),
        gpu_bytes=int(gpu.memory_gib * GIB), flops_per_sample=flops, seconds_per_sample=seconds, samples=cal.size,
    )
