"""Who sends what, when: a process's share of the requests and its part of an open-loop arrival schedule.

Pure (standard library only), so the schedule can be tested without Locust.
"""

from __future__ import annotations

import itertools
import random
from typing import Iterator


def share(total: int, index: int, count: int) -> int:
    """This process's part of ``total`` when ``count`` processes split it."""
    return total // count + (1 if index < total % count else 0)


def arrival_offsets(rate: float, arrival: str, seed: int, index: int, count: int) -> Iterator[int]:
    """Send times (ns after the start) of one process's part of a ``rate``/s schedule.

    Constant: process ``index`` of ``count`` takes every ``count``-th slot, so the union is exactly
    ``rate``/s. Poisson: each process draws exponential gaps at ``rate/count`` with its own seed; independent
    Poisson processes add up to one at ``rate``.
    """
    if arrival == "constant":
        period = 1e9 / rate
        for k in itertools.count():
            yield round((k * count + index) * period)
    else:
        rng = random.Random(seed * 1_000_003 + index)
        t = 0.0
        while True:
            t += rng.expovariate(rate / count)
            yield round(t * 1e9)
