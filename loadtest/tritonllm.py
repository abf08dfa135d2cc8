"""Locust users for Triton LLM endpoints: HTTP generate_stream (SSE), gRPC decoupled streaming, HTTP generate.

Runs only inside Locust's own process (gevent): tritongen's CLI starts it as a subprocess and never imports
it. Every response gets a monotonic nanosecond timestamp and every request becomes one raw record (see
generator/loadrecords.py for the fields and the figures derived from them); Locust's own request events
are fired too, but only for its live view, because Locust rounds response times.

Two load shapes:
- closed loop (default): each Locust user sends a request, waits for the whole answer, sends the next;
- open loop (``--request-rate``): the first user of each process sends on a seeded constant or Poisson
  schedule without waiting for answers; latency counts from the scheduled time, so a stalled server or
  client shows up as latency (no coordinated omission), and how late each send was is recorded.

In distributed mode (``--master`` + ``--worker``), workers stream their records to the master, which
writes the one records file; each process takes its share of the schedule, warm-up and request count.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

# gRPC under gevent deadlocks unless its gevent integration is on before any channel exists.
import grpc.experimental.gevent as _grpc_gevent

_grpc_gevent.init_gevent()

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import gevent.queue  # noqa: E402
import psutil  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.exception import StopUser  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from generator.measure.records import (  # noqa: E402
    RECORD_VERSION, SERVER_FIELDS, answer_text, quantile_sample, request_inputs, request_metrics,
)
from generator.serve.client import dialect_for_inputs  # noqa: E402
from generator.spec import LoadTestSpec  # noqa: E402
from prompts import Prompt, count_tokens, load_tokenizer, read_jsonl, synthesize  # noqa: E402
from schedule import arrival_offsets, share  # noqa: E402

MSG_RECORDS = "tritongen_records"
MSG_DRAIN = "tritongen_drain"
MSG_DONE = "tritongen_done"
MSG_FAILED = "tritongen_failed"
_LAG_PROBE_S = 0.01
_RUN_TOKEN = os.urandom(4).hex()
_FLUSH_S = 0.2

# ---------------------------------------------------------------- settings (Locust command-line arguments)

# Spec fields that are Locust arguments; defaults come from the one spec, so the locustfile used on its own
# behaves like `tritongen loadtest`.
_SPEC_ARGS: tuple[tuple[str, type], ...] = (
    ("protocol", str), ("model", str), ("max_requests", int), ("request_rate", float), ("arrival", str),
    ("prompts", str), ("num_prompts", int), ("input_tokens_mean", int), ("input_tokens_stddev", int),
    ("output_tokens_mean", int), ("output_tokens_stddev", int), ("tokenizer", str), ("seed", int),
    ("warmup_requests", int), ("request_timeout_s", float),
)


@events.init_command_line_parser.add_listener
def _add_arguments(parser) -> None:
    group = parser.add_argument_group("tritongen LLM load test")
    for name, kind in _SPEC_ARGS:
        info = LoadTestSpec.model_fields[name]
        default = info.default
        group.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None if default is None else kind(default),
            help=(info.description or "").split("\n")[0],
        )
    group.add_argument("--records", default=None, help="Write one JSON record per request to this JSONL file.")
    group.add_argument(
        "--duration", type=float, default=None,
        help="Stop issuing after this many seconds from the end of spawning, let requests in flight finish, then "
        "quit (instead of -t, which cuts them off).",
    )


# ---------------------------------------------------------------- per-process state


class LoadState:
    """Everything one Locust process shares between its users: prompts, counters, the records sink."""

    def __init__(self, environment) -> None:
        opts = environment.parsed_options
        runner = environment.runner
        self.environment = environment
        self.opts = opts
        self.worker = isinstance(runner, WorkerRunner)
        self.index = max(runner.worker_index, 0) if self.worker else 0
        self.count = max(int(getattr(opts, "expect_workers", 1) or 1), 1) if self.worker else 1
        self.host = environment.host or ""
        self.info = model_info(opts.protocol, self.host, opts.model, opts.request_timeout_s)
        tokenizer_dir = opts.tokenizer or self.info.tokenizer_dir
        if not tokenizer_dir:
            raise RuntimeError(f"model {self.info.name!r} has no tokenizer_dir parameter: pass --tokenizer DIR "
                               "(for the LLM-API model, the checkpoint folder its model.yaml names)")
        self.tokenizer = load_tokenizer(Path(tokenizer_dir))
        if opts.prompts:
            self.prompts = read_jsonl(
                Path(opts.prompts), self.tokenizer, seed=opts.seed,
                output_mean=opts.output_tokens_mean, output_stddev=opts.output_tokens_stddev,
            )
        else:
            self.prompts = synthesize(
                self.tokenizer, count=opts.num_prompts, seed=opts.seed,
                input_mean=opts.input_tokens_mean, input_stddev=opts.input_tokens_stddev,
                output_mean=opts.output_tokens_mean, output_stddev=opts.output_tokens_stddev,
            )
        self.warmup_left = share(opts.warmup_requests, self.index, self.count)
        self.quota = None if opts.max_requests is None else share(opts.max_requests, self.index, self.count)
        self.seq = itertools.count()
        self.inflight = 0
        self.draining = False
        self.done_sent = False
        self.prompts_sent: set[int] = set()
        self.dispatcher_taken = False
        self.grpc: Optional[GrpcLLMClient] = None
        self.sink = RecordSink(environment)
        self.monitor = ProcessMonitor()

    @property
    def open_loop(self) -> bool:
        return self.opts.request_rate is not None

    def next_request(self) -> Optional[tuple[int, Prompt, bool]]:
        """(sequence number, prompt, is-warm-up) of the next request, or None when this process is done."""
        if self.draining:
            return None
        warmup = self.warmup_left > 0
        if not warmup and self.quota is not None and self.quota <= 0:
            return None
        if warmup:
            self.warmup_left -= 1
        elif self.quota is not None:
            self.quota -= 1
        seq = next(self.seq)
        # Spread a process's requests over the prompt list like one global sequence would.
        prompt = self.prompts[(seq * self.count + self.index) % len(self.prompts)]
        return seq, prompt, warmup

    def finished(self, record: dict[str, Any]) -> None:
        """Store, report to Locust; then stop this process if its share is done."""
        self.sink.add(record)
        fire_locust_events(self.environment, record)
        self.check_done()

    def check_done(self) -> None:
        nothing_left = self.draining or (self.quota is not None and self.quota <= 0 and self.warmup_left <= 0)
        if nothing_left and self.inflight == 0 and not self.done_sent:
            self.done_sent = True
            self.report_process()
            if self.worker:
                self.environment.runner.send_message(MSG_DONE, {"index": self.index})
            else:
                gevent.spawn(_finish_run, self.environment)

    def report_process(self) -> None:
        self.sink.add(self.monitor.record(self.index))
        self.sink.flush()


_STATE: Optional[LoadState] = None
_GRPC_USED = False


# ---------------------------------------------------------------- model discovery


class ModelInfo:
    """The served model's inputs/outputs (so users only send what it accepts) and its tokenizer folder."""

    def __init__(self, config: dict[str, Any], tokenizer_dir: Optional[str]) -> None:
        self.name = config["name"]
        self.inputs = {i["name"] for i in config.get("input", [])}
        self.outputs = {o["name"] for o in config.get("output", [])}
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.cumulative = dialect_for_inputs(self.inputs).cumulative
        """Streamed text_output is the whole text so far (the LLM-API model), not the new text."""
        self.tokenizer_dir = tokenizer_dir


