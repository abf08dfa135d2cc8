"""What every Python model of a rendered repository shares: config parameters, the tokenizer, and errors.

``tritongen render`` copies this file next to each model's ``model.py``, so a rendered repository
stands alone (and each model still imports nothing from tritongen). Triton's
``triton_python_backend_utils`` is imported only inside the functions that build Triton objects, so
the engine and the tests can use the rest without a server.

Errors reach clients by kind, never as a traceback: ``RequestError`` (the client can fix it) becomes
Triton's INVALID_ARG, ``ServerBusy`` UNAVAILABLE, ``ServerFault`` and anything unexpected INTERNAL;
an unexpected exception is logged in full on the server under a reference the client's message
names. Triton 2.51 drops the code on the way out of a decoupled model (its HTTP generate endpoints
answer every such error with 400, gRPC streams carry no code), so the message says the kind too:
server faults start with "server error", a full queue with "server busy".
"""

from __future__ import annotations

import faulthandler
import json
import os
import threading
import time
import traceback
import uuid
from contextlib import contextmanager

_TRUE = ("1", "true", "yes", "y", "t", "on")
_FALSE = ("0", "false", "no", "n", "f", "off")


class RequestError(ValueError):
    """A request the model refuses; its sender can fix it. The message goes back as is."""


class ServerBusy(Exception):
    """The model cannot take the request now (queue full, model unloading); retrying later may work."""


class ServerFault(RuntimeError):
    """A failure on the server's side that the client cannot fix; the message is ours and safe to show."""


# ---------------------------------------------------------------- config parameters


def parameters(config: dict) -> dict[str, str]:
    """The model config's parameters as {key: string}, without unset ones (empty or a ``${...}`` placeholder)."""
    out = {}
    for key, value in (config.get("parameters") or {}).items():
        text = str(value.get("string_value", "") if isinstance(value, dict) else value).strip()
        if text and not text.startswith("${"):
            out[key] = text
    return out


def required(params: dict[str, str], key: str, model: str) -> str:
    """A parameter render always writes; a missing one means the config was edited by hand or is stale."""
    if key not in params:
        raise ValueError(f"{model}: parameter {key!r} is not set in config.pbtxt (re-render the repository)")
    return params[key]


def flag(value: str, key: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"parameter {key!r}: {value!r} is not a boolean (true or false)")


def integer(value: str, key: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"parameter {key!r}: {value!r} is not an integer") from None


# ---------------------------------------------------------------- text


FAST_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")
FAST_MODEL_TYPES = ("qwen3", "llama")
"""Model types for which AutoTokenizer loads a folder that declares one of FAST_TOKENIZER_CLASSES (and no
code of its own) as that very class: transformers 5 maps their tokenizer to the generic fast one, and older
releases load the declared class. tests/test_prepost.py checks this against the installed transformers."""


