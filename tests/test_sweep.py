"""Sweeps: --set lists become a grid of points; each point is rendered, validated, served and loaded with
the same seeded load; points that cannot run are reported with their reason; the best is picked."""

from __future__ import annotations

import pytest

from generator.errors import TritongenError
from generator.measure.sweep import STATUS_INVALID, STATUS_OK, best_point, plan_sweep, run_sweep


def test_comma_lists_are_axes_and_single_values_are_fixed():
    plan = plan_sweep(["serving.max_batch_size=1,4", "loadtest.users=8", "serving.enable_chunked_context=true,false",
                       "quantization.exclude_modules=[lm_head, embed]"])
    assert plan.fixed == ["loadtest.users=8", "quantization.exclude_modules=[lm_head, embed]"]
    assert plan.axes == [("serving.max_batch_size", ["1", "4"]), ("serving.enable_chunked_context", ["true", "false"])]
    assert len(plan.points) == 4
    assert plan.points[1] == plan.fixed + ["serving.max_batch_size=1", "serving.enable_chunked_context=false"]
    assert plan.label(plan.points[1]) == "max_batch_size=1, enable_chunked_context=false"


@pytest.mark.parametrize("sets, message", [([], "nothing to sweep"), (["serving.max_batch_size=1,,4"], "empty value"),
                                           (["serving.max_batch_size"], "not KEY=VALUE")])
def test_bad_sweeps_are_user_errors(sets, message):
    with pytest.raises(TritongenError, match=message):
        plan_sweep(sets)


def _point(label, status, tps, verdict=None, client_limited=False, error_rate=0.0):
    results = None if status != STATUS_OK else {
        "throughput": {"output_tokens_per_s": tps}, "client": {"client_limited": client_limited},
        "error_rate": error_rate, "slo": {"verdict": verdict} if verdict else None}
    return {"label": label, "overrides": [], "status": status, "results": results}


def test_best_point_needs_a_pass_and_ignores_inconclusive_and_failed_points():
    points = [_point("a", STATUS_OK, 100, "pass"), _point("b", STATUS_OK, 300, "inconclusive", client_limited=True),
              _point("c", STATUS_OK, 200, "pass"), _point("d", STATUS_INVALID, None), _point("e", STATUS_OK, 400, "fail")]
    assert best_point(points, with_slo=True)["label"] == "c"
    assert best_point(points[:2], with_slo=True)["label"] == "a"
    assert best_point([points[1], points[4]], with_slo=True) is None
    assert best_point([_point("x", STATUS_OK, 50), _point("y", STATUS_OK, 90, error_rate=0.1)], with_slo=False)["label"] == "x"


@pytest.mark.server
def test_sweep_runs_every_point_and_reports_the_one_that_cannot(cpu_spec, nvfp4_checkpoint_dir, tmp_path):
    plan = plan_sweep([
        "serving.max_batch_size=2,64", "loadtest.users=4", "loadtest.duration_s=3", "loadtest.input_tokens_mean=32",
        "loadtest.output_tokens_mean=16", "loadtest.warmup_requests=2", "loadtest.num_prompts=6",
        "loadtest.reference_checks=6", "loadtest.slo=error_rate<1%",
    ])
    result = run_sweep(cpu_spec, plan, tmp_path)
    points = result["points"]
    assert [p["label"] for p in points] == ["max_batch_size=2", "max_batch_size=64"]
    assert [p["status"] for p in points] == [STATUS_OK, STATUS_INVALID]
    assert "exceeds build.max_batch_size" in points[1]["detail"] and points[1]["results"] is None
    res = points[0]["results"]
    assert res["counts"]["ok"] > 0 and res["server"]["stages"]["tensorrt_llm"]["requests"] > 0
    assert res["slo"]["verdict"] in ("pass", "inconclusive")
    assert (tmp_path / "points" / "0" / "report.html").is_file() and (tmp_path / "points" / "0" / "repo").is_dir()
    assert result["best"] is None or result["best"]["label"] == "max_batch_size=2"
    for name in ("report.md", "report.html", "points.csv", "points.json"):
        assert (tmp_path / name).is_file()