def _param(config: dict[str, Any], key: str) -> Optional[str]:
    value = (config.get("parameters", {}).get(key) or {}).get("string_value")
    return value if value and not value.startswith("${") else None


def _config_fetcher(protocol: str, host: str, timeout: float) -> Callable[[str], Optional[dict[str, Any]]]:
    if protocol == "grpc-stream":
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(grpc_target(host))

        def fetch(model: str) -> Optional[dict[str, Any]]:
            try:
                return client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
            except InferenceServerException:
                return None

        return fetch
    http = HTTPClient.from_url(host, concurrency=1, connection_timeout=timeout, network_timeout=timeout)

    def fetch_http(model: str) -> Optional[dict[str, Any]]:
        resp = http.get(f"/v2/models/{model}/config")
        body = resp.read()
        return json.loads(body) if resp.status_code == 200 else None

    return fetch_http


def model_info(protocol: str, host: str, model: Optional[str], timeout: float) -> ModelInfo:
    """``model`` None: the repository's entry model (loadtest.model), ensemble or else the LLM-API tensorrt_llm."""
    fetch = _config_fetcher(protocol, host, timeout)
    if model is None:
        model = "ensemble" if fetch("ensemble") is not None else "tensorrt_llm"
    config = fetch(model)
    if config is None:
        raise RuntimeError(f"model {model!r} is not served at {host}")
    tokenizer_dir = _param(config, "tokenizer_dir")
    if tokenizer_dir is None:
        pre = fetch("preprocessing")
        tokenizer_dir = _param(pre, "tokenizer_dir") if pre else None
    return ModelInfo(config, tokenizer_dir)


