"""``tritongen loadtest``: drive Locust against a Triton LLM endpoint and compute every figure exactly.

The Locust users (loadtest/) run in their own processes; this module builds their configuration and
command lines, starts the server when given a repository, samples Triton's statistics and metrics around
the run, re-asks a sample of the streamed prompts without streaming (the detokenization check), and
turns the raw per-request records into statistics. Locust's rounded histograms are never used.

Pure deciders (``locust_options``, ``locust_commands``, ``summarize``, ``client_verdict``, ...) take
plain data; ``run_loadtest`` is the edge that starts processes and talks to the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from generator.errors import LoadTestError, SpecError
from generator.measure.records import (
    CHECK_REFERENCE,
    CHECKS,
    empty_chunks,
    RequestMetrics,
    quantile_sample,
    request_inputs,
    request_metrics,
)
from generator.serve.endpoints import Endpoints
from generator.spec import LoadTestSpec, Spec

# Client-bottleneck thresholds: above any of them the load generator, not the server, may have set the
# figures, and an SLO verdict is "inconclusive". A gevent process uses at most one core.
CPU_LIMIT = 0.90
"""Mean CPU of a Locust process over the run, as a fraction of one core."""
LAG_P99_LIMIT_MS = 10.0
"""99th percentile of event-loop lag (how late a 10 ms sleep wakes: the error on every timestamp), or
LAG_SHARE of the median gap between tokens if that is larger (a slow model tolerates a slower client)."""
LAG_SHARE = 0.25
LATENESS_P99_LIMIT_MS = 10.0
"""Open loop: 99th percentile of send lateness against the schedule."""
CONN_WAIT_P99_LIMIT_MS = 10.0
"""Open loop: 99th percentile of the wait for a connection when all were busy."""

PERCENTILES = (50, 90, 95, 99)


# ---------------------------------------------------------------- Locust configuration (pure)


def locust_options(lt: LoadTestSpec, endpoints: Endpoints, records: Path, locustfile: Path) -> dict[str, Any]:
    """Everything the Locust processes need, as Locust config-file keys (custom ones from loadtest/)."""
    processes = max(lt.workers, 1)
    opts: dict[str, Any] = {
        "locustfile": str(locustfile),
        "headless": True,
        "only-summary": True,
        "exit-code-on-error": 0,
        "host": endpoints.locust_host(lt.protocol),
        # open loop: one dispatching user per process; closed loop: the users.
        "users": processes if lt.request_rate is not None else lt.users,
        "spawn-rate": lt.spawn_rate if lt.request_rate is None else float(processes),
        "duration": lt.duration_s,
        "records": str(records),
    }
    for name in ("protocol", "model", "max_requests", "request_rate", "arrival", "prompts", "num_prompts",
                 "input_tokens_mean", "input_tokens_stddev", "output_tokens_mean", "output_tokens_stddev",
                 "tokenizer", "seed", "warmup_requests", "request_timeout_s"):
        value = getattr(lt, name)
        if value is not None:
            opts[name.replace("_", "-")] = value
    return opts


def locust_conf_text(options: dict[str, Any]) -> str:
    lines = ["# Written by tritongen loadtest; rerun with: python -m locust --config locust.conf"]
    for key, value in options.items():
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else value}")
    return "\n".join(lines) + "\n"


def locust_commands(
    conf: Path, locustfile: Path, workers: int, master_port: int, *, python: str = sys.executable,
    prefix: Sequence[str] = (),
) -> list[list[str]]:
    """The master (or the only process) first, then the workers."""
    base = [*prefix, python, "-m", "locust"]
    if workers <= 0:
        return [[*base, "--config", str(conf)]]
    master = [*base, "--config", str(conf), "--master", "--master-bind-host", "127.0.0.1",
              "--master-bind-port", str(master_port), "--expect-workers", str(workers)]
    worker = [*base, "-f", str(locustfile), "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)]
    return [master] + [list(worker) for _ in range(workers)]


# ---------------------------------------------------------------- statistics (pure)


def dist(values: Sequence[float], scale: float = 1.0) -> Optional[dict[str, float]]:
    """count, mean, min, max and p50/p90/p95/p99 (numpy's linear interpolation, as genai-perf and vLLM)."""
    import numpy as np

    if not len(values):
        return None
    a = np.asarray(values, dtype=float) / scale
    out = {"count": int(a.size), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}
    out.update({f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES})
    return out


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(request records, process records) from a records file."""
    requests, processes = [], []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                (processes if rec.get("kind") == "process" else requests).append(rec)
    return requests, processes


def _ms(ns: Sequence[float]) -> Optional[dict[str, float]]:
    return dist(ns, 1e6)


def _window(measured: list[tuple[dict[str, Any], RequestMetrics]]) -> float:
    """First scheduled send to last answer, in seconds, on wall-clock time (processes may be on other hosts)."""
    starts = [m.start_unix_ns for _, m in measured]
    ends = [m.start_unix_ns + (r["end_ns"] - r["sched_ns"]) for r, m in measured]
    return max(ends) / 1e9 - min(starts) / 1e9 if measured else 0.0


def queue_trend(measured: list[tuple[dict[str, Any], RequestMetrics]]) -> Optional[dict[str, Any]]:
    """Server queue time over the run: median per third and the least-squares slope (ms per s of run)."""
    import numpy as np

    points = sorted((m.start_unix_ns, m.split["queue"]) for _, m in measured if m.split)
    if len(points) < 6:
        return None
    t = np.array([p[0] for p in points], dtype=float)
    q = np.array([p[1] for p in points], dtype=float) / 1e6
    t = (t - t[0]) / 1e9
    thirds = np.array_split(q, 3)
    slope = float(np.polyfit(t, q, 1)[0]) if t[-1] > 0 else 0.0
    return {"median_ms_by_third": [float(np.median(x)) for x in thirds], "slope_ms_per_s": slope}


def _equivalents(measured: list[tuple[dict[str, Any], RequestMetrics]]) -> dict[str, Any]:
    """TTFT and ITL as genai-perf and vLLM's benchmark_serving define them, from the same records.

    genai-perf: TTFT = first response (even an empty one) minus the actual send; ITL = per request
    (E2E - TTFT) / (tokenizer-counted output tokens - 1), E2E from the actual send.
    vLLM: TTFT = first chunk with text minus the send; ITL = every gap between chunks with text, pooled;
    TPOT = per request (E2E - TTFT) / (tokenizer-counted output tokens - 1).
    """
    g_ttft, g_itl, v_ttft, v_itl, v_tpot = [], [], [], [], []
    for r, m in measured:
        if not m.streaming or m.ttft_ns is None:
            continue
        sent = r["sent_ns"]
        e2e = r["end_ns"] - sent
        g_ttft.append(r["resp_ns"][0] - sent)
        v_ttft.append(m.ttft_ns - m.lateness_ns)
        v_itl.extend(m.gaps_ns)
        n = m.client_output_tokens or 0
        if n > 1:
            g_itl.append((e2e - g_ttft[-1]) / (n - 1))
            v_tpot.append((e2e - v_ttft[-1]) / (n - 1))
    return {
        "genai_perf": {"ttft": _ms(g_ttft), "itl": _ms(g_itl)},
        "vllm": {"ttft": _ms(v_ttft), "itl": _ms(v_itl), "tpot": _ms(v_tpot)},
    }


def _token_agreement(measured: list[tuple[dict[str, Any], RequestMetrics]]) -> dict[str, Any]:
    """Server counts against the client tokenizer's: re-encoding text need not give the same tokens."""
    out: dict[str, Any] = {}
    for side, client_of, server_of in (
        ("output", lambda m: m.client_output_tokens, lambda m: m.server_output_tokens),
        ("input", lambda m: m.input_tokens, lambda m: m.server_input_tokens),
    ):
        pairs = [(client_of(m), server_of(m)) for _, m in measured if client_of(m) is not None and server_of(m) is not None]
        if pairs:
            out[side] = {
                "compared": len(pairs),
                "equal": sum(c == s for c, s in pairs),
                "mean_client_minus_server": sum(c - s for c, s in pairs) / len(pairs),
            }
    return out


def _split_stats(measured: list[tuple[dict[str, Any], RequestMetrics]]) -> Optional[dict[str, Any]]:
    splits = [(m.ttft_ns, m.split) for _, m in measured if m.split]
    if not splits:
        return None
    parts = ("send_delay", "front_end", "queue", "prefill", "decode", "front_in", "front_out")
    stats = {p: _ms([s[p] for _, s in splits if p in s]) for p in parts}
    ttft_mean = sum(t for t, _ in splits) / len(splits) / 1e6
    in_ttft = ["send_delay", "front_end", "queue", "prefill"] + ([] if measured[0][1].streaming else ["decode"])
    parts_mean = sum(stats[p]["mean"] for p in in_ttft)
    negative = sum(1 for _, s in splits if min(s[p] for p in in_ttft) < 0)
    return {
        "requests": len(splits),
        "parts": {p: v for p, v in stats.items() if v},
        "ttft_mean_ms": ttft_mean,
        "ttft_parts": in_ttft,
        "parts_sum_mean_ms": parts_mean,
        "negative_parts": negative,
        "shared_clock": all("front_in" in s for _, s in splits),
    }


def summarize(requests: list[dict[str, Any]], references: Optional[dict[int, str]] = None) -> dict[str, Any]:
    """Every client-side figure of a run, from its request records (warm-up and cut-off requests excluded).

    ``references`` maps prompt indexes to their one-piece answers (see reference_answers).
    """
    references = references or {}
    rows = [(r, request_metrics(r, references.get(r["prompt"]))) for r in requests]
    measured = [(r, m) for r, m in rows if not m.warmup and not r.get("cancelled")]
    ok = [(r, m) for r, m in measured if m.ok and m.ttft_ns is not None]
    errors = [r for r, m in measured if not m.ok]
    window = _window(ok)
    out_tokens = sum(m.output_tokens or 0 for _, m in ok)
    in_tokens = sum(m.input_tokens or 0 for _, m in ok)
    failures: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    for r, m in ok:
        for name in m.failures:
            failures[name] += 1
            if sum(1 for s in samples if s["check"] == name) < 3:
                sample = {"check": name, "id": r["id"], "chunks": r["resp_text"][:40]}
                if name == CHECK_REFERENCE:
                    sample["reference"] = references[r["prompt"]][:400]
                samples.append(sample)
    streamed = [m for _, m in ok if m.streaming]
    return {
        "counts": {
            "requests": len(measured), "ok": len(ok), "errors": len(errors),
            "warmup": sum(1 for _, m in rows if m.warmup),
            "cancelled": sum(1 for r, _ in rows if r.get("cancelled")),
            "no_text": len(measured) - len(ok) - len(errors),
        },
        "window_s": window,
        "throughput": {
            "requests_per_s": len(ok) / window if window else None,
            "output_tokens_per_s": out_tokens / window if window else None,
            "input_tokens_per_s": in_tokens / window if window else None,
        },
        "latency_ms": {
            "ttft": _ms([m.ttft_ns for _, m in ok]),
            "itl": _ms([g for _, m in ok for g in m.gaps_ns]),
            "itl_request": _ms([m.itl_ns for _, m in ok if m.itl_ns is not None]),
            "e2e": _ms([m.e2e_ns for _, m in ok]),
            "lateness": _ms([m.lateness_ns for _, m in measured]),
            "conn_wait": _ms([r.get("conn_ns", 0) for r, _ in measured]),
        },
        "tokens": {
            "input": dist([m.input_tokens for _, m in ok if m.input_tokens is not None]),
            "output": dist([m.output_tokens for _, m in ok if m.output_tokens is not None]),
            "agreement": _token_agreement(ok),
        },
        "error_rate": len(errors) / len(measured) if measured else None,
        "error_samples": [{"message": msg, "count": n} for msg, n in Counter(r["error"] for r in errors).most_common(5)],
        "checks": {
            "checked": len(streamed),
            "with_reference": sum(1 for m in streamed if m.reference is not None),
            "reference": dict(Counter(m.reference for m in streamed if m.reference is not None)),
            "failed_requests": sum(1 for m in streamed if m.failures),
            "empty_chunks": sum(empty_chunks(r) for r, m in ok if m.streaming),
            "failures": {name: failures[name] for name in CHECKS},
            "samples": samples,
        },
        "split": _split_stats(ok),
        "queue_trend": queue_trend(ok),
        "equivalents": _equivalents(ok),
        "itl_gaps_sample_ms": quantile_sample([g / 1e6 for _, m in ok for g in m.gaps_ns]),
        "series": [
            {"t_s": (m.start_unix_ns - min(x.start_unix_ns for _, x in ok)) / 1e9, "ttft_ms": m.ttft_ns / 1e6,
             "queue_ms": m.split["queue"] / 1e6 if m.split else None, "e2e_ms": m.e2e_ns / 1e6}
            for _, m in ok
        ],
    }


def client_verdict(processes: list[dict[str, Any]], summary: dict[str, Any], open_loop: bool) -> dict[str, Any]:
    """Did the load generator limit the run? Its CPU, its event-loop lag, and (open loop) send lateness and
    connection waits, each against the limits above. Any reason flags the run as client-limited."""
    import numpy as np

    reasons = []
    per_process = []
    lat = summary["latency_ms"]
    typical = lat["itl"] or lat["ttft"]
    lag_limit = max(LAG_P99_LIMIT_MS, LAG_SHARE * typical["p50"]) if typical else LAG_P99_LIMIT_MS
    for p in sorted(processes, key=lambda p: p["proc"]):
        cpu = p["cpu_s"] / p["wall_s"] if p["wall_s"] else 0.0
        lag99 = float(np.percentile(p["lag_ns"], 99)) / 1e6 if p["lag_ns"] else 0.0
        per_process.append({"proc": p["proc"], "host": p["host"], "cpu": cpu,
                            "cpu_max": max(p.get("cpu_percent") or [0.0]) / 100, "lag_p99_ms": lag99,
                            "lag_max_ms": p["lag_max_ns"] / 1e6})
        if cpu >= CPU_LIMIT:
            reasons.append(f"Locust process {p['proc']} used {cpu:.0%} of a core (limit {CPU_LIMIT:.0%})")
        if lag99 > lag_limit:
            reasons.append(f"Locust process {p['proc']} event-loop lag p99 {lag99:.1f} ms (limit {lag_limit:.1f} ms)")
    if open_loop and lat["lateness"] and lat["lateness"]["p99"] > LATENESS_P99_LIMIT_MS:
        reasons.append(f"sends were late against the schedule: p99 {lat['lateness']['p99']:.1f} ms "
                       f"(limit {LATENESS_P99_LIMIT_MS:g} ms)")
    if open_loop and lat["conn_wait"] and lat["conn_wait"]["p99"] > CONN_WAIT_P99_LIMIT_MS:
        reasons.append(f"requests waited for connections: p99 {lat['conn_wait']['p99']:.1f} ms "
                       f"(limit {CONN_WAIT_P99_LIMIT_MS:g} ms)")
    if not processes:
        reasons.append("no load-generator health record arrived (the Locust process did not finish cleanly)")
    return {"client_limited": bool(reasons), "reasons": reasons, "processes": per_process, "lag_limit_ms": lag_limit}


def split_vs_stages(split: Optional[dict[str, Any]], stages: dict[str, Any]) -> Optional[dict[str, Any]]:
    """How much of the client's front-end time Triton's own statistics explain (pre- and postprocessing)."""
    if not split or "front_end" not in split["parts"]:
        return None
    pre = stages.get("preprocessing", {}).get("request_ms")
    post = stages.get("postprocessing", {}).get("request_ms")
    if pre is None and post is None:
        return None
    explained = (pre or 0.0) + (post or 0.0)
    front = split["parts"]["front_end"]["mean"]
    return {"front_end_mean_ms": front, "pre_post_ms": explained, "unexplained_ms": front - explained}


# ---------------------------------------------------------------- the edges: server, Locust, reference checks


@contextlib.contextmanager
def serving(repo_dir: Optional[Path], url: Optional[str], grpc_url: Optional[str], metrics_url: Optional[str],
            log_file: Path) -> Iterator[Endpoints]:
    """Endpoints of a running server: the one at ``url``, or one started on ``repo_dir`` for the block."""
    if repo_dir is None:
        if not url:
            raise SpecError("nothing to load-test", fix="pass a repository folder or --url http://HOST:PORT")
        endpoints = Endpoints.from_urls(url, grpc_url, metrics_url)
        endpoints.check_reachable()
        yield endpoints
        return
    from generator.serve.server import TritonServer

    with TritonServer(Path(repo_dir), log_file=log_file) as server:
        yield Endpoints(f"http://{server.http_url}", server.grpc_url, server.metrics_url)


def run_locust(options: dict[str, Any], workers: int, out_dir: Path, timeout_s: float,
               prefix: Sequence[str] = ()) -> None:
    """Run the Locust processes to completion; their logs go to OUT/locust*.log."""
    conf = out_dir / "locust.conf"
    conf.write_text(locust_conf_text(options), encoding="utf-8")
    from generator.serve.server import free_port

    commands = locust_commands(conf, Path(options["locustfile"]), workers, free_port(), prefix=prefix)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = []
    try:
        for i, cmd in enumerate(commands):
            log = open(out_dir / ("locust.log" if i == 0 else f"locust-worker-{i}.log"), "w", encoding="utf-8")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir, env=env))
            log.close()
        procs[0].wait(timeout=timeout_s)
        for p in procs[1:]:
            p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise LoadTestError(
            f"Locust did not finish within {timeout_s:.0f} s", where=str(out_dir / "locust.log"),
            fix="check the server log; lower loadtest.request_timeout_s to fail stuck requests sooner",
        ) from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
            if p.poll() is None:
                p.kill()
    if procs[0].returncode != 0:
        raise LoadTestError(
            f"Locust exited with code {procs[0].returncode}:\n{_tail(out_dir / 'locust.log')}",
            where=str(out_dir / "locust.log"), fix="read the Locust log named here; its last lines are above",
        )


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def model_inputs(http_url: str, model: str) -> set[str]:
    from generator.measure.tritonstats import http_get

    config = json.loads(http_get(f"{http_url}/v2/models/{model}/config"))
    return {i["name"] for i in config.get("input", [])}


