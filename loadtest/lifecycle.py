"""One request's life in a Locust process: counted in flight, sent, answered or cut off, handed to the sink.

``run_request`` (a user waits for the answer), ``AnswerChain`` (a closed-loop gRPC user whose next request
leaves from the last answer's callback), ``run_conversation`` (a request's later turns) and ``watch`` (the
process's one watchdog over them all). This is the
load generator's hot path (its cost per request is measured in docs/benchmarks.md): no layer more than
the work needs. Runs only inside Locust's process (tritonllm.py imports it).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Optional

import gevent
import gevent.event

from clients import Exchange, LLMClient, decode_safely, new_record
from generator.measure.records import server_gone
from grpcclient import GrpcLLMClient
from prompts import Prompt, follow_up

if TYPE_CHECKING:
    from tritonllm import LoadState

_RUN_TOKEN = os.urandom(4).hex()


class StuckRequest(Exception):
    """Raised in a request's greenlet to end it when its answer is silent or outlasts the run (``watch``)."""


def watch(st: LoadState) -> None:
    """The process's one watchdog over its requests in flight (``st.active``: user greenlet -> request), one check
    a few times per timeout instead of a timer per request. Cuts a request whose answer has been silent for
    request_timeout_s (no event: a server trickling bytes or a line that never ends holds a blocking client's
    per-read timeout off), or that still runs request_timeout_s after this process had nothing left to send
    (an endless stream): one such answer held the run past its end until the runner gave up, and every
    record of the run with it. A request on the shared gRPC stream is failed as its answer
    (``GrpcLLMClient.cut``: its callback hands it on); any other by killing its user's greenlet."""
    timeout = st.opts.request_timeout_s
    limit, ending_since = int(timeout * 1e9), None
    while True:
        gevent.sleep(min(1.0, timeout / 10))
        now = time.monotonic_ns()
        if ending_since is None and st.nothing_left:
            ending_since = now
        ended = ending_since is not None and now - ending_since > limit
        for greenlet, ex in list(st.active.items()):
            if ended:
                why = f"still answering {timeout:g} s after the run ended"
            elif ex.silent_ns(now) > limit:
                why = f"no response within {timeout:g} s"
            else:
                continue
            if not any(client.cut(ex, why) for client in st.grpc):
                ex.fail(why)
                greenlet.kill(StuckRequest(why), block=False)


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
    previous answer, in the event loop's read of the stream: no greenlet switch, task scheduling or timer per
    request, which at saturation is most of what a request costs the event loop (docs/benchmarks.md). The
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
