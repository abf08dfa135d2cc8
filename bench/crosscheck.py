"""Cross-check: do tritongen's Locust figures agree with an independent client measuring the same load?

The independent client is NVIDIA's perf_analyzer (C++, its own gRPC stack), which writes every request's
send time and every streamed response's time (``--profile-export-file``); TTFT, per-gap ITL and E2E are
computed from those timestamps with the same definitions. The load is the same: the prompts and lengths
the Locust run used, the same concurrency, gRPC streaming to the ensemble. The two clients take turns for
several rounds, so the difference between them can be read against each one's run-to-run spread.

perf_analyzer: the ``perf-analyzer`` PyPI package is empty; the binary ships in the tritonclient 2.51.0
manylinux wheel (later ones need glibc 2.38). Extract it and link two libraries from nvidia-pytriton:

    pip download tritonclient==2.51.0 --no-deps -d /tmp/pa && cd /tmp/pa && unzip -q tritonclient-*.whl
    cp tritonclient-2.51.0.data/data/bin/perf_analyzer . && L=$VENV/lib/python3.11/site-packages/nvidia_pytriton.libs
    ln -s $L/libb64-*.so.0d libb64.so.0d && ln -s $L/libcudart-*.so.12* libcudart.so.12

    .venv/bin/python bench/crosscheck.py --repo REPO --perf-analyzer /tmp/pa/perf_analyzer [--users 4 --seconds 20 --rounds 3]

genai-perf (optional, ``--genai-perf BIN``) runs in its own venv (``pip install genai-perf==0.0.16``, ~1 GB) on
top of the same perf_analyzer, with its own synthetic prompts of the same length and ``min_tokens`` as an
extra input; its TTFT and ITL are compared with the same definitions computed from the Locust records
(results.json ``equivalents.genai_perf``: TTFT to the first response, ITL per request).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from generator.measure.records import read_records


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "count": int(a.size)}


def perf_analyzer_figures(export: Path, tokens: int) -> dict[str, dict[str, float]]:
    """TTFT, per-gap ITL and E2E (ms) from perf_analyzer's per-request timestamps (ns), and the front end:
    TTFT minus the engine's own arrival → first token (server clock differences only)."""
    data = json.loads(export.read_text(encoding="utf-8"))
    ttft, gaps, e2e, front, engine = [], [], [], [], []
    sends = sorted(req["timestamp"] for experiment in data["experiments"] for req in experiment["requests"])
    for experiment in data["experiments"]:
        for req in experiment["requests"]:
            times = req["response_timestamps"]
            if len(times) < tokens:  # an empty final response may follow the last token
                continue
            times = times[:tokens]
            ttft.append((times[0] - req["timestamp"]) / 1e6)
            gaps.extend((b - a) / 1e6 for a, b in zip(times, times[1:]))
            e2e.append((times[-1] - req["timestamp"]) / 1e6)
            outs = req.get("response_outputs") or [{}]
            arrival = max(o.get("arrival_time_ns", 0) for o in outs)
            first = max(o.get("first_token_time_ns", 0) for o in outs)
            if arrival and first:
                front.append(ttft[-1] - (first - arrival) / 1e6)
                engine.append((first - arrival) / 1e6)
    return {"ttft": percentiles(ttft), "itl": percentiles(gaps), "e2e": percentiles(e2e),
            "front_end": percentiles(front), "engine": percentiles(engine), "together": together(sends)}


def together(sends_ns: list[int]) -> float:
    """Share of requests sent within 2 ms of the one before: how often the closed loop's streams move in
    lockstep, so that their prompts reach the engine in one step and wait for each other's prefill."""
    gaps = np.diff(np.sort(np.asarray(sends_ns, dtype=np.int64))) / 1e6
    return float((gaps < 2.0).mean()) if gaps.size else 0.0


def locust_server_side(records: Path) -> tuple[dict[str, float], float]:
    """The engine's own arrival → first token (ms) of the Locust run's measured requests, and its ``together``."""
    engine, sends = [], []
    for rec in read_records(records).requests:
        if rec["warmup"] or not rec["server"]:
            continue
        engine.append((rec["server"]["first_token_time_ns"] - rec["server"]["arrival_time_ns"]) / 1e6)
        sends.append(rec["sent_ns"])
    return percentiles(engine), together(sends)


