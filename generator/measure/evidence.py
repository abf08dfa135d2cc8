"""What one side of a comparison rests on: its runs' figures, its requests' distributions and its identity.

`Evidence` is read from a load-test folder (one run, or ``--repeat`` runs in run-NN/), a sweep folder (its
best point) or a saved baseline file, and it *is* the baseline file (``tritongen baseline save``): small,
versioned and reviewable. What it keeps, and why:

- per run, the figures of every compared metric, the counts behind each share (errors, check failures,
  token agreement) and the client verdict: the run-to-run interval (Welch over repeated runs) and the
  Wilson/Newcombe intervals of shares need nothing more;
- pooled over runs, each latency's per-request distribution as a sketch: every value when there are at
  most 201, else its quantiles at every 0.5 %. The per-request bootstrap (the only interval one run can
  give) resamples ``n`` values from that quantile function; p50/p95/p99 fall on stored quantiles, and
  tests/test_gate.py checks the interval against the one from the exact values. Some 5 KB per latency
  instead of every request, and no prompt or answer text.

Pure: the types and the figures; baseline.py reads them from folders and files.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel

from generator.measure import intervals
from generator.measure.metrics import COMPARED, METRICS
from generator.measure.results import LoadTestResult, RunIdentity

BASELINE_FORMAT = "tritongen-baseline"
BASELINE_VERSION = 1
SKETCH_PERCENTS = tuple(i / 2 for i in range(201))
SAMPLED = ("ttft", "itl", "e2e")
"""Latencies whose per-request distribution is kept (those COMPARED reads)."""
MAX_SAMPLE = 100_000
"""Values ``Sketch.sample`` gives at most: they are built in memory, and n may come from a file (review7: a
baseline claiming 10**7 ITL values held ``compare`` for over 5 minutes). Past it the interval is that of 100,000
values of the same distribution: wider than n values would give, never narrower."""


class Sketch(BaseModel):
    """A per-request distribution in ms: every value (n ≤ 201), or quantiles at SKETCH_PERCENTS."""

    n: int
    values: list[float]

    @classmethod
    def of(cls, values: list[float]) -> "Sketch":
        import numpy as np

        ordered = sorted(values)
        kept = ordered if len(ordered) <= len(SKETCH_PERCENTS) else np.percentile(ordered, SKETCH_PERCENTS).tolist()
        return cls(n=len(ordered), values=[round(v, 3) for v in kept])

    def sample(self) -> list[float]:
        """``n`` values with this distribution: the values themselves, or the quantile function at (i + ½)/n."""
        import numpy as np

        if len(self.values) == self.n:
            return list(self.values)
        n = min(self.n, MAX_SAMPLE)
        probs = (np.arange(n) + 0.5) / n * 100
        return np.interp(probs, SKETCH_PERCENTS, self.values).tolist()


class RunFigures(BaseModel):
    """One run: each compared figure, the (events, trials) behind each share, the client verdict."""

    label: str
    figures: dict[str, Optional[float]]
    counts: dict[str, tuple[int, int]]
    requests: int
    """Successful requests the figures rest on."""
    client_limited: bool
    client_reasons: list[str] = []


class FigureSummary(BaseModel):
    """One figure over a side's runs: each run's value, the spread and both intervals."""

    metric: str
    runs: list[float]
    mean: float
    spread: Optional[float]
    """(max − min) / mean over the runs; None with one run."""
    cv: Optional[float]
    """Standard deviation / mean over the runs; None with one run."""
    run_to_run: Optional[intervals.Interval]
    """Student-t interval of the mean over runs (two runs or more)."""
    within: Optional[intervals.Interval]
    """Per-request interval of the figure over all requests pooled (bootstrap; Wilson for shares)."""
    requests: int


class Evidence(BaseModel):
    """One side of a comparison; dumped, a baseline file."""

    format: Literal["tritongen-baseline"] = BASELINE_FORMAT
    version: int = BASELINE_VERSION
    source: str
    """The folder or file it was read from."""
    identity: Optional[RunIdentity]
    runs: list[RunFigures]
    samples: dict[str, Sketch]
    """Latency key (ttft, itl, e2e) → pooled per-request ms."""
    summary: list[FigureSummary] = []
    """For people reading the file: every figure with its spread and intervals (recomputed, never read)."""

    @property
    def client_limited(self) -> list[str]:
        return [f"{r.label}: {'; '.join(r.client_reasons) or 'client-limited'}" for r in self.runs if r.client_limited]


def run_figures(label: str, result: LoadTestResult) -> RunFigures:
    counts = {}
    for name in COMPARED:
        metric = METRICS[name]
        if metric.counts and (c := metric.counts(result)):
            counts[name] = c
    return RunFigures(label=label, figures={name: METRICS[name].read(result) for name in COMPARED}, counts=counts,
                      requests=result.counts.ok, client_limited=bool(result.load_limits), client_reasons=result.load_limits)


def summarize_figures(runs: list[RunFigures], samples: dict[str, Sketch],
                      confidence: float = intervals.DEFAULT_CONFIDENCE) -> list[FigureSummary]:
    """Each compared figure over the runs: spread, run-to-run interval, pooled per-request interval."""
    import numpy as np

    out = []
    for name in COMPARED:
        metric = METRICS[name]
        values = [r.figures[name] for r in runs if r.figures.get(name) is not None]
        if not values:
            continue
        mean = float(np.mean(values))
        within = None
        if metric.kind == "percentile" and metric.latency in samples:
            p = float(metric.stat[1:])
            within = intervals.percentile(samples[metric.latency].sample(), p, confidence)
        elif metric.kind == "proportion":
            events = sum(r.counts[name][0] for r in runs if name in r.counts)
            trials = sum(r.counts[name][1] for r in runs if name in r.counts)
            within = intervals.wilson(events, trials, confidence) if trials else None
        several = len(values) > 1
        out.append(FigureSummary(
            metric=name, runs=values, mean=mean,
            spread=(max(values) - min(values)) / mean if several and mean else None,
            cv=float(np.std(values, ddof=1)) / mean if several and mean else None,
            run_to_run=intervals.across_runs(values, confidence) if several else None,
            within=within, requests=sum(r.requests for r in runs)))
    return out
