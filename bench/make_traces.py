"""Write the two small traces shipped in loadtest/traces/ (seeded: rerunning rewrites the same files).

- ``mooncake-small.jsonl``: Mooncake (FAST'25) rows ``{timestamp, input_length, output_length, hash_ids}``
  sized for the tiny demo model with 16-token blocks (replay with ``--set loadtest.trace_block_tokens=16``).
  90 requests over about 30 s in bursts (Poisson arrivals at 2/s, with three bursts at 12/s); each request
  starts with one of four "system prompt" chains of 2-3 blocks, about a third continue an earlier request
  of the same chain (a conversation: its blocks plus one more), the rest add their own blocks.
- ``plain-small.jsonl``: ``{timestamp, prompt | messages, max_tokens}``: 30 requests over about 15 s,
  half plain prompts, half chat messages with a shared system message.

    .venv/bin/python bench/make_traces.py   # writes loadtest/traces/*.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "loadtest" / "traces"
BLOCK = 16
WORDS = ("the", "model", "serves", "tokens", "fast", "cache", "prefix", "users", "ask", "about", "engines",
         "batch", "latency", "stream", "answer", "question", "with", "short", "long", "text")


def mooncake(rng: random.Random) -> list[dict]:
    chains = [[10 * g + i for i in range(2 + g % 2)] for g in range(4)]  # four shared system prompts
    next_id, rows, t = 1000, [], 0.0
    bursts = (8.0, 17.0, 25.0)
    while len(rows) < 90:
        in_burst = any(b <= t < b + 1.5 for b in bursts)
        t += rng.expovariate(12.0 if in_burst else 2.0)
        earlier = [r for r in rows if r["hash_ids"][0] in {c[0] for c in chains}]
        if earlier and rng.random() < 0.35:  # a conversation goes on: everything before, plus a new block
            ids = list(rng.choice(earlier)["hash_ids"]) + [next_id]
            next_id += 1
        else:
            own = rng.randint(1, 3)
            ids = list(rng.choice(chains)) + list(range(next_id, next_id + own))
            next_id += own
        ids = ids[:10]  # the tiny model takes 256 prompt tokens at most
        length = len(ids) * BLOCK - rng.randint(0, BLOCK - 1)
        rows.append({"timestamp": round(t * 1000), "input_length": length,
                     "output_length": rng.choice((8, 16, 24)), "hash_ids": ids})
    return rows


def plain(rng: random.Random) -> list[dict]:
    system = {"role": "system", "content": "You answer questions about serving language models in one line."}
    rows, t = [], 0.0
    for i in range(30):
        t += rng.expovariate(2.0)
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
        row: dict = {"timestamp": round(t * 1000), "max_tokens": rng.choice((8, 16))}
        if i % 2:
            row["messages"] = [system, {"role": "user", "content": text}]
        else:
            row["prompt"] = text
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=OUT, help="folder for the two traces (default: %(default)s)")
    out = parser.parse_args().output
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("mooncake-small.jsonl", mooncake(random.Random(0))), ("plain-small.jsonl", plain(random.Random(1)))):
        (out / name).write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows), encoding="utf-8")
        print(f"{out / name}: {len(rows)} requests over {rows[-1]['timestamp'] / 1000:.1f} s")


if __name__ == "__main__":
    main()
