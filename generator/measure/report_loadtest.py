"""The load-test report page: what results.json says, as Markdown and HTML with plots.

Nothing here measures anything: it only presents a LoadTestResult, so a report can be rebuilt from a
results.json alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from generator.fsutil import atomic_write_text
from generator.measure.metrics import LATENCIES
from generator.measure.request_figures import CHECK_EMPTY_CHUNK, CHECK_REFERENCE, CHECK_REPLACEMENT, CHECK_TOKEN_COUNT
from generator.measure.report_doc import Doc, pyplot
from generator.measure.results import ClientVerdict, Dist, Latency, LoadTestResult, SloVerdict, TermOutcome
from generator.measure.verdict import (
    BUSY,
    CONN_WAIT_P99_LIMIT_MS,
    CPU_LIMIT,
    IDLE_LAG_FACTOR,
    LAG_P99_LIMIT_MS,
    LAG_SHARE,
    LATENESS_P99_LIMIT_MS,
)

STAT_COLS = ("mean", "p50", "p90", "p95", "p99", "max")


def _stats(d: Dist) -> list[float]:
    return [getattr(d, s) for s in STAT_COLS]


def _latency_table(doc: Doc, latency: Latency) -> None:
    rows = [[lat.label, *_stats(d), d.count] for lat in LATENCIES if lat.shown and (d := getattr(latency, lat.key))]
    doc.table(["ms", *STAT_COLS, "samples"], rows)


def _slo_section(doc: Doc, slo: Optional[SloVerdict]) -> None:
    if not slo:
        return
    doc.h("SLO gate")
    doc.p(f"Verdict: **{slo.verdict.upper()}** (exit code {slo.exit_code})"
          + (f" — {slo.reason}." if slo.reason else "."))
    doc.table(["term", "measured", "limit", "result"], [
        [r.term, _fmt_value(r.measured, r.unit), _fmt_value(r.limit, r.unit),
         r.result.upper() if r.result is not TermOutcome.NOT_MEASURED else "INCONCLUSIVE (not measured)"]
        for r in slo.terms
    ])


def _fmt_value(value: Optional[float], unit: str) -> str:
    if value is None:
        return "–"
    if unit == "fraction":
        return f"{value:.3%}"
    return f"{value:.2f} {unit}"


def _client_section(doc: Doc, client: ClientVerdict) -> None:
    doc.h("Load generator")
    if client.client_limited:
        doc.p("**CLIENT-LIMITED**: the load generator may have set these figures, not the server. "
              "SLO gates treat this run as inconclusive.")
        doc.bullets(client.reasons)
    else:
        doc.p("The load generator kept up: no process's event loop wanted "
              f"{CPU_LIMIT:.0%} of a core (on a CPU or waiting for one), and event-loop lag p99 stayed under "
              f"{client.lag_limit_ms:.1f} ms ({LAG_P99_LIMIT_MS:g} ms, or {LAG_SHARE:.0%} of the median gap "
              f"between tokens if larger; {IDLE_LAG_FACTOR:g} times that for a process below {BUSY:.0%} of a "
              "core, whose lag is the machine's)"
              f" (open loop also: send lateness and connection waits p99 under {LATENESS_P99_LIMIT_MS:g} "
              f"and {CONN_WAIT_P99_LIMIT_MS:g} ms).")
    doc.table(["process", "host", "CPU, mean (share of a core)", "CPU, busiest second",
               "loop wanted (share of a core)", "waiting for a CPU", "loop lag p99 ms", "loop lag max ms"], [
        [p.proc, p.host, f"{p.cpu:.0%}", f"{p.cpu_max:.0%}", f"{p.demand:.0%}",
         "–" if p.wait is None else f"{p.wait:.0%}", p.lag_p99_ms, p.lag_max_ms] for p in client.processes
    ])
    cap = client.capacity
    if cap:
        doc.p(f"Streamed responses: {cap.responses_per_s:,.0f}/s from {cap.processes} Locust process(es)"
              + (f", {cap.responses_per_core_s:,.0f} per core-second of their CPU in this run"
                 if cap.responses_per_core_s else "")
              + f"; that is {cap.ceiling_share_per_process:.0%} of the recorded ceiling per process. "
              f"Ceiling: {cap.ceiling}.")
        if cap.advice:
            doc.p(f"**Capacity**: {cap.advice}.")


def _server_section(doc: Doc, results: LoadTestResult) -> None:
    server, split = results.server, results.split
    doc.h("Where the time went (server side)")
    if split:
        doc.p(f"TTFT split of {split.requests} requests from the engine's own per-request timestamps "
              "(`return_perf_metrics`). Mean parts add up to the mean client TTFT exactly "
              f"({split.parts_sum_mean_ms:.2f} ms vs {split.ttft_mean_ms:.2f} ms); requests with a negative "
              f"part (clock disagreement): {split.negative_parts}."
              + (" Server and client share the monotonic clock, so the front end is split into the way in "
                 "(send → engine arrival) and the way out (first token → client)." if split.shared_clock else ""))
        order = ("send_delay", "front_in", "front_out", "front_end", "queue", "prefill", "decode")
        doc.table(["ms", *STAT_COLS], [[k, *_stats(split.parts[k])] for k in order if k in split.parts])
    else:
        doc.p("The model returned no per-request perf metrics, so TTFT cannot be split.")
    trend = results.queue_trend
    if trend:
        thirds = ", ".join(f"{v:.1f}" for v in trend.median_ms_by_third)
        doc.p(f"Engine queue time over the run (median per third: {thirds} ms; slope "
              f"{trend.slope_ms_per_s:+.2f} ms per second of run). A rising queue means requests arrive "
              "faster than the engine admits them.")
    if server.stages:
        doc.p("Per model, from Triton's statistics (`/v2/models/stats`, before vs after the run). For decoupled "
              "Python models the compute time ends when `execute()` returns, not at the last response.")
        doc.table(["model", "requests", "failures", "inferences", "executions", "batch size", "request ms",
                   "queue ms", "compute ms"],
                  [[m, s.requests, s.failures, s.inferences, s.executions, s.batch_size, s.request_ms, s.queue_ms,
                    s.compute_ms] for m, s in server.stages.items()])
    if server.metrics_stages:
        doc.p("The same from the `/metrics` counters (increase over the run), as a cross-check:")
        doc.table(["model", "requests", "batch size", "queue ms", "compute (infer only) ms"],
                  [[m, s.requests, s.batch_size, s.queue_ms, s.compute_ms] for m, s in server.metrics_stages.items()])
    explained = server.split_vs_stages
    if explained:
        doc.p(f"Front end: {explained.front_end_mean_ms:.2f} ms per request, of which pre- and postprocessing "
              f"account for {explained.pre_post_ms:.2f} ms; the remaining {explained.unexplained_ms:.2f} ms are "
              "network, protocol handling and ensemble scheduling.")
    gauges = server.metrics.gauges
    if gauges:
        doc.p("Gauges sampled from `/metrics` every second during the run:")
        doc.table(["metric", "mean", "max"], [[k, v.mean, v.max] for k, v in sorted(gauges.items())])


def _checks_section(doc: Doc, results: LoadTestResult) -> None:
    checks = results.checks
    doc.h("Streamed output checks")
    if not checks.checked:
        doc.p("No streamed answers (non-streaming protocol): nothing to check.")
        return
    ref = checks.reference
    doc.p(f"{checks.checked} streamed answers checked while under load; **{checks.failed_requests}** failed a "
          f"check. {checks.with_reference} could be compared with the same prompt asked again without streaming "
          f"after the run: {ref.get('equal', 0)} equal, {ref.get('detokenization', 0)} damaged by streaming, "
          f"{ref.get('diverged', 0)} where the engine generated different tokens (not a streaming fault). "
          f"Empty chunks before the last: {checks.empty_chunks} (a failure only where nothing explains them: "
          "a held-back character, a server that counted a token for every response, a cumulative answer "
          "repeating its text so far, or a one-piece text that is equal (a token that decodes to nothing) or "
          "that came from other tokens, explains them).")
    doc.table(["check", "failures"], [
        ["no U+FFFD the one-piece text does not have", checks.failures[CHECK_REPLACEMENT]],
        ["no unexplained empty chunk before the last", checks.failures[CHECK_EMPTY_CHUNK]],
        ["server token count = requested length ≥ responses with text", checks.failures[CHECK_TOKEN_COUNT]],
        ["streamed text = one-piece text", checks.failures[CHECK_REFERENCE]],
    ])
    if checks.samples:
        doc.p("Samples of failures (the streamed chunks, and the one-piece text where compared):")
        doc.pre("\n".join(json.dumps(s.model_dump(exclude_none=True), ensure_ascii=True)[:700]
                          for s in checks.samples[:8]))
    if checks.reference_errors:
        doc.p("Re-asking failed for: " + "; ".join(checks.reference_errors[:5]))
    agree = results.tokens.agreement
    if agree:
        doc.p("Token counts, client tokenizer vs server (re-encoding text need not reproduce the generated "
              "tokens, so small differences are expected; input counts differ by any chat template):")
        doc.table(["tokens", "compared", "equal", "mean client − server"],
                  [[k, v.compared, v.equal, v.mean_client_minus_server] for k, v in agree.items()])


def _appendix(doc: Doc, results: LoadTestResult) -> None:
    doc.h("Appendix: metric definitions")
    doc.bullets([
        "Every figure comes from exact per-request records (monotonic nanosecond timestamps of each response), "
        "never from Locust's statistics, which round (e.g. 147 ms is stored as 150 ms).",
        "**Scheduled send**: when the request was due. Closed loop: when the user sent it. Open loop: its slot in "
        "the seeded arrival schedule, so a stall shows up as latency, not as fewer requests.",
        "**TTFT**: scheduled send → first response carrying text.",
        "**ITL per gap**: time between two consecutive responses carrying text, pooled over all requests.",
        "**ITL per request**: (E2E − TTFT) / (output tokens − 1), output tokens as counted by the server "
        "(`num_output_tokens`) where that count can be true (at most max_tokens, at least the responses with text), "
        "else by the model's tokenizer.",
        "**End-to-end (E2E)**: scheduled send → last response.",
        "**Send lateness**: actual send − scheduled send (open loop; the client's own delay).",
        "**Throughput**: successful requests and their output tokens divided by the window from the first "
        "scheduled send to the last answer. Warm-up requests are excluded from everything.",
        "**Percentiles**: linear interpolation between samples (numpy's default, as genai-perf and vLLM).",
        "**TTFT split**: send delay + front end + queue (arrival → first scheduled) + prefill (first scheduled → "
        "first token), from the engine's `arrival_time_ns`, `first_scheduled_time_ns`, `first_token_time_ns`; "
        "decode = first → last token.",
    ])
    eq, lat = results.equivalents, results.latency_ms
    rows = []
    for label, ours, theirs in (
        ("TTFT (tritongen)", lat.ttft, None),
        ("TTFT as genai-perf", eq.genai_perf.ttft, "first response (even empty) − actual send"),
        ("TTFT as vLLM benchmark", eq.vllm.ttft, "first chunk with text − actual send"),
        ("ITL per gap (tritongen)", lat.itl, None),
        ("ITL as vLLM benchmark", eq.vllm.itl, "all gaps between chunks with text, pooled"),
        ("ITL per request (tritongen)", lat.itl_request, None),
        ("ITL as genai-perf", eq.genai_perf.itl,
         "per request (E2E − TTFT)/(tokenizer-counted tokens − 1), from the actual send"),
        ("TPOT as vLLM benchmark", eq.vllm.tpot, "same as genai-perf's ITL, from first chunk with text"),
    ):
        if ours:
            rows.append([label, ours.mean, ours.p50, ours.p99, theirs or "see above"])
    doc.p("The same raw records under the definitions of genai-perf and vLLM's benchmark_serving "
          "(ms), so the figures can be compared with numbers you already have:")
    doc.table(["figure", "mean", "p50", "p99", "definition"], rows)


def _loadtest_plots(doc: Doc, results: LoadTestResult) -> None:
    plt = pyplot()
    series = results.series
    if not series:
        return
    lat = results.latency_ms
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    ttfts = [s.ttft_ms for s in series]
    axes[0].hist(ttfts, bins=min(40, max(5, len(ttfts) // 3)), color="#76b900")
    axes[0].set(title="TTFT", xlabel="ms", ylabel="requests")
    gaps = results.itl_gaps_sample_ms
    if gaps:
        axes[1].hist(gaps, bins=40, color="#1f77b4")
        axes[1].set(title="Inter-token latency per gap", xlabel="ms", ylabel="gaps")
    for ax, d in ((axes[0], lat.ttft), (axes[1], lat.itl)):
        if d:
            for p, style in (("p50", "--"), ("p99", ":")):
                ax.axvline(getattr(d, p), color="k", linestyle=style, label=f"{p} {getattr(d, p):.1f} ms")
            ax.legend(fontsize=8)
    doc.figure("latency_hist", fig, "Distributions of TTFT and per-gap ITL (exact, not Locust's rounded values)")

    fig, ax = plt.subplots(figsize=(11, 3.6))
    t = [s.t_s for s in series]
    ax.scatter(t, ttfts, s=8, label="TTFT", color="#76b900")
    queue = [(s.t_s, s.queue_ms) for s in series if s.queue_ms is not None]
    if queue:
        ax.scatter([q[0] for q in queue], [q[1] for q in queue], s=8, label="engine queue", color="#d62728")
    ax.set(xlabel="request sent at (s into the run)", ylabel="ms", title="TTFT and engine queue time over the run")
    ax.legend(fontsize=8)
    doc.figure("timeline", fig, "Per request, by send time: a rising queue means the server is over capacity")

    split = results.split
    if split:
        fig, ax = plt.subplots(figsize=(11, 1.8))
        left = 0.0
        colours = {"send_delay": "#9467bd", "front_end": "#8c8c8c", "queue": "#d62728", "prefill": "#76b900",
                   "decode": "#1f77b4"}
        for k in split.ttft_parts:
            v = split.parts[k].mean
            ax.barh([0], [v], left=left, color=colours[k], label=f"{k} {v:.1f} ms")
            left += v
        ax.set(yticks=[], xlabel="ms", title=f"Mean TTFT {split.ttft_mean_ms:.1f} ms split by stage")
        ax.legend(fontsize=8, ncol=len(split.ttft_parts), loc="upper center", bbox_to_anchor=(0.5, -0.45))
        doc.figure("ttft_split", fig, "Where the mean TTFT went")

    gauges = results.server.metrics.series
    panels = (
        ("Requests in the server", lambda k: "pending_request_count" in k
         or ("nv_trt_llm_request_metrics" in k and 'request_type="max"' not in k)),
        ("KV-cache blocks in use", lambda k: "kv_cache_block_metrics" in k and 'kv_cache_block_type="used"' in k),
    )
    shown = [(title, {k: v for k, v in gauges.items() if pick(k) and any(y for _, y in v)}) for title, pick in panels]
    shown = [(title, picked) for title, picked in shown if picked]
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(11, 3.4), squeeze=False)
        for ax, (title, picked) in zip(axes[0], shown):
            for k, pts in sorted(picked.items())[:8]:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k.split("{", 1)[-1].rstrip("}"))
            ax.set(xlabel="s into the run", title=title)
            ax.legend(fontsize=7)
        doc.figure("gauges", fig, "Triton gauges sampled every second: pending requests per model, the TensorRT-LLM "
                   "backend's request and KV-cache metrics")


def loadtest_doc(results: LoadTestResult) -> Doc:
    run, lt = results.run, results.run.loadtest
    doc = Doc(run.title)
    load = (f"trace {lt.trace} (time scale {lt.time_scale:g})" if lt.trace is not None
            else f"{lt.request_rate:g} requests/s ({lt.arrival} arrivals)" if lt.request_rate is not None
            else f"{lt.users} users")
    doc.p(f"Target `{run.target}`, model `{lt.model}` over {lt.protocol}, {run.mode}: {load}, "
          f"{lt.duration_s:g} s, prompts ~{lt.input_tokens_mean} tokens in / {lt.output_tokens_mean} out, "
          f"seed {lt.seed}, {lt.processes} Locust process(es).")
    c, tp, slo = results.counts, results.throughput, results.slo
    verdicts = []
    if slo:
        verdicts.append(f"SLO **{slo.verdict.upper()}**")
    verdicts.append("load generator **CLIENT-LIMITED**" if results.client.client_limited else "load generator kept up")
    integrity = run.integrity
    if integrity.incomplete:
        verdicts.append(f"run **INCOMPLETE**: {integrity.incomplete}")
    if integrity.rejected_messages:
        verdicts.append(f"**{sum(integrity.rejected_messages.values())} messages rejected** by the Locust master "
                        "(not from a worker of this run)")
    doc.p(" · ".join(verdicts))
    doc.h("Summary")
    doc.table(["requests ok", "errors", "error rate", "window s", "requests/s", "output tokens/s", "input tokens/s"],
              [[c.ok, c.errors, f"{(results.error_rate or 0):.2%}", results.window_s,
                tp.requests_per_s, tp.output_tokens_per_s, tp.input_tokens_per_s]])
    _latency_table(doc, results.latency_ms)
    if reuse := results.prefix_reuse:
        doc.p(f"Prefix cache (as the server reported it): {reuse.hit_share:.1%} of prompt {reuse.unit} reused over "
              f"{reuse.requests} requests; {reuse.hit_requests} reused some. TTFT p50 "
              f"{_fmt_value(reuse.ttft_hit.p50 if reuse.ttft_hit else None, 'ms')} with a hit, "
              f"{_fmt_value(reuse.ttft_miss.p50 if reuse.ttft_miss else None, 'ms')} without.")
    _slo_section(doc, slo)
    _loadtest_plots(doc, results)
    _client_section(doc, results.client)
    _server_section(doc, results)
    _checks_section(doc, results)
    if results.error_samples:
        doc.h("Errors")
        doc.table(["message", "count"], [[e.message[:200], e.count] for e in results.error_samples])
    _appendix(doc, results)
    return doc


def write_loadtest_report(out_dir: Path, results: LoadTestResult) -> None:
    """results.json, report.md, report.html, plots/*.png."""
    atomic_write_text(out_dir / "results.json", json.dumps(results.model_dump(mode="json"), indent=2))
    loadtest_doc(results).write(out_dir)
