"""The load-test records file, defined once: its record types, its version, its writer and its one parser,
and the per-request figures derived from a record.

A records file is JSON lines: a header naming the format and its version, then one ``request`` record per
request as the load generator saw it (monotonic nanosecond timestamps of the scheduled send, the actual
send and every streamed response, the text of each response as sent: the LLM-API model sends the whole text
so far, marked ``cumulative``; the server's own per-request figures when the model returns them), one
``process`` record per Locust process (its own health) and, in a distributed run, the master's ``run`` record.

Why here: loadtest/ (Locust's process) writes the file and may import pure generator modules, never the
reverse (tests/test_architecture.py), so the types live on the generator side and loadtest/ builds its
records as these ``TypedDict``s: plain dicts at run time, no cost on the load generator's hot path. Every key
is written on every record, so readers index (``rec["cancelled"]``) instead of guessing defaults with ``.get``;
only the server's figures are a partial dict (a figure the server did not return, or returned as 0, is absent).
The file is read only by ``read_records`` (tests/test_records.py fails if another module parses it), which
checks the version and each record's fields. Both the Locust process (for its live view) and the report
read the figures through this module, so there is one definition of TTFT, inter-token latency and the
streamed-output checks. No process, network or clock.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Callable, Literal, NamedTuple, Optional, Union

import rapidjson
from pydantic import Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from generator.errors import ArtifactCorrupt
from generator.serve.dialect import LLMAPI, dialect_for_inputs, text_delta

RECORDS_FORMAT = "tritongen-records"
RECORD_VERSION = 2
"""Version 2: the version is in the file's header line, every key is on every record. (Version 1 wrote ``v``
on each record and left keys out.)"""
RERUN_FIX = "run the load test again with this tritongen (`tritongen loadtest ...`) and point at its records.jsonl"


# ---------------------------------------------------------------- the records file
# (typing_extensions' TypedDict: pydantic validates typing's only from Python 3.12)


class ServerFigures(TypedDict, total=False):
    """The server's own figures of one request, summed over its responses (NVIDIA's output tensor names;
    ``num_cached_tokens`` from an OpenAI server's usage). Absent: not returned, or (Triton) returned as 0."""

    arrival_time_ns: int
    first_scheduled_time_ns: int
    first_token_time_ns: int
    last_token_time_ns: int
    kv_cache_alloc_new_blocks: int
    kv_cache_reused_blocks: int
    kv_cache_alloc_total_blocks: int
    num_input_tokens: int
    num_output_tokens: int
    num_cached_tokens: int


class RequestRecord(TypedDict):
    """One request as the load generator saw it (loadtest/clients.py ``new_record`` and ``Exchange.finish``)."""

    kind: Literal["request"]
    id: str
    proc: int
    """The Locust process that sent it (0 in a local run; the worker index in a distributed one)."""
    seq: int
    warmup: bool
    protocol: str
    model: str
    streaming: bool
    cumulative: bool
    """Each streamed text is the whole answer so far (the LLM-API model), not the new part."""
    prompt: int
    prompt_text: Optional[str]
    """The prompt, on the first request that sent it (the detokenization check re-asks it); else None."""
    max_tokens: int
    exact_length: bool
    """The request asked for exactly max_tokens (min_tokens = max_tokens)."""
    input_tokens: Optional[int]
    start_unix_ns: int
    sched_ns: int
    sent_ns: int
    conn_ns: int
    """How long the request waited for a connection (open loop opens one when all are busy)."""
    resp_ns: list[int]
    resp_text: list[str]
    server: ServerFigures
    error: Optional[str]
    cancelled: bool
    """Cut off when the run stopped: left out of every figure."""
    end_ns: int
    output_tokens: Optional[int]
    """The client tokenizer's count of the answer: None as written, filled after the run (count_client_tokens)."""


class ProcessRecord(TypedDict):
    """One Locust process's own health (loadtest/sink.py ``ProcessMonitor.record``)."""

    kind: Literal["process"]
    proc: int
    host: str
    pid: int
    wall_s: float
    cpu_s: float
    cpu_percent: list[float]
    """Per second of the run."""
    lag_ns: list[int]
    """Event-loop lag of 10 ms probes (a quantile sample)."""
    lag_max_ns: int
    demand: list[float]
    """Per second, how much of a core the event loop wanted (on a CPU or waiting for one)."""
    sched_wait_s: Optional[float]
    tokenizer: str
    requests: int
    responses: int


