"""Prompts for the load test: a JSONL file, or synthesized to a target token-length distribution.

Synthetic prompts follow genai-perf's idea (lengths drawn from a normal distribution with a mean and a
standard deviation, seeded) but are built from whole-word tokens of the served model's own vocabulary,
so that a prompt of N words encodes to exactly N tokens without a text corpus. Only the ``tokenizers``
library is used: this runs inside the Locust process, which must stay light.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from tokenizers import Tokenizer

_WORD = re.compile(r"^ [A-Za-z]{2,}$")


@dataclass(frozen=True)
class Prompt:
    index: int
    text: str
    max_tokens: int
    input_tokens: int
    messages: Optional[tuple[dict[str, Any], ...]] = None
    """Chat messages (a trace's ``messages``, or a conversation so far); ``text`` is their contents joined."""
    turns: tuple[str, ...] = ()
    """Multi-turn: the questions of the conversation's later turns, asked one by one after this one."""


def load_tokenizer(folder: Path) -> Tokenizer:
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a folder with tokenizer.json (--tokenizer)")
    return Tokenizer.from_file(str(path))


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def _length(rng: random.Random, mean: int, stddev: int) -> int:
    return max(1, round(rng.gauss(mean, stddev))) if stddev else mean


def word_tokens(tokenizer: Tokenizer) -> list[str]:
    """Vocabulary entries that are one space plus letters and encode back to themselves alone."""
    special = set(tokenizer.get_added_tokens_decoder())
    words = []
    for tid in range(tokenizer.get_vocab_size()):
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        if _WORD.match(text) and tokenizer.encode(text, add_special_tokens=False).ids == [tid]:
            words.append(text)
    if len(words) < 20:
        raise ValueError("the tokenizer has too few whole-word tokens to synthesize prompts; pass --prompts FILE")
    return words


def words_text(words: list[str], rng: random.Random, n: int) -> str:
    """``n`` whole-word tokens drawn with ``rng``: the text encodes to exactly those ``n`` tokens."""
    return "".join(rng.choice(words) for _ in range(n))


def synthesize(
    tokenizer: Tokenizer, *, count: int, seed: int, input_mean: int, input_stddev: int,
    output_mean: int, output_stddev: int, shared_prefix_tokens: int = 0, prefix_groups: int = 1, turns: int = 1,
) -> list[Prompt]:
    """``count`` prompts whose own token lengths follow N(input_mean, input_stddev), seeded.

    With ``shared_prefix_tokens``, prompt i starts with shared prefix ``i % prefix_groups`` (the same tokens
    exactly); with ``turns`` > 1, each prompt opens a conversation and carries the questions of its later turns.
    """
    rng = random.Random(seed)
    words = word_tokens(tokenizer)
    prefixes = [words_text(words, random.Random(f"{seed}-prefix-{g}"), shared_prefix_tokens) for g in range(prefix_groups)]
    prompts = []
    for i in range(count):
        text = prefixes[i % prefix_groups] + words_text(words, rng, _length(rng, input_mean, input_stddev))
        later = tuple(words_text(words, rng, _length(rng, input_mean, input_stddev)) for _ in range(turns - 1))
        prompts.append(Prompt(i, text, _length(rng, output_mean, output_stddev), count_tokens(tokenizer, text),
                              turns=later))
    return prompts


def follow_up(previous: Prompt, answer: str, question: str, index: int, tokenizer: Tokenizer) -> Prompt:
    """The next turn of a conversation: everything so far (as chat messages, and as one text for the
    text protocols), the answer just received, and the new question."""
    messages = previous.messages or ({"role": "user", "content": previous.text},)
    messages = (*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": question})
    text = previous.text + answer + question
    return Prompt(index, text, previous.max_tokens, count_tokens(tokenizer, text), messages=messages)


MAX_ROW_CHARS = 8 << 20
"""The longest prompt text one row of a prompts or trace file may hold: about a million tokens of text; counting
its tokens costs about 160 bytes a character at the peak (9.6M characters: 1.5 GB, 9 s)."""
MAX_LINE_CHARS = 64 << 20
"""The longest line of a prompts or trace file that is read: a sparse file without newlines (no disk used) would
otherwise be read whole into the Locust process."""


def row_text(path: Path, lineno: int, text: str) -> str:
    """``text``, refused (naming the line) when longer than MAX_ROW_CHARS, before anything tokenizes it, or when
    it is no Unicode text (a JSON ``"\\ud800"``: the records, written as UTF-8, could not hold it)."""
    if len(text) > MAX_ROW_CHARS:
        raise ValueError(f"{path}:{lineno}: a prompt of {len(text):,} characters; a row holds at most "
                         f"{MAX_ROW_CHARS:,}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{path}:{lineno}: the prompt holds {ascii(exc.object[exc.start])}, half of a UTF-16 "
                         "surrogate pair, which is no character") from None
    return text


def finite_number(value: Any) -> bool:
    """A JSON number that is no bool and finite. An integer is never turned into a float to be checked: one of 400
    digits (JSON allows it, Python parses up to 4,300) made that an OverflowError naming no row (review16)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and math.isfinite(value))


MAX_OUTPUT_TOKENS = 1 << 20
"""The most tokens a row may ask the server to generate (max_tokens, a trace's output_length)."""


def row_max_tokens(path: Path, lineno: int, value: Any) -> Optional[int]:
    """A row's max_tokens (or output_length): None when it gives none (absent, null or 0), else a whole number from
    1 to MAX_OUTPUT_TOKENS, refused naming the line (``"many"`` or ``[1]`` was a traceback-like setup error naming
    no file, -5 or 10**12 a request every server refused)."""
    if not value and not isinstance(value, bool):
        return None
    if (not finite_number(value)
            or value != int(value) or not 1 <= value <= MAX_OUTPUT_TOKENS):
        raise ValueError(f"{path}:{lineno}: max_tokens (output_length) must be a whole number of tokens from 1 to "
                         f"{MAX_OUTPUT_TOKENS}, got {value!r}"[:300])
    return int(value)


def jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of each non-blank line; a line too long, not JSON or nested past what Python
    parses is a ValueError naming it."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(iter(lambda: f.readline(MAX_LINE_CHARS + 1), ""), 1):
            if len(line) > MAX_LINE_CHARS:
                raise ValueError(f"{path}:{lineno}: longer than {MAX_LINE_CHARS >> 20} Mi characters, no row is")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            except ValueError as exc:  # an integer past Python's 4,300 digits
                raise ValueError(f"{path}:{lineno}: not JSON ({str(exc).split(':')[0]})") from None
            except RecursionError:
                raise ValueError(f"{path}:{lineno}: nested deeper than any row is") from None
            yield lineno, row


def read_jsonl(
    path: Path, tokenizer: Tokenizer, *, seed: int, output_mean: int, output_stddev: int
) -> list[Prompt]:
    """Prompts from a JSONL file: ``text`` per line, optional ``max_tokens`` (else drawn like synthetic ones)."""
    rng = random.Random(seed)
    prompts = []
    for lineno, item in jsonl_rows(path):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ValueError(f"{path}:{lineno}: each line needs a JSON object with a string 'text'")
        row_text(path, lineno, item["text"])
        max_tokens = row_max_tokens(path, lineno, item.get("max_tokens")) or _length(rng, output_mean, output_stddev)
        prompts.append(Prompt(len(prompts), item["text"], max_tokens, count_tokens(tokenizer, item["text"])))
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts
