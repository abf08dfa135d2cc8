"""The load-test records file has one home, generator/measure/records.py: records the load generator builds
and writes (loadtest/clients.py, records.write_records) read back through ``read_records`` as the same typed
values; a file of another version, without its header or with a record missing a field is refused with the
fix; and no other module parses the file (checked on the source, like tests/test_architecture.py)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from generator.errors import ArtifactCorrupt
from generator.measure.records import (
    MAX_LINE_BYTES, RECORD_VERSION, RequestRecord, open_records, read_records, records_header, write_records,
)
from generator.measure.request_figures import request_metrics
from generator.resources import loadtest_dir
from helpers import MS, process_record

sys.path.insert(0, str(loadtest_dir()))
import clients  # noqa: E402  (gevent and the protocol layer only; no Locust)
import httpclient  # noqa: E402
from prompts import Prompt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OWNER = "generator/measure/records.py"


def finished_request(seq: int, payloads: list[bytes], **kw) -> RequestRecord:
    """A request's record made as the Locust user makes it: new_record, the exchange's times and payloads, finish."""
    prompt = Prompt(seq, f"prompt {seq}", 3, 4)
    record = clients.new_record("http-stream", "ensemble", 0, seq, prompt, False, 1_000 * MS, conn_ns=2 * MS,
                                cumulative=False, prompt_text=prompt.text, **kw)
    ex = clients.Exchange(f"run-0-{seq}", record, httpclient.decode_json)
    ex.sent()
    ex.resp_ns, ex.payloads = [ex.record["sent_ns"] + (i + 1) * MS for i in range(len(payloads))], payloads
    ex.end_ns = ex.record["sent_ns"] + 10 * MS
    return ex.finish()


def sse(text: str, **server: int) -> bytes:
    return b"data: " + json.dumps({"text_output": text, **server}).encode() + b"\n"


@pytest.fixture
def written(tmp_path):
    """A records file as a distributed run leaves it: header, requests, processes, the master's run record."""
    ok = finished_request(0, [sse("a", first_token_time_ns=5), sse(" b", num_output_tokens=2)])
    failed = finished_request(1, [sse("x"), b'data: {"error": "engine failed"}\n'])
    process = process_record(demand=[0.5, 0.25], sched_wait_s=0.125, requests=2, responses=3)
    run = {"kind": "run", "lost_workers": [1], "incomplete": "worker 1 left before it finished",
           "rejected_messages": {"quit": 2}}
    path = tmp_path / "records.jsonl"
    with open_records(path) as file:
        write_records(file, [ok, failed])
    with open_records(path) as file:  # appending (the master's second sink, a later flush) adds no header
        write_records(file, [process, run])
    return path, [ok, failed], [process], run


def test_records_round_trip_through_their_types(written):
    path, requests, processes, run = written
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"kind": "header", "format": "tritongen-records", "v": RECORD_VERSION}
    assert sum('"kind":"header"' in line for line in lines) == 1
    found = read_records(path)
    assert found.requests == requests and found.processes == processes and found.run == run
    ok, failed = found.requests
    assert ok["resp_text"] == ["a", " b"] and ok["server"] == {"first_token_time_ns": 5, "num_output_tokens": 2}
    assert failed["error"] == "engine failed" and ok["cancelled"] is False and ok["output_tokens"] is None
    assert request_metrics(ok).ttft_ns == ok["resp_ns"][0] - ok["sched_ns"]  # read like any record of a run


def test_a_missing_file_holds_no_records(tmp_path):
    assert read_records(tmp_path / "records.jsonl") == ([], [], None)


def _rewrite(path: Path, line: int, change) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line] = json.dumps(change(json.loads(lines[line])))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("line, change, says", [
    (0, lambda h: {**h, "v": 1}, "line 1: records of version 1; this tritongen reads version 2"),
    (0, lambda h: {**h, "v": 3}, "line 1: records of version 3"),
    (0, lambda h: {**h, "format": "other"}, "line 1: no tritongen-records header"),
    (0, lambda h: {**process_record(), "v": 1}, "line 1: no tritongen-records header"),  # a version 1 file
    (1, lambda r: {k: v for k, v in r.items() if k != "conn_ns"}, "line 2: not a tritongen-records v2 record (conn_ns"),
    (2, lambda r: {**r, "resp_ns": "soon"}, "line 3: not a tritongen-records v2 record (resp_ns"),
    (3, lambda r: {**r, "kind": "weather"}, "line 4: not a tritongen-records v2 record"),
    (4, lambda r: {**records_header(), "v": 9}, "line 5: records of version 9"),  # another file appended
    # review6: numbers and texts no writer makes (a 4,000-digit time raised OverflowError out of the statistics;
    # a 100 KB reason took rich a minute to print)
    (1, lambda r: {**r, "start_unix_ns": 10 ** 400}, "line 2: not a JSON record"),
    (4, lambda r: {**r, "incomplete": "x" * 100_000}, "line 5: not a tritongen-records v2 record (incomplete"),
    (4, lambda r: {**r, "rejected_messages": {str(i): 1 for i in range(100)}}, "(rejected_messages"),
])
def test_another_version_or_a_mangled_record_is_refused_with_the_fix(written, line, change, says):
    path = written[0]
    _rewrite(path, line, change)
    with pytest.raises(ArtifactCorrupt) as err:
        read_records(path)
    assert says in err.value.message and str(path) in err.value.message and err.value.where == str(path)
    assert "tritongen loadtest" in err.value.fix


