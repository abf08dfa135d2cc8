"""Child processes that never outlive tritongen: the server with its stubs, Locust with its workers.

Every child of a ``ChildGroup`` runs in one new process group (so a signal reaches the whole tree,
stubs included, and Ctrl-C on the terminal reaches only tritongen, which then stops the group in
order). Linux sends each direct child SIGTERM if tritongen dies (parent-death signal), and a small
guard process (``generator/_guard.py``, its own session) waits on a pipe from tritongen: when the
pipe closes without tritongen having stopped the group itself (SIGKILL, a crash), the guard ends the
group, SIGKILL included, and removes the work folders. Children get only the environment variables
they need (``child_env``), never tokens or other secrets of the caller's shell.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from generator.errors import StepFailed

ENV_ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONUNBUFFERED",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "MPI_HOSTS",
    "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME",
})
"""What a server, its Python stubs and Locust may inherit: paths, preloads (tcmalloc), locale, thread counts,
GPU choice, offline caches, the settings of CUDA, NCCL, MPI and TensorRT-LLM (``ENV_ALLOWED_PREFIXES``). Anything
else (HF_TOKEN, cloud keys, tritongen's admin key) stays behind."""
ENV_ALLOWED_PREFIXES = ("LC_", "CUDA_", "NCCL_", "UCX_", "OMPI_", "PMIX_", "TRTLLM_", "TLLM_")


def child_env(base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """``base`` reduced to ``ENV_ALLOWED``, plus ``extra``."""
    env = {k: v for k, v in base.items() if k in ENV_ALLOWED or k.startswith(ENV_ALLOWED_PREFIXES)}
    env.update(extra)
    return env


def group_members(pgid: int) -> list[tuple[int, str, str]]:
    """(pid, name, state) of every live process in group ``pgid`` (zombies are dead: left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append((int(entry.name), name, state))
    return members


def _child_setup(pgid: int, with_parent: bool):
    """Join (or, with ``pgid`` 0, lead) the group; from the main thread also arm the parent-death
    signal (Linux ties it to the thread that forked, so from another thread it would fire early)."""
    arm = with_parent and sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()
    libc = None
    if arm:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        os.setpgid(0, pgid)
        if libc is not None:
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG

    return setup


class ChildGroup:
    """Start processes in one new process group; ``stop`` ends all of it, a guard does if we die."""

    def __init__(self, *, cleanup: Sequence[Path] = (), shm_prefix: Optional[str] = None, grace_s: float = 10.0):
        self.cleanup = [Path(p) for p in cleanup]
        self.shm_prefix = shm_prefix
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen] = []
        self.pgid: Optional[int] = None
        self._guard: Optional[subprocess.Popen] = None

    def start(self, cmd: Sequence[str], **popen_kw) -> subprocess.Popen:
        """Popen ``cmd`` in the group (the first one leads it)."""
        proc = subprocess.Popen(list(cmd), preexec_fn=_child_setup(self.pgid or 0, with_parent=True), **popen_kw)
        if self.pgid is None:
            self.pgid = proc.pid
            self._start_guard()
        self.procs.append(proc)
        return proc

    def _start_guard(self) -> None:
        guard = Path(__file__).with_name("_guard.py")
        args = [sys.executable, "-I", str(guard), str(self.pgid), str(self.grace_s), self.shm_prefix or "",
                *map(str, self.cleanup)]
        self._guard = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True, env=child_env(os.environ))

    def alive(self) -> list[tuple[int, str, str]]:
        return group_members(self.pgid) if self.pgid is not None else []

    def signal(self, sig: int) -> None:
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, timeout_s: float = 20.0, settle_s: float = 10.0) -> None:
        """SIGTERM (and SIGCONT) the group, SIGKILL what is left after ``timeout_s``; return once no process of the
        group is alive, or raise naming the ones still there ``settle_s`` after SIGKILL."""
        if self.pgid is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            self.signal(signal.SIGCONT)  # a stopped member (SIGSTOP, Ctrl-Z) gets its SIGTERM only once continued
            deadline = time.monotonic() + timeout_s
            while self.alive() and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.1)
        self.signal(signal.SIGKILL)
        deadline = time.monotonic() + settle_s
        while self.alive() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._reap()
        survivors = self.alive()
        if survivors:  # the guard keeps trying after we return
            raise StepFailed(
                "processes survived SIGKILL: " + ", ".join(f"{pid} ({name}, state {st})" for pid, name, st in survivors),
                fix="they are stuck in the kernel (state D: I/O); check the disk or device, then kill them",
            )
        self._release_guard()

    def also_clean(self, path: Path) -> None:
        """Have the guard remove ``path`` too if tritongen dies (a folder the group made after its start)."""
        if self._guard is not None:
            try:
                self._guard.stdin.write(f"clean {path}\n".encode("utf-8", "surrogateescape"))
                self._guard.stdin.flush()
            except OSError:
                pass

    def _reap(self) -> None:
        for p in self.procs:
            p.poll()

    def _release_guard(self) -> None:
        """Tell the guard the group is stopped, so it exits without touching anything."""
        guard, self._guard = self._guard, None
        if guard is None:
            return
        try:
            guard.stdin.write(b"done")
            guard.stdin.close()
        except OSError:
            pass
        try:
            guard.wait(timeout=5)
        except subprocess.TimeoutExpired:
            guard.kill()
