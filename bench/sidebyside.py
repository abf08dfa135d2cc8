"""Side by side: tritongen's Locust users and NVIDIA's perf_analyzer, taking turns on the same server, the same
trivial model (bench_loadgen.py's: N one-token responses per request at once) and the same load (gRPC
streaming to the model, the same prompts and request fields, C concurrent streams, closed loop).

The figure that matters on a shared machine is requests per second **per core used**: requests completed
divided by the client's own CPU time (user + system), not by wall-clock time, because the server and other
jobs take the rest of the cores. tritongen: the Locust process's CPU from its own process record (setup and
imports before the run excluded); perf_analyzer: its CPU time as a child process (resource.getrusage), all
of it, and the requests in its profile export. perf_analyzer comes from the tritonclient 2.51.0 wheel, see
crosscheck.py.

    .venv/bin/python bench/sidebyside.py --perf-analyzer /tmp/pa/perf_analyzer [--users 32 --seconds 15 --rounds 3]

Prints a Markdown table per round and the medians (recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loadgen import trivial_server  # noqa: E402


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def perf_analyzer_input(records: Path, accepted: set[str], tokens: int, out: Path) -> None:
    """perf_analyzer's --input-data: the prompts the Locust run sent, with the request fields it sent."""
    from generator.measure.records import read_records, request_inputs

    prompts = {r["prompt"]: r["prompt_text"] for r in read_records(records).requests if r["prompt_text"] is not None}
    rows = [{k: [v] for k, v in request_inputs(accepted, prompts[i], tokens, True).items()} for i in sorted(prompts)]
    out.write_text(json.dumps({"data": rows}), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", type=Path, required=True)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", default=None, help="a running server's HTTP URL (else the trivial model is started)")
    parser.add_argument("--grpc-url", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-out/sidebyside"))
    args = parser.parse_args()

    from generator.measure.records import read_records
    from generator.measure.runner import model_inputs, run_loadtest
    from generator.spec import load_spec

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tritongen-sidebyside-"))
    server = contextlib.nullcontext((args.url, args.grpc_url, None, None)) if args.url else trivial_server(work)
    rows: list[dict] = []
    with server as (url, grpc_url, metrics_url, admin_key):
        spec = load_spec(None, [
            "loadtest.protocol=grpc-stream", f"loadtest.users={args.users}", f"loadtest.spawn_rate={args.users}",
            f"loadtest.duration_s={args.seconds}", f"loadtest.output_tokens_mean={args.tokens}",
            "loadtest.input_tokens_mean=16", "loadtest.num_prompts=16", "loadtest.reference_checks=0",
        ] + ([f"loadtest.tokenizer={work / 'tiny'}"] if not args.url else []))

        def tritongen(i: int) -> None:
            out = (args.out / f"tritongen-{i}").resolve()
            out.mkdir(exist_ok=True)
            (out / "records.jsonl").unlink(missing_ok=True)
            res = run_loadtest(spec, out, url=url, grpc_url=grpc_url, metrics_url=metrics_url, title=out.name,
                               admin_key=admin_key).results
            requests, processes, _ = read_records(out / "records.jsonl")
            cpu = sum(p["cpu_s"] for p in processes)
            rows.append({"client": "tritongen", "round": i, "requests": len(requests), "cpu_s": cpu,
                         "requests_per_s": res.throughput.requests_per_s,
                         "cores": cpu / max(p["wall_s"] for p in processes),
                         "errors": res.counts.errors})

        def perf_analyzer(i: int) -> None:
            export = args.out / f"perf_analyzer-{i}.json"
            env = dict(os.environ, LD_LIBRARY_PATH=str(args.perf_analyzer.resolve().parent))
            cmd = [str(args.perf_analyzer), "-m", "ensemble", "-u", grpc_url, "-i", "grpc", "--streaming",
                   "--input-data", str(args.out / "pa-input.json"), "--concurrency-range", str(args.users),
                   "--measurement-mode", "time_windows", "--measurement-interval", str(int(args.seconds * 1000 / 3)),
                   "--stability-percentage", "999", "--max-trials", "3", "--profile-export-file", str(export)]
            before = children_cpu_s()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.seconds * 10 + 300)
            cpu = children_cpu_s() - before
            (args.out / f"perf_analyzer-{i}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
            if proc.returncode != 0:
                sys.exit(f"perf_analyzer failed ({proc.returncode}); see {args.out}/perf_analyzer-{i}.log")
            data = json.loads(export.read_text(encoding="utf-8"))
            requests = [r for e in data["experiments"] for r in e["requests"]]
            first = min(r["timestamp"] for r in requests)
            last = max(r["response_timestamps"][-1] for r in requests if r["response_timestamps"])
            wall = (last - first) / 1e9
            rows.append({"client": "perf_analyzer", "round": i, "requests": len(requests), "cpu_s": cpu,
                         "requests_per_s": len(requests) / wall, "cores": cpu / wall, "errors": 0})

        for i in range(args.rounds):  # alternate, so that drifts of the shared machine hit both alike
            tritongen(i)
            if i == 0:
                accepted = model_inputs(url, "ensemble")
                perf_analyzer_input(args.out / "tritongen-0" / "records.jsonl", accepted, args.tokens,
                                    args.out / "pa-input.json")
            perf_analyzer(i)

    print(f"{args.users} concurrent gRPC streams, {args.tokens} one-token responses per request, "
          f"{args.rounds} alternating rounds of ~{args.seconds:g} s, machine load from other jobs")
    print("| client | round | requests | requests/s | client CPU s | cores used | requests/s per core | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        r["per_core"] = r["requests"] / r["cpu_s"]
        print(f"| {r['client']} | {r['round']} | {r['requests']} | {r['requests_per_s']:.0f} | {r['cpu_s']:.2f} | "
              f"{r['cores']:.2f} | {r['per_core']:.0f} | {r['errors']} |")
    med = {c: float(np.median([r["per_core"] for r in rows if r["client"] == c])) for c in ("tritongen", "perf_analyzer")}
    ratio = med["tritongen"] / med["perf_analyzer"]
    print(f"median requests/s per core: tritongen {med['tritongen']:.0f}, perf_analyzer {med['perf_analyzer']:.0f}; "
          f"ratio {ratio:.2f}x (goal >= 0.8x)")
    (args.out / "sidebyside.json").write_text(json.dumps({"rows": rows, "median_per_core": med, "ratio": ratio},
                                                         indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
