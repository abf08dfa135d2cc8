"""The distributed run's master side: only this run's workers are heard, and a lost worker ends the run.

Locust's master takes any message from anyone who reaches its port (ZeroMQ, no authentication): a fake
worker could add records, end the run or count as a worker. Here every worker proves it belongs to the
run with the run token (``TRITONGEN_RUN_TOKEN`` in the environment of master and workers, never on a
command line, where ``ps`` shows it) in a first message; until then the master holds its
``client_ready`` (so it is not a worker and gets no users) and hears nothing else from it. Anything
else is dropped and counted; the counts go into the records file's ``run`` record.

Hooked by wrapping the master runner's ``handle_message`` (what its ``client_listener`` calls for every
message, with the sender's connection identity), so Locust itself is unchanged. Its server's
``recv_from_client`` is wrapped too: Locust's listener survives only two decoding errors, and any other
(an empty frame, a msgpack integer, a two-item list: one small message from anyone on the port) ended it,
so the master heard nothing more and its own workers were locked out or lost.

A worker that stops answering heartbeats (Locust marks it missing after about 3 s) or leaves before it
reported done makes the run incomplete: the other workers are told to drain, the run ends as soon as
they are done, and the records already received are kept.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
from collections import Counter
from typing import Any, Callable

import gevent
from locust import __version__ as LOCUST_VERSION
from locust.exception import RPCError, RPCReceiveError, RPCSendError
from locust.rpc import Message
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

from generator.measure.records import MAX_INCOMPLETE, MESSAGE_KIND_CHARS, MESSAGE_KINDS, RunRecord

TOKEN_ENV = "TRITONGEN_RUN_TOKEN"
PORT_FD_ENV = "TRITONGEN_MASTER_PORT_FD"
"""A pipe the master writes its bound port to: the workers start only then, so they never hand the token to
whoever bound the port in the seconds between tritongen choosing it and the master binding it (review7)."""
MSG_HELLO = "tritongen_hello"
_PENDING_LIMIT = 1024
"""Connections whose ``client_ready`` waits for a token at most (past it the oldest is dropped, not stored)."""
_WATCH_S = 0.5
_log = logging.getLogger("tritongen")


def run_token() -> str:
    """This run's token; a distributed run without one refuses to start."""
    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        raise RuntimeError(f"distributed runs need {TOKEN_ENV} (at least 16 characters, the same on the master "
                           "and every worker): tritongen loadtest sets it; by hand, e.g. "
                           f"export {TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_hex(16))')")
    return token


def introduce(runner: WorkerRunner, token: str) -> None:
    """A worker's first own message: the run token."""
    runner.send_message(MSG_HELLO, {"token": token})


def announce_port(runner: MasterRunner) -> None:
    """Tell the parent (``PORT_FD_ENV``) that this master holds its port now."""
    fd = os.environ.get(PORT_FD_ENV)
    if not fd:
        return
    try:  # a pipe past stdin, stdout and stderr: a stale or hand-set value closed stderr, or raised a traceback
        if not fd.isdigit() or int(fd) < 3 or not stat.S_ISFIFO(os.fstat(int(fd)).st_mode):
            raise OSError("not a pipe")
    except (OSError, OverflowError) as exc:
        _log.warning("ignoring %s=%r (%s): tritongen loadtest sets it to a pipe; by hand, unset it", PORT_FD_ENV, fd, exc)
        return
    with os.fdopen(int(fd), "w") as pipe:
        pipe.write(f"{runner.server.port}\n")


