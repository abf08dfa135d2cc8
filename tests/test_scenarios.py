"""End-to-end scenarios: each YAML file in tests/scenarios/ is a spec and the figures it must give.

``kind: plan`` runs ``tritongen plan SPEC --json`` as a user would (no GPU needed) and compares the
trtllm-build and checkpoint-step arguments, the memory plan and the refusals. ``kind: serve`` serves the
scenario's repository on the CPU (the shared test-run server when the scenario is the demo's spec
itself) and compares the smoke test and a short load test with the expected counts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.yaml"))


def load(path: Path) -> dict:
    scenario = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert {"name", "kind", "spec", "expect"} <= set(scenario), f"{path.name}: name, kind, spec and expect are required"
    return scenario


def of_kind(kind: str) -> list:
    return [pytest.param(p, id=p.stem) for p in SCENARIOS if load(p)["kind"] == kind]


def test_the_required_scenarios_exist():
    kinds = [load(p)["kind"] for p in SCENARIOS]
    assert kinds.count("plan") >= 2 and kinds.count("serve") >= 2, kinds


def _flags_after(argv: list[str], flag: str) -> str:
    """The arguments after ``flag VALUE`` (the folders, which depend on the machine, come first)."""
    return shlex.join(argv[argv.index(flag) + 2:])


@pytest.mark.parametrize("path", of_kind("plan"))
def test_plan_scenario(path, tmp_path):
    scenario, expect = load(path), load(path)["expect"]
    spec = dict(scenario["spec"], artifacts={"dir": str(tmp_path / "artifacts")})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "spec.yaml"), "--json"])
    plan = json.loads(result.stdout)
    assert len(plan["errors"]) == expect["errors"] and not plan["topology_refused"], plan["errors"]
    assert result.exit_code == (4 if expect["errors"] else 0)
    assert plan["gpu"]["sm"] == expect["gpu_sm"]
    assert plan["trtllm_build"]["argv"][:3] == ["trtllm-build", "--checkpoint_dir", str(tmp_path / "artifacts" / "trtllm-checkpoint")]
    assert _flags_after(plan["trtllm_build"]["argv"], "--output_dir") == " ".join(expect["trtllm_build_flags"].split())
    assert _flags_after(plan["conversion"]["argv"], "--model_dir") == " ".join(expect["conversion_flags"].split()) + \
        f" --output_dir {tmp_path / 'artifacts' / 'trtllm-checkpoint'}"
    for key, value in expect["memory"].items():
        assert plan["memory"][key] == value, key
    for text in expect.get("notes_include", []):
        assert any(text in note for note in plan["notes"]), (text, plan["notes"])


@pytest.mark.server
@pytest.mark.parametrize("path", of_kind("serve"))
def test_serve_scenario(path, request, tmp_path):
    """The scenario's spec and server are session fixtures (``spec_fixture``, ``server_fixture``), so a scenario
    costs no server start of its own."""
    from generator.measure.runner import run_loadtest
    from generator.spec import with_overrides

    scenario = load(path)
    expect = scenario["expect"]
    spec = request.getfixturevalue(scenario["spec_fixture"])
    server = request.getfixturevalue(scenario["server_fixture"])
    for key, value in scenario["spec"].items():
        assert getattr(getattr(spec, key.split(".")[0]), key.split(".")[1]) == value, (key, "differs from the fixture")
    run, smoke = request.getfixturevalue("smoke_cli")(server)  # `tritongen smoke --url`, shared with the smoke tests
    assert run.returncode == 0 and smoke is not None, run.stdout[-3000:] + run.stderr[-2000:]
    failed = [f"{c['name']}: {c['detail']}" for c in smoke["checks"] if not c["ok"]]
    assert not failed and len(smoke["checks"]) == expect["smoke_checks"], failed or [c["name"] for c in smoke["checks"]]
    if "loadtest_fixture" in scenario:  # a load test the run already made on this server, with these settings
        run = request.getfixturevalue(scenario["loadtest_fixture"])
        results = run.results
        assert {k: getattr(results.run.loadtest, k) for k in expect["loadtest"]["set"]} == expect["loadtest"]["set"]
    else:
        out = tmp_path / "loadtest"
        out.mkdir()
        load_spec = with_overrides(spec, [f"loadtest.{k}={v}" for k, v in expect["loadtest"]["set"].items()])
        results = run_loadtest(load_spec, out, url=f"http://{server.http_url}", grpc_url=server.grpc_url,
                               metrics_url=server.metrics_url, title=scenario["name"],
                               admin_key=server.admin_key).results
    assert results.counts.errors == expect["loadtest"]["errors"]
    assert results.counts.ok >= expect["loadtest"]["min_ok"]
    assert results.checks.failed_requests == 0
