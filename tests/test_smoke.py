"""The smoke test: its pure deciders, then `tritongen smoke --url` against the served CPU repository."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from generator.serve.client import REPLACEMENT
from generator.serve.smoke import compare_metadata, down_models, same_text, stop_word_candidates

TRITONGEN = str(Path(sys.executable).parent / "tritongen")

CONFIG = {
    "name": "m", "backend": "python", "max_batch_size": 8,
    "input": [{"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]},
              {"name": "max_tokens", "data_type": "TYPE_INT32", "dims": [1]}],
    "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}],
}
METADATA = {
    "name": "m", "platform": "python",
    "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [-1, 1]},
               {"name": "max_tokens", "datatype": "INT32", "shape": [-1, 1]}],
    "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1, -1]}],
}


def test_metadata_comparison_finds_each_kind_of_difference():
    assert compare_metadata(METADATA, CONFIG) == []
    wrong = json.loads(json.dumps(METADATA))
    wrong["inputs"][1]["datatype"] = "FP32"
    wrong["outputs"][0]["shape"] = [-1]
    wrong["inputs"].append({"name": "extra", "datatype": "BOOL", "shape": [-1, 1]})
    problems = compare_metadata(wrong, {**CONFIG, "input": CONFIG["input"] + [
        {"name": "missing", "data_type": "TYPE_BOOL", "dims": [1]}]})
    assert len(problems) == 4
    assert any("max_tokens" in p and "FP32" in p for p in problems)
    assert any("text_output" in p for p in problems)
    assert any("extra in metadata but not in config" in p for p in problems)
    assert any("missing in config but not in metadata" in p for p in problems)
    assert compare_metadata({**METADATA, "platform": "ensemble"}, CONFIG)
    unbatched = {**METADATA, **{k: [dict(t, shape=t["shape"][1:]) for t in METADATA[k]] for k in ("inputs", "outputs")}}
    assert compare_metadata(unbatched, {**CONFIG, "max_batch_size": 0}) == []


@contextlib.contextmanager
def _scripted_server(handle):
    """A server on 127.0.0.1 that runs ``handle(conn)`` on a thread of its own for every connection: its address."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.fixture()
def endless_server():
    """A server that answers every request 200 and then sends without end (address, body kind switch; a piece
    None: the first chunk is the whole answer)."""
    kind = {"first": b"["}

    def handle(conn):
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n"
                             % (len(kind["first"]), kind["first"]))
                piece = kind["piece"]
                if piece is None:
                    conn.sendall(b"0\r\n\r\n")
                while piece is not None:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except OSError:
                pass

    with _scripted_server(handle) as address:
        yield address, kind


@pytest.mark.parametrize("first, piece, call", [
    (b"[", b"1," * 32768, "get_json"), (b"[", b"1," * 32768, "post_json"),
    (b"data: ", b"x" * 65536, "generate_stream"),  # one line without end
    (b"\n", b'data: {"text_output": "%s"}\n' % (b"x" * 65000), "generate_stream"),  # events without end
    (b"# ", b"x" * 65536, "http_get"),  # the load test's /metrics and /v2/models/stats
])
def test_an_answer_without_end_is_cut_at_the_bound(endless_server, first, piece, call):
    """Review 12: smoke's client read a server's answer whole (a body, or an SSE line) and ran out of memory
    (2.8 GB in 9 s against a server that sends without end); it stops at MAX_ANSWER_BYTES, naming the bound."""
    from generator.measure.tritonstats import http_get
    from generator.serve import client

    url, kind = endless_server
    kind.update(first=first, piece=piece)
    calls = {"get_json": lambda: client.get_json(url, "/v2/models/m/config"),
             "post_json": lambda: client.post_json(url, "/v2/repository/index", {}),
             "generate_stream": lambda: client.generate_stream(url, "m", {"text_input": "x"}),
             "http_get": lambda: http_get(f"http://{url}/metrics")}
    with pytest.raises((client.ServerRequestError, OSError), match=f"longer than {client.MAX_ANSWER_BYTES:,} bytes"):
        calls[call]()


@pytest.mark.parametrize("answer", [b"[1]", b"[" * 100_000 + b"]" * 100_000, b'{"input": [1], "parameters": [2]}'],
                         ids=["list", "nesting", "fields"])
def test_an_answer_of_another_shape_fails_checks_not_the_smoke_test(endless_server, answer):
    """Review 13: reading which model to check and its limits, smoke took the server's JSON for the shape it expects;
    an answer ``[1]`` (or nested past the recursion limit) ended ``tritongen smoke`` in a traceback."""
    from generator.serve.smoke_run import run_smoke

    url, kind = endless_server
    kind.update(first=answer, piece=None)
    report = run_smoke(url, "127.0.0.1:1", timeout_s=5)
    assert report.checks and not all(check.ok for check in report.checks)


@pytest.mark.parametrize("value, expected", [("4096", 4096), ("\u00b2", None), ("9" * 5000, None)])
def test_a_max_input_len_the_server_names_is_checked_before_it_is_used(endless_server, value, expected):
    """Review 15: smoke read the server's max_input_len with str.isdigit, which "²" and 5,000 digits pass and int()
    refuses (a traceback), and sent a prompt past whatever it named: 200,000,000 made a 1.2 GB prompt (3.6 GB of
    memory). An odd value is unknown; one past MAX_TESTED_INPUT_LEN fails the check without a prompt sent."""
    from generator.serve.smoke import Smoke, max_input_len_from_server

    url, kind = endless_server
    kind.update(first=json.dumps({"parameters": {"max_input_len": {"string_value": value}}}).encode(), piece=None)
    assert max_input_len_from_server(url) == expected
    smoke = Smoke(url, "127.0.0.1:1", "m", None, "p", 4, 4 << 20, 5, None)  # past MAX_TESTED_INPUT_LEN
    smoke.check("over max_input_len", smoke.bad_long_prompt)
    [check] = smoke.report.checks
    assert not check.ok and check.detail.startswith("not sent: the server's max_input_len"), check.detail


