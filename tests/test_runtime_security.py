"""Issue 23, the runtime side: what reaches Locust's config file, the distributed Locust master's
authentication and a lost worker, ``stop`` scoped to its own client, prompt length before tokenizing,
and the LLM-API stand-in's errors.

Locust's config file is read by Locust's own parser in a subprocess (importing Locust here would
monkey-patch this process); the server tests use the session's servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from generator.errors import SpecError
from generator.measure.locustconf import locust_conf_text, locust_options
from generator.serve.client import ServerRequestError, generate, grpc_stream, text_inputs
from generator.serve.endpoints import Endpoints
from generator.spec.load import spec_from_dict

HOSTILE = [
    "ensemble\nlocustfile = /tmp/evil.py", "m\rhost = http://evil:1", "m\u2028x", "[a, b]", '"quoted"',
    "a # comment", "a ; comment", " padded ", "m\x00n", "tab\there", "ok-name.v2", "path/with spaces/x",
]
"""Line breaks (\\n, \\r, Unicode's), list and quote syntax, inline comments, edge spaces, NUL; and two
harmless values that must pass unchanged."""

_LOCUST_READS = """
import json, sys
from locust.argument_parser import LocustConfigParser
out = []
for path in json.loads(sys.argv[1]):
    with open(path, encoding="utf-8") as f:
        out.append({k: str(v) for k, v in LocustConfigParser().parse(f).items()})
print(json.dumps(out))
"""


def test_hostile_values_never_change_what_locust_reads_from_its_config(tmp_path):
    """Finding 7: a value either reaches Locust exactly as given (Locust's own parser reads every key
    back unchanged, no key added or replaced) or is refused naming the field it came from."""
    base = locust_options(spec_from_dict({}).resolved_loadtest(), Endpoints.from_urls("127.0.0.1:8000"),
                          tmp_path / "records.jsonl", tmp_path / "locustfile.py")
    written, refused = [], 0
    for key in ("model", "prompts", "tokenizer", "records", "host"):
        for value in HOSTILE:
            options = {**base, key: value}
            try:
                text = locust_conf_text(options)
            except SpecError as exc:
                assert exc.where == {"host": "--url", "records": "the output folder (-o)"}.get(key, f"loadtest.{key}")
                refused += 1
                continue
            path = tmp_path / f"{len(written)}.conf"
            path.write_text(text, encoding="utf-8")
            written.append((path, options))
    assert refused and len(written) >= 2 * 5  # the harmless values pass
    out = subprocess.run([sys.executable, "-c", _LOCUST_READS, json.dumps([str(p) for p, _ in written])],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    for (_, options), read in zip(written, json.loads(out)):
        assert read == {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}


def test_a_model_name_with_a_line_break_is_refused_by_the_spec():
    with pytest.raises(SpecError, match="loadtest.model"):
        spec_from_dict({"loadtest": {"model": "ensemble\nlocustfile = /tmp/evil.py"}})


def _stop(server, model, rid, prompt):
    """A stop request for request id ``rid`` repeating ``prompt``, answer ignored. The ensemble has no
    stop input: its clients' ids reach tensorrt_llm unchanged, so a stop goes to tensorrt_llm directly
    with the prompt's token ids (from the repository's own preprocessing)."""
    if model == "ensemble":
        import threading

        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(server.http_url)
        query = httpclient.InferInput("QUERY", [1, 1], "BYTES")
        query.set_data_from_numpy(np.array([[prompt.encode()]], dtype=np.object_))
        length = httpclient.InferInput("REQUEST_OUTPUT_LEN", [1, 1], "INT32")
        length.set_data_from_numpy(np.array([[1]], dtype=np.int32))
        pre = client.infer("preprocessing", [query, length])
        stop = {"input_ids": pre.as_numpy("INPUT_ID").astype(np.int32),
                "input_lengths": pre.as_numpy("REQUEST_INPUT_LEN").astype(np.int32),
                "request_output_len": np.array([[1]], dtype=np.int32), "stop": np.array([[True]])}
        threading.Thread(target=grpc_stream, args=(server.grpc_url, "tensorrt_llm", stop),
                         kwargs={"request_id": rid, "timeout": 60}, daemon=True).start()
        return
    try:
        generate(server.http_url, model, {"text_input": prompt, "stop": True, "id": rid}, 60)
    except ServerRequestError:
        pass  # the LLM-API model answers a stop with a CANCELLED error, as upstream


@pytest.mark.server
@pytest.mark.parametrize("which, model", [("cpu_server", "ensemble"), ("llmapi_server", "tensorrt_llm")])
def test_a_stop_cancels_only_the_stream_of_the_client_that_sent_it(request, which, model):
    """Finding 10: a stop carrying another client's request id (here guessed; for an ensemble client sent
    straight to tensorrt_llm, which sees the client's id) but not its prompt leaves that client's
    generation whole; a stop with the same id and the same prompt still ends it early."""
    server = request.getfixturevalue(which)
    victim, wanted = "The repair café meets in the church hall", 48
    if model == "ensemble":
        inputs = text_inputs(victim, wanted, stream=True)
    else:
        inputs = {"text_input": np.array([victim.encode()], dtype=np.object_), "streaming": np.array([True]),
                  "sampling_param_max_tokens": np.array([wanted], dtype=np.int32)}

    def stream(stopper=None):
        def after(n):
            if n == 2 and stopper:
                stopper()
            return True
        return grpc_stream(server.grpc_url, model, inputs, request_id="client-7", timeout=120, on_response=after,
                           cumulative=model != "ensemble")

    whole = stream()
    attacked = stream(lambda: _stop(server, model, "client-7", "something else entirely"))
    assert attacked.error is None and attacked.text == whole.text and len(attacked.pieces) == len(whole.pieces)
    own = stream(lambda: _stop(server, model, "client-7", victim))
    assert len(own.pieces) < len(whole.pieces) and len(own.text) < len(whole.text)


_INTRUDER = """
import sys, time
from locust import __version__
from locust.rpc import Message
from locust.rpc.zmqrpc import Client
port, seconds = int(sys.argv[1]), float(sys.argv[2])
fake = {"kind": "request", "id": "forged", "proc": 0, "error": None}
client = Client("127.0.0.1", port, "intruder_1")
end = time.monotonic() + seconds
while time.monotonic() < end:
    for msg in (Message("client_ready", __version__, "intruder_1"),
                Message("tritongen_hello", {"token": "0" * 32}, "intruder_1"),
                Message("tritongen_records", [fake] * 50, "intruder_1"),
                Message("tritongen_done", {"index": 0}, "intruder_1"),
                Message("quit", None, "some_worker"), *(Message(f"made-up-{i}", None, "intruder_1") for i in range(40))):
        client.send(msg)
    time.sleep(0.2)