def grpc_target(host: str) -> str:
    return host.split("://", 1)[-1].rstrip("/")


# ---------------------------------------------------------------- one request: the raw record


class Exchange:
    """Collects one request's timestamps and responses and turns them into a raw record."""

    def __init__(self, protocol: str, model: str, proc: int, seq: int, prompt: Prompt, warmup: bool, sched_ns: int):
        # The request id also keys the postprocessing's incremental detokenizer: unique across runs.
        self.request_id = f"{_RUN_TOKEN}-{proc}-{seq}"
        self.record: dict[str, Any] = {
            "kind": "request", "v": RECORD_VERSION, "id": f"p{proc}-{seq}", "proc": proc, "seq": seq,
            "warmup": warmup, "protocol": protocol, "model": model, "streaming": protocol != "http",
            "prompt": prompt.index, "max_tokens": prompt.max_tokens, "input_tokens": prompt.input_tokens,
            "start_unix_ns": time.time_ns() - (time.monotonic_ns() - sched_ns),
            "sched_ns": sched_ns, "sent_ns": sched_ns, "end_ns": None,
            "resp_ns": [], "resp_text": [], "server": {}, "error": None,
        }

    def sent(self) -> None:
        self.record["sent_ns"] = time.monotonic_ns()

    def response(self, t_ns: int, text: str, fields: dict[str, Any]) -> None:
        rec = self.record
        rec["resp_ns"].append(t_ns)
        rec["resp_text"].append(text)
        server = rec["server"]
        for key, value in fields.items():
            if key == "num_output_tokens":
                server[key] = server.get(key, 0) + int(value)
            elif key in SERVER_FIELDS and value:  # time points not known yet come as 0
                server[key] = int(value)

    def end(self, t_ns: int) -> None:
        self.record["end_ns"] = t_ns

    def fail(self, message: str) -> None:
        self.record["error"] = message[:500]
        self.record["end_ns"] = time.monotonic_ns()


