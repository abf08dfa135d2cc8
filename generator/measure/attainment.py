"""Per-request SLO attainment and a load level's figures (results.LevelFigures) with their intervals.

``tune`` judges a load level by the share of requests that meet every objective (GuideLLM's and AIPerf's
goodput definition), not by one percentile of the pooled run: that share has a binomial confidence
interval (Wilson), so a level measured on too few requests is seen to be undecided instead of passing by
luck. ``sweep`` reports the same figures for its fixed-load points. Pure: records in, typed figures out.

Each SLO term becomes a per-request threshold: ``ttft_p95<500ms`` reads "a request meets it when its TTFT
is under 500 ms" (the percentile is replaced by the attainment share, ``tune.attainment``); ITL terms are
judged on the request's own mean inter-token time, e2e and send lateness on the request's own figure. A
failed request meets no objective. Aggregate terms (throughputs, check failures) cannot be judged per
request and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from generator.errors import SpecError
from generator.measure.intervals import Interval, across_runs, percentile, wilson
from generator.measure.records import RequestRecord
from generator.measure.request_figures import request_metrics
from generator.measure.results import LevelFigures
from generator.measure.slo import Term

ERROR = "error"
"""The objective a failed request misses (it meets none)."""

_PER_REQUEST = {"ttft": "ttft_ms", "itl": "itl_ms", "itl_request": "itl_ms", "e2e": "e2e_ms", "lateness": "lateness_ms"}
SLICES = 5
"""Throughput's interval: the run's window cut into this many time slices (batch means), fewer for small runs."""


@dataclass(frozen=True)
class Objective:
    name: str
    """The SLO term's metric as written, e.g. ``ttft_p95``."""
    field: str
    """The RequestRow field it reads."""
    limit_ms: float
    inclusive: bool


def objectives(terms: Sequence[Term], strict: bool = True) -> list[Objective]:
    """The per-request objectives of an SLO; error_rate terms are implied (a failed request meets nothing).
    ``strict``: refuse terms that are not per-request limits (tune), else leave them out (sweep)."""
    out = []
    for term in terms:
        if term.metric.name == "error_rate":
            continue
        latency = term.metric.latency
        if latency not in _PER_REQUEST or term.op not in ("<", "<="):
            if not strict:
                continue
            raise SpecError(f"tune judges each request against the SLO; {term.text!r} is not a per-request limit",
                            where="--slo", fix='use latency upper limits, e.g. "ttft_p95<500ms,itl_p95<50ms"')
        out.append(Objective(term.metric.name, _PER_REQUEST[latency], term.limit, term.op == "<="))
    if strict and not out and not any(t.metric.name == "error_rate" for t in terms):
        raise SpecError("the SLO has no objective tune can judge", where="--slo", fix='e.g. --slo "ttft_p95<500ms"')
    return out


@dataclass(frozen=True)
class RequestRow:
    """One measured request: what the level's figures need, and which objectives it missed."""

    ok: bool
    end_s: float
    """Completion on the wall clock (seconds since the epoch), for the throughput's time slices."""
    start_s: float
    ttft_ms: Optional[float]
    itl_ms: Optional[float]
    e2e_ms: Optional[float]
    lateness_ms: float
    output_tokens: int
    misses: tuple[str, ...]


def request_rows(records: list[RequestRecord], objs: Sequence[Objective]) -> list[RequestRow]:
    """Measured requests (warm-up and cancelled ones left out), each judged against every objective."""
    rows = []
    for rec in records:
        m = request_metrics(rec)
        if m.warmup or rec["cancelled"]:
            continue
        ok = m.ok and m.ttft_ns is not None
        values = {"ttft_ms": m.ttft_ns / 1e6 if m.ttft_ns is not None else None,
                  "itl_ms": m.itl_ns / 1e6 if m.itl_ns is not None else None,
                  "e2e_ms": m.e2e_ns / 1e6 if m.e2e_ns is not None else None,
                  "lateness_ms": m.lateness_ns / 1e6}
        if not ok:
            misses = (ERROR,)
        else:
            misses = tuple(o.name for o in objs if values[o.field] is not None
                           and not (values[o.field] <= o.limit_ms if o.inclusive else values[o.field] < o.limit_ms))
        start_s = m.start_unix_ns / 1e9
        rows.append(RequestRow(ok=ok, start_s=start_s, end_s=start_s + (rec["end_ns"] - rec["sched_ns"]) / 1e9,
                               output_tokens=(m.output_tokens or 0) if ok else 0, misses=misses, **values))
    return rows


