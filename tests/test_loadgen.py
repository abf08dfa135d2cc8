"""The load generator's lean parts: its own gRPC-over-HTTP/2 transport, payload decoding after the hot path,
token counts after the run, worker counts and the recorded ceiling.

The transport is checked against a real tritonserver (server tests); the decoders get real Triton protobuf
messages and the JSON Triton's generate endpoints send.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
from hpack import Decoder
from tritonclient.grpc import service_pb2

from generator.measure.ceiling import (
    TARGET_SHARE,
    auto_workers,
    capacity,
    loadgen_plan,
    recorded_ceiling,
    resolve_workers,
    workers_for,
)
from generator.measure.request_figures import count_client_tokens
from generator.resources import loadtest_dir
from generator.spec import load_spec
from helpers import process_record, request_record

sys.path.insert(0, str(loadtest_dir()))
import clients  # noqa: E402  (gevent and the protocol layer only; no Locust)
import grpcclient  # noqa: E402
import grpcwire  # noqa: E402
import httpclient  # noqa: E402
import lifecycle  # noqa: E402
import openaiapi  # noqa: E402
from prompts import Prompt  # noqa: E402


def infer_response(rid: str, outputs: list[tuple[str, str, bytes]], final: bool = False) -> bytes:
    """A serialized ModelStreamInferResponse as Triton sends it (every response says whether it is the final one)."""
    resp = service_pb2.ModelStreamInferResponse()
    ir = resp.infer_response
    ir.model_name, ir.model_version, ir.id = "ensemble", "1", rid
    ir.parameters["triton_final_response"].bool_param = final
    for name, datatype, raw in outputs:
        ir.outputs.add(name=name, datatype=datatype, shape=[1, 1])
        ir.raw_output_contents.append(raw)
    return resp.SerializeToString()


def strings(*items: bytes) -> bytes:
    return b"".join(len(b).to_bytes(4, "little") + b for b in items)


def exchange(decode) -> clients.Exchange:
    return clients.Exchange("run-0-0", clients.new_record("grpc-stream", "ensemble", 0, 0, Prompt(0, "hi", 3, 1),
                                                          False, 1000, conn_ns=0, cumulative=False, prompt_text="hi"),
                            decode)


def test_request_headers_are_valid_hpack():
    block = grpcwire.request_headers("127.0.0.1:8001", "/inference.GRPCInferenceService/ModelStreamInfer")
    assert Decoder().decode(block) == [
        (":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelStreamInfer"),
        (":authority", "127.0.0.1:8001"), ("content-type", "application/grpc"), ("te", "trailers"),
    ]


@pytest.mark.parametrize("rid", ["a-1", "x" * 300])
def test_request_id_appended_to_a_serialized_request(rid):
    body = service_pb2.ModelInferRequest(model_name="ensemble", id="").SerializeToString()
    req = service_pb2.ModelInferRequest.FromString(grpcclient.with_id(body, rid.encode()))
    assert (req.model_name, req.id) == ("ensemble", rid)


def test_grpc_payloads_decoded_after_the_run():
    """Texts per response (BYTES elements joined, a cut character as U+FFFD as before), output tokens summed,
    other figures kept; a response without text (the empty final) drops out with its timestamp."""
    ex = exchange(grpcclient.decode_infer_responses)
    payloads = [
        infer_response("r", [("text_output", "BYTES", strings(b" he", b"llo")), ("num_output_tokens", "INT32", (2).to_bytes(4, "little")),
                             ("arrival_time_ns", "UINT64", (7).to_bytes(8, "little"))]),
        infer_response("r", [("text_output", "BYTES", strings("é".encode()[:1])), ("num_output_tokens", "INT32", (1).to_bytes(4, "little"))]),
        infer_response("r", [], final=True),
    ]
    for t, p in zip((2000, 3000, 3500), payloads):
        ex.resp_ns.append(t)
        ex.payloads.append(p)
    ex.end_ns = 3500
    rec = ex.finish()
    assert rec["resp_text"] == [" hello", "\ufffd"]
    assert rec["resp_ns"] == [2000, 3000]
    assert rec["server"] == {"num_output_tokens": 3, "arrival_time_ns": 7}
    assert rec["error"] is None and rec["end_ns"] == 3500


@pytest.mark.parametrize("empty_final", [False, True])
def test_every_response_with_text_decodes_in_one_parse(empty_final):
    """Responses that all carry the same outputs (the last one may be an empty final) decode in one merged parse,
    read by column: texts stay per response and in order (a two-element BYTES tensor joined), figures summed,
    the last time point known kept (a 0 is not known yet) — what reading each response alone gives."""
    payloads = [infer_response("r", [("num_output_tokens", "INT32", (1).to_bytes(4, "little")),
                                     ("text_output", "BYTES", strings(f"w{i}".encode(), b"!")),
                                     ("first_token_time_ns", "UINT64", (10 + i if i < 4 else 0).to_bytes(8, "little"))])
                for i in range(5)] + ([infer_response("r", [], final=True)] if empty_final else [])
    texts, server, error = grpcclient.decode_infer_responses(payloads)
    assert texts == [f"w{i}!" for i in range(5)] + ([None] if empty_final else []) and error is None
    assert server == {"num_output_tokens": 5, "first_token_time_ns": 13}
    alone = [grpcclient.decode_infer_responses([p]) for p in payloads]
    assert texts == [t for one in alone for t in one[0]]


@pytest.mark.parametrize("rid", ["run-0-1", "r" * 127])
def test_responses_routed_off_the_bytes(rid):
    """The response path reads the id and the final flag without parsing; what it cannot read (an error
    first, an id of 128 bytes or more) goes to the full parse."""
    text = [("text_output", "BYTES", strings(b"triton_final_response"))]
    assert grpcclient.route(infer_response(rid, text)) == (rid.encode(), False)
    assert grpcclient.route(infer_response(rid, text, final=True)) == (rid.encode(), True)
    assert grpcclient.route(infer_response("x" * 128, text)) is None
    # the start learnt from one response is compared at once; a response that starts otherwise is read field by field
    head = grpcclient.response_head(infer_response("other", text))
    assert head.endswith(b"\x1a") and len(head) > 1
    for message in (infer_response(rid, text, final=True), infer_response(rid, text)):
        assert grpcclient.route(message, head) == grpcclient.route(message)
    assert grpcclient.route(infer_response("x" * 128, text), head) is None
    assert grpcclient.route(infer_response(rid, text), b"\x0a\x02zz\x1a") == (rid.encode(), False)
    error = service_pb2.ModelStreamInferResponse(error_message="boom")
    error.infer_response.id = rid
    assert grpcclient.route(error.SerializeToString()) is None


def test_sse_payloads_decoded_after_the_run():
    texts, server, error = httpclient.decode_json([
        b'data: {"text_output": "a", "num_output_tokens": 1, "first_token_time_ns": 0}\n',
        b'data: {"text_output": ["b", "c"], "num_output_tokens": [2]}\n',
        b'data: {"error": "engine failed"}\n',
        b'data: {"text_output": "never read"}\n',
    ])
    assert texts == ["a", "bc"] and server == {"num_output_tokens": 3} and error == "engine failed"
    ex = exchange(httpclient.decode_json)
    ex.resp_ns, ex.payloads = [5, 6], [b'{"text_output": "x"}', b'data: {"error": "late"}\n']
    rec = ex.finish()
    assert rec["error"] == "late" and rec["resp_ns"] == [5] and rec["resp_text"] == ["x"]


@pytest.mark.parametrize("decode, good, bad", [
    (openaiapi.decode_events, b'data: {"choices": [{"delta": {"content": "x"}}]}\n', b"data: [1]\n"),
    (openaiapi.decode_events, b'data: {"choices": [{"delta": {"content": "x"}}]}\n', b"data: not json\n"),
    (httpclient.decode_json, b'data: {"text_output": "x"}\n', b"data: <html>\n"),
    (grpcclient.decode_infer_responses, infer_response("run-0-0", [("text_output", "BYTES", strings(b"x"))]), b"\xff\x00"),
], ids=["openai-list-event", "openai-not-json", "triton-sse-not-json", "grpc-not-protobuf"])
def test_a_response_the_client_cannot_read_fails_its_own_request_only(decode, good, bad):
    """finish() runs in the record writer for a whole batch: raising there lost the batch and hung the run."""
    ex = exchange(decode)
    ex.resp_ns, ex.payloads = [5, 6], [good, bad]
    rec = ex.finish()
    assert rec["error"].startswith("unreadable response: ") and rec["resp_ns"] == [] and rec["resp_text"] == []
    fine = exchange(decode)
    fine.resp_ns, fine.payloads = [5], [good]
    assert fine.finish()["error"] is None and fine.record["resp_text"] == ["x"]


def test_a_text_that_is_no_unicode_fails_its_own_request_and_every_record_is_written(tmp_path):
    """review14: JSON's "\\ud800" (half of a UTF-16 pair) in one answer reached the record writer, which failed on
    it: the batch's other records were lost and the writer stopped (40 requests: 32 ok, no error, exit 0)."""
    from generator.measure.records import open_records, read_records, write_records

    bad = exchange(httpclient.decode_json)
    bad.resp_ns, bad.payloads = [5, 6], [b'data: {"text_output": "x"}\n', b'data: {"text_output": "y\\ud800"}\n']
    told = exchange(openaiapi.decode_events)
    told.resp_ns, told.payloads = [5], [b'data: {"error": "bad \\udfff"}\n']
    fine = exchange(httpclient.decode_json)
    fine.resp_ns, fine.payloads = [5], [b'data: {"text_output": "x"}\n']
    records = [ex.finish() for ex in (bad, told, fine)]
    assert records[0]["error"].startswith("unreadable response: UnicodeEncodeError") and records[0]["resp_text"] == []
    assert records[1]["error"] == "bad \\udfff" and records[2]["error"] is None  # the server's words, written
    with open_records(tmp_path / "records.jsonl") as file:
        write_records(file, records)
    assert [r["error"] for r in read_records(tmp_path / "records.jsonl").requests] == [r["error"] for r in records]


