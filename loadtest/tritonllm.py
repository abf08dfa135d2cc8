"""Locust users for Triton LLM endpoints: HTTP generate_stream (SSE), gRPC decoupled streaming, HTTP generate.

Runs only inside Locust's own process (gevent): tritongen's CLI starts it as a subprocess and never imports
it. Every response gets a monotonic nanosecond timestamp and every request becomes one raw record (see
generator/measure/records.py for its type, the file's format and the figures derived from it); Locust's own request events
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
import time
from pathlib import Path
from typing import Any, Optional

import gevent
import gevent.event
import gevent.pool
import psutil
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from clients import Exchange, GrpcLLMClient, HttpLLMClient, LLMClient, decode_safely, model_info, new_record
from distributed import MasterGuard, introduce, run_token
from generator.measure.records import (
    ProcessRecord, RequestRecord, open_records, quantile_sample, server_gone, write_records,
)
from generator.spec import LoadTestSpec
from openaiapi import OpenAIClient, openai_model
from prompts import Prompt, follow_up, load_tokenizer, read_jsonl, synthesize
from schedule import arrival_offsets, share
from traces import read_trace

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
    ("warmup_requests", int), ("request_timeout_s", float), ("openai_body", json.loads), ("trace", str),
    ("time_scale", float), ("trace_block_tokens", int), ("shared_prefix_tokens", int), ("prefix_groups", int),
    ("turns", int),
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
        openai = opts.protocol.startswith("openai-")
        self.info = (openai_model if openai else model_info)(self.host, opts.model, opts.request_timeout_s)
        tokenizer_dir = opts.tokenizer or self.info.tokenizer_dir
        if not tokenizer_dir:
            raise RuntimeError(f"model {self.info.name!r} has no tokenizer_dir parameter: pass --tokenizer DIR "
                               "(for the LLM-API model, the checkpoint folder its model.yaml names; for an OpenAI "
                               "server, a folder with the served model's tokenizer.json)")
        self.tokenizer_dir = str(Path(tokenizer_dir).resolve())
        self.tokenizer = load_tokenizer(Path(tokenizer_dir))
        self.offsets: Optional[list[int]] = None
        if opts.trace:
            self.prompts, self.offsets = read_trace(
                Path(opts.trace), self.tokenizer, seed=opts.seed, block_tokens=opts.trace_block_tokens,
                time_scale=opts.time_scale, output_mean=opts.output_tokens_mean,
            )
        elif opts.prompts:
            self.prompts = read_jsonl(
                Path(opts.prompts), self.tokenizer, seed=opts.seed,
                output_mean=opts.output_tokens_mean, output_stddev=opts.output_tokens_stddev,
            )
        else:
            self.prompts = synthesize(
                self.tokenizer, count=opts.num_prompts, seed=opts.seed,
                input_mean=opts.input_tokens_mean, input_stddev=opts.input_tokens_stddev,
                output_mean=opts.output_tokens_mean, output_stddev=opts.output_tokens_stddev,
                shared_prefix_tokens=opts.shared_prefix_tokens, prefix_groups=opts.prefix_groups, turns=opts.turns,
            )
        self.conversations = any(p.turns for p in self.prompts)
        self.warmup_left = share(opts.warmup_requests, self.index, self.count)
        self.quota = None if opts.max_requests is None else share(opts.max_requests, self.index, self.count)
        if self.offsets is not None:  # a trace is replayed once
            rows = share(len(self.offsets), self.index, self.count)
            self.quota = rows if self.quota is None else min(self.quota, rows)
        self.seq = itertools.count()
        self.measured = itertools.count()  # prompts of measured requests count apart from warm-up (trace order)
        self.inflight = 0
        self.draining = False
        self.done_sent = False
        self.prompts_sent: set[int] = set()
        self.dispatcher_taken = False
        self.grpc: Optional[GrpcLLMClient] = None
        self.sink = RecordSink(environment)
        self.monitor = ProcessMonitor()
        self.active: dict[Any, Exchange] = {}  # greenlet -> its request in flight
        self.gone: Optional[str] = None

    def server_gone(self, reason: str) -> None:
        """The server will answer nothing more (a dead stub): stop issuing and cut the requests in flight,
        which count as errors, instead of letting each sit out its request_timeout_s."""
        if self.gone is not None:
            return
        self.gone = reason
        logging.getLogger("tritongen").error("stopping the run: %s", reason)
        self.draining = True
        current = gevent.getcurrent()
        for greenlet, ex in list(self.active.items()):
            if greenlet is not current:
                ex.fail(f"cut off: {reason}")
                greenlet.kill(ServerGone(reason), block=False)

    @property
    def open_loop(self) -> bool:
        return self.opts.request_rate is not None or self.offsets is not None

    def schedule(self):
        """This process's send offsets (ns after the start): the trace's, or the arrival process's."""
        if self.offsets is not None:
            return self.offsets[self.index::self.count]
        opts = self.opts
        return arrival_offsets(opts.request_rate, opts.arrival, opts.seed, self.index, self.count)

    def next_request(self) -> Optional[tuple[int, Prompt, bool]]:
        """(sequence number, prompt, is-warm-up) of the next request, or None when this process is done."""
        if self.draining:
            return None
        warmup = self.warmup_left > 0
        if not warmup and self.quota is not None and self.quota <= 0:
            return None
        if warmup:
            self.warmup_left -= 1
            k = self.warmup_left
        else:
            k = next(self.measured)
            if self.quota is not None:
                self.quota -= 1
        # Spread a process's requests over the prompt list like one global sequence would.
        prompt = self.prompts[(k * self.count + self.index) % len(self.prompts)]
        return next(self.seq), prompt, warmup

    def next_turn(self, warmup: bool) -> Optional[tuple[int, bool]]:
        """(sequence number, is-warm-up) of a conversation's next turn, or None when this process is done."""
        if self.draining or (not warmup and self.quota is not None and self.quota <= 0):
            return None
        if not warmup and self.quota is not None:
            self.quota -= 1
        return next(self.seq), warmup

    def finished(self, ex: Exchange) -> None:
        """Hand to the sink; then stop this process if its share is done."""
        self.sink.add(ex)
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
        self.sink.flush()
        # The measure side counts the answers' tokens with the tokenizer.
        self.sink.send([self.monitor.record(self.index, self.tokenizer_dir, self.sink.requests, self.sink.responses)])


