"""Soak and fuzz run of a served repository: saturating honest load mixed with hostile requests.

Honest clients (``--workers`` threads, closed loop) send greedy requests whose answers are known from
a first pass, over every entry point (HTTP generate and SSE streaming, gRPC streaming; ensemble and
BLS), and check every answer. One hostile thread sends malformed and abusive requests at the same
time: random JSON bodies over the documented inputs, huge and non-finite numbers, non-UTF-8 text,
out-of-vocabulary ids, direct engine calls, clients that disconnect mid-stream, duplicate request
ids. At the end the run waits for the server to settle and checks that every model is still ready
and answering, that no honest request failed, and that the engine's active requests and KV blocks
and the Python stubs' memory are back at their idle level.

    .venv/bin/python bench/soak.py --duration 600 --hostile 600           # the full run (demo repository)
    .venv/bin/python bench/soak.py --repo REPO --duration 60 --hostile 100

Without ``--repo`` the demo's tiny model is made, quantized and rendered first (as ``tritongen demo``
does). Loopback only. Prints a JSON summary; exit status 1 when a check failed. The test suite runs a
short version of the same run (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.measure.tritonstats import parse_metrics  # noqa: E402
from generator.serve.smoke import grpc_stream, text_inputs  # noqa: E402

PROMPTS = ["The repair café meets in the church hall", "Tea travelled a long way before it reached",
           "東京 and 京都 are two cities", "Emoji: 😊 and a crème brûlée", "Once upon a time"]
MODELS = ("ensemble", "tensorrt_llm_bls")
# The ensemble's documented inputs a client may send (config.pbtxt), with the JSON value kinds they take.
FUZZ_INPUTS = ["text_input", "max_tokens", "bad_words", "stop_words", "end_id", "pad_id", "top_k", "top_p",
               "temperature", "length_penalty", "repetition_penalty", "min_tokens", "presence_penalty",
               "frequency_penalty", "seed", "return_log_probs", "return_perf_metrics", "exclude_input_in_output",
               "stream", "beam_width", "num_return_sequences", "embedding_bias_words", "embedding_bias_weights"]
HOSTILE_NUMBERS = [0, -1, 1, 2**31 - 1, 2**31, -2**31, 2**63, 10**30, 1e-38, 1e-45, 3e38, -3e38, 1e308, 0.5,
                   float("nan"), float("inf"), float("-inf")]


@dataclass
class SoakResult:
    duration_s: float
    honest_requests: int = 0
    honest_failures: int = 0
    honest_failure_examples: list[str] = field(default_factory=list)
    hostile_requests: int = 0
    hostile_outcomes: dict[str, int] = field(default_factory=dict)
    hostile_hung: int = 0
    models_ready_after: bool = False
    answer_after_ok: bool = False
    active_requests_after: float = -1
    kv_blocks_used_after: float = -1
    rss_mib_idle: dict[str, int] = field(default_factory=dict)
    rss_mib_after: dict[str, int] = field(default_factory=dict)
    stubs_restarted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.honest_failures == 0 and self.hostile_hung == 0 and self.models_ready_after
                and self.answer_after_ok and self.active_requests_after == 0 and self.kv_blocks_used_after == 0
                and not self.stubs_restarted and self.memory_settled)

    @property
    def memory_settled(self) -> bool:
        """Each stub's RSS back near idle: allocators keep some freed pages, a leak grows with the run."""
        return all(self.rss_mib_after.get(k, 0) <= 1.25 * v + 64 for k, v in self.rss_mib_idle.items())