"""


def _distributed(cpu_spec, cpu_server, out, monkeypatch, *overrides):
    """A distributed run on a known master port; returns (port, the run in a thread's result holder)."""
    import generator.serve.ports as ports_module
    from generator.measure.runner import run_loadtest
    from generator.spec import with_overrides

    port = ports_module.free_port()
    monkeypatch.setattr(ports_module, "free_port", lambda host="127.0.0.1": port)
    spec = with_overrides(cpu_spec, ["loadtest.input_tokens_mean=16", "loadtest.output_tokens_mean=8",
                                     "loadtest.num_prompts=4", "loadtest.reference_checks=0",
                                     "loadtest.warmup_requests=0", "loadtest.protocol=http-stream",
                                     "loadtest.request_timeout_s=30", *overrides])
    out.mkdir(parents=True, exist_ok=True)
    return port, lambda: run_loadtest(spec, out, url=f"http://{cpu_server.http_url}", grpc_url=cpu_server.grpc_url,
                                      metrics_url=cpu_server.metrics_url, admin_key=cpu_server.admin_key)


@pytest.mark.server
def test_the_locust_master_hears_only_the_workers_of_its_run(cpu_spec, cpu_server, tmp_path, monkeypatch):
    """Finding 8: a client on the master's port sending forged records, a forged "done", a worker's
    client_ready with a wrong token and a "quit" for another worker changes nothing: every request of
    the run is there, none of the forged ones, and the refused messages are counted in the results."""
    port, run = _distributed(cpu_spec, cpu_server, tmp_path / "out", monkeypatch, "loadtest.workers=1",
                             "loadtest.users=2", "loadtest.max_requests=12", "loadtest.duration_s=120")
    intruder = subprocess.Popen([sys.executable, "-c", _INTRUDER, str(port), "60"])
    try:
        res = run().results
    finally:
        intruder.kill()
        intruder.wait()
    from generator.measure.records import read_records

    requests_ = read_records(tmp_path / "out" / "records.jsonl").requests
    assert res.counts.ok == 12 and not any(r["id"] == "forged" for r in requests_)
    rejected = res.run.integrity.rejected_messages
    assert rejected.get("tritongen_records") and rejected.get("tritongen_done") and rejected.get("quit"), rejected
    assert len(rejected) <= 17 and rejected.get("other"), rejected  # made-up kinds cannot bloat results.json
    assert res.run.integrity.incomplete is None


@pytest.mark.server
def test_a_lost_worker_ends_the_run_with_its_records_kept(cpu_spec, cpu_server, tmp_path, monkeypatch):
    """Finding 9: one of two workers killed mid-run; the run ends soon after (the other drains) instead
    of waiting out the run and the timeout, the records received are kept and the run is marked
    incomplete, naming the worker."""
    import os
    import signal
    import threading
    import time

    port, run = _distributed(cpu_spec, cpu_server, tmp_path / "out", monkeypatch, "loadtest.workers=2",
                             "loadtest.users=4", "loadtest.duration_s=600")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", run()), daemon=True)
    thread.start()
    records = tmp_path / "out" / "records.jsonl"
    deadline = time.monotonic() + 240  # a request's record: both workers connected and the run under way
    while time.monotonic() < deadline and not (records.is_file() and '"kind":"request"' in records.read_text()):
        time.sleep(0.5)
    worker = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                  and _cmdline(p).endswith(f"--worker --master-host 127.0.0.1 --master-port {port}"))
    os.kill(worker, signal.SIGKILL)
    thread.join(300)  # the run itself would last 600 s
    logs = "".join(f"\n--- {log.name}:\n" + log.read_text(errors="replace")[-3000:]
                   for log in sorted((tmp_path / "out").glob("locust*.log")))
    assert not thread.is_alive(), f"the run waited for the lost worker (killed pid {worker}); the Locust logs:{logs}"
    res = result["r"].results
    integrity = res.run.integrity
    assert integrity.incomplete and "worker" in integrity.incomplete and len(integrity.lost_workers) == 1
    assert res.counts.ok > 0


