"""The load test against the real CPU reference repository in a real tritonserver: Locust processes,
raw records, the server-side split, open-loop queueing, distributed workers, the stream checks (and
that they catch a broken postprocessing), the client-bottleneck verdict and the CLI's SLO exit code.

Runs are a few seconds each with a few users; figures are asserted for consistency, never for speed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generator.measure.results import Verdict
from generator.measure.records import read_records
from generator.measure.runner import run_loadtest
from generator.spec import with_overrides

pytestmark = pytest.mark.server

SHORT = ["loadtest.input_tokens_mean=32", "loadtest.output_tokens_mean=16", "loadtest.warmup_requests=2",
         "loadtest.num_prompts=6", "loadtest.reference_checks=6", "loadtest.request_timeout_s=120"]


def run(spec, out: Path, server, *overrides, **kw):
    out.mkdir(parents=True, exist_ok=True)
    return run_loadtest(with_overrides(spec, SHORT + list(overrides)), out, url=f"http://{server.http_url}",
                        grpc_url=server.grpc_url, metrics_url=server.metrics_url, admin_key=server.admin_key, **kw)


def test_every_streamed_response_is_recorded_with_its_own_timestamp(cpu_loadtest):
    requests, processes, _ = read_records(cpu_loadtest.out_dir / "records.jsonl")
    measured = [r for r in requests if not r["warmup"]]
    assert measured and not any(r["error"] for r in measured)
    for r in measured:
        assert len(r["resp_ns"]) == r["max_tokens"] == 16  # one response per token, min_tokens = max_tokens
        assert r["resp_ns"] == sorted(r["resp_ns"]) and r["sent_ns"] < r["resp_ns"][0] <= r["end_ns"]
        assert r["server"]["num_output_tokens"] == 16 and r["server"]["num_input_tokens"] == r["input_tokens"]
    assert len(processes) == 1 and processes[0]["lag_ns"]


def test_results_have_latency_split_stages_and_clean_checks(cpu_loadtest):
    res = cpu_loadtest.results
    assert res.counts.errors == 0 and res.counts.warmup == 2
    for dist in (res.latency_ms.ttft, res.latency_ms.itl, res.latency_ms.itl_request, res.latency_ms.e2e):
        assert dist.p50 > 0
    split = res.split
    assert split.requests == res.counts.ok and split.negative_parts == 0
    assert split.parts_sum_mean_ms == pytest.approx(split.ttft_mean_ms, rel=1e-9)
    assert split.shared_clock  # the engine's perf_counter_ns and the client's monotonic_ns agree
    assert res.tokens.agreement["input"].equal == res.counts.ok
    assert res.tokens.agreement["output"].compared == res.counts.ok  # counted after the run
    checks = res.checks
    assert checks.with_reference > 0 and checks.failed_requests == 0
    assert set(checks.reference) <= {"equal", "diverged"}
    stages = res.server.stages
    for model in ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing"):
        assert stages[model].requests >= res.counts.ok
    assert stages["postprocessing"].inferences >= 16 * res.counts.ok  # once per streamed token
    assert any(k.startswith("nv_trt_llm_request_metrics") for k in res.server.metrics.gauges)
    # both terms hold (TTFT far under 120 s, no errors): pass, unless the load generator limited the run
    assert [t.result for t in res.slo.terms] == [res.slo.verdict] * 2
    assert res.slo.verdict is (Verdict.INCONCLUSIVE if res.client.client_limited else Verdict.PASS)
    for name in ("report.md", "report.html", "results.json", "locust.conf", "locust.log"):
        assert (cpu_loadtest.out_dir / name).is_file()


def test_distributed_workers_split_the_request_count_and_merge_records(cpu_spec, cpu_server, tmp_path):
    res = run(cpu_spec, tmp_path, cpu_server, "loadtest.protocol=http-stream", "loadtest.workers=2",
              "loadtest.users=4", "loadtest.max_requests=10", "loadtest.duration_s=120").results
    requests, processes, _ = read_records(tmp_path / "records.jsonl")
    assert res.counts.ok == 10 and res.counts.warmup == 2
    assert {r["proc"] for r in requests} == {0, 1} and sorted(p["proc"] for p in processes) == [0, 1]
    assert len({r["id"] for r in requests}) == len(requests) == 12  # each request exactly once, warm-up included
    for p in processes:  # what each worker counted is what the master wrote for it
        mine = [r for r in requests if r["proc"] == p["proc"]]
        assert (p["requests"], p["responses"]) == (len(mine), sum(len(r["resp_ns"]) for r in mine))
    assert res.checks.failed_requests == 0


@pytest.mark.alone  # the engine's queue must grow from this load alone
def test_open_loop_above_capacity_shows_up_as_growing_engine_queue(cpu_spec, cpu_server, tmp_path):
    """40 requests/s of 32 tokens is far above what the CPU engine serves: requests wait in the engine's
    queue longer and longer, which the server-side split shows (and latency counts from the schedule). 1.5 s:
    60 requests, never more than the engine's 16 batch slots and 64 queue places hold however slow a loaded
    machine makes it (3 s sent 120, more than those 80 when the engine serves slowly: 4 failed on a busy machine).
    No warm-up: the run's time includes it, and on a loaded machine two warm-up requests of 0.58 s each left 0.35 s
    of the schedule, 15 requests, too few to queue."""
    res = run(cpu_spec, tmp_path, cpu_server, "loadtest.request_rate=40", "loadtest.arrival=constant",
              "loadtest.duration_s=1.5", "loadtest.output_tokens_mean=32", "loadtest.warmup_requests=0").results
    assert res.run.mode == "open loop" and res.counts.errors == 0
    first, _, last = res.queue_trend.median_ms_by_third
    assert last > first + 100 and res.queue_trend.slope_ms_per_s > 0
    assert res.latency_ms.lateness.count == res.counts.requests
    assert res.split.parts["queue"].max > res.split.parts["prefill"].max


BROKEN_POSTPROCESSING = '''
"""Deliberately broken postprocessing (test only): decodes each streamed chunk on its own, as NVIDIA's
upstream model does, and drops the leading space of each piece, as a SentencePiece tokenizer does when a
token is decoded alone: no incremental detokenization."""
import json
import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.tok = Tokenizer.from_file(params["tokenizer_dir"]["string_value"] + "/tokenizer.json")

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy().reshape(-1)
            ids = tokens.reshape(-1)[: int(lengths[0])].tolist()
            text = self.tok.decode(ids, skip_special_tokens=True).lstrip(" ")
            out = np.array([text.encode("utf-8")], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
        return responses
'''


def test_broken_postprocessing_fails_the_streamed_output_checks(cpu_spec, cpu_repo_dir, tmp_path):
    from generator.serve.server import TritonServer

    repo = tmp_path / "repo"
    shutil.copytree(cpu_repo_dir, repo)
    (repo / "postprocessing" / "1" / "model.py").write_text(BROKEN_POSTPROCESSING, encoding="utf-8")
    with TritonServer(repo, log_file=tmp_path / "triton.log") as server:
        res = run(cpu_spec, tmp_path / "load", server, "loadtest.users=2", "loadtest.duration_s=1").results
    checks = res.checks
    assert checks.failed_requests > 0 and checks.failures["reference_mismatch"] > 0
    assert checks.reference.get("detokenization", 0) > 0
    assert any(s.check == "reference_mismatch" and s.reference for s in checks.samples)


# Runs a command with a small CPU share the way cpulimit does: stopped and continued every 100 ms.
CPU_SHARE = """
import signal, subprocess, sys, time
share, cmd = float(sys.argv[1]), sys.argv[2:]
proc = subprocess.Popen(cmd)
try:
    while proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.1 * share)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.1 * (1 - share))
