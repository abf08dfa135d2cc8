"""``tritongen sweep``: the same seeded load against each combination of serving settings.

For every point: apply its overrides to the spec, render the repository, validate it, start the server,
warm up and run the load test (generator.measure.runner), stop. A point that cannot run (invalid setting,
validation errors, a server that does not load, e.g. a KV cache too small for the engine) is reported
with its reason, never dropped. The best point is the one with the highest output-token throughput
among those that pass the SLO (without an SLO: among those that completed and were not client-limited).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from generator.errors import (
    ArtifactCorrupt,
    ArtifactMissing,
    CheckFailed,
    PlanRefused,
    ServerError,
    SpecError,
    ToolMissing,
    TritongenError,
)
from generator.measure.attainment import level_figures, objectives, request_rows
from generator.measure.records import RequestRecord
from generator.measure.results import BestPoint, LevelFigures, PointStatus, SweepPoint, SweepResult, Verdict
from generator.measure.slo import parse_slo
from generator.spec import Spec, parse_override, with_overrides

if TYPE_CHECKING:
    from generator.measure.runner import LoadResult


MAX_POINTS = 1000
"""Settings a sweep or tune grid may hold (review7: 7 axes of 10 values, 10**7 settings, were all built and
validated before anything started: minutes of CPU and gigabytes, never a measurement)."""


ONE_VALUE_LISTS = frozenset({"loadtest.slo", "gate.max_change"})
"""Fields whose one value is a comma-separated list (an SLO's terms, the gate's limits): always fixed, never an axis
(review20: ``--set loadtest.slo=ttft_p95<1ms,error_rate<1%`` became two settings judged by one term each, the
sweep's own spec had no SLO, and it named a best point and exited 0 with every point failing the SLO given)."""


@dataclass(frozen=True)
class SweepPlan:
    fixed: list[str]
    """Overrides applied to every point."""
    axes: list[tuple[str, list[str]]]
    """Swept fields and their values, in the order given."""

    @property
    def points(self) -> list[list[str]]:
        """Every combination, as --set overrides (fixed ones first), first axis varying slowest."""
        combos = itertools.product(*[[f"{key}={v}" for v in values] for key, values in self.axes])
        return [self.fixed + list(combo) for combo in combos]

    def label(self, overrides: list[str]) -> str:
        swept = overrides[len(self.fixed):]
        return ", ".join(o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1] for o in swept) or "spec"


def plan_sweep(sets: list[str], need_axis: bool = True) -> SweepPlan:
    """``--set a.b=1,4,16`` makes an axis; ``--set a.b=1`` (no comma, or a YAML list, or a field of
    ``ONE_VALUE_LISTS``) a fixed override.
    Without an axis the plan is the one setting (``need_axis=False``, as tune allows) or an error."""
    fixed, axes = [], []
    for item in sets:
        keys, _ = parse_override(item)  # validates KEY=VALUE
        key, raw = item.split("=", 1)
        raw = raw.strip()
        if "," in raw and not raw.startswith(("[", "{")) and ".".join(keys) not in ONE_VALUE_LISTS:
            values = [v.strip() for v in raw.split(",")]
            if any(not v for v in values):
                raise SpecError(f"empty value in {item!r}", where="--set", fix="e.g. --set serving.max_batch_size=1,4,16")
            if len(set(values)) != len(values):  # review19: two settings of one label, compare took either
                raise SpecError(f"a value given twice in {item!r}", where="--set", fix="give each value once")
            axes.append((".".join(keys), values))
        else:
            fixed.append(item)
    swept = [key for key, _ in axes]
    if len(set(swept)) != len(swept):  # the last one served, both shown in every label
        raise SpecError(f"{sorted(k for k in swept if swept.count(k) > 1)[0]} is swept twice", where="--set",
                        fix="give the field one --set with all its values")
    count = math.prod(len(values) for _, values in axes)
    if count > MAX_POINTS:
        raise SpecError(f"{count:,} combinations of the --set values; at most {MAX_POINTS:,} are measured (each is a "
                        "server start and a load test)", where="--set", fix="give fewer fields or fewer values, "
                        "or split the grid into several runs")
    if not axes and need_axis:
        raise SpecError("nothing to sweep", where="--set", fix="give at least one field several values, e.g. "
                        "--set serving.max_batch_size=1,4,16")
    return SweepPlan(fixed, axes)


def best_point(points: list[SweepPoint], with_slo: bool) -> Optional[BestPoint]:
    """Highest output tokens/s among points that pass the SLO (or, without one, completed cleanly)."""
    def eligible(p: SweepPoint) -> bool:
        r = p.results
        if p.status is not PointStatus.OK or r is None or r.load_limits:  # client-limited, or a worker lost
            return False
        if not r.throughput.output_tokens_per_s:
            return False
        if with_slo:
            return r.slo is not None and r.slo.verdict is Verdict.PASS
        return not r.error_rate

    candidates = [p for p in points if eligible(p)]
    if not candidates:
        return None
    best = max(candidates, key=lambda p: p.results.throughput.output_tokens_per_s)
    why = "passes the SLO" if with_slo else "no errors, load generator kept up"
    tps = best.results.throughput.output_tokens_per_s
    lt = best.results.run.loadtest
    load = f"{lt.request_rate:g} requests/s" if lt.request_rate is not None else f"{lt.users} users"
    n = best.figures.requests if best.figures else best.results.counts.requests
    return BestPoint(label=best.label, overrides=best.overrides,
                     reason=f"{why}; highest output throughput, {tps:.1f} tokens/s over {n} requests; best at this "
                            f"load only ({load}), not the load it could sustain: tritongen tune finds that")