def test_an_answer_of_tiny_responses_is_cut_before_it_holds_more_than_its_bound():
    """review28: the bound counted the payloads' bytes only, and an answer of tiny events held ten times as much (each
    event's objects): 4 users' answers grew a Locust process to 2.8 GB. Its memory now stays within the bound."""
    import tracemalloc

    ex = exchange(httpclient.decode_json)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="the answer is longer than"):
            for t in range(2_000_000):  # 2 MB of payload: far below the bound in bytes, far above it in objects
                ex.keep(t, b"x")
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held <= clients.MAX_ANSWER, f"{held:,} bytes held for {len(ex.payloads):,} responses"


def test_a_server_figure_past_what_records_hold_fails_its_own_request_and_every_record_is_read(tmp_path):
    """review28: a server's count of 1e30 (an OpenAI usage chunk; a Triton answer's num_output_tokens alike) was written
    into the record as a 31-digit number, which read_records refuses: the whole run was lost ("records.jsonl, line 2:
    not a JSON record", naming the deleted temporary folder and "run again with this tritongen"). prompt_tokens of 5 and
    -5 (with cached tokens) summed to 0 in the prefix-cache share: a ZeroDivisionError, the run lost too."""
    from generator.measure.records import open_records, read_records, write_records

    usage = exchange(openaiapi.decode_events)
    usage.resp_ns, usage.payloads = [5, 6], [b'data: {"choices": [{"delta": {"content": "x"}}]}\n',
                                             b'data: {"choices": [], "usage": {"completion_tokens": 1e30}}\n']
    count = exchange(httpclient.decode_json)
    count.resp_ns, count.payloads = [5], [b'data: {"text_output": "x", "num_output_tokens": -1e25}\n']
    negative = exchange(openaiapi.decode_events)  # a prompt of -5 tokens, 1 cached: summed with one of 5, a division by 0
    negative.resp_ns, negative.payloads = [5], [b'data: {"choices": [], "usage": {"prompt_tokens": -5, '
                                                b'"prompt_tokens_details": {"cached_tokens": 1}}}\n']
    fine = exchange(openaiapi.decode_events)
    fine.resp_ns, fine.payloads = [5, 6], [b'data: {"choices": [{"delta": {"content": "x"}}]}\n',
                                           b'data: {"choices": [], "usage": {"completion_tokens": 1}}\n']
    records = [ex.finish() for ex in (usage, count, negative, fine)]
    assert all(r["error"].startswith("unreadable response") and "negative or past 64 bits" in r["error"]
               for r in records[:3])
    assert records[3]["error"] is None and records[3]["server"] == {"num_output_tokens": 1, "num_input_tokens": 0}
    with open_records(tmp_path / "records.jsonl") as file:
        write_records(file, records)
    assert [r["error"] for r in read_records(tmp_path / "records.jsonl").requests] == [r["error"] for r in records]


