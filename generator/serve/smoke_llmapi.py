"""Smoke checks for TensorRT-LLM's LLM-API Triton model (``all_models/llmapi/tensorrt_llm``).

The ensemble's checks run in the LLM-API dialect (``sampling_param_*`` inputs, ``streaming``), plus
what only this model has, as TensorRT-LLM 1.2's ``model.py`` / ``helpers.py`` define it:

- streamed ``text_output`` is the whole text so far (``CompletionOutput.text``), so each response
  extends the previous one;
- ``return_finish_reason`` / ``return_stop_reason`` give ``str()`` of the LLM API's values
  (``length``/``stop``/``cancelled``; the stop string, or ``None``);
- ``sampling_param_return_perf_metrics`` adds ``{arrival,first_scheduled,first_token,last_token}_time_ns``
  (upstream sends them in text_output's data type, so they may come as strings);
- a request with ``stop`` set cancels the requests in progress that carry the same request id: the
  stop request is answered with a CANCELLED error, the cancelled one ends with finish_reason
  ``cancelled``; a stop request without an id is refused;
- without ``sampling_param_max_tokens`` the LLM API's default applies (SamplingParams.max_tokens, 32),
  not the whole sequence.
"""

from __future__ import annotations

import uuid
from typing import Callable, Optional, Sequence

import numpy as np

from generator.serve.client import (
    LLMAPI, REPLACEMENT, ServerRequestError, generate, grpc_stream, llmapi_inputs, output_scalar,
)
from generator.serve.smoke import Smoke, _expect, _short

PERF_TIMES = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")

CANCEL_TOKENS = 8
"""The cancellation check asks for at least this many times the smoke test's max_tokens (max_input_len
tokens when that is more: a long answer, so the stop lands while it is being written) and sends the stop
on the first response."""


def extends(previous: str, current: str) -> bool:
    """A cumulative text extends the previous one (a held-back incomplete character may be rewritten)."""
    return current.startswith(previous.rstrip(REPLACEMENT))


