"""What a load test and a sweep produce, as types: results.json and points.json are these, dumped.

Statistics, the client verdict, the SLO gate, the reports, the sweep and the demo all read these fields;
only the modules that compute a figure fill it in. Milliseconds unless a name says otherwise. Dict fields
are keyed by data (model names, metric names, check names), not by figure.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Optional

from pydantic import BaseModel

from generator.measure.intervals import Interval
from generator.spec import ResolvedLoadTest


class Dist(BaseModel):
    """A distribution: count, mean, extremes and the percentiles the reports show."""

    count: int
    mean: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float


# ---------------------------------------------------------------- client-side figures (statistics.py)


class Counts(BaseModel):
    requests: int
    """Measured requests: warm-up and cut-off ones excluded."""
    ok: int
    errors: int
    warmup: int
    cancelled: int
    no_text: int
    """Answered without any text (neither ok nor an error)."""


class Throughput(BaseModel):
    """Per second of the window from the first scheduled send to the last answer; None for an empty window."""

    requests_per_s: Optional[float]
    output_tokens_per_s: Optional[float]
    input_tokens_per_s: Optional[float]


class Latency(BaseModel):
    """Each None when no request could give it (e.g. ITL without streaming)."""

    ttft: Optional[Dist]
    itl: Optional[Dist]
    """Per gap between responses with text, pooled."""
    itl_request: Optional[Dist]
    e2e: Optional[Dist]
    lateness: Optional[Dist]
    conn_wait: Optional[Dist]


class TokenAgreement(BaseModel):
    compared: int
    equal: int
    mean_client_minus_server: float


class Tokens(BaseModel):
    input: Optional[Dist]
    output: Optional[Dist]
    agreement: dict[str, TokenAgreement]
    """``output``/``input``: the client tokenizer's counts against the server's."""


class PrefixReuse(BaseModel):
    """How much of the prompts the server found in its KV cache, as it reported per request: TensorRT-LLM's
    ``kv_cache_reused_blocks`` of ``kv_cache_alloc_total_blocks`` (the CPU reference engine reports the same),
    or an OpenAI server's ``usage.prompt_tokens_details.cached_tokens`` of ``prompt_tokens``."""

    unit: str
    """``blocks`` or ``tokens``."""
    requests: int
    """Requests whose answer carried the figures."""
    hit_share: float
    """Reused of all prompt blocks (tokens) over those requests."""
    hit_requests: int
    """Requests that reused at least one block (token)."""
    ttft_hit: Optional[Dist] = None
    """TTFT (ms) of the requests that reused a prefix."""
    ttft_miss: Optional[Dist] = None
    """TTFT (ms) of the requests that reused nothing."""


class ErrorSample(BaseModel):
    message: str
    count: int


class CheckSample(BaseModel):
    check: str
    id: str
    chunks: list[str]
    reference: Optional[str] = None
    """The one-piece answer, for a reference mismatch."""


class Checks(BaseModel):
    """The streamed-output checks (request_figures.stream_failures) over every streamed answer."""

    checked: int
    with_reference: int
    reference: dict[str, int]
    """Comparison with the one-piece answer (equal, detokenization, diverged) -> answers."""
    failed_requests: int
    empty_chunks: int
    failures: dict[str, int]
    """Check name (request_figures.CHECKS) -> failed answers."""
    samples: list[CheckSample]
    reference_errors: list[str] = []
    """Prompts that could not be asked again without streaming."""


class Split(BaseModel):
    """The TTFT split from the engine's own timestamps (request_figures.server_split), over the requests that had it."""

    requests: int
    parts: dict[str, Dist]
    ttft_mean_ms: float
    ttft_parts: list[str]
    """The parts that add up to the TTFT (decode too, without streaming)."""
    parts_sum_mean_ms: float
    negative_parts: int
    shared_clock: bool


class QueueTrend(BaseModel):
    median_ms_by_third: list[float]
    slope_ms_per_s: float


class GenaiPerfFigures(BaseModel):
    ttft: Optional[Dist]
    itl: Optional[Dist]


class VllmFigures(BaseModel):
    ttft: Optional[Dist]
    itl: Optional[Dist]
    tpot: Optional[Dist]


class Equivalents(BaseModel):
    """TTFT and ITL as genai-perf and vLLM's benchmark_serving define them (statistics.equivalents)."""

    genai_perf: GenaiPerfFigures
    vllm: VllmFigures


class SeriesPoint(BaseModel):
    """One successful request, by when it started."""

    t_s: float
    ttft_ms: float
    queue_ms: Optional[float]
    e2e_ms: float


class Summary(BaseModel):
    """Every client-side figure of a run, from its request records."""

    counts: Counts
    window_s: float
    throughput: Throughput
    latency_ms: Latency
    tokens: Tokens
    error_rate: Optional[float]
    error_samples: list[ErrorSample]
    checks: Checks
    split: Optional[Split]
    queue_trend: Optional[QueueTrend]
    equivalents: Equivalents
    itl_gaps_sample_ms: list[float]
    series: list[SeriesPoint]
    prefix_reuse: Optional[PrefixReuse] = None
    """None when the server reported no reuse figures."""


# ---------------------------------------------------------------- Triton's view (tritonstats.py)


class StageStats(BaseModel):
    """One model's share of the run, from /v2/models/stats before and after."""

    requests: int
    failures: int
    inferences: int
    executions: int
    batch_size: Optional[float]
    request_ms: Optional[float]
    queue_ms: Optional[float]
    compute_ms: Optional[float]


class CounterStage(BaseModel):
    """The same from the /metrics counters."""

    requests: float
    batch_size: Optional[float]
    queue_ms: float
    compute_ms: float


class Gauge(BaseModel):
    mean: float
    max: float


class MetricsSummary(BaseModel):
    counters: dict[str, float] = {}
    """Increase over the run, by metric key (name and labels)."""
    gauges: dict[str, Gauge] = {}
    series: dict[str, list[tuple[float, float]]] = {}
    """(seconds into the run, value) per gauge key."""


class FrontEndExplained(BaseModel):
    front_end_mean_ms: float
    pre_post_ms: float
    unexplained_ms: float


class ServerView(BaseModel):
    stages: dict[str, StageStats]
    metrics: MetricsSummary
    metrics_stages: dict[str, CounterStage]
    split_vs_stages: Optional[FrontEndExplained]


# ---------------------------------------------------------------- verdicts (verdict.py, slo.py)


class ProcessHealth(BaseModel):
    """One Locust process over the run."""

    proc: int
    host: str
    cpu: float
    """Mean CPU, as a share of one core."""
    cpu_max: float
    demand: float = 0.0
    """What its event loop wanted, as a share of one core: on a CPU or runnable and waiting for one (median
    of its seconds; its mean CPU in records of an older load generator)."""
    wait: Optional[float] = None
    """Share of the run its event loop was runnable but waiting for a CPU (None where Linux keeps no schedstat)."""
    lag_p99_ms: float
    lag_max_ms: float


class Capacity(BaseModel):
    """A run's load against the load generator's recorded ceiling (ceiling.capacity)."""

    responses_per_s: float
    responses_per_core_s: Optional[float]
    """Streamed responses per core-second of the Locust processes' CPU in this run."""
    ceiling_responses_per_core_s: float
    ceiling_share_per_process: float
    processes: int
    processes_needed: int
    """Locust processes this rate needs at ceiling.TARGET_SHARE of the ceiling each."""
    advice: Optional[str]
    ceiling: str
    """The recorded ceiling and the command that measured it."""


class ClientVerdict(BaseModel):
    """Whether the load generator, not the server, may have set the figures (verdict.client_verdict)."""

    client_limited: bool
    reasons: list[str]
    processes: list[ProcessHealth]
    lag_limit_ms: float
    capacity: Optional[Capacity] = None


class Verdict(StrEnum):
    """An SLO gate's outcome; the CLI's exit code follows it (slo.EXIT_CODES)."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class TermOutcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    NOT_MEASURED = "not measured"


class TermResult(BaseModel):
    term: str
    metric: str
    op: str
    limit: float
    measured: Optional[float]
    unit: str
    """``ms``, ``fraction`` or ``per s``."""
    result: TermOutcome


class SloVerdict(BaseModel):
    verdict: Verdict
    exit_code: int
    terms: list[TermResult]
    reason: Optional[str]


# ---------------------------------------------------------------- one load test, one sweep


class RunIntegrity(BaseModel):
    """What the distributed Locust master recorded about the run itself (loadtest/distributed.py)."""

    incomplete: Optional[str] = None
    """Why the run ended early (a worker lost); None for a whole run. Its records are kept."""
    lost_workers: list[int] = []
    rejected_messages: dict[str, int] = {}
    """Messages refused by type: sent to the master by something that is not a worker of this run."""


class RunIdentity(BaseModel):
    """What two runs must share to be compared (compare.comparability), recorded when the run is made."""

    load: dict[str, Any]
    """The load's own fields (users or rate, lengths, duration, seed, ...): identity.LOAD_FIELDS."""
    settings: dict[str, Any]
    """How the load was sent and measured: identity.SETTING_FIELDS."""
    prompts: Optional[str]
    """sha256 of the prompts or trace file; None for synthetic prompts (the load's seed and the tokenizer fix them)."""
    tokenizer: Optional[str]
    """sha256 of the tokenizer.json that made the prompts and counted tokens; None when it was not found."""
    model: str
    """The Triton model the users called."""
    model_source: Optional[str]
    """The spec's model.source recorded in the repository's tritongen.json; None without one (--url)."""
    server: dict[str, Any] = {}
    """The served settings from tritongen.json (engine target, batch size, build limits): reported as
    what changed between two runs, never a reason they cannot be compared (that change is the release)."""
    tritongen_version: str


