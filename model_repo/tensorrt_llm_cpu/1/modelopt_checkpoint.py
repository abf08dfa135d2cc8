"""Read a ModelOpt unified Hugging Face checkpoint back into a transformers model on any device.

transformers cannot load these checkpoints itself: it skips the ``modelopt`` quantization method, so
NVFP4 weights fail on their packed shapes and FP8 weights load as raw codes without their scales. This
file dequantizes every weight the way ModelOpt packed it and emulates what the quantized engine also
quantizes at run time (linear-layer inputs, the FP8 KV cache), so the model computes what ModelOpt's
simulated quantization computed before export. It is used both by the CPU reference engine (what is
served is what was exported) and by tritongen's quality check, and therefore imports only torch,
safetensors, transformers and the standard library.

Layouts (ModelOpt 0.47 ``export_hf_checkpoint``):
  NVFP4      weight uint8 [out, in/2], E2M1 codes, element 2i in the low nibble; weight_scale
             float8_e4m3fn [out, in/16]; weight_scale_2 fp32 scalar; value = code x scale x scale_2.
             input_scale fp32 scalar = input amax / (6 x 448): inputs are quantized per 16 values.
  FP8        weight float8_e4m3fn; weight_scale fp32 (scalar or [out]); input_scale = amax / 448.
  W4A16_AWQ  weight uint8 [out/2, in]: rows 2j (low nibble) and 2j+1 (high nibble), signed int4;
             weight_scale fp32 [out, in/group]; pre_quant_scale [in] multiplies the input where it
             could not be folded into the preceding norm. Inputs are not quantized.
  W8A8_SQ    weight int8 [out, in]; weight_scale fp32 [out]; pre_quant_scale [in];
             input_scale = amax / 127: inputs are quantized to int8 per tensor.
  KV cache   ``<attn>.k_proj.k_scale`` / ``<attn>.v_proj.v_scale`` = amax / 448: keys (after RoPE) and
             values are rounded to FP8 E4M3 as ``x * (448 / amax)``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

FP8_MAX = 448.0
E2M1_MAX = 6.0
NVFP4_BLOCK = 16
SUPPORTED_WEIGHT_ALGOS = ("NVFP4", "FP8", "W4A16_AWQ", "W8A8_SQ_PER_CHANNEL")
_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


# ------------------------------------------------------------------ weights


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., n/2] -> float32 [..., n]: low nibble first; bit 3 is the sign, bits 0-2 the magnitude."""
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2).long()
    grid = torch.tensor(_E2M1_MAGNITUDES, dtype=torch.float32, device=packed.device)
    values = grid[codes & 0x07]
    return torch.where(codes >= 8, -values, values)


