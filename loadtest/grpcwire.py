"""gRPC streaming spoken directly over HTTP/2 on one (gevent) socket: the load generator's fast transport.

Why not grpcio: under gevent, grpcio hands every completion-queue poll to gevent's thread pool, which costs
more CPU per streamed response than everything else the load generator does (docs/benchmarks.md has the
profile). Here the event loop reads the socket itself, in a watcher's callback (no greenlet); each ``recv``
gets one monotonic timestamp, which every gRPC message in it shares (they arrived together), and the messages
of one ``recv`` go to ``on_messages`` as a list of bytes, in one call; what their callbacks send leaves in one
write when the read is handled, what greenlets send in one turn of the event loop in one write after them. Only what a
client of one bidirectional stream needs is implemented: the connection preface and settings, one stream,
flow control (large windows, topped up in bulk), PING and SETTINGS acknowledgements, and the end of the
stream (trailers, RST_STREAM, GOAWAY). Header blocks are rare (stream start and end) and decoded with hpack.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from typing import Callable, Optional

import gevent
import gevent.event
from gevent import socket  # cooperative whether or not the process is monkey-patched (Locust's is)
from hpack import Decoder

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65535
_STREAM = 1
_HEADER = struct.Struct(">I")
_FRAME = struct.Struct(">HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_FRAME_AND_PREFIX = struct.Struct(">HBBBIBI")  # and the gRPC message prefix after it: compressed flag, length
_RECV = 1 << 18
MAX_MESSAGE = 16 << 20
"""The most one answer may hold (a gRPC message here; an SSE line or a response body in httpclient.py): a real one
of thousands of tokens is a few hundred KB. A hostile server's message announced as 4 GB grew the client by
12 GB in 25 s, and a header block that never ended grew without bound."""
_MAX_HEADER_BLOCK = 2 * 65536
"""The longest header block decoded: twice the decoded size hpack accepts (``max_header_list_size``), which any
real block stays under (HPACK only shrinks headers). A 16 MiB block of table-size updates, which decode to
nothing, held the event loop for ~12 s per block (0.76 s per MiB here)."""
_MAX_FRAME = 16384
"""The largest frame the peer may send: HTTP/2's default, which this client never raises."""
_MAX_QUEUED_ACKS = 1000
"""PING and SETTINGS acknowledgements waiting for the socket before the call is ended: a server that sends those
frames and never reads grew the client by 60 MB/s (nghttp2 stops at 1,000 too)."""


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, kind, flags, stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman coding (valid for any decoder)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + _hpack_int(len(n), 7) + n + _hpack_int(len(v), 7) + v