def input_data(records: Path, tokens: int, out: Path) -> int:
    """perf_analyzer's --input-data file: the prompts the Locust run sent, with the same request fields."""
    prompts = {r["prompt"]: r["prompt_text"] for r in read_records(records).requests if r["prompt_text"] is not None}
    rows = [{"text_input": [prompts[i]], "max_tokens": [tokens], "min_tokens": [tokens], "stream": [True],
             "exclude_input_in_output": [True], "return_perf_metrics": [True]} for i in sorted(prompts)]
    out.write_text(json.dumps({"data": rows}), encoding="utf-8")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--perf-analyzer", type=Path, required=True)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spawn-rate", type=float, default=None,
                        help="Locust users started per second (default: --users, i.e. over one second); perf_analyzer "
                             "starts all of its streams at once")
    parser.add_argument("--genai-perf", type=Path, default=None, help="genai-perf executable (its own venv)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/crosscheck"))
    args = parser.parse_args()

    from generator.measure.runner import run_loadtest
    from generator.repo.manifest import read_manifest
    from generator.serve.server import TritonServer
    from generator.spec import load_spec

    args.out.mkdir(parents=True, exist_ok=True)
    spec = load_spec(None, [
        "loadtest.protocol=grpc-stream", f"loadtest.users={args.users}", f"loadtest.spawn_rate={args.spawn_rate or args.users}",
        f"loadtest.duration_s={args.seconds}", "loadtest.input_tokens_mean=64",
        f"loadtest.output_tokens_mean={args.tokens}", "loadtest.num_prompts=32", "loadtest.reference_checks=0",
    ])
    rows: dict[str, dict] = {}
    server = TritonServer(args.repo, log_file=args.out / "triton.log")
    try:
        server.start(timeout_s=900)  # a busy shared box loads the CPU engine slowly
        def locust(name: str) -> None:
            out = args.out / name
            out.mkdir(exist_ok=True)
            res = run_loadtest(spec, out, url=f"http://{server.http_url}", grpc_url=server.grpc_url,
                               metrics_url=server.metrics_url, title=name, admin_key=server.admin_key).results
            rows[name] = {k: getattr(res.latency_ms, k).model_dump() for k in ("ttft", "itl", "e2e")}
            rows[name]["genai_perf_definitions"] = res.equivalents.genai_perf.model_dump()
            parts = res.split.parts
            # the same front end as for perf_analyzer: client TTFT minus the engine's arrival → first token
            rows[name]["front_end"] = {s: getattr(parts["front_end"], s) + getattr(parts["send_delay"], s)
                                       for s in ("p50", "p90")}
            rows[name]["engine"], rows[name]["together"] = locust_server_side(out / "records.jsonl")

        def perf_analyzer(name: str) -> None:
            export = args.out / f"{name}.json"
            env = dict(os.environ, LD_LIBRARY_PATH=str(args.perf_analyzer.resolve().parent))
            cmd = [str(args.perf_analyzer), "-m", "ensemble", "-u", server.grpc_url, "-i", "grpc", "--streaming",
                   "--input-data", str(args.out / "pa-input.json"), "--concurrency-range", str(args.users),
                   "--measurement-mode", "time_windows", "--measurement-interval", str(int(args.seconds * 1000 / 3)),
                   "--stability-percentage", "999", "--max-trials", "3", "--profile-export-file", str(export)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.seconds * 10 + 300)
            (args.out / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
            if proc.returncode != 0:
                sys.exit(f"perf_analyzer failed ({proc.returncode}); see {args.out / name}.log")
            rows[name] = perf_analyzer_figures(export, args.tokens)

        def genai_perf(name: str) -> None:
            artifacts = (args.out / name).resolve()
            env = dict(os.environ, LD_LIBRARY_PATH=str(args.perf_analyzer.resolve().parent),
                       PATH=f"{args.perf_analyzer.resolve().parent}:{os.environ['PATH']}")
            cmd = [str(args.genai_perf), "profile", "-m", "ensemble", "--endpoint-type", "kserve", "--backend",
                   "tensorrtllm", "-u", server.grpc_url, "--streaming", "--concurrency", str(args.users),
                   "--measurement-interval", str(int(args.seconds * 1000 / 3)), "--num-prompts", "32",
                   "--synthetic-input-tokens-mean", "64", "--synthetic-input-tokens-stddev", "0",
                   "--output-tokens-mean", str(args.tokens), "--extra-inputs", f"min_tokens:{args.tokens}",
                   "--extra-inputs", "return_perf_metrics:true", "--tokenizer", tokenizer_dir,
                   "--artifact-dir", str(artifacts)]
            for _attempt in range(2):  # genai-perf 0.0.16 sometimes reads perf_analyzer's export half-written
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.seconds * 10 + 300,
                                      cwd=args.out)
                (args.out / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
                if proc.returncode == 0:
                    break
            exports = sorted(artifacts.rglob("*genai_perf.json"))
            if proc.returncode != 0 or not exports:
                sys.exit(f"genai-perf failed ({proc.returncode}); see {args.out / name}.log")
            data = json.loads(exports[-1].read_text(encoding="utf-8"))
            rows[name] = {"genai_perf_definitions": {
                "ttft": data["time_to_first_token"], "itl": data["inter_token_latency"]}}

        tokenizer_dir = read_manifest(args.repo).spec["model"]["source"] if args.genai_perf else ""
        # Alternate the clients so that drifts of the machine hit them alike.
        for i in range(args.rounds):
            locust(f"locust-{i}")
            if i == 0:
                n = input_data(args.out / "locust-0" / "records.jsonl", args.tokens, args.out / "pa-input.json")
            perf_analyzer(f"perf_analyzer-{i}")
            if args.genai_perf:
                genai_perf(f"genai_perf-{i}")
    finally:
        server.stop()

    keys = [(k, s) for k in ("ttft", "itl", "e2e", "front_end", "engine") for s in ("p50", "p90")]
    rows_pa = {k: v for k, v in rows.items() if not k.startswith("genai_perf")}
    print(f"{args.users} concurrent gRPC streams, {args.tokens} tokens per answer, {n} prompts, "
          f"{args.rounds} alternating rounds of {args.seconds:g} s; ms")
    print("| run | " + " | ".join(f"{k.upper()} {s}" for k, s in keys) + " | sent together | requests |")
    print("|---" * (len(keys) + 3) + "|")
    for name, r in rows_pa.items():
        print(f"| {name} | " + " | ".join(f"{r[k][s]:.1f}" for k, s in keys)
              + f" | {r['together']:.0%} | {r['ttft']['count']} |")
    print("(front end = client TTFT minus the engine's arrival → first token, what the client and network add; "
          "engine = that arrival → first token on the server's clock, which depends on the load's phase, not on the "
          "client's timing; sent together = requests sent within 2 ms of the one before)")
    summary = {}
    def ratio(a: float, b: float):
        return a / b - 1 if b > 0 else None  # a p50 of 0 (tokens arriving together) has no relative difference

    def pct(x, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    for k, s in keys:
        lo = [rows[f"locust-{i}"][k][s] for i in range(args.rounds)]
        pa = [rows[f"perf_analyzer-{i}"][k][s] for i in range(args.rounds)]
        summary[f"{k}_{s}"] = {
            "locust_median": float(np.median(lo)), "perf_analyzer_median": float(np.median(pa)),
            "difference": ratio(float(np.median(lo)), float(np.median(pa))),
            "locust_spread": ratio(max(lo), min(lo)), "perf_analyzer_spread": ratio(max(pa), min(pa)),
        }
    print("| figure | Locust (median of rounds) | perf_analyzer (median) | difference | Locust run-to-run | "
          "perf_analyzer run-to-run |")
    print("|---|---|---|---|---|---|")
    for key, v in summary.items():
        print(f"| {key} | {v['locust_median']:.1f} | {v['perf_analyzer_median']:.1f} | {pct(v['difference'], '+.1%')} | "
              f"{pct(v['locust_spread'], '.0%')} | {pct(v['perf_analyzer_spread'], '.0%')} |")
    if args.genai_perf:
        print("genai-perf's definitions (TTFT to the first response; ITL per request), p50 ms:")
        print("| figure | Locust records (median of rounds) | genai-perf (median) | difference |")
        print("|---|---:|---:|---:|")
        for k in ("ttft", "itl"):
            lo = float(np.median([rows[f"locust-{i}"]["genai_perf_definitions"][k]["p50"] for i in range(args.rounds)]))
            gp = float(np.median([rows[f"genai_perf-{i}"]["genai_perf_definitions"][k]["p50"] for i in range(args.rounds)]))
            summary[f"genai_perf_{k}_p50"] = {"locust_median": lo, "genai_perf_median": gp, "difference": ratio(lo, gp)}
            print(f"| {k.upper()} p50 | {lo:.1f} | {gp:.1f} | {pct(ratio(lo, gp), '+.1%')} |")
    (args.out / "crosscheck.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