class RunInfo(BaseModel):
    title: str
    target: str
    """The repository served, or the URL tested."""
    started_unix: float
    mode: str
    """``open loop`` or ``closed loop``."""
    loadtest: ResolvedLoadTest
    """The load as run (workers counted, model named, prompt and tokenizer paths resolved)."""
    identity: Optional[RunIdentity] = None
    """None in results written before compare existed."""
    integrity: RunIntegrity = RunIntegrity()


class LoadTestResult(Summary):
    """results.json: the client's figures, Triton's view, both verdicts and what was run."""

    server: ServerView
    client: ClientVerdict
    run: RunInfo
    slo: Optional[SloVerdict] = None
    """None without an SLO."""

    @property
    def load_limits(self) -> list[str]:
        """Why the load generator, not the server, may have set the figures (empty: nothing says so): its client
        verdict, or a run that lost a Locust worker (less load than its identity says, that worker's requests
        missing): compare and tune judged such a run as a whole one (review19)."""
        limits = (self.client.reasons or ["client-limited"]) if self.client.client_limited else []
        return limits + ([f"run incomplete: {self.run.integrity.incomplete}"] if self.run.integrity.incomplete else [])

    @property
    def failure(self) -> Optional[str]:
        """Why the load test failed (exit 1; a sweep with no completed point too, review27): no request succeeded, or
        a Locust worker was lost. None when it completed."""
        if not self.counts.ok:
            return "no request succeeded"
        return f"run incomplete: {self.run.integrity.incomplete}" if self.run.integrity.incomplete else None

    @property
    def completed(self) -> bool:
        return self.failure is None


class LevelFigures(BaseModel):
    """A load level's figures, each with its interval and the requests behind it."""

    requests: int
    """Measured requests (warm-up excluded)."""
    met: int
    """Requests that met every objective."""
    attainment: Interval
    """Share of requests meeting every objective (Wilson score interval)."""
    misses: dict[str, int]
    """Objective (or ``error``) -> requests that missed it."""
    window_s: float
    requests_per_s: Interval
    """Completed requests per second in the level's steady part (see _rate); t interval over time slices;
    its n is the requests completed there."""
    output_tokens_per_s: Interval
    ttft_p95_ms: Optional[Interval]
    """Bootstrap intervals of the 95th percentiles over the successful requests."""
    itl_p95_ms: Optional[Interval]
    """Per-request mean inter-token time."""
    e2e_p95_ms: Optional[Interval]
    ttft_growth: Optional[float]
    """Median TTFT of the last third of the requests (by send time) over the first third's: well above 1
    means requests queued faster than the server served them (the server fell behind)."""

    @property
    def broke_first(self) -> Optional[str]:
        """The objective missed by the most requests."""
        return max(self.misses, key=lambda k: self.misses[k]) if self.misses else None


class PointStatus(StrEnum):
    """How far a sweep point got; only OK points have results."""

    OK = "ok"
    INVALID = "invalid setting"
    VALIDATION = "validation failed"
    SERVER = "server failed"
    LOAD = "load test failed"


class SweepPoint(BaseModel):
    label: str
    overrides: list[str]
    dir: str
    status: PointStatus = PointStatus.OK
    detail: str = ""
    """Why the point did not complete, or where a point measured before the sweep was run."""
    results: Optional[LoadTestResult] = None
    figures: Optional[LevelFigures] = None
    """The point's figures with their intervals and request counts (attainment of the SLO's per-request limits)."""


class BestPoint(BaseModel):
    label: str
    overrides: list[str]
    reason: str


class SweepResult(BaseModel):
    """points.json."""

    points: list[SweepPoint]
    best: Optional[BestPoint]
