"""One Triton client for tritongen: HTTP generate / generate_stream, gRPC decoupled streaming, and the
two request dialects a rendered repository speaks.

Smoke test, tests, benchmarks and the load test's reference answers call the server through this
module, so a request looks the same everywhere. Two dialects:

- ``ensemble`` (NVIDIA's inflight_batcher_llm ensemble and BLS): ``max_tokens``, ``stream``,
  ``stop_words``; each streamed ``text_output`` is the new text only.
- ``llmapi`` (TensorRT-LLM's LLM-API model, ``all_models/llmapi/tensorrt_llm``): ``sampling_param_*``
  inputs, ``streaming``; each streamed ``text_output`` is the whole text so far, because the model
  sends ``CompletionOutput.text`` (cumulative) on every step.

:func:`text_delta` turns cumulative text into the new part, so everything downstream sees pieces.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import queue
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np

from generator.serve.dialect import (  # noqa: F401 (the dialects are part of the client's interface)
    ENSEMBLE,
    LLMAPI,
    LLMAPI_TARGET,
    REPLACEMENT,
    Dialect,
    dialect_for_inputs,
    joined_text,
    text_delta,
)


class ServerRequestError(Exception):
    """The server answered a request with an error (its message is the exception's)."""


UNREADABLE = (ServerRequestError, OSError, ValueError, TypeError, AttributeError, KeyError, RecursionError)
"""What asking for and reading a JSON answer may raise: an error, no server, or an answer of another shape (a list
where an object was expected, nesting past Python's recursion limit). Readers that fall back to a default when the
server cannot tell catch these: an answer ``[1]`` ended ``tritongen smoke`` in a traceback."""

MAX_ANSWER_BYTES = 64 << 20
"""The most this client reads of one answer (a body, or a stream's events together): the answers to its small
requests are kilobytes; a server that sent without end ran ``tritongen smoke`` out of memory (2.8 GB in 9 s)."""


def _capped(chunks, what: str):
    """``chunks`` as they come, failing once together they pass MAX_ANSWER_BYTES."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_ANSWER_BYTES:
            raise ServerRequestError(f"{what}: the server's answer is longer than {MAX_ANSWER_BYTES:,} bytes")
        yield chunk


@contextlib.contextmanager
def exchange(method: str, url: str, *, body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
             timeout: float = 120.0) -> Iterator[tuple[int, Iterator[bytes]]]:
    """``(status, chunks)`` of one HTTP request: the body's pieces as they arrive, at most MAX_ANSWER_BYTES, and all of
    the exchange within ``timeout`` seconds. A per-read timeout never fires against a server that sends
    a byte now and then (in its status line, headers or body): ``tritongen smoke`` and a load test's reads before and
    after its run waited on one for ever. At ``timeout`` the connection is shut, and what reads it fails with a
    TimeoutError (an OSError, as the network's own failures are)."""
    parts = urllib.parse.urlsplit(url)
    what = f"{method} {url}"
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass

    def pieces(response) -> Iterator[bytes]:
        yield from iter(lambda: response.read1(1 << 16), b"")
        if expired.is_set():  # a shut connection reads as the end of a body without a length
            raise TimeoutError(f"{what}: no whole answer within {timeout:g} s (the server sends too slowly)")
        if response.length:  # http.client's read1 ends a body cut short by a closed connection without a word
            raise ConnectionError(f"{what}: the connection closed {response.length:,} bytes before the end of the "
                                  "answer its Content-Length announced")

    timer = threading.Timer(timeout, cut)
    timer.daemon = True
    timer.start()
    try:
        connection.connect()  # a TLS handshake reads from the server too
        if expired.is_set():  # the time ran out while connecting, before there was a socket to shut
            cut()
        connection.request(method, urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")), body=body,
                           headers=dict(headers or {}))
        response = connection.getresponse()
        yield response.status, _capped(pieces(response), what)
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise TimeoutError(f"{what}: no whole answer within {timeout:g} s (the server sends too slowly)") from None
        if isinstance(exc, OSError):
            raise
        raise ConnectionError(f"{what}: {type(exc).__name__}: {exc}") from None
    finally:
        timer.cancel()
        connection.close()


def _request(method: str, url: str, *, json_body: Any = None, headers: Optional[Mapping[str, str]] = None,
             timeout: float = 120.0) -> tuple[int, bytes]:
    """Status and body of one request (``exchange``), with ``json_body`` sent as JSON."""
    body = None if json_body is None else json.dumps(json_body).encode()
    sent = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    with exchange(method, url, body=body, headers=sent, timeout=timeout) as (status, chunks):
        return status, b"".join(chunks)


def check_reachable(http_url: str, path: str = "/v2/health/live", timeout_s: float = 10.0) -> None:
    """Fail with the address and the fix when nothing answers at ``http_url`` (Triton's liveness endpoint, or
    ``path``: an OpenAI-compatible server's /v1/models)."""
    from generator.errors import ServerError

    try:
        with exchange("GET", endpoint_url(http_url, path), timeout=timeout_s) as (status, _):
            reason = f"HTTP {status} {http.client.responses.get(status, '')}".strip() if status >= 400 else None
    except (OSError, ValueError) as exc:
        reason = exc
    if reason is not None:
        kind = "Triton server" if path.startswith("/v2/") else "OpenAI-compatible server"
        raise ServerError(f"no {kind} answers at {http_url}: {reason}", where="--url",
                          fix="start one (tritongen serve REPO prints its URLs), or pass the right --url") from None


# ---------------------------------------------------------------- HTTP


def endpoint_url(http_url: str, path: str) -> str:
    """http://HOST:PORT/path from HOST:PORT or a URL."""
    base = http_url if http_url.startswith("http") else f"http://{http_url}"
    return base.rstrip("/") + path


def get_json(http_url: str, path: str, timeout: float = 10.0) -> Any:
    status, body = _request("GET", endpoint_url(http_url, path), timeout=timeout)
    if status != 200:
        raise ServerRequestError(f"GET {path}: HTTP {status} {body.decode(errors='replace').strip()}")
    return json.loads(body)


def post_json(http_url: str, path: str, body: Mapping[str, Any], timeout: float = 120.0,
              headers: Optional[Mapping[str, str]] = None) -> Any:
    status, answer = _request("POST", endpoint_url(http_url, path), json_body=body, timeout=timeout, headers=headers)
    if status != 200:
        raise ServerRequestError(_error_text(status, answer))
    return json.loads(answer)


def is_ready(http_url: str) -> bool:
    try:
        with exchange("GET", endpoint_url(http_url, "/v2/health/ready"), timeout=5) as (status, _):
            return status == 200  # the body is not read
    except (OSError, ValueError):
        return False


def model_config(http_url: str, model: str) -> dict:
    return get_json(http_url, f"/v2/models/{model}/config")


def _error_text(status: int, body: bytes) -> str:
    text = body.decode(errors="replace")
    try:
        return f"HTTP {status}: {json.loads(body).get('error', text)}"
    except (ValueError, AttributeError):  # not JSON, or JSON that is no object
        return f"HTTP {status}: {text.strip()}"


def generate(http_url: str, model: str, body: Mapping[str, Any], timeout: float = 120.0) -> dict:
    """POST /v2/models/MODEL/generate (one response); raises ServerRequestError on an error."""
    return post_json(http_url, f"/v2/models/{model}/generate", body, timeout)


def generate_stream(http_url: str, model: str, body: Mapping[str, Any], timeout: float = 120.0) -> list[dict]:
    """POST /v2/models/MODEL/generate_stream and read the server-sent events (one per response)."""
    events = []
    url = endpoint_url(http_url, f"/v2/models/{model}/generate_stream")
    with exchange("POST", url, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                  timeout=timeout) as (status, chunks):
        if status != 200:
            raise ServerRequestError(_error_text(status, b"".join(chunks)))
        buf = bytearray()  # lines cut out as they end (requests' iter_lines kept an endless one whole)
        for chunk in itertools.chain(chunks, (b"\n",)):
            searched, start = len(buf), 0
            buf += chunk
            while (end := buf.find(b"\n", max(start, searched))) >= 0:
                line, start = bytes(buf[start:end]).rstrip(b"\r"), end + 1
                if line.startswith(b"data:"):
                    event = json.loads(line[5:].decode("utf-8"))
                    if "error" in event:
                        raise ServerRequestError(event["error"])
                    events.append(event)
            del buf[:start]
    return events


# ---------------------------------------------------------------- tensors


def text_inputs(
    prompt: str | bytes,
    max_tokens: int,
    *,
    stream: Optional[bool] = None,
    stop_words: Sequence[str] = (),
    extra: Optional[Mapping[str, np.ndarray]] = None,
) -> dict[str, np.ndarray]:
    """Tensors for the ensemble / BLS (batch of one)."""
    raw = prompt if isinstance(prompt, bytes) else prompt.encode("utf-8")
    inputs = {
        "text_input": np.array([[raw]], dtype=np.object_),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
    }
    if stream is not None:
        inputs["stream"] = np.array([[stream]], dtype=bool)
    if stop_words:
        inputs["stop_words"] = np.array([[w.encode("utf-8") for w in stop_words]], dtype=np.object_)
    inputs.update(extra or {})
    return inputs


_LLMAPI_DTYPES = {bool: np.bool_, int: np.int32, float: np.float32}
_LLMAPI_SPECIAL = {"sampling_param_seed": np.uint64}


def llmapi_inputs(prompt: str | bytes, fields: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Tensors for the LLM-API model (max_batch_size 0: 1-D tensors, one prompt): ``fields`` are the
    other inputs by name, Python scalars (bool, int, float) or a list of strings."""
    raw = prompt if isinstance(prompt, bytes) else prompt.encode("utf-8")
    inputs = {"text_input": np.array([raw], dtype=np.object_)}
    for name, value in fields.items():
        if isinstance(value, (list, tuple)):
            inputs[name] = np.array([str(v).encode("utf-8") for v in value], dtype=np.object_)
        else:
            dtype = _LLMAPI_SPECIAL.get(name) or _LLMAPI_DTYPES[type(value)]
            inputs[name] = np.array([value], dtype=dtype)
    return inputs


def output_scalar(value: Any) -> Any:
    """One output value as a Python scalar: upstream's LLM-API model sends some numbers as strings."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else None
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8")
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------- gRPC streaming


@dataclass
class StreamResult:
    """What one gRPC stream returned: text pieces (the new text of each response, also for a cumulative
    model), the raw texts as sent, and the other outputs."""

    pieces: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    error: Optional[str] = None
    cumulative: bool = False

    @property
    def text(self) -> str:
        return joined_text(self.texts, self.cumulative)


def _tensors(module, inputs: Mapping[str, np.ndarray]) -> list:
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in inputs.items():
        t = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        t.set_data_from_numpy(array)
        tensors.append(t)
    return tensors


def grpc_stream(
    grpc_url: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    request_id: Optional[str] = None,
    timeout: float = 120.0,
    on_response: Optional[Callable[[int], bool]] = None,
    cumulative: bool = False,
) -> StreamResult:
    """One request over a gRPC decoupled stream, read until the final response.

    ``on_response(n)`` is called after the n-th response; returning False abandons the stream
    (a client that goes away mid-answer). ``cumulative``: the model sends the whole text so far.
    """
    import tritonclient.grpc as grpcclient

    responses: "queue.Queue" = queue.Queue()
    result = StreamResult(cumulative=cumulative)
    client = grpcclient.InferenceServerClient(grpc_url, channel_args=[
        ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", MAX_ANSWER_BYTES)])
    received = 0
    try:
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(model, _tensors(grpcclient, inputs), request_id=request_id or uuid.uuid4().hex,
                                  enable_empty_final_response=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                response, error = responses.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                result.error = f"no final response within {timeout:.0f} s"
                break
            if error is not None:
                result.error = error.message() if hasattr(error, "message") else str(error)
                break
            received += response.get_response().ByteSize()
            if received > MAX_ANSWER_BYTES:  # a stream that never ends, in messages each under the bound
                result.error = f"the server's answers are longer than {MAX_ANSWER_BYTES:,} bytes"
                break
            outputs = {o.name: response.as_numpy(o.name) for o in response.get_response().outputs}
            text = outputs.get("text_output")
            if text is not None:
                piece = b"".join(np.asarray(text).reshape(-1)[:1]).decode("utf-8")
                previous = result.texts[-1] if result.texts else ""
                result.pieces.append(text_delta(previous, piece) if cumulative else piece)
                result.texts.append(piece)
                result.outputs.append(outputs)
            if on_response is not None and not on_response(len(result.outputs)):
                break
            if response.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    return result



class InferAnswer:
    """The outputs of a KServe v2 infer answer (JSON) as numpy arrays by name, BYTES as bytes objects."""

    def __init__(self, answer: Mapping[str, Any]) -> None:
        self.outputs = {o["name"]: o for o in answer.get("outputs", [])}

    def as_numpy(self, name: str) -> np.ndarray:
        from tritonclient.utils import triton_to_np_dtype

        out = self.outputs[name]
        if out["datatype"] == "BYTES":
            data = np.array([d.encode() if isinstance(d, str) else d for d in out["data"]], dtype=np.object_)
        else:
            data = np.array(out["data"], dtype=triton_to_np_dtype(out["datatype"]))
        return data.reshape(out["shape"])


def http_infer(http_url: str, model: str, inputs: Mapping[str, np.ndarray], timeout: float = 120.0) -> InferAnswer:
    """Plain HTTP infer (KServe v2, JSON), its answer read as ``post_json`` reads (at most MAX_ANSWER_BYTES;
    tritonclient's HTTP client read any answer whole). Refused by decoupled models (ServerRequestError)."""
    from tritonclient.utils import np_to_triton_dtype

    tensors = [{"name": name, "shape": list(array.shape), "datatype": np_to_triton_dtype(array.dtype),
                "data": [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]}
               for name, array in inputs.items()]
    return InferAnswer(post_json(http_url, f"/v2/models/{model}/infer", {"inputs": tensors}, timeout))
