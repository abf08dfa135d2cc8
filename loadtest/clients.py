"""The protocol layer of the Locust users: one request's exchange and the clients that fill it.

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
from typing import Any, Callable, Optional, Protocol

import gevent.event
from geventhttpclient import HTTPClient

from generator.measure.records import RECORD_VERSION, SERVER_FIELDS, request_inputs
from generator.serve.dialect import dialect_for_inputs
from grpcwire import GrpcStream, StreamClosed, unary
from prompts import Prompt

Decoded = tuple[list[Optional[str]], dict[str, int], Optional[str]]
"""Per payload its text (None: a response without text, e.g. an empty final one), the server's figures
summed over the answer, and an error the payloads carried."""


class Exchange:
    """One request on the hot path: timestamps and raw payloads; ``finish`` turns them into the raw record."""

    __slots__ = ("request_id", "record", "resp_ns", "payloads", "end_ns", "error", "done", "decode")

    def __init__(self, request_id: str, record: dict[str, Any], decode: Callable[[list[Any]], Decoded]) -> None:
        self.request_id, self.record, self.decode = request_id, record, decode
        self.resp_ns: list[int] = []
        self.payloads: list[Any] = []
        self.end_ns: Optional[int] = None
        self.error: Optional[str] = None
        self.done: Optional[gevent.event.Event] = None

    def sent(self) -> None:
        self.record["sent_ns"] = time.monotonic_ns()

    def fail(self, message: str, t_ns: Optional[int] = None) -> None:
        if self.error is None:
            self.error = message[:500]
            self.end_ns = t_ns or time.monotonic_ns()

    def wait(self, timeout: float) -> None:
        """Until the answer is complete; a request with no response for ``timeout`` seconds fails."""
        seen = 0
        while not self.done.wait(timeout):
            if len(self.resp_ns) == seen:
                self.fail(f"no response within {timeout:g} s")
                return
            seen = len(self.resp_ns)

    def finish(self) -> dict[str, Any]:
        """The raw record (generator/measure/records.py describes it): payloads decoded, texts kept per response."""
        rec = self.record
        texts, server, error = self.decode(self.payloads)
        rec["resp_ns"] = [t for t, text in zip(self.resp_ns, texts) if text is not None]
        rec["resp_text"] = [text for text in texts if text is not None]
        rec["server"] = server
        rec["error"] = self.error or error
        rec["end_ns"] = self.end_ns if self.end_ns is not None else time.monotonic_ns()
        return rec


def new_record(protocol: str, model: str, proc: int, seq: int, prompt: Prompt, warmup: bool, sched_ns: int) -> dict[str, Any]:
    return {
        "kind": "request", "v": RECORD_VERSION, "id": f"p{proc}-{seq}", "proc": proc, "seq": seq,
        "warmup": warmup, "protocol": protocol, "model": model, "streaming": protocol != "http",
        "prompt": prompt.index, "max_tokens": prompt.max_tokens, "input_tokens": prompt.input_tokens,
        "start_unix_ns": time.time_ns() - (time.monotonic_ns() - sched_ns),
        "sched_ns": sched_ns, "sent_ns": sched_ns,
    }


def absorb(server: dict[str, int], name: str, value: int) -> None:
    """One response's server figure: output tokens add up over the answer; time points not known yet come as 0."""
    if name == "num_output_tokens":
        server[name] = server.get(name, 0) + value
    elif value:
        server[name] = value


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
        self.inputs = {i["name"] for i in config.get("input", [])}
        self.outputs = {o["name"] for o in config.get("output", [])}
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.cumulative = dialect_for_inputs(self.inputs).cumulative
        """Streamed text_output is the whole text so far (the LLM-API model), not the new text."""
        self.tokenizer_dir = tokenizer_dir


def _param(config: dict[str, Any], key: str) -> Optional[str]:
    value = (config.get("parameters", {}).get(key) or {}).get("string_value")
    return value if value and not value.startswith("${") else None


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
        body = resp.read()
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
    tokenizer_dir = _param(config, "tokenizer_dir")
    if tokenizer_dir is None:
        pre = fetch("preprocessing")
        tokenizer_dir = _param(pre, "tokenizer_dir") if pre else None
    return ModelInfo(config, tokenizer_dir)