@pytest.mark.parametrize("read", ["model_info", "openai_model"])
def test_a_served_model_name_that_is_no_string_fails_the_setup(read):
    """review28: every record carries the model's name, as a string; a Triton config named 5, or a /v1/models list
    whose id is 5 (taken as the model to call), made every record of the run unreadable, the run lost."""
    body = b'{"data": [{"id": 5, "object": "model"}], "name": 5, "input": []}'
    with _http_peer(body) as url:
        calls = {"model_info": lambda: clients.model_info(url, "ensemble", 5),
                 "openai_model": lambda: openaiapi.openai_model(url, None, 5)}
        with pytest.raises(RuntimeError, match="string"):
            calls[read]()


def test_a_load_test_error_quotes_a_long_log_line_cut(tmp_path):
    """review28: a /v1/models id of 200,000 characters came back in the setup failure ("model 'other' is not served at
    ... (it lists xxxx...)"), which the error quoted whole, twice (the cause and Locust's last lines): the terminal's
    wrapping of one long word is quadratic, and `tritongen loadtest` spent minutes of CPU before it showed the error.
    Each quoted line is cut, saying how long it was; the log keeps it whole."""
    from generator.measure.runner import MAX_QUOTED_LINE, SETUP_FAILED, _tail, setup_failure

    line = f"[2026] vm/ERROR/tritongen: {SETUP_FAILED}RuntimeError: model 'other' is not served (it lists {'x' * 200_000})"
    (tmp_path / "locust.log").write_text(f"starting\n{line}\nShutting down (exit code 2)\n", encoding="utf-8")
    cause, tail = setup_failure(tmp_path), _tail(tmp_path / "locust.log").splitlines()
    assert cause.startswith("RuntimeError: model 'other' is not served") and cause.endswith("characters)")
    assert len(cause) < MAX_QUOTED_LINE + 50 and max(map(len, tail)) < MAX_QUOTED_LINE + 50
    assert tail[0] == "starting" and tail[2] == "Shutting down (exit code 2)" and "(cut: 200,1" in tail[1]


def test_client_token_counts_filled_after_the_run():
    requests = [request_record(["a b", " c"], output_tokens=None), request_record(["x"], error="boom", output_tokens=None),
                request_record(["y"], output_tokens=9)]
    count_client_tokens(requests, lambda text: len(text.split()))
    assert [r["output_tokens"] for r in requests] == [3, None, 9]


def test_workers_auto_sized_from_the_target_and_the_ceiling():
    """auto: the processes the target needs at TARGET_SHARE of the ceiling each, not one per core; one
    process alone (no master); never more than the users or the cores beside the master."""
    ceiling = recorded_ceiling().model_copy(update={"responses_per_core_s": 1000.0, "responses_per_request": 10,
                                                    "server_requests_per_s": 280.0})
    assert auto_workers(140.0, 10, 1, 16, ceiling) == 2  # 1,400 responses/s at 700 per process
    assert auto_workers(60.0, 10, 1, 16, ceiling) == 0  # one process is enough: no master
    assert auto_workers(2000.0, 10, 1, 16, ceiling) == 15  # 29 needed, 15 cores beside the master
    assert auto_workers(None, 16, 256, 16, ceiling) == 4  # closed loop: one server's 2,800 responses/s
    assert auto_workers(None, 16, 3, 16, ceiling) == 3  # no more processes than users
    assert auto_workers(None, 16, 256, 2, ceiling) == 0  # two cores: one process beside nothing
    spec = load_spec(None, ["loadtest.workers=auto", "loadtest.request_rate=1", "loadtest.output_tokens_mean=8"])
    assert resolve_workers(spec.loadtest, 8) == 0
    assert resolve_workers(spec.loadtest.model_copy(update={"workers": 3}), 8) == 3


