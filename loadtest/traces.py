"""Trace replay: requests and their send times from a JSONL trace.

Two row forms (docs/loadtest.md):
- Mooncake (FAST'25) style: ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``.
  Each hash id stands for one block of ``block_tokens`` prompt tokens; the block's words are drawn from a
  generator seeded with the hash id, so every request that lists the same hash ids in the same places
  starts with the same tokens, exactly (the prefix a KV cache can reuse). Tokens past the listed blocks
  are the request's own.
- Plain: ``{"timestamp": ms, "prompt": text | "messages": [...], "max_tokens": m}``.

Timestamps count from the trace's first one and are scaled by ``time_scale``. Only the ``tokenizers``
library is used: this runs inside the Locust process.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

from tokenizers import Tokenizer

from prompts import (
    Prompt, count_tokens, finite_number, jsonl_rows, row_max_tokens, row_text, word_tokens, words_text,
)


MAX_ROW_TOKENS = 1 << 20
"""The longest prompt a Mooncake row may ask for (input_length): more than any served model takes. Building and
counting a prompt costs the Locust process about 0.7 KB a token at its peak (2M tokens: 1.4 GB, 10 s)."""
MAX_TRACE_TOKENS = 1 << 28
"""input_length of all rows together: the prompts stay in every Locust process (about 5 bytes a token); the
whole Mooncake trace (about 23,600 rows, 180M tokens) fits."""


MAX_TIMESTAMP_MS = 1e15
"""The largest timestamp a row may have (some 31,000 years; Unix milliseconds are 1.7e12): between -1e308 and 1e308
the send offset was infinite, an OverflowError naming no row."""


def _block(words: list[str], seed: int, hash_id: Any, block_tokens: int) -> str:
    return words_text(words, random.Random(f"{seed}-block-{hash_id}"), block_tokens)


def _mooncake_text(row: dict[str, Any], words: list[str], seed: int, block_tokens: int, own: random.Random) -> str:
    """The prompt of a Mooncake row: its hash-id blocks in order (the last one cut to fit), then its own words."""
    n = int(row["input_length"])
    parts, left = [], n
    for hash_id in row.get("hash_ids") or []:
        if left <= 0:
            break
        block = _block(words, seed, hash_id, block_tokens)
        take = min(left, block_tokens)
        parts.append(block if take == block_tokens else "".join(_split_words(block)[:take]))
        left -= take
    if left > 0:
        parts.append(words_text(words, own, left))
    return "".join(parts)


def _split_words(text: str) -> list[str]:
    """A words_text string back into its tokens (each one space plus letters)."""
    return [" " + w for w in text.split(" ") if w]


def _plain_text(path: Path, lineno: int, row: dict[str, Any]) -> str:
    """A plain row's prompt: its ``prompt``, or its messages' contents joined (bounded by ``row_text``)."""
    if "messages" in row:
        if not all(isinstance(m, dict) for m in row["messages"]):
            raise ValueError(f"{path}:{lineno}: 'messages' must be a list of objects (role, content)")
        text = "\n".join(str(m.get("content", "")) for m in row["messages"])
    else:
        text = row["prompt"]
    return row_text(path, lineno, text)


def read_trace(path: Path, tokenizer: Tokenizer, *, seed: int, block_tokens: int, time_scale: float,
               output_mean: int) -> tuple[list[Prompt], list[int]]:
    """(prompts in trace order, their send offsets in ns from the first timestamp)."""
    rows: list[tuple[dict[str, Any], Optional[str], Optional[int]]] = []  # each row, its prompt when the row holds
    # it, and its max_tokens when it gives one
    tokens = 0
    for lineno, row in jsonl_rows(path):
        if not isinstance(row, dict) or not finite_number(row.get("timestamp")) or abs(row["timestamp"]) > MAX_TIMESTAMP_MS:
            raise ValueError(f"{path}:{lineno}: each line needs a JSON object with a numeric 'timestamp' (ms, at most "
                             f"{MAX_TIMESTAMP_MS:g} either side of 0)")
        if not ("input_length" in row or isinstance(row.get("prompt"), str) or isinstance(row.get("messages"), list)):
            raise ValueError(f"{path}:{lineno}: a row needs 'input_length' (+ 'hash_ids'), 'prompt' or 'messages'")
        length = row_max_tokens(path, lineno, row.get("output_length") or row.get("max_tokens"))
        if "input_length" not in row:
            rows.append((row, _plain_text(path, lineno, row), length))
            continue
        n = row["input_length"]
        if not finite_number(n) or n != int(n) or not 0 < n <= MAX_ROW_TOKENS:
            raise ValueError(f"{path}:{lineno}: input_length must be a whole number of tokens from 1 to "
                             f"{MAX_ROW_TOKENS}, got {n!r}")
        tokens += int(n)
        if tokens > MAX_TRACE_TOKENS:
            raise ValueError(f"{path}:{lineno}: the rows up to here ask for more than {MAX_TRACE_TOKENS} prompt "
                             "tokens together; replay a part of the trace")
        rows.append((row, None, length))
    if not rows:
        raise ValueError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0]["timestamp"])
    words = word_tokens(tokenizer) if any(text is None for _, text, _ in rows) else []
    own = random.Random(f"{seed}-own")
    t0 = rows[0][0]["timestamp"]
    prompts, offsets = [], []
    for i, (row, text, length) in enumerate(rows):
        messages = tuple(row["messages"]) if text is not None and "messages" in row else None
        if text is None:
            text = _mooncake_text(row, words, seed, block_tokens, own)
        max_tokens = length or output_mean
        prompts.append(Prompt(i, text, max_tokens, count_tokens(tokenizer, text), messages=messages))
        offsets.append(round((row["timestamp"] - t0) * time_scale * 1e6))
    return prompts, offsets