def grpc_target(host: str) -> str:
    return host.split("://", 1)[-1].rstrip("/")


# ---------------------------------------------------------------- HTTP: generate_stream (SSE) and generate


def decode_json(payloads: list[bytes]) -> Decoded:
    """SSE data lines or one generate body: ``text_output`` and the server's figures; an ``error`` ends it."""
    texts: list[Optional[str]] = []
    server: dict[str, int] = {}
    for raw in payloads:
        data = json.loads(raw[5:] if raw.startswith(b"data:") else raw)
        if "error" in data:
            return texts, server, str(data["error"])
        text = data.get("text_output", "")
        texts.append(text if isinstance(text, str) else "".join(text))
        for name in SERVER_FIELDS:
            if name in data:
                value = data[name]
                absorb(server, name, int(value[0] if isinstance(value, list) else value))
    return texts, server, None


def read_events(resp, ex: Exchange) -> None:
    """An SSE response, line by line off the socket: each ``data:`` line with the time it arrived."""
    times, payloads, readline = ex.resp_ns, ex.payloads, resp.readline
    while True:
        line = readline(b"\n")
        t = time.monotonic_ns()
        if not line:
            break
        if line.startswith(b"data:"):
            times.append(t)
            payloads.append(line)
    ex.end_ns = t


class HttpLLMClient:
    """HTTP generate_stream (SSE, read line by line off the socket) or generate, on one keep-alive connection."""

    decode = staticmethod(decode_json)

    def __init__(self, host: str, info: ModelInfo, stream: bool, timeout: float) -> None:
        self.info, self.stream = info, stream
        self.http = HTTPClient.from_url(host, concurrency=1, connection_timeout=timeout, network_timeout=timeout)
        self.path = f"/v2/models/{info.name}/{'generate_stream' if stream else 'generate'}"
        self.http.get("/v2/health/ready").read()  # open the connection before the first timed request

    def generate(self, ex: Exchange, prompt: Prompt) -> None:
        fields = request_inputs(self.info.inputs, prompt.text, prompt.max_tokens, self.stream)
        ex.record["exact_length"] = "min_tokens" in fields
        body = json.dumps({"id": ex.request_id, **fields}).encode()
        ex.sent()
        resp = self.http.post(self.path, body=body, headers={"Content-Type": "application/json"})
        if resp.status_code != 200:
            ex.fail(f"HTTP {resp.status_code}: {resp.read()[:300].decode(errors='replace')}")
            return
        if not self.stream:
            body = resp.read()
            t = time.monotonic_ns()
            ex.resp_ns.append(t)
            ex.payloads.append(body)
            ex.end_ns = t
            return
        read_events(resp, ex)

    def close(self) -> None:
        self.http.close()


# ---------------------------------------------------------------- gRPC: one multiplexed ModelStreamInfer call


_INTS = {"INT32": (4, True), "INT64": (8, True), "UINT32": (4, False), "UINT64": (8, False)}


def _strings(raw: bytes) -> str:
    """A BYTES tensor's elements (each a 4-byte little-endian length and the bytes), decoded and joined."""
    out, pos = [], 0
    while pos + 4 <= len(raw):
        n = int.from_bytes(raw[pos:pos + 4], "little")
        out.append(raw[pos + 4:pos + 4 + n].decode("utf-8", errors="replace"))
        pos += 4 + n
    return "".join(out)


def decode_infer_responses(payloads: list[Any]) -> Decoded:
    """ModelInferResponse messages: ``text_output`` and the server's figures from the raw output tensors."""
    texts: list[Optional[str]] = []
    server: dict[str, int] = {}
    for resp in payloads:
        text = None
        for out, raw in zip(resp.outputs, resp.raw_output_contents):
            if out.name == "text_output":
                text = _strings(raw)
            elif out.name in SERVER_FIELDS and out.datatype in _INTS:
                size, signed = _INTS[out.datatype]
                absorb(server, out.name, int.from_bytes(raw[:size], "little", signed=signed))
        texts.append(text)
    return texts, server, None


