"""How many repeats the regression gate needs on this machine, from a `tritongen loadtest --repeat N` folder.

    tritongen loadtest demo-out/repo-cpu --repeat 10 -o bench-out/repeat10     # the demo's load, 10 times
    .venv/bin/python bench/gate_repeats.py bench-out/repeat10 [SKIP]   # SKIP: leave out the first runs

For each compared latency and throughput figure: the runs' values, spread and CV, and the sd of the
log figure (σ, ≈ CV). From σ, with Welch's interval over n runs a side (as compare uses it):
- detect: the smallest n for which a true +10 % change gives an interval that excludes 0 ("worse") four
  times in five (80 % power, 95 % intervals): n = 2·(t₀.₉₇₅ + t₀.₈₀)²·σ²/ln(1.1)², t at 2n − 2 dof;
- pass: the smallest n for which, with no true change, the interval's expected upper end stays below
  +10 %, so a `METRIC:+10%` term can pass rather than be inconclusive: t₀.₉₇₅·σ·√(2/n) < ln(1.1).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from generator.measure.baseline import load
from generator.measure.intervals import _t
from generator.measure.metrics import METRICS

CHANGE = math.log(1.10)
FIGURES = ("ttft_p50", "ttft_p95", "ttft_p99", "itl_p50", "itl_p95", "e2e_p50", "e2e_p95", "output_tokens_per_s")


def repeats_needed(sigma: float, power_t: bool) -> int:
    """Smallest n a side (up to 1001): start from the normal-quantile answer (t ≥ z, so never past it)."""
    z = 1.959964 + (0.841621 if power_t else 0.0)
    n = max(2, math.ceil(2 * (z * sigma / CHANGE) ** 2))
    while n <= 1000:
        dof = 2 * n - 2
        needed = _t(0.95, dof) + (_t(0.60, dof) if power_t else 0.0)  # one-sided 0.80 = two-sided 0.60
        if needed * sigma * math.sqrt(2 / n) < CHANGE:
            return n
        n += 1
    return 1001


def _n(n: int) -> str:
    return "> 1000" if n > 1000 else str(n)


def main(folder: Path, skip: int = 0) -> None:
    ev = load(folder)
    ev = ev.model_copy(update={"runs": ev.runs[skip:]})
    print(f"{folder}: {len(ev.runs)} runs (first {skip} left out), {sum(r.requests for r in ev.runs)} requests;"
          f" client-limited runs: {len(ev.client_limited)}")
    print("| figure | per run | mean | spread | CV | σ of log | repeats to detect +10% | repeats to pass +10% |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in FIGURES:
        values = [r.figures[name] for r in ev.runs if r.figures.get(name)]
        if len(values) < 2:
            continue
        a = np.asarray(values)
        sigma = float(np.std(np.log(a), ddof=1))
        unit = "/s" if METRICS[name].unit == "per s" else ""
        print(f"| {METRICS[name].label} | {', '.join(f'{v:.0f}' for v in a)}{unit} | {a.mean():.1f} | "
              f"{(a.max() - a.min()) / a.mean():.0%} | {a.std(ddof=1) / a.mean():.0%} | {sigma:.3f} | "
              f"{_n(repeats_needed(sigma, True))} | {_n(repeats_needed(sigma, False))} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