def reference_answers(http_url: str, model: str, requests: list[dict[str, Any]], limit: int,
                      timeout_s: float) -> tuple[dict[int, str], list[str]]:
    """Each distinct prompt of the run (at most ``limit``) asked once more, without streaming.

    The one-piece answer is the server detokenizing all output ids at once; requests ask for exactly
    max_tokens with the engine's greedy defaults, so it comes from the same tokens as every streamed
    answer to that prompt. Asked after the run, four at a time, so it does not disturb the measurement.
    """
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    texts = {r["prompt"]: r["prompt_text"] for r in requests if "prompt_text" in r}
    prompts: dict[int, tuple[str, int]] = {}
    for r in requests:
        if r.get("streaming") and not r.get("error") and r["prompt"] in texts and len(prompts) < limit:
            prompts.setdefault(r["prompt"], (texts[r["prompt"]], r["max_tokens"]))
    if not prompts:
        return {}, []
    accepted = model_inputs(http_url, model)

    def ask(item: tuple[int, tuple[str, int]]) -> tuple[int, Optional[str], Optional[str]]:
        index, (text, max_tokens) = item
        body = json.dumps(request_inputs(accepted, text, max_tokens, False)).encode()
        req = urllib.request.Request(f"{http_url}/v2/models/{model}/generate", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 (the user's server)
                return index, json.loads(resp.read()).get("text_output", ""), None
        except OSError as exc:
            return index, None, f"prompt {index}: {exc}"

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, prompts.items()))
    return {i: t for i, t, _ in answers if t is not None}, [e for _, _, e in answers if e]