def with_id(body: bytes, request_id: str) -> bytes:
    """A serialized ModelInferRequest with its ``id`` (field 3) set: a field appended to a serialized protobuf
    message is parsed as part of it, so the request is serialized once per prompt, not per request."""
    rid = request_id.encode()
    n, length = len(rid), bytearray()
    while n >= 0x80:
        length.append((n & 0x7F) | 0x80)
        n >>= 7
    length.append(n)
    return body + b"\x1a" + bytes(length) + rid


class GrpcLLMClient:
    """One HTTP/2 connection and one bidirectional ModelStreamInfer call for all requests of a Locust process:
    requests are multiplexed by id and each response is routed to its request by the id.

    The call is spoken directly (grpcwire.py) rather than through grpcio, whose gevent integration cost about
    ten times the CPU per response; tritonclient's stream wrapper would also drop the id of error responses.
    A request message is serialized once per prompt; its id is appended per request (a protobuf field
    appended to a serialized message sets it).
    """

    PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
    decode = staticmethod(decode_infer_responses)

    def __init__(self, host: str, info: ModelInfo, timeout: float) -> None:
        from tritonclient.grpc import service_pb2

        self._pb = service_pb2
        self._parse = service_pb2.ModelStreamInferResponse.FromString
        self.target, self.info, self.timeout = grpc_target(host), info, timeout
        self.outputs = [n for n in ("text_output", *SERVER_FIELDS) if n in info.outputs]
        self.waiting: dict[str, Exchange] = {}
        self.bodies: dict[int, tuple[bytes, bool]] = {}
        self.stream = self._open()

    def _open(self) -> GrpcStream:
        return GrpcStream(self.target, self.PATH, self.timeout, self._on_message, self._on_close)

    def _body(self, prompt: Prompt) -> tuple[bytes, bool]:
        """The request without its id, serialized, and whether it asks for exactly max_tokens."""
        import numpy as np

        fields = request_inputs(self.info.inputs, prompt.text, prompt.max_tokens, True)
        req = self._pb.ModelInferRequest(model_name=self.info.name)
        req.parameters["triton_enable_empty_final_response"].bool_param = True
        for name, value in fields.items():
            tensor = req.inputs.add(name=name, shape=[1, 1] if self.info.batched else [1])
            if isinstance(value, str):
                data = value.encode()
                tensor.datatype, raw = "BYTES", len(data).to_bytes(4, "little") + data
            elif isinstance(value, bool):
                tensor.datatype, raw = "BOOL", np.array([value], dtype=bool).tobytes()
            else:
                tensor.datatype, raw = "INT32", np.array([value], dtype=np.int32).tobytes()
            req.raw_input_contents.append(raw)
        for name in self.outputs:
            req.outputs.add(name=name)
        body = self.bodies[prompt.index] = (req.SerializeToString(), "min_tokens" in fields)
        return body

    def _on_message(self, t: int, data: bytes) -> None:
        """The response path: route by id, keep the time and the message; a final response completes it."""
        resp = self._parse(data)
        ir = resp.infer_response
        ex = self.waiting.get(ir.id)
        if resp.error_message:
            if ex is None and len(self.waiting) == 1:  # an error without id: the only request in flight
                ex = next(iter(self.waiting.values()))
            if ex is not None:
                ex.fail(resp.error_message, t)
                ex.done.set()
            return
        if ex is None:
            return
        ex.resp_ns.append(t)
        ex.payloads.append(ir)
        if ir.parameters["triton_final_response"].bool_param:
            ex.end_ns = t
            ex.done.set()

    def _on_close(self, exc: StreamClosed) -> None:
        for ex in list(self.waiting.values()):
            ex.fail(f"gRPC stream failed: {exc}")
            ex.done.set()

    def generate(self, ex: Exchange, prompt: Prompt) -> None:
        body, ex.record["exact_length"] = self.bodies.get(prompt.index) or self._body(prompt)
        if self.stream.closed is not None:
            self.stream = self._open()
        ex.done = gevent.event.Event()
        self.waiting[ex.request_id] = ex
        try:
            ex.sent()
            self.stream.send(with_id(body, ex.request_id))
            ex.wait(self.timeout)
        finally:
            self.waiting.pop(ex.request_id, None)

    def close(self) -> None:
        self.stream.close()
