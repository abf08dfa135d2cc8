"""Incremental detokenization: token-id chunks in, text pieces out, pieces joined == one decode of all ids.

Decoding each streamed chunk alone (what NVIDIA's postprocessing does) breaks characters whose UTF-8
bytes span tokens (emoji, CJK, accents become U+FFFD) and, with SentencePiece tokenizers, drops the
space that a token carries when it is not the first of a decode call. Here every chunk is decoded
after a few already-emitted context tokens and only the new suffix is emitted; a chunk whose text
ends in an incomplete character is held back until the character completes (or the stream ends).

Pure Python (no Triton, no transformers): the decode function is passed in, so tests run it
directly. Triton's postprocessing and BLS use it through ``StreamTable``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Hashable, List, Optional, Sequence

REPLACEMENT = "\ufffd"
# A UTF-8 character has at most 4 bytes, so at most 3 trailing tokens can still be waiting for the
# rest of one; anything incomplete further back is genuinely invalid and is emitted as decoded.
_MAX_HELD_TOKENS = 3


class IncrementalDetokenizer:
    """Turn a stream of token-id chunks into text pieces whose concatenation equals ``decode(all)``.

    ``decode`` maps a list of ids to text (e.g. a tokenizer's decode with skip_special_tokens).
    ``context`` is how many already-emitted tokens are re-decoded in front of new ones, which is
    enough for spaces and merges that depend on the previous token.
    """

    def __init__(self, decode: Callable[[List[int]], str], context: int = 4):
        self._decode = decode
        self._context_size = context
        self._context: List[int] = []
        self._context_text = ""
        self._pending: List[int] = []

    def push(self, ids: Sequence[int]) -> str:
        """Add generated ids; return the text that is now final (possibly empty)."""
        ids = self._pending + [int(i) for i in ids]
        if not ids:
            return ""
        text, cut = "", 0
        for k in range(len(ids), max(0, len(ids) - _MAX_HELD_TOKENS) - 1, -1):
            if k == 0:
                break
            candidate = self._decode(self._context + ids[:k])
            if not candidate.endswith(REPLACEMENT):
                text, cut = candidate, k
                break
        else:
            # Every recent cut ends in U+FFFD: the bytes before the last few are invalid, not
            # incomplete, and cannot change any more; emit them and keep waiting on the rest.
            cut = len(ids) - _MAX_HELD_TOKENS
            text = self._decode(self._context + ids[:cut])
        if cut == 0:
            self._pending = ids
            return ""
        self._pending = ids[cut:]
        return self._advance(text, ids[:cut])

    def finish(self) -> str:
        """End of stream: return whatever is still held back, decoded as it stands."""
        if not self._pending:
            return ""
        ids, self._pending = self._pending, []
        return self._advance(self._decode(self._context + ids), ids)

    @property
    def holding(self) -> bool:
        """True when tokens wait for the rest of a character."""
        return bool(self._pending)

    def _advance(self, text: str, emitted: List[int]) -> str:
        prefix = self._context_text
        piece = text[len(prefix):] if text.startswith(prefix) else text[_common_prefix(text, prefix):]
        self._context = self._context + emitted
        if len(self._context) <= 2 * self._context_size:
            self._context_text = text  # already the decode of the grown context
        else:  # trim now and then, not on every token: one decode per push most of the time
            self._context = self._context[-self._context_size:]
            self._context_text = self._decode(self._context)
        return piece


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def detokenize_stream(decode: Callable[[List[int]], str], chunks: Sequence[Sequence[int]]) -> List[str]:
    """The pieces a stream of ``chunks`` turns into, the last one being the end-of-stream flush."""
    d = IncrementalDetokenizer(decode)
    pieces = [d.push(c) for c in chunks]
    pieces.append(d.finish())
    return pieces


class StreamTable:
    """Detokenizers of the streams in flight, by key; the least recently used and the idle are dropped.

    Postprocessing sees one response at a time and cannot tell when a stream ends unless the engine
    sends an empty final chunk, so entries also expire (``idle_s``) and the table is bounded.
    """

    def __init__(
        self,
        factory: Callable[[], IncrementalDetokenizer],
        *,
        max_streams: int = 4096,
        idle_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._factory = factory
        self._max = max_streams
        self._idle_s = idle_s
        self._clock = clock
        self._entries: "OrderedDict[Hashable, tuple[float, IncrementalDetokenizer]]" = OrderedDict()

    def get(self, key: Hashable) -> IncrementalDetokenizer:
        now = self._clock()
        entry = self._entries.pop(key, None)
        detok = entry[1] if entry and now - entry[0] <= self._idle_s else self._factory()
        self._entries[key] = (now, detok)
        self._evict(now)
        return detok

    def pop(self, key: Hashable) -> Optional[IncrementalDetokenizer]:
        entry = self._entries.pop(key, None)
        return entry[1] if entry else None

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self, now: float) -> None:
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        while self._entries:
            key, (stamp, _) = next(iter(self._entries.items()))
            if now - stamp <= self._idle_s:
                break
            del self._entries[key]