def test_ceiling_sizes_the_workers():
    ceiling = recorded_ceiling()
    assert ceiling.responses_per_core_s > 0 and "bench/gpuhost_loadgen.py" in ceiling.command
    per_process = ceiling.responses_per_core_s * TARGET_SHARE
    assert workers_for(per_process, ceiling) == 1
    assert workers_for(per_process * 2.5, ceiling) == 3
    plan = loadgen_plan(10.0, 500, "auto", ceiling)
    assert plan["target_tokens_per_s"] == 5000 and plan["processes_needed"] == workers_for(5000, ceiling)
    assert loadgen_plan(None, 500, 0, ceiling)["processes_needed"] is None
    procs = [process_record(responses=int(per_process * 10), cpu_s=9.0, wall_s=10.0)]
    cap = capacity(procs + [dict(procs[0])], ceiling)
    assert cap.processes == 2 and cap.processes_needed == 2 and cap.advice is None
    cap = capacity([process_record(responses=int(per_process * 29), cpu_s=9.0, wall_s=10.0)], ceiling)
    assert cap.processes_needed == 3 and "--workers 3" in cap.advice
    assert cap.responses_per_core_s == pytest.approx(per_process * 29 / 9.0, rel=1e-3)
    assert capacity([], ceiling) is None


@pytest.mark.server
def test_grpc_wire_against_a_real_server(cpu_server):
    """A unary ModelConfig call, then one streamed request over the multiplexed call: every response routed by
    id with a timestamp, exactly max_tokens tokens; an error response for an unknown model routed too."""
    host = f"grpc://{cpu_server.grpc_url}"
    info = clients.model_info(host, "ensemble", 60)
    assert "text_input" in info.inputs and info.tokenizer_dir
    client = grpcclient.GrpcLLMClient(host, info, 60)
    try:
        ex = exchange(client.decode)
        client.generate(ex, Prompt(0, "hello world", 8, 2))
        rec = ex.finish()
        assert rec["error"] is None and rec["exact_length"]
        assert rec["server"]["num_output_tokens"] == 8
        assert rec["sent_ns"] <= rec["resp_ns"][0] and rec["resp_ns"] == sorted(rec["resp_ns"]) and rec["end_ns"] >= rec["resp_ns"][-1]
        assert "".join(rec["resp_text"])
        assert not client.waiting
    finally:
        client.close()
    missing = grpcclient.GrpcLLMClient(host, clients.ModelInfo({"name": "no_such_model", "input": []}, None), 60)
    try:
        ex = exchange(missing.decode)
        missing.generate(ex, Prompt(0, "hello", 2, 1))
        assert "no_such_model" in ex.finish()["error"]
    finally:
        missing.close()


def test_grpc_wire_framing_edge_cases():
    """What a real server rarely shows: a message split over frames and reads, padded DATA, settings and pings
    to acknowledge, a window to wait for, and trailers that end the call with a status. (review6: a server's
    HEADER_TABLE_SIZE setting was applied to the client's decoder, which then refused every header block.)"""
    import gevent

    from hpack import Encoder

    listener = _listener()
    got, closed, peer_saw = [], [], []

    def peer() -> None:
        conn, _ = listener.accept()
        data = b""
        while len(data) < 24 + 9:
            data += conn.recv(65536)
        message = b"\x00" + (10).to_bytes(4, "big") + b"0123456789"
        settings = (0x4).to_bytes(2, "big") + (5).to_bytes(4, "big")  # the initial window: 5 bytes
        settings += (0x1).to_bytes(2, "big") + (65536).to_bytes(4, "big")  # the server's own decoder's table
        conn.sendall(grpcwire.frame(grpcwire.SETTINGS, 0, 0, settings))
        conn.sendall(grpcwire.frame(grpcwire.PING, 0, 0, b"12345678"))
        conn.sendall(grpcwire.frame(grpcwire.DATA, 0, 1, message[:7]))
        gevent.sleep(0.05)  # the rest in another read
        padded = bytes([2]) + message[7:] + b"\x00\x00"
        conn.sendall(grpcwire.frame(grpcwire.DATA, grpcwire.PADDED, 1, padded))
        gevent.sleep(0.05)
        first = grpcwire.frame(grpcwire.DATA, 0, 1, b"\x00\x00\x00\x00\x05")
        data = b""
        while first not in data:  # the client sent what the window of 5 allows, and waits
            data += conn.recv(65536)
        conn.sendall(grpcwire.frame(grpcwire.WINDOW_UPDATE, 0, 1, (100).to_bytes(4, "big")))
        while b"hello" not in data:
            data += conn.recv(65536)
        peer_saw.append(data)
        gevent.sleep(0.05)
        trailers = Encoder().encode([("grpc-status", "3"), ("grpc-message", "bad input")])
        conn.sendall(grpcwire.frame(grpcwire.HEADERS, grpcwire.END_HEADERS | grpcwire.END_STREAM, 1, trailers))
        gevent.sleep(0.1)
        conn.close()

    server = gevent.spawn(peer)
    stream = grpcwire.GrpcStream(f"127.0.0.1:{listener.getsockname()[1]}", "/x", 5,
                                 lambda t, ms: got.extend((t, m) for m in ms), closed.append)
    gevent.sleep(0.2)
    stream.send(b"hello")  # 10 bytes with the prefix, the window is 5: the rest waits for the update
    server.join(timeout=5)
    gevent.sleep(0.1)
    assert [m for _, m in got] == [b"0123456789"] and got[0][0] > 0
    frames = peer_saw[0]
    assert grpcwire.frame(grpcwire.SETTINGS, grpcwire.ACK, 0) in frames
    assert grpcwire.frame(grpcwire.PING, grpcwire.ACK, 0, b"12345678") in frames
    assert frames.endswith(grpcwire.frame(grpcwire.DATA, 0, 1, b"hello"))  # the rest after the window update
    assert [str(c) for c in closed] == ["gRPC status 3: bad input"]
    stream.close()
    listener.close()


