"""A short soak and fuzz run (bench/soak.py, the same code as the full run) against the shared server.

Honest streaming and non-streaming clients on the ensemble and BLS, mixed with hostile requests
(random JSON over the documented inputs, non-finite and huge numbers, non-UTF-8, disconnects
mid-stream, duplicate ids, direct engine calls): no honest request may fail, nothing may hang, every
model stays ready with the same stub process, and the engine's requests and KV blocks go back to idle.
Loopback only; bounded by request count and duration, with no timing assertion. 6 s: the 60 hostile requests (the
run goes on until they are sent) took under 5 s at load average 4-6 (99 hostile and 62 honest requests in a 5-s
run), and the stubs' memory grew 1-6 MiB in 5 or 15 s against the 64 MiB allowed (leaks are the full soak's
work: bench/soak.py, 600 s).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _soak_module():
    path = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("tritongen_bench_soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.server
def test_short_soak_hurts_no_honest_request(cpu_server):
    soak = _soak_module().Soak(cpu_server.http_url, cpu_server.grpc_url, cpu_server.metrics_url, max_tokens=16)
    result = soak.run(duration_s=6, hostile=60, workers=4, server_pid=cpu_server.pid)
    assert result.honest_requests > 0 and result.honest_failures == 0, result.honest_failure_examples
    assert result.hostile_requests >= 60 and result.hostile_hung == 0, result.hostile_outcomes
    assert result.models_ready_after and result.answer_after_ok and not result.stubs_restarted
    assert (result.active_requests_after, result.kv_blocks_used_after) == (0, 0)
    assert result.memory_settled, (result.rss_mib_idle, result.rss_mib_after)


def test_new_kernel_segfaults_are_split_by_the_server_process_and_thread_ids():
    soak = _soak_module()
    old = "[  1.0] triton_python_b[11]: segfault at 1 ip 0 sp 0 error 4 in libpython3.11.so.1.0[1af854,7f+23c000]"
    ours = "[  9.0] triton_python_b[42]: segfault at 1c8 ip 0 sp 0 error 4 in triton_python_backend_stub[28f37,5+b3000]"
    theirs = "[  9.5] triton_python_b[77]: segfault at 60 ip 0 sp 0 error 4 in libc.so.6[90bb4,7f+156000]"
    assert soak.sort_segfaults([old], [old, ours, theirs], {42, 43}) == ([ours], [theirs])
    assert soak.sort_segfaults(None, [ours], {42}) == ([], [])


def test_core_files_are_kept_before_the_server_folder_goes(tmp_path):
    soak = _soak_module()
    work = tmp_path / "tritongen-server-1-x"
    work.mkdir()
    (work / "core.4242").write_bytes(b"\x7fELF")
    (work / "tritonserver.log").write_text("log")
    kept = soak.keep_cores(work, tmp_path / "cores")
    assert kept == [str(tmp_path / "cores" / "core.4242")] and not (work / "core.4242").exists()
    assert soak.keep_cores(work, tmp_path / "cores") == []


def test_a_server_gone_mid_run_fails_the_run_with_what_was_counted():
    soak = _soak_module()
    load = soak.Soak("127.0.0.1:1", "127.0.0.1:2", "http://127.0.0.1:3/metrics")
    load.honest.update(requests=5, failures=1)
    load.honest_hung = 1
    result = load.partial(600.0, "ConnectionError: refused")
    assert not result.ok and (result.honest_requests, result.honest_hung, result.error) == (5, 1, "ConnectionError: refused")
