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

Pure apart from reading the folders and files named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ValidationError

from generator.errors import ArtifactCorrupt, ArtifactMissing
from generator.measure import intervals
from generator.measure.metrics import COMPARED, LATENCY_BY_KEY, METRICS
from generator.measure.results import LoadTestResult, RunIdentity

BASELINE_FORMAT = "tritongen-baseline"
BASELINE_VERSION = 1
SKETCH_PERCENTS = tuple(i / 2 for i in range(201))
SAMPLED = ("ttft", "itl", "e2e")
"""Latencies whose per-request distribution is kept (those COMPARED reads)."""


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
        probs = (np.arange(self.n) + 0.5) / self.n * 100
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
                      requests=result.counts.ok, client_limited=result.client.client_limited,
                      client_reasons=result.client.reasons)


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


# ---------------------------------------------------------------- reading a side from disk


def _run_values(folder: Path) -> dict[str, list[float]]:
    """Per-request ms of each sampled latency, from the run's records (the definitions of metrics.LATENCIES)."""
    from generator.measure.runner import read_records
    from generator.measure.statistics import populations

    records = folder / "records.jsonl"
    if not records.is_file():
        raise ArtifactMissing(f"no records.jsonl in {folder}", where=str(folder),
                              fix="compare needs the load test's whole output folder (results.json and records.jsonl)")
    requests, _ = read_records(records)
    _, measured, ok = populations(requests)
    rows = {"ok": ok, "measured": measured}
    return {key: [v / 1e6 for r, m in rows[LATENCY_BY_KEY[key].population] for v in LATENCY_BY_KEY[key].values(r, m)]
            for key in SAMPLED}


def _read_result(folder: Path) -> LoadTestResult:
    path = folder / "results.json"
    try:
        return LoadTestResult.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise ArtifactCorrupt(f"{path} is not a tritongen load-test result: {str(exc).splitlines()[0]}",
                              where=str(path), fix="run `tritongen loadtest` again into a new folder") from None


def run_folders(folder: Path) -> list[Path]:
    """The load-test folders a path holds: itself, its run-NN/ repeats, or a sweep's best point."""
    if (folder / "results.json").is_file():
        return [folder]
    repeats = sorted(p for p in folder.glob("run-*") if (p / "results.json").is_file())
    if repeats:
        return repeats
    if (folder / "points.json").is_file():
        from generator.measure.results import SweepResult

        sweep = SweepResult.model_validate_json((folder / "points.json").read_text(encoding="utf-8"))
        best = next((p for p in sweep.points if sweep.best and p.label == sweep.best.label), None)
        if best is None:
            raise ArtifactMissing(f"the sweep in {folder} has no best point to compare", where=str(folder / "points.json"),
                                  fix="compare one point's folder instead: " + ", ".join(p.dir for p in sweep.points))
        return run_folders(folder / Path(best.dir).name)
    raise ArtifactMissing(f"{folder} holds no load-test results", where=str(folder),
                          fix="pass a `tritongen loadtest`/`sweep` output folder or a baseline file")


def from_folder(folder: Path) -> Evidence:
    folders = run_folders(folder)
    results = [_read_result(f) for f in folders]
    pooled: dict[str, list[float]] = {key: [] for key in SAMPLED}
    for f in folders:
        for key, values in _run_values(f).items():
            pooled[key].extend(values)
    runs = [run_figures(f.name, r) for f, r in zip(folders, results)]
    samples = {key: Sketch.of(v) for key, v in pooled.items() if v}
    return Evidence(source=str(folder), identity=results[0].run.identity, runs=runs, samples=samples,
                    summary=summarize_figures(runs, samples))


def from_file(path: Path) -> Evidence:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactCorrupt(f"cannot read {path}: {exc}", where=str(path),
                              fix="save it again: tritongen baseline save RUN -o FILE") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise ArtifactCorrupt(f"{path} is not a tritongen baseline", where=str(path),
                              fix="save one with: tritongen baseline save RUN -o FILE")
    if data.get("version") != BASELINE_VERSION:
        raise ArtifactCorrupt(f"{path} is baseline version {data.get('version')}; this tritongen reads "
                              f"version {BASELINE_VERSION}", where=str(path),
                              fix="save the baseline again with this tritongen from its load-test folder")
    try:
        return Evidence.model_validate(data)
    except ValidationError as exc:
        raise ArtifactCorrupt(f"{path}: {str(exc).splitlines()[0]}", where=str(path),
                              fix="save it again: tritongen baseline save RUN -o FILE") from None


def load(path: Path) -> Evidence:
    """A side of a comparison from a load-test, repeat or sweep folder, or a baseline file."""
    path = Path(path)
    if path.is_dir():
        return from_folder(path)
    if path.is_file():
        return from_file(path)
    raise ArtifactMissing(f"no such folder or file: {path}", where=str(path),
                          fix="pass a load-test output folder or a baseline file from `tritongen baseline save`")
