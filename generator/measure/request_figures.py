"""The per-request figures derived from one load-test record (generator/measure/records.py defines the record
and its file): TTFT, inter-token latency, the TTFT split from the engine's own clock, and the streamed-output
checks, one definition for the report, the SLO gate, tune and the metric registry. No process, network or clock.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from generator.measure.records import PERF_TIME_FIELDS, RequestRecord
from generator.serve.dialect import text_delta

REPLACEMENT_CHAR = "\ufffd"

# Names of the streamed-output checks (the report counts failures per name).
CHECK_REPLACEMENT = "replacement_char"
CHECK_EMPTY_CHUNK = "empty_chunk"
CHECK_TOKEN_COUNT = "token_count"
CHECK_REFERENCE = "reference_mismatch"
CHECKS = (CHECK_REPLACEMENT, CHECK_EMPTY_CHUNK, CHECK_TOKEN_COUNT, CHECK_REFERENCE)


@dataclass
class RequestMetrics:
    """What one record says, in nanoseconds; None where the record cannot say (errors, one-token answers)."""

    ok: bool
    warmup: bool
    streaming: bool
    start_unix_ns: int
    lateness_ns: int
    """Actual send minus scheduled send (open-loop mode; ~0 in closed loop)."""
    ttft_ns: Optional[int] = None
    """Scheduled send to the first response carrying text."""
    e2e_ns: Optional[int] = None
    """Scheduled send to the last response."""
    gaps_ns: list[int] = field(default_factory=list)
    """Per-gap inter-token latency: time between consecutive responses that carry text."""
    itl_ns: Optional[float] = None
    """Per-request inter-token latency: (E2E - TTFT) / (output tokens - 1)."""
    reference: Optional[str] = None
    """``equal``/``detokenization``/``diverged`` against the one-piece answer, None without one."""
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    """Server's count when it returned one, else the client tokenizer's count."""
    client_output_tokens: Optional[int] = None
    server_output_tokens: Optional[int] = None
    server_input_tokens: Optional[int] = None
    split: Optional[dict[str, int]] = None
    """TTFT split (send_delay, front_end, queue, prefill) and decode, from the server's perf metrics."""
    failures: list[str] = field(default_factory=list)


def _data_responses(rec: RequestRecord) -> tuple[list[int], list[str]]:
    """Responses that belong to the answer, each with its new text: all of them except an empty final one
    (BLS sends one). A cumulative record's texts become the part each response added."""
    times, texts = list(rec["resp_ns"]), list(rec["resp_text"])
    if rec["cumulative"]:
        texts = [text_delta(previous, text) for previous, text in zip([""] + texts, texts)]
    if texts and texts[-1] == "":
        times, texts = times[:-1], texts[:-1]
    return times, texts


def server_split(rec: RequestRecord, ttft_ns: int) -> Optional[dict[str, int]]:
    """Split the client's TTFT with the engine's own clock (only differences of server times are used).

    send_delay = scheduled -> actual send (the client's own lateness); queue = arrival -> first
    scheduled; prefill = first scheduled -> first token; front_end = the rest of the client's TTFT
    (network, HTTP/gRPC front end, preprocessing, postprocessing, the way back); decode = first token ->
    last token. The four TTFT parts (and decode, without streaming) add up to the client's TTFT exactly.
    When the server and client share
    the monotonic clock (same host), front_end is further split into front_in (send -> arrival) and
    front_out (first token -> client receipt).
    """
    s = rec["server"]
    if any(not s.get(k) for k in PERF_TIME_FIELDS):
        return None
    queue = s["first_scheduled_time_ns"] - s["arrival_time_ns"]
    prefill = s["first_token_time_ns"] - s["first_scheduled_time_ns"]
    send_delay = rec["sent_ns"] - rec["sched_ns"]
    decode = s["last_token_time_ns"] - s["first_token_time_ns"]
    # Without streaming the first text arrives with the last token: decode is part of that "TTFT".
    engine = queue + prefill + (0 if rec["streaming"] else decode)
    split = {
        "send_delay": send_delay,
        "front_end": ttft_ns - send_delay - engine,
        "queue": queue,
        "prefill": prefill,
        "decode": decode,
    }
    first_seen = rec["sched_ns"] + ttft_ns
    last_engine = s["first_token_time_ns"] if rec["streaming"] else s["last_token_time_ns"]
    if rec["sent_ns"] <= s["arrival_time_ns"] <= last_engine <= first_seen:
        split["front_in"] = s["arrival_time_ns"] - rec["sent_ns"]
        split["front_out"] = first_seen - last_engine
    return split


