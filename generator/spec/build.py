"""The spec's sections up to the engine: the model, its quantization (with calibration) and the engine build."""

from __future__ import annotations

import fnmatch
from enum import Enum
from typing import Literal, Optional

from pydantic import Field

from generator.spec.base import Section


class QuantFormat(str, Enum):
    nvfp4 = "nvfp4"
    fp8 = "fp8"
    int4_awq = "int4_awq"
    int8_sq = "int8_sq"
    none = "none"


class KVCacheFormat(str, Enum):
    fp8 = "fp8"
    int8 = "int8"
    none = "none"


class EngineTarget(str, Enum):
    auto = "auto"
    tensorrtllm = "tensorrtllm"
    cpu_reference = "cpu-reference"
    llmapi = "llmapi"


REFERENCE_MODEL = "Qwen/Qwen3-8B"
"""The default model; the plan ships its config.json so a plan works offline on a clean clone."""


class ModelSpec(Section):
    source: str = REFERENCE_MODEL
    """Hugging Face repo id (``org/name``) or a local folder with config.json, tokenizer and safetensors."""

    revision: Optional[str] = None
    """Branch, tag or commit of the Hugging Face repo; ignored for a local folder. None means the default branch."""

    trust_remote_code: bool = False
    """Allow the model repo's own Python code to run when loading it (tokenizer and model)."""


class CalibrationSpec(Section):
    size: int = Field(512, ge=1)
    """Number of calibration samples fed through the model during post-training quantization."""

    max_seq_len: int = Field(2048, ge=8)
    """Tokens per calibration sample (longer texts are truncated)."""

    dataset: str = "cnn_dailymail"
    """Calibration text: a local .txt (one sample per blank-line-separated paragraph) or .jsonl
    (a ``text`` field per line) file, or a Hugging Face data set name (needs the network and the
    ``datasets`` package, which tritongen does not install; cnn_dailymail reads abisee/cnn_dailymail 3.0.0)."""

    batch_size: int = Field(1, ge=1)
    """Samples per calibration forward pass; 1 keeps an 8B model within a 24 GB card."""

    seed: int = 0
    """Seed for sample selection, so two calibrations of the same data give the same checkpoint."""


class QuantizationSpec(Section):
    format: QuantFormat = QuantFormat.nvfp4
    """Weight format: nvfp4 (4-bit E2M1, FP8 scale per 16 values; Blackwell only), fp8 (E4M3, SM89+),
    int4_awq (4-bit AWQ, block 128), int8_sq (INT8 SmoothQuant), or none (keep BF16/FP16 weights)."""

    kv_cache: KVCacheFormat = KVCacheFormat.fp8
    """KV-cache format: fp8 (E4M3, halves KV memory), int8, or none (the build dtype)."""

    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    """Calibration data and size for post-training quantization."""

    exclude_modules: list[str] = Field(default_factory=lambda: ["lm_head"])
    """Module name patterns (fnmatch) kept unquantized. lm_head stays in full precision by default."""

    awq_block_size: int = Field(128, ge=16)
    """Group size of int4_awq weights (ignored by other formats; NVFP4's block is fixed at 16)."""

    quality_tokens: int = Field(2048, ge=0)
    """Held-out tokens (bundled English text) on which the exported checkpoint is compared with the
    original model after quantization: perplexity, top-1 agreement, KL divergence. 0 skips the check."""

    cache_max_mib: int = Field(1024, ge=0)
    """Models whose weights total at most this many MiB have their checkpoint kept in tritongen's cache folder
    and copied from there when the same files are quantized again with the same settings, calibration text,
    libraries and device (the demo run again: seconds instead of a calibration). 0 keeps nothing; larger
    models are not kept, so their checkpoints are not stored twice."""

    @property
    def quantizes_anything(self) -> bool:
        return self.format is not QuantFormat.none or self.kv_cache is not KVCacheFormat.none

    def keeps_unquantized(self, module: str) -> bool:
        """ModelOpt's exclusion rule, decided here once: a module whose name an exclude pattern matches (fnmatch)
        keeps full-precision weights; ModelOpt, the memory plan and the checkpoint step all ask this."""
        return self.format is QuantFormat.none or any(fnmatch.fnmatchcase(module, p) for p in self.exclude_modules)


