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

import gevent
import gevent.event
from geventhttpclient import HTTPClient

from generator.measure.records import SERVER_FIELDS, RequestRecord, ServerFigures, request_inputs
from generator.serve.dialect import config_param, dialect_for_inputs
from grpcwire import MAX_MESSAGE, YIELD_EVERY, GrpcStream, StreamClosed, unary
from prompts import Prompt

MAX_ANSWER = 4 * MAX_MESSAGE
"""The most bytes one answer's responses hold together: a server streaming small events as fast as it could
until the run ended grew one Locust process to 21 GB (the machine's out-of-memory killer ended it)."""

Decoded = tuple[list[Optional[str]], ServerFigures, Optional[str]]
"""Per payload its text (None: a response without text, e.g. an empty final one), the server's figures
summed over the answer, and an error the payloads carried."""


class Exchange:
    """One request on the hot path: timestamps and raw payloads; ``finish`` turns them into the raw record."""

    __slots__ = ("request_id", "record", "resp_ns", "payloads", "size", "end_ns", "error", "on_done", "decode")

    def __init__(self, request_id: str, record: RequestRecord, decode: Callable[[list[Any]], Decoded]) -> None:
        self.request_id, self.record, self.decode = request_id, record, decode
        self.resp_ns: list[int] = []
        self.payloads: list[Any] = []
        self.size = 0  # bytes of the payloads
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
        """One response as received; ValueError once the answer passes MAX_ANSWER bytes."""
        self.size += len(payload)
        if self.size > MAX_ANSWER:
            raise ValueError(f"the answer is longer than {MAX_ANSWER:,} bytes")
        self.resp_ns.append(t)
        self.payloads.append(payload)

    def silent_ns(self, now: int) -> int:
        """How long the answer has been silent: since the last response, or since the request was sent."""
        return now - (self.resp_ns[-1] if self.resp_ns else self.record["sent_ns"])

    def finish(self) -> RequestRecord:
        """The raw record (generator/measure/records.py describes it): payloads decoded, texts kept per response."""
        rec = self.record
        texts, server, error = decode_safely(self.decode, self.payloads)
        rec["resp_ns"] = [t for t, text in zip(self.resp_ns, texts) if text is not None]
        rec["resp_text"] = [text for text in texts if text is not None]
        rec["server"] = server
        rec["error"] = self.error or error
        rec["end_ns"] = self.end_ns if self.end_ns is not None else time.monotonic_ns()
        return rec


def decode_safely(decode: Callable[[list[Any]], Decoded], payloads: list[Any]) -> Decoded:
    """``decode``, where a response the client cannot read fails its own request and nothing else: raised out of
    the record writer, one malformed event from a server lost every record of the batch and hung the run."""
    try:
        return decode(payloads)
    except Exception as exc:  # noqa: BLE001 - whatever the server sent, this request's error
        return [None] * len(payloads), {}, f"unreadable response: {type(exc).__name__}: {exc}"[:500]


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


def absorb(server: ServerFigures, name: str, value: int) -> None:
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
    tokenizer_dir = config_param(config, "tokenizer_dir")
    if tokenizer_dir is None:
        pre = fetch("preprocessing")
        tokenizer_dir = config_param(pre, "tokenizer_dir") if pre else None
    return ModelInfo(config, tokenizer_dir)


def grpc_target(host: str) -> str:
    return host.split("://", 1)[-1].rstrip("/")


# ---------------------------------------------------------------- HTTP: generate_stream (SSE) and generate


def decode_json(payloads: list[bytes]) -> Decoded:
    """SSE data lines or one generate body: ``text_output`` and the server's figures; an ``error`` ends it."""
    texts: list[Optional[str]] = []
    server: ServerFigures = {}
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


def error_text(resp) -> str:
    """The start of an error answer (its rest is not read: the connection is dropped)."""
    head = resp.read(300)
    if not resp.message_complete:
        drop_connection(resp)
    return head.decode(errors="replace")


