"""Reading one side of a comparison from disk: a load-test, repeat or sweep folder, or a baseline file.

What a side holds and why is in evidence.py; this is the edge that reads results.json, records.jsonl,
points.json and baseline files, and turns each error into one that names the file and its fix.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, TypeVar

from pydantic import BaseModel, ValidationError

from generator.errors import ArtifactCorrupt, ArtifactMissing, SpecError
from generator.fsutil import read_json_object, read_text_bounded
from generator.measure.evidence import (
    BASELINE_FORMAT, BASELINE_VERSION, SAMPLED, SKETCH_PERCENTS, Evidence, RunFigures, Sketch, run_figures, summarize_figures,
)
from generator.measure.metrics import LATENCY_BY_KEY, METRICS
from generator.measure.records import read_records
from generator.measure.results import LoadTestResult

_T = TypeVar("_T", bound=BaseModel)


def _run_values(folder: Path) -> dict[str, list[float]]:
    """Per-request ms of each sampled latency, from the run's records (the definitions of metrics.LATENCIES)."""
    from generator.measure.statistics import populations

    records = folder / "records.jsonl"
    if not records.is_file():
        raise ArtifactMissing(f"no records.jsonl in {folder}", where=str(folder),
                              fix="compare needs the load test's whole output folder (results.json and records.jsonl)")
    requests = read_records(records).requests
    _, measured, ok = populations(requests)
    rows = {"ok": ok, "measured": measured}
    return {key: [v / 1e6 for r, m in rows[LATENCY_BY_KEY[key].population] for v in LATENCY_BY_KEY[key].values(r, m)]
            for key in SAMPLED}


def _read_typed(path: Path, kind: type[_T], what: str, fix: str) -> _T:
    """One results file as its type: a file that is not one (not a regular file, too big, not UTF-8, not JSON,
    nested past reading, the wrong fields) is ArtifactCorrupt naming it, never a traceback."""
    try:
        return kind.model_validate_json(read_text_bounded(path, fix=fix))
    except (ValidationError, ValueError) as exc:
        raise ArtifactCorrupt(f"{path} is not {what}: {str(exc).splitlines()[0]}", where=str(path), fix=fix) from None


def _read_result(folder: Path) -> LoadTestResult:
    return _read_typed(folder / "results.json", LoadTestResult, "a tritongen load-test result",
                       "run `tritongen loadtest` again into a new folder")


def run_folders(folder: Path) -> list[Path]:
    """The load-test folders a path holds: itself, its run-NN/ repeats, a sweep's best point, or a tune's
    winner at its goodput level."""
    if (folder / "results.json").is_file():
        return [folder]
    repeats = sorted(p for p in folder.glob("run-*") if p.is_dir())
    unfinished = [p for p in repeats if not (p / "results.json").is_file()]
    if unfinished:  # review24: a repeat that failed on a run keeps its folder, which compared as a shorter repeat
        raise ArtifactMissing(f"{unfinished[0]} has no results.json: that run of the repeat did not finish (tritongen "
                              "loadtest failed on it, its logs are there), so the repeat is incomplete",
                              where=str(unfinished[0]), fix="run the repeat again into a new folder")
    if repeats:
        return repeats
    if (folder / "points.json").is_file():
        from generator.measure.results import SweepResult

        sweep = _read_typed(folder / "points.json", SweepResult, "a tritongen sweep result",
                            "run `tritongen sweep` again into a new folder")
        best = next((p for p in sweep.points if sweep.best and p.label == sweep.best.label), None)
        if best is None:
            raise ArtifactMissing(f"the sweep in {folder} has no best point to compare", where=str(folder / "points.json"),
                                  fix=f"compare one point's folder instead, e.g. {folder / 'points' / '0'}")
        return run_folders(_named_folder(folder / "points", best.dir, folder / "points.json"))
    if (folder / "tune.json").is_file():
        return _tune_goodput_runs(folder)
    raise ArtifactMissing(f"{folder} holds no load-test results", where=str(folder),
                          fix="pass a `tritongen loadtest`/`sweep`/`tune` output folder or a baseline file")


def _named_folder(parent: Path, recorded: str, record: Path) -> Path:
    """The folder in ``parent`` a results file names by the last part of its recorded path (the run's folder was
    renamed at the end); one that names no folder there (``..`` recursed until the path was too long) is refused."""
    name = Path(recorded).name
    if name in ("", ".", ".."):
        raise ArtifactCorrupt(f"{record} names {recorded!r} as its best run's folder, which is no folder in {parent}",
                              where=str(record), fix="compare the folder as its tritongen command wrote it")
    return parent / name


def _tune_goodput_runs(folder: Path) -> list[Path]:
    """A tune's winner at its goodput level: every round measured there is one run."""
    from generator.measure.tune_results import TuneResult

    tune = _read_typed(folder / "tune.json", TuneResult, "a tritongen tune result", "run `tritongen tune` again into a new folder")
    best = next((s for s in tune.settings if tune.best and s.label == tune.best.label and s.goodput), None)
    if best is None:
        raise ArtifactMissing(f"the tune in {folder} found no setting that met the SLO", where=str(folder / "tune.json"),
                              fix="compare a load-test folder instead, or tune with a looser --slo")
    levels = _named_folder(folder / "settings", best.dir, folder / "tune.json")  # settings/N (absolute before)
    rounds = sorted(p for p in (levels / "levels").glob(f"{best.goodput.load:g}-*") if (p / "results.json").is_file())
    if not rounds:
        raise ArtifactMissing(f"the rounds of {best.label} at load {best.goodput.load:g} are not in {levels}",
                              where=str(levels), fix="compare the tune folder as written by tritongen tune")
    return rounds