def prepare_point(spec: Spec, overrides: list[str], label: str, out_dir: Path, gpu_visible: bool,
                  progress: Callable[[str], None]) -> tuple[Spec, Path]:
    """The point's spec, rendered and validated into OUT/repo; each step raises its own TritongenError subclass."""
    from generator.repo.problems import failing
    from generator.repo.render import render_repository
    from generator.repo.validate import validate_repository

    pspec = with_overrides(spec, overrides)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress(f"{label}: rendering")
    repo = render_repository(pspec, out_dir / "repo", force=True, gpu_visible=gpu_visible)
    errors = failing(validate_repository(repo, pspec))
    if errors:
        raise CheckFailed("; ".join(p.message for p in errors[:3]), where=str(repo),
                          fix=f"tritongen validate {repo} shows each problem with its fix")
    return pspec, repo


def failure_status(exc: TritongenError) -> tuple[PointStatus, str]:
    """How far a point got, from the class of the error that stopped it, and why."""
    if isinstance(exc, (SpecError, PlanRefused, ArtifactMissing, ArtifactCorrupt)):  # the setting cannot be served
        return PointStatus.INVALID, exc.message
    if isinstance(exc, CheckFailed):
        return PointStatus.VALIDATION, exc.message
    if isinstance(exc, (ServerError, ToolMissing)):  # first line only: the rest is the server log's tail
        return PointStatus.SERVER, exc.message.splitlines()[0]
    return PointStatus.LOAD, exc.message.splitlines()[0]  # LoadTestError, or anything else while loading


def _measure_point(spec: Spec, overrides: list[str], label: str, out_dir: Path, gpu_visible: bool,
                   progress: Callable[[str], None]) -> LoadResult:
    from generator.measure.runner import run_loadtest
    from generator.serve.server import TritonServer

    pspec, repo = prepare_point(spec, overrides, label, out_dir, gpu_visible, progress)
    progress(f"{label}: starting the server")
    with TritonServer(repo, log_file=out_dir / "triton.log") as server:
        progress(f"{label}: load test")
        return run_loadtest(pspec, out_dir, url=f"http://{server.http_url}", grpc_url=server.grpc_url,
                            metrics_url=server.metrics_url, title=f"Sweep point {label}",
                            admin_key=server.admin_key, manifest_dir=repo)


def run_point(spec: Spec, overrides: list[str], label: str, out_dir: Path, gpu_visible: bool,
              progress: Callable[[str], None]) -> SweepPoint:
    """One point, start to finish; a failure becomes the point's status (by its error class) and detail."""
    point = SweepPoint(label=label, overrides=overrides, dir=str(out_dir))
    try:
        run = _measure_point(spec, overrides, label, out_dir, gpu_visible, progress)
    except TritongenError as exc:
        status, detail = failure_status(exc)
        return point.model_copy(update={"status": status, "detail": detail})
    return measured_point(point, run, spec.loadtest.slo)


def measured_point(point: SweepPoint, run: LoadResult, slo_text: Optional[str]) -> SweepPoint:
    """``point`` completed by ``run``: its results and its figures with intervals."""
    return point.model_copy(update={"results": run.results, "figures": point_figures(run.requests, slo_text)})


def point_figures(requests: list[RequestRecord], slo_text: Optional[str]) -> Optional[LevelFigures]:
    """A completed point's figures with intervals, from its records (the SLO's per-request limits judged)."""
    rows = request_rows(requests, objectives(parse_slo(slo_text), strict=False) if slo_text else [])
    return level_figures(rows) if rows else None


def run_sweep(spec: Spec, plan: SweepPlan, out_dir: Path, *, gpu_visible: bool = False,
              progress: Callable[[str], None] = lambda _msg: None,
              measured: Optional[dict[str, LoadResult]] = None) -> SweepResult:
    """Run every point into OUT/points/<n>/ and write the sweep report into OUT.

    ``measured``: runs already made of some points (by label), with the same settings and load, taken as they are
    instead of serving those settings again (the demo's load test of its served repository); their folders are
    copied to OUT/points/<n>/ as the other points' are, where ``compare`` and ``baseline save`` of the sweep read
    its best point (review14: they looked for the demo's load test there and named a folder that never was)."""
    import shutil

    from generator.measure.report_sweep import write_sweep_report

    spec = with_overrides(spec, plan.fixed)  # review19: an SLO fixed by --set judged every point, but not the best
    points = []
    for i, overrides in enumerate(plan.points):
        label = plan.label(overrides)
        progress(f"point {i + 1}/{len(plan.points)}: {label}")
        folder = out_dir / "points" / str(i)
        if label in (measured or {}):
            run = measured[label]
            shutil.copytree(run.out_dir, folder, dirs_exist_ok=True)
            before = SweepPoint(label=label, overrides=overrides, dir=str(folder),
                                detail=f"measured before the sweep, with the same settings and load: {run.out_dir}")
            points.append(measured_point(before, run, spec.loadtest.slo))
            continue
        points.append(run_point(spec, overrides, label, folder, gpu_visible, progress))
    result = SweepResult(points=points, best=best_point(points, with_slo=bool(spec.loadtest.slo)))
    write_sweep_report(out_dir, "tritongen sweep", result, spec.loadtest.slo)
    return result
