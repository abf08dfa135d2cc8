"""Cross-check on the LLM-API model: tritongen's Locust figures against NVIDIA AIPerf on the same endpoint.

Both clients stream from ``/v2/models/tensorrt_llm/generate_stream`` (server-sent events) with the same
concurrency, prompt length and output length; AIPerf reaches Triton's generate endpoint through its
``template`` endpoint type (a Jinja request body, ``text_output`` as the response field). They take turns
for several rounds, so the difference can be read against each one's run-to-run spread.

The LLM-API model streams the whole text so far in every event. AIPerf treats each event as new text, so
its output token count (and the inter-token latency it derives from it) counts the text many times over;
its inter-chunk latency (time between events) and its request latency do not depend on that. ITL is
therefore compared per gap: Locust's per-gap ITL against AIPerf's inter-chunk latency. (A per-request
ITL from AIPerf's decode time would need each answer's true length, and without a min_tokens input the
model may end an answer early.)

AIPerf lives in its own venv (it pins other versions than tritongen):

    python3.11 -m venv /tmp/aiperf-venv && /tmp/aiperf-venv/bin/pip install aiperf==0.13.0
    .venv/bin/python bench/crosscheck_aiperf.py --repo REPO --aiperf /tmp/aiperf-venv/bin/aiperf [--users 4 --requests 60 --rounds 3]

REPO is an LLM-API repository (``tritongen render --set serving.engine=llmapi``; the CPU stand-in without a GPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

TEMPLATE = ('{"text_input": {{ text|tojson }}, "sampling_param_max_tokens": {{ max_tokens }}, "streaming": true, '
            '"sampling_param_exclude_input_from_output": true}')

FIGURES = ("ttft", "itl_gap", "e2e")


def ratio(a: float, b: float) -> float:
    """a / b - 1; NaN when b is 0 (e.g. a p50 gap of 0 ms: events that arrived together)."""
    return a / b - 1 if b else float("nan")


def aiperf_figures(export: Path) -> dict[str, dict[str, float]]:
    data = json.loads(export.read_text(encoding="utf-8"))

    def stat(name: str) -> dict[str, float]:
        return {s: float(data[name][s]) for s in ("p50", "p90")}

    return {"ttft": stat("time_to_first_token"), "itl_gap": stat("inter_chunk_latency"), "e2e": stat("request_latency"),
            "aiperf_itl": stat("inter_token_latency"), "aiperf_osl": stat("output_sequence_length"),
            "requests": int(data["request_count"]["avg"])}


def add_run_args(parser: argparse.ArgumentParser, out: str, requests: int) -> None:
    """The options both cross-checks share: AIPerf's path and the load of every run."""
    parser.add_argument("--aiperf", type=Path, required=True)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--input-tokens", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(out))


