"""Where a Locust process's finished requests go (``RecordSink``) and how it watches its own health
(``ProcessMonitor``): both report into the records file (generator/measure/records.py), the master's when
distributed. Runs only inside Locust's process (tritonllm.py imports it).
"""

from __future__ import annotations

import gc
import os
import socket
import time
from typing import Optional

import gevent
import psutil
from locust.runners import WorkerRunner

from clients import Exchange
from generator.measure.records import ProcessRecord, RequestRecord, open_records, quantile_sample, write_records

MSG_RECORDS = "tritongen_records"
_LAG_PROBE_S = 0.01
_FLUSH_S = 0.2


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
    times, texts = record["resp_ns"], record["resp_text"]
    if not all(texts):  # the usual answer has text in every response: no list made
        times = [t for t, text in zip(times, texts) if text]
    fire(request_type=kind, name="e2e", response_time=e2e_ms, response_length=len(times), exception=None, context={})
    if not record["warmup"] and times:
        fire(request_type=kind, name="ttft", response_time=(times[0] - record["sched_ns"]) / 1e6,
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


GC_YOUNG = 20_000
"""Allocations between two collections of the youngest generation (Python's default: 700)."""


def steady_gc() -> None:
    """The cyclic garbage collector set for a process that makes a few dicts and lists per response: what the
    start-up made (modules, tokenizer, prompts) frozen out of every later collection, and the youngest
    generation collected every GC_YOUNG allocations instead of 700. At saturation the collector spent about 6%
    of the process's CPU walking the same live requests and start-up objects again and again (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


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