_STATE: Optional[LoadState] = None


class ServerGone(Exception):
    """Raised in a request's greenlet to end it when the server is known to answer no more."""


# ---------------------------------------------------------------- one request


def make_client(protocol: str, host: str, info, timeout: float) -> LLMClient:
    """HTTP: a connection per user (per request in flight, open loop). gRPC: the process's one stream."""
    if protocol == "grpc-stream":
        st = _STATE
        if st.grpc is None:
            st.grpc = GrpcLLMClient(host, info, timeout)
        return st.grpc
    if protocol in ("http-stream", "http"):
        return HttpLLMClient(host, info, protocol == "http-stream", timeout)
    if protocol.startswith("openai-"):
        return OpenAIClient(host, info, protocol, timeout, _STATE.opts.openai_body)
    raise ValueError(f"unknown protocol {protocol!r}: http-stream, grpc-stream, http, openai-chat or openai-completions")


def begin_request(
    st: LoadState, client: LLMClient, seq: int, prompt: Prompt, warmup: bool, sched_ns: int, conn_ns: int = 0
) -> Exchange:
    """A request's record and exchange, counted in flight; ``end_request`` hands it on whatever happened.

    ``conn_ns`` is how long the request waited for a connection (open loop opens one when all are busy).
    """
    first = prompt.index not in st.prompts_sent
    st.prompts_sent.add(prompt.index)
    record = new_record(st.opts.protocol, st.info.name, st.index, seq, prompt, warmup, sched_ns, conn_ns=conn_ns,
                        cumulative=st.info.cumulative, prompt_text=prompt.text if first else None)
    # The request id also keys the postprocessing's incremental detokenizer: unique across runs.
    ex = Exchange(f"{_RUN_TOKEN}-{st.index}-{seq}", record, client.decode)
    st.inflight += 1
    return ex


