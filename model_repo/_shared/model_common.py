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

import traceback
import uuid

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


def load_tokenizer(tokenizer_dir: str, trust_remote_code: bool = False):
    """The fast tokenizer; PreTrainedTokenizerFast reads tokenizer.json where AutoTokenizer does not
    know the class name a newer transformers saved (TokenizersBackend)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

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


def bls_stream(request, responses):
    """The responses of a decoupled BLS call (``exec(decoupled=True)``), for a model serving ``request``.

    When the last response has been read, Triton 2.51's stub queues the stream's cleanup for its
    stub-to-parent thread, which frees the stream there, without the GIL, if Python has already
    dropped it: the same unlocked free of numpy arrays as in ``requested_only``. A cancellation query
    goes through the same first-in-first-out queue and waits for its answer, so once it returns the
    cleanup is done and Python holds the last reference (python_backend r24.10, pb_stub.cc
    ``ServiceStubToParentRequests`` / ``SendCleanupId``). A stream left early is not cleaned up
    until the model unloads, when the stub frees it holding the GIL."""
    yield from responses
    request.is_cancelled()


def error_response(exc: BaseException, model: str, log=None):
    import triton_python_backend_utils as pb_utils

    return pb_utils.InferenceResponse(error=triton_error(exc, model, log))
