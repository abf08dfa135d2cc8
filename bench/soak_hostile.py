"""The soak's hostile client (bench/soak.py runs it beside its honest clients): malformed and abusive requests.

Random JSON bodies over the documented inputs, huge and non-finite numbers, non-UTF-8 text,
out-of-vocabulary ids, direct engine calls, clients that disconnect mid-stream, duplicate request ids,
and for the LLM-API model ``stop`` cancellations with live and unknown ids. Every request's outcome is
counted by kind (an HTTP status, a gRPC error, a client exception, "hung"); what the server must do
about them (stay ready, answer honest clients right, settle back to idle) is checked by bench/soak.py.
On its own, against a server already serving (loopback only)::

    .venv/bin/python bench/soak_hostile.py --http 127.0.0.1:8000 --grpc 127.0.0.1:8001 --count 100
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.serve.client import llmapi_inputs  # noqa: E402
from generator.serve.smoke import grpc_stream, text_inputs  # noqa: E402

PROMPTS = ["The repair café meets in the church hall", "Tea travelled a long way before it reached",
           "東京 and 京都 are two cities", "Emoji: 😊 and a crème brûlée", "Once upon a time"]
MODELS = ("ensemble", "tensorrt_llm_bls")
LLMAPI_MODEL = "tensorrt_llm"
LLMAPI_FUZZ_INPUTS = ["text_input", "streaming", "sampling_param_best_of", "sampling_param_temperature",
                      "sampling_param_top_k", "sampling_param_top_p", "sampling_param_frequency_penalty",
                      "sampling_param_presence_penalty", "sampling_param_max_tokens", "sampling_param_stop",
                      "sampling_param_seed", "sampling_param_exclude_input_from_output",
                      "sampling_param_return_perf_metrics", "return_finish_reason", "return_stop_reason",
                      "return_cumulative_logprob", "stop"]
# The ensemble's documented inputs a client may send (config.pbtxt), with the JSON value kinds they take.
FUZZ_INPUTS = ["text_input", "max_tokens", "bad_words", "stop_words", "end_id", "pad_id", "top_k", "top_p",
               "temperature", "length_penalty", "repetition_penalty", "min_tokens", "presence_penalty",
               "frequency_penalty", "seed", "return_log_probs", "return_perf_metrics", "exclude_input_in_output",
               "stream", "beam_width", "num_return_sequences", "embedding_bias_words", "embedding_bias_weights"]

HOSTILE_NUMBERS = [0, -1, 1, 2**31 - 1, 2**31, -2**31, 2**63, 10**30, 1e-38, 1e-45, 3e38, -3e38, 1e308, 0.5,
                   float("nan"), float("inf"), float("-inf")]



def request_body(prompt: str, *, llmapi: bool, max_tokens: int, stream: bool | None = None, **extra) -> dict:
    """An honest request in the target's dialect (greedy: the LLM-API model's default samples)."""
    if llmapi:
        body = {"text_input": prompt, "sampling_param_max_tokens": max_tokens, "sampling_param_top_k": 1}
        if stream is not None:
            body["streaming"] = stream
    else:
        body = {"text_input": prompt, "max_tokens": max_tokens}
        if stream is not None:
            body["stream"] = stream
    return {**body, **extra}


class HostileClient:
    """Sends hostile requests and counts their outcomes (``outcomes``; ``hung``: no answer within 120 s)."""

    def __init__(self, http: str, grpc: str, *, llmapi: bool):
        self.http, self.grpc, self.llmapi = http, grpc, llmapi
        self.lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.hung = 0

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

    def _llmapi_once(self, rng: random.Random) -> str:
        """The LLM-API model's abuse: random JSON over its inputs, non-finite sampling values, ``stop`` with
        live and unknown ids, disconnects, prompts too long, and the CPU engine called directly."""
        kind = rng.randrange(7)
        if kind == 0:
            body = {name: self._random_value(rng) for name in rng.sample(LLMAPI_FUZZ_INPUTS, rng.randrange(1, 8))}
            if rng.random() < 0.7:
                body.setdefault("text_input", rng.choice(PROMPTS))
                body.setdefault("sampling_param_max_tokens", rng.randrange(1, 8))
            return self._post(LLMAPI_MODEL, json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass"))
        if kind == 1:  # non-finite or huge sampling values, as tensors
            name, value = rng.choice([("sampling_param_temperature", math.nan), ("sampling_param_top_p", math.inf),
                                      ("sampling_param_top_k", -1), ("sampling_param_max_tokens", 2**31 - 1),
                                      ("sampling_param_frequency_penalty", -3e38), ("sampling_param_seed", 2**63)])
            inputs = llmapi_inputs(rng.choice(PROMPTS), {"streaming": True, "sampling_param_max_tokens": 4, name: value})
            return self._grpc(LLMAPI_MODEL, inputs)
        if kind == 2:  # a stream and a stop request with its id at once; and stops for ids that are not running
            rid, outcomes = f"stop-{rng.randrange(3)}", []
            stream = llmapi_inputs(rng.choice(PROMPTS), {"streaming": True, "sampling_param_max_tokens": 32})
            stop = llmapi_inputs("", {"stop": True})
            threads = [threading.Thread(target=lambda i=i: outcomes.append(
                self._grpc(LLMAPI_MODEL, i, request_id=rid))) for i in (stream, stop)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(150)
            return "stop " + ",".join(sorted(outcomes))
        if kind == 3:  # disconnect mid-stream (SSE and gRPC)
            if rng.random() < 0.5:
                with requests.post(f"http://{self.http}/v2/models/{LLMAPI_MODEL}/generate_stream", stream=True,
                                   timeout=120, json=request_body(rng.choice(PROMPTS), llmapi=True, max_tokens=64,
                                                                   stream=True)) as r:
                    next(r.iter_lines(), None)
                return "sse left"
            inputs = llmapi_inputs(rng.choice(PROMPTS), {"streaming": True, "sampling_param_max_tokens": 64,
                                                         "sampling_param_return_perf_metrics": True})
            return self._grpc(LLMAPI_MODEL, inputs, leave_after=1)
        if kind == 4:  # non-UTF-8 text and stop strings
            inputs = llmapi_inputs(b"\xff\xfe caf\xe9", {"streaming": True, "sampling_param_max_tokens": 4})
            inputs["sampling_param_stop"] = np.array([b"\xc3", b"ok"], dtype=np.object_)
            return self._grpc(LLMAPI_MODEL, inputs)
        if kind == 5:  # straight to the engine, asking for perf outputs
            n = rng.randrange(1, 20)
            inputs = {"input_ids": np.array([[rng.choice([-1, 10**6, 5]) for _ in range(n)]], np.int32),
                      "input_lengths": np.array([[rng.choice([n, n + 5, -1])]], np.int32),
                      "request_output_len": np.array([[rng.choice([4, 0, 2**31 - 1])]], np.int32),
                      "return_perf_metrics": np.array([[True]])}
            return self._grpc("tensorrt_llm_cpu", inputs, request_id=f"r{rng.randrange(5)}")
        prompt = "hello " * rng.choice([10_000, 300])  # longer than max_input_len
        return self._post(LLMAPI_MODEL, json.dumps({"text_input": prompt, "sampling_param_max_tokens": 4}).encode())

    def once(self, rng: random.Random) -> str:
        if self.llmapi:
            return self._llmapi_once(rng)
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

    def worker(self, deadline: float, at_least: int, seed: int) -> None:
        rng = random.Random(seed)
        sent = 0
        while time.monotonic() < deadline or sent < at_least:
            try:
                outcome = self.once(rng)
            except requests.Timeout:
                outcome = "hung"
            except Exception as exc:  # noqa: BLE001 - the server may refuse in many ways; count them
                outcome = f"client {type(exc).__name__}"
            sent += 1
            with self.lock:
                self.outcomes[outcome] += 1
                if outcome == "hung":
                    self.hung += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", default="127.0.0.1:8000", help="the server's HTTP host:port")
    parser.add_argument("--grpc", default="127.0.0.1:8001", help="the server's gRPC host:port")
    parser.add_argument("--target", choices=("ensemble", "llmapi"), default="ensemble",
                        help="what the server serves: the ensemble and BLS, or the LLM-API model")
    parser.add_argument("--count", type=int, default=100, help="hostile requests to send")
    parser.add_argument("--seed", type=int, default=10_000)
    args = parser.parse_args()
    client = HostileClient(args.http, args.grpc, llmapi=args.target == "llmapi")
    client.worker(time.monotonic(), args.count, args.seed)
    print(json.dumps({"requests": sum(client.outcomes.values()), "hung": client.hung,
                      "outcomes": dict(sorted(client.outcomes.items()))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
