"""Is the candidate different from the baseline, by how much, and is the difference real or noise?

Per compared metric (metrics.COMPARED): both figures, the change with its confidence interval, and a
verdict: *better* or *worse* when the whole interval lies on one side of no change, *no detectable
change* when it straddles it, *not comparable* when the runs differ in what was measured (load, prompts,
tokenizer, model, load-test settings, tritongen version: the reason says which), *inconclusive* when the
load generator limited a run on either side (it, not the server, may have set the figures).

The interval, by what each side holds:
- two runs or more on both sides: run-to-run, Welch's t over the runs' figures (on their logarithms for
  the relative change), which includes everything that moves between runs on this machine;
- otherwise, request-to-request only: a per-request bootstrap of the percentile (pooled requests), a
  Poisson count interval for throughput. One run cannot show run-to-run noise, so these intervals are too
  narrow for a gate on a noisy machine; the comparison says so.
- shares (error rate, check failures, token agreement): Newcombe's interval of the difference, on the
  pooled counts, in percentage points.
Pure: two Evidence in, a Comparison out.
"""

from __future__ import annotations

import math
import sys
from pathlib import PurePath
from enum import StrEnum
from typing import Optional

from pydantic import BaseModel

from generator.measure import intervals
from generator.measure.evidence import Evidence
from generator.measure.identity import LOAD_FIELDS, SETTING_FIELDS
from generator.measure.metrics import COMPARED, METRICS, Direction, Metric


