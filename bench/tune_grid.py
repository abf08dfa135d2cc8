"""A dense grid of loads for one serving setting, to check where `tritongen tune` put its knee (by hand).

Serves the setting once and measures every concurrency in --users with the same level rules as tune
(goodput.measure_level: rounds of tune.requests_per_level requests, pooled while the attainment interval
straddles the target, client-limited rounds set aside), so the grid differs from tune's search only in
which loads it visits. Prints a markdown table and the wall time.

    .venv/bin/python bench/tune_grid.py SPEC --set serving.max_batch_size=4 \\
        --slo "ttft_p95<2s,itl_p95<100ms" --users 1,2,4,8-16 -o /tmp/grid-mbs4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.measure.goodput import measure_level  # noqa: E402
from generator.measure.sweep import prepare_point  # noqa: E402
from generator.measure.tune import round_measure  # noqa: E402
from generator.serve.server import TritonServer  # noqa: E402
from generator.spec import load_spec  # noqa: E402


def loads(text: str) -> list[int]:
    """``1,2,4,8,16,32,44-54``: sparse loads below the knee (which also warm the server up, as tune's
    growing levels do) and a dense range around it, in the order given."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--slo", required=True)
    ap.add_argument("--users", default="1-16", help="loads and ranges, e.g. 1,2,4,8,16,32,44-54")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()
    spec = load_spec(args.spec, [f"loadtest.slo={args.slo}"])
    started = time.monotonic()
    pspec, repo = prepare_point(spec, args.sets, "grid", args.output, False, lambda _m: None)
    rows = []
    server = TritonServer(repo, log_file=args.output / "triton.log")
    try:
        server.start(timeout_s=600)  # a loaded machine may take minutes to load the model
        measure = round_measure(pspec, server, args.output / "levels", False, lambda m: print(m, flush=True))
        for users in loads(args.users):
            lv = measure_level(measure, float(users), pspec.tune, lambda: True)
            f = lv.figures
            rows.append(f"| {users} | {lv.verdict} | {lv.rounds} | {f.attainment.estimate:.3f} [{f.attainment.low:.3f}, "
                        f"{f.attainment.high:.3f}] (n={f.requests}) | {f.output_tokens_per_s.estimate:.1f} "
                        f"[{f.output_tokens_per_s.low:.1f}, {f.output_tokens_per_s.high:.1f}] | "
                        f"{f.ttft_p95_ms.estimate:.0f} | {f.itl_p95_ms.estimate:.1f} |")
            print(rows[-1], f"({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        server.stop()
    print(f"\nsetting {' '.join(args.sets)}, SLO {args.slo}, wall time {time.monotonic() - started:.0f} s\n")
    print("| users | verdict | rounds | attainment [95%] (n) | out tok/s [95%] | TTFT p95 ms | ITL p95 ms |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