def end_request(st: LoadState, ex: Exchange) -> None:
    st.inflight -= 1
    reason = server_gone(ex.error)
    if reason is not None:
        st.server_gone(reason)
    st.finished(ex)


def cut_off(st: LoadState, user, ex: Exchange, exc: BaseException) -> None:
    """End the request in flight of a user that was stopped: a failure, cancelled when the run stopped
    (GreenletExit; the server being gone, ServerGone, is not a cancel)."""
    st.active.pop(user, None)
    ex.fail("cut off when the run stopped")
    ex.record["cancelled"] = isinstance(exc, gevent.GreenletExit)
    end_request(st, ex)


def run_request(
    st: LoadState, client: LLMClient, seq: int, prompt: Prompt, warmup: bool, sched_ns: int, conn_ns: int = 0
) -> Exchange:
    """Send one request and wait for its answer; it is kept whatever happens and handed to the sink
    (decoded and written in batches)."""
    ex = begin_request(st, client, seq, prompt, warmup, sched_ns, conn_ns)
    user = gevent.getcurrent()
    st.active[user] = ex
    try:
        client.generate(ex, prompt)
    except Exception as exc:  # any transport failure is a failed request, not a crashed user
        ex.fail(f"{type(exc).__name__}: {exc}")
    except BaseException as exc:  # the run stops (GreenletExit)
        cut_off(st, user, ex, exc)
        raise
    st.active.pop(user, None)
    end_request(st, ex)
    return ex


class AnswerChain:
    """A closed-loop user on the process's gRPC stream whose next request is sent from the callback of the
    previous answer, on the stream's reader: no greenlet switch, task scheduling or timer per request, which
    at saturation is most of what a request costs the event loop (docs/benchmarks.md, the GPU host). The
    user's greenlet only waits for the chain to end (no request left) or is stopped (the run ends, the
    server is gone), which cuts the request in flight off (``cut_off``, as ``run_request`` does)."""

    def __init__(self, st: LoadState, client: GrpcLLMClient) -> None:
        self.st, self.client = st, client
        self.user = gevent.getcurrent()
        self.ex: Optional[Exchange] = None
        self.ended = gevent.event.Event()

    def run(self) -> None:
        self.issue()
        try:
            self.ended.wait()
        except BaseException as exc:  # the run stops (GreenletExit) or the server is gone (ServerGone)
            self.ended.set()
            ex, self.ex = self.ex, None
            if ex is not None:
                self.client.abandon(ex)
                cut_off(self.st, self.user, ex, exc)
            raise

    def issue(self) -> None:
        st = self.st
        while not self.ended.is_set():
            nxt = st.next_request()
            if nxt is None:
                self.ended.set()
                return
            seq, prompt, warmup = nxt
            ex = self.ex = begin_request(st, self.client, seq, prompt, warmup, time.monotonic_ns())
            st.active[self.user] = ex
            try:
                self.client.start(ex, prompt, self.answered)
                return
            except Exception as exc:  # the stream could not be opened: a failed request, then the next
                ex.fail(f"{type(exc).__name__}: {exc}")
                self.answered(ex, again=False)
                gevent.spawn(self.issue)  # after the event loop's turn, as a waiting user would
                return

    def answered(self, ex: Exchange, again: bool = True) -> None:
        if self.ex is not ex:  # already cut off
            return
        self.ex = None
        self.st.active.pop(self.user, None)
        end_request(self.st, ex)
        if again:
            self.issue()


def run_conversation(
    st: LoadState, client: LLMClient, seq: int, prompt: Prompt, warmup: bool, sched_ns: int, conn_ns: int = 0
) -> None:
    """One request, or a conversation: each later turn is sent when the previous answer is complete and
    resends the conversation so far (questions and answers) with its own question."""
    ex = run_request(st, client, seq, prompt, warmup, sched_ns, conn_ns)
    first = prompt.index
    for k, question in enumerate(prompt.turns, 1):
        nxt = st.next_turn(warmup)
        if nxt is None or ex.error:
            return
        texts = [t for t in decode_safely(client.decode, ex.payloads)[0] if t]
        answer = (texts[-1] if texts else "") if st.info.cumulative else "".join(texts)
        prompt = follow_up(prompt, answer, question, k * len(st.prompts) + first, st.tokenizer)
        ex = run_request(st, client, nxt[0], prompt, nxt[1], time.monotonic_ns())