# ---------------------------------------------------------------- no other module parses the file

PARSE_CALLS = {"loads", "load", "read_text", "readlines", "open", "validate_json", "validate_python"}


def _parses_records(fn: ast.FunctionDef) -> bool:
    """A function that reads or parses a file named like a records file (the call's receiver or an argument
    says ``records``: ``open(out / "records.jsonl")``, ``records.read_text()``), or one named for records
    that reads or parses any file (``read_run_records(path)``)."""
    def mentions(node: ast.AST) -> bool:
        return "records" in ast.unparse(node).replace("read_records", "")

    for call in (c for c in ast.walk(fn) if isinstance(c, ast.Call)):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in PARSE_CALLS:
            continue
        receiver = [func.value] if isinstance(func, ast.Attribute) else []
        if "records" in fn.name or any(mentions(n) for n in receiver + call.args):
            return True
    return False


def _offenders(source: str, rel: str) -> list[str]:
    return [f"{rel}:{fn.lineno} {fn.name}" for fn in ast.walk(ast.parse(source))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _parses_records(fn)]


def test_the_records_file_is_parsed_only_in_its_module():
    """generator/, loadtest/ and bench/ read and write the file through records.py (tests/ may craft one)."""
    offenders = []
    for folder in ("generator", "loadtest", "bench"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            if rel != OWNER:
                offenders += _offenders(file.read_text(encoding="utf-8"), rel)
    assert not offenders, f"a records file read outside {OWNER}:\n" + "\n".join(offenders)


def test_the_checker_sees_a_parser_elsewhere():
    """The rule above would pass vacuously if the checker missed the ways a file used to be read here."""
    by_path = "def f(path):\n    with open(path / 'records.jsonl', 'rb') as f:\n        return [json.loads(l) for l in f]\n"
    by_name = "def f(records):\n    return [json.loads(line) for line in records.read_text().splitlines()]\n"
    through_owner = "def f(out):\n    return read_records(out / 'records.jsonl').requests\n"
    assert _offenders(by_path, "x") and _offenders(by_name, "x") and not _offenders(through_owner, "x")
    assert _offenders((ROOT / OWNER).read_text(encoding="utf-8"), OWNER)  # the owner itself is seen


def test_no_record_is_written_longer_than_the_reader_reads(tmp_path, monkeypatch):
    """review6: one request of an answer in millions of small responses wrote a line longer than read_records
    reads, which then refused the whole file: every other request's record was lost with it. Such a request is
    written failed, without its texts; the file stays readable."""
    import generator.measure.records as records

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1 << 16)
    long = finished_request(0, [sse("word ") for _ in range(10_000)])
    short = finished_request(1, [sse("a"), sse(" b")])
    path = tmp_path / "records.jsonl"
    with open_records(path) as file:
        write_records(file, [long, short])
    found = read_records(path).requests
    assert found[1] == short and records.TOO_LONG in found[0]["error"] and found[0]["resp_text"] == []
    assert found[0]["id"] == long["id"] and not request_metrics(found[0]).ok


