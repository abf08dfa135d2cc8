"""The Locust client for OpenAI-compatible servers: streamed ``/v1/chat/completions`` and ``/v1/completions``.

Same hot path as the Triton HTTP client (httpclient.py): one keep-alive connection, the SSE response read line by
line off the socket (geventhttpclient's iter_content would hold the lines back until 1 KB), a monotonic
timestamp and the raw ``data:`` line per event. ``decode`` turns the events into the raw record's texts
later: the streamed text pieces, and the token counts of the final ``usage`` chunk where the server sends
one (``stream_options.include_usage``); without it the run counts the answer with the tokenizer afterwards.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from geventhttpclient import HTTPClient

from clients import AnsweredPosts, Decoded, Exchange, read_bounded
from generator.measure.records import ServerFigures
from httpclient import error_text, read_events
from prompts import Prompt

PROTOCOLS = {"openai-chat": "/v1/chat/completions", "openai-completions": "/v1/completions"}


class OpenAIModel:
    """The served model as the users need it: its name (``/v1/models``); no Triton config, no tokenizer folder."""

    cumulative = False
    tokenizer_dir: Optional[str] = None

    def __init__(self, name: str) -> None:
        self.name = name


def openai_model(host: str, model: Optional[str], timeout: float) -> OpenAIModel:
    """``model``, checked against ``/v1/models``; None: the first model listed there."""
    http = HTTPClient.from_url(host, concurrency=1, connection_timeout=timeout, network_timeout=timeout)
    try:
        resp = http.get("/v1/models")
        body = read_bounded(resp)
    finally:
        http.close()
    if resp.status_code != 200:
        raise RuntimeError(f"GET {host}/v1/models answered HTTP {resp.status_code}: is this an OpenAI-compatible server?")
    # review28: an id that is no string (every record carries the model's name as one) made the run's records unreadable
    names = [m["id"] for m in json.loads(body).get("data", []) if isinstance(m.get("id"), str)]
    if model is None:
        if not names:
            raise RuntimeError(f"{host}/v1/models lists no model yet (no entry with a string id)")
        return OpenAIModel(names[0])
    if model not in names:
        raise RuntimeError(f"model {model!r} is not served at {host} (it lists {', '.join(map(str, names))})")
    return OpenAIModel(model)


def decode_events(payloads: list[bytes]) -> Decoded:
    """SSE ``data:`` lines: the text of each content chunk (None for role-only, finish, usage and [DONE] chunks),
    the server's token counts from ``usage``; an ``error`` object ends the answer."""
    texts: list[Optional[str]] = []
    server: ServerFigures = {}
    for raw in payloads:
        data = raw[5:].strip()
        if data == b"[DONE]":
            texts.append(None)
            continue
        event = json.loads(data)
        if "error" in event:
            return texts, server, str(event["error"])[:500]
        text = None
        for choice in event.get("choices") or []:
            piece = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
            if piece:
                text = (text or "") + piece
            elif piece == "" and "delta" not in choice and not choice.get("finish_reason"):
                text = text or ""  # a completions chunk with no text: an empty response, checked as such
        texts.append(text)
        usage = event.get("usage")
        if usage:
            server["num_output_tokens"] = int(usage.get("completion_tokens") or 0)
            server["num_input_tokens"] = int(usage.get("prompt_tokens") or 0)
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            if cached is not None:
                server["num_cached_tokens"] = int(cached)
    return texts, server, None


class OpenAIClient:
    """Streamed completions on one keep-alive connection; ``chat`` picks /v1/chat/completions."""

    decode = staticmethod(decode_events)

    def __init__(self, host: str, info: OpenAIModel, protocol: str, timeout: float, body: Optional[dict[str, Any]]) -> None:
        self.info, self.chat, self.extra = info, protocol == "openai-chat", body or {}
        self.path = PROTOCOLS[protocol]
        self.http = HTTPClient.from_url(host, concurrency=1, connection_timeout=timeout, network_timeout=timeout)
        read_bounded(self.http.get("/v1/models"))  # open the connection before the first timed request
        self.posts = AnsweredPosts(self.http)

    def body(self, prompt: Prompt) -> bytes:
        request: dict[str, Any] = {"model": self.info.name, "max_tokens": prompt.max_tokens, "stream": True,
                                   "stream_options": {"include_usage": True}}
        if self.chat:
            request["messages"] = list(prompt.messages or ({"role": "user", "content": prompt.text},))
        else:
            request["prompt"] = prompt.text
        return json.dumps({**request, **self.extra}).encode()

    def generate(self, ex: Exchange, prompt: Prompt) -> None:
        ex.record["exact_length"] = False  # OpenAI has no min_tokens: an answer may end early at the end token
        body = self.body(prompt)
        ex.sent()
        resp = self.posts.post(self.path, body)
        if resp.status_code != 200:
            ex.fail(f"HTTP {resp.status_code}: {error_text(resp)}")
            return
        read_events(resp, ex)

    def close(self) -> None:
        self.http.close()