class LLMAPISmoke(Smoke):
    dialect = LLMAPI

    def tensors(self, prompt: str | bytes, max_tokens: int, *, stream: Optional[bool] = None,
                stop_words: Sequence[str] = (), **extra) -> dict[str, np.ndarray]:
        fields = {self.dialect.max_tokens: max_tokens, **self.dialect.greedy, **extra}
        if stream is not None:
            fields[self.dialect.stream] = stream
        if stop_words:
            fields[self.dialect.stop] = list(stop_words)
        return llmapi_inputs(prompt, fields)

    def outputs(self, **body) -> dict:
        return generate(self.http, self.model, self.body(**body), self.timeout)

    # -------------------------------------------------------------- checks changed for this model

    def grpc_streaming(self) -> str:
        detail = super().grpc_streaming()
        texts = self.stream.texts
        broken = next((i for i in range(1, len(texts)) if not extends(texts[i - 1], texts[i])), None)
        _expect(broken is None, f"response {broken} does not extend the previous text (not cumulative): "
                f"{_short(texts[broken - 1] if broken else '')} → {_short(texts[broken] if broken else '')}")
        return detail + "; each response holds the whole text so far"

    def bad_missing_input(self) -> str:
        body = {self.dialect.max_tokens: 4}
        return self.expect_error(lambda: generate(self.http, self.model, body, self.timeout), "text_input")

    # -------------------------------------------------------------- checks of this model only

    def reasons(self) -> str:
        reference = self.need_reference()
        out = self.outputs(return_finish_reason=True, return_stop_reason=True)
        finish, stop = output_scalar(out.get("finish_reason")), output_scalar(out.get("stop_reason"))
        _expect(out.get("text_output") == reference, "asking for the reasons changed the answer")
        _expect(finish in ("length", "stop"), f"finish_reason {finish!r}, expected length or stop")
        if finish == "length":
            _expect(stop == "None", f"stop_reason {stop!r} for an answer cut by max_tokens, expected None")
        detail = f"max_tokens answer: finish_reason={finish}, stop_reason={stop}"
        _expect(self.stop_word is not None, "skipped: no stop word stopped generation")
        out = self.outputs(stop_words=[self.stop_word], return_finish_reason=True, return_stop_reason=True)
        finish, stop = output_scalar(out.get("finish_reason")), output_scalar(out.get("stop_reason"))
        _expect((finish, stop) == ("stop", self.stop_word),
                f"stopped answer: finish_reason={finish!r}, stop_reason={stop!r}; expected 'stop', {self.stop_word!r}")
        return f"{detail}; stop word answer: finish_reason=stop, stop_reason={stop!r}"

    def perf_metrics(self) -> str:
        plain = self.outputs()
        _expect(not any(n in plain for n in PERF_TIMES), "perf-metric outputs sent without being asked for")
        out = self.outputs(sampling_param_return_perf_metrics=True)
        missing = [n for n in PERF_TIMES if n not in out]
        _expect(not missing, f"missing outputs: {', '.join(missing)}")
        times = [output_scalar(out[n]) for n in PERF_TIMES]
        _expect(all(isinstance(t, int) and t > 0 for t in times), f"not positive integers: {times}")
        _expect(times == sorted(times), f"not in order arrival ≤ scheduled ≤ first token ≤ last token: {times}")
        queue, prefill, decode = times[1] - times[0], times[2] - times[1], times[3] - times[2]
        return f"queue {queue / 1e6:.1f} ms, to first token {prefill / 1e6:.1f} ms, decode {decode / 1e6:.1f} ms"

    def default_max_tokens(self) -> str:
        reference = self.need_reference()
        body = self.body(return_finish_reason=True)
        del body[self.dialect.max_tokens]
        out = generate(self.http, self.model, body, self.timeout)
        text, finish = out["text_output"], output_scalar(out.get("finish_reason"))
        _expect(text.startswith(reference.rstrip(REPLACEMENT)),
                f"answer {_short(text)} does not extend the max_tokens={self.max_tokens} one")
        return f"answered ({len(text)} chars, finish_reason={finish}) under the LLM API's own default"

    def cancel_by_stop(self) -> str:
        rid = f"smoke-cancel-{uuid.uuid4().hex[:8]}"
        wanted = max(self.max_tokens * CANCEL_TOKENS, self.max_input_len or 0)
        stop_answer: list[str] = []

        def after(n: int) -> bool:
            if n == 1:  # over HTTP: no new gRPC channel to open while the stream runs on
                try:
                    generate(self.http, self.model, {"text_input": self.prompt, "stop": True, "id": rid}, self.timeout)
                    stop_answer.append("")
                except ServerRequestError as exc:
                    stop_answer.append(str(exc))
            return True

        inputs = self.tensors(self.prompt, wanted, stream=True, return_finish_reason=True)
        result = grpc_stream(self.grpc, self.model, inputs, request_id=rid, timeout=self.timeout, on_response=after,
                             cumulative=True)
        _expect(bool(stop_answer), f"the stream ended after {len(result.pieces)} responses, before the stop was sent")
        stop_error = stop_answer[0]
        _expect("cancel" in stop_error.lower(), f"the stop request was answered {stop_error or 'without an error'!r}, "
                "expected the CANCELLED error 'Request cancelled by client'")
        finish = output_scalar(result.outputs[-1].get("finish_reason")) if result.outputs else None
        ended = result.error is not None and "cancel" in result.error.lower()
        _expect(ended or finish == "cancelled",
                f"the cancelled stream ended with finish_reason={finish!r}, error={result.error!r} after "
                f"{len(result.pieces)} of up to {wanted} responses")
        _expect(self.ready(), "server not ready after the cancellation")
        return f"stopped after {len(result.pieces)} of up to {wanted} responses (finish_reason={finish})"

    def stop_without_id(self) -> str:
        body = {"text_input": self.prompt, "stop": True}
        return self.expect_error(lambda: generate(self.http, self.model, body, self.timeout), "request id")

    def plan(self) -> list[tuple[str, Callable[[], str]]]:
        checks = super().plan()
        at = next(i for i, (name, _) in enumerate(checks) if name == "stop words honoured") + 1
        checks[at:at] = [
            ("finish and stop reasons", self.reasons),
            ("perf-metric outputs", self.perf_metrics),
            ("no max_tokens: the LLM API's default", self.default_max_tokens),
            ("cancellation by the stop input", self.cancel_by_stop),
            ("bad request: stop without a request id", self.stop_without_id),
        ]
        return checks

