"""A locustfile for bench/loadgen_inmemory.py: tritongen's own users (the loadtest/ folder named by
TRITONGEN_LOADTEST, any version of it; this checkout's by default), their gRPC stream on an in-memory socket
whose peer answers every request at once with 16 one-token responses laid out as Triton lays them out
(bench/fake_stream_server.py's peer and templates). No system call, no server on the CPU: the process's CPU is
the client's own Python work.
"""

import os
import sys
from pathlib import Path

LOADTEST = os.environ.get("TRITONGEN_LOADTEST", str(Path(__file__).resolve().parents[1] / "loadtest"))
sys.path.insert(0, LOADTEST)
sys.path.insert(0, str(Path(__file__).resolve().parent))
if __name__ == "__main__":  # not a command: Locust loads it (`locust -f`), as bench/loadgen_inmemory.py does
    print(f"usage: TRITONGEN_LOADTEST=DIR locust -f {Path(__file__).name} ...\n\n{__doc__}")
    sys.exit(0)

from gevent import socket as gsocket  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402

import grpcwire  # noqa: E402
from bench_loadgen import TRIVIAL_CONFIG  # noqa: E402
from fake_stream_server import FakePeer, _template  # noqa: E402

sys.path.insert(0, LOADTEST)  # fake_stream_server put this checkout's loadtest/ first
_CONFIG = service_pb2.ModelConfigResponse(config=text_format.Parse(
    TRIVIAL_CONFIG % os.environ["TRITONGEN_TOKENIZER"], model_config_pb2.ModelConfig())).SerializeToString()


def _answer(message: bytes) -> bytes:
    """16 responses; the request id is its last field (with_id appends it), shorter than 128 bytes."""
    rid = message[message.rfind(b"\x1a") + 2:]
    return rid.join(_template("ensemble", len(rid), 16, b" tok"))


class MemorySocket:
    """The client's end of the connection; what ``sendall`` sends is answered at once into what ``recv`` returns.
    Its descriptor, a pipe, is readable while an answer waits (the client waits on it before a read), and
    ``recv`` on nothing raises BlockingIOError, as the non-blocking socket under gevent's does."""

    def __init__(self) -> None:
        self._sock = self  # as gevent's socket: the raw one under it
        self.peer = FakePeer(_CONFIG, _answer)
        self.inbox: list[bytes] = [self.peer.preface()]
        self.closed = False
        self._readable, self._w = os.pipe()
        os.write(self._w, b"x")
        self.signalled = True  # a byte in the pipe: the inbox holds something

    def fileno(self) -> int:
        return self._readable

    def settimeout(self, _t) -> None:
        pass

    def setsockopt(self, *_a) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            os.close(self._readable)
            os.close(self._w)
        self.closed = True

    def recv(self, size: int) -> bytes:
        if not self.inbox:
            if self.closed:
                return b""
            raise BlockingIOError
        data, self.inbox = b"".join(self.inbox), []
        if len(data) > size:
            data, self.inbox = data[:size], [data[size:]]
        if not self.inbox:
            os.read(self._readable, 1)
            self.signalled = False
        return data

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        out = self.peer.feed(bytes(data))
        if out:
            self.inbox.append(out)
            if not self.signalled:
                os.write(self._w, b"x")
                self.signalled = True


gsocket.create_connection = lambda *_a, **_k: MemorySocket()

from tritonllm import TritonLLMUser  # noqa: E402

assert grpcwire.__file__.startswith(LOADTEST) and sys.modules["tritonllm"].__file__.startswith(LOADTEST)


class LLMUser(TritonLLMUser):
    """Closed loop, as the default user."""
