"""Cross-check: do tritongen's Locust figures agree with an independent client measuring the same load?

The independent client is NVIDIA's perf_analyzer (C++, its own gRPC stack), which writes every request's
send time and every streamed response's time (``--profile-export-file``); TTFT, per-gap ITL and E2E are
computed from those timestamps with the same definitions. The load is the same: the prompts and lengths
the Locust run used, the same concurrency, gRPC streaming to the ensemble. Two Locust runs bracket the
perf_analyzer run, so the Locust-vs-perf_analyzer difference can be read against Locust's own
run-to-run spread.

perf_analyzer: the ``perf-analyzer`` PyPI package is empty; the binary ships in the tritonclient 2.51.0
manylinux wheel (later ones need glibc 2.38). Extract it and link two libraries from nvidia-pytriton:

    pip download tritonclient==2.51.0 --no-deps -d /tmp/pa && cd /tmp/pa && unzip -q tritonclient-*.whl
    cp tritonclient-2.51.0.data/data/bin/perf_analyzer . && L=$VENV/lib/python3.11/site-packages/nvidia_pytriton.libs
    ln -s $L/libb64-*.so.0d libb64.so.0d && ln -s $L/libcudart-*.so.12* libcudart.so.12

    .venv/bin/python bench/crosscheck.py --repo REPO --perf-analyzer /tmp/pa/perf_analyzer [--users 4 --seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "count": int(a.size)}


def perf_analyzer_figures(export: Path, tokens: int) -> dict[str, dict[str, float]]:
    """TTFT, per-gap ITL and E2E (ms) from perf_analyzer's per-request timestamps (ns)."""
    data = json.loads(export.read_text(encoding="utf-8"))
    ttft, gaps, e2e = [], [], []
    for experiment in data["experiments"]:
        for req in experiment["requests"]:
            times = req["response_timestamps"]
            if len(times) < tokens:  # an empty final response may follow the last token
                continue
            times = times[:tokens]
            ttft.append((times[0] - req["timestamp"]) / 1e6)
            gaps.extend((b - a) / 1e6 for a, b in zip(times, times[1:]))
            e2e.append((times[-1] - req["timestamp"]) / 1e6)
    return {"ttft": percentiles(ttft), "itl": percentiles(gaps), "e2e": percentiles(e2e)}


def input_data(records: Path, tokens: int, out: Path) -> int:
    """perf_analyzer's --input-data file: the prompts the Locust run sent, with the same request fields."""
    prompts = {}
    for line in records.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "prompt_text" in rec:
            prompts[rec["prompt"]] = rec["prompt_text"]
    rows = [{"text_input": [prompts[i]], "max_tokens": [tokens], "min_tokens": [tokens], "stream": [True],
             "exclude_input_in_output": [True]} for i in sorted(prompts)]
    out.write_text(json.dumps({"data": rows}), encoding="utf-8")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--perf-analyzer", type=Path, required=True)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench-out/crosscheck"))
    args = parser.parse_args()

    from generator.loadtest import run_loadtest
    from generator.server import TritonServer
    from generator.spec import load_spec

    args.out.mkdir(parents=True, exist_ok=True)
    spec = load_spec(None, [
        "loadtest.protocol=grpc-stream", f"loadtest.users={args.users}", f"loadtest.spawn_rate={args.users}",
        f"loadtest.duration_s={args.seconds}", "loadtest.input_tokens_mean=64",
        f"loadtest.output_tokens_mean={args.tokens}", "loadtest.num_prompts=32", "loadtest.reference_checks=0",
    ])
    rows = {}
    with TritonServer(args.repo, log_file=args.out / "triton.log") as server:
        def locust(name: str) -> None:
            out = args.out / name
            out.mkdir(exist_ok=True)
            res = run_loadtest(spec, out, url=f"http://{server.http_url}", grpc_url=server.grpc_url,
                               metrics_url=server.metrics_url, title=name).results
            rows[name] = {k: res["latency_ms"][k] for k in ("ttft", "itl", "e2e")}
            rows[name]["requests_per_s"] = res["throughput"]["requests_per_s"]
            rows[name]["client_limited"] = res["client"]["client_limited"]

        locust("locust-1")
        n = input_data(args.out / "locust-1" / "records.jsonl", args.tokens, args.out / "pa-input.json")
        export = args.out / "pa-export.json"
        env = dict(os.environ, LD_LIBRARY_PATH=str(args.perf_analyzer.resolve().parent))
        cmd = [str(args.perf_analyzer), "-m", "ensemble", "-u", server.grpc_url, "-i", "grpc", "--streaming",
               "--input-data", str(args.out / "pa-input.json"), "--concurrency-range", str(args.users),
               "--measurement-mode", "time_windows", "--measurement-interval", str(int(args.seconds * 1000 / 3)),
               "--stability-percentage", "100", "--max-trials", "3", "--profile-export-file", str(export)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.seconds * 10 + 300)
        (args.out / "pa.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        if proc.returncode != 0:
            sys.exit(f"perf_analyzer failed ({proc.returncode}); see {args.out / 'pa.log'}")
        rows["perf_analyzer"] = perf_analyzer_figures(export, args.tokens)
        locust("locust-2")

    print(f"{args.users} concurrent gRPC streams, {args.tokens} tokens per answer, {n} prompts; ms")
    print("| run | TTFT p50 | TTFT p90 | ITL p50 | ITL p90 | E2E p50 | E2E p90 | requests |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['ttft']['p50']:.1f} | {r['ttft']['p90']:.1f} | {r['itl']['p50']:.2f} | "
              f"{r['itl']['p90']:.2f} | {r['e2e']['p50']:.1f} | {r['e2e']['p90']:.1f} | {r['ttft']['count']} |")
    pa = rows["perf_analyzer"]
    for name in ("locust-1", "locust-2"):
        diffs = {f"{k}_{s}": rows[name][k][s] / pa[k][s] - 1 for k in ("ttft", "itl", "e2e") for s in ("p50", "p90")}
        print(f"{name} vs perf_analyzer: " + ", ".join(f"{k} {v:+.1%}" for k, v in diffs.items()))
    spread = {f"{k}_{s}": rows["locust-2"][k][s] / rows["locust-1"][k][s] - 1 for k in ("ttft", "itl", "e2e")
              for s in ("p50", "p90")}
    print("locust-2 vs locust-1: " + ", ".join(f"{k} {v:+.1%}" for k, v in spread.items()))
    (args.out / "crosscheck.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