@pytest.fixture()
def trickling_server():
    """A server that sends its answer a byte every 0.1 s and closes the connection after 5 s: its headers never end
    (``where`` "headers"), or a body of 10,000 bytes does not ("body"); or ("cut") that closes the connection at once
    after a body of 10,000 bytes began with a whole JSON value and a whole metrics line. Address, mode switch."""
    import time

    mode = {"where": "body"}

    def handle(conn):
        with conn:
            try:
                conn.recv(65536)
                if mode["where"] == "cut":
                    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n12\nnv_inference_count{model="m"} 12')
                    return
                if mode["where"] == "body":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(50):
                    conn.sendall(b":")
                    time.sleep(0.1)
            except OSError:
                pass

    with _scripted_server(handle) as address:
        yield address, mode


@pytest.mark.parametrize("where, call", [("headers", "get_json"), ("body", "post_json"), ("body", "generate_stream"),
                                         ("body", "http_get")])
def test_an_answer_sent_a_byte_at_a_time_fails_at_its_timeout(trickling_server, where, call):
    """Review 15: each read waited for the next byte only up to the timeout, so a server sending one every few seconds
    held ``tritongen smoke --url`` and a load test's reads around its run (the served model, the repository index,
    /v2/models/stats, /metrics, the reference answers) for ever. The answer must now come whole within the timeout."""
    from generator.measure.tritonstats import http_get
    from generator.serve import client

    url, mode = trickling_server
    mode["where"] = where
    calls = {"get_json": lambda: client.get_json(url, "/v2/models/m/config", timeout=0.5),
             "post_json": lambda: client.post_json(url, "/v2/repository/index", {}, timeout=0.5),
             "generate_stream": lambda: client.generate_stream(url, "m", {"text_input": "x"}, timeout=0.5),
             "http_get": lambda: http_get(f"http://{url}/metrics", timeout=0.5)}
    with pytest.raises(TimeoutError, match="no whole answer within 0.5 s"):
        calls[call]()


@pytest.mark.parametrize("call", ["get_json", "http_get"])
def test_an_answer_cut_short_by_a_closed_connection_is_no_answer(trickling_server, call):
    """Review 16: ``client.exchange`` (http.client's read1) took a body that the connection's close cut short of its
    Content-Length for the whole answer, where requests raised: a /metrics sample cut inside ``... 123456`` read as
    ``... 12``, and the run's counters were the difference to that. The cut is now a ConnectionError naming it."""
    from generator.measure.tritonstats import http_get
    from generator.serve import client

    url, mode = trickling_server
    mode["where"] = "cut"
    calls = {"get_json": lambda: client.get_json(url, "/v2/models/m/config", timeout=5),
             "http_get": lambda: http_get(f"http://{url}/metrics", timeout=5)}
    with pytest.raises(ConnectionError, match="closed 9,965 bytes before the end"):
        calls[call]()


def test_streamed_text_comparison():
    assert same_text("abc", "abc") == (True, "equal")
    ok, how = same_text("ab", "ab" + REPLACEMENT)
    assert ok and "held back" in how
    ok, how = same_text("abX", "abc")
    assert not ok and "char 2" in how


def test_stop_word_candidates_are_new_printable_pieces():
    pieces = ["The", " cat", " sat", REPLACEMENT, " cat", " on", ""]
    assert stop_word_candidates(pieces) == [
        (" cat", "The cat", "The"),
        (" sat", "The cat sat", "The cat"),
        (" on", "The cat sat" + REPLACEMENT + " cat on", "The cat sat" + REPLACEMENT + " cat"),
    ]


def test_down_models_come_from_the_stub_health_errors():
    details = ["server error: Stub process 'tensorrt_llm_cpu_0_0' is not healthy.",
               "HTTP 400: Stub process 'my_model_2_11' is not healthy.", "stream error: timed out"]
    assert down_models(details) == ["my_model", "tensorrt_llm_cpu"]
    assert down_models(["all good"]) == []


def test_smoke_needs_a_repository_or_an_address():
    run = subprocess.run([TRITONGEN, "smoke"], capture_output=True, text=True)
    assert run.returncode == 2 and "--url" in run.stderr


@pytest.mark.server
def test_smoke_passes_on_the_cpu_repository(cpu_server, smoke_cli):
    run, report = smoke_cli(cpu_server)
    assert report is not None, run.stderr
    failed = [(c["name"], c["detail"]) for c in report["checks"] if not c["ok"]]
    assert run.returncode == 0 and not failed, (failed, run.stdout[-3000:])
    names = {c["name"] for c in report["checks"]}
    for required in ("every model ready", "model metadata equals config", "HTTP generate (non-streaming)",
                     "HTTP infer", "gRPC streaming", "HTTP generate_stream (SSE)", "greedy answers deterministic",
                     "max_tokens honoured", "stop words honoured", "bad request: non-UTF-8 bytes",
                     "bad request: prompt over max_input_len", "server still serving", "BLS gRPC streaming"):
        assert required in names
    assert "checks passed" in run.stderr and "gRPC streaming" in run.stdout