class HttpLLMClient:
    """HTTP generate_stream (SSE, read line by line off the socket) or generate, on one keep-alive connection."""

    def __init__(self, host: str, info: ModelInfo, stream: bool, timeout: float) -> None:
        self.info, self.stream = info, stream
        self.http = HTTPClient.from_url(host, concurrency=1, connection_timeout=timeout, network_timeout=timeout)
        self.path = f"/v2/models/{info.name}/{'generate_stream' if stream else 'generate'}"
        self.http.get("/v2/health/ready").read()  # open the connection before the first timed request

    def generate(self, ex: Exchange, prompt: Prompt) -> None:
        fields = request_inputs(self.info.inputs, prompt.text, prompt.max_tokens, self.stream)
        ex.record["exact_length"] = "min_tokens" in fields
        body = json.dumps({"id": ex.request_id, **fields}).encode()
        ex.sent()
        resp = self.http.post(self.path, body=body, headers={"Content-Type": "application/json"})
        if resp.status_code != 200:
            ex.fail(f"HTTP {resp.status_code}: {resp.read()[:300].decode(errors='replace')}")
            return
        if not self.stream:
            data = json.loads(resp.read())
            t = time.monotonic_ns()
            self._absorb(ex, t, data)
            ex.end(t)
            return
        while True:
            line = resp.readline(b"\n")
            t = time.monotonic_ns()
            if not line:
                break
            if line.startswith(b"data:"):
                self._absorb(ex, t, json.loads(line[5:]))
        if not ex.record["error"]:
            ex.end(t)

    @staticmethod
    def _absorb(ex: Exchange, t: int, data: dict[str, Any]) -> None:
        if "error" in data:
            ex.fail(str(data["error"]))
            return
        text = data.get("text_output", "")
        ex.response(t, text if isinstance(text, str) else "".join(text), data)

    def close(self) -> None:
        self.http.close()


class GrpcLLMClient:
    """One gRPC channel and one bidirectional stream for all requests of a Locust process: requests are
    multiplexed by id over HTTP/2 and each response is routed to the request waiting for it.

    The stream is driven with the generated stubs rather than tritonclient's stream wrapper, which drops
    the request id of an error response (so errors could not be routed); and one channel per request
    stalled under gevent (open loop at 40 requests/s hung after ~30 concurrent streams).
    """

    def __init__(self, host: str, info: ModelInfo, timeout: float) -> None:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._grpc, self._pb = grpc, service_pb2
        self.info, self.timeout = info, timeout
        self.channel = grpc.insecure_channel(grpc_target(host))
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.outputs = [n for n in ("text_output", *SERVER_FIELDS) if n in info.outputs]
        self.waiting: dict[str, gevent.queue.Queue] = {}
        self._start()

    def _start(self) -> None:
        self.requests: gevent.queue.Queue = gevent.queue.Queue()
        self.call = self.stub.ModelStreamInfer(iter(self.requests.get, None))
        self.reader = gevent.spawn(self._read, self.call)

    def _read(self, call) -> None:
        try:
            for resp in call:
                t = time.monotonic_ns()
                queue = self.waiting.get(resp.infer_response.id)
                if queue is not None:
                    queue.put((t, resp))
                elif resp.error_message and len(self.waiting) == 1:  # an error without id: the only request
                    next(iter(self.waiting.values())).put((t, resp))
        except self._grpc.RpcError as exc:
            for queue in list(self.waiting.values()):
                queue.put((time.monotonic_ns(), exc))

    def _request(self, rid: str, fields: dict[str, Any]):
        import struct

        import numpy as np

        req = self._pb.ModelInferRequest(model_name=self.info.name, id=rid)
        req.parameters["triton_enable_empty_final_response"].bool_param = True
        for name, value in fields.items():
            tensor = req.inputs.add(name=name, shape=[1, 1] if self.info.batched else [1])
            if isinstance(value, str):
                data = value.encode()
                tensor.datatype, raw = "BYTES", struct.pack("<I", len(data)) + data
            elif isinstance(value, bool):
                tensor.datatype, raw = "BOOL", np.array([value], dtype=bool).tobytes()
            else:
                tensor.datatype, raw = "INT32", np.array([value], dtype=np.int32).tobytes()
            req.raw_input_contents.append(raw)
        for name in self.outputs:
            req.outputs.add(name=name)
        return req

    def generate(self, ex: Exchange, prompt: Prompt) -> None:
        from tritonclient.grpc import InferResult

        rid = ex.request_id
        fields = request_inputs(self.info.inputs, prompt.text, prompt.max_tokens, True)
        ex.record["exact_length"] = "min_tokens" in fields
        request = self._request(rid, fields)
        queue = self.waiting[rid] = gevent.queue.Queue()
        try:
            if self.reader.dead:
                self._start()
            ex.sent()
            self.requests.put(request)
            while True:
                try:
                    t, resp = queue.get(timeout=self.timeout)
                except gevent.queue.Empty:
                    ex.fail(f"no response within {self.timeout:g} s")
                    return
                if isinstance(resp, Exception):
                    ex.fail(f"gRPC stream failed: {resp}")
                    return
                if resp.error_message:
                    ex.fail(resp.error_message)
                    return
                result = InferResult(resp.infer_response)
                text = result.as_numpy("text_output")
                if text is not None:
                    values = {n: result.as_numpy(n) for n in SERVER_FIELDS if n in self.outputs}
                    values = {k: v.reshape(-1)[0] for k, v in values.items() if v is not None}
                    ex.response(t, "".join(x.decode("utf-8", errors="replace") for x in text.reshape(-1)), values)
                if resp.infer_response.parameters["triton_final_response"].bool_param:
                    ex.end(t)
                    return
        finally:
            del self.waiting[rid]

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def make_client(protocol: str, host: str, info: ModelInfo, timeout: float):
    """HTTP: a connection per user (per request in flight, open loop). gRPC: the process's one stream."""
    if protocol == "grpc-stream":
        st = _STATE
        if st.grpc is None:
            global _GRPC_USED
            _GRPC_USED = True
            st.grpc = GrpcLLMClient(host, info, timeout)
        return st.grpc
    if protocol in ("http-stream", "http"):
        return HttpLLMClient(host, info, protocol == "http-stream", timeout)
    raise ValueError(f"unknown protocol {protocol!r}: http-stream, grpc-stream or http")