@pytest.mark.server
def test_a_worker_that_never_connects_fails_the_run_soon_with_its_cause(cpu_spec, cpu_server, tmp_path, monkeypatch):
    """A worker stopped before it reached the master (as one that dies or hangs while starting): the master gives
    up after locustconf.WORKERS_CONNECT_S instead of waiting for ever (the run's whole timeout, an empty records
    file), and the error's first line says so. 2 s: the stopped worker never connects however long the master
    waits, and the error is the same when the other worker is slower than that."""
    import signal
    import threading
    import time

    from generator.errors import LoadTestError
    from generator.measure import locustconf

    monkeypatch.setattr(locustconf, "WORKERS_CONNECT_S", 2)
    port, run = _distributed(cpu_spec, cpu_server, tmp_path / "out", monkeypatch, "loadtest.workers=2",
                             "loadtest.users=4", "loadtest.duration_s=600")
    stopped: list[int] = []

    def stop_a_worker() -> None:  # as soon as it exists, long before its imports let it connect
        deadline = time.monotonic() + 60
        while not stopped and time.monotonic() < deadline:
            for p in Path("/proc").iterdir():
                if p.name.isdigit() and _cmdline(p).endswith(f"--worker --master-host 127.0.0.1 --master-port {port}"):
                    os.kill(int(p.name), signal.SIGSTOP)
                    stopped.append(int(p.name))
                    break
            time.sleep(0.01)

    watcher = threading.Thread(target=stop_a_worker, daemon=True)
    watcher.start()
    try:
        with pytest.raises(LoadTestError) as err:
            run()
    finally:
        watcher.join()
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped
    first = str(err.value).splitlines()[0]  # "WHERE: message"
    assert first.endswith("out/locust.log: not every Locust worker connected to the master within 2 s: one died or "
                          f"hung while starting (its locust-worker-N.log in {tmp_path / 'out'} says which)"), first


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@pytest.mark.server
@pytest.mark.parametrize("which, model, max_key, field", [
    ("cpu_server", "ensemble", "max_tokens", "text_input"), ("cpu_server", "tensorrt_llm_bls", "max_tokens", "text_input"),
    ("llmapi_server", "tensorrt_llm", "sampling_param_max_tokens", "text_input"),
    ("cpu_server", "ensemble", "max_tokens", "decoder_text_input"),
    ("cpu_server", "tensorrt_llm_bls", "max_tokens", "decoder_text_input")])
def test_a_10_mb_prompt_is_refused_before_it_is_tokenized(request, which, model, max_key, field):
    """Finding 16: the refusal names the prompt's characters and max_input_len (the cheap bound, before
    any tokenizing; it used to be the engine's "prompt length (N tokens)" after tokenizing all of it),
    and a small request beside it is answered. Review 15: a 10 MB decoder_text_input, which preprocessing
    tokenizes too, was not bounded: three of them delayed a small request from 0.06 s to 37.9 s (and passed)."""
    import requests as http

    server = request.getfixturevalue(which)
    url = f"http://{server.http_url}/v2/models/{model}/generate"
    big = http.post(url, json={"text_input": "a small request", field: "word " * 2_000_000, max_key: 4}, timeout=300)
    assert big.status_code == 400 and f"{field} of 10000000 characters" in big.text and "max_input_len" in big.text, \
        big.text
    small = http.post(url, json={"text_input": "a small request", max_key: 4}, timeout=300)
    assert small.status_code == 200, small.text


