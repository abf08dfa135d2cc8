"""The release gate against real servers: the session's CPU server, and a copy of its repository whose engine
adds a known delay to every step (``cpu_step_delay_ms``): a server slowed on purpose by a known amount.

Six short runs, baseline and slowed in turn (so a change in the machine's load during the test falls on both
sides alike), then what a team runs: `baseline save` on the baseline runs and `loadtest --repeat 2 --baseline
--gate --junit` against the same server. Three runs a side (two for the release): the comparison is
run-to-run (Welch), the interval a release gate must use on a machine this noisy; with two runs a side the
slowed server's own run-to-run spread on a loaded machine (its ITL p50 at 72 and 114 ms in one test run)
left even a sevenfold slowdown unconfirmed. The load generator may be the limit on this loaded machine
(event-loop lag); the verdicts are then inconclusive, which the tests accept as such and still check what
the data showed (``measured``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generator.measure import baseline
from generator.measure.compare import Change, compare
from generator.measure.gate import evaluate_gate, parse_gate
from generator.measure.metrics import COMPARED
from generator.measure.runner import run_loadtest
from generator.spec import with_overrides

SCHEMA = Path(__file__).parent / "data" / "junit-10.xsd"
DELAY_MS = 60
"""Added to every engine step: each gap between tokens grows by this much."""
SHORT = ["loadtest.users=4", "loadtest.spawn_rate=8", "loadtest.duration_s=2", "loadtest.input_tokens_mean=16",
         "loadtest.output_tokens_mean=12", "loadtest.warmup_requests=2", "loadtest.num_prompts=8",
         "loadtest.reference_checks=0", "loadtest.request_timeout_s=120"]
"""Eight short runs: no reference checks (the gate compares latency and throughput only; the checks are tested in
test_loadtest_server), which saves asking prompts again one by one after each run."""


@pytest.fixture(scope="module")
def slowed_server(cpu_repo_dir, tmp_path_factory):
    from generator.serve.server import TritonServer

    repo = tmp_path_factory.mktemp("slowed") / "repo"
    shutil.copytree(cpu_repo_dir, repo)
    config = repo / "tensorrt_llm" / "config.pbtxt"
    config.write_text(config.read_text() + f'parameters {{ key: "cpu_step_delay_ms" value {{ string_value: "{DELAY_MS}" }} }}\n')
    with TritonServer(repo, log_file=repo.parent / "triton.log") as server:
        yield server


@pytest.fixture(scope="module")
def measured(cpu_spec, cpu_server, slowed_server, cpu_repo_dir, tmp_path_factory, alone):
    """Every run of the module, one after the other and `alone` (the known delay is measured within 5%, and another
    test's load would blur it; the servers' starts and the checks run beside the other workers): folders baseline/ and
    slowed/, each with run-01 .. run-03, run in turn; then `tritongen baseline save` of the baseline runs and
    `tritongen loadtest --repeat 2` of the same server against it with a gate, JUnit XML and a summary.
    Returns (sides' folder, finished release command, its folder)."""
    root = tmp_path_factory.mktemp("gate")
    tmp = tmp_path_factory.mktemp("release")
    spec = with_overrides(cpu_spec, SHORT)
    tritongen = str(Path(sys.executable).with_name("tritongen"))
    cmd = [tritongen, "loadtest", "--url", f"http://{cpu_server.http_url}", "--grpc-url", cpu_server.grpc_url,
           "--metrics-url", cpu_server.metrics_url, "--admin-key", cpu_server.admin_key, "--repeat", "2",
           "--baseline", str(tmp / "baseline.json"), "--gate", "itl_p50:+25%", "--slo", "error_rate<50%",
           "--junit", str(tmp / "gate.xml"), "--summary", str(tmp / "summary.md"), "-o", str(tmp / "rc"),
           *[f"--set={o}" for o in SHORT]]
    with alone():
        for i in (1, 2, 3):
            for name, server in (("baseline", cpu_server), ("slowed", slowed_server)):
                out = root / name / f"run-{i:02d}"
                out.mkdir(parents=True)
                run_loadtest(spec, out, url=f"http://{server.http_url}", grpc_url=server.grpc_url,
                             metrics_url=server.metrics_url, admin_key=server.admin_key, manifest_dir=cpu_repo_dir,
                             report=False)  # compare reads results.json; the release run below writes the reports
        saved = subprocess.run([tritongen, "baseline", "save", str(root / "baseline"), "-o", str(tmp / "baseline.json")],
                               capture_output=True, text=True, timeout=120)
        assert saved.returncode == 0, saved.stderr
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, COLUMNS="200"))
    return root, proc, tmp


