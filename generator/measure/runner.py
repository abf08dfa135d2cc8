"""``tritongen loadtest``: drive Locust against a Triton LLM endpoint and compute every figure exactly.

The Locust users (loadtest/) run in their own processes; this module writes their configuration
(locustconf.py) and starts them, starts the server when given a repository, samples Triton's statistics
and metrics around the run, re-asks a sample of the streamed prompts without streaming (the
detokenization check), and turns the raw per-request records into results. Locust's rounded histograms
are never used. The figures come from statistics.py, the verdicts from verdict.py and slo.py;
``run_loadtest`` is the edge that starts processes, talks to the server and puts the results together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from generator.errors import LoadTestError, SpecError
from generator.procs import ChildGroup, child_env
from generator.measure.ceiling import capacity, recorded_ceiling
from generator.measure import locustconf
from generator.measure.records import (
    ProcessRecord, RequestRecord, RunRecord, read_records, request_inputs, server_gone,
)
from generator.measure.request_figures import count_client_tokens
from generator.measure.results import LoadTestResult, MetricsSummary, RunInfo, RunIntegrity, ServerView, SloVerdict
from generator.serve.endpoints import Endpoints
from generator.spec import Spec


# ---------------------------------------------------------------- workers


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- the edges: server, Locust, reference checks


@contextlib.contextmanager
def serving(repo_dir: Optional[Path], url: Optional[str], grpc_url: Optional[str], metrics_url: Optional[str],
            log_file: Path, admin_key: Optional[str] = None, openai: bool = False) -> Iterator[Endpoints]:
    """Endpoints of a running server: the one at ``url``, or one started on ``repo_dir`` for the block.
    ``openai``: an OpenAI-compatible server, which has neither Triton's gRPC port nor (unless
    ``metrics_url`` names one) its metrics port."""
    if repo_dir is None:
        if not url:
            raise SpecError("nothing to load-test", fix="pass a repository folder or --url http://HOST:PORT")
        from generator.serve.client import check_reachable

        endpoints = Endpoints.from_urls(url, grpc_url, metrics_url, admin_key)
        if openai:
            endpoints = dataclasses.replace(endpoints, metrics_url=metrics_url)
        check_reachable(endpoints.http_url, "/v1/models" if openai else "/v2/health/live")
        yield endpoints
        return
    if openai:
        raise SpecError("the OpenAI protocols load-test a running OpenAI-compatible server, not a repository",
                        where="loadtest.protocol", fix="pass --url http://HOST:PORT of the server, or a Triton protocol")
    from generator.serve.server import TritonServer

    with TritonServer(Path(repo_dir), log_file=log_file) as server:
        yield Endpoints(f"http://{server.http_url}", server.grpc_url, server.metrics_url, server.admin_key)


_LOG_FIX = "mend what the Locust log's last lines above name, then run again"


def run_locust(options: dict[str, Any], workers: int, out_dir: Path, timeout_s: float,
               prefix: Sequence[str] = ()) -> None:
    """Run the Locust processes to completion; their logs go to OUT/locust*.log."""
    conf = out_dir / "locust.conf"
    conf.write_text(locustconf.locust_conf_text(options), encoding="utf-8")
    from generator.serve.ports import free_port

    commands = locustconf.locust_commands(conf, Path(options["locustfile"]), workers, free_port(), prefix=prefix)
    # the master hears only workers that carry this run's token (loadtest/distributed.py)
    env = child_env(os.environ, PYTHONUNBUFFERED="1", TRITONGEN_RUN_TOKEN=secrets.token_hex(16))
    group, procs = ChildGroup(), []  # one process group that ends with us, however we end
    try:
        for i, cmd in enumerate(commands):
            log = open(out_dir / ("locust.log" if i == 0 else f"locust-worker-{i}.log"), "w", encoding="utf-8")
            if i == 0 and workers > 0:
                procs.append(_start_master(group, cmd, log, out_dir, env, timeout_s))
            else:
                procs.append(group.start(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir, env=env))
            log.close()
            if procs[0].returncode is not None:
                break  # the master failed before it held its port: no worker is started
        try:
            procs[0].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise LoadTestError(
                f"Locust did not finish within {timeout_s:.0f} s:\n{_tail(out_dir / 'locust.log')}", where=str(out_dir / 'locust.log'),
                fix="check the server log; lower loadtest.request_timeout_s to fail stuck requests sooner",
            ) from None
        # the master is done: a worker still there after this is ended with the group (at once when the master
        # failed: a worker that never connected would not end on its own)
        for p in procs[1:] if procs[0].returncode == 0 else ():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
    finally:
        group.stop(timeout_s=10)
    if procs[0].returncode != 0:
        cause = setup_failure(out_dir) or _workers_missing(out_dir) or f"Locust exited with code {procs[0].returncode}"
        raise LoadTestError(
            f"{cause}\nLocust's last lines:\n{_tail(out_dir / 'locust.log')}",
            where=str(out_dir / 'locust.log'), fix="mend what the first line says; Locust's last lines are above",
        )


def _start_master(group: ChildGroup, cmd: list[str], log, out_dir: Path, env: dict[str, str],
                  timeout_s: float) -> subprocess.Popen:
    """Start the distributed master and wait until it holds its port (loadtest/distributed.py writes it to a
    pipe): a worker started before might hand the run token to whoever bound the port first. Returns at
    once when the master exits without it (its log says why)."""
    import select

    read_end, write_end = os.pipe()
    try:
        proc = group.start(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir, pass_fds=(write_end,),
                           env={**env, "TRITONGEN_MASTER_PORT_FD": str(write_end)})
        os.close(write_end)
        write_end = -1
        if not select.select([read_end], [], [], timeout_s)[0]:
            raise LoadTestError(f"the Locust master did not bind its port within {timeout_s:.0f} s",
                                where=str(out_dir / "locust.log"), fix="read the log; rerun on a less loaded machine")
        if not os.read(read_end, 64):  # no port: the master exited (a port taken, a setup failure)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        return proc
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def count_tokens_after_run(requests: list[RequestRecord], processes: list[ProcessRecord],
                           fallback: Optional[Path] = None) -> None:
    """The client tokenizer's output-token counts, with the tokenizer the Locust processes used (or
    ``fallback`` when that folder is not on this machine, e.g. records of an in-cluster run)."""
    folders = [Path(p["tokenizer"]) for p in processes] + ([Path(fallback)] if fallback else [])
    found = next((f / "tokenizer.json" for f in folders if (f / "tokenizer.json").is_file()), None)
    if found is None:
        return
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(found))
    count_client_tokens(requests, lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids))


SETUP_FAILED = "tritongen load test setup failed: "
"""How loadtest/tritonllm.py logs a failed setup (model, tokenizer, prompts) before it stops the run."""


def setup_failure(out_dir: Path) -> Optional[str]:
    """The first setup failure a Locust process logged (the master's log first, then the workers'), if any."""
    for log in sorted(out_dir.glob("locust*.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if SETUP_FAILED in line:
                return _clip(line.split(SETUP_FAILED, 1)[1].strip())
    return None


MAX_QUOTED_LINE = 1000
"""The most characters of one log line an error quotes: a server's text can be in it (review28: a /v1/models id of
200,000 characters in "model 'm' is not served at ... (it lists ...)"), and the terminal wraps one long word in time
quadratic in its length: 40,000 characters took 17 s, that id minutes of CPU before the error was shown."""


def _clip(line: str) -> str:
    return line if len(line) <= MAX_QUOTED_LINE else f"{line[:MAX_QUOTED_LINE]}... (cut: {len(line):,} characters)"


def _workers_missing(out_dir: Path) -> Optional[str]:
    """The master gave up waiting for its workers (locustconf.WORKERS_CONNECT_S): one died or hung while starting."""
    if "Gave up waiting for workers to connect" not in _tail(out_dir / "locust.log"):
        return None
    return (f"not every Locust worker connected to the master within {locustconf.WORKERS_CONNECT_S} s: one died "
            f"or hung while starting (its locust-worker-N.log in {out_dir} says which)")


def _tail(path: Path, lines: int = 15) -> str:
    """The log's last lines, each ``_clip``-ped."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    return "\n".join(map(_clip, text.splitlines()[-lines:]))


