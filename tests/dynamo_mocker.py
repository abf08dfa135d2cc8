"""NVIDIA Dynamo's OpenAI frontend with its mocker engine on this CPU, without etcd or NATS: a real
OpenAI-compatible server for the ``openai-*`` load-test protocols (tests and bench/crosscheck_dynamo.py).

The recipe (measured with Dynamo 1.6.1): file discovery, TCP request plane, ZMQ event plane through
a local XSUB/XPUB proxy (the mocker would bind its publishers on 0.0.0.0 otherwise), every port pinned to
127.0.0.1. The mocker streams random token ids unless it replays a trace: ``replay_trace`` writes one whose
answers are real words of the tokenizer, and each request names its row with
``nvext.annotations = ["output_replay_id:ID"]`` (the load test's ``loadtest.openai_replay_ids``).
Installed by ``pip install -e '.[dynamo-test]'`` plus ``ai-dynamo`` without its dependencies (Makefile).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Optional

from generator.procs import ChildGroup, child_env
from generator.serve.ports import free_port

INSTALL_HINT = "make setup-dynamo (pip install -e '.[dynamo-test]' and ai-dynamo==1.6.1 --no-deps)"

_PROXY = """
import sys, zmq
ctx = zmq.Context()
xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
xsub.bind(sys.argv[1]); xpub.bind(sys.argv[2])
zmq.proxy(xsub, xpub)
"""


def system_port() -> int:
    """A free port below 32768: Dynamo reads DYN_SYSTEM_PORT as a signed 16-bit number."""
    import random
    import socket

    for port in random.sample(range(20000, 32768), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768 on 127.0.0.1")


def dynamo_missing() -> Optional[str]:
    """Why Dynamo's frontend and mocker cannot run here, or None when they can."""
    for module in ("dynamo.frontend", "dynamo.mocker", "zmq"):
        try:
            if find_spec(module) is None:
                return f"{module} is not installed: {INSTALL_HINT}"
        except ModuleNotFoundError:
            return f"{module.split('.')[0]} is not installed: {INSTALL_HINT}"
    return None


def replay_trace(path: Path, tokenizer_dir: Path, rows: int, output_tokens: int, seed: int = 0) -> list[str]:
    """A mocker replay trace of ``rows`` answers, each ``output_tokens`` whole-word tokens; returns their ids."""
    import random

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "loadtest"))
    from prompts import load_tokenizer, word_tokens

    tokenizer = load_tokenizer(tokenizer_dir)
    words = word_tokens(tokenizer)
    rng = random.Random(seed)
    ids = [f"r{i}" for i in range(rows)]
    with open(path, "w", encoding="utf-8") as f:
        for rid in ids:
            out = [tokenizer.encode(rng.choice(words), add_special_tokens=False).ids[0] for _ in range(output_tokens)]
            f.write(json.dumps({"timestamp": 0, "input_length": 32, "output_length": output_tokens, "hash_ids": [1],
                                "output_token_ids": out, "request_id": rid}) + "\n")
    return ids


class DynamoMocker:
    """Frontend + one mocker worker + the ZMQ proxy, in one process group, for a ``with`` block."""

    def __init__(self, model_dir: Path, *, model_name: str = "tiny", speedup_ratio: float = 1.0,
                 replay: Optional[Path] = None, log_dir: Optional[Path] = None, extra_mocker_args: tuple[str, ...] = ()):
        self.model_dir, self.model_name, self.speedup_ratio = Path(model_dir), model_name, speedup_ratio
        self.replay, self.extra = replay, extra_mocker_args
        self.log_dir = log_dir
        self.group: Optional[ChildGroup] = None
        self.url = ""

    def __enter__(self) -> "DynamoMocker":
        self._tmp = tempfile.TemporaryDirectory(prefix="tritongen-dynamo-")
        tmp = Path(self._tmp.name)
        logs = Path(self.log_dir or tmp)
        p_sub, p_pub, http = free_port(), free_port(), free_port()
        xsub, xpub = f"tcp://127.0.0.1:{p_sub}", f"tcp://127.0.0.1:{p_pub}"
        planes = ["--discovery-backend", "file", "--request-plane", "tcp", "--event-plane", "zmq"]
        env = child_env(os.environ, DYN_FILE_KV=str(tmp / "kv"), XDG_CACHE_HOME=str(tmp / "cache"),
                        DYN_ZMQ_BROKER_URL=f"xsub={xsub},xpub={xpub}", DYN_EVENT_PLANE_HOST="127.0.0.1",
                        DYN_TCP_RPC_HOST="127.0.0.1", DYN_TCP_RPC_PORT=str(free_port()),
                        DYN_TCP_RESPONSE_STREAM_HOST="127.0.0.1", DYN_TCP_RESPONSE_STREAM_PORT=str(free_port()),
                        DYN_SYSTEM_HOST="127.0.0.1", DYN_SYSTEM_PORT=str(system_port()))
        self.group = ChildGroup(cleanup=[tmp])
        try:
            self._start("proxy", [sys.executable, "-c", _PROXY, xsub, xpub], env, logs)
            mocker = [sys.executable, "-m", "dynamo.mocker", "--model-path", str(self.model_dir),
                      "--model-name", self.model_name, "--speedup-ratio", str(self.speedup_ratio), *planes, *self.extra]
            if self.replay is not None:
                mocker += ["--response-replay-trace-path", str(self.replay)]
            self._start("mocker", mocker, env, logs)
            worker_env = dict(env, DYN_TCP_RPC_PORT=str(free_port()), DYN_TCP_RESPONSE_STREAM_PORT=str(free_port()),
                              DYN_SYSTEM_PORT=str(system_port()))
            self._start("frontend", [sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1",
                                     "--http-port", str(http), *planes, "--router-mode", "round-robin"], worker_env, logs)
            self.url = f"http://127.0.0.1:{http}"
            self._wait_ready(logs)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self, name: str, cmd: list[str], env: dict[str, str], logs: Path) -> None:
        with open(logs / f"dynamo-{name}.log", "w", encoding="utf-8") as log:
            self.group.start(cmd, stdout=log, stderr=log, env=env)

    def _wait_ready(self, logs: Path, timeout_s: float = 120.0) -> None:
        """Until ``/v1/models`` lists the model (the mocker registered through the file store)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.group.procs):
                break
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as resp:  # noqa: S310 (loopback)
                    if any(m.get("id") == self.model_name for m in json.loads(resp.read()).get("data", [])):
                        return
            except OSError:
                pass
            time.sleep(0.5)
        tails = "\n".join(f"{p.name}: " + p.read_text(errors="replace")[-800:] for p in sorted(logs.glob("dynamo-*.log")))
        raise RuntimeError(f"Dynamo frontend + mocker did not become ready:\n{tails}")

    def __exit__(self, *exc) -> None:
        if self.group is not None:
            self.group.stop(timeout_s=10)
        self._tmp.cleanup()
