"""The OpenAI protocols against a real OpenAI-compatible server: NVIDIA Dynamo 1.6.1's frontend + mocker engine.

The mocker simulates an engine's timing (its default polynomial model: a decode step of 5.74 ms and a
prefill of 16.5 ms + 0.0152 ms per prompt token at low load, both divided by ``--speedup-ratio``), so the
load test's figures can be checked against the speed it was configured with: no step can come faster than
configured; slower only by this machine's load, which the upper bounds allow for generously. Answers are
replayed real words (tests/dynamo_mocker.py), so the streamed-output checks and token counts are real too.
Skipped, with the reason, when the ``dynamo-test`` extra is not installed (``make setup`` installs it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dynamo_mocker import DynamoMocker, dynamo_missing, replay_trace  # noqa: E402

from generator.measure.results import LoadTestResult, TermOutcome  # noqa: E402
from generator.measure.records import read_records  # noqa: E402
from generator.measure.runner import run_loadtest  # noqa: E402
from generator.spec import with_overrides  # noqa: E402

SPEEDUP = 0.5
DECODE_MS = 5.74 / SPEEDUP
PREFILL_MS = 16.5 / SPEEDUP
OUTPUT = 16


@pytest.fixture(scope="module")
def dynamo(tiny_model_dir, tmp_path_factory):
    missing = dynamo_missing()
    if missing:
        pytest.skip(missing)
    folder = tmp_path_factory.mktemp("dynamo")
    replay_trace(folder / "replay.jsonl", tiny_model_dir, rows=1, output_tokens=OUTPUT)
    with DynamoMocker(tiny_model_dir, replay=folder / "replay.jsonl", speedup_ratio=SPEEDUP, log_dir=folder) as server:
        yield server


def _load(cpu_spec, tiny_model_dir, dynamo, out: Path, protocol: str, requests: int) -> LoadTestResult:
    out.mkdir()
    spec = with_overrides(cpu_spec, [
        f"loadtest.protocol={protocol}", f"loadtest.tokenizer={tiny_model_dir}", "loadtest.users=2",
        f"loadtest.max_requests={requests}", "loadtest.warmup_requests=2", "loadtest.input_tokens_mean=32",
        f"loadtest.output_tokens_mean={OUTPUT}", "loadtest.request_timeout_s=30",
        'loadtest.openai_body={"nvext":{"annotations":["output_replay_id:r0"]}}',
        "loadtest.slo=ttft_p50<30s,itl_p50<10s,error_rate<1%",
    ])
    return run_loadtest(spec, out, url=dynamo.url).results


def test_openai_chat_against_dynamo_mocker(cpu_spec, tiny_model_dir, dynamo, work_dir):
    """Chat completions: every figure of a Triton run, from the same raw records, within the mocker's speed."""
    out = work_dir / "loadtest-openai-chat"
    results = _load(cpu_spec, tiny_model_dir, dynamo, out, "openai-chat", 10)
    assert results.counts.ok == 10 and results.counts.errors == 0
    assert results.run.loadtest.model == "tiny"  # found at /v1/models
    # usage.completion_tokens of the final chunk, and the client tokenizer's count of the streamed text, agree
    assert results.tokens.output.min == results.tokens.output.max == OUTPUT
    assert results.tokens.agreement["output"].equal == 10
    assert results.checks.checked == 10 and results.checks.failed_requests == 0
    lat = results.latency_ms
    # (the mocker paces steps against its own clock, so a late first token can be followed by faster ones:
    # the lower bounds leave that room; the upper bounds leave room for a loaded machine)
    assert 0.7 * DECODE_MS <= lat.itl_request.p50 <= 10 * DECODE_MS
    assert 0.9 * PREFILL_MS <= lat.ttft.p50 <= 30 * PREFILL_MS
    assert lat.e2e.p50 >= 0.9 * (PREFILL_MS + DECODE_MS * (OUTPUT - 1))
    # the SLO gate judged every term it could (a loaded machine may make the run inconclusive, never failed)
    assert all(t.result in (TermOutcome.PASS, TermOutcome.INCONCLUSIVE) for t in results.slo.terms)
    assert (out / "report.html").is_file() and json.loads((out / "results.json").read_text())["counts"]["ok"] == 10
    requests, processes, _ = read_records(out / "records.jsonl")
    assert processes and all(r["protocol"] == "openai-chat" and r["server"]["num_output_tokens"] == OUTPUT
                             for r in requests)


def test_openai_completions_against_dynamo_mocker(cpu_spec, tiny_model_dir, dynamo, work_dir):
    """Completions: the prompt goes as text, so the server's input count equals the client tokenizer's."""
    results = _load(cpu_spec, tiny_model_dir, dynamo, work_dir / "loadtest-openai-completions", "openai-completions", 6)
    assert results.counts.ok == 6 and results.checks.failed_requests == 0
    assert results.tokens.agreement["input"].equal == 6
    assert results.latency_ms.itl_request.p50 >= 0.7 * DECODE_MS


def test_trace_replay_sends_on_the_traces_schedule(cpu_spec, tiny_model_dir, dynamo, work_dir):
    """The shipped plain trace at 0.2 x its timestamps: every row once, each scheduled at its own time."""
    from generator.resources import loadtest_dir

    trace = loadtest_dir() / "traces" / "plain-small.jsonl"
    out = work_dir / "loadtest-openai-trace"
    out.mkdir()
    spec = with_overrides(cpu_spec, [
        "loadtest.protocol=openai-chat", f"loadtest.tokenizer={tiny_model_dir}", f"loadtest.trace={trace}",
        "loadtest.time_scale=0.2", "loadtest.warmup_requests=0", "loadtest.request_timeout_s=30",
        'loadtest.openai_body={"nvext":{"annotations":["output_replay_id:r0"]}}',
    ])
    results = run_loadtest(spec, out, url=dynamo.url).results
    assert results.run.mode == "open loop" and results.counts.ok == 30
    stamps = [json.loads(line)["timestamp"] for line in trace.read_text().splitlines()]
    requests = sorted(read_records(out / "records.jsonl").requests, key=lambda r: r["seq"])
    assert [r["prompt"] for r in requests] == list(range(30))
    sched = [r["sched_ns"] - requests[0]["sched_ns"] for r in requests]
    assert sched == [round((t - stamps[0]) * 0.2e6) for t in stamps]  # latency counts from these times
    assert all(r["sent_ns"] >= r["sched_ns"] for r in requests) and results.latency_ms.lateness.count == 30


def test_openai_protocol_needs_a_server_url_and_a_tokenizer(cpu_spec, tiny_model_dir, tmp_path):
    from generator.errors import SpecError

    spec = with_overrides(cpu_spec, ["loadtest.protocol=openai-chat", f"loadtest.tokenizer={tiny_model_dir}"])
    with pytest.raises(SpecError, match="running OpenAI-compatible server"):
        run_loadtest(spec, tmp_path, repo_dir=tmp_path)
    with pytest.raises(SpecError, match="names no tokenizer folder"):
        run_loadtest(with_overrides(cpu_spec, ["loadtest.protocol=openai-chat"]), tmp_path, url="http://127.0.0.1:1")