def _integrity(run: Optional[RunRecord]) -> RunIntegrity:
    """What the distributed master recorded about the run (a whole run when there is no master)."""
    if run is None:
        return RunIntegrity()
    return RunIntegrity(incomplete=run["incomplete"], lost_workers=run["lost_workers"],
                        rejected_messages=run["rejected_messages"])


def _judged(slo_terms: Optional[list], summary: Any, client: Any, integrity: RunIntegrity) -> Optional[SloVerdict]:
    """The SLO verdict of a run (None without an SLO); a run that lost a worker never passes (review20)."""
    from generator.measure.slo import evaluate

    return evaluate(slo_terms, summary, client, integrity.incomplete) if slo_terms else None


def model_inputs(http_url: str, model: str) -> set[str]:
    from generator.measure.tritonstats import http_get

    config = json.loads(http_get(f"{http_url}/v2/models/{model}/config"))
    return {i["name"] for i in config.get("input", [])}


def reference_answers(http_url: str, model: str, requests: list[RequestRecord], limit: int,
                      timeout_s: float) -> tuple[dict[int, str], list[str]]:
    """Each distinct prompt of the run (at most ``limit``) asked once more, without streaming.

    The one-piece answer is the server detokenizing all output ids at once; requests ask for exactly
    max_tokens with the engine's greedy defaults, so it comes from the same tokens as every streamed
    answer to that prompt. Asked after the run, four at a time, so it does not disturb the measurement.
    """
    from concurrent.futures import ThreadPoolExecutor

    from generator.serve.client import UNREADABLE, ServerRequestError, exchange

    gone = next((why for why in map(server_gone, (r["error"] for r in requests)) if why), None)
    if gone is not None:  # its answers would each sit out the timeout too
        return {}, [f"not asked: {gone}"]
    texts = {r["prompt"]: r["prompt_text"] for r in requests if r["prompt_text"] is not None}
    prompts: dict[int, tuple[str, int]] = {}
    for r in requests:
        if r["streaming"] and not r["error"] and r["prompt"] in texts and len(prompts) < limit:
            prompts.setdefault(r["prompt"], (texts[r["prompt"]], r["max_tokens"]))
    if not prompts:
        return {}, []
    try:
        accepted = model_inputs(http_url, model)
    except UNREADABLE as exc:  # the run is measured: its report is not lost to a config that cannot be read
        return {}, [f"not asked: the model's config could not be read ({type(exc).__name__}: {exc})"[:300]]

    silent = threading.Event()  # one answer that timed out: the server stopped answering, ask no more

    def ask(item: tuple[int, tuple[str, int]]) -> tuple[int, Optional[str], Optional[str]]:
        index, (text, max_tokens) = item
        if silent.is_set():
            return index, None, f"prompt {index}: not asked, the server stopped answering"
        body = json.dumps(request_inputs(accepted, text, max_tokens, False)).encode()
        try:
            with exchange("POST", f"{http_url}/v2/models/{model}/generate", body=body,
                          headers={"Content-Type": "application/json"}, timeout=timeout_s) as (status, chunks):
                answer = b"".join(chunks)
            if status != 200:  # the server answering
                return index, None, f"prompt {index}: HTTP {status}: {answer[:200].decode(errors='replace')}"
            return index, str(json.loads(answer).get("text_output", "")), None
        except ServerRequestError as exc:  # past MAX_ANSWER_BYTES
            return index, None, f"prompt {index}: {exc}"
        except (ValueError, AttributeError, RecursionError) as exc:  # not a JSON object: a failed check, no traceback
            return index, None, f"prompt {index}: the answer is no JSON object ({type(exc).__name__}: {exc})"[:300]
        except OSError as exc:  # a refusal, a silence or an answer that takes longer than timeout_s in all
            if server_gone(f"{type(exc).__name__}: {exc}"):
                silent.set()
            return index, None, f"prompt {index}: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, prompts.items()))
    return {i: t for i, t, _ in answers if t is not None}, [e for _, _, e in answers if e]