def dequantize_nvfp4(weight: torch.Tensor, weight_scale: torch.Tensor, weight_scale_2: torch.Tensor) -> torch.Tensor:
    """Block scale times global scale first, then times the code: the order ModelOpt's kernel uses."""
    values = unpack_e2m1(weight)
    out, n = values.shape
    scale = weight_scale.float() * weight_scale_2.float()
    return (values.view(out, n // NVFP4_BLOCK, NVFP4_BLOCK) * scale.unsqueeze(-1)).view(out, n)


def dequantize_fp8(weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    scale = weight_scale.float()
    if scale.dim() == 1 and scale.numel() == weight.shape[0]:
        scale = scale[:, None]
    return weight.float() * scale


def dequantize_int4_awq(weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """uint8 [out/2, in] -> float32 [out, in]; the group size follows from weight_scale's width."""
    low = (weight & 0x0F).to(torch.int8)
    high = (weight >> 4).to(torch.int8)
    pairs = torch.stack((low, high), dim=1)  # [out/2, 2, in]: rows 2j and 2j+1
    codes = torch.where(pairs >= 8, pairs - 16, pairs).reshape(-1, weight.shape[-1]).float()
    group = codes.shape[-1] // weight_scale.shape[-1]
    return codes * weight_scale.float().repeat_interleave(group, dim=-1)


def dequantize_int8(weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return weight.float() * weight_scale.float().reshape(-1, 1)


# ------------------------------------------------------------------ activations (fake quantization)


def _round_e2m1(magnitude: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 magnitude, ties to even: the thresholds of ModelOpt's FP4 kernel."""
    w = torch.where
    return w(magnitude <= 0.25, 0.0, w(magnitude < 0.75, 0.5, w(magnitude <= 1.25, 1.0, w(magnitude < 1.75, 1.5,
           w(magnitude <= 2.5, 2.0, w(magnitude < 3.5, 3.0, w(magnitude <= 5.0, 4.0, 6.0)))))))  # fmt: skip


def nvfp4_fake_quantize(x: torch.Tensor, global_scale: torch.Tensor, block_size: int = NVFP4_BLOCK) -> torch.Tensor:
    """NVFP4 quantize-dequantize of ``x`` along its last dimension in blocks, computed in float32.

    ``global_scale`` is global amax / (6 x 448) (the exported ``input_scale``). Each block's scale is
    its amax / 6 rounded to FP8 E4M3 relative to the global scale; scales below 1e-5 become 1.0, as in
    ModelOpt's kernel, so such blocks round to zero. Division is IEEE-exact, as in ModelOpt's weight
    export; ModelOpt's Triton kernel on CUDA divides approximately, so where |x| / scale lies within
    one float32 ulp of a rounding midpoint it may pick the other neighbour (measured on an H100:
    241 of 2.1 M random BF16 elements, every one 1 ulp from a midpoint; none in float32).
    """
    shape, dtype = x.shape, x.dtype
    blocks = x.float().reshape(-1, shape[-1] // block_size, block_size)
    gs = global_scale.float().to(x.device)
    gs = torch.where(gs > 0, gs, torch.full_like(gs, 1e-12))
    block_amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = torch.clamp(block_amax / (E2M1_MAX * gs), max=FP8_MAX).to(torch.float8_e4m3fn).float() * gs
    scale = torch.where(scale >= 1e-5, scale, torch.ones_like(scale))
    magnitude = _round_e2m1(blocks.abs() / scale) * scale
    return torch.where(blocks >= 0, magnitude, -magnitude).reshape(shape).to(dtype)


def fp8_fake_quantize(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor FP8 E4M3 quantize-dequantize as ``x * (448 / amax)``, computed in float32."""
    amax = amax.float().to(x.device)
    amax = torch.where(amax <= 2.0**-24, torch.ones_like(amax), amax)
    scale = FP8_MAX / amax
    q = (x.float() * scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return (q.float() * (1.0 / scale)).to(x.dtype)


def int8_fake_quantize(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor symmetric INT8 (narrow range, -127..127) quantize-dequantize, computed in float32."""
    scale = 127.0 / amax.float().to(x.device)
    return (torch.clamp((x.float() * scale).round(), -127.0, 127.0) / scale).to(x.dtype)


class InputQuantizer(torch.nn.Module):
    """What the quantized engine does to a linear layer's input before the matrix product."""

    def __init__(self, kind: str | None, scale: torch.Tensor | None, pre_quant_scale: torch.Tensor | None):
        super().__init__()
        self.kind = kind
        self.register_buffer("scale", None if scale is None else scale.float(), persistent=False)
        self.register_buffer("pre_quant_scale", pre_quant_scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_quant_scale is not None:
            x = x * self.pre_quant_scale.to(x.dtype)
        if self.kind == "nvfp4":
            return nvfp4_fake_quantize(x, self.scale)
        if self.kind == "fp8":
            return fp8_fake_quantize(x, self.scale * FP8_MAX)
        if self.kind == "int8":
            return int8_fake_quantize(x, self.scale * 127.0)
        return x


def _quantize_linear_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (module.input_quantizer(args[0]), *args[1:])


class KVCacheQuantizer(torch.nn.Module):
    """FP8 rounding of keys and values as they enter attention (the KV cache holds them in FP8)."""

    def __init__(self, k_amax: torch.Tensor, v_amax: torch.Tensor):
        super().__init__()
        self.register_buffer("k_amax", k_amax.float(), persistent=False)
        self.register_buffer("v_amax", v_amax.float(), persistent=False)

    def forward(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fp8_fake_quantize(key, self.k_amax), fp8_fake_quantize(value, self.v_amax)


def _with_kv_quantization(attention_fn):
    """Wrap an attention function so attention modules that carry a ``kv_quantizer`` see FP8 K/V.

    Keys are only final after RoPE and the cache update, inside the attention function; modules
    without a quantizer (any other model in the process) pass through untouched.
    """

    def attention(module, query, key, value, *args, **kwargs):
        quantizer = getattr(module, "kv_quantizer", None)
        if quantizer is not None:
            key, value = quantizer(key, value)
        return attention_fn(module, query, key, value, *args, **kwargs)

    attention.wraps_kv_quantization = True
    return attention


def install_kv_quantization() -> None:
    """Wrap the sdpa and paged-eager attention functions once per process (continuous batching uses them)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for name in ("sdpa", "paged|eager"):
        if name in ALL_ATTENTION_FUNCTIONS and not getattr(ALL_ATTENTION_FUNCTIONS[name], "wraps_kv_quantization", False):
            ALL_ATTENTION_FUNCTIONS[name] = _with_kv_quantization(ALL_ATTENTION_FUNCTIONS[name])


# ------------------------------------------------------------------ checkpoint reading


def read_quant_config(weights_dir: str | Path) -> dict | None:
    """The ``quantization`` section of hf_quant_config.json (or of config.json's modelopt entry), else None."""
    weights_dir = Path(weights_dir)
    hf_quant = weights_dir / "hf_quant_config.json"
    if hf_quant.is_file():
        return json.loads(hf_quant.read_text())["quantization"]
    config = json.loads((weights_dir / "config.json").read_text())
    qc = config.get("quantization_config") or {}
    if qc.get("quant_method") == "modelopt":
        return {"quant_algo": qc.get("quant_algo"), "kv_cache_quant_algo": "FP8" if qc.get("kv_cache_scheme") else None}
    return None


def _safetensors_files(weights_dir: Path) -> list[Path]:
    index = weights_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [weights_dir / n for n in names]
    files = sorted(weights_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {weights_dir}")
    return files


def _read_tensors(weights_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in _safetensors_files(weights_dir):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def dequantize(algo: str, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """One layer's float32 weight from its exported tensors (``weight``, ``weight_scale``, ...) by quant_algo."""
    if algo == "NVFP4":
        return dequantize_nvfp4(t["weight"], t["weight_scale"], t["weight_scale_2"])
    if algo == "FP8":
        return dequantize_fp8(t["weight"], t["weight_scale"])
    if algo == "W4A16_AWQ":
        return dequantize_int4_awq(t["weight"], t["weight_scale"])
    return dequantize_int8(t["weight"], t["weight_scale"])


_INPUT_KIND = {"NVFP4": "nvfp4", "FP8": "fp8", "W8A8_SQ_PER_CHANNEL": "int8", "W4A16_AWQ": None}
_PER_MODULE = ("weight", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale")


def _split_checkpoint(tensors: dict[str, torch.Tensor], algo: str | None, dtype: torch.dtype):
    """Plain state dict (dequantized), input quantizers per linear module, KV amax per attention module."""
    quantized = {k[: -len(".weight_scale")] for k in tensors if k.endswith(".weight_scale")} if algo else set()
    state, inputs, kv = {}, {}, {}
    for prefix in quantized:
        parts = {s: tensors.get(f"{prefix}.{s}") for s in _PER_MODULE}
        state[f"{prefix}.weight"] = dequantize(algo, parts).to(dtype)
        pqs = parts["pre_quant_scale"]
        if parts["input_scale"] is None and pqs is None:
            continue
        inputs[prefix] = InputQuantizer(
            _INPUT_KIND[algo] if parts["input_scale"] is not None else None,
            parts["input_scale"],
            None if pqs is None else pqs.to(dtype),
        )
    for key, value in tensors.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in quantized and leaf in _PER_MODULE:
            continue
        if leaf in ("k_scale", "v_scale"):
            attn = prefix.rpartition(".")[0] if prefix.endswith((".k_proj", ".v_proj")) else prefix
            kv.setdefault(attn, {})[leaf[0]] = value.float() * FP8_MAX  # scale = amax / 448
            continue
        state[key] = value.to(dtype) if value.is_floating_point() else value
    return state, inputs, kv


def _no_init():
    """Skip random initialisation of weights that are overwritten at once (minutes for 8B models)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def load_causal_lm(weights_dir: str | Path, dtype: torch.dtype = torch.float32):
    """An eval() transformers causal LM that computes what the exported checkpoint means.

    A plain Hugging Face folder loads as usual. A ModelOpt checkpoint is dequantized to ``dtype``,
    with input quantization and FP8 KV-cache rounding emulated by hooks and an attention wrapper.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    weights_dir = Path(weights_dir)
    quant = read_quant_config(weights_dir)
    if quant is None:  # never transformers' default trust_remote_code (None): for a folder with an auto_map and an
        # unknown model type it asks "Do you wish to run the custom code? [y/N]" on stdin (a terminal under launch.sh)
        # and "y" runs the folder's Python (review23); False refuses such a folder, which the load reports
        return AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=dtype, attn_implementation="sdpa",
                                                    trust_remote_code=False).eval()
    algo = quant.get("quant_algo")
    kv_algo = quant.get("kv_cache_quant_algo")
    if algo is not None and algo not in SUPPORTED_WEIGHT_ALGOS:
        raise ValueError(f"{weights_dir}: quant_algo {algo!r} is not supported (supported: {', '.join(SUPPORTED_WEIGHT_ALGOS)})")
    if kv_algo not in (None, "FP8"):
        raise ValueError(f"{weights_dir}: kv_cache_quant_algo {kv_algo!r} is not supported (supported: FP8)")

    config_dict = json.loads((weights_dir / "config.json").read_text())
    config_dict.pop("quantization_config", None)  # keep transformers from handling (and skipping) modelopt
    config = AutoConfig.for_model(**config_dict)
    state, inputs, kv = _split_checkpoint(_read_tensors(weights_dir), algo, dtype)
    with _no_init():  # trust_remote_code=False: a config of a known type that is no causal LM, with an auto_map, asked
        # on stdin too (review24), as the plain path did
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa", trust_remote_code=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{weights_dir}: weights do not fit {type(model).__name__}: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        model.tie_weights()
    for name, quantizer in inputs.items():
        linear = model.get_submodule(name)
        linear.input_quantizer = quantizer.to(next(linear.parameters()).device)
        linear.register_forward_pre_hook(_quantize_linear_input)
    if kv_algo == "FP8":
        install_kv_quantization()
        for name, scales in kv.items():
            model.get_submodule(name).kv_quantizer = KVCacheQuantizer(scales["k"], scales["v"])
    return model.eval()
