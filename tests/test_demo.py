"""`tritongen demo` end to end, as a newcomer runs it: every stage, real server, real reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, nvfp4_checkpoint_dir):
    """The demo's tiny model and checkpoint come from the run's cache (``nvfp4_checkpoint_dir`` has put them there,
    or waits for the other test worker to): never trained and quantized a second time beside it."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    tritongen = Path(sys.executable).with_name("tritongen")
    # The demo as a newcomer runs it, with shorter load tests (--set, as on every command) to keep the suite quick:
    # 2 s each (the tests need requests that passed, and every user's request in flight at the end still completes),
    # and 2 prompts asked again for the reference checks instead of up to 100 (one by one, after each of the demo's
    # four load tests, on the sweep's max_batch_size=1 server too).
    proc = subprocess.run([str(tritongen), "demo", "-o", str(out), "--set", "loadtest.duration_s=2",
                           "--set", "loadtest.reference_checks=2"], capture_output=True, text=True, timeout=1500)
    return out, proc


def test_demo_passes_every_stage(demo_run):
    out, proc = demo_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "demo-summary.json").read_text())
    assert summary["ok"]
    names = [s["name"] for s in summary["stages"]]
    assert names[0] == "tiny model" and names[-1] == "sweep" and len(names) == 13
    assert {"serve llmapi", "smoke llmapi", "load test llmapi"} <= set(names)
    assert "tritongen demo: passed" in proc.stdout and "served targets side by side" in proc.stdout
    spec = yaml.safe_load((out / "tritongen.yaml").read_text())
    assert spec["loadtest"]["duration_s"] == 2 and spec["loadtest"]["users"] == 8  # --set over the demo's own values
    assert spec["loadtest"]["reference_checks"] == 2


def test_demo_outputs_are_real(demo_run):
    out, _ = demo_run
    summary = json.loads((out / "demo-summary.json").read_text())
    figures = summary["figures"]
    quant = json.loads((out / "artifacts" / "checkpoint" / "hf_quant_config.json").read_text())["quantization"]
    assert (quant["quant_algo"], quant["kv_cache_quant_algo"]) == ("NVFP4", "FP8")
    assert "lm_head" in quant["exclude_modules"]
    assert figures["quantize"]["sizes"]["quantized_linear_ratio"] <= 0.30
    assert figures["quantize"]["reused"]["from_cache"]  # the run's checkpoint (demo_run), not quantized again
    assert figures["loadtest"]["requests_ok"] > 0 and figures["loadtest"]["errors"] == 0
    assert [p["status"] for p in figures["sweep"]["points"]] == ["ok", "ok"]
    points = json.loads((out / "sweep" / "points.json").read_text())["points"]  # 16: the served repository's load test
    assert [Path(p["dir"]) for p in points] == [out / "sweep" / "points" / "0", out / "sweep" / "points" / "1"]
    assert str(out / "loadtest") in points[1]["detail"] and (out / "sweep" / "points" / "1" / "records.jsonl").is_file()
    for report in (out / "loadtest" / "report.html", out / "sweep" / "report.html"):
        assert report.stat().st_size > 10_000  # plots are embedded
    smoke = json.loads((out / "smoke.json").read_text())
    assert smoke["ok"] and len(smoke["checks"]) >= 10
    smoke_llmapi = json.loads((out / "smoke-llmapi.json").read_text())
    assert smoke_llmapi["ok"] and smoke_llmapi["model"] == "tensorrt_llm" and smoke_llmapi["dialect"] == "llmapi"
    targets = figures["targets"]
    assert set(targets) == {"cpu-reference", "llmapi"}
    for target in targets.values():
        assert target["loadtest"]["requests_ok"] > 0 and target["loadtest"]["errors"] == 0
    assert (out / "loadtest-llmapi" / "report.html").is_file()
    assert (out / "repo-rtx-5090" / "tensorrt_llm" / "config.pbtxt").read_text().count('backend: "tensorrtllm"') == 1


def test_demo_refuses_to_overwrite_without_force(demo_run):
    out, _ = demo_run
    tritongen = Path(sys.executable).with_name("tritongen")
    proc = subprocess.run([str(tritongen), "demo", "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr


def test_the_sweeps_point_taken_from_the_load_test_renders_as_the_served_repository(cpu_spec, cpu_repo_dir, tmp_path):
    from generator.demo import SERVED_BATCH, SWEEP_POINTS
    from generator.measure.sweep import plan_sweep
    from generator.repo.render import render_repository
    from generator.spec import with_overrides

    (served,) = [p for p in plan_sweep(SWEEP_POINTS).points if p == [f"serving.max_batch_size={SERVED_BATCH}"]]
    point = render_repository(with_overrides(cpu_spec, served), tmp_path / "point")
    configs = sorted(f.relative_to(cpu_repo_dir) for f in cpu_repo_dir.rglob("config.pbtxt"))
    assert configs == sorted(f.relative_to(point) for f in point.rglob("config.pbtxt")) and len(configs) >= 5
    for config in configs:
        assert (point / config).read_text() == (cpu_repo_dir / config).read_text(), config
