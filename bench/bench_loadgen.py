"""The load generator's own ceiling: how many requests and streamed responses per second tritongen's
Locust users can drive on this machine, against a trivial model that answers instantly.

A report can only blame the server when the client was below this ceiling; the run's own client verdict
(CPU, event-loop lag, send lateness) says the same per run. The trivial model is a decoupled Python model
with the ensemble's request and response tensors that streams N one-token responses without computing
anything; the tokenizer is the tiny test model's.

    .venv/bin/python bench/bench_loadgen.py [--seconds 10] [--users 8,32] [--tokens 16] [--out bench-out]

Prints a Markdown table (recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

TRIVIAL_CONFIG = """name: "ensemble"
backend: "python"
max_batch_size: 64
model_transaction_policy { decoupled: true }
input [
  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] },
  { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "min_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true },
  { name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true },
  { name: "return_num_output_tokens" data_type: TYPE_BOOL dims: [ 1 ] optional: true }
]
output [
  { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] },
  { name: "num_output_tokens" data_type: TYPE_INT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "tokenizer_dir" value { string_value: "%s" } }
"""

TRIVIAL_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Streams max_tokens responses of one word each, at once: no model, only Triton's own cost."""

    def execute(self, requests):
        for request in requests:
            n = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy().reshape(-1)[0])
            sender = request.get_response_sender()
            word = pb_utils.Tensor("text_output", np.array([[b" tok"]], dtype=np.object_))
            one = pb_utils.Tensor("num_output_tokens", np.array([[1]], dtype=np.int32))
            for i in range(n):
                flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if i == n - 1 else 0
                sender.send(pb_utils.InferenceResponse([word, one]), flags=flags)
        return None
'''


def trivial_repo(root: Path, tokenizer_dir: Path) -> Path:
    model = root / "ensemble"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(TRIVIAL_CONFIG % tokenizer_dir, encoding="utf-8")
    (model / "1" / "model.py").write_text(TRIVIAL_MODEL, encoding="utf-8")
    return root


@contextlib.contextmanager
def trivial_server(work: Path) -> Iterator[tuple[str, str, str, Optional[str]]]:
    """(HTTP URL, gRPC address, metrics URL, admin key) of a real tritonserver on the trivial model; tokenizer:
    work/tiny."""
    from generator.model.tinymodel import make_tiny_model
    from generator.serve.server import TritonServer

    tokenizer = make_tiny_model(work / "tiny")
    repo = trivial_repo(work / "repo", tokenizer)
    with TritonServer(repo, log_file=work / "triton.log") as server:
        yield f"http://{server.http_url}", server.grpc_url, server.metrics_url, server.admin_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", default="8,32")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--protocols", default="grpc-stream,http-stream")
    parser.add_argument("--workers", default="0,1", help="Locust worker processes (0: one process)")
    parser.add_argument("--url", default=None, help="a running server's HTTP URL (else the trivial model is started)")
    parser.add_argument("--grpc-url", default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-out/loadgen"))
    args = parser.parse_args()

    from generator.measure.runner import run_loadtest
    from generator.spec import load_spec

    work = Path(tempfile.mkdtemp(prefix="tritongen-bench-"))
    tokenizer = work / "tiny"
    rows = []
    server = contextlib.nullcontext((args.url, args.grpc_url, None, None)) if args.url else trivial_server(work)
    with server as (http_url, grpc_url, metrics_url, admin_key):
        for protocol in args.protocols.split(","):
            for workers in args.workers.split(","):
                for users in (int(u) for u in args.users.split(",")):
                    out = args.out / f"{protocol}-w{workers}-u{users}"
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "records.jsonl").unlink(missing_ok=True)
                    spec = load_spec(None, [
                        f"loadtest.protocol={protocol}", f"loadtest.users={users}", f"loadtest.spawn_rate={users}",
                        f"loadtest.duration_s={args.seconds}", f"loadtest.workers={workers}",
                        f"loadtest.output_tokens_mean={args.tokens}", "loadtest.input_tokens_mean=16",
                        "loadtest.num_prompts=16", "loadtest.reference_checks=0",
                    ] + ([] if args.url else [f"loadtest.tokenizer={tokenizer}"]))
                    res = run_loadtest(spec, out, url=http_url, grpc_url=grpc_url,
                                       metrics_url=metrics_url, title=f"loadgen ceiling {out.name}",
                                       admin_key=admin_key).results
                    tp, client = res.throughput, res.client
                    n = len(client.processes)
                    rows.append({
                        "protocol": protocol, "users": users,
                        "layout": f"workers={workers}: " + (f"master + {n} worker(s)" if workers != "0" else "one process"),
                        "requests_per_s": tp.requests_per_s, "responses_per_s": tp.output_tokens_per_s,
                        "ttft_p50_ms": res.latency_ms.ttft.p50, "itl_p50_ms": res.latency_ms.itl.p50,
                        "cpu": max(p.cpu for p in client.processes),
                        "per_core": client.capacity.responses_per_core_s if client.capacity else None,
                        "lag_p99_ms": max(p.lag_p99_ms for p in client.processes),
                        "client_limited": client.client_limited, "errors": res.counts.errors,
                    })
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"server and load generator on the same machine; {args.seconds:g} s per row, {args.tokens} tokens per answer")
    print("| protocol | Locust | users | requests/s | streamed responses/s | TTFT p50 ms | ITL p50 ms "
          "| max Locust CPU | responses per core-second | loop lag p99 ms | client-limited | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['protocol']} | {r['layout']} | {r['users']} | {r['requests_per_s']:.0f} | "
              f"{r['responses_per_s']:.0f} | {r['ttft_p50_ms']:.1f} | {r['itl_p50_ms']:.2f} | {r['cpu']:.0%} | "
              f"{r['per_core'] or 0:,.0f} | "
              f"{r['lag_p99_ms']:.1f} | {r['client_limited']} | {r['errors']} |")
    (args.out / "ceiling.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