@dataclass
class LoadResult:
    out_dir: Path
    results: dict[str, Any]

    @property
    def client_limited(self) -> bool:
        return self.results["client"]["client_limited"]


def run_loadtest(
    spec: Spec, out_dir: Path, *, repo_dir: Optional[Path] = None, url: Optional[str] = None,
    grpc_url: Optional[str] = None, metrics_url: Optional[str] = None, locust_prefix: Sequence[str] = (),
    title: Optional[str] = None,
) -> LoadResult:
    """Run one load test into ``out_dir`` (an existing folder): records, Locust logs, results.json, report.

    ``locust_prefix`` wraps the Locust commands (e.g. ``taskset -c 0 nice -n 19``) to constrain the load
    generator, as the client-bottleneck test does.
    """
    from generator.resources import loadtest_dir
    from generator.measure.tritonstats import (
        MetricsSampler,
        counter_stages,
        fetch_model_stats,
        metrics_summary,
        stage_times,
    )

    from generator.measure.report import write_loadtest_report
    from generator.measure.slo import evaluate, parse_slo

    out_dir = Path(out_dir).resolve()
    lt = spec.loadtest
    slo_terms = parse_slo(lt.slo) if lt.slo else None
    if lt.prompts is not None:
        lt = lt.model_copy(update={"prompts": spec.path(lt.prompts)})
    lt = lt.model_copy(update={"model": spec.loadtest_model, "tokenizer": spec.loadtest_tokenizer})
    records = out_dir / "records.jsonl"
    started = time.time()
    with serving(repo_dir, url, grpc_url, metrics_url, out_dir / "triton.log") as endpoints:
        options = locust_options(lt, endpoints, records, loadtest_dir() / "locustfile.py")
        before = fetch_model_stats(endpoints.http_url)
        sampler = MetricsSampler(endpoints.metrics_url) if endpoints.metrics_url else contextlib.nullcontext()
        with sampler:
            spawn_s = lt.users / lt.spawn_rate
            run_locust(options, lt.workers, out_dir, timeout_s=lt.duration_s + spawn_s + lt.request_timeout_s + 120,
                       prefix=locust_prefix)
        after = fetch_model_stats(endpoints.http_url)
        requests, processes = read_records(records)
        if not requests:
            raise LoadTestError(f"the load test recorded no requests:\n{_tail(out_dir / 'locust.log')}",
                                where=str(out_dir / "locust.log"), fix="read the Locust log named here; its last lines are above")
        references, reference_errors = reference_answers(
            endpoints.http_url, lt.model, requests, lt.reference_checks, lt.request_timeout_s
        )
    results = summarize(requests, references)
    results["checks"]["reference_errors"] = reference_errors
    stages = stage_times(before, after)
    metrics = metrics_summary(getattr(sampler, "samples", []))
    results["server"] = {
        "stages": stages,
        "metrics": metrics,
        "metrics_stages": counter_stages(metrics["counters"]),
        "split_vs_stages": split_vs_stages(results["split"], stages),
    }
    results["client"] = client_verdict(processes, results, lt.request_rate is not None)
    results["run"] = {
        "title": title or "tritongen load test",
        "target": str(repo_dir) if repo_dir else endpoints.http_url,
        "started_unix": started,
        "mode": "open loop" if lt.request_rate is not None else "closed loop",
        "loadtest": lt.model_dump(mode="json"),
    }
    if slo_terms:
        results["slo"] = evaluate(slo_terms, results)
    write_loadtest_report(out_dir, results)
    return LoadResult(out_dir, results)
