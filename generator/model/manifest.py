"""What the quantized checkpoint's manifest records besides quality: the input weights' hash, tensor sizes
before and after, and the library versions that made it. Reads files only."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

from generator.errors import ArtifactCorrupt


def sha256_files(files: list[Path]) -> dict[str, Any]:
    per_file = {}
    for path in files:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        per_file[path.name] = digest.hexdigest()
    combined = hashlib.sha256("".join(f"{n}:{h}\n" for n, h in sorted(per_file.items())).encode()).hexdigest()
    return {"sha256": combined, "files": per_file}


_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
               "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6,
               "F6_E3M2": 6, "C64": 64}
"""Bits per element of every safetensors dtype (safetensors 0.8's ``Dtype``). review29: a model holding one U32
tensor quantized to the end, then lost the checkpoint to a KeyError here."""


def tensor_table(folder: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    """name -> (safetensors dtype, shape, bytes) for every tensor of a folder, without loading data."""
    from safetensors import safe_open

    table = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
                if dtype not in _DTYPE_BITS:
                    raise ArtifactCorrupt(f"{path.name}: tensor {key[:80]!r} has dtype {dtype[:20]!r}, which this "
                                          "tritongen does not size", where=str(path),
                                          fix="convert that tensor to a standard dtype, or update tritongen")
                count = 1
                for d in shape:
                    count *= d
                table[key] = (dtype, shape, (count * _DTYPE_BITS[dtype] + 7) // 8)
    return table


def size_report(source: dict, exported: dict) -> dict[str, Any]:
    """Whole-checkpoint sizes and the quantized linear layers' share of their BF16 size.

    A quantized layer is one with a ``weight_scale``; its exported bytes are every tensor under its
    name except KV-cache scales; its BF16 size is 2 bytes per weight element.
    """
    modules = {k[: -len(".weight_scale")] for k in exported if k.endswith(".weight_scale")}
    quant_bytes = sum(
        size for k, (_, _, size) in exported.items()
        if k.rpartition(".")[0] in modules and not k.endswith((".k_scale", ".v_scale"))
    )
    bf16_bytes = 0
    for m in modules:
        count = 1
        for d in source.get(f"{m}.weight", (None, (0,), 0))[1]:
            count *= d
        bf16_bytes += 2 * count
    return {
        "input_bytes": sum(s for _, _, s in source.values()),
        "output_bytes": sum(s for _, _, s in exported.values()),
        "quantized_layers": len(modules),
        "quantized_linear_bf16_bytes": bf16_bytes,
        "quantized_linear_bytes": quant_bytes,
        "quantized_linear_ratio": round(quant_bytes / bf16_bytes, 4) if bf16_bytes else None,
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for dist in ("tritongen", "torch", "transformers", "nvidia-modelopt", "tokenizers", "safetensors", "huggingface_hub"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "not installed"
    return versions
