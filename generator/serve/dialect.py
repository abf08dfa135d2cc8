"""The two request dialects a rendered repository speaks, as data: tensor names and streaming semantics.

Pure (no client, no network), so the load-test figures (generator/measure/records.py) and Locust's users
read them without pulling in an HTTP or gRPC client; generator/serve/client.py sends requests in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Dialect:
    """Tensor names and streaming semantics of one kind of served LLM model."""

    name: str
    max_tokens: str
    stream: str
    stop: str
    cumulative: bool
    """Streamed text_output is the whole text so far (True) or only the new text (False)."""
    greedy: Mapping[str, Any] = field(default_factory=dict)
    """Inputs that make decoding greedy where the model's default is not (sent by the smoke test)."""


ENSEMBLE = Dialect("ensemble", max_tokens="max_tokens", stream="stream", stop="stop_words", cumulative=False)
LLMAPI = Dialect("llmapi", max_tokens="sampling_param_max_tokens", stream="streaming", stop="sampling_param_stop",
                 cumulative=True, greedy={"sampling_param_top_k": 1})

LLMAPI_TARGET = "llmapi"
"""The manifest's ``target`` value of an LLM-API repository (tritongen.json)."""


def dialect_for_inputs(inputs: Sequence[str] | set[str]) -> Dialect:
    """The dialect a model speaks, from its input names (the served config is the ground truth)."""
    return LLMAPI if "sampling_param_max_tokens" in set(inputs) else ENSEMBLE


def text_delta(previous: str, current: str) -> str:
    """The new part of a cumulative text. A cumulative detokenizer may rewrite a held-back incomplete
    character (U+FFFD) once its last byte arrives, so the delta starts where the two texts part."""
    if current.startswith(previous):
        return current[len(previous):]
    common = 0
    for a, b in zip(previous, current):
        if a != b:
            break
        common += 1
    return current[common:]


def joined_text(texts: Sequence[str], cumulative: bool) -> str:
    """The whole answer of a stream: the last text when cumulative, else the pieces joined."""
    if cumulative:
        return next((t for t in reversed(texts) if t), "")
    return "".join(texts)


def config_param(config: Mapping[str, Any], key: str) -> Optional[str]:
    """A served model config's (JSON) string parameter; None when absent, empty or still a ``${…}`` placeholder."""
    value = (config.get("parameters", {}).get(key) or {}).get("string_value")
    return value if value and not value.startswith("${") else None
