"""The release gate without a server: the metric registry, baseline files, compare, the gate, JUnit and summary.

Sides of a comparison are built from seeded per-request values (what a load-test folder gives after its
records are read), so every verdict here is exact; tests/test_gate_server.py runs the real thing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from generator.errors import ArtifactCorrupt, ArtifactMissing, TritongenError
from generator.measure import baseline, intervals
from generator.measure.ci import junit_xml, summary_markdown
from generator.measure.compare import Change, comparability, compare
from generator.measure.evidence import MAX_SAMPLE, Evidence, RunFigures, Sketch, summarize_figures
from generator.measure.gate import combined_exit, evaluate_gate, parse_gate
from generator.measure.identity import run_identity
from generator.measure.metrics import COMPARED, LATENCIES, METRICS
from generator.measure.results import Latency, RunIdentity, SloVerdict, TermOutcome, TermResult, Verdict
from generator.spec import LoadTestSpec

SCHEMA = Path(__file__).parent / "data" / "junit-10.xsd"


def identity(**changes) -> RunIdentity:
    base = dict(load={"users": 4, "seed": 0}, settings={"protocol": "grpc-stream"}, prompts=None, tokenizer="ab" * 32,
                model="ensemble", model_source="tiny", server={"max_batch_size": 16}, tritongen_version="0.1.0")
    return RunIdentity(**{**base, **changes})


def side(seed: int, runs: int = 3, scale: float = 1.0, shift_ms: float = 0.0, limited: bool = False,
         ident: RunIdentity | None = None, requests: int = 60) -> Evidence:
    """``runs`` runs of lognormal TTFT/E2E and per-gap ITL (ms), each scaled by its own run factor
    (run-to-run noise of a few %), times ``scale`` plus ``shift_ms`` per token gap."""
    rng = np.random.default_rng(seed)
    figures, pooled = [], {"ttft": [], "itl": [], "e2e": []}
    for i in range(runs):
        run_factor = scale * rng.normal(1.0, 0.03)
        values = {"ttft": rng.lognormal(np.log(90), 0.3, requests) * run_factor,
                  "itl": rng.lognormal(np.log(22), 0.2, requests * 8) * run_factor + shift_ms}
        values["e2e"] = values["ttft"] + 8 * np.median(values["itl"]) * rng.normal(1.0, 0.02, requests)
        fig = {f"{k}_p{p}": float(np.percentile(values[k], p)) for k in values for p in (50, 95, 99)}
        fig["output_tokens_per_s"] = 300.0 / run_factor
        fig.update(error_rate=0.0, check_failure_rate=0.0, token_agreement=1.0)
        figures.append(RunFigures(label=f"run-{i + 1:02d}", figures=fig,
                                  counts={"error_rate": (0, requests), "check_failure_rate": (0, requests),
                                          "token_agreement": (requests, requests)},
                                  requests=requests, client_limited=limited and i == 0,
                                  client_reasons=["Locust process 0 used 97% of a core"] if limited and i == 0 else []))
        for k in pooled:
            pooled[k].extend(values[k].tolist())
    samples = {k: Sketch.of(v) for k, v in pooled.items()}
    return Evidence(source=f"side-{seed}", identity=ident or identity(), runs=figures, samples=samples,
                    summary=summarize_figures(figures, samples))


# ---------------------------------------------------------------- the registry


def test_registry_covers_every_latency_field_and_every_compared_metric():
    assert {lat.key for lat in LATENCIES} == set(Latency.model_fields)
    assert all(name in METRICS for name in COMPARED)
    assert METRICS["ttft_p95"].direction != METRICS["output_tokens_per_s"].direction
    assert parse_gate("throughput:-5%")[0].metric.name == "output_tokens_per_s"


# ---------------------------------------------------------------- compare


def test_two_sides_of_the_same_server_show_no_detectable_change():
    c = compare(side(1), side(2))
    assert c.comparable and not c.reasons
    assert {m.verdict for m in c.metrics} == {Change.NONE}, [(m.metric, m.change) for m in c.metrics]
    assert all("run-to-run" in m.method for m in c.metrics if m.relative)


def test_a_known_per_token_slowdown_is_worse_and_its_interval_holds_it():
    c = compare(side(1), side(2, shift_ms=8.0))
    itl = c.get("itl_p50")
    assert itl.verdict is Change.WORSE
    assert itl.difference.low <= 8.0 <= itl.difference.high, itl.difference
    assert c.get("e2e_p50").verdict is Change.WORSE and c.get("ttft_p50").verdict is Change.NONE
    gate = evaluate_gate(parse_gate("itl_p50:+10%,ttft_p95:+50%"), c)
    assert [t.result for t in gate.terms] == [TermOutcome.FAIL, TermOutcome.PASS]
    assert gate.verdict is Verdict.FAIL and gate.exit_code == 1


def test_a_very_wide_interval_of_few_noisy_runs_is_a_figure_not_an_overflow():
    """Three against two runs this far apart, at a high confidence: the relative change's upper bound is
    past what exp() holds in a float; it reads as the largest change a float holds, the verdict as none."""
    import math

    base, cand = side(1, runs=3), side(2, runs=2)
    for ev, values in ((base, [202.0, 589.0, 524.0]), (cand, [1423.0, 195.0])):
        for run, value in zip(ev.runs, values):
            run.figures["ttft_p95"] = value
    ttft = compare(base, cand, confidence=0.99923).get("ttft_p95")
    assert ttft.verdict is Change.NONE and math.isfinite(ttft.change.high) and ttft.change.high > 1e300


def test_faster_candidate_is_better_and_passes():
    c = compare(side(1), side(2, scale=0.7))
    assert c.get("ttft_p50").verdict is Change.BETTER and c.get("output_tokens_per_s").verdict is Change.BETTER
    assert evaluate_gate(parse_gate("ttft_p95:+10%,throughput:-5%"), c).exit_code == 0


def test_an_interval_straddling_the_limit_is_inconclusive():
    c = compare(side(1, runs=2), side(2, runs=2, scale=1.08))
    term = evaluate_gate(parse_gate("ttft_p50:+10%"), c).terms[0]
    assert term.change.low < 0.10 < term.change.high
    assert term.result is TermOutcome.INCONCLUSIVE


def test_different_prompts_are_not_comparable_with_the_reason(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "b.jsonl").write_text('{"text": "hello there"}\n')
    ids = [run_identity(LoadTestSpec(prompts=tmp_path / name, model="ensemble"), None) for name in ("a.jsonl", "b.jsonl")]
    c = compare(side(1, ident=ids[0]), side(2, ident=ids[1]))
    assert not c.comparable and any("different prompt set" in r for r in c.reasons), c.reasons
    assert {m.verdict for m in c.metrics} == {Change.NOT_COMPARABLE}
    gate = evaluate_gate(parse_gate("ttft_p95:+10%"), c)
    assert gate.exit_code == 3 and "prompt" in gate.reason


def test_each_identity_difference_is_named():
    c = compare(side(1), side(2, ident=identity(load={"users": 8, "seed": 0}, tritongen_version="0.2.0",
                                                  server={"max_batch_size": 32})))
    text = " ".join(c.reasons)
    assert "users 4 → 8" in text and "tritongen version: 0.1.0 → 0.2.0" in text
    assert c.server_changes == ["max_batch_size: 16 → 32"]  # what the release changed: not a reason
    moved = compare(side(1, ident=identity(model_source="/ci/a/tiny-qwen3")),
                    side(2, ident=identity(model_source="/home/me/tiny-qwen3")))
    assert moved.comparable  # the same local model in another folder
    other = compare(side(1, ident=identity(model_source="Qwen/Qwen3-8B")), side(2, ident=identity(model_source="Qwen/Qwen3-4B")))
    assert other.reasons == ["different model: 'Qwen/Qwen3-8B' → 'Qwen/Qwen3-4B'"]


@pytest.mark.parametrize("base, cand", [({"grpc_streams": 1}, {"grpc_streams": 8}), ({"workers": 1}, {"workers": 4}),
                                        ({"request_rate": 5.0, "workers": 1}, {"request_rate": 5.0, "workers": 2})])
def test_grpc_runs_over_other_stream_counts_are_not_comparable(base, cand):
    """One stream held Triton at about half its ceiling: a baseline sent over fewer streams read as the same settings
    (review 10), so a regressed candidate over more could pass the gate."""
    sides = [Evidence(source=str(k), identity=run_identity(LoadTestSpec(**{"protocol": "grpc-stream",
                                                                                 "grpc_streams": 1, **kw}), None), runs=[], samples={}) for k, kw in enumerate((base, cand))]
    reasons, _ = comparability(*sides)
    assert len(reasons) == 1 and "grpc_streams_used" in reasons[0], reasons
    same = LoadTestSpec(protocol="grpc-stream", users=4, grpc_streams=8), LoadTestSpec(protocol="grpc-stream", users=4)
    assert not comparability(*(Evidence(source="s", identity=run_identity(lt, None), runs=[], samples={})
                                for lt in same))[0]  # 4 users open 4 streams either way


def test_a_client_limited_run_on_either_side_makes_it_inconclusive():
    for base, cand in ((side(1, limited=True), side(2)), (side(1), side(2, shift_ms=8.0, limited=True))):
        c = compare(base, cand)
        assert c.client_limited and {m.verdict for m in c.metrics} == {Change.INCONCLUSIVE}
        gate = evaluate_gate(parse_gate("itl_p50:+10%"), c)
        assert gate.verdict is Verdict.INCONCLUSIVE and gate.exit_code == 3


def test_a_pass_on_one_run_a_side_is_inconclusive():
    """Review 13: one run a side judged on request-to-request intervals, narrower than two runs give; when the
    server's speed moved between the runs it passed a true regression that two runs a side read inconclusive.
    A failure stays one (a gate may block on it), and rates keep their pooled counts."""
    c = compare(side(1, runs=1), side(2, runs=1, scale=0.7, shift_ms=8.0))  # faster, but 8 ms more a token gap
    gate = evaluate_gate(parse_gate("ttft_p95:+10%,throughput:-5%,error_rate:+1%,itl_p50:+1%"), c)
    results = [t.result for t in gate.terms]
    assert results[:2] == [TermOutcome.INCONCLUSIVE] * 2 and results[3] is TermOutcome.FAIL, results
    assert all("one run on a side" in t.reason for t in gate.terms[:2]) and "one run" not in gate.terms[2].reason
    assert gate.exit_code == 1


def test_a_pass_resting_on_one_run_of_two_is_inconclusive():
    """Review 19: of two candidate runs, one whose every request failed has no latency figure; the other's
    request-to-request interval passed ``ttft_p95:+30%`` (exit 0) as if two runs a side had shown it."""
    cand = side(2, runs=2)
    dead = cand.runs[1]
    dead.figures.update({k: None for k in dead.figures if k.startswith(("ttft", "itl", "e2e"))}, error_rate=1.0)
    dead.counts["error_rate"] = (dead.requests, dead.requests)
    c = compare(side(1, runs=2), cand)
    assert c.get("ttft_p95").runs == (2, 1) and c.get("output_tokens_per_s").runs == (2, 2)
    gate = evaluate_gate(parse_gate("ttft_p95:+30%"), c)
    assert gate.verdict is Verdict.INCONCLUSIVE and "one run on a side" in gate.terms[0].reason


def test_single_runs_use_the_per_request_bootstrap_and_say_it_is_narrow():
    c = compare(side(1, runs=1), side(2, runs=1, shift_ms=8.0))
    itl = c.get("itl_p50")
    assert "per-request bootstrap" in itl.method and itl.verdict is Change.WORSE
    assert "Poisson" not in c.get("output_tokens_per_s").method and any("one run on a side" in n for n in c.notes)
    assert not any("one run on a side" in n for n in compare(side(1), side(2)).notes)


@pytest.mark.parametrize("runs", [1, 3])
def test_a_baseline_latency_of_zero_compares_without_a_relative_change(runs):
    """Every token gap 0 ms (answers read in one piece): the ratio bootstrap (one run) was a ValueError, the
    run-to-run change (repeated runs) a ZeroDivisionError traceback (review 11)."""
    def zero_itl(ev: Evidence) -> Evidence:
        zero = {f"itl_p{p}": 0.0 for p in (50, 95, 99)}
        return ev.model_copy(update={"samples": dict(ev.samples, itl=Sketch.of([0.0] * 480)),
                                     "runs": [r.model_copy(update={"figures": r.figures | zero}) for r in ev.runs]})

    c = compare(zero_itl(side(1, runs=runs)), zero_itl(side(2, runs=runs)))
    assert c.get("itl_p95").verdict is Change.NOT_COMPARABLE and c.get("ttft_p95").verdict is not Change.NOT_COMPARABLE


# ---------------------------------------------------------------- baseline files


def test_a_sketch_gives_the_bootstrap_interval_of_the_exact_values():
    values = np.random.default_rng(3).lognormal(np.log(90), 0.4, 3000).tolist()
    exact = intervals.percentile(values, 95)
    sketched = intervals.percentile(Sketch.of(values).sample(), 95)
    for a, b in ((exact.estimate, sketched.estimate), (exact.low, sketched.low), (exact.high, sketched.high)):
        assert b == pytest.approx(a, rel=0.02)
    small = [1.0, 2.0, 3.0]
    assert Sketch.of(small).sample() == small


def test_baseline_file_round_trips_and_refuses_other_versions(tmp_path):
    ev = side(1)
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(ev.model_dump(mode="json")))
    assert baseline.load(path) == ev
    assert path.stat().st_size < 40_000
    assert "prompt_text" not in path.read_text() and "resp_text" not in path.read_text()
    path.write_text(json.dumps({**ev.model_dump(mode="json"), "version": 99}))
    with pytest.raises(ArtifactCorrupt, match="version 99"):
        baseline.load(path)
    with pytest.raises(ArtifactCorrupt, match="not a tritongen baseline"):
        (tmp_path / "other.json").write_text("{}")
        baseline.load(tmp_path / "other.json")


def test_a_baseline_claiming_many_values_costs_no_more_than_max_sample():
    """review7: a sketch's n comes from the file and the bootstrap costs 2,000 × n: a 20 kB baseline claiming
    10**7 ITL values held compare for over 5 minutes. The sample is at most MAX_SAMPLE values of the same
    distribution."""
    sketch = Sketch.of(np.random.default_rng(3).lognormal(np.log(22), 0.2, 5000).tolist())
    huge = sketch.model_copy(update={"n": 10**12})
    drawn = huge.sample()
    assert len(drawn) == MAX_SAMPLE and np.percentile(drawn, 95) == pytest.approx(np.percentile(sketch.sample(), 95),
                                                                                  rel=0.01)


def _hostile(data: dict, what: str) -> None:
    runs, samples = data["runs"], data["samples"]
    if what == "negative counts":
        runs[0]["counts"]["error_rate"] = [-5, -1]
    elif what == "events past trials":
        runs[0]["counts"]["error_rate"] = [10**9, 1]
    elif what == "negative requests":
        runs[0]["requests"] = -10
    elif what == "a NaN figure":
        runs[0]["figures"]["ttft_p95"] = float("nan")
    elif what == "an infinite figure":
        runs[0]["figures"]["ttft_p95"] = float("inf")
    elif what == "n below its values":
        samples["ttft"]["n"] = -5
    elif what == "a NaN value":
        samples["ttft"]["values"][0] = float("nan")
    elif what == "a share without its counts":
        del runs[0]["counts"]["error_rate"]


@pytest.mark.parametrize("what", ["negative counts", "events past trials", "negative requests", "a NaN figure",
                                  "an infinite figure", "n below its values", "a NaN value", "a 5,000-digit integer",
                                  "a share without its counts"])
def test_a_baseline_with_impossible_figures_is_refused_naming_it(tmp_path, what):
    """review7: counts below zero or above their trials, NaN or infinite figures and a 5,000-digit integer in a
    foreign baseline file were tracebacks from the interval code (or Python's int parser), and so was (review19) a
    share whose counts were removed; each is now an ArtifactCorrupt naming the file."""
    data = side(1).model_dump(mode="json")
    _hostile(data, what)
    path = tmp_path / "baseline.json"
    text = json.dumps(data)
    path.write_text(text.replace('"requests": 60', '"requests": ' + "9" * 5000, 1) if "digit" in what else text)
    with pytest.raises(ArtifactCorrupt) as err:
        compare(baseline.load(path), side(2), confidence=0.95)
    assert err.value.where == str(path)


# ---------------------------------------------------------------- gate terms


@pytest.mark.parametrize("text, message", [
    ("ttft_p95:-10%", "gets worse when it rises"), ("throughput:+5%", "gets worse when it falls"),
    ("latency:+5%", "unknown gate metric"), ("ttft_p90:+5%", "not one that compare reports"),
    ("ttft_p95:10ms", "cannot read"), ("", "empty gate"),
])
def test_gate_syntax_errors_are_user_errors(text, message):
    with pytest.raises(TritongenError, match=message):
        parse_gate(text)


def test_both_gates_in_one_exit_code():
    assert combined_exit(Verdict.PASS, None) == 0
    assert combined_exit(Verdict.PASS, Verdict.INCONCLUSIVE) == 3
    assert combined_exit(Verdict.INCONCLUSIVE, Verdict.FAIL) == 1


# ---------------------------------------------------------------- CI output


def _slo(result: TermOutcome) -> SloVerdict:
    term = TermResult(term="ttft_p95<100ms", metric="ttft_p95", op="<", limit=100.0, measured=180.0, unit="ms",
                      result=result)
    verdict = Verdict.FAIL if result is TermOutcome.FAIL else Verdict.PASS
    return SloVerdict(verdict=verdict, exit_code=1 if verdict is Verdict.FAIL else 0, terms=[term], reason=None)


def test_junit_validates_against_the_jenkins_schema_and_shows_figure_limit_interval():
    import xmlschema

    base, cand = side(1), side(2, shift_ms=8.0)
    c = compare(base, cand)
    gate = evaluate_gate(parse_gate("itl_p50:+10%,ttft_p95:+25%,error_rate:+1%"), c)
    xml = junit_xml([("run 1", _slo(TermOutcome.FAIL)), ("run 2", _slo(TermOutcome.PASS))], gate,
                    {f.metric: f for f in cand.summary})
    xmlschema.XMLSchema(str(SCHEMA)).validate(xml)
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    assert root.get("tests") == "5" and root.get("failures") == "2"
    slo_fail = root.find(".//testcase[@name='run 1: ttft_p95<100ms']/failure").text
    assert "measured 180.00 ms" in slo_fail and "limit < 100.00 ms" in slo_fail and "95% interval" in slo_fail
    gate_fail = root.find(".//testcase[@name='itl_p50:+10%']/failure").text
    assert "baseline" in gate_fail and "allowed 10.0% worse" in gate_fail and "[+" in gate_fail


def test_inconclusive_terms_are_junit_errors_and_the_summary_says_why():
    import xmlschema

    c = compare(side(1, limited=True), side(2))
    gate = evaluate_gate(parse_gate("ttft_p95:+10%"), c)
    xml = junit_xml([], gate)
    xmlschema.XMLSchema(str(SCHEMA)).validate(xml)
    assert 'type="inconclusive"' in xml
    md = summary_markdown([], gate, c)
    assert "INCONCLUSIVE" in md and "load generator was the limit" in md and "| TTFT p95 |" in md


def test_text_xml_cannot_hold_keeps_the_junit_file_well_formed():
    """review14: a baseline's client reason (or a run label) with a control character or a lone surrogate made
    junit.xml not well-formed: the CI's test report read none of the gate's terms (and the summary a traceback)."""
    import xml.etree.ElementTree as ET

    base = side(1, limited=True)
    base.runs[0].client_reasons = ["bell\x07 escape\x1b[31m surrogate\ud800 tab\t kept"]
    gate = evaluate_gate(parse_gate("ttft_p95:+10%"), compare(base, side(2)))
    xml = junit_xml([("run\x0c 1", _slo(TermOutcome.FAIL)), ("run 2", _slo(TermOutcome.PASS))], gate)
    root = ET.fromstring(xml.encode("utf-8", "surrogatepass"))
    error = root.find(".//testcase[@name='ttft_p95:+10%']/error").text
    assert "bell\\x07 escape\\x1b[31m surrogate\\ud800 tab\t kept" in error
    assert root.find(".//testcase[@name='run\\x0c 1: ttft_p95<100ms']/failure") is not None
    assert "surrogate\\\\ud800" in summary_markdown([], gate, None).encode("utf-8").decode()  # a summary, no traceback


def test_compare_cli_on_baseline_files(tmp_path):
    base, cand = tmp_path / "base.json", tmp_path / "cand.json"
    base.write_text(json.dumps(side(1).model_dump(mode="json")))
    cand.write_text(json.dumps(side(2, shift_ms=8.0).model_dump(mode="json")))
    tritongen = str(Path(sys.executable).with_name("tritongen"))
    env = dict(os.environ, COLUMNS="250")
    junit, summary = tmp_path / "gate.xml", tmp_path / "summary.md"
    proc = subprocess.run([tritongen, "compare", str(base), str(cand), "--gate", "itl_p50:+10%",
                           "--junit", str(junit), "--summary", str(summary)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "worse" in proc.stdout and "FAIL" in proc.stdout
    assert junit.is_file() and "Regression gate: FAIL" in summary.read_text()
    proc = subprocess.run([tritongen, "compare", str(base), str(base)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "no detectable change" in proc.stdout
    proc = subprocess.run([tritongen, "compare", str(base), str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr


def test_a_run_in_which_no_request_succeeded_is_never_a_baseline(tmp_path):
    """review28: `baseline save` kept a run whose every request failed (its load test exited 1); against its error rate
    of 100%, a candidate with 40% errors passed `--gate error_rate:+1%` and `tritongen loadtest` exited 0. Such a
    baseline is refused wherever it is one: baseline save, compare's first side, the gate's --baseline."""
    from typer.testing import CliRunner

    from generator.cli import app
    from generator.cli.gate_cmds import gate_inputs
    from generator.spec import load_spec

    def failing(ev: Evidence, share: float) -> Evidence:
        n = ev.runs[0].requests
        runs = [r.model_copy(update={"requests": round(n * (1 - share)), "figures": {**r.figures, "error_rate": share},
                                     "counts": {**r.counts, "error_rate": (round(n * share), n)}}) for r in ev.runs]
        return ev.model_copy(update={"runs": runs})

    dead, cand = tmp_path / "dead.json", tmp_path / "cand.json"
    dead.write_text(json.dumps(failing(side(1, runs=1), 1.0).model_dump(mode="json")))
    cand.write_text(json.dumps(failing(side(2, runs=1), 0.4).model_dump(mode="json")))
    runner = CliRunner()
    for args in (["compare", str(dead), str(cand), "--gate", "error_rate:+1%"],
                 ["baseline", "save", str(dead), "-o", str(tmp_path / "saved.json")]):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code != 0 and "no request succeeded (run-01)" in str(result.exception), result.output
    assert not (tmp_path / "saved.json").exists()
    with pytest.raises(TritongenError, match="no request succeeded"):
        gate_inputs(load_spec(None, [f"gate.baseline={dead}", "gate.max_change=error_rate:+1%"]))
    result = runner.invoke(app, ["compare", str(cand), str(dead), "--gate", "error_rate:+1%"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output  # as the candidate, a dead run is the regression it is


@pytest.mark.parametrize("name, content", [
    ("points.json", '{"points": ['), ("points.json", '{"points": "x"}'), ("tune.json", "[" * 100_000 + "]" * 100_000),
    ("tune.json", "\udcff"), ("baseline.json", "[" * 100_000 + "]" * 100_000), ("baseline.json", '["a list"]')])
def test_a_results_file_that_is_none_is_an_error_naming_it(tmp_path, name, content):
    """Second review: a broken or hostile points.json, tune.json or baseline file given to compare or
    baseline save is an ArtifactCorrupt naming the file (it was a pydantic or RecursionError traceback)."""
    path = tmp_path / "run" / name if name != "baseline.json" else tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ArtifactCorrupt) as err:
        baseline.load(path.parent if name != "baseline.json" else path)
    assert err.value.where == str(path)


# ---------------------------------------------------------------- folders on disk (no server: recorded runs)


def _records(path: Path, gap_ms: int) -> Path:
    """A records file of 30 streamed requests, 8 responses each, ``gap_ms`` apart (test_loadtest_metrics's builder)."""
    from generator.measure.records import open_records, write_records
    from helpers import process_record
    from test_loadtest_metrics import perf, record

    recs = []
    for i in range(30):
        r = record(list("abcdefgh"), sched=i * 400, sent=i * 400, first=i * 400 + 20 + i % 7, gap=gap_ms + i % 3,
                   server=perf(i * 400 + 1, i * 400 + 2, i * 400 + 18, i * 400 + 20 + 7 * gap_ms, 8))
        r["id"], r["seq"], r["prompt"] = f"p0-{i}", i, i % 8
        recs.append(r)
    recs.append(process_record(cpu_s=1.0, wall_s=12.0, lag_ns=[1_000_000] * 50, lag_max_ns=2_000_000))
    with open_records(path) as file:
        write_records(file, recs)
    return path


def _single_run(tmp_path: Path):
    """(spec, a one-run load-test folder made from records whose ITL gap is 5-7 ms): the baseline side."""
    from generator.measure.runner import report_records
    from generator.spec import load_spec

    spec = load_spec(None, ["loadtest.users=4"])
    single = tmp_path / "single"
    single.mkdir()
    report_records(spec, _records(tmp_path / "a.jsonl", 5), single)
    return spec, single


def test_single_and_sweep_folders_are_read_and_compared(tmp_path):
    from generator.measure.results import BestPoint, SweepPoint, SweepResult
    from generator.measure.runner import report_records

    spec, single = _single_run(tmp_path)
    sweep = tmp_path / "sweep"
    (sweep / "points" / "1").mkdir(parents=True)
    report_records(spec, _records(tmp_path / "b.jsonl", 9), sweep / "points" / "1")
    best = SweepPoint(label="max_batch_size=16", overrides=[], dir=str(tmp_path / ".sweep.tmp" / "points" / "1"))
    (sweep / "points.json").write_text(SweepResult(points=[best], best=BestPoint(
        label=best.label, overrides=[], reason="highest throughput")).model_dump_json())
    c = compare(baseline.load(single), baseline.load(sweep))
    assert c.comparable, c.reasons
    itl = c.get("itl_p50")
    assert itl.baseline == pytest.approx(6.0) and itl.candidate == pytest.approx(10.0)
    assert itl.verdict is Change.WORSE and itl.difference.low <= 4.0 <= itl.difference.high
    assert "per-request bootstrap" in itl.method


def test_a_sweep_naming_no_folder_for_its_best_point_is_an_error_naming_its_file(tmp_path):
    """review14: a points.json whose best point's folder was '..' made compare read points/../points/../... until
    the path was too long ('File name too long', pointing at no file of the user's)."""
    from generator.measure.results import BestPoint, SweepPoint, SweepResult

    (tmp_path / "points").mkdir()
    (tmp_path / "points.json").write_text(SweepResult(points=[SweepPoint(label="a", overrides=[], dir="..")],
                                                      best=BestPoint(label="a", overrides=[], reason="x")).model_dump_json())
    with pytest.raises(ArtifactCorrupt, match="names '..' as its best run's folder") as err:
        baseline.load(tmp_path)
    assert err.value.where == str(tmp_path / "points.json")


def test_a_tune_folder_compares_as_its_winner_at_its_goodput_level(tmp_path):
    from generator.measure.intervals import Interval
    from generator.measure.runner import report_records
    from generator.measure.tune_results import Choice, Goodput, SettingResult, SettingStatus, TuneResult

    spec, single = _single_run(tmp_path)
    tune = tmp_path / "tune"
    for load, gap in ((4, 9), (8, 30)):  # the goodput level (4 users) and a failed level above it
        (tune / "settings" / "1" / "levels" / f"{load}-0").mkdir(parents=True)
        report_records(spec, _records(tmp_path / f"t{load}.jsonl", gap), tune / "settings" / "1" / "levels" / f"{load}-0")
    iv = Interval(estimate=1.0, low=0.9, high=1.0, confidence=0.95, n=30, method="wilson")
    winner = SettingResult(label="max_batch_size=16", overrides=[], dir="settings/1", gpus=1, status=SettingStatus.MEASURED,
                           goodput=Goodput(load=4, requests=30, requests_per_s_per_gpu=iv,
                                           output_tokens_per_s_per_gpu=iv, attainment=iv, ttft_p95_ms=None, itl_p95_ms=None))
    (tune / "tune.json").write_text(TuneResult(
        slo="itl_p95<50ms", attainment=0.95, mode="closed loop", settings=[winner], front=[winner.label],
        best=Choice(label=winner.label, overrides=[], reason="only one"), runner_up=None, budget_min=None,
        elapsed_s=1.0).model_dump_json())
    assert baseline.run_folders(tune) == [tune / "settings" / "1" / "levels" / "4-0"]
    itl = compare(baseline.load(single), baseline.load(tune)).get("itl_p50")
    assert itl.candidate == pytest.approx(10.0) and itl.verdict is Change.WORSE


def test_a_run_that_lost_a_worker_is_no_verdict(tmp_path):
    """review19: a candidate run that lost a Locust worker (``tritongen loadtest`` exits 1 for it) passed
    ``compare --gate error_rate:+50%`` with exit 0, as a whole run: it sent less load than its identity says."""
    import shutil

    _, single = _single_run(tmp_path)
    cand = Path(shutil.copytree(single, tmp_path / "cand"))
    data = json.loads((cand / "results.json").read_text())
    data["run"]["integrity"]["incomplete"] = "worker 1 lost"
    (cand / "results.json").write_text(json.dumps(data))
    gate = evaluate_gate(parse_gate("error_rate:+50%"), compare(baseline.load(single), baseline.load(cand)))
    assert gate.verdict is Verdict.INCONCLUSIVE and "run incomplete: worker 1 lost" in gate.reason
    assert evaluate_gate(parse_gate("error_rate:+50%"), compare(baseline.load(single), baseline.load(single))
                         ).verdict is Verdict.PASS


def test_a_repeat_folder_with_a_run_that_did_not_finish_is_refused_naming_it(tmp_path):
    """review24: ``loadtest --repeat N`` failing on a later run keeps its folder (the logs): the runs before it finished,
    the failed one holds no results.json. compare read it as a shorter finished repeat (gate PASS, exit 0), and
    baseline save saved it, nothing said about the run that failed."""
    import shutil

    _, single = _single_run(tmp_path)
    repeat = tmp_path / "repeat"
    shutil.copytree(single, repeat / "run-01")
    assert baseline.run_folders(repeat) == [repeat / "run-01"]
    (repeat / "run-02").mkdir()
    (repeat / "run-02" / "locust.log").write_text("Killed\n")
    with pytest.raises(ArtifactMissing, match="run-02 has no results.json: that run of the repeat did not finish") as err:
        baseline.load(repeat)
    assert err.value.where == str(repeat / "run-02")


def test_a_repeat_whose_server_died_keeps_its_runs_and_is_refused_by_compare(tmp_path):
    """review25: a server that died during a repeat's run (killed by the OOM killer, say) answered no more: the next
    run's reachability check raised ServerError ("no Triton server answers", where --url, fix: start one), which is
    no LoadTestError, so `loadtest --repeat` deleted its whole output (the runs made, the server's log) with a cause
    that was not one; and the run it died in, asking the server's statistics after Locust, ended the command as an
    OSError ("check the path, its permissions"). Now the next run fails as a load test does: its folder kept, and
    compare refuses the repeat naming that run; the statistics of a server gone are none."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from generator.errors import LoadTestError
    from generator.measure import repeat, runner
    from generator.serve.endpoints import Endpoints
    from generator.spec import load_spec

    asked = []

    class AnswersOnce(BaseHTTPRequestHandler):  # live when the repeat starts, gone from its first run on
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200 if len(asked) == 1 else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), AnswersOnce)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(LoadTestError, match="run 1 of 2 found no server: no Triton server answers") as err:
            repeat.run_repeated(load_spec(None, ["loadtest.repeat=2"]), tmp_path, url=url)
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/v2/health/live"] * 2
    assert err.value.where == url and "stopped answering before this run" in err.value.fix
    with pytest.raises(ArtifactMissing, match="run-01 has no results.json"):
        baseline.load(tmp_path)
    assert runner._stats_after(Endpoints.from_urls(url)) == {}


@pytest.mark.parametrize("section, key", [("counts", "requests"), ("counts", "errors"), ("checks", "checked"),
                                          ("checks", "failed_requests")])
def test_a_results_file_with_negative_counts_is_refused_naming_it(tmp_path, section, key):
    """review7: a foreign results.json with -1 requests, errors or checks (672 variants of its numbers tried: these
    four) was a ValueError traceback from the Wilson interval; it is an ArtifactCorrupt naming the file."""
    _, single = _single_run(tmp_path)
    data = json.loads((single / "results.json").read_text())
    data[section][key] = -1
    (single / "results.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactCorrupt) as err:
        baseline.load(single)
    assert err.value.where == str(single / "results.json")