def _max_words() -> int:
    """The models' own limit (model_common.py, which render copies next to each model)."""
    import importlib.util

    from generator.resources import model_repo_dir

    spec = importlib.util.spec_from_file_location("_model_common", model_repo_dir() / "_shared" / "model_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MAX_WORDS


MAX_WORDS = _max_words()


@pytest.mark.server
@pytest.mark.parametrize("which, model, words_key, max_key", [
    ("cpu_server", "ensemble", "stop_words", "max_tokens"), ("cpu_server", "ensemble", "bad_words", "max_tokens"),
    ("cpu_server", "ensemble", "embedding_bias_words", "max_tokens"), ("cpu_server", "tensorrt_llm_bls", "stop_words", "max_tokens"), ("cpu_server", "tensorrt_llm", "stop_words_list", None),
    ("llmapi_server", "tensorrt_llm", "sampling_param_stop", "sampling_param_max_tokens")])
def test_stop_and_bad_word_lists_are_bounded(request, which, model, words_key, max_key):
    """Second review: every step compares each stop and bad word with the newest tokens, on the threads
    that serve everyone, so 100,000 words in one request made a neighbour's 24 tokens take 10.6 s instead of
    0.3 s (100,000 embedding-bias words, tokenized one by one: 0.8 s to 3.2 s). Each list holds at most
    MAX_WORDS words: one more is a refusal naming the count and the limit (before anything is tokenized);
    MAX_WORDS words are served."""
    import requests as http

    server = request.getfixturevalue(which)
    for count in (MAX_WORDS + 1, MAX_WORDS):
        if max_key is None:  # token ids straight to the engine: [2, N] ids, then end offsets
            ids = np.arange(count, dtype=np.int32) % 100 + 5
            inputs = {"input_ids": np.array([[5] * 8], np.int32), "input_lengths": np.array([[8]], np.int32),
                      "request_output_len": np.array([[4]], np.int32), "streaming": np.array([[True]]),
                      words_key: np.stack([ids, np.arange(1, count + 1, dtype=np.int32)])[None]}
            error = grpc_stream(server.grpc_url, model, inputs, timeout=120).error
        else:
            body = {"text_input": "a small request", max_key: 4, words_key: [f"w{i}" for i in range(count)]}
            if words_key == "embedding_bias_words":
                body["embedding_bias_weights"] = [0.5] * count
            r = http.post(f"http://{server.http_url}/v2/models/{model}/generate", timeout=120, json=body)
            error = None if r.ok else r.text
        if count > MAX_WORDS:
            assert error and f"{count} words" in error and str(MAX_WORDS) in error, error
        else:
            assert error is None, error


@pytest.fixture(scope="module")
def nondecoupled_llmapi_server(cpu_spec, llmapi_spec, nvfp4_checkpoint_dir, tmp_path_factory):
    """The LLM-API repository with serving.decoupled=false: its stand-in and its CPU engine model not decoupled. Beside
    them, the engine layout's non-decoupled tensorrt_llm_bls with its preprocessing and postprocessing, calling that
    same engine model (the one parameter that names it changed), so that no other server starts for the BLS."""
    import shutil

    from generator.repo.llmapi import CPU_ENGINE_MODEL
    from generator.repo.render import BLS, POSTPROCESSING, PREPROCESSING, TENSORRT_LLM, render_repository
    from generator.serve.server import TritonServer
    from generator.spec import with_overrides

    folder = tmp_path_factory.mktemp("nondecoupled")
    repo = render_repository(with_overrides(llmapi_spec, ["serving.decoupled=false"]), folder / "repo")
    engine_layout = render_repository(with_overrides(cpu_spec, ["serving.decoupled=false"]), folder / "engine-layout")
    for model in (PREPROCESSING, POSTPROCESSING, BLS):
        shutil.copytree(engine_layout / model, repo / model)
    config = repo / BLS / "config.pbtxt"
    def named(model: str) -> str:
        return f'key: "tensorrt_llm_model_name" value {{ string_value: "{model}" }}'

    assert named(TENSORRT_LLM) in config.read_text()
    config.write_text(config.read_text().replace(named(TENSORRT_LLM), named(CPU_ENGINE_MODEL)))
    with TritonServer(repo, log_file=folder / "triton.log") as server:
        yield server


@pytest.mark.server
def test_the_non_decoupled_llmapi_stand_in_sends_no_stack_frames(nondecoupled_llmapi_server):
    """Low finding: an error of the non-decoupled LLM-API stand-in reaches the client as its message
    alone; it used to carry the Python stack with file paths."""
    import requests as http

    url = f"http://{nondecoupled_llmapi_server.http_url}/v2/models/tensorrt_llm/generate"
    r = http.post(url, json={"text_input": "hello", "stop": True}, timeout=120)
    assert r.status_code >= 400 and "a stop request needs a decoupled model" in r.text
    assert ".py" not in r.text and "At:" not in r.text, r.text
    assert http.post(url, json={"text_input": "hello", "sampling_param_max_tokens": 4}, timeout=120).ok


@pytest.mark.server
@pytest.mark.parametrize("model", ["tensorrt_llm_cpu", "tensorrt_llm", "tensorrt_llm_bls"],
                         ids=["engine", "llmapi-stand-in", "bls"])
def test_a_short_request_is_answered_beside_a_long_one_when_not_decoupled(nondecoupled_llmapi_server, trtllm_gauge,
                                                                          model):
    """Review 15: the non-decoupled CPU engine waited in ``execute`` until every request of its batch was done, and
    the non-decoupled LLM-API stand-in served its requests one after another, so a request that came while a long
    one generated was held until the long one's last token (upstream's backend, and the decoupled mode, answer it
    beside): a 2-token request took 0.12-0.22 s (engine) and 0.59 s (stand-in) instead of 0.03-0.04 s. Review 17:
    the non-decoupled tensorrt_llm_bls returned each answer from ``execute`` (Triton hands it one request at a time),
    so a 1-token request waited 7.6 s for a 64-token one. Now the short answer arrives before the long one's last
    token (the engine's perf metrics: both clocks CLOCK_MONOTONIC)."""
    import threading
    import time

    from generator.serve.client import http_infer, llmapi_inputs

    server = nondecoupled_llmapi_server

    def inputs(tokens: int) -> dict[str, np.ndarray]:
        if model == "tensorrt_llm":
            return llmapi_inputs("a prompt", {"sampling_param_max_tokens": tokens,
                                              "sampling_param_return_perf_metrics": True})
        if model == "tensorrt_llm_bls":
            return text_inputs("a prompt", tokens, extra={"min_tokens": np.array([[tokens]], np.int32),
                                                          "return_perf_metrics": np.array([[True]])})
        return {"input_ids": np.array([[5, 6, 7, 8]], np.int32), "input_lengths": np.array([[4]], np.int32),
                "request_output_len": np.array([[tokens]], np.int32), "end_id": np.array([[-1]], np.int32),
                "return_perf_metrics": np.array([[True]])}

    long = {}
    long_tokens = 64 if model == "tensorrt_llm_bls" else 100  # the BLS: at most the spec's max_output_len
    thread = threading.Thread(target=lambda: long.setdefault("answer", http_infer(
        server.http_url, model, inputs(long_tokens), timeout=120)))
    thread.start()
    deadline = time.monotonic() + 60
    while trtllm_gauge(server, "nv_trt_llm_request_metrics", "active") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)  # until the long request is in the engine
    http_infer(server.http_url, model, inputs(2), timeout=120)
    short_done = time.monotonic_ns()
    thread.join()
    last_token = int(long["answer"].as_numpy("last_token_time_ns").reshape(-1)[0])
    assert short_done < last_token, (short_done, last_token)