def from_folder(folder: Path) -> Evidence:
    folders = run_folders(folder)
    results = [_read_result(f) for f in folders]
    pooled: dict[str, list[float]] = {key: [] for key in SAMPLED}
    for f in folders:
        for key, values in _run_values(f).items():
            pooled[key].extend(values)
    runs = [run_figures(f.name, r) for f, r in zip(folders, results)]
    for f, run in zip(folders, runs):
        problem = _impossible_counts(run)
        if problem:
            raise ArtifactCorrupt(problem, where=str(f / "results.json"), fix="run `tritongen loadtest` again into a new folder")
    samples = {key: Sketch.of(v) for key, v in pooled.items() if v}
    return Evidence(source=str(folder), identity=results[0].run.identity, runs=runs, samples=samples,
                    summary=summarize_figures(runs, samples))


def from_file(path: Path) -> Evidence:
    data = read_json_object(path, fix="save it again: tritongen baseline save RUN -o FILE")
    if data.get("format") != BASELINE_FORMAT:
        raise ArtifactCorrupt(f"{path} is not a tritongen baseline", where=str(path),
                              fix="save one with: tritongen baseline save RUN -o FILE")
    if data.get("version") != BASELINE_VERSION:
        raise ArtifactCorrupt(f"{path} is baseline version {data.get('version')}; this tritongen reads "
                              f"version {BASELINE_VERSION}", where=str(path),
                              fix="save the baseline again with this tritongen from its load-test folder")
    try:
        evidence = Evidence.model_validate(data)
    except ValidationError as exc:
        raise ArtifactCorrupt(f"{path}: {str(exc).splitlines()[0]}", where=str(path),
                              fix="save it again: tritongen baseline save RUN -o FILE") from None
    problem = _implausible(evidence)
    if problem:
        raise ArtifactCorrupt(problem, where=str(path), fix="save it again: tritongen baseline save RUN -o FILE")
    return evidence


def _implausible(evidence: Evidence) -> Optional[str]:
    """What no saved baseline holds (review7: negative or inverted counts and NaN figures were tracebacks in
    the interval code; a sketch's values not matching its n, an error in numpy)."""
    for key, sketch in evidence.samples.items():
        if sketch.n < 1 or len(sketch.values) != (sketch.n if sketch.n <= len(SKETCH_PERCENTS) else len(SKETCH_PERCENTS)):
            return f"samples.{key} holds {len(sketch.values)} values for n = {sketch.n}"
        if not all(math.isfinite(v) for v in sketch.values):
            return f"samples.{key} holds a value that is not a finite number"
    for run in evidence.runs:
        problem = _impossible_counts(run)
        if problem:
            return problem
        if any(v is not None and not math.isfinite(v) for v in run.figures.values()):
            return f"run {run.label!r} has a figure that is not a finite number"
        bare = [k for k, v in run.figures.items() if v is not None and k in METRICS and METRICS[k].kind == "proportion"
                and run.counts.get(k, (0, 0))[1] < 1]  # the interval of a share reads its counts (review19: a traceback)
        if bare:
            return f"run {run.label!r} has a share ({', '.join(bare)}) without the counts behind it"
    return None


def _impossible_counts(run: RunFigures) -> Optional[str]:
    """Counts no run has (a results.json with -1 errors or requests was a traceback in the Wilson interval)."""
    if run.requests < 0 or any(not 0 <= events <= trials for events, trials in run.counts.values()):
        return f"run {run.label!r} has negative counts or more events than trials"
    return None


def load(path: Path) -> Evidence:
    """A side of a comparison from a load-test, repeat or sweep folder, or a baseline file."""
    path = Path(path)
    if path.is_dir():
        return from_folder(path)
    if path.is_file():
        return from_file(path)
    raise ArtifactMissing(f"no such folder or file: {path}", where=str(path),
                          fix="pass a load-test output folder or a baseline file from `tritongen baseline save`")


def load_baseline(path: Path) -> Evidence:
    """The side a candidate is compared *with* (``baseline save``, ``compare``'s first side, ``--baseline``): as
    ``load``, refused when a run of it had no successful request (review28: saved from a run whose every request
    failed, its error rate of 100% passed a candidate with 40% errors through ``--gate error_rate:+1%``, exit 0)."""
    ev = load(path)
    failed = [run.label for run in ev.runs if not run.requests]
    if failed:
        raise SpecError(f"{path} holds a run in which no request succeeded ({', '.join(failed)}): as a baseline it "
                        "would pass any candidate that fails less", where=str(path),
                        fix="save the baseline from a load test that succeeded: tritongen baseline save RUN -o FILE")
    return ev