def run_request(
    st: LoadState, client, seq: int, prompt: Prompt, warmup: bool, sched_ns: int, conn_ns: int = 0
) -> None:
    """Send one request, record it whatever happens, hand the record on.

    ``conn_ns`` is how long the request waited for a connection (open loop opens one when all are busy).
    """
    ex = Exchange(st.opts.protocol, st.info.name, st.index, seq, prompt, warmup, sched_ns)
    ex.record["conn_ns"] = conn_ns
    ex.record["cumulative"] = st.info.cumulative
    if prompt.index not in st.prompts_sent:
        st.prompts_sent.add(prompt.index)
        ex.record["prompt_text"] = prompt.text
    st.inflight += 1
    try:
        client.generate(ex, prompt)
    except gevent.GreenletExit:
        ex.fail("cut off when the run stopped")
        ex.record["cancelled"] = True
        raise
    except Exception as exc:  # any transport failure is a failed request, not a crashed user
        ex.fail(f"{type(exc).__name__}: {exc}")
    finally:
        st.inflight -= 1
        if not ex.record["error"]:
            ex.record["output_tokens"] = count_tokens(st.tokenizer, answer_text(ex.record))
        st.finished(ex.record)


def fire_locust_events(environment, record: dict[str, Any]) -> None:
    """Locust's live table: end-to-end, TTFT and per-request ITL rows (rounded by Locust; not the report)."""
    if record.get("cancelled"):
        return
    m = request_metrics(record)
    kind = "warmup" if m.warmup else record["protocol"]
    fire = environment.events.request.fire
    if not m.ok:
        fire(request_type=kind, name="e2e", response_time=(record["end_ns"] - record["sched_ns"]) / 1e6,
             response_length=0, exception=RuntimeError(record["error"]), context={})
        return
    fire(request_type=kind, name="e2e", response_time=(m.e2e_ns or 0) / 1e6,
         response_length=m.output_tokens or 0, exception=None, context={})
    if m.warmup or m.ttft_ns is None:
        return
    fire(request_type=kind, name="ttft", response_time=m.ttft_ns / 1e6, response_length=0, exception=None, context={})
    if m.itl_ns is not None:
        fire(request_type=kind, name="itl", response_time=m.itl_ns / 1e6, response_length=0, exception=None, context={})