MAX_INCOMPLETE = 4096
"""The longest ``incomplete`` reason a run record holds (the master cuts a longer one): the CLI prints it, and
rich wraps one long word in time quadratic in its length (a 100 KB reason in a foreign records file took a minute)."""
MESSAGE_KINDS = 16
"""Message types a run record counts by name at most (more are counted as "other"), each named in at most
MESSAGE_KIND_CHARS characters."""
MESSAGE_KIND_CHARS = 64


class RunRecord(TypedDict):
    """The distributed master's record of the run itself (loadtest/distributed.py ``MasterGuard.run_record``)."""

    kind: Literal["run"]
    lost_workers: list[int]
    incomplete: Optional[Annotated[str, StringConstraints(max_length=MAX_INCOMPLETE)]]
    rejected_messages: Annotated[dict[Annotated[str, StringConstraints(max_length=MESSAGE_KIND_CHARS)], int],
                                 Field(max_length=MESSAGE_KINDS + 1)]


class RecordsHeader(TypedDict):
    """The first line of a records file."""

    kind: Literal["header"]
    format: str
    v: int


_RECORD = TypeAdapter(Annotated[Union[RequestRecord, ProcessRecord, RunRecord, RecordsHeader],
                                Field(discriminator="kind")])


class Records(NamedTuple):
    """What one records file holds."""

    requests: list[RequestRecord]
    processes: list[ProcessRecord]
    run: Optional[RunRecord]
    """The distributed master's record; None for a local run."""


def records_header() -> RecordsHeader:
    return {"kind": "header", "format": RECORDS_FORMAT, "v": RECORD_VERSION}


def open_records(path: Union[str, Path]) -> IO[str]:
    """The records file opened for appending (Locust's local process or master); a new file gets its header."""
    file = open(path, "a", encoding="utf-8")
    if file.tell() == 0:
        write_records(file, [records_header()])
    return file


MAX_LINE_BYTES = 64 << 20
"""The longest line read_records reads: a record is a few KiB to a few MiB (its prompt and texts); read whole, a
line of a sparse file without newlines (no disk used) held gigabytes before it was found not to be one."""
TOO_LONG = "its record is longer than read_records reads"


def write_records(file: IO[str], records: list[Union[RequestRecord, ProcessRecord, RunRecord, RecordsHeader]]) -> None:
    """JSON lines through python-rapidjson (tritonclient's dependency): a quarter of the json module's CPU.

    A request whose line would pass MAX_LINE_BYTES (an answer of millions of responses) is written without its
    prompt and texts, failed with that reason: whole, it made read_records refuse the file, every record with it."""
    lines = [rapidjson.dumps(r) for r in records]  # ASCII (ensure_ascii): characters are bytes
    for i, line in enumerate(lines):
        if len(line) >= MAX_LINE_BYTES and records[i]["kind"] == "request":
            lines[i] = rapidjson.dumps({**records[i], "prompt_text": None, "resp_ns": [], "resp_text": [],
                                        "error": f"{TOO_LONG} ({len(line):,} bytes): its texts are not kept"})
    file.write("".join(line + "\n" for line in lines))
    file.flush()


_MAX_DIGITS = 20
"""A number in a record is a 64-bit one at most: nanosecond times, counts."""


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_DIGITS:
        raise ValueError("a number of more than 20 digits")  # a float of it raised OverflowError in the statistics
    return int(digits)


def read_records(path: Path) -> Records:
    """Every record of a records file, each checked against its type; a missing file holds none.

    A file of another version, without the header, or with a line that is not a record of this version is
    ``ArtifactCorrupt`` naming the file, the line and the field."""
    found = Records([], [], None)
    if not path.is_file():
        return found
    header = False
    with open(path, "rb") as f:
        for no, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), 1):
            if len(raw) > MAX_LINE_BYTES:
                raise ArtifactCorrupt(f"{path}, line {no}: longer than {MAX_LINE_BYTES >> 20} MiB, no record is",
                                      where=str(path), fix=RERUN_FIX)
            if not raw.strip():
                continue
            rec = _parse_line(path, no, raw, header)
            kind = rec["kind"]
            if kind == "header":
                header = True
            elif kind == "request":
                found.requests.append(rec)
            elif kind == "process":
                found.processes.append(rec)
            else:
                found = found._replace(run=rec)
    return found


