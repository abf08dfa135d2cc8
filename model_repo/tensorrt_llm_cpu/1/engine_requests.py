"""What the CPU engine refuses before it queues a request, and how a Triton request's rows reach its sender.

A request's checks are the GPU engine's own refusals (token ids, lengths, KV blocks, word lists), made
before anything is queued so a bad row costs nothing; a failed row sends its error on the request's
sender, final only on its last row. Kept apart from ``cpu_engine``, which schedules and streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from engine_settings import EngineSettings
from model_common import RequestError
from trtllm_io import GenerationRequest


class ResponseSink(Protocol):
    """Where one Triton request's responses go (Triton's response sender, or a list in tests)."""

    def send(self, tensors: dict[str, np.ndarray] | None, final: bool) -> None: ...

    def send_error(self, error: Exception, final: bool) -> None:
        """``error`` is a ServerFault or ServerBusy (model_common), which decides the client's status."""

    def is_cancelled(self) -> bool: ...


@dataclass
class RowGroup:
    """The rows of one Triton request: only the last row to finish carries the final flag."""

    sink: ResponseSink
    triton_id: str
    pending: int

    def row_done(self) -> bool:
        self.pending -= 1
        return self.pending == 0

    def send_error(self, error: Exception, log: Callable[[str], None]) -> None:
        """One row failed: its error goes to the client, final when no other row of the request is left."""
        last = self.row_done()
        try:
            self.sink.send_error(error, final=last)
        except Exception as exc:
            log(f"CPU reference engine: could not send an error response ({exc})")

    def close(self) -> None:
        """End the request's stream without output (a BLS caller reads it to its final response)."""
        try:
            self.sink.send(None, final=True)
        except Exception:  # the stream is closed already
            pass


def blocks_for(request: GenerationRequest, tokens_per_block: int) -> int:
    """KV blocks for the prompt and every output token the request may get."""
    return math.ceil((len(request.input_ids) + request.max_new_tokens) / tokens_per_block)


def check_request(request: GenerationRequest, settings: EngineSettings, vocab_size: int, num_blocks: int) -> None:
    """Refuse what the GPU engine refuses, before anything is queued (raises RequestError)."""
    s = settings
    n = len(request.input_ids)
    if n == 0:
        raise RequestError("input_ids is empty: the prompt must have at least one token")
    if min(request.input_ids) < 0 or max(request.input_ids) >= vocab_size:
        raise RequestError(f"input_ids must be token ids in [0, {vocab_size})")
    if s.max_input_len is not None and n > s.max_input_len:
        raise RequestError(f"prompt length ({n}) exceeds max_input_len ({s.max_input_len})")
    if request.max_new_tokens <= 0:
        wrap = "; a number of 2^31 or more wraps around in this INT32 input" if request.max_new_tokens < 0 else ""
        raise RequestError(f"request_output_len (max_tokens) must be > 0, got {request.max_new_tokens}{wrap}")
    if s.max_seq_len is not None and n + request.max_new_tokens > s.max_seq_len:
        raise RequestError(
            f"prompt length ({n}) + request_output_len ({request.max_new_tokens}) exceeds max_seq_len "
            f"({s.max_seq_len})"
        )
    if not s.enable_chunked_context and n > s.max_num_tokens:
        raise RequestError(
            f"prompt length ({n}) exceeds max_num_tokens ({s.max_num_tokens}) and enable_chunked_context is off"
        )
    blocks = blocks_for(request, s.tokens_per_block)
    if blocks > num_blocks:
        raise RequestError(
            f"the request needs {blocks} KV blocks but the whole cache has {num_blocks}; raise "
            "max_tokens_in_paged_kv_cache / cpu_kv_cache_mib or send a shorter request"
        )
    sampling = request.sampling
    if sampling.end_id is not None and not -1 <= sampling.end_id < vocab_size:
        raise RequestError(f"end_id must be a token id in [0, {vocab_size - 1}] (or -1: no end token), "
                           f"got {sampling.end_id}")
    for name, words in (("bad_words_list", sampling.bad_words), ("stop_words_list", request.stop_words)):
        for word in words:
            if min(word) < 0 or max(word) >= vocab_size:
                raise RequestError(f"{name} holds token ids outside [0, {vocab_size - 1}]")
            # a word no sequence can hold never matches, yet a bad word was compared at every step of the batch:
            # one of 4,000,000 tokens added ~90 ms to every step, for every request served beside it
            if s.max_seq_len is not None and len(word) > s.max_seq_len:
                raise RequestError(f"{name} holds a word of {len(word)} tokens, longer than max_seq_len "
                                   f"({s.max_seq_len}): it could never match")
    if len(sampling.embedding_bias) > vocab_size:
        raise RequestError(f"embedding_bias has {len(sampling.embedding_bias)} values for a vocabulary of "
                           f"{vocab_size}")
