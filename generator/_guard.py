"""Guard of one process group, run by ``generator.procs`` as ``python -I _guard.py PGID GRACE SHM PATH...``.

It reads its stdin until tritongen closes it: lines ``clean PATH`` add folders to remove (found after
the start, such as the server's Python-backend folder), a last line ``done`` means tritongen stopped the
group itself; anything else means tritongen died (SIGKILL, a crash): then the guard SIGTERMs the group, SIGKILLs
what is left after GRACE seconds, waits until it is gone, and removes the work folders and this
server's shared-memory regions. Standard library only: it must run whatever tritongen's state.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path


def _alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def _until_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def main(pgid: int, grace_s: float, shm_prefix: str, paths: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lines = sys.stdin.buffer.read().decode("utf-8", "surrogateescape").split("\n")
    if lines[-1] == "done":
        return
    paths = paths + [line[len("clean "):] for line in lines if line.startswith("clean ")]
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 3600.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        if _until_gone(pgid, wait):
            break
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    if shm_prefix:
        for region in Path("/dev/shm").glob(f"{shm_prefix}*"):
            region.unlink(missing_ok=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:])