class Change(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    NONE = "no detectable change"
    NOT_COMPARABLE = "not comparable"
    INCONCLUSIVE = "inconclusive"


class MetricComparison(BaseModel):
    metric: str
    label: str
    unit: str
    direction: Direction
    baseline: Optional[float]
    candidate: Optional[float]
    change: Optional[intervals.Interval]
    """Relative change (0.10 = 10 % higher) for latencies and throughput; the difference of the shares
    (0.01 = one percentage point) for rates."""
    difference: Optional[intervals.Interval]
    """candidate − baseline in the metric's unit."""
    relative: bool
    runs: tuple[int, int]
    """Runs on each side (baseline, candidate) that carry the figure: fewer than the side's runs when a run
    measured none (every request failed); the interval is run-to-run only with two or more on both."""
    method: str
    verdict: Change
    measured: Change
    """What the interval alone says (better, worse, no detectable change), before ``verdict`` is overridden
    by runs that cannot be compared or a client-limited run; kept so a reader sees what the data showed."""


class Comparison(BaseModel):
    baseline: str
    candidate: str
    confidence: float
    comparable: bool
    reasons: list[str]
    """Why the runs cannot be compared (empty when they can)."""
    client_limited: list[str]
    """Runs on either side where the load generator was the limit."""
    server_changes: list[str]
    """Served settings that differ (what the release changed): information, not a reason."""
    runs: tuple[int, int]
    notes: list[str]
    metrics: list[MetricComparison]

    def get(self, name: str) -> MetricComparison:
        return next(m for m in self.metrics if m.metric == name)


# ---------------------------------------------------------------- comparability


def _diff_fields(label: str, a: dict, b: dict, fields) -> list[str]:
    changed = [f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in fields if a.get(k) != b.get(k)]
    return [f"different {label}: " + ", ".join(changed)] if changed else []


def _model_name(source: str) -> str:
    """A Hub id as it is; a local folder by its name, since the same model sits in other folders elsewhere."""
    return PurePath(source).name if source.startswith(("/", ".", "~")) else source


def comparability(base: Evidence, cand: Evidence) -> tuple[list[str], list[str]]:
    """(reasons the two cannot be compared, served settings that changed)."""
    a, b = base.identity, cand.identity
    missing = [side for side, ev in (("baseline", base), ("candidate", cand)) if ev.identity is None]
    if a is None or b is None:
        return [f"no recorded run identity in the {' and '.join(missing)} (results.json written before "
                "compare existed): run the load test again"], []
    reasons = _diff_fields("load", a.load, b.load, LOAD_FIELDS)
    reasons += _diff_fields("load-test settings", a.settings, b.settings, SETTING_FIELDS)
    if a.prompts != b.prompts:
        reasons.append("different prompt set: " + ("prompts file changed" if a.prompts and b.prompts else
                       "one side used a prompts file, the other synthetic prompts")
                       + f" (sha256 {str(a.prompts)[:12]} → {str(b.prompts)[:12]})")
    if a.tokenizer != b.tokenizer:
        reasons.append(f"different tokenizer (tokenizer.json sha256 {str(a.tokenizer)[:12]} → {str(b.tokenizer)[:12]})")
    if a.model != b.model:
        reasons.append(f"different model called: {a.model!r} → {b.model!r}")
    if a.model_source and b.model_source and _model_name(a.model_source) != _model_name(b.model_source):
        reasons.append(f"different model: {a.model_source!r} → {b.model_source!r}")
    if a.tritongen_version != b.tritongen_version:
        reasons.append(f"different tritongen version: {a.tritongen_version} → {b.tritongen_version} "
                       "(it measures; save the baseline again with the new version)")
    changes = [f"{k}: {a.server.get(k)!r} → {b.server.get(k)!r}"
               for k in sorted(set(a.server) | set(b.server)) if a.server.get(k) != b.server.get(k)]
    return reasons, changes


# ---------------------------------------------------------------- one metric


def _values(ev: Evidence, name: str) -> list[float]:
    return [r.figures[name] for r in ev.runs if r.figures.get(name) is not None]


def _pooled_counts(ev: Evidence, name: str) -> Optional[tuple[int, int]]:
    rows = [r.counts[name] for r in ev.runs if name in r.counts]
    return (sum(e for e, _ in rows), sum(n for _, n in rows)) if rows else None


_MAX_LOG = math.log(sys.float_info.max)


def _relative(log_ratio: float) -> float:
    """The relative change a log ratio means; a bound beyond what a float holds (the very wide interval of a
    few noisy runs at a high confidence) reads as the largest change a float holds, not an overflow."""
    return math.expm1(min(log_ratio, _MAX_LOG))


def _run_to_run(b: list[float], c: list[float],
                confidence: float) -> Optional[tuple[intervals.Interval, intervals.Interval, str]]:
    """(difference, relative change, method) from run-to-run variation, or None when the baseline is 0."""
    difference = intervals.welch(b, c, confidence)
    mean_b = sum(b) / len(b)
    if min(b + c) > 0:
        logs = intervals.welch([math.log(v) for v in b], [math.log(v) for v in c], confidence)
        change = logs.model_copy(update={k: _relative(getattr(logs, k)) for k in ("estimate", "low", "high")})
    elif mean_b == 0:  # every run's figure 0 (e.g. every token gap read in one piece): no relative change
        return None
    else:
        change = difference.model_copy(update={k: getattr(difference, k) / mean_b for k in ("estimate", "low", "high")})
    return difference, change, f"run-to-run Welch ({len(b)} vs {len(c)} runs)"


def _per_request(metric: Metric, base: Evidence, cand: Evidence, b: list[float],
                 confidence: float) -> Optional[tuple[intervals.Interval, intervals.Interval, str]]:
    """(difference, relative change, method) from request-to-request variation, or None if it cannot be had."""
    if metric.kind == "percentile" and metric.latency in base.samples and metric.latency in cand.samples:
        p = float(metric.stat[1:])
        sb, sc = base.samples[metric.latency], cand.samples[metric.latency]
        try:
            difference, ratio = intervals.percentile_change(sb.sample(), sc.sample(), p, confidence)
        except ValueError:  # the baseline's percentile is 0 (e.g. every token gap read in one piece): no ratio
            return None
        return difference, _minus_one(ratio), f"per-request bootstrap ({sb.n} vs {sc.n} values)"
    if metric.kind == "rate":
        nb, nc = sum(r.requests for r in base.runs), sum(r.requests for r in cand.runs)
        vb, vc = sum(b) / len(b), sum(_values(cand, metric.name)) / len(_values(cand, metric.name))
        if min(nb, nc, vb, vc) <= 0:
            return None
        ratio = intervals.rate_ratio((vb, nb), (vc, nc), confidence)
        difference = ratio.model_copy(update={k: (getattr(ratio, k) - 1) * vb for k in ("estimate", "low", "high")})
        return difference, _minus_one(ratio), f"request count ({nb} vs {nc} requests)"
    return None


def _minus_one(ratio: intervals.Interval) -> intervals.Interval:
    return ratio.model_copy(update={k: getattr(ratio, k) - 1 for k in ("estimate", "low", "high")})


def _verdict(metric: Metric, change: intervals.Interval) -> Change:
    worse_up = metric.direction is Direction.LOWER
    if change.low > 0:
        return Change.WORSE if worse_up else Change.BETTER
    if change.high < 0:
        return Change.BETTER if worse_up else Change.WORSE
    return Change.NONE


def compare_metric(name: str, base: Evidence, cand: Evidence, blocked: Optional[Change],
                   confidence: float) -> MetricComparison:
    """One metric: figures, intervals and verdict; ``blocked`` (not comparable / inconclusive) overrides it."""
    metric = METRICS[name]
    b, c = _values(base, name), _values(cand, name)
    row = dict(metric=name, label=metric.label, unit=metric.unit, direction=metric.direction,
               baseline=sum(b) / len(b) if b else None, candidate=sum(c) / len(c) if c else None,
               relative=metric.kind != "proportion", runs=(len(b), len(c)))
    if not b or not c:
        return MetricComparison(**row, change=None, difference=None, method="not measured on both sides",
                                verdict=Change.NOT_COMPARABLE, measured=Change.NOT_COMPARABLE)
    if metric.kind == "proportion":
        cb, cc = _pooled_counts(base, name), _pooled_counts(cand, name)
        row["baseline"], row["candidate"] = cb[0] / cb[1], cc[0] / cc[1]
        difference = intervals.newcombe(cb, cc, confidence)
        change, method = difference, f"Newcombe ({cb[1]} vs {cc[1]} trials, pooled)"
    else:
        repeated = len(b) >= 2 and len(c) >= 2
        got = _run_to_run(b, c, confidence) if repeated else _per_request(metric, base, cand, b, confidence)
        if got is None:
            return MetricComparison(**row, change=None, difference=None, method="no interval",
                                    verdict=Change.NOT_COMPARABLE, measured=Change.NOT_COMPARABLE)
        difference, change, method = got
    measured = _verdict(metric, change)
    return MetricComparison(**row, change=change, difference=difference, method=method,
                            verdict=blocked or measured, measured=measured)


def compare(base: Evidence, cand: Evidence, confidence: float = intervals.DEFAULT_CONFIDENCE) -> Comparison:
    reasons, server_changes = comparability(base, cand)
    limited = [f"baseline {x}" for x in base.client_limited] + [f"candidate {x}" for x in cand.client_limited]
    blocked = Change.NOT_COMPARABLE if reasons else (Change.INCONCLUSIVE if limited else None)
    notes = [f"{len(COMPARED)} metrics, each at {confidence:.0%}: when nothing changed, about "
             f"{len(COMPARED) * (1 - confidence):.1f} of them still read better or worse by chance; gate on the "
             "few that matter (--gate), whose verdicts need the interval beyond a limit"]
    if min(len(base.runs), len(cand.runs)) < 2:
        notes.append("one run on a side: latency and throughput intervals cover request-to-request variation "
                     "only, not the run-to-run spread of this machine (docs/benchmarks.md); repeat the runs "
                     "(--repeat N) before gating a release on them")
    return Comparison(
        baseline=base.source, candidate=cand.source, confidence=confidence, comparable=not reasons, reasons=reasons,
        client_limited=limited, server_changes=server_changes, runs=(len(base.runs), len(cand.runs)), notes=notes,
        metrics=[compare_metric(name, base, cand, blocked, confidence) for name in COMPARED],
    )