@pytest.mark.server
def test_a_burst_of_requests_does_not_hold_back_the_answers_already_made(nondecoupled_llmapi_server):
    """Review 16: the LLM-API stand-in made one engine call (BLS) per request in flight, and Triton 2.51's Python
    backend serves each on one of 32 threads until it ends, with what the model sends queued behind the calls waiting
    for a thread: 150 requests sent at once held every answer for 60 s (the engine ended 16 every 6.4 s). Now the
    stand-in keeps fewer calls in flight than there are threads: an answer arrives before a request the engine
    scheduled only after it ended has ended too (the engine's perf metrics and this clock: both CLOCK_MONOTONIC)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from generator.serve.client import http_infer, llmapi_inputs

    def ask(_: int) -> tuple[int, int, int]:
        answer = http_infer(nondecoupled_llmapi_server.http_url, "tensorrt_llm", llmapi_inputs(
            "the long one", {"sampling_param_max_tokens": 32, "sampling_param_return_perf_metrics": True}), timeout=300)
        arrived = time.monotonic_ns()
        return arrived, *(int(answer.as_numpy(name).reshape(-1)[0])
                          for name in ("first_scheduled_time_ns", "last_token_time_ns"))

    with ThreadPoolExecutor(72) as pool:  # 40 more engine calls than the backend's threads
        answers = list(pool.map(ask, range(72)))
    for arrived, _, ended in answers:
        later = [b_ended for _, b_scheduled, b_ended in answers if b_scheduled > ended]
        assert not later or arrived < min(later), (arrived, ended, min(later))


def test_an_engine_call_slot_comes_back_however_its_request_ends():
    """Review 17: tensorrt_llm_bls and the LLM-API stand-in hold one of ENGINE_CALLS slots per engine call (a burst
    held every answer back when the calls outnumbered the backend's threads). A slot left by an error, a return or a
    generator closed early comes back (24 leaks would stall the model for good), and a wait ends once unwanted."""
    import importlib.util

    from generator.resources import model_repo_dir

    spec = importlib.util.spec_from_file_location("_model_common", model_repo_dir() / "_shared" / "model_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = module.EngineCalls(2)

    def both_free() -> bool:  # a request that is no longer wanted takes a free slot, never waits for one
        with calls.slot(lambda: False) as first, calls.slot(lambda: False) as second:
            return first and second

    def streaming():  # as the BLS's _generate: a slot held across yields
        with calls.slot(lambda: True):
            yield 1
            yield 2

    with pytest.raises(RuntimeError), calls.slot(lambda: True):
        raise RuntimeError("engine failed")
    assert both_free()
    stream = streaming()
    next(stream)
    stream.close()  # the client went away after its first piece
    assert both_free()
    assert list(streaming()) == [1, 2] and both_free()
    with calls.slot(lambda: True) as first, calls.slot(lambda: True) as second:
        with calls.slot(lambda: False) as third:  # both held: a stopped request stops waiting
            assert (first, second, third) == (True, True, False)
    assert both_free()


def test_in_cluster_locust_carries_the_run_token_from_a_secret_and_has_a_deadline():
    """Findings 8 and 9 in the cluster: master and workers read the run token from a Secret (never the
    manifest), and the master Job ends by its deadline even when a worker is lost."""
    import yaml

    from generator.deploy.loadtest import render_loadtest_manifests

    docs = {d["kind"]: d for d in yaml.safe_load_all(render_loadtest_manifests(spec_from_dict({}))) if d}
    for kind in ("Job", "Deployment"):
        [container] = docs[kind]["spec"]["template"]["spec"]["containers"]
        [env] = container["env"]
        assert env["name"] == "TRITONGEN_RUN_TOKEN" and env["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert 0 < docs["Job"]["spec"]["activeDeadlineSeconds"] < 3600


class _HostileOpenAI:
    """An OpenAI-compatible server in a thread whose first answers are ``hostile`` (then short, well-formed ones):
    ``endless`` an event every 50 ms that never ends, ``giant`` one SSE line of 20 MB without a newline, held
    open, ``trickle`` an SSE comment byte every 0.3 s and no event, ever, ``flood`` 80 MiB of small events as
    fast as it can, then the end."""

    def __init__(self, hostile: list[str]):
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        plan, lock, stop = list(hostile), threading.Lock(), threading.Event()
        event = b'data: {"choices": [{"delta": {"content": " hi"}}]}\n\n'
        self.stop = stop

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b'{"data": [{"id": "m"}]}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    kind = plan.pop(0) if plan else "ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    if kind == "ok":
                        self.wfile.write(event * 2 + b"data: [DONE]\n\n")
                        return
                    if kind == "flood":
                        block = b'data: {"choices": [{"delta": {"content": "' + b"y" * 4000 + b'"}}]}\n\n'
                        self.wfile.write(block * ((80 << 20) // len(block)) + b"data: [DONE]\n\n")
                        return
                    if kind == "giant":
                        self.wfile.write(b'data: {"choices": [{"delta": {"content": "' + b"x" * (20 << 20))
                    while not stop.is_set():
                        self.wfile.write(event if kind == "endless" else b":")
                        self.wfile.flush()
                        time.sleep(0.05 if kind == "endless" else 0.3)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("hostile, errors", [
    (["endless", "giant", "flood"], ["still answering 3 s after the run ended", "longer than 16,777,216 bytes",
                                     "the answer is longer than 67,108,864 bytes"]),
    (["trickle"], ["no response within 3 s"]),
], ids=["endless-and-giant-line", "trickle"])
def test_a_hostile_answer_fails_its_own_request_and_the_run_still_ends(cpu_spec, tiny_model_dir, tmp_path,
                                                                        hostile, errors):
    """review5: an answer that never ends, a line that never ends, or a byte now and then with no event held
    an SSE client's read for ever (its per-read timeout never fired): the run outlived its end until the
    runner gave up (exit 11, no results), and a 300 MB line grew quadratically slowly in one read. Now each
    fails its own request with the reason, the well-formed answers count, and the run ends with its results.
    review6: an answer of ever more small events grew the Locust process without bound (21 GB, killed by the
    kernel) and its record passed what read_records reads; it is cut at MAX_ANSWER bytes."""
    from generator.measure.records import read_records
    from generator.measure.runner import run_loadtest
    from generator.spec import with_overrides

    server = _HostileOpenAI(hostile)
    spec = with_overrides(cpu_spec, ["loadtest.protocol=openai-chat", f"loadtest.tokenizer={tiny_model_dir}",
                                     f"loadtest.users={len(hostile) + 1}", "loadtest.duration_s=2",
                                     "loadtest.request_timeout_s=3", "loadtest.warmup_requests=0",
                                     "loadtest.reference_checks=0"])
    try:
        results = run_loadtest(spec, tmp_path, url=server.url, report=False).results
    finally:
        server.close()
    failed = [r["error"] for r in read_records(tmp_path / "records.jsonl").requests if r["error"]]
    assert results.counts.ok > 0, failed
    for error in errors:
        assert any(error in e for e in failed), (error, failed)


_PENDING_FLOOD = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from locust import __version__
from locust.env import Environment
from locust.rpc import Message
from distributed import MSG_HELLO, MasterGuard
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
runner = Environment().create_master_runner("127.0.0.1", port)
guard = MasterGuard(runner, "t" * 32, 1, finish=lambda: None, drain=lambda: None)
for i in range(int(sys.argv[2])):
    guard.handle(f"intruder_{i}", Message("client_ready", __version__, f"intruder_{i}"))
guard.handle("worker_1", Message("client_ready", __version__, "worker_1"))
guard.handle("worker_1", Message(MSG_HELLO, {"token": "t" * 32}, "worker_1"))
guard.handle("worker_2", Message("client_ready", __version__, "worker_2"))
for i in range(int(sys.argv[2])):  # between a worker's two messages: its client_ready is pushed out
    guard.handle(f"late_{i}", Message("client_ready", __version__, f"late_{i}"))
guard.handle("worker_2", Message(MSG_HELLO, {"token": "t" * 32}, "worker_2"))
print("worker_1" in guard.members and "worker_2" in guard.members, len(guard.pending))
runner.quit()
"""


def test_connections_that_never_send_the_token_do_not_lock_the_workers_out():
    """review5: anyone who reaches the master's port may send client_ready (the token comes after it); 1,100 of
    them filled the table of connections waiting for a token and the run's own worker was refused; review8: sent
    between a worker's client_ready and its token, they pushed the worker out of the table (refused too). A real
    Locust master runner, in a subprocess (Locust monkey-patches the process that imports it)."""
    from generator.resources import loadtest_dir

    out = subprocess.run([sys.executable, "-c", _PENDING_FLOOD, str(loadtest_dir()), "1100"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    let_in, pending = out.stdout.split()
    assert let_in == "True" and int(pending) <= 1024, out.stdout


_CUT_SHORT = """
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from locust import __version__
from locust.env import Environment
from locust.rpc import Message
from distributed import MSG_HELLO, MasterGuard
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
runner = Environment().create_master_runner("127.0.0.1", port)
guard = MasterGuard(runner, "t" * 32, 2, finish=lambda: None, drain=lambda: None)
for w in ("worker_0", "worker_1"):
    guard.handle(w, Message("client_ready", __version__, w))
    guard.handle(w, Message(MSG_HELLO, {"token": "t" * 32}, w))
guard.worker_done(0)
cut = guard.run_record()  # what the master writes when it quits now (Locust's SIGTERM handler fires `quitting`)
guard.worker_done(1)
print(json.dumps([cut["incomplete"], guard.run_record()["incomplete"]]))
runner.quit()
"""


def test_a_master_that_quits_before_its_workers_are_done_records_an_incomplete_run():
    """review22: the in-cluster master stopped by its Job's deadline or ``kubectl delete``, or quitting after a worker's
    setup failed, wrote a run record of a whole run (only a lost worker made it incomplete): ``loadtest --records``
    passed an SLO on part of a run and exited 0. A real Locust master runner, in a subprocess."""
    from generator.resources import loadtest_dir

    out = subprocess.run([sys.executable, "-c", _CUT_SHORT, str(loadtest_dir())], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cut, whole = json.loads(out.stdout.strip().splitlines()[-1])
    assert cut and "1 of 2" in cut and whole is None


_KILLED = """
import os, socket, sys
from types import SimpleNamespace
sys.path.insert(0, sys.argv[1])
os.environ["TRITONGEN_RUN_TOKEN"] = "t" * 32
os.environ.pop("TRITONGEN_MASTER_PORT_FD", None)
from locust.env import Environment
import tritonllm
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
env = Environment(parsed_options=SimpleNamespace(records=sys.argv[2], expect_workers=2, duration=None))
env.create_master_runner("127.0.0.1", port)
tritonllm._on_init(env)  # the master starts as Locust's init event starts it
os._exit(0)  # then it is killed: no `quitting`, no final run record
"""


def test_a_master_killed_before_it_quits_leaves_an_incomplete_run(tmp_path):
    """review23: a master killed (out of memory, its node lost) or a records file read while the run still went on has
    no run record, which ``loadtest --records`` took for a whole run: SLO PASS and exit 0 on part of a run. The master
    writes an unfinished run record first, which only its final one replaces. A real Locust master, in a subprocess."""
    from generator.measure.records import open_records, read_records, write_records
    from generator.resources import loadtest_dir
    from helpers import process_record

    records = tmp_path / "records.jsonl"
    out = subprocess.run([sys.executable, "-c", _KILLED, str(loadtest_dir()), str(records)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    with open_records(records) as file:  # what its workers had sent before the kill
        write_records(file, [process_record()])
    run = read_records(records).run
    assert run and "never recorded the run's end" in run["incomplete"], run


_PORT_FD = """
import os, sys, tempfile
from types import SimpleNamespace
sys.path.insert(0, sys.argv[1])
from distributed import PORT_FD_ENV, announce_port
runner = SimpleNamespace(server=SimpleNamespace(port=4242))
kept = tempfile.TemporaryFile()  # a descriptor the process holds that is no pipe
read_end, write_end = os.pipe()
for fd in ("999", "99999999999999999999", "2", str(kept.fileno()), "-1", str(write_end)):
    os.environ[PORT_FD_ENV] = fd
    announce_port(runner)
os.fstat(2), os.fstat(kept.fileno())  # still open
kept.seek(0)
print(repr(kept.read()), repr(os.read(read_end, 64)))
"""


def test_a_master_port_descriptor_that_is_no_pipe_is_ignored():
    """review9: TRITONGEN_MASTER_PORT_FD set by hand or stale: a number no descriptor has was a traceback that ended
    the master, and stderr or any file the process held got the port written into it and was closed."""
    from generator.resources import loadtest_dir

    out = subprocess.run([sys.executable, "-c", _PORT_FD, str(loadtest_dir())], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["b''", "b'4242\\n'"], out.stdout
    assert out.stderr.count("ignoring TRITONGEN_MASTER_PORT_FD") == 5, out.stderr


_GARBAGE = """
import socket, sys
sys.path.insert(0, sys.argv[1])
import gevent, msgpack
import zmq.green as zmq
from locust import __version__
from locust.env import Environment
from locust.rpc import Message
from locust.rpc.zmqrpc import Client
from distributed import MSG_HELLO, MasterGuard
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
runner = Environment().create_master_runner("127.0.0.1", port)
guard = MasterGuard(runner, "t" * 32, 1, finish=lambda: None, drain=lambda: None)
intruder = zmq.Context().socket(zmq.DEALER)
intruder.connect(f"tcp://127.0.0.1:{port}")
garbage = [b"", b"\\xc1", msgpack.dumps(1), msgpack.dumps(["client_ready", None]), msgpack.dumps([1, 2, 3, 4]),
           msgpack.dumps([{"__datetime__": 1, "as_str": "x"}, None, "x"]), b"\\x91" * 100000 + b"\\xc0"]
for frame in garbage:
    intruder.send(frame)
gevent.sleep(1)
worker = Client("127.0.0.1", port, "worker_1")
worker.send(Message("client_ready", __version__, "worker_1"))
for _ in range(100):
    gevent.sleep(0.1)
    if "worker_1" in guard.pending:
        break
worker.send(Message(MSG_HELLO, {"token": "t" * 32}, "worker_1"))
for _ in range(100):
    gevent.sleep(0.1)
    if "worker_1" in guard.members:
        break
print("worker_1" in guard.members, guard.rejected["undecodable"])
runner.quit()
"""


def test_messages_that_do_not_decode_do_not_deafen_the_master():
    """review7: Locust's listener survives only two of msgpack's decoding errors; an empty frame, a msgpack
    integer, a short list (one small message from anyone on the master's port) ended it and the master heard
    nothing more: its own worker was never let in. Each such message is now dropped and counted."""
    from generator.resources import loadtest_dir

    out = subprocess.run([sys.executable, "-c", _GARBAGE, str(loadtest_dir())], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    let_in, undecodable = out.stdout.split()
    assert let_in == "True" and int(undecodable) >= 6, (out.stdout, out.stderr[-2000:])


def test_workers_start_only_once_their_master_holds_its_port(tmp_path, monkeypatch):
    """review7: another local user who bound the master's port (on every command line) in the seconds before
    Locust's master did got the workers' client_ready and then the run token. Now the workers start only
    once the master reports it holds the port: here nobody ever connects to the squatter, the run fails."""
    import zmq

    import generator.serve.ports as ports_module
    from generator.errors import LoadTestError
    from generator.measure.runner import run_locust
    from generator.resources import loadtest_dir

    squatter = zmq.Context.instance().socket(zmq.ROUTER)
    port = squatter.bind_to_random_port("tcp://127.0.0.1")
    monkeypatch.setattr(ports_module, "free_port", lambda host="127.0.0.1": port)
    options = {"locustfile": str(loadtest_dir() / "locustfile.py"), "headless": True, "host": "http://127.0.0.1:9",
               "users": 1, "spawn-rate": 1, "duration": 5, "records": str(tmp_path / "records.jsonl"),
               "protocol": "http-stream", "model": "ensemble", "num-prompts": 1}
    try:
        with pytest.raises(LoadTestError, match="Address already in use"):
            run_locust(options, 1, tmp_path, timeout_s=120)
        assert squatter.poll(1000) == 0, squatter.recv_multipart()  # not even a worker's client_ready
    finally:
        squatter.close(linger=0)
    assert not (tmp_path / "locust-worker-1.log").exists()


@pytest.mark.parametrize("config, answer", [
    (b'{"input": [{"name": "text_input"}, {"name": "max_tokens"}]}', b"<html>Bad Gateway</html>"),
    (b'{"input": [{"name": "text_input"}, {"name": "max_tokens"}]}', b"[1]"),
    (b"[1]", b"{}"),
], ids=["answer-no-json", "answer-no-object", "config-no-object"])
def test_a_reference_answer_that_is_no_json_object_fails_its_check_not_the_run(config, answer):
    """Review 13: the one-piece answers asked after the run were taken for JSON objects; an answer ``[1]`` or an
    HTML page with status 200 (a proxy) raised out of the run after it was measured: no results, no report."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from generator.measure.runner import reference_answers
    from helpers import request_record

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = config if self.path.endswith("/config") else answer
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        requests = [request_record(["a", "b"], prompt_text="a prompt", streaming=True)]
        references, errors = reference_answers(f"http://127.0.0.1:{server.server_address[1]}", "ensemble",
                                               requests, 4, 5.0)
    finally:
        server.shutdown()
        server.server_close()
    assert references == {} and len(errors) == 1 and ("no JSON object" in errors[0] or "not asked" in errors[0])
