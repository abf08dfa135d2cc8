"""The metric registry: every load-test figure registered once, with its unit, direction and definition.

Statistics (which per-request values make each latency distribution), the reports and the terminal table
(rows and labels), the SLO gate (which names a term may use, their units), `compare` and the regression
gate (which figures are compared, which way is worse, how their intervals are computed) all read this
module, so a metric is added or changed in one place. Modelled on AIPerf's registry (one entry per metric
with a tag, unit and "larger is better" flag), as data rather than classes. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Iterable, Literal, Optional

from generator.errors import SpecError
from generator.measure.records import RequestRecord
from generator.measure.request_figures import RequestMetrics
from generator.measure.results import Summary

STATS = ("p50", "p90", "p95", "p99", "mean", "max")
"""Statistics of a latency distribution a metric name may end in (fields of results.Dist)."""


class Direction(StrEnum):
    LOWER = "lower is better"
    HIGHER = "higher is better"


@dataclass(frozen=True)
class LatencyMetric:
    """A per-request latency: one field of results.Latency, its values taken from each record."""

    key: str
    label: str
    definition: str
    values: Callable[[RequestRecord, RequestMetrics], Iterable[float]]
    """Nanoseconds this request contributes (none, one, or one per gap)."""
    population: Literal["ok", "measured"]
    """``ok``: requests that succeeded with text; ``measured``: every measured request (client diagnostics)."""
    shown: bool = True
    """In the terminal table and the report's latency table."""


LATENCIES: tuple[LatencyMetric, ...] = (
    LatencyMetric("ttft", "TTFT", "scheduled send → first response carrying text", lambda r, m: [m.ttft_ns], "ok"),
    LatencyMetric("itl", "ITL per gap", "time between two consecutive responses carrying text, pooled over requests",
            lambda r, m: m.gaps_ns, "ok"),
    LatencyMetric("itl_request", "ITL per request", "(E2E − TTFT) / (output tokens − 1)",
            lambda r, m: [] if m.itl_ns is None else [m.itl_ns], "ok"),
    LatencyMetric("e2e", "End-to-end", "scheduled send → last response", lambda r, m: [m.e2e_ns], "ok"),
    LatencyMetric("lateness", "Send lateness", "actual send − scheduled send (the client's own delay)",
            lambda r, m: [m.lateness_ns], "measured"),
    LatencyMetric("conn_wait", "Connection wait", "wait for a free connection (open loop)",
            lambda r, m: [r["conn_ns"]], "measured", shown=False),
)
LATENCY_BY_KEY = {lat.key: lat for lat in LATENCIES}


@dataclass(frozen=True)
class Metric:
    """One figure of a run, by the name SLO terms, gate terms and compare use (e.g. ``ttft_p95``)."""

    name: str
    label: str
    unit: Literal["ms", "fraction", "per s"]
    direction: Direction
    read: Callable[[Summary], Optional[float]]
    """The run's figure (None when the run cannot give it, e.g. ITL without streaming)."""
    kind: Literal["percentile", "rate", "proportion"]
    """How its interval is made: per-request bootstrap (percentile), a count of completed requests (rate),
    Wilson / Newcombe on events out of trials (proportion)."""
    counts: Optional[Callable[[Summary], Optional[tuple[int, int]]]] = None
    """Proportions: (events, trials)."""
    latency: Optional[str] = None
    """Percentiles: the latency key (LATENCIES) whose per-request values they are a statistic of."""
    stat: Optional[str] = None
    aliases: tuple[str, ...] = ()

    @property
    def is_fraction(self) -> bool:
        return self.unit == "fraction"


def _latency_stat(key: str, stat: str) -> Callable[[Summary], Optional[float]]:
    def read(summary: Summary) -> Optional[float]:
        block = getattr(summary.latency_ms, key)
        return None if block is None else getattr(block, stat)
    return read


def _ratio(counts: Callable[[Summary], Optional[tuple[int, int]]]) -> Callable[[Summary], Optional[float]]:
    def read(summary: Summary) -> Optional[float]:
        c = counts(summary)
        return None if not c or not c[1] else c[0] / c[1]
    return read


def _errors(s: Summary) -> Optional[tuple[int, int]]:
    return (s.counts.errors, s.counts.requests) if s.counts.requests else None


def _check_failures(s: Summary) -> Optional[tuple[int, int]]:
    return (s.checks.failed_requests, s.checks.checked) if s.checks.checked else None


def _token_agreement(s: Summary) -> Optional[tuple[int, int]]:
    a = s.tokens.agreement.get("output")
    return (a.equal, a.compared) if a and a.compared else None


def _register() -> dict[str, Metric]:
    metrics = [
        Metric(f"{lat.key}_{stat}", f"{lat.label} {stat}", "ms", Direction.LOWER, _latency_stat(lat.key, stat),
               "percentile", latency=lat.key, stat=stat)
        for lat in LATENCIES for stat in STATS
    ] + [
        Metric("output_tokens_per_s", "Output tokens/s", "per s", Direction.HIGHER,
               lambda s: s.throughput.output_tokens_per_s, "rate", aliases=("throughput",)),
        Metric("requests_per_s", "Requests/s", "per s", Direction.HIGHER, lambda s: s.throughput.requests_per_s, "rate"),
        Metric("error_rate", "Error rate", "fraction", Direction.LOWER, _ratio(_errors), "proportion", counts=_errors),
        Metric("check_failure_rate", "Streamed-output check failures", "fraction", Direction.LOWER,
               _ratio(_check_failures), "proportion", counts=_check_failures),
        Metric("token_agreement", "Token agreement (client = server count)", "fraction", Direction.HIGHER,
               _ratio(_token_agreement), "proportion", counts=_token_agreement),
    ]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _register()
_ALIASES = {alias: m.name for m in METRICS.values() for alias in m.aliases}

COMPARED = tuple(f"{key}_{stat}" for key in ("ttft", "itl", "e2e") for stat in ("p50", "p95", "p99")) + (
    "output_tokens_per_s", "error_rate", "token_agreement", "check_failure_rate")
"""What `compare` and the regression gate report, in this order."""


def known_names() -> list[str]:
    """The names a term may use, compactly (``ttft_{p50|p90|...}``), for error messages."""
    return ([f"{lat.key}_{{{'|'.join(STATS)}}}" for lat in LATENCIES]
            + [m.name + (f" ({', '.join(m.aliases)})" if m.aliases else "") for m in METRICS.values() if not m.latency])


def lookup(name: str, where: str, what: str = "metric") -> Metric:
    """The metric called ``name`` (or an alias of it); a SpecError naming ``where`` otherwise."""
    metric = METRICS.get(_ALIASES.get(name, name))
    if metric is None:
        raise SpecError(f"unknown {what} {name!r}", where=where, fix="use one of: " + ", ".join(known_names()))
    return metric
