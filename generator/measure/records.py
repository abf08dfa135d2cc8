"""The load-test records file, defined once: its record types, its version, its writer and its one parser
(the per-request figures derived from a record: generator/measure/request_figures.py).

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
checks the version and each record's fields. No process, network or clock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Annotated, Any, Literal, NamedTuple, Optional, Union

import rapidjson
from pydantic import Field, StringConstraints, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from generator.errors import ArtifactCorrupt
from generator.serve.dialect import LLMAPI, dialect_for_inputs

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


def readable_figure(value: int) -> bool:
    """Whether ``read_records`` reads the number back (the load generator checks a server's figures with it before it
    writes them: review28, one usage count of 1e30 from an OpenAI server made the whole records file unreadable)."""
    return abs(value) < 10 ** _MAX_DIGITS


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


# ---------------------------------------------------------------- what requests ask and errors mean

# Server outputs the users ask for (NVIDIA's tensor names in the inflight_batcher_llm ensemble).
PERF_TIME_FIELDS = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")
KV_FIELDS = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks")
COUNT_FIELDS = ("num_input_tokens", "num_output_tokens")
SERVER_FIELDS = PERF_TIME_FIELDS + KV_FIELDS + COUNT_FIELDS


STUB_DOWN = "is not healthy"
"""What Triton 2.51 answers for a model whose Python backend stub died ("Stub process 'M_0_0' is not healthy")."""
NO_RESPONSE = "no response within"
"""How the load generator fails a request that got no response for request_timeout_s."""
REFUSED = "ConnectionRefusedError:"
"""How the load generator fails a request whose connection was refused: nothing listens on the server's port."""
UNANSWERED = "NoAnswer: a second connection in a row ended before any answer: "
"""How the load generator fails a request whose connection (an HTTP user's, a gRPC call) ended before any answer when
the one before it did too: a port that accepts and closes (a proxy or a port-forward whose server is gone) is a
refused connection in disguise."""
SERVER_SAID = "server error: "
"""How a request's error starts when it is the server's text as sent (a gRPC error response; HTTP's start "HTTP 500: "),
so no server text reads as the load generator's own words below: a model's error "TimeoutError: ..." ended a run."""
OWN_TIMEOUTS = (NO_RESPONSE, "TimeoutError:", "gRPC stream failed: connection error: timed out")
"""How the load generator fails a request whose server went silent (its watchdog, its socket's timeout)."""


def server_gone(error: Optional[str]) -> Optional[str]:
    """Why a request's error means the server will answer no more requests of the run, or None.

    A dead Python stub stays READY in Triton 2.51, which neither restarts it nor fails its requests in
    flight: they get nothing (a request silent for request_timeout_s), and new ones get nothing or the
    stub's "not healthy" error. Waiting on would only make every later request sit out its timeout. A server
    whose port refuses connections has exited: each user failed a request per refusal, thousands a second for the
    rest of the run (records of requests never sent, gigabytes over a long run, all read back for the report).

    A refusal or a silence is read only from the load generator's own words (the start of the error), never from
    the server's ("HTTP 504: Gateway Timeout" from a proxy, a backend's "upstream request timed out"): one such
    answer ended the run and cut every request in flight as an error, failing an error-rate SLO the run met."""
    if not error:
        return None
    if STUB_DOWN in error:
        return error
    if error.startswith(REFUSED):
        return f"the server is gone (its port refuses connections): {error}"
    if error.startswith(UNANSWERED):
        return f"the server is gone (its connections end unanswered): {error}"
    if error.startswith(OWN_TIMEOUTS):
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


def quantile_sample(values: list[float], size: int = 2000) -> list[float]:
    """At most ``size`` evenly spaced order statistics: a histogram of them has the shape of the whole."""
    ordered = sorted(values)
    return ordered[:: max(1, len(ordered) // size)]