def run_aiperf(args: argparse.Namespace, name: str, endpoint: list[str], tokenizer: Path) -> dict:
    """One AIPerf run at the cross-check's load (``endpoint``: where and how it sends); its figures."""
    out = args.out / name
    cmd = [str(args.aiperf), "profile", *endpoint, "--streaming", "--tokenizer", str(tokenizer),
           "--prompt-input-tokens-mean", str(args.input_tokens), "--prompt-input-tokens-stddev", "0",
           "--prompt-output-tokens-mean", str(args.tokens), "--prompt-output-tokens-stddev", "0",
           "--concurrency", str(args.users), "--request-count", str(args.requests),
           "--warmup-request-count", "2", "--random-seed", "0", "--ui-type", "none", "--no-server-metrics",
           "--no-gpu-telemetry", "--output-artifact-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    (args.out / f"{name}.log").write_text(" ".join(cmd) + "\n" + proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        sys.exit(f"aiperf failed ({proc.returncode}); see {args.out / name}.log")
    return aiperf_figures(out / "profile_export_aiperf.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, required=True)
    add_run_args(parser, "bench-out/crosscheck-aiperf", 60)
    args = parser.parse_args()

    from generator.measure.records import read_records
    from generator.measure.runner import run_loadtest
    from generator.serve.server import TritonServer
    from generator.repo.manifest import MANIFEST, read_manifest

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(args.repo)
    if manifest is None or manifest.target.value != "llmapi":
        sys.exit(f"{args.repo} is not an LLM-API repository rendered by tritongen")
    spec = manifest.recorded_spec(source=str(args.repo / MANIFEST), overrides=[
        "loadtest.protocol=http-stream", f"loadtest.users={args.users}", f"loadtest.spawn_rate={args.users}",
        f"loadtest.max_requests={args.requests}", "loadtest.duration_s=600", "loadtest.warmup_requests=2",
        f"loadtest.input_tokens_mean={args.input_tokens}", "loadtest.input_tokens_stddev=0",
        f"loadtest.output_tokens_mean={args.tokens}", "loadtest.output_tokens_stddev=0", "loadtest.num_prompts=32",
        "loadtest.reference_checks=0", "loadtest.model=null", "loadtest.tokenizer=null"])
    tokenizer = spec.loadtest_tokenizer
    (args.out / "template.json").write_text(TEMPLATE, encoding="utf-8")
    rows: dict[str, dict] = {}
    with TritonServer(args.repo, log_file=args.out / "triton.log") as server:
        def locust(name: str) -> None:
            out = args.out / name
            out.mkdir(exist_ok=True)
            res = run_loadtest(spec, out, url=f"http://{server.http_url}", grpc_url=server.grpc_url,
                               metrics_url=server.metrics_url,
                               title=name, admin_key=server.admin_key).results
            lat = res.latency_ms.model_dump()
            rows[name] = {"ttft": lat["ttft"], "itl_gap": lat["itl"], "e2e": lat["e2e"], "requests": res.counts.ok,
                          "errors": res.counts.errors}
            requests = read_records(out / "records.jsonl").requests
            rows[name]["output_tokens"] = sorted({r["output_tokens"] for r in requests if not r["error"]})

        def aiperf(name: str) -> None:
            rows[name] = run_aiperf(args, name, [
                "--model-names", "tensorrt_llm", "--url", f"http://{server.http_url}", "--endpoint-type", "template",
                "--custom-endpoint", "/v2/models/tensorrt_llm/generate_stream",
                "--extra-inputs", f"payload_template:{args.out / 'template.json'}",
                "--extra-inputs", "response_field:text_output"], tokenizer)

        for i in range(args.rounds):  # alternate, so drifts of the machine hit both alike
            locust(f"locust-{i}")
            aiperf(f"aiperf-{i}")

    print(f"{args.users} concurrent SSE streams to the LLM-API model, {args.input_tokens} tokens in, {args.tokens} out, "
          f"{args.requests} requests per run, {args.rounds} alternating rounds; ms")
    summary = compare_rounds(rows, args.rounds)
    ai0 = rows["aiperf-0"]
    print(f"AIPerf's own ITL p50 {ai0['aiperf_itl']['p50']:.2f} ms from an output length p50 of "
          f"{ai0['aiperf_osl']['p50']:.0f} tokens (the cumulative texts counted as if new); "
          f"Locust output token counts: {rows['locust-0']['output_tokens']}")
    (args.out / "crosscheck.json").write_text(json.dumps({"runs": rows, "summary": summary}, indent=2), encoding="utf-8")


def compare_rounds(rows: dict[str, dict], rounds: int, figures: tuple[str, ...] = FIGURES) -> dict[str, dict]:
    """Print each run's figures and the medians of the rounds side by side with each tool's run-to-run spread."""
    keys = [(k, s) for k in figures for s in ("p50", "p90")]
    print("| run | " + " | ".join(f"{k} {s}" for k, s in keys) + " | requests |")
    print("|---" * (len(keys) + 2) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k][s]:.1f}" for k, s in keys) + f" | {r['requests']} |")
    summary = {}
    for k, s in keys:
        lo = [rows[f"locust-{i}"][k][s] for i in range(rounds)]
        ai = [rows[f"aiperf-{i}"][k][s] for i in range(rounds)]
        summary[f"{k}_{s}"] = {"locust_median": float(np.median(lo)), "aiperf_median": float(np.median(ai)),
                               "difference": ratio(float(np.median(lo)), float(np.median(ai))),
                               "locust_spread": ratio(max(lo), min(lo)), "aiperf_spread": ratio(max(ai), min(ai))}
    print("| figure | Locust (median of rounds) | AIPerf (median) | difference | Locust run-to-run | AIPerf run-to-run |")
    print("|---|---|---|---|---|---|")
    for key, v in summary.items():
        print(f"| {key} | {v['locust_median']:.1f} | {v['aiperf_median']:.1f} | {v['difference']:+.1%} | "
              f"{v['locust_spread']:.0%} | {v['aiperf_spread']:.0%} |")
    return summary


if __name__ == "__main__":
    main()