def read_events(resp, ex: Exchange) -> None:
    """An SSE response, line by line off the socket: each ``data:`` line with the time it arrived. The lines
    are cut out of the response's own buffer (geventhttpclient's readline searched the whole buffer again
    after every read and had no bound), each at most ``MAX_MESSAGE``."""
    buf, feed = resp._body_buffer, resp.feed
    searched = reads = 0
    try:
        while True:
            end = buf.find(b"\n", searched)
            if end < 0:
                if len(buf) > MAX_MESSAGE:
                    raise ValueError(f"an SSE line is longer than {MAX_MESSAGE:,} bytes")
                if resp.message_complete:
                    break
                searched = len(buf)
                data = resp._sock.recv(resp.block_size)
                feed(data)
                if not data and not resp.message_complete:
                    raise ConnectionError("the server closed the connection before the answer ended")
                reads += 1
                if reads % YIELD_EVERY == 0:
                    gevent.sleep(0)
                continue
            t = time.monotonic_ns()
            line = bytes(buf[:end + 1])
            del buf[:end + 1]
            searched = 0
            if line.startswith(b"data:"):
                ex.keep(t, line)
    except BaseException:
        drop_connection(resp)
        raise
    ex.end_ns = time.monotonic_ns()


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
            ex.fail(f"HTTP {resp.status_code}: {error_text(resp)}")
            return
        if not self.stream:
            body = read_bounded(resp)
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
    n = int.from_bytes(raw[:4], "little")
    if n + 4 == len(raw):  # one element: the usual case
        return raw[4:].decode("utf-8", errors="replace")
    out, pos = [], 0
    while pos + 4 <= len(raw):
        n = int.from_bytes(raw[pos:pos + 4], "little")
        out.append(raw[pos + 4:pos + 4 + n].decode("utf-8", errors="replace"))
        pos += 4 + n
    return "".join(out)


def _lean_stream_response() -> type:
    """ModelStreamInferResponse as the decoder reads it: an output tensor's description stays bytes (its name
    and type are read once per distinct description, see _output), so no Python object is made per tensor.
    Serialized messages concatenated parse as one whose repeated fields are concatenated (protobuf merges
    them), so one parse decodes all of a request's responses."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tritongen_lean_stream.proto", package="tritongen_lean",
                                               syntax="proto3")
    infer = proto.message_type.add(name="InferResponse")
    infer.field.add(name="outputs", number=5, type=f.TYPE_BYTES, label=f.LABEL_REPEATED)
    infer.field.add(name="raw_output_contents", number=6, type=f.TYPE_BYTES, label=f.LABEL_REPEATED)
    stream = proto.message_type.add(name="StreamResponse")
    stream.field.add(name="infer_response", number=2, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                     type_name=".tritongen_lean.InferResponse")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tritongen_lean.StreamResponse"))


_LEAN = _lean_stream_response()
_OUTPUTS: dict[bytes, tuple[str, Optional[tuple[int, bool]]]] = {}


def _output(described: bytes) -> tuple[str, Optional[tuple[int, bool]]]:
    """An output tensor's name and, for the server's integer figures, (size, signed); cached per description."""
    known = _OUTPUTS.get(described)
    if known is None:
        from tritonclient.grpc import service_pb2

        out = service_pb2.ModelInferResponse.InferOutputTensor.FromString(described)
        known = (out.name, _INTS.get(out.datatype) if out.name in SERVER_FIELDS else None)
        if len(_OUTPUTS) < 1024:
            _OUTPUTS[described] = known
    return known


def _decode_merged(payloads: list[bytes]) -> tuple[list[str], ServerFigures]:
    """The texts (in order) and the server's figures of the given ModelStreamInferResponse messages, in one parse."""
    ir = _LEAN.FromString(b"".join(payloads)).infer_response
    texts: list[str] = []
    server: ServerFigures = {}
    for described, raw in zip(ir.outputs, ir.raw_output_contents):
        name, integer = _output(described)
        if name == "text_output":
            texts.append(_strings(raw))
        elif integer is not None:
            absorb(server, name, int.from_bytes(raw[:integer[0]], "little", signed=integer[1]))
    return texts, server


def decode_infer_responses(payloads: list[bytes]) -> Decoded:
    """Serialized ModelStreamInferResponse messages: ``text_output`` and the server's figures from the raw
    output tensors. A response has at most one text_output, so when every response has one, the merged
    parse's texts are the responses' texts in order; otherwise each response is parsed alone."""
    texts, server = _decode_merged(payloads)
    if len(texts) != len(payloads):
        texts = [(_decode_merged([p])[0] or [None])[0] for p in payloads]
    return texts, server, None


_FINAL = b"\n\x15triton_final_response\x12\x02\x08"


def route(data: bytes) -> Optional[tuple[bytes, bool]]:
    """(request id, final) read straight off a serialized ModelStreamInferResponse without an error, laid
    out as Triton writes it (fields in number order: infer_response; in it model_name, model_version, id,
    then the parameters with triton_final_response); None for anything else (the caller parses it), also a
    message that ends before those fields (a valid one from a server laid out otherwise must not end the stream)."""
    try:  # inline: the hot path pays no extra call per response
        if data[0] != 0x12:  # an error_message comes first
            return None
        pos = 1
        while data[pos] & 0x80:  # the length of infer_response
            pos += 1
        pos += 1
        for tag in (0x0A, 0x12):  # model_name, model_version (left out when empty)
            if data[pos] == tag:
                if data[pos + 1] & 0x80:
                    return None
                pos += 2 + data[pos + 1]
        if data[pos] != 0x1A or data[pos + 1] & 0x80:
            return None
        end = pos + 2 + data[pos + 1]
        flag = data.find(_FINAL, end)
        if flag < 0:
            return None
        return data[pos + 2:end], data[flag + len(_FINAL)] == 1
    except IndexError:
        return None