def _parse_line(path: Path, no: int, raw: bytes, header: bool) -> Any:
    def refuse(why: str) -> ArtifactCorrupt:
        return ArtifactCorrupt(f"{path}, line {no}: {why}", where=str(path), fix=RERUN_FIX)

    try:
        data = json.loads(raw.decode("utf-8"), parse_int=_parse_int)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise refuse("not a JSON record") from None
    if not isinstance(data, dict):
        raise refuse("not a JSON record")
    if data.get("kind") == "header" or not header:
        if data.get("kind") != "header" or data.get("format") != RECORDS_FORMAT:
            raise refuse(f"no {RECORDS_FORMAT} header: not a records file of this tritongen (it reads version "
                         f"{RECORD_VERSION}; records of version 1 carry no header)")
        if data.get("v") != RECORD_VERSION:
            raise refuse(f"records of version {data.get('v')!r}; this tritongen reads version {RECORD_VERSION}")
    try:
        return _RECORD.validate_python(data)
    except (ValidationError, RecursionError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": "nested too deep"}
        where = ".".join(str(part) for part in first["loc"][1:]) or "kind"
        raise refuse(f"not a {RECORDS_FORMAT} v{RECORD_VERSION} record ({where}: {first['msg']})") from None


# ---------------------------------------------------------------- per-request figures

REPLACEMENT_CHAR = "\ufffd"

# Names of the streamed-output checks (the report counts failures per name).
CHECK_REPLACEMENT = "replacement_char"
CHECK_EMPTY_CHUNK = "empty_chunk"
CHECK_TOKEN_COUNT = "token_count"
CHECK_REFERENCE = "reference_mismatch"
CHECKS = (CHECK_REPLACEMENT, CHECK_EMPTY_CHUNK, CHECK_TOKEN_COUNT, CHECK_REFERENCE)

# Server outputs the users ask for (NVIDIA's tensor names in the inflight_batcher_llm ensemble).
PERF_TIME_FIELDS = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")
KV_FIELDS = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks")
COUNT_FIELDS = ("num_input_tokens", "num_output_tokens")
SERVER_FIELDS = PERF_TIME_FIELDS + KV_FIELDS + COUNT_FIELDS


STUB_DOWN = "is not healthy"
"""What Triton 2.51 answers for a model whose Python backend stub died ("Stub process 'M_0_0' is not healthy")."""
NO_RESPONSE = "no response within"
"""How the load generator fails a request that got no response for request_timeout_s."""


def server_gone(error: Optional[str]) -> Optional[str]:
    """Why a request's error means the server will answer no more requests of the run, or None.

    A dead Python stub stays READY in Triton 2.51, which neither restarts it nor fails its requests in
    flight: they get nothing (a request silent for request_timeout_s), and new ones get nothing or the
    stub's "not healthy" error. Waiting on would only make every later request sit out its timeout."""
    if not error:
        return None
    if STUB_DOWN in error:
        return error
    if error.startswith(NO_RESPONSE) or "timed out" in error.lower() or "Timeout" in error:
        return f"the server stopped answering: {error}"
    return None


def request_inputs(accepted: set[str], text: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    """Request fields in the served model's dialect; the optional ones only when the model accepts them.

    Ensemble: min_tokens = max_tokens makes every answer exactly max_tokens long, so the load does not
    depend on what the model writes; the return_* flags ask for the server's own per-request timing and
    counts. LLM-API model: it has no min_tokens input (answers may end early at the end token) and no
    token counts; sampling_param_return_perf_metrics gives the same four time points.
    """
    if dialect_for_inputs(accepted) is LLMAPI:
        values: dict[str, Any] = {"text_input": text, "sampling_param_max_tokens": max_tokens}
        optional = {"streaming": stream, "sampling_param_exclude_input_from_output": True,
                    "sampling_param_return_perf_metrics": True}
    else:
        values = {"text_input": text, "max_tokens": max_tokens}
        optional = {
            "stream": stream, "min_tokens": max_tokens, "exclude_input_in_output": True,
            "return_perf_metrics": True, "return_num_input_tokens": True, "return_num_output_tokens": True,
        }
    values.update({k: v for k, v in optional.items() if k in accepted})
    return values


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
    m.output_tokens = m.server_output_tokens if m.server_output_tokens is not None else m.client_output_tokens
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


def quantile_sample(values: list[float], size: int = 2000) -> list[float]:
    """At most ``size`` evenly spaced order statistics: a histogram of them has the shape of the whole."""
    ordered = sorted(values)
    return ordered[:: max(1, len(ordered) // size)]
