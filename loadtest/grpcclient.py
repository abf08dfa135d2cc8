"""The gRPC client of the Locust users: one bidirectional ModelStreamInfer call per Locust process (grpcwire.py),
requests multiplexed by id, and the decoding of their responses after the hot path.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Optional

import gevent.event
import gevent.lock

from clients import Decoded, Exchange, ModelInfo, absorb, grpc_target
from generator.measure.records import SERVER_FIELDS, SERVER_SAID, UNANSWERED, ServerFigures, request_inputs
from grpcwire import GrpcStream, StreamClosed
from prompts import Prompt


_INTS = {"INT32": (4, "i"), "INT64": (8, "q"), "UINT32": (4, "I"), "UINT64": (8, "Q")}
"""A server figure's datatype: its size and struct code (lower case: signed)."""


def _strings(raw: bytes) -> str:
    """A BYTES tensor's elements (each a 4-byte little-endian length and the bytes), decoded and joined."""
    n = int.from_bytes(raw[:4], "little")
    if n + 4 == len(raw):  # one element: the usual case
        return raw[4:].decode("utf-8", "replace")
    out, pos = [], 0
    while pos + 4 <= len(raw):
        n = int.from_bytes(raw[pos:pos + 4], "little")
        out.append(raw[pos + 4:pos + 4 + n].decode("utf-8", "replace"))
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
_OUTPUTS: dict[bytes, tuple[str, Optional[tuple[int, str]]]] = {}


def _output(described: bytes) -> tuple[str, Optional[tuple[int, str]]]:
    """An output tensor's name and, for the server's integer figures, (size, struct code); cached per description."""
    known = _OUTPUTS.get(described)
    if known is None:
        from tritonclient.grpc import service_pb2

        out = service_pb2.ModelInferResponse.InferOutputTensor.FromString(described)
        known = (out.name, _INTS.get(out.datatype) if out.name in SERVER_FIELDS else None)
        if len(_OUTPUTS) < 1024:
            _OUTPUTS[described] = known
    return known


def _by_tensor(ir: Any) -> tuple[list[str], ServerFigures]:
    """The texts (in order) and the server's figures of a parsed (merged) response, one output tensor at a time."""
    texts: list[str] = []
    server: ServerFigures = {}
    for described, raw in zip(ir.outputs, ir.raw_output_contents):
        name, integer = _output(described)
        if name == "text_output":
            texts.append(_strings(raw))
        elif integer is not None:
            absorb(server, name, [int.from_bytes(raw[:integer[0]], "little", signed=integer[1].islower())])
    return texts, server


def _by_column(ir: Any, first: list[bytes], n: int) -> tuple[list[Optional[str]], ServerFigures]:
    """The same for ``n`` responses that each carry the outputs ``first`` in that order: an output's tensors are
    every len(first)-th, so each description is read once per answer, not once per response."""
    raws, m, from_bytes = ir.raw_output_contents, len(first), int.from_bytes
    texts: list[Optional[str]] = [None] * n
    server: ServerFigures = {}
    for j, described in enumerate(first):
        name, integer = _output(described)
        if name == "text_output":  # a one-element tensor (the usual text) decoded inline, others by _strings
            texts = [raw[4:].decode("utf-8", "replace") if len(raw) == from_bytes(raw[:4], "little") + 4
                     else _strings(raw) for raw in raws[j::m]]
        elif integer is not None:
            size, code = integer
            column = raws[j::m]
            joined = b"".join(column)
            if len(joined) == size * len(column):  # one element each, the usual case: unpacked at once
                absorb(server, name, struct.unpack(f"<{len(column)}{code}", joined))
            else:
                signed = code.islower()
                absorb(server, name, [int.from_bytes(raw[:size], "little", signed=signed) for raw in column])
    return texts, server


