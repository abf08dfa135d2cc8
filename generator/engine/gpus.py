"""Target GPUs the plan knows: memory, compute capability (SM) and the weight formats each runs natively.

The plan decides flags and refusals from the SM, and the memory plan from the capacity, so both live
here as data. Capacities are the datasheet figures in GiB of device memory; the driver keeps a few
hundred MiB of that for itself, which the memory plan's runtime reserve covers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from generator.errors import SpecError


@dataclass(frozen=True)
class GpuSpec:
    key: str
    """Canonical name used in specs and plans, e.g. ``rtx-5090``."""

    name: str
    """Marketing name."""

    sm: int
    """Compute capability as an integer (8.9 → 89, 12.0 → 120)."""

    memory_gib: float
    """Device memory from the datasheet."""

    aliases: tuple[str, ...] = ()
    """Other spellings accepted by ``lookup_gpu`` (compared without case, spaces or dashes)."""

    source: str = ""
    """Where memory and SM come from."""

    bf16_dense_tflops: float | None = None
    """Dense BF16 tensor throughput with FP32 accumulation (datasheet, no sparsity); sizes calibration time."""

    @property
    def fp8(self) -> bool:
        """FP8 (E4M3) tensor cores arrived with Ada (SM89) and Hopper (SM90)."""
        return self.sm >= 89

    @property
    def nvfp4(self) -> bool:
        """NVFP4 (E2M1 + FP8 block scales) tensor cores exist on Blackwell only: SM100 (B200) and SM120 (RTX)."""
        return self.sm >= 100

    @property
    def int_quant(self) -> bool:
        """INT8/INT4 quantization: TensorRT-LLM 1.2's builder refuses it on SM100-SM119 (builder.build)."""
        return not 100 <= self.sm < 120

    @property
    def native_formats(self) -> tuple[str, ...]:
        """Weight formats (spec ``quantization.format`` values) this GPU runs natively."""
        formats = ["none"]
        if self.int_quant:
            formats += ["int8_sq", "int4_awq"]
        if self.fp8:
            formats.append("fp8")
        if self.nvfp4:
            formats.append("nvfp4")
        return tuple(formats)

    @property
    def architecture(self) -> str:
        return {80: "Ampere", 89: "Ada Lovelace", 90: "Hopper", 100: "Blackwell (data center)", 120: "Blackwell (RTX)"}.get(
            self.sm, f"SM{self.sm}"
        )


_CC = "CUDA compute capability list (developer.nvidia.com/cuda-gpus)"

GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("a100-40gb", "NVIDIA A100 40GB", 80, 40, ("a100-40g", "a100-pcie-40gb", "a100-sxm4-40gb"),
            f"NVIDIA A100 Tensor Core GPU datasheet (40 GB HBM2); {_CC}: 8.0", bf16_dense_tflops=312),
    GpuSpec("a100-80gb", "NVIDIA A100 80GB", 80, 80, ("a100", "a100-80g", "a100-sxm", "a100-pcie", "a100-sxm4-80gb"),
            f"NVIDIA A100 Tensor Core GPU datasheet (80 GB HBM2e); {_CC}: 8.0", bf16_dense_tflops=312),
    GpuSpec("rtx-4090", "NVIDIA GeForce RTX 4090", 89, 24, ("4090", "geforce-rtx-4090"),
            f"GeForce RTX 4090 specifications (24 GB GDDR6X); {_CC}: 8.9", bf16_dense_tflops=165.2),
    GpuSpec("l40s", "NVIDIA L40S", 89, 48, ("l40-s",),
            f"NVIDIA L40S datasheet (48 GB GDDR6 with ECC); {_CC}: 8.9", bf16_dense_tflops=362.05),
    GpuSpec("h100-pcie", "NVIDIA H100 PCIe 80GB", 90, 80, ("h100pcie",),
            f"NVIDIA H100 Tensor Core GPU datasheet, PCIe (80 GB HBM2e); {_CC}: 9.0", bf16_dense_tflops=756),
    GpuSpec("h100-sxm", "NVIDIA H100 SXM 80GB", 90, 80, ("h100", "h100-sxm5", "h100-80gb"),
            f"NVIDIA H100 Tensor Core GPU datasheet, SXM (80 GB HBM3); {_CC}: 9.0", bf16_dense_tflops=989),
    GpuSpec("h200", "NVIDIA H200 141GB", 90, 141, ("h200-sxm", "h200-nvl"),
            f"NVIDIA H200 Tensor Core GPU datasheet (141 GB HBM3e); {_CC}: 9.0", bf16_dense_tflops=989),
    GpuSpec("b200", "NVIDIA B200", 100, 180, ("b200-sxm", "hgx-b200"),
            f"NVIDIA HGX B200 datasheet (1,440 GB for 8 GPUs = 180 GB each); {_CC}: 10.0", bf16_dense_tflops=2250),
    GpuSpec("rtx-5090", "NVIDIA GeForce RTX 5090", 120, 32, ("5090", "geforce-rtx-5090"),
            f"GeForce RTX 5090 specifications (32 GB GDDR7); {_CC}: 12.0", bf16_dense_tflops=209.5),
    GpuSpec("rtx-pro-6000", "NVIDIA RTX PRO 6000 Blackwell", 120, 96,
            ("rtx-pro-6000-blackwell", "rtx-pro-6000-blackwell-workstation", "rtx-pro-6000-blackwell-server",
             "rtx-6000-pro"),
            f"NVIDIA RTX PRO 6000 Blackwell datasheet (96 GB GDDR7 with ECC); {_CC}: 12.0"),
    GpuSpec("rtx-pro-4000", "NVIDIA RTX PRO 4000 Blackwell", 120, 24, ("rtx-pro-4000-blackwell", "rtx-4000-pro"),
            f"NVIDIA RTX PRO 4000 Blackwell datasheet (24 GB GDDR7 with ECC); {_CC}: 12.0"),
)


def _norm(name: str) -> str:
    """Compare names without case, spaces, dashes, underscores or an ``nvidia``/``geforce`` prefix."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    for prefix in ("nvidia", "geforce"):
        flat = flat.removeprefix(prefix)
    return flat


def known_gpu_names() -> list[str]:
    return [g.key for g in GPUS]


def lookup_gpu(name: str) -> GpuSpec:
    """A GPU by name or alias (``RTX 5090``, ``rtx-5090``, ``h100``) or by compute capability (``sm120``).

    A bare SM stands for the card with the least memory of that SM in the table, so the memory plan
    errs on the safe side; the returned name says which card was assumed.
    """
    wanted = _norm(name)
    for gpu in GPUS:
        if wanted in {_norm(gpu.key), _norm(gpu.name), *(_norm(a) for a in gpu.aliases)}:
            return gpu
    sm_match = re.fullmatch(r"sm(\d{2,3})", wanted)
    if sm_match:
        sm = int(sm_match.group(1))
        same_sm = [g for g in GPUS if g.sm == sm]
        if same_sm:
            smallest = min(same_sm, key=lambda g: g.memory_gib)
            return dataclasses.replace(
                smallest,
                key=f"sm{sm}",
                name=f"SM{sm} (memory plan assumes {smallest.name}, {smallest.memory_gib:g} GiB, the smallest SM{sm} card known)",
            )
    sms = sorted({g.sm for g in GPUS})
    raise SpecError(
        f"unknown GPU {name!r}; known: {', '.join(known_gpu_names())} or an SM: {', '.join(f'sm{s}' for s in sms)}",
        where="build.gpu",
        fix="set build.gpu to one of the names above, e.g. --set build.gpu=rtx-5090",
    )