def _declared_fast(tokenizer_dir: str) -> bool:
    """The folder declares the generic fast tokenizer for a model type in FAST_MODEL_TYPES (tritongen's
    own checkpoints do): a Hub id, remote code or any other class is left to AutoTokenizer."""
    try:
        with open(os.path.join(tokenizer_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            tokenizer_config = json.load(f)
        with open(os.path.join(tokenizer_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    if not (isinstance(tokenizer_config, dict) and isinstance(config, dict)):
        return False
    return (tokenizer_config.get("tokenizer_class") in FAST_TOKENIZER_CLASSES
            and config.get("model_type") in FAST_MODEL_TYPES
            and "auto_map" not in tokenizer_config and "auto_map" not in config
            and config.get("tokenizer_class") in (None, *FAST_TOKENIZER_CLASSES))


def load_tokenizer(tokenizer_dir: str, trust_remote_code: bool = False):
    """The fast tokenizer; PreTrainedTokenizerFast reads tokenizer.json where AutoTokenizer does not
    know the class name a newer transformers saved (TokenizersBackend). A folder that declares that class
    (``_declared_fast``) is loaded as it directly: AutoTokenizer would return the same, but it imports torch
    to read the model's config, 1.4 s of CPU in each of a server's two tokenizer models."""
    from transformers import PreTrainedTokenizerFast

    if _declared_fast(tokenizer_dir):
        return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, KeyError, AttributeError):
        return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


def utf8(raw, name: str) -> str:
    """A BYTES tensor element as text, refusing bytes that are not UTF-8 with the input's name."""
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{name} is not valid UTF-8 (byte {exc.start}: {bytes(raw)[exc.start:exc.start + 1]!r})")


MAX_WORDS = 256
"""Stop or bad words one request may carry in each list. The engines compare every word with the newest tokens
(or text) at every step, on the threads that serve every other request too, so the number of words bounds
what one request adds to each step: 100,000 stop and bad words made a neighbour's 24 tokens take 10.6 s
instead of 0.3 s. (OpenAI's API takes 4 stop strings.)"""


def check_word_count(count: int, name: str) -> None:
    if count > MAX_WORDS:
        raise RequestError(f"{name} holds {count} words, more than the {MAX_WORDS} one request may carry")


class PromptLimit:
    """Refuses, before tokenizing, a prompt that cannot fit ``max_input_len`` tokens.

    No vocabulary entry spells more than ``token_bytes`` UTF-8 bytes, so a prompt has at least
    len / token_bytes tokens (halved: normalization may shorten text); counting characters costs
    nothing, while tokenizing a 10 MB prompt takes seconds, during which the model serves no one else.
    Prompts under the bound are tokenized and the engine checks their exact length."""

    def __init__(self, tokenizer, max_input_len) -> None:
        self.max_input_len = max_input_len
        self.token_bytes = max((len(t.encode("utf-8")) for t in tokenizer.get_vocab()), default=1)

    def check(self, text: str, name: str = "text_input") -> None:
        least = len(text) // (2 * self.token_bytes)
        if self.max_input_len is not None and least > self.max_input_len:
            raise RequestError(f"{name} of {len(text)} characters is at least {least} tokens, more than "
                               f"max_input_len ({self.max_input_len})")


# ---------------------------------------------------------------- errors to clients


def client_message(exc: BaseException, model: str, log=None) -> tuple[str, str]:
    """(kind, message) for an exception: kind is invalid, busy or internal. Unexpected exceptions are
    logged with their traceback through ``log`` and the client gets a reference instead."""
    if isinstance(exc, RequestError):
        return "invalid", str(exc)
    if isinstance(exc, ServerBusy):
        return "busy", str(exc)
    if isinstance(exc, ServerFault):
        text = str(exc)
        return "internal", text if text.startswith("server error") else f"server error: {text}"
    reference = uuid.uuid4().hex[:12]
    if log is not None:
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log(f"{model}: internal error, reference {reference}:\n{details}")
    return "internal", f"server error in {model} ({type(exc).__name__}); reference {reference} in the server log"


def triton_error(exc: BaseException, model: str, log=None):
    """The ``pb_utils.TritonError`` a client should see for ``exc``, with the code that sets the HTTP status."""
    import triton_python_backend_utils as pb_utils

    kind, message = client_message(exc, model, log)
    codes = {"invalid": pb_utils.TritonError.INVALID_ARG, "busy": pb_utils.TritonError.UNAVAILABLE,
             "internal": pb_utils.TritonError.INTERNAL}
    return pb_utils.TritonError(message, codes[kind])


# ---------------------------------------------------------------- Triton 2.51's stub and threads


def requested_only(request, tensors: dict):
    """The ``{name: array}`` outputs that ``request`` asked for, as ``pb_utils.Tensor`` objects.

    Every response a decoupled model sends must hold only these. Triton 2.51's ``ResponseSender.send``
    drops the other outputs with the GIL released, and a dropped tensor that nothing else references
    frees its numpy array without the GIL: that corrupts the interpreter's allocator and the stub dies
    later with a segfault in ``_PyObject_Malloc`` (python_backend r24.10; upstream fixed it in 24.12,
    PR #390). A request that names no outputs asks for all of them (Triton fills the list)."""
    import triton_python_backend_utils as pb_utils

    wanted = set(request.requested_output_names())
    return [pb_utils.Tensor(name, value) for name, value in tensors.items() if name in wanted]


ENGINE_ERROR_OUTPUT = "error_message"
"""The CPU engine's output for an error, for BLS callers that ask for it: a normal response carrying the
message, never an error response. Triton 2.51 delivers an error response to a decoupled BLS caller with
a stale stream id: ``InferResponse::SaveToSharedMemory`` writes the id only when there is no error
(python_backend r24.10 src/infer_response.cc; fixed upstream in r25.04, PR #398), so the caller's stub
files the error (and, when it is the stream's first response, the stream) under whatever id an earlier
response left in that shared memory: another stream's. That stream then gets a stranger's error or loses
its responses, and the server frees its payload while the engine still answers it, which corrupts the
caller's shared-memory pool (segfault in ``rbtree_best_fit::priv_deallocate``, then
``boost::interprocess::lock_exception`` in every process using the pool). A caller asks with the request
parameter ``{ENGINE_ERROR_OUTPUT: true}`` and by requesting the output (a client that names no outputs gets
them all, so the output alone would not tell a BLS caller from a client)."""


def bls_error(response):
    """The error message of a response of a BLS call (an error response, or the engine's error output), or None."""
    import triton_python_backend_utils as pb_utils

    if response.has_error():
        return response.error().message()
    tensor = pb_utils.get_output_tensor_by_name(response, ENGINE_ERROR_OUTPUT)
    if tensor is None:
        return None
    raw = tensor.as_numpy().reshape(-1)[0]
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def bls_stream(request, responses, stop=None, drain=True):
    """The responses of a decoupled BLS call (``exec(decoupled=True)``), for a model serving ``request``;
    use it as ``with contextlib.closing(bls_stream(...)) as stream:`` so that leaving it early is seen at once.

    Every stream is read to its final response, also one the caller leaves early (a stop string, a
    cancelled client): ``stop()`` first asks the engine to end it (Triton 2.51's iterator has no
    ``cancel()``), then the rest is read and dropped. Not after an error, which ends the engine's request:
    an engine that answers with an error response (TensorRT-LLM's backend; a caller that did not ask for
    ENGINE_ERROR_OUTPUT) has its final flag delivered under a stale id on 2.51, so reading on would wait
    for ever (the BLS hung on such a stand-in engine in tests/test_hardening.py). ``drain`` False: a stream
    left early is stopped but not read on (kept by the stub until unload), for ``tensorrt_llm_bls``, whose
    stub met heap corruption within minutes of a soak while draining (docs/benchmarks.md). Triton 2.51's stub keeps a stream that is left early in a table until the model unloads,
    with every response that still arrives for it in shared memory, so the caller's pool grows with each
    one (1 MiB per ~100 streams left in a stop-string load) and unloading waits for their final
    responses. When the last response has been read, the stub queues the stream's cleanup for its
    stub-to-parent thread, which frees the stream there, without the GIL, if Python has already dropped
    it: the unlocked free of numpy arrays as in ``requested_only``. A cancellation query goes through the
    same first-in-first-out queue and waits for its answer, so once it returns the cleanup is done and
    Python holds the last reference (python_backend r24.10, pb_stub.cc ``ServiceStubToParentRequests`` /
    ``SendCleanupId``, pb_response_iterator.cc)."""
    ended = errored = False
    try:
        for response in responses:
            errored = bls_error(response) is not None
            yield response
        ended = True
    finally:
        if not ended and not errored:
            if stop is not None:
                stop()
            if drain:
                for _ in responses:
                    pass
        request.is_cancelled()


ENGINE_CALLS = 24
"""The most engine calls (BLS) one model instance has in flight at once; the others wait for one to end. Triton
2.51's Python backend serves each BLS call on one of its 32 threads (``thread-pool-size``) until the call ends, and
what the model sends, and its other calls, wait behind the calls queued for a thread: with more calls than threads,
answers already made waited for the calls made after them (review16: the LLM-API stand-in, 150 requests at once, no
answer for 60 s while the engine ended 16 every 6.4 s; review17: tensorrt_llm_bls with max_batch_size 32, whose 64
request threads made 64 calls: every answer came ~9 s after its last token). The engine's max_queue_size never saw
the excess. Fewer calls than threads leave some for the answers, the stops and pre-/postprocessing."""


class EngineCalls:
    """At most :data:`ENGINE_CALLS` engine calls of one model instance in flight; ``close`` (the model unloading)
    ends every wait."""

    def __init__(self, size: int = ENGINE_CALLS):
        self._free = threading.BoundedSemaphore(size)
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    @contextmanager
    def slot(self, wanted=lambda: True):
        """Wait for a slot while ``wanted()``: yields True holding one, released when the block is left in any way
        (an error, a return, a generator closed early), or False once no longer wanted (a stop) or closed before
        one came."""
        while not self._free.acquire(timeout=0.1):
            if self._closed.is_set() or not wanted():
                yield False
                return
        try:
            yield True
        finally:
            self._free.release()


def stop_engine_request(engine: str, request_id: str, input_ids, decoupled: bool = True,
                        error_output: bool = False, caller=None) -> None:
    """Ask the engine model to end its request ``request_id`` (TensorRT-LLM's protocol: the same request
    id with ``stop`` true; the CPU engine also wants the same prompt ``input_ids`` so that no other client
    can stop it). The engine answers with an empty final response; ``error_output``: see ENGINE_ERROR_OUTPUT.
    ``caller``: the request being served, whose cancellation query is the barrier ``bls_stream`` describes,
    so that the stub frees the stop's own stream only after Python has let go of it (the one stream without
    that barrier when a BLS stub segfaulted in pymalloc two minutes into a soak; core in docs/benchmarks.md)."""
    import numpy as np
    import triton_python_backend_utils as pb_utils

    ids = np.asarray(input_ids, dtype=np.int32).reshape(1, -1)
    request = pb_utils.InferenceRequest(
        model_name=engine, request_id=request_id, parameters={ENGINE_ERROR_OUTPUT: True} if error_output else None,
        requested_output_names=["output_ids", ENGINE_ERROR_OUTPUT] if error_output else ["output_ids"],
        inputs=[pb_utils.Tensor("input_ids", ids),
                pb_utils.Tensor("input_lengths", np.array([[ids.shape[1]]], np.int32)),
                pb_utils.Tensor("request_output_len", np.zeros((1, 1), np.int32)),
                pb_utils.Tensor("stop", np.ones((1, 1), bool))],
    )
    responses = request.exec(decoupled=True) if decoupled else [request.exec()]
    for _ in responses:
        pass
    if caller is not None:
        caller.is_cancelled()  # holding ``responses`` until the stub's cleanup of the stream is done


def error_response(exc: BaseException, model: str, log=None):
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(error=triton_error(exc, model, log))


# ---------------------------------------------------------------- the stub's lifetime

SERVER_CHECK_S = 0.5
"""How often a stub checks that the server that started it is still its parent."""

WEDGED_EXIT_S = 60.0
"""How long a stub may go without any Python thread running before it ends itself (see exit_with_server)."""


def exit_with_server(period_s: float = SERVER_CHECK_S, wedged_s: float = WEDGED_EXIT_S) -> threading.Thread:
    """End this stub process as soon as the tritonserver that started it is gone (call from ``initialize``).

    Triton 2.51's stub checks its parent with ``kill(pid, 0)``, which succeeds while the dead server is
    an unreaped zombie, and once it does notice it tears itself down under the model's running threads:
    a stub whose server was killed (``launch.sh`` run by hand, ``kill -9``) lived on for minutes, or
    segfaulted. The kernel gives an orphan a new parent the moment its parent exits, reaped or not, so
    a changed ``getppid()`` is the signal; ``os._exit`` ends the process without running Python's or
    the stub's teardown, which has nobody left to report to. Stubs ignore SIGTERM by design (the
    server stops them), so this is their only way out when the server cannot.

    Looking needs the GIL, and the stub holds it through some calls to the server (a metric's ``set``
    waits for the server's answer with the GIL held): a server that dies during one leaves no Python
    thread able to run again (the CPU engine's stub, which sets its gauges from a thread). So each look
    also re-arms faulthandler's watchdog, a C thread that needs no GIL: ``wedged_s`` without a look, and
    it ends the process (after printing every thread's stack). A stub that runs no Python for that long
    serves nothing either."""
    server = os.getppid()

    def watch() -> None:
        while os.getppid() == server:
            faulthandler.dump_traceback_later(wedged_s, exit=True)
            time.sleep(period_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-server", daemon=True)
    thread.start()
    return thread