def decode_infer_responses(payloads: list[bytes]) -> Decoded:
    """Serialized ModelStreamInferResponse messages: ``text_output`` and the server's figures from the raw
    output tensors, in one parse of their concatenation. The usual answer, every response with the same
    outputs in the same order (the last one may be an empty final), is read by column; otherwise tensor by
    tensor, and when not every response has a text (a response has at most one), each is parsed alone.
    The usual answer is told from the merged outputs alone: as a response carries an output at most once
    (Triton's), k responses whose outputs concatenate to k repeats of the first len/k are those repeats."""
    if not payloads:
        return [], {}, None
    n, parse = len(payloads), _LEAN.FromString
    merged = parse(b"".join(payloads)).infer_response
    described = merged.outputs[:]
    for k in (n, n - 1):  # every response, or all but the last when it is an empty final
        first = described[:len(described) // k] if k else []
        if first and described == first * k and (k == n or not parse(payloads[-1]).infer_response.outputs):
            texts, server = _by_column(merged, first, k)
            return texts + [None] * (n - k), server, None
    texts, server = _by_tensor(merged)
    if len(texts) != n:
        texts = [(_by_tensor(parse(p).infer_response)[0] or [None])[0] for p in payloads]
    return texts, server, None


_FINAL = b"\n\x15triton_final_response\x12\x02\x08"
_FINAL_SIZE = len(_FINAL)


def _id_tag_at(data: bytes, pos: int) -> int:
    """Where the ``id`` field's tag is in a ModelInferResponse that starts at ``pos``, past model_name and
    model_version (each left out when empty), laid out as Triton writes it; -1 for any other layout."""
    if data[pos] == 0x0A:  # model_name
        n = data[pos + 1]
        if n & 0x80:
            return -1
        pos += 2 + n
    if data[pos] == 0x12:  # model_version
        n = data[pos + 1]
        if n & 0x80:
            return -1
        pos += 2 + n
    return pos if data[pos] == 0x1A else -1


def route(data: bytes, head: bytes = b"") -> Optional[tuple[bytes, bool]]:
    """(request id, final) read straight off a serialized ModelStreamInferResponse without an error, laid
    out as Triton writes it (fields in number order: infer_response; in it model_name, model_version, id,
    then the parameters with triton_final_response); None for anything else (the caller parses it), also a
    message that ends before those fields (a valid one from a server laid out otherwise must not end the stream).
    ``head`` (see response_head), the bytes every response of the stream starts its infer_response with, up
    to the id's tag, is compared at once instead of read field by field."""
    try:
        if data[0] != 0x12:  # an error_message comes first
            return None
        pos = 2
        while data[pos - 1] & 0x80:  # past the length of infer_response
            pos += 1
        if head and data.startswith(head, pos):
            pos += len(head) - 1
        else:
            pos = _id_tag_at(data, pos)
            if pos < 0:
                return None
        n = data[pos + 1]
        if n & 0x80:
            return None
        end = pos + 2 + n
        flag = data.find(_FINAL, end)
        if flag < 0:
            return None
        return data[pos + 2:end], data[flag + _FINAL_SIZE] == 1
    except IndexError:
        return None


def response_head(data: bytes) -> bytes:
    """The start of a routable response's infer_response up to and with the id's tag (model_name and
    model_version, the same in every response of a stream): what ``route`` compares at once; b"" if none."""
    try:
        pos = 2
        while data[pos - 1] & 0x80:
            pos += 1
        end = _id_tag_at(data, pos)
        return data[pos:end + 1] if end >= 0 else b""
    except IndexError:
        return b""


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def with_id(body: bytes, request_id: bytes) -> bytes:
    """A serialized ModelInferRequest with its ``id`` (field 3) set: a field appended to a serialized protobuf
    message is parsed as part of it, so the request is serialized once per prompt, not per request."""
    n = len(request_id)
    if n < 0x80:  # the usual id: its length in one byte
        return b"".join((body, b"\x1a", _ONE_BYTE[n], request_id))
    length = bytearray()
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
        self.head = b""  # the start of every response (route's fast path), learnt from the first one routed
        self.bodies: dict[int, tuple[bytes, bool]] = {}
        self.reopening = gevent.lock.Semaphore()
        self.unanswered = 0  # calls in a row that ended before any answer
        self.stream = self._open()

    def _open(self) -> GrpcStream:
        return GrpcStream(self.target, self.PATH, self.timeout, self._on_messages, self._on_close)

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

    def _on_messages(self, t: int, messages: list[bytes]) -> None:
        """The response path, once per ``recv``: route each message by id (read off the bytes, see route), keep
        the time and the message as received (decoded after the request, see decode_infer_responses); a final
        response completes its request."""
        waiting, head = self.waiting, self.head
        for data in messages:
            routed = route(data, head)
            if routed is None:  # an error or another layout: parsed in full
                resp = self._parse(data)
                if resp.error_message:
                    self._on_error(t, resp.infer_response.id.encode(), resp.error_message)
                    continue
                ir = resp.infer_response
                routed = ir.id.encode(), ir.parameters["triton_final_response"].bool_param
            rid, final = routed
            ex = waiting.get(rid)
            if ex is None:
                continue
            if not head:
                head = self.head = response_head(data)
            try:
                ex.keep(t, data)
            except ValueError as exc:
                self._complete(rid, ex, str(exc), t)
                continue
            if final:
                ex.end_ns = t
                self._complete(rid, ex)

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
        # An error without id is the only request's in flight; one with an unknown id (a request cut or abandoned
        # before) is nobody's: a timed-out request's late error failed another user's request on the shared stream.
        if ex is None and not rid and len(self.waiting) == 1:
            rid, ex = next(iter(self.waiting.items()))
        if ex is not None:  # the server's text, named so (records.SERVER_SAID)
            self._complete(rid, ex, f"{SERVER_SAID}{message}", t)

    def _on_close(self, exc: StreamClosed) -> None:
        # A port that accepts and then closes (a proxy or port-forward whose server is gone) failed each request at once,
        # thousands a second for the rest of the run: a second call in a row that ended unanswered is a server gone.
        self.unanswered = 0 if self.stream.answered else self.unanswered + 1
        why = f"{UNANSWERED if self.unanswered >= 2 else ''}gRPC stream failed: {exc}"
        for rid, ex in list(self.waiting.items()):
            self._complete(rid, ex, why)

    def start(self, ex: Exchange, prompt: Prompt, on_done: Callable[[Exchange], None]) -> None:
        """Send the request; ``on_done(ex)`` runs once its answer is complete (final response, error, timeout,
        the stream gone or ``abandon``), in the event loop's read of the stream (grpcwire) or on the watchdog: it must
        not block (wait or switch greenlets)."""
        body, ex.record["exact_length"] = self.bodies.get(prompt.index) or self._body(prompt)
        if self.stream.closed is not None:
            with self.reopening:  # users sending at once each opened a stream, and an orphan's end failed them all
                if self.stream.closed is not None:
                    self.stream = self._open()
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
        self.stream.close()
