"""The LLM-API target served for real: the rendered repository (CPU stand-in in front of the CPU reference
engine) in a real tritonserver, checked by `tritongen smoke` and load-tested through Locust over both
protocols. Figures are asserted for consistency, never for speed."""

from __future__ import annotations

import pytest

from generator.measure.records import read_records
from generator.measure.runner import count_tokens_after_run, run_loadtest
from generator.serve.client import generate, output_scalar
from generator.spec import with_overrides
from helpers import LLMAPI_SHORT_LOAD

pytestmark = pytest.mark.server

LLMAPI_CHECKS = ("gRPC streaming", "HTTP generate_stream (SSE)", "stop words honoured", "finish and stop reasons",
                 "perf-metric outputs", "no max_tokens: the LLM API's default", "cancellation by the stop input",
                 "bad request: stop without a request id", "bad request: wrong dtype", "server still serving")


def test_smoke_picks_the_llmapi_checks_and_passes_them(llmapi_server, smoke_cli):
    run, report = smoke_cli(llmapi_server)
    assert report is not None, run.stderr
    failed = [(c["name"], c["detail"]) for c in report["checks"] if not c["ok"]]
    assert run.returncode == 0 and not failed, (failed, run.stdout[-3000:])
    assert report["model"] == "tensorrt_llm" and report["dialect"] == "llmapi"
    names = {c["name"] for c in report["checks"]}
    assert set(LLMAPI_CHECKS) <= names
    streaming = next(c for c in report["checks"] if c["name"] == "gRPC streaming")
    assert "whole text so far" in streaming["detail"]


def test_without_max_tokens_the_answer_is_the_llm_api_default_length(llmapi_server):
    body = {"text_input": "Tea travelled a long way", "return_finish_reason": True}
    default = generate(llmapi_server.http_url, "tensorrt_llm", body)
    explicit = generate(llmapi_server.http_url, "tensorrt_llm", {**body, "sampling_param_max_tokens": 32})
    assert default["text_output"] == explicit["text_output"]
    assert output_scalar(default["finish_reason"]) == output_scalar(explicit["finish_reason"])


@pytest.mark.parametrize("protocol", ["grpc-stream", "http-stream"])
def test_short_load_test_of_the_llmapi_model(llmapi_spec, llmapi_server, llmapi_loadtest, tmp_path, protocol):
    """loadtest.model and loadtest.tokenizer left unset resolve to the LLM-API model and its checkpoint. The gRPC
    run is the session's (shared with the LLM-API scenario); the HTTP one has the same settings but the protocol."""
    run = llmapi_loadtest
    if protocol != "grpc-stream":
        spec = with_overrides(llmapi_spec, [*LLMAPI_SHORT_LOAD, f"loadtest.protocol={protocol}"])
        run = run_loadtest(spec, tmp_path, url=f"http://{llmapi_server.http_url}", grpc_url=llmapi_server.grpc_url,
                           metrics_url=llmapi_server.metrics_url, admin_key=llmapi_server.admin_key)
    res = run.results
    assert res.run.loadtest.protocol == protocol
    assert res.counts.errors == 0 and res.counts.ok > 0
    requests, processes, _ = read_records(run.out_dir / "records.jsonl")
    count_tokens_after_run(requests, processes)  # the load generator leaves token counts to after the run
    measured = [r for r in requests if not r["warmup"]]
    assert all(r["model"] == "tensorrt_llm" and r["cumulative"] for r in measured)
    for r in measured:  # each streamed text holds the previous one: the model sends the whole text so far
        assert all(b.startswith(a.rstrip("\ufffd")) for a, b in zip(r["resp_text"], r["resp_text"][1:]))
    for dist in (res.latency_ms.ttft, res.latency_ms.itl, res.latency_ms.itl_request, res.latency_ms.e2e):
        assert dist.p50 > 0
    # tokens are counted in the answer, not in the cumulative texts joined (which would count the start n times)
    assert all(0 < r["output_tokens"] <= r["max_tokens"] + 2 for r in measured)
    split = res.split
    assert split.requests == res.counts.ok and split.negative_parts == 0
    checks = res.checks
    assert checks.with_reference > 0 and checks.failed_requests == 0


def test_cli_load_test_by_url_finds_the_served_model_and_its_tokenizer(llmapi_server, llmapi_spec, tmp_path):
    """`tritongen loadtest --url` with no spec, --model, --tokenizer or admin key: the server serves no ensemble, so
    the LLM-API model is tested, with the tokenizer its engine model's tokenizer_dir names."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out"
    run = subprocess.run([str(Path(sys.executable).with_name("tritongen")), "loadtest", "--url", llmapi_server.http_url,
                          "--grpc-url", llmapi_server.grpc_url, "--metrics-url", llmapi_server.metrics_url, "-u", "2", "-t", "2", "--set", "loadtest.input_tokens_mean=16", "--set",
                          "loadtest.output_tokens_mean=8", "--set", "loadtest.warmup_requests=1", "--set",
                          "loadtest.num_prompts=4", "--set", "loadtest.reference_checks=2", "-o", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    lt = json.loads((out / "results.json").read_text())["run"]["loadtest"]
    assert lt["model"] == "tensorrt_llm" and lt["tokenizer"] == str(llmapi_spec.serving_weights_dir)