def request_headers(authority: str, path: str) -> bytes:
    """The header block of a gRPC call: static-table :method POST and :scheme http, the rest literal."""
    return b"\x83\x86" + b"".join(_literal(k, v) for k, v in (
        (":path", path), (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers"),
    ))


class StreamClosed(Exception):
    """The stream or the connection ended; the message says how (gRPC status, reset, GOAWAY, socket)."""


class GrpcStream:
    """One HTTP/2 connection carrying one bidirectional gRPC call.

    ``send`` writes one request message; ``on_messages(t_ns, messages)`` gets the response messages that one
    ``recv`` completed, in order, with its time; ``on_close(error)`` is called once when the call ends.
    """

    def __init__(self, target: str, path: str, timeout: float, on_messages: Callable[[int, list[bytes]], None],
                 on_close: Callable[[StreamClosed], None]) -> None:
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.on_messages, self.on_close = on_messages, on_close
        self.decoder = Decoder()
        self.max_frame = 16384
        self.send_window = self.conn_window = _DEFAULT_WINDOW
        self.blocked: deque[tuple[bytes, bool]] = deque()  # messages (or their rest) waiting for a window
        self.outbox: list[bytes] = []
        self.flushing = False  # a flusher greenlet is due or writing: what is written meanwhile joins its write
        self.reading = False  # in _on_readable: what is written meanwhile leaves when it ends
        self.queued_acks = 0  # PING/SETTINGS acknowledgements queued since the outbox last went to the socket
        self.closed: Optional[StreamClosed] = None
        self.ended = False  # _closed ran
        self.consumed = 0
        self.answered = False  # a message came on this call
        self._buf = b""
        self._pending = bytearray()  # DATA payload not yet a whole gRPC message
        self._headers = bytearray()
        self._headers_end_stream = False
        self._peer_initial = _DEFAULT_WINDOW
        # Our settings: stream receive windows as large as allowed; the connection window is raised below.
        settings = struct.pack(">HI", 0x4, _MAX_WINDOW) + struct.pack(">HI", 0x2, 0)  # INITIAL_WINDOW_SIZE, no push
        self.sock.sendall(
            _PREFACE + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _HEADER.pack(_MAX_WINDOW - _DEFAULT_WINDOW))
            + frame(HEADERS, END_HEADERS, _STREAM, request_headers(target, path))
        )
        # The non-blocking socket under gevent's, for the reads and writes of _on_readable (see there).
        self._recv, self._send = self.sock._sock.recv, self.sock._sock.send
        self._readable = gevent.get_hub().loop.io(self.sock.fileno(), 1)
        self._readable.start(self._on_readable)

    # ------------------------------------------------------------ sending

    def send(self, message: bytes, last: bool = False) -> None:
        """One gRPC message (uncompressed); ``last`` ends the client's side of the call. Never blocks, so an
        answer's callback may send in the event loop's read (a closed-loop user's next request goes out from it): what
        the peer's windows do not take yet waits, in order, for its WINDOW_UPDATE."""
        if self.closed is not None:
            raise self.closed
        n = len(message) + 5
        if not self.blocked and n <= min(self.send_window, self.conn_window, self.max_frame):
            self.send_window -= n  # the usual case: one frame, the windows open; its header and prefix in one pack
            self.conn_window -= n
            self._write(_FRAME_AND_PREFIX.pack(n >> 8, n & 0xFF, DATA, END_STREAM if last else 0, _STREAM, 0,
                                               n - 5) + message)
            return
        self.blocked.append((b"\x00" + _HEADER.pack(len(message)) + message, last))
        self._unblock()

    def _unblock(self) -> None:
        """Frames of the waiting messages, in order, as far as the peer's windows and frame size allow."""
        blocked = self.blocked
        while blocked:
            data, last = blocked[0]
            room = min(self.send_window, self.conn_window)
            if room <= 0:
                return
            n = min(len(data), self.max_frame, room)
            self.send_window -= n
            self.conn_window -= n
            if n < len(data):
                blocked[0] = (data[n:], last)
                self._write(frame(DATA, 0, _STREAM, data[:n]))
            else:
                blocked.popleft()
                self._write(frame(DATA, END_STREAM if last else 0, _STREAM, data))

    def _write(self, data: bytes) -> None:
        """Queue frames for one write: what the answers of one read send (a closed-loop chain's next requests)
        leaves when the read is handled (_on_readable); what other greenlets send in one turn of the event
        loop, by a flusher greenlet that runs after them (at saturation, dozens of requests per system call)."""
        self.outbox.append(data)
        if not self.flushing and not self.reading:
            self.flushing = True
            gevent.spawn(self._flush)

    def _flush(self) -> None:
        try:
            while self.outbox:
                data, self.outbox = b"".join(self.outbox), []
                self.queued_acks = 0
                self.sock.sendall(data)
        except OSError as exc:
            self._closed(StreamClosed(f"connection error: {exc}"))
        finally:
            self.flushing = False

    def _write_now(self) -> None:
        """The outbox in one non-blocking write from the event loop; what the socket does not take yet goes to a
        flusher greenlet (which may wait)."""
        data, self.outbox = b"".join(self.outbox), []
        self.queued_acks = 0
        try:
            sent = self._send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._end(StreamClosed(f"connection error: {exc}"))
            return
        if sent < len(data):
            self.outbox.append(data[sent:])
            self.flushing = True
            gevent.spawn(self._flush)

    def close(self) -> None:
        if self.closed is None:
            self.closed = StreamClosed("closed by the client")
            try:
                self.sock.sendall(frame(RST_STREAM, 0, _STREAM, _HEADER.pack(0x8)))  # CANCEL
            except OSError:
                pass
        self._readable.close()  # never a watcher on a closed descriptor
        self.sock.close()

    # ------------------------------------------------------------ receiving

    def _on_readable(self) -> None:
        """One read, run by the event loop itself each time the socket is readable: no greenlet switch or
        watcher start per read (at saturation on a GPU host, about one response per read, and the reader
        greenlet's two switches and its wait were a large part of the client's CPU). So nothing here may
        block: the answer's callbacks only queue what they send (GrpcStream.send never waits), which leaves
        in one write when the read is handled, and the end of the call is handed to a greenlet (``on_close``
        may reconnect)."""
        try:
            chunk = self._recv(_RECV)
        except BlockingIOError:  # woken for nothing
            return
        except OSError as exc:
            self._end(StreamClosed(f"connection error: {exc}"))
            return
        t = time.monotonic_ns()
        self.reading = True
        try:
            if not chunk:
                raise StreamClosed("the server closed the connection")
            self._frames(t, self._buf + chunk if self._buf else chunk)
        except StreamClosed as exc:
            self._end(exc)
        except Exception as exc:  # a message the handler could not take: end the call, fail what waits on it
            self._end(StreamClosed(f"response handling failed: {type(exc).__name__}: {exc}"))
        finally:
            self.reading = False
            if self.outbox and not self.flushing and self._readable.active:
                self._write_now()

    def _frames(self, t: int, buf: bytes) -> None:
        """The whole frames of ``buf``: the messages they complete go to ``on_messages`` in one call, with ``t``;
        the rest of ``buf`` waits for the next read."""
        pos, end, consumed, messages, pending = 0, len(buf), 0, [], self._pending
        frame_size = _FRAME.size
        try:
            while end - pos >= frame_size:
                if end - pos >= 14:  # the usual DATA frame's header and the message's prefix in one unpack
                    hi, lo, kind, flags, stream, _, size = _FRAME_AND_PREFIX.unpack_from(buf, pos)
                else:
                    (hi, lo, kind, flags, stream), size = _FRAME.unpack_from(buf, pos), None
                length = (hi << 8) | lo
                if length > _MAX_FRAME:
                    raise StreamClosed(f"the server sent a frame of {length:,} bytes (at most {_MAX_FRAME:,})")
                if end - pos - frame_size < length:
                    break
                start = pos + frame_size
                pos = start + length
                if kind == DATA:
                    consumed += length
                    if size == length - 5 and not pending and not flags & PADDED:
                        messages.append(buf[start + 5:pos])  # the usual frame: one whole message
                    else:
                        payload = buf[start:pos]
                        if flags & PADDED:
                            payload = payload[1:len(payload) - payload[0]]
                        pending += payload
                        self._messages(pending, messages)
                    if flags & END_STREAM:
                        raise StreamClosed("the server ended the stream without a status")
                else:
                    self._control(kind, flags, stream, buf[start:pos])
        finally:  # what came before an end is answered first
            if messages:
                self.answered = True
                self.on_messages(t, messages)
        self._buf = buf[pos:]
        self.consumed += consumed
        if self.consumed > _MAX_WINDOW // 2:  # top up both receive windows in one go
            inc = _HEADER.pack(self.consumed)
            self.consumed = 0
            self._write(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, _STREAM, inc))

    @staticmethod
    def _messages(pending: bytearray, messages: list[bytes]) -> None:
        """Move every whole gRPC message in ``pending`` to ``messages``."""
        pos, end = 0, len(pending)
        while end - pos >= 5:
            length = int.from_bytes(pending[pos + 1:pos + 5], "big")
            if length > MAX_MESSAGE:
                raise StreamClosed(f"the server announced a message of {length:,} bytes (at most {MAX_MESSAGE:,})")
            if end - pos - 5 < length:
                break
            messages.append(bytes(pending[pos + 5:pos + 5 + length]))
            pos += 5 + length
        del pending[:pos]

    def _control(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1:len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self._headers_end_stream = bool(flags & END_STREAM)
            self._headers += payload
            if len(self._headers) > _MAX_HEADER_BLOCK:
                raise StreamClosed(f"the server sent a header block of more than {_MAX_HEADER_BLOCK:,} bytes")
            if flags & END_HEADERS:
                headers = dict(self.decoder.decode(bytes(self._headers)))
                self._headers = bytearray()
                if self._headers_end_stream:
                    raise StreamClosed(_status(headers))
        elif kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, i)
                if key == 0x4:  # INITIAL_WINDOW_SIZE applies to the open stream as a difference
                    if value > _MAX_WINDOW:
                        raise StreamClosed(f"the server sent SETTINGS_INITIAL_WINDOW_SIZE {value:,} (at most {_MAX_WINDOW:,})")
                    self.send_window += value - self._peer_initial
                    self._peer_initial = value
                elif key == 0x5:  # outside HTTP/2's range (0 made the sender loop forever on empty frames): refused
                    if not _MAX_FRAME <= value < 1 << 24:
                        raise StreamClosed(f"the server sent SETTINGS_MAX_FRAME_SIZE {value:,} (HTTP/2 allows "
                                           f"{_MAX_FRAME:,} to {(1 << 24) - 1:,})")
                    self.max_frame = value
                # HEADER_TABLE_SIZE (0x1) bounds this client's encoder (which indexes nothing), not its decoder:
                # taken as the decoder's, every later header block of the server was refused (hpack's check)
            self._ack(frame(SETTINGS, ACK, 0))
            self._unblock()
        elif kind == PING and not flags & ACK:
            self._ack(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            inc = _HEADER.unpack(payload)[0] & _MAX_WINDOW
            if stream == 0:
                self.conn_window += inc
            else:
                self.send_window += inc
            self._unblock()
        elif kind == RST_STREAM:
            raise StreamClosed(f"the server reset the stream (HTTP/2 error code {_HEADER.unpack(payload)[0]})")
        elif kind == GOAWAY:
            code = _HEADER.unpack_from(payload, 4)[0]
            raise StreamClosed(f"the server closed the connection (GOAWAY, error code {code}): {payload[8:].decode(errors='replace')}")

    def _ack(self, data: bytes) -> None:
        self.queued_acks += 1
        if self.queued_acks > _MAX_QUEUED_ACKS:
            raise StreamClosed(f"the server sent more than {_MAX_QUEUED_ACKS:,} PING/SETTINGS frames without reading "
                               "their acknowledgements")
        self._write(data)

    def _end(self, exc: StreamClosed) -> None:
        """The call ended while the event loop read: no more reads; ``_closed`` in a greenlet (``on_close`` may
        reconnect, which waits), so that the stream is marked closed and its requests failed at once."""
        self._readable.stop()
        gevent.spawn(self._closed, exc)

    def _closed(self, exc: StreamClosed) -> None:
        """Once (a failed write and a failed read may both end the call): the requests of this call fail, and
        never those of the call a client opened after it."""
        if self.ended:
            return
        self.ended = True
        if self.closed is None:
            self.closed = exc
        self.blocked.clear()
        self._readable.close()
        self.sock.close()
        self.on_close(self.closed)


def _status(headers: dict[str, str]) -> str:
    """The end of a call as text: gRPC status and message (or the HTTP status of a non-gRPC answer)."""
    status, message = headers.get("grpc-status"), headers.get("grpc-message")
    if status is None:
        return f"the server ended the call without a gRPC status (HTTP {headers.get(':status')})"
    return f"gRPC status {status}" + (f": {message}" if message else "")


def unary(target: str, path: str, message: bytes, timeout: float) -> bytes:
    """One unary gRPC call (e.g. ModelConfig): the response message, or StreamClosed with the status (TimeoutError
    when none came within ``timeout``)."""
    answer: gevent.event.AsyncResult = gevent.event.AsyncResult()

    def closed(exc: StreamClosed) -> None:
        if not answer.ready():
            answer.set_exception(exc)

    call = GrpcStream(target, path, timeout, lambda _t, messages: answer.set(messages[0]), closed)
    try:
        call.send(message, last=True)
        return answer.get(timeout=timeout)
    except gevent.Timeout:  # a BaseException: a silent server left the load test's setup with a traceback
        raise TimeoutError(f"{target} sent no answer to {path} within {timeout:g} s") from None
    finally:
        call.close()
