"""Quantize on a real GPU: tritongen's prediction against `tritongen quantize` and against plain ModelOpt.

Run by hand on a CUDA machine (it was run on a lent H200; docs/benchmarks.md has the figures):

    python bench/quantize_gpu.py run --tokenizer TINY_MODEL_DIR --work /tmp/q8b --samples 256 --out result.json

Steps: make a random-weight model of Qwen3-8B's exact shape (generator/data/qwen3-8b-config.json) with
the tiny model's tokenizer (its ids are valid Qwen3 ids), write calibration texts long enough that
every sample holds ``--seq-len`` tokens, then time two separate processes on the same settings:
``direct`` (ModelOpt's API with nothing around it: load, quantize, export) and ``tritongen quantize``
(quality scoring off, the same calibration). The prediction is ``generator.engine.calibration``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from generator.cli import main; sys.argv[0] = 'tritongen'; main()"
"""``tritongen`` as its console script runs it (the device has no installed entry point)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def make_model(work: Path, tokenizer_dir: Path, config_path: Path) -> float:
    """A Qwen3-8B-shaped model with random BF16 weights, saved as safetensors; returns seconds taken."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.perf_counter()
    config = AutoConfig.for_model(**json.loads(config_path.read_text()))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(work / "model", max_shard_size="5GB")
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file() and name != "generation_config.json":
            shutil.copy2(tokenizer_dir / name, work / "model" / name)
    del model
    torch.cuda.empty_cache()
    return time.perf_counter() - started


def calibration_file(work: Path, tokenizer_dir: Path, samples: int, seq_len: int) -> Path:
    """JSONL texts of at least ``seq_len`` tokens each, from the bundled corpus paragraphs in seeded order."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    paragraphs = [p for p in (ROOT / "generator/data/corpus.txt").read_text().split("\n\n") if p.strip()]
    lengths = [len(ids) for ids in tok(paragraphs, add_special_tokens=False)["input_ids"]]
    rng = random.Random(0)
    path = work / "calibration.jsonl"
    with path.open("w") as f:
        for _ in range(samples):
            picked: list[int] = []
            while sum(lengths[i] for i in picked) < seq_len * 1.1:  # joining never loses 10% of the tokens
                picked.append(rng.randrange(len(paragraphs)))
            f.write(json.dumps({"text": "\n\n".join(paragraphs[i] for i in picked)}) + "\n")
    return path


