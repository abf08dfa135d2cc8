"""Child process groups: stop() returns only when every process is gone; a killed tritongen leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generator.errors import TritongenError
from generator.procs import ChildGroup, child_env, group_members

# A parent that ignores SIGTERM with a grandchild that ignores it too: only SIGKILL ends them.
_STUBBORN = ["sh", "-c", "trap '' TERM; sh -c \"trap '' TERM; sleep 600\" & sleep 600"]


def _wait_members(group: ChildGroup, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(group.alive()) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_stop_returns_only_when_the_whole_group_is_gone():
    group = ChildGroup()
    group.start(_STUBBORN)
    _wait_members(group, 3)
    pgid = group.pgid
    assert len(group_members(pgid)) >= 3
    group.stop(timeout_s=0.2)
    assert group_members(pgid) == []  # straight after return: no race with the kernel


def test_stop_names_a_process_that_survives(monkeypatch):
    group = ChildGroup()
    group.start(["sleep", "600"])
    _wait_members(group, 1)
    real = group.signal
    monkeypatch.setattr(group, "signal", lambda sig: None)  # as if SIGKILL could not land (state D)
    with pytest.raises(TritongenError, match=r"survived SIGKILL: \d+ \(sleep"):
        group.stop(timeout_s=0.1, settle_s=0.2)
    real(signal.SIGKILL)
    group.procs[0].wait(timeout=30)


def test_a_stopped_member_ends_by_sigterm_not_by_the_sigkill_after_the_timeout():
    """A member stopped by SIGSTOP (a hung Locust worker in the tests, Ctrl-Z) gets the SIGTERM too: stop sends
    SIGCONT with it, where the SIGTERM used to stay pending until the SIGKILL after ``timeout_s``."""
    group = ChildGroup()
    sleeper = group.start(["sleep", "600"])
    _wait_members(group, 1)
    os.kill(sleeper.pid, signal.SIGSTOP)
    group.stop(timeout_s=120)
    assert sleeper.returncode == -signal.SIGTERM


_LAUNCHER = """
import sys, subprocess
from pathlib import Path
from generator.procs import ChildGroup

group = ChildGroup(cleanup=[Path(sys.argv[1])], grace_s=0.5)  # the default 10 s grace would only add wait
group.start({cmd!r})
group.also_clean(Path(sys.argv[2]))  # a folder found after the start
print(group.pgid, flush=True)
sys.stdin.read()
"""


def test_a_killed_parent_leaves_no_process_and_no_work_folder(tmp_path):
    """SIGKILL gives no chance to clean up: the guard ends the group (SIGKILL after the grace) and
    removes the work folder, and the folder it was told of later."""
    work, later = tmp_path / "work", tmp_path / "python_env_x"
    work.mkdir()
    later.mkdir()
    (work / "admin-key").write_text("x")
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER.format(cmd=_STUBBORN), str(work), str(later)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    pgid = int(launcher.stdout.readline())
    deadline = time.monotonic() + 30
    while len(group_members(pgid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(group_members(pgid)) >= 3
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 60
    while (group_members(pgid) or work.exists() or later.exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(pgid) == []
    assert not work.exists() and not later.exists()


def test_children_get_no_secrets():
    env = child_env({"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "HF_TOKEN": "hf_x", "AWS_SECRET_ACCESS_KEY": "k",
                     "TRITONGEN_ADMIN_KEY": "admin", "GITHUB_TOKEN": "g"}, PYTHONUNBUFFERED="1")
    assert env == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "PYTHONUNBUFFERED": "1"}


_STUB = """
import ctypes, signal, sys, time
sys.path.insert(0, sys.argv[1])
from model_common import exit_with_server
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as Triton's stub: only its server may end it
exit_with_server(0.05, 3.0)
print("watching", flush=True)
if sys.argv[2] == "wedged":  # a call to the (dead) server that holds the GIL, as a metric's set() does
    ctypes.PyDLL(None).sleep(600)
time.sleep(600)
"""


@pytest.mark.parametrize("reaped, gil", [(False, "free"), (True, "free"), (False, "wedged")])
def test_a_stub_ends_when_its_server_is_killed(reaped, gil):
    """model_common.exit_with_server: a stand-in stub (ignoring SIGTERM, as Triton's does) under a stand-in
    server; the server is SIGKILLed, and reaped at once (a shell that ran launch.sh) or left a zombie (what
    the stub's own kill(pid, 0) check takes for alive); the stub ends by itself, also while a call holds
    its GIL."""
    shared = Path(__file__).resolve().parents[1] / "model_repo" / "_shared"
    server = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
                               "print(p.pid, flush=True); p.wait()", sys.executable, "-c", _STUB, str(shared), gil],
                              stdout=subprocess.PIPE, text=True)
    stub = 0
    try:
        stub = int(server.stdout.readline())
        assert server.stdout.readline().strip() == "watching"
        os.kill(server.pid, signal.SIGKILL)
        if reaped:
            server.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _running(stub):
            time.sleep(0.05)
        assert not _running(stub), "the stub outlived its server"
    finally:
        if stub and _running(stub):
            os.kill(stub, signal.SIGKILL)
        server.wait()


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