def _rate(rows: Sequence[RequestRow], weight: Callable[[RequestRow], float]) -> Interval:
    """Per-second rate of ``weight`` over the completed requests, with a t interval over time slices.

    Counted in the steady part of the level, from the first completion to the last send (before it the
    users are still starting, after it fewer remain busy), when at least 8 requests complete there; else
    from the first send to the last completion."""
    ok = [r for r in rows if r.ok]
    t0, t1 = min((r.end_s for r in ok), default=0.0), max(r.start_s for r in rows)
    steady = [r for r in ok if t0 < r.end_s <= t1]
    if len(steady) < 8:
        t0, t1 = min(r.start_s for r in rows), max((r.end_s for r in ok), default=0.0)
        steady = ok
    window = t1 - t0
    if window <= 0 or not steady:
        return Interval(estimate=0.0, low=0.0, high=0.0, confidence=0.95, n=len(ok), method="exact")
    k = max(1, min(SLICES, len(steady) // 8))
    slices = [0.0] * k
    for r in steady:
        slices[min(k - 1, int((r.end_s - t0) / window * k))] += weight(r)
    interval = across_runs([s / (window / k) for s in slices])
    return interval.model_copy(update={"low": max(0.0, interval.low), "n": len(steady),  # a rate is never negative
                                       "method": f"t over {k} time slices" if k > 1 else "exact"})


def _p95(values: list[float]) -> Optional[Interval]:
    return percentile(values, 95) if values else None


def attainment(rows: Sequence[RequestRow]) -> Interval:
    """The share of requests that met every objective, with its Wilson interval."""
    if not rows:
        raise ValueError("a level needs at least one measured request")
    return wilson(sum(1 for r in rows if not r.misses), len(rows))


def ttft_growth(rows: Sequence[RequestRow]) -> Optional[float]:
    """Median TTFT of the last third of the requests by send time over the first third's (see LevelFigures)."""
    import numpy as np

    by_start = sorted((r.start_s, r.ttft_ms) for r in rows if r.ok and r.ttft_ms is not None)
    if len(by_start) < 9:
        return None
    thirds = np.array_split(np.array([t for _, t in by_start]), 3)
    first = float(np.median(thirds[0]))
    return float(np.median(thirds[-1])) / first if first > 0 else None


def level_figures(rows: Sequence[RequestRow]) -> LevelFigures:
    """The figures of one level from its measured requests (several rounds may be pooled)."""
    share = attainment(rows)
    ok = [r for r in rows if r.ok]
    t0 = min(r.start_s for r in rows)
    t1 = max(r.end_s for r in ok) if ok else t0
    misses: dict[str, int] = {}
    for r in rows:
        for name in r.misses:
            misses[name] = misses.get(name, 0) + 1
    return LevelFigures(
        requests=len(rows), met=share.n - sum(1 for r in rows if r.misses), attainment=share, misses=misses,
        window_s=t1 - t0,
        requests_per_s=_rate(rows, lambda r: 1.0),
        output_tokens_per_s=_rate(rows, lambda r: float(r.output_tokens)),
        ttft_p95_ms=_p95([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        itl_p95_ms=_p95([r.itl_ms for r in ok if r.itl_ms is not None]),
        e2e_p95_ms=_p95([r.e2e_ms for r in ok if r.e2e_ms is not None]),
        ttft_growth=ttft_growth(rows),
    )