def fire_locust_events(environment, record: RequestRecord) -> None:
    """Locust's live table: end-to-end and TTFT rows from the raw times (rounded by Locust; never the report's
    figures, which come from the records after the run). Two events per request, not more: each costs a
    Locust process about as much CPU as a tenth of a 16-token request (docs/benchmarks.md)."""
    if record["cancelled"]:
        return
    kind = "warmup" if record["warmup"] else record["protocol"]
    fire = environment.events.request.fire
    e2e_ms = (record["end_ns"] - record["sched_ns"]) / 1e6
    if record["error"]:
        fire(request_type=kind, name="e2e", response_time=e2e_ms, response_length=0,
             exception=RuntimeError(record["error"]), context={})
        return
    visible = [t for t, text in zip(record["resp_ns"], record["resp_text"]) if text]
    fire(request_type=kind, name="e2e", response_time=e2e_ms, response_length=len(visible), exception=None, context={})
    if not record["warmup"] and visible:
        fire(request_type=kind, name="ttft", response_time=(visible[0] - record["sched_ns"]) / 1e6,
             response_length=0, exception=None, context={})


# ---------------------------------------------------------------- records sink and process monitor


class RecordSink:
    """Finished exchanges are decoded, shown to Locust and written in batches, every ``_FLUSH_S`` and at the end:
    local and master processes append them to the records file, workers send them to the master."""

    def __init__(self, environment) -> None:
        self.environment = environment
        self.runner = environment.runner
        self.worker = isinstance(self.runner, WorkerRunner)
        self.pending: list[Exchange] = []
        self.requests = self.responses = 0  # what this process received, for its CPU cost per response
        path = environment.parsed_options.records
        self.file = None if self.worker or not path else open_records(path)
        gevent.spawn(self._flusher)

    def add(self, ex: Exchange) -> None:
        self.pending.append(ex)

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        records = [ex.finish() for ex in batch]
        self.requests += len(records)
        self.responses += sum(len(r["resp_ns"]) for r in records)
        for record in records:
            fire_locust_events(self.environment, record)
        self.send(records)

    def send(self, records: list[RequestRecord] | list[ProcessRecord]) -> None:
        if self.worker:
            self.runner.send_message(MSG_RECORDS, records)
        elif self.file is not None:
            write_records(self.file, records)

    def _flusher(self) -> None:
        while True:
            gevent.sleep(_FLUSH_S)
            self.flush()