class MasterGuard:
    """Authenticates workers, counts what it refuses, notices lost workers and knows when all are done."""

    def __init__(self, runner: MasterRunner, token: str, expected: int, finish: Callable[[], None],
                 drain: Callable[[], None]) -> None:
        self.runner, self.token, self.expected = runner, token, max(expected, 1)
        self.finish, self.drain = finish, drain
        self.members: set[str] = set()
        self.pending: dict[str, Any] = {}
        self.rejected: Counter[str] = Counter()
        self.done: set[int] = set()
        self.lost: dict[int, str] = {}
        self.finished = False
        self._handle = runner.handle_message
        runner.handle_message = self.handle
        self._receive = runner.server.recv_from_client
        runner.server.recv_from_client = self.receive
        gevent.spawn(self._watch)
        announce_port(runner)

    # ------------------------------------------------------------ authentication

    def receive(self):
        """The next message that decodes: one that does not is counted and dropped, never raised."""
        while True:
            try:
                return self._receive()
            except RPCReceiveError as exc:
                if exc.addr in self.members:
                    raise  # Locust asks its own worker to reconnect
                self.reject(exc.addr or "?", "undecodable")
            except (RPCError, RPCSendError):
                raise  # the network's own failures, which Locust's listener handles
            except Exception:  # noqa: BLE001 - whatever msgpack or Locust's Message raise on a sender's bytes
                self.reject("?", "undecodable")

    def handle(self, client_id: str, msg) -> None:
        own = msg.node_id == client_id  # Locust trusts node_id; a message must name its own connection
        if client_id in self.members and own:
            self._handle(client_id, msg)
        elif msg.type == MSG_HELLO and own and self._valid(msg.data):
            # its client_ready, or one made again when a flood of other connections pushed it out of the table
            # (1,200 connections repeating client_ready locked the run's worker out between its two messages)
            ready = self.pending.pop(client_id, None) or Message("client_ready", LOCUST_VERSION, client_id)
            self.members.add(client_id)
            self._handle(client_id, ready)
        elif msg.type == "client_ready" and own:
            if client_id not in self.pending and len(self.pending) >= _PENDING_LIMIT:
                # the oldest has waited longest for a token a worker sends at once: 1,024 connections that never
                # sent one locked the run's own workers out
                self.reject(self.pending.pop(next(iter(self.pending))).node_id, msg.type)
            self.pending[client_id] = msg
            self.runner.send_message("ack", client_id=client_id)  # lets the worker start; no index: not a worker yet
        elif msg.type == "heartbeat" and client_id in self.pending:
            pass  # a worker between client_ready and its token
        else:
            self.reject(client_id, msg.type)

    def _valid(self, data: Any) -> bool:
        token = data.get("token") if isinstance(data, dict) else None
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.token.encode())

    def reject(self, client_id: str, kind: str) -> None:
        if not self.rejected:
            _log.error("rejected a message (%s) from %r: not a worker of this run (no or wrong %s)",
                       kind, client_id, TOKEN_ENV)
        # the sender chooses the types: 3,000 made-up ones made results.json and the summary 3,000 entries longer
        kind = str(kind)[:MESSAGE_KIND_CHARS]
        self.rejected[kind if kind in self.rejected or len(self.rejected) < MESSAGE_KINDS else "other"] += 1

    # ------------------------------------------------------------ completion and lost workers

    def worker_done(self, index: int) -> None:
        self.done.add(index)
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self.finished and len(self.done | set(self.lost)) >= self.expected:
            self.finished = True
            gevent.spawn(self.finish)

    def _watch(self) -> None:
        seen: dict[str, int] = {}
        while not self.finished:
            gevent.sleep(_WATCH_S)
            clients = self.runner.clients
            for client_id in self.members:
                node = clients.get(client_id)
                if client_id not in seen and node is not None:
                    seen[client_id] = self.runner.get_worker_index(client_id)
            for client_id, index in seen.items():
                node = clients.get(client_id)
                why = "left" if node is None else "stopped answering heartbeats" if node.state == STATE_MISSING else None
                if why and index not in self.done and index not in self.lost:
                    self._lose(index, f"worker {index} {why} before it finished")

    def _lose(self, index: int, why: str) -> None:
        _log.error("%s: the run is incomplete; the other workers drain and the records so far are kept", why)
        self.lost[index] = why
        self.drain()
        self._maybe_finish()

    def run_record(self, *, ended: bool = True) -> RunRecord:
        """The records file's ``run`` record: workers lost, messages refused, and a master that quit before every worker
        was done or lost (review22: stopped by its Job's deadline, ``kubectl delete``, or a worker's failed setup, the
        master recorded a whole run, which ``loadtest --records`` judged as one: an SLO passed on part of a run).
        ``ended=False``: the record the master writes first, which the one it writes when it quits replaces (the last
        run record counts); a file without that last one is an incomplete run (review23: a killed master, or a file
        read while the run went on, left no run record, which ``loadtest --records`` took for a whole run)."""
        why = list(self.lost.values())
        if not ended:
            why.append("the master never recorded the run's end: the run was still going when the records were read, "
                       "or the master was killed (out of memory, its node lost, SIGKILL) before it could")
        elif not self.finished:
            why.append(f"the master stopped before every worker finished ({len(self.done)} of {self.expected} reported "
                       "done: a worker's setup failed, or the master was stopped, e.g. at its Job's deadline)")
        return {"kind": "run", "lost_workers": sorted(self.lost), "incomplete": "; ".join(why)[:MAX_INCOMPLETE] or None,
                "rejected_messages": dict(self.rejected)}