def test_records_of_another_kind_given_to_loadtest_records_are_named_by_the_path_given(tmp_path):
    """The error named the copy in the output's temporary folder, which is gone once the command fails (review 11)."""
    from typer.testing import CliRunner

    from generator.cli import app

    given = tmp_path / "mine.json"
    given.write_text('{"secret": 1}\n')
    result = CliRunner().invoke(app, ["loadtest", "--records", str(given), "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, ArtifactCorrupt) and result.exception.where == str(given)
    assert ".tmp-" not in str(result.exception) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("slo, code, verdict", [(None, 1, None), ("ttft_p95<0.001ms", 1, "fail"),
                                                ("error_rate<100%", 3, "inconclusive")])
def test_records_given_to_loadtest_are_judged_as_a_run_of_its_own(written, tmp_path, slo, code, verdict):
    """review21: ``loadtest --records R --slo …`` (the in-cluster run's report) ignored the SLO and a lost worker and
    exited 0. The written run lost a worker: it fails a term it fails, never passes one, and has no clean exit."""
    from typer.testing import CliRunner

    from generator.cli import app

    path = written[0]
    result = CliRunner().invoke(app, ["loadtest", "--records", str(path), "-o", str(tmp_path / "out"),
                                      "--junit", str(tmp_path / "junit.xml")] + (["--slo", slo] if slo else []))
    assert result.exit_code == code, result.output
    judged = json.loads((tmp_path / "out" / "results.json").read_text())["slo"]
    assert (judged and judged["verdict"]) == verdict
    assert (tmp_path / "junit.xml").is_file()


def test_records_in_which_no_request_succeeded_fail_whatever_the_slo(tmp_path):
    """review28: with an SLO that nothing could measure, a run in which every request failed exited 3 (inconclusive);
    the README's exit 1 is "no request succeeded", gate or no gate."""
    from typer.testing import CliRunner

    from generator.cli import app

    path = tmp_path / "records.jsonl"
    with open_records(path) as file:
        write_records(file, [finished_request(i, [sse("x"), b'data: {"error": "engine failed"}\n']) for i in range(3)])
        write_records(file, [{"kind": "run", "lost_workers": [], "incomplete": None, "rejected_messages": {}}])
    for slo in ([], ["--slo", "ttft_p95<10s"]):
        result = CliRunner().invoke(app, ["loadtest", "--records", str(path), "-o", str(tmp_path / f"out{len(slo)}"), *slo])
        assert result.exit_code == 1, result.output


def test_records_given_to_loadtest_never_replace_the_baseline_they_are_compared_with(written, tmp_path):
    """review22: ``loadtest --records R --baseline BASE -o BASE --force`` replaced the baseline folder it had just been
    compared with; a local run refuses an output holding what the spec names, and --records now does the same."""
    from typer.testing import CliRunner

    from generator.cli import app

    path, base = written[0], tmp_path / "base"
    assert CliRunner().invoke(app, ["loadtest", "--records", str(path), "-o", str(base)]).exit_code == 1  # lost worker
    kept = (base / "results.json").stat().st_ino
    again = CliRunner().invoke(app, ["loadtest", "--records", str(path), "--baseline", str(base), "-o", str(base),
                                     "--force"])
    assert "gate.baseline" in str(again.exception) and (base / "results.json").stat().st_ino == kept


def test_junit_and_summary_never_replace_what_the_command_reads(written, tmp_path):
    """review23: --junit and --summary replace a file without --force (CI files; $GITHUB_STEP_SUMMARY exists), and
    nothing kept them off the command's inputs: ``loadtest --records R --junit R`` replaced the records, and
    ``compare BASE CAND --summary BASE`` the baseline it had just compared with."""
    from typer.testing import CliRunner

    from generator.cli import app

    path, base = written[0], tmp_path / "base"
    CliRunner().invoke(app, ["loadtest", "--records", str(path), "-o", str(base)])
    kept = path.read_bytes(), (base / "results.json").read_bytes()
    runs = [CliRunner().invoke(app, ["loadtest", "--records", str(path), "-o", str(tmp_path / "out"), "--junit",
                                     str(path)]),
            CliRunner().invoke(app, ["compare", str(base), str(base), "--summary", str(base / "results.json")])]
    assert [type(r.exception).__name__ for r in runs] == ["OutputExists"] * 2, [r.output for r in runs]
    assert "the records file" in str(runs[0].exception) and "the baseline" in str(runs[1].exception)
    assert (path.read_bytes(), (base / "results.json").read_bytes()) == kept


def test_records_given_to_loadtest_are_read_before_anything_is_copied(tmp_path, monkeypatch):
    """review22 (Low): --records copied the file into the output whole before reading a line: a sparse file (no disk
    used) was written out as that many bytes of zeros, then refused. Now it is refused before any copy."""
    from typer.testing import CliRunner

    from generator.cli import app

    sparse = tmp_path / "records.jsonl"
    with open(sparse, "wb") as f:
        f.truncate(MAX_LINE_BYTES + 2)
    copies = []
    monkeypatch.setattr("shutil.copyfile", lambda *args, **kw: copies.append(args))
    result = CliRunner().invoke(app, ["loadtest", "--records", str(sparse), "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, ArtifactCorrupt) and result.exception.where == str(sparse)
    assert copies == [] and not (tmp_path / "out").exists()