def _sched_ns() -> Optional[tuple[int, int]]:
    """(ns on a CPU, ns runnable but waiting for one) of this process's main thread, where the event loop
    runs (Linux schedstat); None where the kernel does not keep it."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return None


class ProcessMonitor:
    """The load generator's own health, reported as one ``process`` record per Locust process: event-loop lag
    (a 10 ms sleep that wakes late means the process could not keep up), its CPU use, and per second how
    much of a core its event loop wanted (on a CPU or waiting for one: a loop starved by other work on its
    core wants a whole core while it gets little of one)."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.lags_ns: list[int] = []
        self.cpu_percent: list[float] = []
        self.demand: list[float] = []
        self.started_ns = time.monotonic_ns()
        self.cpu_start = self.proc.cpu_times()
        self.sched_start = _sched_ns()
        self.proc.cpu_percent(None)
        self.greenlet = gevent.spawn(self._probe)

    def _probe(self) -> None:
        next_cpu = time.monotonic() + 1.0
        last = (time.monotonic_ns(), self.sched_start)
        while True:
            t = time.monotonic_ns()
            gevent.sleep(_LAG_PROBE_S)
            self.lags_ns.append(time.monotonic_ns() - t - int(_LAG_PROBE_S * 1e9))
            if time.monotonic() >= next_cpu:
                self.cpu_percent.append(self.proc.cpu_percent(None))
                now = (time.monotonic_ns(), _sched_ns())
                if now[1] is not None and last[1] is not None:
                    self.demand.append((sum(now[1]) - sum(last[1])) / (now[0] - last[0]))
                last = now
                next_cpu += 1.0

    def record(self, index: int, tokenizer: str, requests: int, responses: int) -> ProcessRecord:
        """This process's record; ``requests``/``responses``: what it received, for its CPU cost per response."""
        self.greenlet.kill(block=False)
        cpu = self.proc.cpu_times()
        sched = _sched_ns()
        return {
            "kind": "process", "proc": index, "host": socket.gethostname(), "pid": os.getpid(),
            "wall_s": (time.monotonic_ns() - self.started_ns) / 1e9,
            "cpu_s": (cpu.user + cpu.system) - (self.cpu_start.user + self.cpu_start.system),
            "cpu_percent": self.cpu_percent, "lag_ns": quantile_sample(self.lags_ns),
            "lag_max_ns": max(self.lags_ns, default=0), "demand": self.demand,
            "sched_wait_s": (sched[1] - self.sched_start[1]) / 1e9 if sched and self.sched_start else None,
            "tokenizer": tokenizer, "requests": requests, "responses": responses,
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
        st = self.st
        if self.client is st.grpc and not st.conversations and type(self).wait_time is TritonLLMUser.wait_time:
            AnswerChain(st, self.client).run()  # every request of this user, each sent when the last is answered
        else:
            nxt = st.next_request()
            if nxt is not None:
                run_conversation(st, self.client, *nxt, time.monotonic_ns())
                return
        st.check_done()
        raise StopUser()

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
                run_conversation(st, self.client, *nxt, sched_ns)
                return
            t0 = time.monotonic_ns()
            client = idle.pop() if idle else make_client(
                st.opts.protocol, self.host or st.host, st.info, st.opts.request_timeout_s
            )
            try:
                run_conversation(st, client, *nxt, sched_ns, conn_ns=time.monotonic_ns() - t0)
            finally:
                idle.append(client)

        start = time.monotonic_ns()
        for offset in st.schedule():
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


def _run_token_or_exit() -> str:
    try:
        return run_token()
    except RuntimeError as exc:
        logging.getLogger("tritongen").error("%s", exc)
        raise SystemExit(2) from None


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    runner = environment.runner
    opts = environment.parsed_options
    if isinstance(runner, WorkerRunner):
        runner.register_message(MSG_DRAIN, lambda msg, **_kw: _drain(environment))
        introduce(runner, _run_token_or_exit())
        return
    if isinstance(runner, MasterRunner):
        sink = open_records(opts.records) if opts.records else None
        guard = MasterGuard(runner, _run_token_or_exit(), opts.expect_workers,
                            finish=lambda: _finish_run(environment), drain=lambda: runner.send_message(MSG_DRAIN))

        def on_records(msg, **_kw) -> None:
            if sink is not None:
                write_records(sink, msg.data)

        def on_failed(msg, **_kw) -> None:
            logging.getLogger("tritongen").error("worker: %s", msg.data)
            environment.process_exit_code = 2
            gevent.spawn(runner.quit)

        def on_quitting(**_kw) -> None:
            if sink is not None:
                write_records(sink, [guard.run_record()])

        runner.register_message(MSG_RECORDS, on_records)
        runner.register_message(MSG_DONE, lambda msg, **_kw: guard.worker_done(msg.data["index"]))
        runner.register_message(MSG_FAILED, on_failed)
        environment.events.quitting.add_listener(on_quitting)

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


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    """Runs stopped from outside (Locust's -t, Ctrl-C) still report the process record."""
    if _STATE is not None and not _STATE.done_sent:
        _STATE.report_process()
    if _STATE is not None and _STATE.grpc is not None:
        _STATE.grpc.close()
        _STATE.grpc = None
