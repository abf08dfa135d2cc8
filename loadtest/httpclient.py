"""Triton's HTTP generate endpoints for the Locust users: ``generate_stream`` (server-sent events, read line by line
off the socket with a bound on every line) and ``generate``, on one keep-alive connection per user. The SSE
reader is shared with the OpenAI client (openaiapi.py).
"""

from __future__ import annotations

import json
import time
from typing import Optional

import gevent
from geventhttpclient import HTTPClient

from clients import AnsweredPosts, Decoded, Exchange, ModelInfo, absorb, drop_connection, read_bounded
from generator.measure.records import SERVER_FIELDS, ServerFigures, request_inputs
from grpcwire import MAX_MESSAGE
from prompts import Prompt

YIELD_EVERY = 64
"""Socket reads between two turns given to the event loop (read_events): a server that always has data ready made
every read return at once, and the process's other users and its watchdog starved."""


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
                absorb(server, name, [int(value[0] if isinstance(value, list) else value)])
    return texts, server, None


def error_text(resp) -> str:
    """The start of an error answer (its rest is not read: the connection is dropped)."""
    head = resp.read(300)
    if not resp.message_complete:
        drop_connection(resp)
    return head.decode(errors="replace")


def read_events(resp, ex: Exchange) -> None:
    """An SSE response, line by line off the socket: each ``data:`` line with the time it arrived. The lines
    are cut out of the response's own buffer (geventhttpclient's readline searched the whole buffer again
    after every read and had no bound), each at most ``MAX_MESSAGE``, all together at most ``MAX_ANSWER``."""
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
        read_bounded(self.http.get("/v2/health/ready"))  # open the connection before the first timed request
        self.posts = AnsweredPosts(self.http)

    def generate(self, ex: Exchange, prompt: Prompt) -> None:
        fields = request_inputs(self.info.inputs, prompt.text, prompt.max_tokens, self.stream)
        ex.record["exact_length"] = "min_tokens" in fields
        body = json.dumps({"id": ex.request_id, **fields}).encode()
        ex.sent()
        resp = self.posts.post(self.path, body)
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