@dataclass
class LoadResult:
    out_dir: Path
    results: LoadTestResult
    requests: list[RequestRecord]
    """The run's request records as read back, with the client's token counts: for callers that judge them
    further (tune's SLO rows, the sweep's intervals) without reading the records file again."""


def run_loadtest(
    spec: Spec, out_dir: Path, *, repo_dir: Optional[Path] = None, url: Optional[str] = None,
    grpc_url: Optional[str] = None, metrics_url: Optional[str] = None, locust_prefix: Sequence[str] = (),
    title: Optional[str] = None, admin_key: Optional[str] = None, report: bool = True,
    manifest_dir: Optional[Path] = None,
) -> LoadResult:
    """Run one load test into ``out_dir`` (an existing folder): records, Locust logs, results.json, report.

    ``report=False`` skips the report pages (tune's many short rounds keep only results.json and records).
    ``locust_prefix`` wraps the Locust commands (e.g. ``taskset -c 0 nice -n 19``) to constrain the load
    generator, as the client-bottleneck test does. ``manifest_dir``: the repository a ``url`` server
    serves, when known, so the run records what was served (identity.run_identity).
    """
    from generator.measure.identity import run_identity
    from generator.measure.slo import parse_slo
    from generator.measure.statistics import split_vs_stages, summarize
    from generator.measure.tritonstats import (
        MetricsSampler,
        counter_stages,
        fetch_model_stats,
        metrics_summary,
        stage_times,
    )
    from generator.measure.target import resolve_served
    from generator.measure.verdict import client_verdict
    from generator.resources import loadtest_dir

    out_dir = Path(out_dir).resolve()
    slo_terms = parse_slo(spec.loadtest.slo) if spec.loadtest.slo else None
    if spec.loadtest.openai and spec.loadtest_tokenizer is None:
        raise SpecError("an OpenAI-compatible server names no tokenizer folder", where="loadtest.tokenizer",
                        fix="pass --tokenizer DIR: a folder with the served model's tokenizer.json")
    records = out_dir / "records.jsonl"
    started = time.time()
    with serving(repo_dir, url, grpc_url, metrics_url, out_dir / "triton.log", admin_key,
                 spec.loadtest.openai) as endpoints:
        lt = resolve_served(spec, endpoints.http_url, cores=available_cores(), ask_model=repo_dir is None,
                            admin_key=endpoints.admin_key)
        options = locustconf.locust_options(lt, endpoints, records, loadtest_dir() / "locustfile.py")
        triton = not lt.openai  # Triton's statistics API and one-piece generate exist only there
        before = fetch_model_stats(endpoints.http_url, endpoints.admin_key) if triton else {}
        sampler = MetricsSampler(endpoints.metrics_url) if endpoints.metrics_url else contextlib.nullcontext()
        with sampler:
            spawn_s = lt.users / lt.spawn_rate
            run_locust(options, lt.workers, out_dir, timeout_s=lt.duration_s + spawn_s + lt.request_timeout_s + 120,
                       prefix=locust_prefix)
        after = _stats_after(endpoints) if triton else {}
        requests, processes, run = read_records(records)
        if not requests:
            raise LoadTestError(f"the load test recorded no requests:\n{_tail(out_dir / 'locust.log')}",
                                where=str(out_dir / 'locust.log'), fix=_LOG_FIX)
        count_tokens_after_run(requests, processes, lt.tokenizer)
        if lt.model is None:  # an OpenAI server's first listed model, as the users found it
            lt = lt.model_copy(update={"model": requests[0]["model"]})
        references, reference_errors = reference_answers(
            endpoints.http_url, lt.model, requests, lt.reference_checks if triton else 0, lt.request_timeout_s
        )
    summary = summarize(requests, references)
    summary.checks.reference_errors = reference_errors
    stages = stage_times(before, after)
    metrics = metrics_summary(getattr(sampler, "samples", []))
    client = client_verdict(processes, summary.latency_ms, lt.open_loop)
    client.capacity = capacity(processes, recorded_ceiling())
    integrity = _integrity(run)
    results = LoadTestResult(
        **dict(summary),
        server=ServerView(stages=stages, metrics=metrics, metrics_stages=counter_stages(metrics.counters),
                          split_vs_stages=split_vs_stages(summary.split, stages)),
        client=client,
        run=RunInfo(title=title or "tritongen load test", target=str(repo_dir) if repo_dir else endpoints.http_url,
                    started_unix=started, mode="open loop" if lt.open_loop else "closed loop",
                    loadtest=lt, identity=run_identity(lt, repo_dir or manifest_dir), integrity=integrity),
        slo=_judged(slo_terms, summary, client, integrity),
    )
    _write_results(out_dir, results, report)
    return LoadResult(out_dir, results, requests)