def _streaming_damage(streamed: str, reference: str) -> bool:
    """Whether one differing stretch looks like detokenization damage: on the streamed side only U+FFFD or
    whitespace, on the one-piece side only whitespace or non-ASCII characters (a character cut between
    responses becomes U+FFFD; a space a token carries can be dropped)."""
    return all(c == REPLACEMENT_CHAR or c.isspace() for c in streamed) and all(
        c.isspace() or ord(c) > 127 for c in reference
    )


_MAX_ALIGNED = 1 << 24
"""difflib's work grows with the product of the two lengths: two diverged answers of 32,000 characters took 28 s,
a server's two of a megabyte would take hours."""


def _plain(text: str) -> str:
    """The text without what streaming damage may change (whitespace, U+FFFD, non-ASCII characters)."""
    return "".join(c for c in text if ord(c) <= 127 and not c.isspace())


def compare_texts(streamed: str, reference: str) -> str:
    """``equal``; ``detokenization`` when every difference is streaming damage (see _streaming_damage);
    else ``diverged``: the engine produced other tokens from some point on (e.g. a batch-dependent numerical
    difference between the two requests), which says nothing about the streaming path."""
    if streamed == reference:
        return "equal"
    if _plain(streamed) != _plain(reference):  # a difference damage cannot make: found in linear time
        return "diverged"
    start = len(os.path.commonprefix([streamed, reference]))
    end = len(os.path.commonprefix([streamed[start:][::-1], reference[start:][::-1]]))
    streamed, reference = streamed[start:len(streamed) - end], reference[start:len(reference) - end]
    if len(streamed) * len(reference) > _MAX_ALIGNED:
        return "diverged"  # long stretches of only spaces and non-ASCII characters: no damage shown
    ops = difflib.SequenceMatcher(None, streamed, reference, autojunk=False).get_opcodes()
    damage = all(_streaming_damage(streamed[i1:i2], reference[j1:j2]) for tag, i1, i2, j1, j2 in ops if tag != "equal")
    return "detokenization" if damage else "diverged"


def stream_failures(rec: RequestRecord, reference: Optional[str] = None) -> list[str]:
    """Checks of one streamed answer; ``reference`` is the same prompt's answer in one piece, if known.

    - replacement_char: U+FFFD in the streamed text that the one-piece text does not have (any U+FFFD
      when there is no reference; not judged when the two diverged): a character cut between responses;
    - empty_chunk: an empty response before the last one that is not a character held back until its
      last byte arrived (the next text then starts with a non-ASCII character), judged only where nothing
      else explains it. An equal one-piece text shows the token decodes to nothing (e.g. a skipped special
      token); so does a server that counted a token for every response (num_output_tokens at least the
      number of responses: none came without one); a diverged one-piece text came from other tokens, so it
      says nothing about the streamed text. A cumulative answer's response that repeats the text so far
      loses nothing (the next one carries it all). Otherwise an empty response is unexplained (a random
      model writes such tokens often: 36 of 87 and 45 of 101 demo answers were flagged before the server's
      count and the cumulative case were read);
    - token_count: the server's summed num_output_tokens differs from the requested length (the users
      ask for exactly max_tokens), exceeds it, or is below the number of responses with text, i.e.
      responses were lost, merged or duplicated on the way;
    - reference_mismatch: the streamed text differs from the one-piece text by streaming damage only.
    """
    if rec["error"] or not rec["streaming"]:
        return []
    _, texts = _data_responses(rec)
    text = "".join(texts)
    comparison = compare_texts(text, reference) if reference is not None else None
    failures = []
    if comparison != "diverged" and text.count(REPLACEMENT_CHAR) > (reference or "").count(REPLACEMENT_CHAR):
        failures.append(CHECK_REPLACEMENT)
    following, after = [], ""  # per response, the next non-empty text after it (one pass from the end)
    for t in reversed(texts):
        following.append(after)
        after = t or after
    following.reverse()
    tokens = rec["server"].get("num_output_tokens")
    unexplained = any(t == "" and not (nxt and ord(nxt[0]) > 127) for t, nxt in zip(texts[:-1], following))
    explained = rec["cumulative"] or (tokens is not None and tokens >= len(texts))
    if unexplained and not explained and comparison in (None, "detokenization"):  # equal or diverged: the tokens explain it
        failures.append(CHECK_EMPTY_CHUNK)
    max_tokens = rec["max_tokens"]
    if tokens is not None and (
        tokens > max_tokens or (rec["exact_length"] and tokens != max_tokens)
        or tokens < sum(1 for t in texts if t)
    ):
        failures.append(CHECK_TOKEN_COUNT)
    if comparison == "detokenization":
        failures.append(CHECK_REFERENCE)
    return failures