finally:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
    sys.exit(proc.wait())
"""


def test_load_generator_with_a_small_cpu_share_is_flagged(cpu_spec, cpu_server, tmp_path):
    """Locust pinned to one core and held to 30% of it: its event loop wakes 70 ms late, beyond the lag
    limit even of a process below half a core, so the run is client-limited and an SLO on it can only be
    inconclusive (or fail by more than the client's own error)."""
    pinned = ("taskset", "-c", str(min(os.sched_getaffinity(0))))
    res = run(cpu_spec, tmp_path, cpu_server, "loadtest.users=2", "loadtest.duration_s=3",
              "loadtest.slo=ttft_p99<120s", locust_prefix=(*pinned, sys.executable, "-c", CPU_SHARE, "0.3")).results
    client = res.client
    assert client.client_limited, client
    assert any("event-loop lag" in r for r in client.reasons)
    assert client.processes[0].wait is not None and client.processes[0].demand > 0  # Linux schedstat was read
    assert res.slo.verdict is Verdict.INCONCLUSIVE and res.slo.exit_code == 3


def test_cli_slo_tighter_than_measured_exits_1(cpu_server, tmp_path):
    out = tmp_path / "out"
    cmd = [str(Path(sys.executable).parent / "tritongen"), "loadtest", "--url", f"http://{cpu_server.http_url}",
           "--grpc-url", cpu_server.grpc_url, "--metrics-url", cpu_server.metrics_url, "-u", "2", "-t", "1",
           "--admin-key", cpu_server.admin_key,
           "--slo", "ttft_p95<0.001ms,error_rate<1%", "-o", str(out),
           "--set", "loadtest.output_tokens_mean=8", "--set", "loadtest.input_tokens_mean=16",
           "--set", "loadtest.reference_checks=2", "--set", "loadtest.warmup_requests=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and "TTFT" in proc.stdout
    slo = json.loads((out / "results.json").read_text())["slo"]
    assert slo["verdict"] == "fail" and slo["terms"][0]["result"] == "fail"


def test_records_of_a_run_make_the_report_with_workers_auto(cpu_loadtest, tmp_path):
    """``--records FILE --workers auto``: the report counts the Locust processes that wrote the records."""
    from typer.testing import CliRunner

    from generator.cli import app

    rep = tmp_path / "rep"
    done = CliRunner().invoke(app, ["loadtest", "--records", str(cpu_loadtest.out_dir / "records.jsonl"),
                                    "--workers", "auto", "-o", str(rep)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    again = json.loads((rep / "results.json").read_text())
    assert again["counts"] == cpu_loadtest.results.counts.model_dump() and again["run"]["loadtest"]["workers"] == 0
    assert "1 Locust process(es)" in (rep / "report.md").read_text()


def test_a_model_the_server_does_not_serve_is_named_first_and_nothing_runs(cpu_server, tmp_path):
    tritongen = Path(sys.executable).with_name("tritongen")
    run = subprocess.run([str(tritongen), "loadtest", "--url", cpu_server.http_url, "--model", "no_such_model",
                          "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "400"})
    assert run.returncode == 2, run.stderr
    first = run.stderr.split("error:", 1)[1].strip().splitlines()[0]
    assert "'no_such_model' is not served" in first and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


def test_a_locust_setup_failure_comes_first_and_its_logs_are_kept(cpu_server, tmp_path):
    """A failure only Locust's process meets (a prompts file that is not JSON) is the error's first line, and
    the output folder keeps Locust's logs."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("not json\n", encoding="utf-8")
    out = tmp_path / "out"
    run = subprocess.run([str(Path(sys.executable).with_name("tritongen")), "loadtest", "--url", cpu_server.http_url,
                          "--grpc-url", cpu_server.grpc_url, "--prompts", str(prompts), "-t", "2", "-o", str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "400"})
    assert run.returncode == 11, run.stderr
    first = run.stderr.split("error:", 1)[1].strip().splitlines()[0]
    assert "prompts.jsonl:1: not JSON" in first, run.stderr
    assert (out / "locust.log").is_file() and "prompts.jsonl:1: not JSON" in (out / "locust.log").read_text()
    assert f"the logs are kept in {out}" in run.stderr.replace("\n", "")  # and the message says where