# ---------------------------------------------------------------- records sink and process monitor


class RecordSink:
    """Local and master processes append records to the file; workers send them to the master in batches."""

    def __init__(self, environment) -> None:
        self.runner = environment.runner
        self.worker = isinstance(self.runner, WorkerRunner)
        self.buffer: list[dict[str, Any]] = []
        path = environment.parsed_options.records
        self.file = None if self.worker or not path else open(path, "a", encoding="utf-8", buffering=1)
        if self.worker:
            gevent.spawn(self._flusher)

    def add(self, record: dict[str, Any]) -> None:
        if self.worker:
            self.buffer.append(record)
        else:
            self.write([record])

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.file is not None:
            self.file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))

    def flush(self) -> None:
        if self.worker and self.buffer:
            batch, self.buffer = self.buffer, []
            self.runner.send_message(MSG_RECORDS, batch)

    def _flusher(self) -> None:
        while True:
            gevent.sleep(_FLUSH_S)
            self.flush()


class ProcessMonitor:
    """The load generator's own health: event-loop lag (a 10 ms sleep that wakes late means the process
    could not keep up) and its CPU use, reported as one ``process`` record per Locust process."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.lags_ns: list[int] = []
        self.cpu_percent: list[float] = []
        self.started_ns = time.monotonic_ns()
        self.cpu_start = self.proc.cpu_times()
        self.proc.cpu_percent(None)
        self.greenlet = gevent.spawn(self._probe)

    def _probe(self) -> None:
        next_cpu = time.monotonic() + 1.0
        while True:
            t = time.monotonic_ns()
            gevent.sleep(_LAG_PROBE_S)
            self.lags_ns.append(time.monotonic_ns() - t - int(_LAG_PROBE_S * 1e9))
            if time.monotonic() >= next_cpu:
                self.cpu_percent.append(self.proc.cpu_percent(None))
                next_cpu += 1.0

    def record(self, index: int) -> dict[str, Any]:
        self.greenlet.kill(block=False)
        cpu = self.proc.cpu_times()
        return {
            "kind": "process", "v": RECORD_VERSION, "proc": index, "host": socket.gethostname(), "pid": os.getpid(),
            "wall_s": (time.monotonic_ns() - self.started_ns) / 1e9,
            "cpu_s": (cpu.user + cpu.system) - (self.cpu_start.user + self.cpu_start.system),
            "cpu_percent": self.cpu_percent, "lag_ns": quantile_sample(self.lags_ns),
            "lag_max_ns": max(self.lags_ns, default=0),
        }


# ---------------------------------------------------------------- the users


class TritonLLMUser(User):
    """One simulated client. Subclass it to script other behaviour (override ``wait_time`` or ``task``)."""

    abstract = True
    wait_time = constant(0)

    def on_start(self) -> None:
        if _STATE is None:  # setup failed; the run is stopping
            raise StopUser()
        st = self.st = _STATE
        self.client = make_client(st.opts.protocol, self.host or st.host, st.info, st.opts.request_timeout_s)

    def on_stop(self) -> None:
        client = getattr(self, "client", None)  # None when on_start stopped the user (setup failed)
        if client is not None and client is not self.st.grpc:  # the shared gRPC stream closes with the process
            client.close()

    @task
    def generate(self) -> None:
        self.open_loop() if self.st.open_loop else self.closed_loop()

    def closed_loop(self) -> None:
        nxt = self.st.next_request()
        if nxt is None:
            self.st.check_done()
            raise StopUser()
        run_request(self.st, self.client, *nxt, time.monotonic_ns())

    def open_loop(self) -> None:
        """The first user of a process sends its share of the schedule; other users have nothing to do."""
        st = self.st
        if st.dispatcher_taken:
            raise StopUser()
        st.dispatcher_taken = True
        while st.warmup_left > 0:  # warm-up first, one at a time, before the clock starts
            run_request(st, self.client, *st.next_request(), time.monotonic_ns())
        idle = [self.client]
        group = gevent.pool.Group()

        def one(nxt: tuple[int, Prompt, bool], sched_ns: int) -> None:
            if self.client is st.grpc:  # one multiplexed stream carries every request
                run_request(st, self.client, *nxt, sched_ns)
                return
            t0 = time.monotonic_ns()
            client = idle.pop() if idle else make_client(
                st.opts.protocol, self.host or st.host, st.info, st.opts.request_timeout_s
            )
            try:
                run_request(st, client, *nxt, sched_ns, conn_ns=time.monotonic_ns() - t0)
            finally:
                idle.append(client)

        start = time.monotonic_ns()
        opts = st.opts
        for offset in arrival_offsets(opts.request_rate, opts.arrival, opts.seed, st.index, st.count):
            sched = start + offset
            delay = (sched - time.monotonic_ns()) / 1e9
            if delay > 0:
                gevent.sleep(delay)
            nxt = st.next_request()
            if nxt is None:
                break
            group.spawn(one, nxt, sched)
        group.join()
        st.check_done()
        raise StopUser()


# ---------------------------------------------------------------- run control


def _finish_run(environment) -> None:
    """Local runs quit once this process is done; the master stops workers (they flush first) then quits."""
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.stop()
    runner.quit()


def _drain(environment) -> None:
    """Stop issuing; requests in flight finish and count; the process reports done when none is left."""
    if _STATE is not None:
        _STATE.draining = True
        _STATE.check_done()


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    runner = environment.runner
    opts = environment.parsed_options
    if isinstance(runner, WorkerRunner):
        runner.register_message(MSG_DRAIN, lambda msg, **_kw: _drain(environment))
        return
    if isinstance(runner, MasterRunner):
        sink = open(opts.records, "a", encoding="utf-8", buffering=1) if opts.records else None
        done: set[int] = set()

        def on_records(msg, **_kw) -> None:
            if sink is not None:
                sink.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in msg.data))

        def on_done(msg, **_kw) -> None:
            done.add(msg.data["index"])
            if len(done) >= max(opts.expect_workers, 1):
                gevent.spawn(_finish_run, environment)

        def on_failed(msg, **_kw) -> None:
            logging.getLogger("tritongen").error("worker: %s", msg.data)
            environment.process_exit_code = 2
            gevent.spawn(runner.quit)

        runner.register_message(MSG_RECORDS, on_records)
        runner.register_message(MSG_DONE, on_done)
        runner.register_message(MSG_FAILED, on_failed)

    def on_spawned(user_count: int, **_kw) -> None:
        if opts.duration is None:
            return
        if isinstance(runner, MasterRunner):
            gevent.spawn_later(opts.duration, runner.send_message, MSG_DRAIN)
        else:
            gevent.spawn_later(opts.duration, _drain, environment)

    environment.events.spawning_complete.add_listener(on_spawned)


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    """Set the process up (model, tokenizer, prompts); a failure here ends the whole run with exit code 2."""
    global _STATE
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        return
    try:
        _STATE = LoadState(environment)
    except Exception as exc:  # a setup error must stop the run, not leave users waiting forever
        message = f"tritongen load test setup failed: {type(exc).__name__}: {exc}"
        logging.getLogger("tritongen").error(message)
        environment.process_exit_code = 2
        if isinstance(runner, WorkerRunner):
            runner.send_message(MSG_FAILED, message)
        gevent.spawn(runner.quit)


@events.quit.add_listener
def _on_quit(exit_code: int, **_kw) -> None:
    """After a gRPC run, leave without interpreter teardown: garbage-collecting gRPC objects under gevent
    at exit can hang forever (seen with 4 users spawned at once). Everything is written by now."""
    if _GRPC_USED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    """Runs stopped from outside (Locust's -t, Ctrl-C) still report the process record."""
    if _STATE is not None and not _STATE.done_sent:
        _STATE.report_process()
    if _STATE is not None and _STATE.grpc is not None:
        _STATE.grpc.close()
        _STATE.grpc = None
