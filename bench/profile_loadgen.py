"""Where the load generator's CPU goes per streamed response: the Locust process sampled by CPU time
(cpu_sampler.py) under the trivial-model load (bench_loadgen.py's model: 16 one-token responses per
request, gRPC streaming, 32 users).

Method: the process's CPU time (its own record) divided by the streamed responses it received is the cost
per response; the samples (one per 4 ms of CPU) split it by what the sampled stack was doing, the first
rule of PARTS that matches from the innermost frame outwards.

    .venv/bin/python bench/profile_loadgen.py [--users 32 --seconds 15] [--url http://H:P --grpc-url H:P]

Prints a Markdown table (recorded in docs/benchmarks.md) and writes the raw profile under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loadgen import trivial_server  # noqa: E402
from cpu_sampler import INTERVAL_S  # noqa: E402

# What a sampled stack is doing: the first rule that matches, scanning from the innermost frame outwards.
PARTS: tuple[tuple[str, str], ...] = (
    ("logging", r"logging/"),
    ("JSON (records written, SSE payloads read)", r"json/|write_records"),
    ("per-chunk text work (tokenizing, checks)", r"count_tokens|tokenizers|prompts\.py|stream_failures|compare_texts|"
                                                  r"request_metrics|_strings|\.decode \("),
    ("response decoding (protobuf, tensors)", r"_infer_result|tritonclient/utils|numpy|FromString|_parse|"
                                              r"decode_infer_responses|decode_json|_by_column|_by_tensor|_output \("),
    ("timestamps and record keeping", r"Exchange|new_record|fire_locust_events|locust/stats|locust/event|"
                                      r"RecordSink|LoadState\.finished|run_request"),
    ("requests: routed by id, issued, handed on (grpcclient, lifecycle)", r"grpcclient\.py|lifecycle\.py|tritonllm\.py"),
    ("transport: HTTP/2 frames or HTTP, gevent", r"grpcwire|httpclient\.py|grpc/|gevent|greenlet|threading\.py|_read|"
                                                r"_messages|GrpcStream|queue"),
    ("Locust users and the rest", r"."),
)
_STARTUP = re.compile(r"importlib|<module>|_on_test_start|LoadState\.__init__")


def categorize(raw_profile: Path) -> tuple[Counter, int]:
    """Samples per part from py-spy's raw (collapsed) output; start-up samples (imports, setup) left out."""
    parts: Counter = Counter()
    total = 0
    for line in raw_profile.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(_STARTUP.search(f) for f in frames):
            continue
        n = int(count)
        total += n
        for frame in reversed(frames):
            name = next((part for part, rule in PARTS if re.search(rule, frame)), None)
            if name and name != PARTS[-1][0]:
                parts[name] += n
                break
        else:
            parts[PARTS[-1][0]] += n
    return parts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--protocol", default="grpc-stream", help="grpc-stream or http-stream (SSE)")
    parser.add_argument("--url", default=None, help="a running server's HTTP URL (else the trivial model is started)")
    parser.add_argument("--grpc-url", default=None)
    parser.add_argument("--admin-key", default=None, help="the running server's admin key (tritongen serve prints it)")
    parser.add_argument("--client-cpus", default=None,
                        help="pin the Locust process to these CPUs (taskset -c), e.g. 1: saturate it on one core "
                             "while the server runs on the others (run this script under taskset for those)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/profile"))
    args = parser.parse_args()

    from generator.measure.records import read_records
    from generator.measure.runner import run_loadtest
    from generator.spec import load_spec

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "records.jsonl").unlink(missing_ok=True)
    profile = (args.out / "profile.txt").resolve()
    work = Path(tempfile.mkdtemp(prefix="tritongen-profile-"))
    server = (contextlib.nullcontext((args.url, args.grpc_url, None, args.admin_key)) if args.url
              else trivial_server(work))
    with server as (url, grpc_url, metrics_url, admin_key):
        spec = load_spec(None, [
            f"loadtest.protocol={args.protocol}", f"loadtest.users={args.users}", f"loadtest.spawn_rate={args.users}",
            f"loadtest.duration_s={args.seconds}", f"loadtest.output_tokens_mean={args.tokens}",
            "loadtest.input_tokens_mean=16", "loadtest.num_prompts=16", "loadtest.reference_checks=0",
        ] + ([f"loadtest.tokenizer={work / 'tiny'}"] if not args.url else []))
        pin = ["taskset", "-c", args.client_cpus] if args.client_cpus else []
        prefix = [*pin, sys.executable, str(Path(__file__).resolve().parent / "cpu_sampler.py"), str(profile)]
        run_loadtest(spec, args.out.resolve(), url=url, grpc_url=grpc_url, metrics_url=metrics_url,
                     locust_prefix=prefix, title="load generator profile", admin_key=admin_key)
    requests, processes, _ = read_records(args.out / "records.jsonl")
    responses = sum(len(r["resp_ns"]) for r in requests)
    cpu_s = sum(p["cpu_s"] for p in processes)
    wall_s = max(p["wall_s"] for p in processes)
    parts, samples = categorize(profile)
    sampled_s = samples * INTERVAL_S
    per = 1e6 / responses
    print(f"{len(requests)} requests, {responses} streamed responses in {wall_s:.1f} s; Locust process CPU "
          f"{cpu_s:.2f} s = {cpu_s * per:.1f} µs per response ({cpu_s * 1e6 / len(requests):.0f} µs per request); "
          f"{samples} samples = {sampled_s:.2f} s of CPU after start-up")
    print("| part | µs per streamed response | share |")
    print("|---|---:|---:|")
    rows = {name: n * INTERVAL_S for name, n in parts.items()}
    if cpu_s > sampled_s * 1.05:  # CPU of other threads while the main thread waited: signals coalesce
        rows["not sampled: other threads (grpcio's C core, where used)"] = cpu_s - sampled_s
        sampled_s = cpu_s
    for name, seconds in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {seconds * per:.1f} | {seconds / sampled_s:.0%} |")
    (args.out / "profile.json").write_text(json.dumps({
        "requests": len(requests), "responses": responses, "cpu_s": cpu_s, "wall_s": wall_s,
        "sampled_cpu_s": sampled_s, "parts_s": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