def stub_memory(server_pid: int) -> dict[str, tuple[int, int]]:
    """model name -> (pid, RSS MiB) of each Python backend stub of the server."""
    import psutil

    out = {}
    for proc in psutil.Process(server_pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
            if cmd and "triton_python_backend_stub" in cmd[0] and len(cmd) > 1:
                out[Path(cmd[1]).parts[-3]] = (proc.pid, proc.memory_info().rss // 2**20)
        except psutil.Error:
            continue
    return out


def gauge(metrics_url: str, family: str, label: str) -> float:
    samples = parse_metrics(requests.get(metrics_url, timeout=10).text)
    return next(v for _, n, labels, v in samples if n == family and label in labels.values())


class Soak:
    def __init__(self, http: str, grpc: str, metrics_url: str, *, max_tokens: int = 24, seed: int = 0):
        self.http, self.grpc, self.metrics_url = http, grpc, metrics_url
        self.max_tokens = max_tokens
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.expected: dict[str, str] = {}
        self.honest = Counter()
        self.failures: list[str] = []
        self.hostile = Counter()
        self.hung = 0

    # ---------------------------------------------------------------- honest clients

    def _generate(self, model: str, prompt: str, timeout: float = 300) -> requests.Response:
        return requests.post(f"http://{self.http}/v2/models/{model}/generate",
                             json={"text_input": prompt, "max_tokens": self.max_tokens}, timeout=timeout)

    def references(self) -> None:
        for prompt in PROMPTS:
            r = self._generate("ensemble", prompt)
            r.raise_for_status()
            self.expected[prompt] = r.json()["text_output"]

    def _honest_once(self, rng: random.Random) -> str | None:
        """One honest request on a random entry point; None when its answer is right, else why not."""
        prompt, model = rng.choice(PROMPTS), rng.choice(MODELS)
        want = self.expected[prompt]
        path = rng.choice(("generate", "sse", "grpc"))
        if path == "generate":
            r = self._generate(model, prompt)
            got = r.json().get("text_output") if r.status_code == 200 else f"HTTP {r.status_code} {r.text[:200]}"
        elif path == "sse":
            body = {"text_input": prompt, "max_tokens": self.max_tokens, "stream": True}
            with requests.post(f"http://{self.http}/v2/models/{model}/generate_stream", json=body, stream=True,
                               timeout=300) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith(b"data: ")]
            errors = [e["error"] for e in events if "error" in e]
            got = f"error {errors[0]}" if errors else "".join(e.get("text_output", "") for e in events)
        else:
            result = grpc_stream(self.grpc, model, text_inputs(prompt, self.max_tokens, stream=True), timeout=300)
            got = f"error {result.error}" if result.error else result.text
        return None if got == want else f"{path} {model} {prompt!r}: {str(got)[:160]!r} != {want[:80]!r}"

    def honest_worker(self, deadline: float, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            try:
                problem = self._honest_once(rng)
            except Exception as exc:  # noqa: BLE001 - a failed honest request is what this run counts
                problem = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.honest["requests"] += 1
                if problem:
                    self.honest["failures"] += 1
                    self.failures.append(problem)

    # ---------------------------------------------------------------- hostile clients

    def _random_value(self, rng: random.Random):
        kind = rng.randrange(8)
        if kind == 0:
            return rng.choice(HOSTILE_NUMBERS)
        if kind == 1:
            return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(0, 40)))
        if kind == 2:
            return [rng.choice(HOSTILE_NUMBERS) for _ in range(rng.randrange(0, 5))]
        if kind == 3:
            return {"x": rng.choice(HOSTILE_NUMBERS)}
        if kind == 4:
            return None
        if kind == 5:
            return rng.choice([True, False])
        if kind == 6:
            return [rng.choice(PROMPTS) for _ in range(rng.randrange(0, 4))]
        return rng.randrange(-5, 70)

    def _json_body(self, rng: random.Random) -> bytes:
        body = {name: self._random_value(rng) for name in rng.sample(FUZZ_INPUTS, rng.randrange(1, 8))}
        if rng.random() < 0.7:
            body.setdefault("text_input", rng.choice(PROMPTS))
            body.setdefault("max_tokens", rng.randrange(1, 8))
        text = json.dumps(body, allow_nan=True)
        return text.encode("utf-8", "surrogatepass")

    def _post(self, model: str, data: bytes, endpoint: str = "generate") -> str:
        r = requests.post(f"http://{self.http}/v2/models/{model}/{endpoint}", data=data, timeout=120,
                          headers={"Content-Type": "application/json"})
        if r.status_code >= 500:  # say whose: Triton's HTTP front end, or a model's internal error
            return f"http {r.status_code}: {r.text[:48]}"
        return f"http {r.status_code}"

    def _grpc(self, model: str, inputs: dict, request_id: str | None = None, leave_after: int | None = None) -> str:
        on_response = (lambda n: n < leave_after) if leave_after else None
        result = grpc_stream(self.grpc, model, inputs, request_id=request_id, timeout=120, on_response=on_response)
        return "grpc error" if result.error else "grpc ok"

    def _hostile_once(self, rng: random.Random) -> str:
        model = rng.choice(MODELS)
        kind = rng.randrange(9)
        if kind == 0:  # random JSON over the documented inputs
            return self._post(model, self._json_body(rng))
        if kind == 1:  # not JSON, or not UTF-8
            return self._post(model, rng.choice([b"\xff\xfe{", b'{"text_input": "\xff\xfe", "max_tokens": 4}',
                                                  b"{" * 1000, b'{"text_input": ' + b"[" * 500]))
        if kind == 2:  # tensors with non-finite or huge values, where JSON cannot carry them
            name, dtype = rng.choice([("temperature", np.float32), ("top_p", np.float32), ("presence_penalty", np.float32),
                                      ("repetition_penalty", np.float32), ("length_penalty", np.float32),
                                      ("top_k", np.int32), ("min_tokens", np.int32), ("end_id", np.int32)])
            value = rng.choice([math.nan, math.inf, -math.inf, 3e38, -3e38]) if dtype is np.float32 else rng.choice(
                [-2**31, 2**31 - 1, -1])
            inputs = text_inputs(rng.choice(PROMPTS), 4, stream=True, extra={name: np.array([[value]], dtype=dtype)})
            return self._grpc(model, inputs)
        if kind == 3:  # non-UTF-8 text and stop words
            inputs = text_inputs(b"\xff\xfe caf\xe9", 4, stream=True,
                                 extra={"stop_words": np.array([[b"\xc3", b"ok"]], dtype=np.object_)})
            return self._grpc(model, inputs)
        if kind == 4:  # disconnect mid-stream (SSE)
            body = {"text_input": rng.choice(PROMPTS), "max_tokens": 64, "stream": True}
            with requests.post(f"http://{self.http}/v2/models/{model}/generate_stream", json=body, stream=True,
                               timeout=120) as r:
                next(r.iter_lines(), None)
            return "sse left"
        if kind == 5:  # disconnect mid-stream (gRPC)
            return self._grpc(model, text_inputs(rng.choice(PROMPTS), 64, stream=True), leave_after=1)
        if kind == 6:  # duplicate ids: two streams at once with the same request id
            rid, outcomes = f"dup-{rng.randrange(3)}", []
            threads = [threading.Thread(target=lambda: outcomes.append(
                self._grpc(model, text_inputs(rng.choice(PROMPTS), 16, stream=True), request_id=rid))) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(150)
            return "dup " + ",".join(sorted(outcomes))
        if kind == 7:  # straight to the engine: ids outside the vocabulary, lengths that do not fit, stop with any id
            n = rng.randrange(1, 20)
            inputs = {"input_ids": np.array([[rng.choice([-1, 10**6, 5]) for _ in range(n)]], np.int32),
                      "input_lengths": np.array([[rng.choice([n, n + 5, -1])]], np.int32),
                      "request_output_len": np.array([[rng.choice([4, 0, 2**31 - 1])]], np.int32)}
            if rng.random() < 0.3:
                inputs["stop"] = np.array([[True]])
            return self._grpc("tensorrt_llm", inputs, request_id=f"r{rng.randrange(5)}")
        prompt = "hello " * rng.choice([10_000, 300])  # longer than max_input_len
        return self._post(model, json.dumps({"text_input": prompt, "max_tokens": 4}).encode())

    def hostile_worker(self, deadline: float, at_least: int, seed: int) -> None:
        rng = random.Random(seed)
        sent = 0
        while time.monotonic() < deadline or sent < at_least:
            try:
                outcome = self._hostile_once(rng)
            except requests.Timeout:
                outcome = "hung"
            except Exception as exc:  # noqa: BLE001 - the server may refuse in many ways; count them
                outcome = f"client {type(exc).__name__}"
            sent += 1
            with self.lock:
                self.hostile[outcome] += 1
                if outcome == "hung":
                    self.hung += 1

    # ---------------------------------------------------------------- the run

    def settle(self, timeout_s: float = 120) -> tuple[float, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            active = gauge(self.metrics_url, "nv_trt_llm_request_metrics", "active")
            used = gauge(self.metrics_url, "nv_trt_llm_kv_cache_block_metrics", "used")
            if (active == 0 and used == 0) or time.monotonic() > deadline:
                return active, used
            time.sleep(0.5)

    def run(self, duration_s: float, hostile: int, workers: int, server_pid: int | None) -> SoakResult:
        self.references()
        idle = stub_memory(server_pid) if server_pid else {}
        started = time.monotonic()
        deadline = started + duration_s
        threads = [threading.Thread(target=self.honest_worker, args=(deadline, i), daemon=True) for i in range(workers)]
        threads.append(threading.Thread(target=self.hostile_worker, args=(deadline, hostile, 10_000), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result = SoakResult(duration_s=round(time.monotonic() - started, 1))
        result.active_requests_after, result.kv_blocks_used_after = self.settle()
        ready = requests.get(f"http://{self.http}/v2/health/ready", timeout=10).status_code == 200
        result.models_ready_after = ready and all(
            requests.get(f"http://{self.http}/v2/models/{m}/ready", timeout=10).status_code == 200
            for m in (*MODELS, "preprocessing", "postprocessing", "tensorrt_llm"))
        r = self._generate("ensemble", PROMPTS[0])
        result.answer_after_ok = r.status_code == 200 and r.json()["text_output"] == self.expected[PROMPTS[0]]
        if server_pid:
            after = stub_memory(server_pid)
            result.rss_mib_idle = {k: v[1] for k, v in idle.items()}
            result.rss_mib_after = {k: v[1] for k, v in after.items()}
            result.stubs_restarted = sorted(k for k in idle if after.get(k, (None,))[0] != idle[k][0])
        result.honest_requests, result.honest_failures = self.honest["requests"], self.honest["failures"]
        result.honest_failure_examples = self.failures[:5]
        result.hostile_requests = sum(self.hostile.values())
        result.hostile_outcomes = dict(sorted(self.hostile.items()))
        result.hostile_hung = self.hung
        return result


def _demo_repo(work: Path) -> Path:
    """The demo's repository: tiny Qwen3, NVFP4 checkpoint, cpu-reference layout."""
    from generator.demo import demo_overrides
    from generator.model.quantize import quantize
    from generator.model.tinymodel import make_tiny_model
    from generator.repo.render import render_repository
    from generator.spec import load_spec

    tiny = make_tiny_model(work / "tiny-qwen3", seed=0)
    spec = load_spec(None, demo_overrides(tiny, work / "artifacts"))
    quantize(spec)
    return render_repository(spec, work / "repo")


def main() -> int:
    import tempfile

    from generator.serve.server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, help="rendered repository (default: the demo's, made here)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--hostile", type=int, default=500, help="at least this many hostile requests")
    parser.add_argument("--workers", type=int, default=16, help="honest clients (the demo's max_batch_size)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        repo = args.repo or _demo_repo(Path(tmp))
        with TritonServer(repo, log_file=Path(tmp) / "triton.log") as server:
            soak = Soak(server.http_url, server.grpc_url, server.metrics_url, max_tokens=args.max_tokens)
            result = soak.run(args.duration, args.hostile, args.workers, server.pid)
    summary = {"ok": result.ok, "memory_settled": result.memory_settled, **asdict(result), "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
               "command": " ".join(sys.argv)}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