def with_id(body: bytes, request_id: bytes) -> bytes:
    """A serialized ModelInferRequest with its ``id`` (field 3) set: a field appended to a serialized protobuf
    message is parsed as part of it, so the request is serialized once per prompt, not per request."""
    n, length = len(request_id), bytearray()
    while n >= 0x80:
        length.append((n & 0x7F) | 0x80)
        n >>= 7
    length.append(n)
    return body + b"\x1a" + bytes(length) + request_id


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
        self.waiting: dict[bytes, Exchange] = {}
        self.bodies: dict[int, tuple[bytes, bool]] = {}
        self.watchdog: Optional[gevent.Greenlet] = None
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
        """The response path: route by id (read off the bytes, see route), keep the time and the message as
        received (decoded after the request, see decode_infer_responses); a final response completes it."""
        routed = route(data)
        if routed is None:  # an error or another layout: parsed in full
            resp = self._parse(data)
            if resp.error_message:
                self._on_error(t, resp.infer_response.id.encode(), resp.error_message)
                return
            ir = resp.infer_response
            routed = ir.id.encode(), ir.parameters["triton_final_response"].bool_param
        ex = self.waiting.get(routed[0])
        if ex is None:
            return
        try:
            ex.keep(t, data)
        except ValueError as exc:
            self._complete(routed[0], ex, str(exc), t)
            return
        if routed[1]:
            ex.end_ns = t
            self._complete(routed[0], ex)

    def _complete(self, rid: bytes, ex: Exchange, error: Optional[str] = None, t: Optional[int] = None) -> None:
        """Once per request, failed with ``error`` if one is given: a callback that yields (a chain
        reconnecting) may let the watchdog or a stopping user take another request of the same sweep first,
        and a request already handed on must not change."""
        if self.waiting.get(rid) is not ex:
            return
        del self.waiting[rid]
        if error is not None:
            ex.fail(error, t)
        ex.on_done(ex)

    def _on_error(self, t: int, rid: bytes, message: str) -> None:
        ex = self.waiting.get(rid)
        if ex is None and len(self.waiting) == 1:  # an error without id: the only request in flight
            rid, ex = next(iter(self.waiting.items()))
        if ex is not None:
            self._complete(rid, ex, message, t)

    def _on_close(self, exc: StreamClosed) -> None:
        for rid, ex in list(self.waiting.items()):
            self._complete(rid, ex, f"gRPC stream failed: {exc}")

    def _watch(self) -> None:
        """Fails a request with no response for ``timeout`` seconds (since it was sent or since its last
        response): one process-wide check a few times per timeout, instead of a timer per request."""
        limit_ns = int(self.timeout * 1e9)
        while True:
            gevent.sleep(min(1.0, self.timeout / 10))
            now = time.monotonic_ns()
            for rid, ex in list(self.waiting.items()):
                if ex.silent_ns(now) > limit_ns:
                    self._complete(rid, ex, f"no response within {self.timeout:g} s")

    def start(self, ex: Exchange, prompt: Prompt, on_done: Callable[[Exchange], None]) -> None:
        """Send the request; ``on_done(ex)`` runs once its answer is complete (final response, error, timeout,
        the stream gone or ``abandon``), on the stream's reader or the watchdog: it must not block."""
        body, ex.record["exact_length"] = self.bodies.get(prompt.index) or self._body(prompt)
        if self.stream.closed is not None:
            self.stream = self._open()
        if self.watchdog is None:
            self.watchdog = gevent.spawn(self._watch)
        rid = ex.request_id.encode()
        ex.on_done = on_done
        self.waiting[rid] = ex
        ex.sent()
        try:
            self.stream.send(with_id(body, rid))
        except BaseException:
            self.waiting.pop(rid, None)
            raise

    def cut(self, ex: Exchange, message: str) -> bool:
        """Fail a request still waiting on the stream now, as its answer (``on_done`` runs); False when ``ex``
        is not one of them."""
        rid = ex.request_id.encode()
        if self.waiting.get(rid) is not ex:
            return False
        self._complete(rid, ex, message)
        return True

    def abandon(self, ex: Exchange) -> None:
        """Stop waiting for a request (its user is stopping): ``on_done`` is not called."""
        self.waiting.pop(ex.request_id.encode(), None)

    def generate(self, ex: Exchange, prompt: Prompt) -> None:
        done = gevent.event.Event()
        self.start(ex, prompt, lambda _ex: done.set())
        try:
            done.wait()
        finally:
            self.abandon(ex)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.kill(block=False)
        self.stream.close()