def _stats_after(endpoints: Endpoints) -> dict[str, Any]:
    """The server's statistics after the run, or none when it no longer answers: it died during the run, which the
    run's records show (review25: the refusal here, an OSError, ended the command as "check the path, its permissions",
    the run's records, report and the server's log deleted with its folder)."""
    from generator.measure.tritonstats import fetch_model_stats
    from generator.serve.client import UNREADABLE

    try:
        return fetch_model_stats(endpoints.http_url, endpoints.admin_key)
    except UNREADABLE:
        return {}


def _write_results(out_dir: Path, results: LoadTestResult, report: bool) -> None:
    """results.json with the report pages, or (tune's many short rounds) results.json alone."""
    if report:
        from generator.measure.report_loadtest import write_loadtest_report

        write_loadtest_report(out_dir, results)
    else:
        from generator.fsutil import atomic_write_text

        atomic_write_text(out_dir / "results.json", json.dumps(results.model_dump(mode="json"), indent=2))


def report_records(spec: Spec, records: Path, out_dir: Path, *, title: Optional[str] = None) -> LoadResult:
    """The report of a run recorded elsewhere (the in-cluster Locust master's records.jsonl): the same
    statistics and pages as ``run_loadtest``, without the server-side figures only a local run samples."""
    from generator.measure.identity import run_identity
    from generator.measure.report_loadtest import write_loadtest_report
    from generator.measure.slo import parse_slo
    from generator.measure.statistics import summarize
    from generator.measure.verdict import client_verdict

    out_dir = Path(out_dir).resolve()
    slo_terms = parse_slo(spec.loadtest.slo) if spec.loadtest.slo else None
    requests, processes, run = read_records(Path(records))
    target = out_dir / "records.jsonl"
    if Path(records).resolve() != target:  # kept beside the report once read: a sparse file read as gigabytes of zeros
        shutil.copyfile(records, target)  # (no disk) was written out whole before it was refused (review22)
    if not requests:
        raise LoadTestError(f"no request records in {records}", where=str(records),
                            fix="point --records at the records.jsonl the Locust master wrote")
    lt = spec.resolved_loadtest(workers=len(processes) if len(processes) > 1 else 0)  # the processes that ran
    count_tokens_after_run(requests, processes, lt.tokenizer)
    summary = summarize(requests)
    open_loop = lt.open_loop
    client = client_verdict(processes, summary.latency_ms, open_loop)
    client.capacity = capacity(processes, recorded_ceiling())
    integrity = _integrity(run)
    results = LoadTestResult(
        **dict(summary),
        server=ServerView(stages={}, metrics=MetricsSummary(), metrics_stages={}, split_vs_stages=None),
        client=client,
        run=RunInfo(title=title or f"tritongen load test (records of {records})", target=str(records),
                    started_unix=min(r["start_unix_ns"] for r in requests) / 1e9,
                    mode="open loop" if open_loop else "closed loop", loadtest=lt, identity=run_identity(lt, None),
                    integrity=integrity),
        slo=_judged(slo_terms, summary, client, integrity),  # review21: --records ignored the SLO
    )
    write_loadtest_report(out_dir, results)
    return LoadResult(out_dir, results, requests)
