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

This module holds the Locust-facing parts (arguments, per-process state, users, run control); a request's
life is lifecycle.py, the records sink and the process monitor are sink.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import gevent
import gevent.lock
import gevent.pool
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from clients import Exchange, LLMClient, model_info
from distributed import MasterGuard, introduce, run_token
from generator.measure.records import open_records, write_records
from generator.spec import LoadTestSpec
from grpcclient import GrpcLLMClient
from httpclient import HttpLLMClient
from lifecycle import AnswerChain, run_conversation, run_request, watch
from openaiapi import OpenAIClient, openai_model
from prompts import Prompt, load_tokenizer, read_jsonl, synthesize
from schedule import arrival_offsets, share
from sink import MSG_RECORDS, ProcessMonitor, RecordSink, steady_gc
from traces import read_trace

MSG_DRAIN = "tritongen_drain"
MSG_DONE = "tritongen_done"
MSG_FAILED = "tritongen_failed"

# ---------------------------------------------------------------- settings (Locust command-line arguments)

# Spec fields that are Locust arguments; defaults come from the one spec, so the locustfile used on its own
# behaves like `tritongen loadtest`.
_SPEC_ARGS: tuple[tuple[str, type], ...] = (
    ("protocol", str), ("model", str), ("max_requests", int), ("request_rate", float), ("arrival", str),
    ("prompts", str), ("num_prompts", int), ("input_tokens_mean", int), ("input_tokens_stddev", int),
    ("output_tokens_mean", int), ("output_tokens_stddev", int), ("tokenizer", str), ("seed", int),
    ("warmup_requests", int), ("request_timeout_s", float), ("openai_body", json.loads), ("trace", str),
    ("time_scale", float), ("trace_block_tokens", int), ("shared_prefix_tokens", int), ("prefix_groups", int),
    ("turns", int), ("grpc_streams", int),
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
        self.grpc: list[GrpcLLMClient] = []  # the process's gRPC streams (loadtest.grpc_streams), opened as users ask
        # Held while a stream opens: without it each user that Locust started while the first connected made its
        # own connection (256 users spawned at once: 256 connections, each read about one response, and all but
        # the last user's requests on the per-request path instead of AnswerChain; docs/benchmarks.md).
        self.grpc_opening = gevent.lock.Semaphore()
        self.grpc_users = itertools.count()
        self.sink = RecordSink(environment)
        self.monitor = ProcessMonitor()
        self.active: dict[Any, Exchange] = {}  # greenlet -> its request in flight
        self.gone: Optional[str] = None
        self.watchdog = gevent.spawn(watch, self)

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

    @property
    def nothing_left(self) -> bool:
        """This process sends no more requests (draining, or its share sent)."""
        return self.draining or (self.quota is not None and self.quota <= 0 and self.warmup_left <= 0)

    def check_done(self) -> None:
        if self.nothing_left and self.inflight == 0 and not self.done_sent:
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


# ---------------------------------------------------------------- the users


def make_client(protocol: str, host: str, info, timeout: float) -> LLMClient:
    """HTTP: a connection per user (per request in flight, open loop). gRPC: one of the process's streams, in turn."""
    if protocol == "grpc-stream":
        st = _STATE
        k = next(st.grpc_users) % st.opts.grpc_streams
        if k >= len(st.grpc):
            with st.grpc_opening:  # the users Locust starts at once ask while the first ones connect
                while len(st.grpc) <= k:
                    st.grpc.append(GrpcLLMClient(host, info, timeout))
        return st.grpc[k]
    if protocol in ("http-stream", "http"):
        return HttpLLMClient(host, info, protocol == "http-stream", timeout)
    if protocol.startswith("openai-"):
        return OpenAIClient(host, info, protocol, timeout, _STATE.opts.openai_body)
    raise ValueError(f"unknown protocol {protocol!r}: http-stream, grpc-stream, http, openai-chat or openai-completions")


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
        if client is not None and client not in self.st.grpc:  # the shared gRPC streams close with the process
            client.close()

    @task
    def generate(self) -> None:
        self.open_loop() if self.st.open_loop else self.closed_loop()

    def closed_loop(self) -> None:
        st = self.st
        if self.client in st.grpc and not st.conversations and type(self).wait_time is TritonLLMUser.wait_time:
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
            if self.client in st.grpc:  # one multiplexed stream carries every request
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
        if sink is not None:  # until the master quits, the file holds an unfinished run (MasterGuard.run_record)
            write_records(sink, [guard.run_record(ended=False)])

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
        steady_gc()
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
    if _STATE is not None:
        for client in _STATE.grpc:
            client.close()
        _STATE.grpc = []
