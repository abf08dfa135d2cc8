"""A CPU-time sampling profiler for the Locust process: ``python cpu_sampler.py OUT.txt python -m locust ...``.

Samples are taken on SIGPROF, which the kernel raises per 4 ms of the process's CPU time (user + system,
all threads), so sample counts are proportional to CPU used, and idle waits (the gevent hub in epoll,
grpcio's pool threads parked on a lock) take none. A general sampler such as py-spy cannot tell those
waits from work in a gevent process: it counted idle pool threads and the idle hub as busy. The stack
recorded is the main thread's current greenlet (Python runs signal handlers there); CPU of other threads
lands on whatever the main thread runs next. Output: collapsed stacks, ``frame;frame;... count`` per line.
"""

from __future__ import annotations

import atexit
import runpy
import signal
import sys
from collections import Counter

INTERVAL_S = 0.004
USAGE = "usage: cpu_sampler.py OUT.txt PYTHON -m MODULE ARGS..."


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__}")
        sys.exit(0 if len(sys.argv) > 1 else 2)
    out, argv = sys.argv[1], sys.argv[2:]
    if argv[:2] != [sys.executable, "-m"] and argv[1:2] != ["-m"]:
        sys.exit(USAGE)
    module = argv[2]
    stacks: Counter = Counter()

    def sample(_signum, frame) -> None:
        names = []
        while frame is not None:
            code = frame.f_code
            names.append(f"{getattr(code, 'co_qualname', code.co_name)} ({code.co_filename}:{frame.f_lineno})")
            frame = frame.f_back
        stacks[";".join(reversed(names))] += 1

    def write() -> None:
        signal.setitimer(signal.ITIMER_PROF, 0)
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(f"{stack} {n}\n" for stack, n in stacks.items())

    atexit.register(write)
    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, INTERVAL_S, INTERVAL_S)
    sys.argv = [module, *argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
