"""The spec's load-test section: the defaults of ``tritongen loadtest`` and ``tritongen sweep``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from generator.spec.base import Section


class LoadTestSpec(Section):
    """Defaults of ``tritongen loadtest`` and ``tritongen sweep``."""

    protocol: Literal["http-stream", "grpc-stream", "http", "openai-chat", "openai-completions"] = "grpc-stream"
    """Client protocol: Triton's HTTP generate_stream (SSE), gRPC decoupled streaming, or non-streaming HTTP
    generate; or an OpenAI-compatible server's streamed ``/v1/chat/completions`` or ``/v1/completions``
    (Dynamo, trtllm-serve, Triton's OpenAI frontend, vLLM: ``--url http://HOST:PORT``)."""

    openai_body: Optional[dict[str, Any]] = None
    """OpenAI protocols: JSON fields added to every request body, e.g. a server's extensions such as
    Dynamo's ``{"nvext": {"ignore_eos": true}}``."""

    model: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    """Model the users call. None means the repository's entry model: ensemble, or tensorrt_llm (the
    LLM-API model) for serving.engine=llmapi; tensorrt_llm_bls is the other choice on the engine path.
    OpenAI protocols: None means the first model the server lists at ``/v1/models``. Letters, digits,
    ``_``, ``.`` and ``-`` only: the name goes into URLs and Locust's config file."""

    users: int = Field(16, ge=1)
    """Concurrent users (closed loop), when request_rate is not set."""

    spawn_rate: float = Field(16.0, gt=0)
    """Users started per second."""

    grpc_streams: int = Field(8, ge=1)
    """grpc-stream, closed loop: gRPC streams (each on its own connection) per Locust process, its users spread
    over them in turn. Few streams read many answers per system call (the least client CPU per request), but
    Triton's gRPC frontend writes a stream's responses one at a time: on a 16-core GPU host one stream held a
    Triton server at about half its ceiling, 8 streams reached it from one core (docs/benchmarks.md, lease F)."""

    duration_s: float = Field(30.0, gt=0)
    """Run time in seconds after spawning."""

    max_requests: Optional[int] = Field(None, ge=1)
    """Stop after this many requests (None: run for duration_s)."""

    request_rate: Optional[float] = Field(None, gt=0)
    """Open-loop mode: requests per second on a schedule; latency counts from the scheduled send."""

    arrival: Literal["constant", "poisson"] = "poisson"
    """Arrival process in open-loop mode."""

    prompts: Optional[Path] = None
    """JSONL file with a ``text`` (and optional ``max_tokens``) per line. None means synthetic prompts."""

    trace: Optional[Path] = None
    """Replay a trace (JSONL): each request is sent at its ``timestamp`` (ms from the first). Rows are either
    Mooncake-style ``{timestamp, input_length, output_length, hash_ids}`` (requests sharing a hash id share that
    block of prompt tokens exactly) or ``{timestamp, prompt | messages, max_tokens}``. Latency counts from the
    trace's send time; replaces request_rate and the synthetic prompts."""

    time_scale: float = Field(1.0, gt=0)
    """Trace replay: multiply every timestamp by this (0.5 replays twice as fast)."""

    trace_block_tokens: int = Field(512, ge=1)
    """Trace replay: prompt tokens per hash id (Mooncake's traces use 512; smaller for a tiny model)."""

    shared_prefix_tokens: int = Field(0, ge=0)
    """Synthetic prompts: tokens of a shared prefix (a system prompt) that every prompt of its group starts
    with, before its own input_tokens_mean tokens; 0: no shared prefix."""

    prefix_groups: int = Field(1, ge=1)
    """Synthetic prompts: distinct shared prefixes; prompts take them in turn."""

    turns: int = Field(1, ge=1)
    """Synthetic prompts: turns per conversation; each turn resends the conversation so far (earlier
    questions and the answers received) followed by a new question of input_tokens_mean tokens."""

    input_tokens_mean: int = Field(128, ge=1)
    """Synthetic prompts: mean input length in tokens."""

    input_tokens_stddev: int = Field(0, ge=0)
    """Synthetic prompts: standard deviation of input length."""

    output_tokens_mean: int = Field(64, ge=1)
    """Requested output tokens per request (mean)."""

    output_tokens_stddev: int = Field(0, ge=0)
    """Standard deviation of requested output tokens."""

    num_prompts: int = Field(100, ge=1)
    """Synthetic prompts: how many distinct prompts are made; requests cycle through them in order."""

    tokenizer: Optional[Path] = None
    """Folder with tokenizer.json for counting tokens and making prompts. None means the served
    repository's ``tokenizer_dir`` parameter (read from the server's model config)."""

    seed: int = 0
    """Seed for prompts, lengths and arrivals, so runs are repeatable."""

    warmup_requests: int = Field(4, ge=0)
    """Requests sent and discarded before measuring."""

    workers: Union[Annotated[int, Field(ge=0)], Literal["auto"]] = 0
    """Distributed Locust: worker processes under one master (0 runs a single process); ``auto``: as many as
    the load needs at 70% of the measured per-process ceiling (open loop: request_rate times the mean answer
    length; closed loop: the most one Triton server streamed), at most one per user and per core beside the
    master; one process when one is enough. A Locust process uses at most one core: its measured ceiling is
    in docs/benchmarks.md."""

    request_timeout_s: float = Field(300.0, gt=0)
    """A request with no response for this long counts as an error; also the most a run waits at its
    end for requests still in flight (they finish and count, instead of being cut off). Such a silent
    request, a "Stub process ... is not healthy" answer (a model's Python stub died), a refused connection
    (the server exited) or a second connection in a row that ends before any answer (a proxy or port-forward
    whose server is gone) ends the run at once: the requests still in flight count as errors and no reference
    answers are asked. A server's own error text about a timeout or a refusal (a proxy's "504 Gateway Timeout",
    a model's "TimeoutError: ...") fails only its request."""

    reference_checks: int = Field(100, ge=0)
    """Distinct prompts of the run re-asked once without streaming after the run; every streamed answer
    to them is compared with the server's one-piece detokenization of the same tokens. 0: no comparison."""

    slo: Optional[str] = None
    """SLO gate, e.g. ``ttft_p95<500ms,itl_p95<50ms,error_rate<0.1%``; a violation exits non-zero."""

    repeat: int = Field(1, ge=1, le=100)
    """Run the same seeded load this many times on the same server, every run kept (OUT/run-01, ...); the
    report gives each figure's run-to-run spread and interval, which a release gate needs."""

    @property
    def open_loop(self) -> bool:
        """Whether sends follow a schedule (request_rate or a trace) rather than closed-loop users."""
        return self.request_rate is not None or self.trace is not None

    @property
    def openai(self) -> bool:
        """Whether the protocol is an OpenAI-compatible endpoint rather than Triton's own."""
        return self.protocol.startswith("openai-")

    @field_validator("openai_body")
    @classmethod
    def _json_body(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """YAML holds values JSON does not (dates, bytes, sets, .nan): they reached json.dumps at render."""
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"is not JSON ({exc}): write strings, finite numbers, booleans, lists and "
                             "mappings only (quote a date)") from None
        return value

    @model_validator(mode="after")
    def _one_workload(self) -> "LoadTestSpec":
        if self.trace is not None and (self.request_rate is not None or self.prompts is not None):
            raise ValueError("loadtest.trace sets the schedule and the prompts: unset loadtest.request_rate and "
                             "loadtest.prompts, or unset loadtest.trace")
        if self.turns > 1 and (self.trace is not None or self.prompts is not None):
            raise ValueError("loadtest.turns applies to synthetic prompts: unset loadtest.trace and loadtest.prompts, "
                             "or set loadtest.turns=1")
        if self.openai_body is not None and not self.openai:
            raise ValueError("loadtest.openai_body applies to the openai-chat and openai-completions protocols")
        return self


class ResolvedLoadTest(LoadTestSpec):
    """The load test as it runs: ``loadtest`` with every value it leaves open decided (``Spec.resolved_loadtest``).

    The local run, the distributed run, ``--records`` and the in-cluster manifest all take this type, so none of
    them meets ``workers: auto``, an unnamed Triton model or a relative path.
    """

    workers: int = Field(0, ge=0)
    """Locust worker processes under one master as run (0: a single process)."""

    model: Optional[str] = None
    """The model the users call; None only on an OpenAI-compatible server (its first listed model)."""

    @property
    def processes(self) -> int:
        """Locust processes that send requests: the workers, or the single process."""
        return max(self.workers, 1)


class GateSpec(Section):
    """The regression gate: a load test compared with a saved baseline (``tritongen baseline save``)."""

    baseline: Optional[Path] = None
    """Baseline file (or load-test folder) that ``tritongen loadtest`` compares its run with."""

    max_change: Optional[str] = None
    """Largest change each metric may show against the baseline, e.g. ``ttft_p95:+10%,throughput:-5%``
    (latencies and throughput relative; rates such as ``error_rate:+0.5%`` in percentage points). A term
    fails (exit 1) only when its whole confidence interval lies beyond the limit, passes when the whole
    interval lies within it, and is inconclusive (exit 3) otherwise."""

    confidence: float = Field(0.95, gt=0.5, lt=1)
    """Coverage of the intervals that compare and the gate use."""