def direct(model_dir: Path, calib: Path, samples: int, seq_len: int, export_dir: Path) -> dict:
    """ModelOpt alone: load, quantize (NVFP4 + FP8 KV, lm_head excluded, as ModelOpt's presets give), export."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16).to("cuda").eval()
    texts = [json.loads(line)["text"] for line in calib.read_text().splitlines() if line.strip()][:samples]
    ids = [tok(t, add_special_tokens=False)["input_ids"][:seq_len] for t in texts]
    cfg = copy.deepcopy(mtq.NVFP4_DEFAULT_CFG)
    cfg["quant_cfg"] = cfg["quant_cfg"] + copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])

    def loop(m):
        for sample in ids:
            with torch.no_grad():
                m(input_ids=torch.tensor([sample], device="cuda"), use_cache=False)

    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    mtq.quantize(model, cfg, forward_loop=loop)
    calibrate_s = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated()
    export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(export_dir))
    return {"calibrate_s": calibrate_s, "s_per_sample": calibrate_s / len(ids), "peak_gpu_bytes": peak}


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def run(args: argparse.Namespace) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from generator.engine.calibration import calibration_estimate
    from generator.engine.gpus import lookup_gpu
    from generator.engine.memory import memory_plan
    from generator.engine.shape import model_shape
    from generator.spec import spec_from_dict

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "samples": args.samples,
                    "seq_len": args.seq_len}
    result["batch_size"] = args.batch_size
    if not args.skip_model:
        result["make_model_s"] = make_model(work, Path(args.tokenizer), Path(args.config))
    calib = calibration_file(work, Path(args.tokenizer), args.samples, args.seq_len)
    spec_doc = {
        "model": {"source": str(work / "model")},
        "quantization": {"format": "nvfp4", "kv_cache": "fp8", "quality_tokens": 0,
                         "calibration": {"dataset": str(calib), "size": args.samples, "max_seq_len": args.seq_len,
                                         "batch_size": args.batch_size}},
        "build": {"gpu": "h200"},
        "artifacts": {"checkpoint_dir": str(work / "ckpt-tritongen")},
    }
    spec_path = work / "spec.yaml"
    import yaml

    spec_path.write_text(yaml.safe_dump(spec_doc))
    spec = spec_from_dict(spec_doc, base_dir=work)
    shape = model_shape(json.loads((Path(args.config)).read_text()))
    gpu = lookup_gpu("h200")
    estimate = calibration_estimate(spec, shape, memory_plan(spec, shape, gpu).parameters, gpu)
    result["predicted"] = estimate.model_dump()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = []
    for turn in range(args.turns):
        if not args.skip_direct:
            wall, out = timed([sys.executable, __file__, "direct", "--work", str(work), "--samples", str(args.samples),
                               "--seq-len", str(args.seq_len)], env)
            runs.append({"who": "modelopt", "turn": turn, "wall_s": wall, **json.loads(out.strip().splitlines()[-1])})
        shutil.rmtree(work / "ckpt-tritongen", ignore_errors=True)
        wall, _ = timed([sys.executable, "-c", CLI, "quantize", str(spec_path), "--force"], env)
        manifest = json.loads((work / "ckpt-tritongen" / "tritongen-manifest.json").read_text())
        runs.append({"who": "tritongen", "turn": turn, "wall_s": wall, "calibrate_s": manifest["timings_s"]["calibrate_s"],
                     "s_per_sample": manifest["calibration_s_per_sample"], "peak_gpu_bytes": manifest["peak_gpu_bytes"],
                     "timings_s": manifest["timings_s"], "checkpoint_bytes": manifest["sizes"]})
        print(json.dumps(runs[-2:]), flush=True)
    result["runs"] = runs
    for who in {r["who"] for r in runs}:
        mine = [r for r in runs if r["who"] == who]
        result[who] = {k: sum(r[k] for r in mine) / len(mine) for k in ("wall_s", "s_per_sample", "peak_gpu_bytes")}
    if "modelopt" in result:
        result["overhead_wall"] = result["tritongen"]["wall_s"] / result["modelopt"]["wall_s"] - 1
    result["peak_vs_prediction"] = result["tritongen"]["peak_gpu_bytes"] / estimate.peak_bytes - 1
    result["s_per_sample_vs_prediction"] = result["tritongen"]["s_per_sample"] / estimate.seconds_per_sample - 1
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result.get(k) for k in ("overhead_wall", "peak_vs_prediction", "s_per_sample_vs_prediction")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--tokenizer", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--samples", type=int, default=256)
    r.add_argument("--seq-len", type=int, default=2048)
    r.add_argument("--turns", type=int, default=1)
    r.add_argument("--batch-size", type=int, default=1)
    r.add_argument("--config", default=str(ROOT / "generator/data/qwen3-8b-config.json"), help="the model's config.json")
    r.add_argument("--skip-model", action="store_true", help="reuse the model already in --work")
    r.add_argument("--skip-direct", action="store_true", help="time tritongen alone (checks the prediction only)")
    r.add_argument("--out", required=True)
    d = sub.add_parser("direct")
    d.add_argument("--work", required=True)
    d.add_argument("--samples", type=int, required=True)
    d.add_argument("--seq-len", type=int, required=True)
    args = parser.parse_args()
    if args.cmd == "run":
        run(args)
    else:
        work = Path(args.work)
        out = work / "ckpt-modelopt"
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps(direct(work / "model", work / "calibration.jsonl", args.samples, args.seq_len, out)))


if __name__ == "__main__":
    main()