def _count_possible(rec: RequestRecord, texts: list[str]) -> bool:
    """The server counted its output tokens, and no more than the request asked for nor fewer than its responses
    with text: a count outside that (a token_count failure, see stream_failures) is not taken for the figures. A
    server that counted 10**9 tokens moved output tokens/s and ITL per request, and an SLO on them, where it liked."""
    tokens = rec["server"].get("num_output_tokens")
    return tokens is not None and sum(1 for t in texts if t) <= tokens <= rec["max_tokens"]


def request_metrics(rec: RequestRecord, reference: Optional[str] = None) -> RequestMetrics:
    """Derive every per-request figure from one raw record (``reference``: see stream_failures)."""
    sched = rec["sched_ns"]
    m = RequestMetrics(
        ok=not rec["error"],
        warmup=rec["warmup"],
        streaming=rec["streaming"],
        start_unix_ns=rec["start_unix_ns"],
        lateness_ns=rec["sent_ns"] - sched,
        input_tokens=rec["input_tokens"],
        client_output_tokens=rec["output_tokens"],
        server_output_tokens=rec["server"].get("num_output_tokens"),
        server_input_tokens=rec["server"].get("num_input_tokens"),
    )
    if not m.ok:
        return m
    times, texts = _data_responses(rec)
    visible = [t for t, text in zip(times, texts) if text]
    if not visible:
        return m
    m.ttft_ns = visible[0] - sched
    m.e2e_ns = rec["end_ns"] - sched
    m.gaps_ns = [b - a for a, b in zip(visible, visible[1:])] if m.streaming else []
    m.output_tokens = m.server_output_tokens if _count_possible(rec, texts) else m.client_output_tokens
    if m.streaming and m.output_tokens and m.output_tokens > 1:
        m.itl_ns = (m.e2e_ns - m.ttft_ns) / (m.output_tokens - 1)
    m.split = server_split(rec, m.ttft_ns)
    if reference is not None and m.streaming:
        m.reference = compare_texts(answer_text(rec), reference)
    m.failures = stream_failures(rec, reference)
    return m


def answer_text(rec: RequestRecord) -> str:
    """The whole answer a record received (joined pieces, or the last cumulative text)."""
    return "".join(_data_responses(rec)[1])


def count_client_tokens(requests: list[RequestRecord], count: Callable[[str], int]) -> None:
    """Fill in each answered request's ``output_tokens`` (the client tokenizer's count of its streamed text).

    The load generator leaves this to after the run: tokenizing is not timing and costs it CPU per request.
    """
    for rec in requests:
        if not rec["error"] and rec["output_tokens"] is None:
            rec["output_tokens"] = count(answer_text(rec))


def empty_chunks(rec: RequestRecord) -> int:
    """Empty responses before the last one (counted for the report; see stream_failures for when they fail)."""
    return sum(1 for t in _data_responses(rec)[1][:-1] if t == "")