class PluginOverrides(Section):
    """Force a ``trtllm-build`` choice that the plan would otherwise make from the GPU and format.

    None (the default) means: let the plan decide and explain why (``tritongen plan``). true passes
    ``--X enable`` (or the value), false passes ``--X disable``.
    """

    context_fmha: Optional[bool] = None
    """--context_fmha (fused multi-head attention in the context phase). Plan: not passed, so trtllm-build's
    default (enable) applies; on SM120 never forced on (field reports). false also turns FP8 and paged context
    FMHA off, which chunked context and KV-cache reuse need."""

    use_fp8_context_fmha: Optional[bool] = None
    """--use_fp8_context_fmha (FP8 context attention). Plan: not passed (trtllm-build default enable; the builder
    keeps it only for FP8/NVFP4 checkpoints on SM89+ and forces it on with FP8 KV + paged context FMHA); on SM120
    never forced on (field reports)."""

    fuse_fp4_quant: Optional[bool] = None
    """--fuse_fp4_quant (fuse NVFP4 activation quantization into attention). Plan: not passed (default disable);
    field reports of missing kernels on SM120."""

    use_fused_mlp: Optional[bool] = None
    """--use_fused_mlp (fuse gate and up projections). Plan: enable; accepted but without effect unless the
    weights are FP8 or unquantized."""

    norm_quant_fusion: Optional[bool] = None
    """--norm_quant_fusion (fuse RMSNorm with activation quantization). Plan: enable for NVFP4; the builder
    keeps it only for LlamaForCausalLM NVFP4 checkpoints."""

    use_paged_context_fmha: Optional[bool] = None
    """--use_paged_context_fmha (needed for chunked context and KV-cache reuse)."""

    gemm_plugin: Optional[str] = None
    """--gemm_plugin value (auto, nvfp4, fp8, bfloat16, float16, disable). Plan: from the format."""


class BuildSpec(Section):
    gpu: str = "rtx-5090"
    """Target GPU by name (rtx-5090, h100-sxm, b200, ...) or by compute capability (sm120, sm90)."""

    dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """Activation and unquantized-weight dtype of the engine."""

    max_input_len: int = Field(4096, ge=1)
    """Longest prompt in tokens the engine accepts."""

    max_output_len: int = Field(512, ge=1)
    """Most tokens generated per request (not a trtllm-build flag since 2024; it sets max_seq_len)."""

    max_seq_len: Optional[int] = Field(None, ge=2)
    """Prompt plus output tokens per sequence. None means max_input_len + max_output_len."""

    max_batch_size: int = Field(32, ge=1)
    """Most sequences the engine runs at once (the engine's limit; Triton's batch size may be lower)."""

    max_num_tokens: int = Field(8192, ge=1)
    """Most tokens (prompt and generated, all sequences) processed in one engine step."""

    max_beam_width: int = Field(1, ge=1)
    """Beam width the engine supports; 1 means greedy/sampling only."""

    kv_cache_type: Literal["paged", "continuous"] = "paged"
    """KV-cache layout. In-flight batching needs paged."""

    tokens_per_block: int = Field(64, ge=1)
    """Tokens per KV-cache block (page). A power of two."""

    tp_size: int = Field(1, ge=1)
    """Tensor-parallel size (GPUs per pipeline stage)."""

    pp_size: int = Field(1, ge=1)
    """Pipeline-parallel size."""

    multiple_profiles: bool = True
    """Build several TensorRT optimization profiles (faster at small batches, longer build)."""

    workers: int = Field(1, ge=1)
    """Parallel engine builds (one per rank) in trtllm-build."""

    plugins: PluginOverrides = Field(default_factory=PluginOverrides)
    """Overrides of the plan's plugin and fusion choices."""

    @property
    def resolved_max_seq_len(self) -> int:
        return self.max_seq_len if self.max_seq_len is not None else self.max_input_len + self.max_output_len

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size
