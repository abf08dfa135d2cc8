"""A locustfile for bench/loadgen_inmemory.py: tritongen's own users (the loadtest/ folder named by
TRITONGEN_LOADTEST, any version of it), their gRPC stream on an in-memory socket whose peer answers every
request at once with 16 one-token responses laid out as Triton lays them out (bench/fake_stream_server.py's
templates). No system call, no server on the CPU: the process's CPU is the client's own Python work.
"""

import os
import struct
import sys
from pathlib import Path

LOADTEST = os.environ["TRITONGEN_LOADTEST"]
sys.path.insert(0, LOADTEST)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gevent.event  # noqa: E402
from gevent import socket as gsocket  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from hpack import Decoder, Encoder  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402

import grpcwire  # noqa: E402
from bench_loadgen import TRIVIAL_CONFIG  # noqa: E402
from fake_stream_server import _template, grpc_message  # noqa: E402

sys.path.insert(0, LOADTEST)  # fake_stream_server put this checkout's loadtest/ first
_FRAME = struct.Struct(">HBBBI")
_CONFIG = service_pb2.ModelConfigResponse(config=text_format.Parse(
    TRIVIAL_CONFIG % os.environ["TRITONGEN_TOKENIZER"], model_config_pb2.ModelConfig())).SerializeToString()


class MemorySocket:
    """The client's end of the connection; ``sendall`` answers at once into what ``recv`` returns."""

    def __init__(self) -> None:
        self._sock = self  # as gevent's socket: the raw one under it
        self.inbox: list[bytes] = []
        self.ready = gevent.event.Event()
        self.closed = False
        self.buf = self.pending = b""
        self.path = ""
        self.decoder, self.encoder = Decoder(), Encoder()
        self._put(grpcwire.frame(grpcwire.SETTINGS, 0, 0, struct.pack(">HI", 0x4, 2**31 - 1))
                  + grpcwire.frame(grpcwire.WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1 - 65535)))

    def settimeout(self, _t) -> None:
        pass

    def setsockopt(self, *_a) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.ready.set()

    def _put(self, data: bytes) -> None:
        self.inbox.append(data)
        self.ready.set()

    def recv(self, size: int) -> bytes:
        while not self.inbox:
            if self.closed:
                return b""
            self.ready.clear()
            self.ready.wait()
        data, self.inbox = b"".join(self.inbox), []
        if len(data) > size:
            data, self.inbox = data[:size], [data[size:]]
        return data

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        buf = self.buf + bytes(data)
        if buf.startswith(b"PRI * HTTP/2.0"):
            buf = buf[24:]
        out, pos = [], 0
        while len(buf) - pos >= 9:
            hi, lo, kind, _flags, _stream = _FRAME.unpack_from(buf, pos)
            length = (hi << 8) | lo
            if len(buf) - pos - 9 < length:
                break
            payload = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            if kind == grpcwire.HEADERS:
                self.path = dict(self.decoder.decode(payload)).get(":path", "")
                out.append(grpcwire.frame(grpcwire.HEADERS, grpcwire.END_HEADERS, 1, self.encoder.encode(
                    [(":status", "200"), ("content-type", "application/grpc")])))
            elif kind == grpcwire.DATA:
                pending = self.pending + payload
                while len(pending) >= 5 and len(pending) - 5 >= int.from_bytes(pending[1:5], "big"):
                    size = int.from_bytes(pending[1:5], "big")
                    message, pending = pending[5:5 + size], pending[5 + size:]
                    if self.path.endswith("/ModelConfig"):
                        out.append(grpcwire.frame(grpcwire.DATA, 0, 1, grpc_message(_CONFIG)))
                        out.append(grpcwire.frame(grpcwire.HEADERS, grpcwire.END_HEADERS | grpcwire.END_STREAM, 1,
                                                  self.encoder.encode([("grpc-status", "0")])))
                    else:  # the request id is the last field (with_id appends it), shorter than 128 bytes
                        rid = message[message.rfind(b"\x1a") + 2:]
                        out.append(rid.join(_template("ensemble", len(rid), 16, b" tok")))
                self.pending = pending
        self.buf = buf[pos:]
        if out:
            self._put(b"".join(out))


gsocket.create_connection = lambda *_a, **_k: MemorySocket()

from tritonllm import TritonLLMUser  # noqa: E402

assert grpcwire.__file__.startswith(LOADTEST) and sys.modules["tritonllm"].__file__.startswith(LOADTEST)


class LLMUser(TritonLLMUser):
    """Closed loop, as the default user."""
