"""Sweeps: --set lists become a grid of points; each point is rendered, validated, served and loaded with
the same seeded load; points that cannot run are reported with their reason; the best is picked."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.errors import TritongenError
from generator.measure.results import (
    ClientVerdict,
    LoadTestResult,
    MetricsSummary,
    PointStatus,
    RunInfo,
    ServerView,
    SloVerdict,
    SweepPoint,
    SweepResult,
    Verdict,
)
from generator.measure.statistics import summarize
from generator.measure.sweep import MAX_POINTS, best_point, plan_sweep, run_sweep
from generator.spec import ResolvedLoadTest


def test_comma_lists_are_axes_and_single_values_are_fixed():
    plan = plan_sweep(["serving.max_batch_size=1,4", "loadtest.users=8", "serving.enable_chunked_context=true,false",
                       "quantization.exclude_modules=[lm_head, embed]"])
    assert plan.fixed == ["loadtest.users=8", "quantization.exclude_modules=[lm_head, embed]"]
    assert plan.axes == [("serving.max_batch_size", ["1", "4"]), ("serving.enable_chunked_context", ["true", "false"])]
    assert len(plan.points) == 4
    assert plan.points[1] == plan.fixed + ["serving.max_batch_size=1", "serving.enable_chunked_context=false"]
    assert plan.label(plan.points[1]) == "max_batch_size=1, enable_chunked_context=false"


@pytest.mark.parametrize("sets, message", [([], "nothing to sweep"), (["serving.max_batch_size=1,,4"], "empty value"),
                                           (["serving.max_batch_size"], "not KEY=VALUE"),
                                           (["serving.max_batch_size=4,8,4"], "given twice"),
                                           (["serving.max_batch_size=1,2", "serving..max_batch_size=4,8"], "swept twice")])
def test_bad_sweeps_are_user_errors(sets, message):
    with pytest.raises(TritongenError, match=message):
        plan_sweep(sets)


def test_a_grid_past_max_points_is_refused_before_any_setting_is_built():
    """review7: seven axes of ten values (10**7 settings) were all built and validated before anything
    started: minutes of CPU and gigabytes. A grid past MAX_POINTS is a user error naming the count;
    MAX_POINTS itself is planned."""
    values = ",".join(str(v) for v in range(1, 11))
    sets = [f"loadtest.{f}={values}" for f in ("users", "seed", "num_prompts", "input_tokens_mean",
                                                "output_tokens_mean", "duration_s", "warmup_requests")]
    with pytest.raises(TritongenError, match="10,000,000 combinations"):
        plan_sweep(sets)
    assert len(plan_sweep(sets[:3]).points) == MAX_POINTS == 1000


def _result(tps, verdict, client_limited, error_rate) -> LoadTestResult:
    """A load-test result with the figures best_point reads (an empty run's summary otherwise)."""
    summary = summarize([])
    summary.throughput.output_tokens_per_s = tps
    summary.error_rate = error_rate
    return LoadTestResult(
        **dict(summary),
        server=ServerView(stages={}, metrics=MetricsSummary(), metrics_stages={}, split_vs_stages=None),
        client=ClientVerdict(client_limited=client_limited, reasons=[], processes=[], lag_limit_ms=10.0),
        run=RunInfo(title="t", target="t", started_unix=0.0, mode="closed loop", loadtest=ResolvedLoadTest()),
        slo=SloVerdict(verdict=verdict, exit_code=0, terms=[], reason=None) if verdict else None,
    )


def _point(label, status, tps, verdict=None, client_limited=False, error_rate=0.0):
    results = _result(tps, verdict, client_limited, error_rate) if status is PointStatus.OK else None
    return SweepPoint(label=label, overrides=[f"x={label}"], dir=label, status=status, results=results)


def test_best_point_needs_a_pass_and_ignores_inconclusive_and_failed_points():
    ok, passed = PointStatus.OK, Verdict.PASS
    points = [_point("a", ok, 100, passed), _point("b", ok, 300, Verdict.INCONCLUSIVE, client_limited=True),
              _point("c", ok, 200, passed), _point("d", PointStatus.INVALID, None), _point("e", ok, 400, Verdict.FAIL)]
    best = best_point(points, with_slo=True)
    assert (best.label, best.overrides) == ("c", ["x=c"]) and "200.0 tokens/s" in best.reason
    assert best_point(points[:2], with_slo=True).label == "a"
    assert best_point([points[1], points[4]], with_slo=True) is None
    assert best_point([_point("x", ok, 50), _point("y", ok, 90, error_rate=0.1)], with_slo=False).label == "x"
    assert best_point([_point("z", ok, 90, client_limited=True)], with_slo=False) is None


@pytest.mark.server
def test_sweep_runs_every_point_and_reports_the_one_that_cannot(cpu_spec, nvfp4_checkpoint_dir, tmp_path):
    plan = plan_sweep([
        "serving.max_batch_size=2,64", "loadtest.users=4", "loadtest.duration_s=1.5", "loadtest.input_tokens_mean=32",
        "loadtest.output_tokens_mean=16", "loadtest.warmup_requests=2", "loadtest.num_prompts=6",
        "loadtest.reference_checks=6", "loadtest.slo=error_rate<1%",
    ])
    result = run_sweep(cpu_spec, plan, tmp_path)
    points = result.points
    assert [p.label for p in points] == ["max_batch_size=2", "max_batch_size=64"]
    assert [p.status for p in points] == [PointStatus.OK, PointStatus.INVALID]
    assert "exceeds build.max_batch_size" in points[1].detail and points[1].results is None
    res = points[0].results
    assert res.counts.ok > 0 and res.counts.errors == 0 and res.server.stages["tensorrt_llm"].requests > 0
    # error_rate<1% holds (no errors), so the verdict is pass unless the load generator limited the run
    limited = res.client.client_limited
    assert res.slo.terms[0].measured == 0.0
    assert res.slo.verdict is (Verdict.INCONCLUSIVE if limited else Verdict.PASS)
    assert (tmp_path / "points" / "0" / "report.html").is_file() and (tmp_path / "points" / "0" / "repo").is_dir()
    figures = points[0].figures  # every figure with its interval and the requests behind it
    assert figures.requests == res.counts.requests and figures.attainment.n == res.counts.requests
    assert figures.output_tokens_per_s.low <= figures.output_tokens_per_s.estimate <= figures.output_tokens_per_s.high
    if limited:  # an inconclusive point is never the best
        assert result.best is None
    else:
        assert result.best.label == "max_batch_size=2" and "best at this load only (4 users)" in result.best.reason
    for name in ("report.md", "report.html", "points.csv"):
        assert (tmp_path / name).is_file()
    assert SweepResult.model_validate_json((tmp_path / "points.json").read_text()) == result


def test_points_measured_before_the_sweep_are_taken_as_they_are_and_serve_nothing(cpu_spec, cpu_loadtest, tmp_path):
    """Their folders are the sweep's points' (review14: `compare` of the demo's sweep, whose best point was its load
    test, looked for that folder in points/ and failed naming a folder that never was)."""
    from generator.measure import baseline

    steps = []
    labels = ["max_batch_size=8", "max_batch_size=16"]
    result = run_sweep(cpu_spec, plan_sweep(["serving.max_batch_size=8,16"]), tmp_path, progress=steps.append,
                       measured=dict.fromkeys(labels, cpu_loadtest))
    assert [p.label for p in result.points] == labels
    for i, point in enumerate(result.points):
        assert point.status is PointStatus.OK and point.results == cpu_loadtest.results
        assert point.dir == str(tmp_path / "points" / str(i)) and str(cpu_loadtest.out_dir) in point.detail
        assert point.figures.requests == cpu_loadtest.results.counts.requests
        copied, made = (sorted(p.name for p in f.iterdir()) for f in (Path(point.dir), cpu_loadtest.out_dir))
        assert copied == made
    assert steps == ["point 1/2: max_batch_size=8", "point 2/2: max_batch_size=16"]  # nothing rendered, nothing served
    assert "Point max_batch_size=16: measured before the sweep" in (tmp_path / "report.md").read_text()
    swept, made = (baseline.load(f) for f in (tmp_path, cpu_loadtest.out_dir))
    assert [r.figures for r in swept.runs] == [r.figures for r in made.runs]


@pytest.mark.parametrize("slo", ["ttft_p95<1ms", "ttft_p95<1ms,error_rate<50%"])
def test_an_slo_fixed_by_set_decides_the_best_point(tmp_path, slo):
    """review19: ``--set loadtest.slo=…`` (a fixed override) judged every point, but the best point was picked by the
    no-SLO rule from the spec without it, so a sweep whose every point failed its SLO named a best and exited 0.
    review20: an SLO of two terms (its commas) was an axis of two one-term SLOs, the same failure."""
    from generator.measure.runner import LoadResult
    from generator.spec import load_spec

    (tmp_path / "made").mkdir()
    measured = {f"max_batch_size={b}": LoadResult(out_dir=tmp_path / "made", requests=[],
                                                  results=_result(100.0 * b, Verdict.FAIL, False, 0.0)) for b in (8, 16)}
    plan = plan_sweep(["serving.max_batch_size=8,16", f"loadtest.slo={slo}"])
    assert [plan.label(p) for p in plan.points] == list(measured) and plan.fixed == [f"loadtest.slo={slo}"]
    result = run_sweep(load_spec(None, []), plan, tmp_path / "out", measured=measured)
    assert [p.results.slo.verdict for p in result.points] == [Verdict.FAIL] * 2 and result.best is None


def test_a_point_whose_setting_the_spec_rejects_is_invalid_and_starts_nothing(tmp_path):
    from generator.measure.sweep import run_point
    from generator.spec import load_spec

    steps = []
    point = run_point(load_spec(None, []), ["loadtest.users=0"], "users=0", tmp_path / "p", False, steps.append)
    assert point.status is PointStatus.INVALID and "loadtest.users" in point.detail and point.results is None
    assert steps == [] and not (tmp_path / "p").exists()


@pytest.mark.parametrize("fails", ["server", "every request", "a worker lost", "every request, its SLO unmeasured"])
def test_a_sweep_whose_every_point_failed_exits_1(tmp_path, monkeypatch, fails):
    """review26: without an SLO, a sweep whose every point failed (each server exited while loading) printed "no
    setting qualified" and exited 0, having measured nothing; now 1, and the report is kept. review27: so did one
    whose every point ran with no request succeeding, or lost a Locust worker (a load test of its own exits 1 then).
    review28: with an SLO, points in which no request succeeded (their SLO unmeasured, inconclusive) exited 3."""
    from typer.testing import CliRunner

    from generator.cli import app
    from generator.errors import ServerError
    from generator.measure import sweep as sweep_mod
    from generator.measure.runner import LoadResult

    def point_fails(spec, overrides, label, out_dir, gpu_visible, progress):
        if fails == "server":
            raise ServerError("tritonserver exited with code 1 while loading", fix="tritongen validate REPO")
        out_dir.mkdir(parents=True)
        results = _result(0.0, Verdict.INCONCLUSIVE if "SLO" in fails else None, False, 1.0)
        if fails == "a worker lost":
            results.counts.ok, results.run.integrity.incomplete = 10, "worker 2 stopped reporting"
        return LoadResult(out_dir=out_dir, requests=[], results=results)

    monkeypatch.setattr(sweep_mod, "_measure_point", point_fails)
    out = tmp_path / "sw"
    slo = ["--slo", "ttft_p95<10s"] if "SLO" in fails else []
    run = CliRunner().invoke(app, ["sweep", "--set", "serving.max_batch_size=4,8", "-o", str(out), *slo],
                             env={"COLUMNS": "200"})
    assert run.exit_code == 1, run.output
    assert "no setting qualified" in run.output and (out / "points.json").is_file()
