"""The protocol layer of the Locust users: one request's exchange, its record and the served model, shared by the
clients that fill it (httpclient.py: Triton's HTTP generate endpoints; grpcclient.py: one multiplexed gRPC stream;
openaiapi.py: OpenAI-compatible servers).

The hot path is lean on purpose (docs/benchmarks.md has the profile that says why): per streamed response a
client stores only a monotonic timestamp and the payload as received (a gRPC response message, an SSE data
line). Turning payloads into text and server figures (``decode``), counting tokens and checking the streamed
output happen later: the first two when the record is written (in batches, off the response path), the
rest from the records after the run (generator/measure/). A client for another model interface (other
request tensors, cumulative text) plugs in with its own request fields and its own ``decode``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Optional, Protocol, Sequence

from geventhttpclient import HTTPClient

from generator.measure.records import UNANSWERED, RequestRecord, ServerFigures, readable_figure
from generator.serve.dialect import config_param, dialect_for_inputs
from grpcwire import MAX_MESSAGE, StreamClosed, unary
from prompts import Prompt

MAX_ANSWER = 4 * MAX_MESSAGE
"""The most bytes one answer's responses hold together: a server streaming small events as fast as it could
until the run ended grew one Locust process to 21 GB (the machine's out-of-memory killer ended it)."""

RESPONSE_COST = 256
"""Bytes each response counts for toward MAX_ANSWER beyond its own: what the process holds for one besides them (its
objects, time and list slots, its decoded text). review28: an answer of tiny events held ten times its bytes (a
Locust process of 2.8 GB with 4 users; with 12 the run stalled); a real answer of 128k tokens counts 40 MiB."""

Decoded = tuple[list[Optional[str]], ServerFigures, Optional[str]]
"""Per payload its text (None: a response without text, e.g. an empty final one), the server's figures
summed over the answer, and an error the payloads carried."""


def drop_connection(resp) -> None:
    """Close the connection of a response left unread (too large, or its request cut off) instead of giving it
    back to the client's pool, where the next request would read the rest of this answer."""
    sock, pool = resp._sock, resp._pool
    resp._sock = resp._pool = None
    if sock is not None and pool is not None:
        pool.release_socket(sock)


def read_bounded(resp) -> bytes:
    """A whole response body of at most ``MAX_MESSAGE`` (ValueError past it, the connection dropped)."""
    body = resp.read(MAX_MESSAGE + 1)
    if len(body) > MAX_MESSAGE:
        drop_connection(resp)
        raise ValueError(f"the answer is longer than {MAX_MESSAGE:,} bytes")
    return body


class Exchange:
    """One request on the hot path: timestamps and raw payloads; ``finish`` turns them into the raw record."""

    __slots__ = ("request_id", "record", "resp_ns", "payloads", "size", "end_ns", "error", "on_done", "decode")

    def __init__(self, request_id: str, record: RequestRecord, decode: Callable[[list[Any]], Decoded]) -> None:
        self.request_id, self.record, self.decode = request_id, record, decode
        self.resp_ns: list[int] = []
        self.payloads: list[Any] = []
        self.size = 0  # bytes of the payloads, RESPONSE_COST each included
        self.end_ns: Optional[int] = None
        self.error: Optional[str] = None
        self.on_done: Optional[Callable[[Exchange], None]] = None  # called once, when the answer is complete

    def sent(self) -> None:
        self.record["sent_ns"] = time.monotonic_ns()

    def fail(self, message: str, t_ns: Optional[int] = None) -> None:
        if self.error is None:
            self.error = message[:500]
            self.end_ns = t_ns or time.monotonic_ns()

    def keep(self, t: int, payload: bytes) -> None:
        """One response as received; ValueError once the answer passes MAX_ANSWER bytes (RESPONSE_COST each)."""
        self.size += len(payload) + RESPONSE_COST
        if self.size > MAX_ANSWER:
            raise ValueError(f"the answer is longer than {MAX_ANSWER:,} bytes ({RESPONSE_COST} a response included)")
        self.resp_ns.append(t)
        self.payloads.append(payload)

    def silent_ns(self, now: int) -> int:
        """How long the answer has been silent: since the last response, or since the request was sent."""
        return now - (self.resp_ns[-1] if self.resp_ns else self.record["sent_ns"])

    def finish(self) -> RequestRecord:
        """The raw record (generator/measure/records.py describes it): payloads decoded, texts kept per response."""
        rec = self.record
        texts, server, error = decode_safely(self.decode, self.payloads)
        if len(texts) == len(self.resp_ns) and None not in texts:  # the usual answer: every response has text
            rec["resp_ns"], rec["resp_text"] = self.resp_ns, texts
        else:  # (texts end early at an error)
            rec["resp_ns"] = [t for t, text in zip(self.resp_ns, texts) if text is not None]
            rec["resp_text"] = [text for text in texts if text is not None]
        rec["server"] = server
        rec["error"] = self.error or error
        rec["end_ns"] = self.end_ns if self.end_ns is not None else time.monotonic_ns()
        return rec


def decode_safely(decode: Callable[[list[Any]], Decoded], payloads: list[Any]) -> Decoded:
    """``decode``, where a response the client cannot read fails its own request and nothing else: raised out of
    the record writer, one malformed event from a server lost every record of the batch and hung the run. A text
    that is no Unicode (JSON's ``"\\ud800"``, half of a UTF-16 pair, which json.loads hands back) is one too: the
    record writer and the workers' messages encode UTF-8, and it failed there (review14: the batch's other records
    lost, the writer stopped, a run of 40 requests reported 32 ok and no error). So is a figure of the server's past what
    the records file holds, or negative (review28: one usage count of 1e30 made the file unreadable; prompt_tokens of 5
    and -5 with cached tokens a ZeroDivisionError in the statistics: each time the whole run lost)."""
    try:
        texts, server, error = decode(payloads)
        "".join(text for text in texts if text).encode("utf-8")
        for name, value in server.items():  # times and counts: a negative sum of counts divided the report by 0
            if value < 0 or not readable_figure(value):
                raise ValueError(f"the server's {name} is {value:.3g}: no count or time is negative or past 64 bits")
    except Exception as exc:  # noqa: BLE001 - whatever the server sent, this request's error
        return [None] * len(payloads), {}, f"unreadable response: {type(exc).__name__}: {exc}"[:500]
    return texts, server, error if error is None else error.encode("utf-8", "backslashreplace").decode("utf-8")


def new_record(protocol: str, model: str, proc: int, seq: int, prompt: Prompt, warmup: bool, sched_ns: int,
               *, conn_ns: int, cumulative: bool, prompt_text: Optional[str]) -> RequestRecord:
    """A request's record before it is sent: every key of RequestRecord (generator/measure/records.py), the
    ones the exchange fills (send and response times, texts, server figures, error) with their empty values."""
    return {
        "kind": "request", "id": f"p{proc}-{seq}", "proc": proc, "seq": seq,
        "warmup": warmup, "protocol": protocol, "model": model, "streaming": protocol != "http",
        "cumulative": cumulative, "prompt": prompt.index, "prompt_text": prompt_text, "max_tokens": prompt.max_tokens,
        "exact_length": False, "input_tokens": prompt.input_tokens,
        "start_unix_ns": time.time_ns() - (time.monotonic_ns() - sched_ns),
        "sched_ns": sched_ns, "sent_ns": sched_ns, "conn_ns": conn_ns, "resp_ns": [], "resp_text": [], "server": {},
        "error": None, "cancelled": False, "end_ns": sched_ns, "output_tokens": None,
    }


def absorb(server: ServerFigures, name: str, values: Sequence[int]) -> None:
    """A server figure of responses in order: output tokens add up over the answer; any other keeps its last
    value known (time points not known yet come as 0)."""
    if name == "num_output_tokens":
        server[name] = server.get(name, 0) + sum(values)
        return
    for value in reversed(values):
        if value:
            server[name] = value
            return


class NoAnswer(Exception):
    """A second request in a row whose connection ended before any answer (records.UNANSWERED)."""


class AnsweredPosts:
    """An HTTP client's POSTs, counting those in a row that got no answer at all: the second raises NoAnswer, which
    ends the run as a refused connection does. A port that accepts and closes (a proxy or port-forward whose server
    is gone) failed every user's request at once, ~1,400 records a second for the rest of the run."""

    def __init__(self, http: HTTPClient) -> None:
        self.http, self.unanswered = http, 0

    def post(self, path: str, body: bytes):
        try:
            resp = self.http.post(path, body=body, headers={"Content-Type": "application/json"})
        except Exception as exc:  # noqa: BLE001 - the connection ended (or timed out) before any answer
            self.unanswered += 1
            if self.unanswered >= 2:
                raise NoAnswer(f"{UNANSWERED.removeprefix('NoAnswer: ')}{type(exc).__name__}: {exc}") from exc
            raise
        self.unanswered = 0
        return resp


class LLMClient(Protocol):
    """What a Locust user needs from a client: fill one exchange (hot path), decode its payloads (later)."""

    def generate(self, ex: Exchange, prompt: Prompt) -> None: ...

    def decode(self, payloads: list[Any]) -> Decoded: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- model discovery


class ModelInfo:
    """The served model's inputs/outputs (so users only send what it accepts) and its tokenizer folder."""

    def __init__(self, config: dict[str, Any], tokenizer_dir: Optional[str]) -> None:
        self.name = config["name"]
        if not isinstance(self.name, str):  # review28: every record carries it, and a record's model is a string
            raise RuntimeError(f"the served model's config names it {self.name!r}, not a string: is this a Triton server?")
        self.inputs = {i["name"] for i in config.get("input", [])}
        self.outputs = {o["name"] for o in config.get("output", [])}
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.cumulative = dialect_for_inputs(self.inputs).cumulative
        """Streamed text_output is the whole text so far (the LLM-API model), not the new text."""
        self.tokenizer_dir = tokenizer_dir


def _config_fetcher(host: str, timeout: float) -> Callable[[str], Optional[dict[str, Any]]]:
    """A model's configuration as JSON over the run's own protocol (gRPC: a unary ModelConfig call)."""
    if host.startswith("grpc://"):
        from google.protobuf.json_format import MessageToDict
        from tritonclient.grpc import service_pb2

        def fetch_grpc(name: str) -> Optional[dict[str, Any]]:
            request = service_pb2.ModelConfigRequest(name=name).SerializeToString()
            try:
                data = unary(grpc_target(host), "/inference.GRPCInferenceService/ModelConfig", request, timeout)
            except StreamClosed:
                return None
            config = service_pb2.ModelConfigResponse.FromString(data).config
            return MessageToDict(config, preserving_proto_field_name=True)

        return fetch_grpc
    http = HTTPClient.from_url(host, concurrency=1, connection_timeout=timeout, network_timeout=timeout)

    def fetch_http(name: str) -> Optional[dict[str, Any]]:
        resp = http.get(f"/v2/models/{name}/config")
        body = read_bounded(resp)  # an endless one grew every Locust process to 7.4 GB in 75 s (MemoryError)
        return json.loads(body) if resp.status_code == 200 else None

    return fetch_http


def model_info(host: str, model: Optional[str], timeout: float) -> ModelInfo:
    """``model`` None: the repository's entry model (loadtest.model), ensemble or else the LLM-API tensorrt_llm."""
    fetch = _config_fetcher(host, timeout)
    if model is None:
        model = "ensemble" if fetch("ensemble") is not None else "tensorrt_llm"
    config = fetch(model)
    if config is None:
        raise RuntimeError(f"model {model!r} is not served at {host}")
    tokenizer_dir = config_param(config, "tokenizer_dir")
    if tokenizer_dir is None:
        pre = fetch("preprocessing")
        tokenizer_dir = config_param(pre, "tokenizer_dir") if pre else None
    return ModelInfo(config, tokenizer_dir)


def grpc_target(host: str) -> str:
    return host.split("://", 1)[-1].rstrip("/")
