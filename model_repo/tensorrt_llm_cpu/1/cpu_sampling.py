"""Per-request token selection for the CPU reference engine, with TensorRT-LLM's sampling semantics.

transformers' continuous batching samples a whole batch with one engine-wide setting and one
random generator, so a request's sampled tokens would depend on who shares its batch. TensorRT-LLM
gives every request its own settings and seed. ``TrtllmTokenSelector`` plugs into the batch's
logits-processor slot, picks each request's token itself (greedy or seeded sampling, with bias,
penalties, banned words and min_tokens applied first) and leaves only that token standing, so the
engine's argmax returns it. Greedy rows pick ``argmax`` of the raw logits, exactly as ``generate``.

Rows are independent: the arithmetic runs in float64, where no float32 input (logits, bias,
penalties, a temperature down to the smallest float32) can overflow into inf or NaN, and a row
that still fails is recorded as that request's failure (the engine ends it alone) while the
other rows of the step get their tokens.
"""

from __future__ import annotations

import threading

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)
from transformers.generation.logits_process import LogitsProcessorList

from trtllm_io import SamplingParams

_DEFAULT = SamplingParams()


def select_token(
    logits: torch.Tensor,
    params: SamplingParams,
    history: list[int],
    generated: int,
    generator: torch.Generator | None,
) -> tuple[int, float]:
    """Choose the next token from one row of logits; return it with its log-probability.

    ``history`` is prompt plus generated tokens (for penalties and banned words), ``generated`` how
    many tokens the request has produced. Order: embedding bias, repetition/presence/frequency
    penalties over the whole sequence, bans (bad words; end_id before min_tokens), then either argmax
    or temperature, top-k, top-p and a draw from the request's own generator. The log-probability
    is taken from the distribution the token was drawn from (the unfiltered one when greedy).
    """
    scores = logits.double().clone()
    if params.embedding_bias:
        bias = torch.tensor(params.embedding_bias, dtype=scores.dtype)
        scores[: bias.numel()] += bias[: scores.numel()]
    if params.uses_history and history:
        ids, counts = torch.tensor(history, dtype=torch.long).unique(return_counts=True)
        ids, counts = ids[ids < scores.numel()], counts[ids < scores.numel()]
        seen = scores[ids]
        if params.repetition_penalty != 1.0:
            seen = torch.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
        seen = seen - params.presence_penalty - params.frequency_penalty * counts.to(scores.dtype)
        scores[ids] = seen
    for word in params.bad_words:  # banned when the history ends with the tokens before its last
        n = len(word) - 1
        if not n or (n <= len(history) and history[-1] == word[-2] and tuple(history[-n:]) == tuple(word[:-1])):
            scores[word[-1]] = float("-inf")
    if params.end_id is not None and 0 <= params.end_id < scores.numel() and generated < params.min_tokens:
        scores[params.end_id] = float("-inf")

    if params.greedy:
        token = int(torch.argmax(scores))
        return token, float(torch.log_softmax(scores, dim=-1)[token])

    top = scores.max()
    if not torch.isfinite(top):
        raise ValueError("no token is left to sample from (bad words, bias and penalties exclude them all)")
    scores = (scores - top) / params.temperature  # the best token at 0: no overflow whatever the temperature
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if 0.0 < params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= params.top_p
        probs = probs.clone()
        probs[order[outside]] = 0.0
        probs = probs / probs.sum()
    token = int(torch.multinomial(probs, 1, generator=generator))
    return token, float(torch.log(probs[token]))


def _generated_count(state) -> int:
    """Tokens generated so far, also after a soft reset moved earlier ones into the prompt to re-prefill."""
    moved = len(state.initial_tokens) - state._true_initial_tokens if state._true_initial_tokens else 0
    return state.generated_len() + moved


class TrtllmTokenSelector(ContinuousBatchingLogitsProcessor):
    """The continuous-batching logits processor that applies ``select_token`` to every row of a batch.

    Requests carry their ``SamplingParams`` as the ``sampling`` logits-processor kwarg. The rows of a
    step are known from ``prepare_tensor_args`` (called just before the forward pass, in row order),
    and the chosen tokens' log-probabilities are kept per request until the engine collects them.
    """

    supported_kwargs = {"sampling": SamplingParams}
    ignored_kwargs = ()

    def __init__(self) -> None:
        self._rows: list = []
        self._generators: dict[str, torch.Generator] = {}
        self._log_probs: dict[str, list[float]] = {}
        self._failures: dict[str, str] = {}
        self._lock = threading.Lock()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
        self._rows = [future.state for future in requests_with_new_token]
        return torch.zeros(len(self._rows), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        for i, state in enumerate(self._rows[: scores.size(0)]):
            params = state.logit_processor_kwargs.get("sampling", _DEFAULT)
            history = state.initial_tokens + state.generated_tokens if (params.uses_history or params.bad_words) else []
            try:
                token, log_prob = select_token(
                    scores[i], params, history, _generated_count(state), self._generator(state.request_id, params)
                )
            except Exception as exc:  # noqa: BLE001 - this row's failure, not the step's
                with self._lock:
                    self._failures.setdefault(state.request_id, f"{type(exc).__name__}: {exc}")
                token, log_prob = 0, 0.0  # a placeholder the engine never returns: it ends the request first
            with self._lock:
                self._log_probs.setdefault(state.request_id, []).append(log_prob)
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores

    def _generator(self, request_id: str, params: SamplingParams) -> torch.Generator | None:
        if params.greedy:
            return None
        generator = self._generators.get(request_id)
        if generator is None:
            generator = self._generators[request_id] = torch.Generator().manual_seed(params.seed)
        return generator

    def log_probs(self, request_id: str, start: int, stop: int) -> list[float]:
        """Log-probabilities of generated tokens ``start:stop`` of a request."""
        with self._lock:
            return list(self._log_probs.get(request_id, [])[start:stop])

    def failure(self, request_id: str) -> str | None:
        """Why choosing a token failed for this request, if it did."""
        with self._lock:
            return self._failures.get(request_id)

    def release(self, request_id: str) -> None:
        """Forget a finished request's generator, log-probabilities and failure."""
        with self._lock:
            self._log_probs.pop(request_id, None)
            self._failures.pop(request_id, None)
        self._generators.pop(request_id, None)

    def as_processor_list(self) -> ContinuousBatchingLogitsProcessorList:
        """The processor list the batch processor runs: this selector alone, with one argument row."""
        processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([self]))
        processors.tensors_required = 1
        return processors