@pytest.mark.parametrize("opening, flood, reason", [
    (grpcwire.frame(grpcwire.DATA, 0, 1, b"\x00" + (2**32 - 16).to_bytes(4, "big")), grpcwire.DATA,
     "announced a message of 4,294,967,280 bytes"),
    (grpcwire.frame(grpcwire.HEADERS, 0, 1, b"\x88"), grpcwire.CONTINUATION, "header block of more than"),
    (grpcwire.frame(grpcwire.DATA, 0, 1)[:3].replace(b"\x00\x00\x00", b"\xff\xff\xff") + b"\x00\x00\x00\x00\x01",
     grpcwire.DATA, "a frame of 16,777,215 bytes"),
], ids=["huge-message", "endless-header-block", "oversized-frame"])
def test_a_hostile_peer_cannot_grow_the_stream_without_bound(opening, flood, reason):
    """review5: a message announced as 4 GB, a header block that never ends or a frame past HTTP/2's default
    size were buffered as they came (12 GB in 25 s from a local peer); the stream now ends with the reason
    once an answer passes what any real one holds (grpcwire.MAX_MESSAGE)."""
    import gevent

    listener = _listener()
    closed: list = []

    def peer() -> None:
        conn, _ = listener.accept()
        conn.sendall(opening)
        chunk = grpcwire.frame(flood, 0, 1, b"\x00" * 16384) * 64
        for _ in range(grpcwire.MAX_MESSAGE // len(chunk) + 2):  # a little more than MAX_MESSAGE
            conn.sendall(chunk)
        gevent.sleep(10)

    server = gevent.spawn(peer)
    stream = grpcwire.GrpcStream(f"127.0.0.1:{listener.getsockname()[1]}", "/x", 5, lambda t, ms: None, closed.append)
    for _ in range(200):
        if closed:
            break
        gevent.sleep(0.05)
    assert closed and reason in str(closed[0]), closed
    stream.close()
    server.kill()
    listener.close()


_PING = grpcwire.frame(grpcwire.PING, 0, 0, b"12345678")
_NOTHING = b"\x20" * 16384  # HPACK table-size updates: a header block that decodes to no header at all
_NOTHING_BLOCK = grpcwire.frame(grpcwire.HEADERS, 0, 1, _NOTHING) + grpcwire.frame(grpcwire.CONTINUATION, 0, 1, _NOTHING) * (
    grpcwire._MAX_HEADER_BLOCK // len(_NOTHING)) + grpcwire.frame(grpcwire.CONTINUATION, grpcwire.END_HEADERS, 1, _NOTHING)


@pytest.mark.parametrize("frames, reason", [
    (_PING * 4096, "PING/SETTINGS frames without reading"),
    (grpcwire.frame(grpcwire.SETTINGS, 0, 0) * 4096, "PING/SETTINGS frames without reading"),
    (grpcwire.frame(grpcwire.SETTINGS, 0, 0, (0x5).to_bytes(2, "big") + (0).to_bytes(4, "big")),
     "SETTINGS_MAX_FRAME_SIZE 0"),
    (_NOTHING_BLOCK, "header block of more than"),
], ids=["ping-flood", "settings-flood", "frame-size-0", "header-block-of-nothing"])
def test_frames_that_demand_answers_cannot_pile_them_up_or_spin_the_sender(frames, reason):
    """review8: a server that sends PING or SETTINGS frames and never reads grew the client by 60 MB/s (each
    acknowledgement queued); SETTINGS_MAX_FRAME_SIZE 0 made the next send loop for ever on empty frames, the event
    loop starved; a 16 MiB header block of HPACK table-size updates held the event loop for ~12 s. The call now
    ends with the reason; the peer's frames are sent until then (at most ~30 MB)."""
    import gevent
    from gevent import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a peer that does not read fills up soon
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    closed: list = []

    def peer() -> None:
        conn, _ = listener.accept()
        chunk = frames * max(1, 65536 // len(frames))
        try:
            for _ in range(30 * 2**20 // len(chunk) + 1):  # never reads
                conn.sendall(chunk)
        except OSError:  # the client ended the call
            pass
        gevent.sleep(10)

    server = gevent.spawn(peer)
    stream = grpcwire.GrpcStream(f"127.0.0.1:{listener.getsockname()[1]}", "/x", 5, lambda t, ms: None, closed.append)
    gevent.sleep(0.1)
    with pytest.raises(grpcwire.StreamClosed, match=reason):  # by now or once the peer's frames are in
        for _ in range(200):
            stream.send(b"hello")
            gevent.sleep(0.05)
    assert closed and reason in str(closed[0]), closed
    stream.close()
    server.kill()
    listener.close()


def test_the_stream_watchdog_fails_a_request_that_gets_no_answer_and_hands_on_the_rest():
    """Requests sent without waiting (a closed-loop user's next request goes out from the last answer's
    callback): the one a peer never answers fails after the timeout through the process's one watchdog
    (lifecycle.watch, LoadState's), which cuts it on the stream as its answer instead of killing its user;
    the answered one completes, and each callback runs once."""
    from types import SimpleNamespace

    import gevent

    listener = _listener()

    def peer() -> None:  # answers the request with id "run-0-0" only, once it has both requests
        conn, _ = listener.accept()
        data = b""
        while data.count(b"\x1a\x07run-0-") < 2:
            data += conn.recv(65536)
        message = infer_response("run-0-0", [("text_output", "BYTES", strings(b"hi"))], final=True)
        conn.sendall(grpcwire.frame(grpcwire.DATA, 0, 1, b"\x00" + len(message).to_bytes(4, "big") + message))
        gevent.sleep(3)
        conn.close()

    server = gevent.spawn(peer)
    info = clients.ModelInfo({"name": "ensemble", "input": [{"name": "text_input"}, {"name": "max_tokens"}],
                              "output": [{"name": "text_output"}]}, None)
    client = grpcclient.GrpcLLMClient(f"grpc://127.0.0.1:{listener.getsockname()[1]}", info, timeout=0.5)
    st = SimpleNamespace(opts=SimpleNamespace(request_timeout_s=0.5), active={}, grpc=[client], nothing_left=False)
    watchdog = gevent.spawn(lifecycle.watch, st)
    answered, silent = exchange(client.decode), exchange(client.decode)
    silent.request_id = "run-0-1"
    users = {ex.request_id: gevent.spawn(gevent.sleep, 5) for ex in (answered, silent)}  # each request's waiting user
    done: list[clients.Exchange] = []

    def on_done(ex: clients.Exchange) -> None:  # as AnswerChain.answered: the user has no request in flight
        st.active.pop(users[ex.request_id])
        done.append(ex)

    for ex in (answered, silent):
        st.active[users[ex.request_id]] = ex
        client.start(ex, Prompt(0, "hi", 3, 1), on_done)
    gevent.sleep(2.0)
    assert done == [answered, silent] and not client.waiting and not st.active
    assert answered.error is None and len(answered.payloads) == 1
    assert silent.error == "no response within 0.5 s" and not silent.payloads
    assert not any(user.dead for user in users.values())  # cut on the stream, no user killed
    watchdog.kill()
    for user in users.values():
        user.kill()
    client.close()
    server.kill()
    listener.close()


_INFO = clients.ModelInfo({"name": "ensemble", "input": [{"name": "text_input"}, {"name": "max_tokens"}],
                           "output": [{"name": "text_output"}]}, None)


def _grpc_message(message: bytes) -> bytes:
    return grpcwire.frame(grpcwire.DATA, 0, 1, b"\x00" + len(message).to_bytes(4, "big") + message)


def _listener(backlog: int = 1):
    """A gevent socket listening on a free local port: a scripted peer's."""
    from gevent import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener


@contextlib.contextmanager
def _http_peer(body: bytes):
    """A local HTTP peer answering every request 200 with ``body``: yields its URL."""
    import gevent

    listener = _listener(4)

    def serve() -> None:
        while True:
            conn = listener.accept()[0]
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            conn.close()

    server = gevent.spawn(serve)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.kill()
        listener.close()


@pytest.mark.parametrize("late", [
    service_pb2.ModelStreamInferResponse(error_message="queue full",
                                         infer_response=service_pb2.ModelInferResponse(id="run-0-0")).SerializeToString(),
    infer_response("run-0-0", [("text_output", "BYTES", strings(b"late"))], final=True),
], ids=["error", "final"])
def test_a_late_answer_to_a_request_cut_off_completes_no_other_request(late):
    """review9: the answer of a request the client no longer waits for (cut by the watchdog, abandoned by a stopping
    user) is nobody's: an error carrying its id was given to the only request in flight, another user's on the shared
    stream, which failed with it."""
    import gevent

    listener = _listener()

    def peer() -> None:
        conn, _ = listener.accept()
        data = b""
        while b"\x1a\x07run-0-1" not in data:  # the second request came after the first was cut
            data += conn.recv(65536)
        conn.sendall(_grpc_message(late))
        gevent.sleep(5)

    server = gevent.spawn(peer)
    client = grpcclient.GrpcLLMClient(f"grpc://127.0.0.1:{listener.getsockname()[1]}", _INFO, timeout=5)
    cut, other = exchange(client.decode), exchange(client.decode)
    other.request_id = "run-0-1"
    done: list[clients.Exchange] = []
    client.start(cut, Prompt(0, "hi", 3, 1), done.append)
    assert client.cut(cut, "no response within 1 s")
    client.start(other, Prompt(0, "hi", 3, 1), done.append)
    gevent.sleep(0.5)
    assert done == [cut] and client.waiting == {b"run-0-1": other} and other.error is None and not other.payloads
    client.close()
    server.kill()
    listener.close()


def test_a_server_error_response_never_reads_as_the_load_generators_own_words():
    """review13: an error response's text went into the record as sent, and records.server_gone reads a refusal or a
    silence from the start of the error: one model error "TimeoutError: ..." (a Python model's usual way to name an
    exception) stopped the run as "the server stopped answering" and cut every request in flight."""
    import gevent

    from generator.measure.records import server_gone

    said = ["TimeoutError: the tokenizer service did not answer", "no response within 5 s",
            "ConnectionRefusedError: [Errno 111] Connection refused", "gRPC stream failed: connection error: timed out"]
    listener = _listener()

    def peer() -> None:
        conn, _ = listener.accept()
        data = b""
        while not all(f"run-0-{i}".encode() in data for i in range(len(said))):
            data += conn.recv(65536)
        for i, text in enumerate(said):
            conn.sendall(_grpc_message(service_pb2.ModelStreamInferResponse(
                error_message=text, infer_response=service_pb2.ModelInferResponse(id=f"run-0-{i}")).SerializeToString()))
        gevent.sleep(5)

    server = gevent.spawn(peer)
    client = grpcclient.GrpcLLMClient(f"grpc://127.0.0.1:{listener.getsockname()[1]}", _INFO, timeout=5)
    done: list[clients.Exchange] = []
    for i in range(len(said)):
        ex = exchange(client.decode)
        ex.request_id = f"run-0-{i}"
        client.start(ex, Prompt(0, "hi", 3, 1), done.append)
    for _ in range(100):
        if len(done) == len(said):
            break
        gevent.sleep(0.02)
    assert [ex.error for ex in done] == [f"server error: {text}" for text in said]
    assert [server_gone(ex.error) for ex in done] == [None] * len(said)
    client.close()
    server.kill()
    listener.close()


def _gone_from_the_second(errors: list, answered: bool) -> None:
    """Three requests' errors: the server is gone from the second unanswered connection on, never when answered."""
    from generator.measure.records import server_gone

    assert [bool(server_gone(e)) for e in errors] == ([False] * 3 if answered else [False, True, True]), errors


@pytest.mark.parametrize("answers", [False, True], ids=["unanswered", "answered"])
def test_connections_that_end_unanswered_twice_in_a_row_mean_the_server_is_gone(answers):
    """review13: a port that accepts and closes at once (a proxy or port-forward whose server is gone) failed every
    request at once, ~2,000 records a second for the rest of the run, where a refused port ends it (review 10). A
    call that ended after answering is no sign: it resets the count (a server resetting connections mid-run)."""
    import gevent

    listener = _listener(8)

    def serve() -> None:
        while True:
            conn = listener.accept()[0]
            if answers:  # a response (to another request of the call) before the end
                conn.recv(65536)
                conn.sendall(_grpc_message(infer_response("other", [("text_output", "BYTES", strings(b"a"))])))
            gevent.sleep(0.05)
            conn.close()

    server = gevent.spawn(serve)
    client = grpcclient.GrpcLLMClient(f"grpc://127.0.0.1:{listener.getsockname()[1]}", _INFO, timeout=5)
    errors = []
    for i in range(3):
        ex = exchange(client.decode)
        ex.request_id = f"run-0-{i}"
        done = gevent.event.Event()
        client.start(ex, Prompt(0, "hi", 3, 1), lambda _ex: done.set())
        assert done.wait(5)
        errors.append(ex.error)
    _gone_from_the_second(errors, answers)
    client.close()
    server.kill()
    listener.close()


@pytest.mark.parametrize("answers", [False, True], ids=["unanswered", "answered"])
def test_http_connections_that_end_unanswered_twice_in_a_row_mean_the_server_is_gone(answers):
    """review13: the HTTP users' side of the test above (~1,400 records a second against a port that accepts and
    closes); an answer between two closed connections resets the count."""
    import gevent

    listener = _listener(8)

    def serve() -> None:
        while True:
            conn = listener.accept()[0]
            request = conn.recv(65536)
            if request.startswith(b"GET") or answers:  # the client's first GET, or every request
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()

    server = gevent.spawn(serve)
    client = httpclient.HttpLLMClient(f"http://127.0.0.1:{listener.getsockname()[1]}", _INFO, False, 5)
    errors = []
    for i in range(3):
        ex = exchange(client.decode)
        try:
            client.generate(ex, Prompt(0, "hi", 3, 1))
        except Exception as exc:  # noqa: BLE001 - as lifecycle.run_request records it
            ex.fail(f"{type(exc).__name__}: {exc}")
        errors.append(ex.error)
    _gone_from_the_second(errors, answers)
    client.close()
    server.kill()
    listener.close()


@pytest.mark.parametrize("read", ["model_info", "openai_model", "http_user", "openai_user"])
def test_a_setup_answer_past_the_bound_fails_the_setup_not_the_memory(read):
    """review15: each Locust process read a model's config, /v1/models and its users' warm-up answers whole: a
    server that sent those without end grew every Locust process to 7.4 GB in 75 s, to a MemoryError. They are read
    up to MAX_MESSAGE, as every other answer (here one byte more arrives, then the answer ends)."""
    body = b'{"data": [{"id": "m"}], "name": "m", "pad": "' + b"x" * grpcwire.MAX_MESSAGE + b'"}'
    with _http_peer(body) as url:
        calls = {"model_info": lambda: clients.model_info(url, "ensemble", 5),
                 "openai_model": lambda: openaiapi.openai_model(url, None, 5),
                 "http_user": lambda: httpclient.HttpLLMClient(url, _INFO, False, 5),
                 "openai_user": lambda: openaiapi.OpenAIClient(url, openaiapi.OpenAIModel("m"), "openai-chat", 5, None)}
        with pytest.raises(ValueError, match=f"longer than {grpcwire.MAX_MESSAGE:,} bytes"):
            calls[read]()


def test_users_sending_at_once_after_the_stream_ended_share_one_new_stream():
    """review9: once the shared stream ended, users sending at once (open loop: a greenlet per request) each opened a
    stream of their own; all but the last were left open, and when one of them ended, every request of the process
    failed with it, also those on the stream in use."""
    import gevent

    listener = _listener(64)
    conns: list = []

    def serve() -> None:
        while True:
            conns.append(listener.accept()[0])

    server = gevent.spawn(serve)
    client = grpcclient.GrpcLLMClient(f"grpc://127.0.0.1:{listener.getsockname()[1]}", _INFO, timeout=5)
    gevent.sleep(0.1)
    conns[0].close()  # the server ends the first stream
    for _ in range(100):
        if client.stream.closed is not None:
            break
        gevent.sleep(0.02)
    users = [exchange(client.decode) for _ in range(8)]
    for i, ex in enumerate(users):
        ex.request_id = f"run-0-{i}"
    gevent.joinall([gevent.spawn(client.start, ex, Prompt(0, "hi", 3, 1), lambda _ex: None) for ex in users],
                   raise_error=True)
    gevent.sleep(0.2)
    assert len(conns) == 2 and client.stream.closed is None  # the first and one more, which carries them all
    assert len(client.waiting) == 8 and not any(ex.error for ex in users)
    client.close()
    server.kill()
    listener.close()


def test_a_server_that_never_answers_a_unary_call_is_a_timeout_error():
    """review9: the load test's model discovery against a server that accepts and says nothing raised gevent's
    Timeout, a BaseException that the setup's error handling let through: a traceback, and the run idled to its end."""
    import gevent

    listener = _listener()
    server = gevent.spawn(listener.accept)
    with pytest.raises(TimeoutError, match="sent no answer to /x within 0.2 s"):
        grpcwire.unary(f"127.0.0.1:{listener.getsockname()[1]}", "/x", b"", 0.2)
    server.kill()
    listener.close()


def _ends_early() -> list[bytes]:
    """Valid ModelStreamInferResponse messages that end before the fields ``route`` reads off the bytes."""
    named = service_pb2.ModelStreamInferResponse()
    named.infer_response.model_name, named.infer_response.model_version = "ensemble", "1"
    return [b"\x12\x00", named.SerializeToString(), service_pb2.ModelStreamInferResponse(
        infer_response=service_pb2.ModelInferResponse(model_name="ensemble")).SerializeToString()]


@pytest.mark.parametrize("message", _ends_early())
def test_a_valid_response_laid_out_otherwise_is_parsed_not_raised_on(message):
    """route reads Triton's layout straight off the bytes; a shorter valid message goes to the full parse instead
    of raising in the stream's reader, which would fail every request in flight on the stream."""
    assert grpcclient.route(message) is None
    assert service_pb2.ModelStreamInferResponse.FromString(message).infer_response.id == ""


_STREAMS = """
import collections
import itertools
import sys
from types import SimpleNamespace

sys.path.insert(0, sys.argv[1])
import gevent
import gevent.lock
from gevent import socket

import clients
import tritonllm

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
accepted = []

def serve():
    while True:
        accepted.append(listener.accept()[0])  # a peer that says nothing: the client's connect is all it needs

server = gevent.spawn(serve)
tritonllm._STATE = SimpleNamespace(grpc=[], grpc_opening=gevent.lock.Semaphore(), grpc_users=itertools.count(),
                                   opts=SimpleNamespace(grpc_streams=int(sys.argv[2])))
info = clients.ModelInfo({"name": "ensemble", "input": [], "output": [{"name": "text_output"}]}, None)
host = "grpc://127.0.0.1:%d" % listener.getsockname()[1]
users = [gevent.spawn(tritonllm.make_client, "grpc-stream", host, info, 5) for _ in range(16)]
gevent.joinall(users, raise_error=True)
gevent.sleep(0.2)
print(sorted(collections.Counter(id(u.value) for u in users).values()), len(accepted))
"""


@pytest.mark.parametrize("streams, users_per_stream", [(1, [16]), (4, [4, 4, 4, 4])])
def test_users_started_at_once_share_the_processs_grpc_streams(tmp_path, streams, users_per_stream):
    """Locust starts a process's users at once (spawn rate = users, as every bench and sweep does): each user that
    asked for the gRPC client while the first one connected made its own connection, so 256 users ran 256
    connections and all but one on the per-request path (docs/benchmarks.md). Now they wait for the streams
    loadtest.grpc_streams asks for and are spread over them in turn."""
    import subprocess

    script = tmp_path / "streams.py"
    script.write_text(_STREAMS)
    out = subprocess.run([sys.executable, str(script), str(loadtest_dir()), str(streams)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"{users_per_stream} {streams}"  # users per client, connections
