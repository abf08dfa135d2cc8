"""Test double for TensorRT-LLM 1.2.1's examples/quantization/quantize.py (no TensorRT-LLM or GPU here).

It accepts exactly the recorded quantize.py flags, appends its argv to $FAKE_TRTLLM_RECORD and writes a
TensorRT-LLM checkpoint's layout: config.json (architecture, dtype, sizes, mapping, quantization as
ModelOpt's TensorRT-LLM export names them) and one placeholder rank<N>.safetensors per rank. No weights
are quantized.
"""
import argparse
import json
import os
import sys
from pathlib import Path

TABLE = json.loads((Path(__file__).resolve().parents[4] / "generator" / "data" / "trtllm_build_1.2.1.json").read_text())
QUANT_ALGO = {"nvfp4": "NVFP4", "fp8": "FP8", "int4_awq": "W4A16_AWQ", "int8_sq": "W8A8_SQ_PER_CHANNEL", "full_prec": None}

parser = argparse.ArgumentParser()
for flag, spec in TABLE["quantize_py"].items():
    if spec["type"] == "switch":
        parser.add_argument(flag, action="store_true")
    else:
        parser.add_argument(flag, default=spec["default"], choices=spec.get("choices"),
                            type=int if spec["type"] == "int" else str)
args = parser.parse_args()
record = os.environ.get("FAKE_TRTLLM_RECORD")
if record:
    with open(record, "a") as f:
        f.write(json.dumps({"tool": "quantize.py", "argv": sys.argv[1:], "cwd": os.getcwd()}) + "\n")
hf = json.loads((Path(args.model_dir) / "config.json").read_text())
world = args.tp_size * args.pp_size
config = {
    "architecture": hf["architectures"][0], "dtype": args.dtype, "vocab_size": hf["vocab_size"],
    "hidden_size": hf["hidden_size"], "num_hidden_layers": hf["num_hidden_layers"],
    "num_attention_heads": hf["num_attention_heads"], "num_key_value_heads": hf["num_key_value_heads"],
    "head_size": hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
    "intermediate_size": hf["intermediate_size"], "hidden_act": hf["hidden_act"],
    "max_position_embeddings": hf["max_position_embeddings"], "rotary_scaling": hf.get("rope_scaling"),
    "rotary_base": hf.get("rope_theta"),
    "mapping": {"world_size": world, "gpus_per_node": 8, "cp_size": 1, "tp_size": args.tp_size,
                "pp_size": args.pp_size, "moe_tp_size": args.tp_size, "moe_ep_size": 1},
    "quantization": {"quant_algo": QUANT_ALGO[args.qformat],
                     "kv_cache_quant_algo": {"fp8": "FP8", "int8": "INT8", None: None}[args.kv_cache_dtype],
                     "group_size": 16 if args.qformat == "nvfp4" else args.awq_block_size,
                     "exclude_modules": None if args.quantize_lm_head else ["lm_head"]},
}
out = Path(args.output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text(json.dumps(config, indent=4))
for rank in range(world):
    (out / f"rank{rank}.safetensors").write_bytes(b"test double, no weights")
print(f"quantize.py (test double): wrote a {args.qformat} TensorRT-LLM checkpoint to {out}", flush=True)
