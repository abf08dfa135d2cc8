"""Several instances of the CPU reference engine behind one ensemble, against one (by hand, not in CI).

For each setting a cpu-reference repository is rendered with ``topology.instances_per_node`` N (the
engine model's Triton instance_group count) and ``serving.cpu_threads`` T, served through its rendered
launch script (as ``tritongen serve`` does) and load-tested with tritongen's own load test in
distributed mode (a Locust master and --workers worker processes). Every request's record reaches the
master; the table shows that their number equals the requests Triton counted for the ensemble.

    .venv/bin/python bench/bench_instances.py                                  # tiny model, NVFP4
    .venv/bin/python bench/bench_instances.py --settings 1x2 1x1 2x1 --users 8 --duration 30

A setting is NxT: N instances with T torch threads each. Without --weights the demo's tiny model is
made and quantized first (as `tritongen demo` does). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.demo import demo_overrides  # noqa: E402
from generator.measure.records import read_records  # noqa: E402
from generator.measure.runner import run_loadtest  # noqa: E402
from generator.repo.render import render_repository  # noqa: E402
from generator.spec import load_spec  # noqa: E402


def prepare(work: Path, weights: Path | None, model_dir: Path | None) -> tuple[Path, Path]:
    """(model folder, quantized checkpoint): given, or the demo's tiny model made and quantized here."""
    if weights is not None and model_dir is not None:
        return model_dir, weights
    from generator.model.quantize import quantize
    from generator.model.tinymodel import make_tiny_model

    model = make_tiny_model(work / "tiny-qwen3", seed=0)
    spec = load_spec(None, demo_overrides(model, work / "artifacts"))
    quantize(spec)
    return model, spec.checkpoint_dir


def run(work: Path, model: Path, weights: Path, instances: int, threads: int, args, index: int) -> dict:
    spec = load_spec(None, demo_overrides(model, work / "artifacts") + [
        f"artifacts.checkpoint_dir={weights}", f"topology.instances_per_node={instances}",
        f"serving.cpu_threads={threads}", f"loadtest.users={args.users}", f"loadtest.spawn_rate={args.users}",
        f"loadtest.duration_s={args.duration}", f"loadtest.workers={args.workers}", "loadtest.protocol=grpc-stream",
        "loadtest.input_tokens_mean=32", "loadtest.output_tokens_mean=32", "loadtest.reference_checks=0",
    ])
    name = f"{index}-{instances}x{threads}"
    repo = render_repository(spec, work / f"repo-{name}", force=True)
    out = work / f"load-{name}"
    out.mkdir(parents=True)  # a fresh folder: Locust appends to an existing records file
    result = run_loadtest(spec, out, repo_dir=repo, title=f"{instances} instance(s) x {threads} thread(s)").results
    requests, processes, _ = read_records(out / "records.jsonl")
    served = result["server"]["stages"].get("ensemble", {})
    return {"setting": name, "instances": instances, "threads": threads, "result": result, "records": len(requests),
            "processes": len(processes), "served": served.get("requests", 0) + served.get("failures", 0)}


def row(r: dict) -> str:
    res = r["result"]
    tp, lat = res["throughput"], res["latency_ms"]
    return (f"| {r['instances']} | {r['threads']} | {res['counts']['ok']} | {res['counts']['errors']} | "
            f"{tp['output_tokens_per_s']:.0f} | {tp['requests_per_s']:.2f} | {lat['ttft']['p50']:.0f} | "
            f"{lat['itl']['p50']:.1f} | {r['records']} / {r['served']} | {r['processes']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["1x2", "1x1", "2x1"], help="NxT: instances x threads")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2, help="Locust worker processes under one master")
    parser.add_argument("--weights", type=Path, help="quantized checkpoint (with --model-dir)")
    parser.add_argument("--model-dir", type=Path, help="the model the checkpoint was made from")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-instances-"))
    model, weights = prepare(work, args.weights, args.model_dir)
    rows = []
    for index, setting in enumerate(args.settings):
        n, t = (int(x) for x in setting.split("x"))
        rows.append(run(work, model, weights, n, t, args, index))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.users} users, {args.duration:g} s, "
          f"{args.workers} Locust workers\n")
    print("| instances | threads each | requests ok | errors | output tokens/s | requests/s | median TTFT ms | "
          "median inter-token ms | records / served | load-generator processes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(row(r))


if __name__ == "__main__":
    main()
