"""Throughput of the CPU reference engine at 1, 4 and 16 concurrent requests (run by hand, not in CI).

Two paths over the same weights and engine settings:
  engine  CpuEngine in this process, each "client" a thread in a closed loop (no Triton, no RPC);
  server  a real tritonserver on a rendered cpu-reference repository, each client a tritonclient gRPC
          stream to the tensorrt_llm model in a closed loop (the serving path, RPC included).
Without --weights the demo's tiny model is made and quantized to NVFP4 first (as `tritongen demo`
does), so the figures are those of the demo deployment.

    .venv/bin/python bench/bench_engine.py                     # tiny model, NVFP4, both paths
    .venv/bin/python bench/bench_engine.py --mode engine --concurrency 1 4 --requests 8

Prints a markdown table: output tokens/s (all clients together), requests/s, median time to first
token and median inter-token gap seen by the clients. Server and clients share this machine's cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "model_repo" / "tensorrt_llm_cpu" / "1"))
sys.path.insert(0, str(ROOT / "model_repo" / "_shared"))  # what render copies beside each model.py


@dataclass
class Record:
    tokens: int
    sent_ns: int
    token_ns: list[int]


@dataclass
class Level:
    path: str
    concurrency: int
    records: list[Record]
    wall_s: float

    def row(self) -> str:
        tokens = sum(r.tokens for r in self.records)
        ttft = [(r.token_ns[0] - r.sent_ns) / 1e6 for r in self.records if r.token_ns]
        gaps = [(b - a) / 1e6 for r in self.records for a, b in zip(r.token_ns, r.token_ns[1:])]
        return (f"| {self.path} | {self.concurrency} | {len(self.records)} | {tokens / self.wall_s:,.0f} | "
                f"{len(self.records) / self.wall_s:.2f} | {statistics.median(ttft):.1f} | "
                f"{statistics.median(gaps) if gaps else 0:.1f} |")


def prompts(vocab: int, count: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(length)] for _ in range(count)]


def closed_loop(concurrency: int, work: list, one_request) -> tuple[list[Record], float]:
    """``concurrency`` clients take requests from ``work`` until it is empty; each waits for its answer."""
    pending = queue.Queue()
    for item in work:
        pending.put(item)
    records: list[Record] = []
    lock = threading.Lock()

    def client(index: int):
        while True:
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            record = one_request(index, item)
            with lock:
                records.append(record)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records, time.perf_counter() - started


# ---------------------------------------------------------------- in-process engine


def bench_engine(params: dict[str, str], max_batch_size: int, levels, work) -> list[Level]:
    from cpu_engine import CpuEngine, load_model
    from engine_settings import EngineSettings
    from trtllm_io import GenerationRequest

    settings = EngineSettings.from_parameters(params, max_batch_size)
    engine = CpuEngine(settings, load_model(settings.weights_dir, settings.dtype, settings.cpu_threads),
                       log=lambda _: None)
    engine.start()

    class Sink:
        def __init__(self):
            self.times, self.tokens, self.done = [], 0, threading.Event()

        def send(self, tensors, final):
            if tensors is not None and tensors["output_ids"].size:
                self.times.append(time.perf_counter_ns())
                self.tokens += tensors["output_ids"].size
            if final:
                self.done.set()

        def send_error(self, message, final):
            raise RuntimeError(message)

        def is_cancelled(self):
            return False

    def one(_, item):
        prompt, n = item
        sink = Sink()
        sent = time.perf_counter_ns()
        engine.submit([GenerationRequest(input_ids=prompt, max_new_tokens=n, streaming=True,
                                         exclude_input_in_output=True)], sink, arrival_ns=sent)
        sink.done.wait()
        return Record(sink.tokens, sent, sink.times)

    try:
        closed_loop(1, work[:2], one)  # warm-up
        return [Level("engine", c, *closed_loop(c, work, one)) for c in levels]
    finally:
        engine.shutdown()


# ---------------------------------------------------------------- through tritonserver


def bench_server(repo_dir: Path, levels, work) -> list[Level]:
    import tritonclient.grpc as grpcclient

    from generator.serve.server import TritonServer

    with TritonServer(repo_dir, log_file=repo_dir.parent / "bench-triton.log") as server:
        def one_request(client_state, item):
            prompt, n = item
            client, responses = client_state
            arrays = {"input_ids": np.array([prompt], np.int32), "input_lengths": np.array([[len(prompt)]], np.int32),
                      "request_output_len": np.array([[n]], np.int32), "streaming": np.array([[True]])}
            inputs = []
            for name, value in arrays.items():
                tensor = grpcclient.InferInput(name, value.shape, "BOOL" if value.dtype == np.bool_ else "INT32")
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            sent = time.perf_counter_ns()
            client.async_stream_infer("tensorrt_llm", inputs, enable_empty_final_response=True)
            times, tokens = [], 0
            while True:
                result, error, received = responses.get(timeout=600)
                if error is not None:
                    raise RuntimeError(error)
                ids = result.as_numpy("output_ids")
                if ids is not None and ids.size:
                    times.append(received)
                    tokens += ids.size
                if result.get_response().parameters["triton_final_response"].bool_param:
                    return Record(tokens, sent, times)

        def run_level(concurrency, items):
            streams = []
            for _ in range(concurrency):
                client = grpcclient.InferenceServerClient(server.grpc_url)
                responses = queue.Queue()
                client.start_stream(callback=lambda result, error, q=responses: q.put((result, error,
                                                                                       time.perf_counter_ns())))
                streams.append((client, responses))
            try:
                return closed_loop(concurrency, items, lambda i, item: one_request(streams[i], item))
            finally:
                for client, _ in streams:
                    client.stop_stream()
                    client.close()

        run_level(1, work[:2])  # warm-up
        return [Level("server (gRPC)", c, *run_level(c, work)) for c in levels]


# ---------------------------------------------------------------- setup


def demo_repository(out: Path, weights: Path | None) -> tuple[Path, Path]:
    """Render the demo's cpu-reference repository; make and quantize the tiny model unless weights are given."""
    from generator.demo import demo_overrides
    from generator.repo.render import render_repository
    from generator.spec import load_spec

    if weights is None:
        from generator.model.quantize import quantize
        from generator.model.tinymodel import make_tiny_model

        model_dir = make_tiny_model(out / "tiny-qwen3", seed=0)
        spec = load_spec(None, demo_overrides(model_dir, out / "artifacts"))
        quantize(spec)
    else:
        spec = load_spec(None, demo_overrides(weights, out / "artifacts") + ["quantization.format=none",
                                                                              "quantization.kv_cache=none"])
    return render_repository(spec, out / "repo-cpu"), spec.serving_weights_dir