@pytest.fixture(scope="module")
def sides(measured):
    return measured[0]


@pytest.fixture(scope="module")
def release(measured):
    """(finished `tritongen loadtest --repeat 2` command, its folder)."""
    return measured[1:]


def test_two_runs_of_the_same_server_and_load_show_no_detectable_change(sides, release):
    """At 99% for the 13 metrics together (Bonferroni: each at 1 - 0.01/13). At 99% each, one of them read
    "worse" in a CI run: with 13 looks, a chance verdict somewhere is likely (compare's notes say so)."""
    family = 1 - 0.01 / len(COMPARED)
    c = compare(baseline.load(sides / "baseline"), baseline.load(release[1] / "rc"), confidence=family)
    assert c.comparable, c.reasons
    assert {m.measured for m in c.metrics} == {Change.NONE}, [(m.metric, m.measured, m.change) for m in c.metrics]
    assert {m.verdict for m in c.metrics} == ({Change.INCONCLUSIVE} if c.client_limited else {Change.NONE})


def test_a_server_slowed_by_a_known_delay_is_a_confirmed_regression(sides):
    c = compare(baseline.load(sides / "baseline"), baseline.load(sides / "slowed"))
    itl = c.get("itl_p50")
    assert itl.measured is Change.WORSE and itl.verdict is (Change.INCONCLUSIVE if c.client_limited else Change.WORSE)
    # The known slowdown: DELAY_MS a gap, within 5% either way: the sleep's own overshoot above, and below the
    # engine's own step time, which differs a little between the two sides' runs (a clean clone's interval
    # read 58.9-60.0 ms for the 60-ms delay): the interval must reach into that range.
    assert itl.difference.low <= DELAY_MS * 1.05 and itl.difference.high >= DELAY_MS * 0.95, itl.difference
    gate = evaluate_gate(parse_gate("itl_p50:+10%"), c)
    assert gate.exit_code == (3 if c.client_limited else 1), gate


def test_the_release_commands_gate_with_intervals_and_write_ci_files(release):
    """Two repeats are too few on this machine to show ITL p50 within 25% of the baseline: inconclusive (3),
    never a silent pass; both gates in one run, their terms in the JUnit XML."""
    import xml.etree.ElementTree as ET

    import xmlschema

    proc, tmp = release
    assert proc.returncode in (0, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp / "rc" / "compare.json").read_text())
    gate = report["gate"]
    assert gate["exit_code"] == proc.returncode and gate["terms"][0]["change"]["method"] == "welch"
    if proc.returncode == 3:
        assert "more repeats" in gate["terms"][0]["reason"] or report["comparison"]["client_limited"]
    xml = (tmp / "gate.xml").read_text()
    xmlschema.XMLSchema(str(SCHEMA)).validate(xml)
    names = [c.get("name") for c in ET.fromstring(xml).iter("testcase")]
    assert names == ["run 1: error_rate<50%", "run 2: error_rate<50%", "itl_p50:+25%"]
    assert "Regression gate" in (tmp / "summary.md").read_text()
    assert (tmp / "rc" / "run-02" / "results.json").is_file() and (tmp / "rc" / "report.md").is_file()
