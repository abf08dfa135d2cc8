"""A stand-in Triton gRPC endpoint that costs the server side almost nothing: the load generator saturated on
a machine too small to saturate it against a real tritonserver (the 2-core box), so that its CPU per request
can be compared between two versions of the client here before a GPU host measures it for real.

It speaks just enough of gRPC over HTTP/2 for tritongen's gRPC client: the unary ModelConfig call (the
trivial model's configuration, bench_loadgen.py) and ModelStreamInfer, answered with ``max_tokens``
one-token responses per request at once, laid out as Triton lays them out (the last one final). Not a
server to test anything against: no errors, no flow control beyond huge windows, no cancellation.

    taskset -c 0 python bench/fake_stream_server.py PORT TOKENIZER_DIR
    taskset -c 1 python -m locust -f loadtest/locustfile.py --headless -H grpc://127.0.0.1:PORT \
        --protocol grpc-stream --tokenizer TOKENIZER_DIR -u 64 -r 64 -t 15s --records R.jsonl
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Callable

from google.protobuf import text_format
from hpack import Decoder, Encoder
from tritonclient.grpc import model_config_pb2, service_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))

from bench_loadgen import TRIVIAL_CONFIG  # noqa: E402
from grpcwire import DATA, HEADERS, PING, SETTINGS, frame, END_HEADERS, END_STREAM, ACK  # noqa: E402

_FRAME = struct.Struct(">HBBBI")
_MAX = 2**31 - 1


def grpc_message(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


_TEMPLATES: dict[tuple[str, int, int], tuple[bytes, bytes]] = {}


def _template(model: str, id_length: int, n: int, word: bytes) -> tuple[bytes, bytes]:
    """The frames of n responses for an id of this length, split where the id goes (made once per length)."""
    key = (model, id_length, n)
    if key not in _TEMPLATES:
        mark = b"\x01" * id_length
        out = []
        for final in (False, True):
            resp = service_pb2.ModelStreamInferResponse()
            ir = resp.infer_response
            ir.model_name, ir.model_version, ir.id = model, "1", mark.decode()
            ir.parameters["triton_final_response"].bool_param = final
            ir.outputs.add(name="text_output", datatype="BYTES", shape=[1, 1])
            ir.outputs.add(name="num_output_tokens", datatype="INT32", shape=[1, 1])
            ir.raw_output_contents.extend([len(word).to_bytes(4, "little") + word, (1).to_bytes(4, "little")])
            out.append(frame(DATA, 0, 1, grpc_message(resp.SerializeToString())))
        _TEMPLATES[key] = (out[0] * (n - 1) + out[1]).split(mark)
    return _TEMPLATES[key]


def answers(request: bytes, word: bytes) -> bytes:
    """The frames of one request's responses: max_tokens messages of one word, the last one final."""
    req = service_pb2.ModelInferRequest.FromString(request)
    raw = req.raw_input_contents[[i.name for i in req.inputs].index("max_tokens")]
    rid = req.id.encode()
    return rid.join(_template(req.model_name, len(rid), int.from_bytes(raw[:4], "little"), word))


class FakePeer:
    """The server's end of one connection, without the socket: ``preface`` to send first, then ``feed`` takes what
    the client sent and returns the frames that answer it (settings and pings acknowledged, the ModelConfig
    call answered with ``config``, every ModelStreamInfer request with ``answer(message)``)."""

    def __init__(self, config: bytes, answer: Callable[[bytes], bytes]) -> None:
        self.config, self.answer = config, answer
        self.decoder, self.encoder = Decoder(), Encoder()
        self.buf = self.pending = b""
        self.path = ""

    @staticmethod
    def preface() -> bytes:
        return frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, _MAX)) + frame(0x8, 0, 0, struct.pack(">I", _MAX - 65535))

    def feed(self, data: bytes) -> bytes:
        buf = self.buf + data
        if buf.startswith(b"PRI * HTTP/2.0"):
            buf = buf[24:]
        out, pos = [], 0
        while len(buf) - pos >= 9:
            hi, lo, kind, flags, stream = _FRAME.unpack_from(buf, pos)
            length = (hi << 8) | lo
            if len(buf) - pos - 9 < length:
                break
            payload = buf[pos + 9:pos + 9 + length]
            pos += 9 + length
            if kind == SETTINGS and not flags & ACK:
                out.append(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                out.append(frame(PING, ACK, 0, payload))
            elif kind == HEADERS:
                self.path = dict(self.decoder.decode(payload)).get(":path", "")
                out.append(frame(HEADERS, END_HEADERS, 1, self.encoder.encode(
                    [(":status", "200"), ("content-type", "application/grpc")])))
            elif kind == DATA:
                pending = self.pending + payload
                while len(pending) >= 5 and len(pending) - 5 >= int.from_bytes(pending[1:5], "big"):
                    size = int.from_bytes(pending[1:5], "big")
                    message, pending = pending[5:5 + size], pending[5 + size:]
                    if self.path.endswith("/ModelConfig"):
                        out.append(frame(DATA, 0, 1, grpc_message(self.config)))
                        out.append(frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                         self.encoder.encode([("grpc-status", "0")])))
                    else:
                        out.append(self.answer(message))
                self.pending = pending
        self.buf = buf[pos:]
        return b"".join(out)


def handle(conn: socket.socket, config: bytes) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer = FakePeer(config, lambda message: answers(message, b" tok"))
    conn.sendall(peer.preface())
    while True:
        chunk = conn.recv(1 << 18)
        if not chunk:
            return
        out = peer.feed(chunk)
        if out:
            conn.sendall(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("tokenizer", help="the folder the configuration names as tokenizer_dir")
    args = parser.parse_args()
    config = service_pb2.ModelConfigResponse(config=text_format.Parse(
        TRIVIAL_CONFIG % args.tokenizer, model_config_pb2.ModelConfig())).SerializeToString()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(16)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn, config), daemon=True).start()


if __name__ == "__main__":
    main()