def rendered_tensorrt_llm(repo_dir: Path) -> tuple[dict[str, str], int]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((repo_dir / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in config.parameters.items()}, config.max_batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="a Hugging Face model folder instead of the NVFP4 tiny model")
    parser.add_argument("--mode", choices=("engine", "server", "both"), default="both")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, help="where the model and repository go (default: a temp folder)")
    args = parser.parse_args()

    out = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    repo_dir, weights = demo_repository(out, args.weights)
    params, max_batch_size = rendered_tensorrt_llm(repo_dir)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(weights).get_text_config().vocab_size
    work = [(p, args.output_tokens) for p in prompts(vocab, args.requests, args.prompt_tokens)]

    levels: list[Level] = []
    if args.mode in ("engine", "both"):
        levels += bench_engine(params, max_batch_size, args.concurrency, work)
    if args.mode in ("server", "both"):
        levels += bench_server(repo_dir, args.concurrency, work)

    print(f"\nweights {weights} (dtype {params.get('dtype')}), {args.requests} requests per level, "
          f"{args.prompt_tokens} prompt + {args.output_tokens} output tokens, max_batch_size {max_batch_size}, "
          f"tokens_per_block {params.get('tokens_per_block')}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch threads {params.get('cpu_threads', 'default')}\n")
    print("| path | concurrent requests | requests | output tokens/s | requests/s | median TTFT ms | "
          "median inter-token ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for level in levels:
        print(level.row())


if __name__ == "__main__":
    main()
