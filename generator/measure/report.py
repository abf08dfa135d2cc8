"""Load-test and sweep reports: Markdown, one self-contained HTML page (plots as base64 PNG), JSON and CSV.

A report is first built as a list of neutral blocks (headings, paragraphs, tables, figures), then rendered
twice, so the Markdown and the HTML always say the same thing. Plots use matplotlib's Agg backend (no
display needed). Nothing here measures anything: it only presents a results dictionary.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from generator.fsutil import atomic_write_text
from generator.measure.runner import CONN_WAIT_P99_LIMIT_MS, CPU_LIMIT, LAG_P99_LIMIT_MS, LAG_SHARE, LATENESS_P99_LIMIT_MS

LATENCY_ROWS = (
    ("ttft", "TTFT"), ("itl", "ITL per gap"), ("itl_request", "ITL per request"), ("e2e", "End-to-end"),
    ("lateness", "Send lateness"),
)
STAT_COLS = ("mean", "p50", "p90", "p95", "p99", "max")


# ---------------------------------------------------------------- document model


@dataclass
class Doc:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.blocks.append(("table", (list(headers), [[_cell(c) for c in r] for r in rows])))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def figure(self, name: str, fig, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.figures[name] = buf.getvalue()
        self.blocks.append(("img", (name, caption)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "ul":
                out += [f"- {v}" for v in value] + [""]
            elif kind == "pre":
                out += ["```", value, "```", ""]
            elif kind == "img":
                out += [f"![{value[1]}](plots/{value[0]}.png)", "", f"*{value[1]}*", ""]
            elif kind == "table":
                headers, rows = value
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(v)}</li>" for v in value) + "</ul>")
            elif kind == "pre":
                body.append(f"<pre>{html.escape(value)}</pre>")
            elif kind == "img":
                data = base64.b64encode(self.figures[value[0]]).decode()
                body.append(f'<figure><img alt="{html.escape(value[1])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(value[1])}</figcaption></figure>")
            elif kind == "table":
                headers, rows = value
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                cells = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))

    def write(self, out_dir: Path, stem: str = "report") -> None:
        plots = out_dir / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        for name, png in self.figures.items():
            (plots / f"{name}.png").write_bytes(png)
        atomic_write_text(out_dir / f"{stem}.md", self.markdown())
        atomic_write_text(out_dir / f"{stem}.html", self.html())


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d2733; padding: 0 1em; }}
h1 {{ border-bottom: 3px solid #76b900; padding-bottom: .3em; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }}
table {{ border-collapse: collapse; margin: .8em 0; font-size: 14px; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }}
th {{ background: #f3f6f9; }} td.t, th:first-child {{ text-align: left; }}
tr:nth-child(even) td {{ background: #fafbfc; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #e1e4e8; }}
figcaption {{ color: #57606a; font-size: 13px; }}
pre {{ background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }}
code {{ background: #f6f8fa; padding: 0 3px; }}
.pass {{ color: #1a7f37; font-weight: 600; }} .fail {{ color: #cf222e; font-weight: 600; }}
.inconclusive {{ color: #9a6700; font-weight: 600; }}
</style></head><body>
{body}
</body></html>
"""


_NUMERIC = re.compile(r"^[-+]?[0-9.,]+\s*(%|ms|s)?$|^–$")


def _td(cell: str) -> str:
    """Numbers align right, words left."""
    return f"<td>{_inline(cell)}</td>" if _NUMERIC.match(cell) else f'<td class="t">{_inline(cell)}</td>'


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


_VERDICT_CLASS = {"PASS": "pass", "FAIL": "fail", "INCONCLUSIVE": "inconclusive", "CLIENT-LIMITED": "inconclusive"}


def _inline(text: str) -> str:
    """Escape, then the marks the reports use: **bold**, `code`, and coloured verdict words."""
    out = html.escape(text)
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    for word, cls in _VERDICT_CLASS.items():
        out = out.replace(word, f'<span class="{cls}">{word}</span>')
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- one load test


def _latency_table(doc: Doc, latency: dict[str, Any]) -> None:
    rows = [[label] + [latency[key][s] for s in STAT_COLS] + [latency[key]["count"]]
            for key, label in LATENCY_ROWS if latency.get(key)]
    doc.table(["ms", *STAT_COLS, "samples"], rows)


def _slo_section(doc: Doc, slo: Optional[dict[str, Any]]) -> None:
    if not slo:
        return
    doc.h("SLO gate")
    doc.p(f"Verdict: **{slo['verdict'].upper()}** (exit code {slo['exit_code']})"
          + (f" — {slo['reason']}." if slo.get("reason") else "."))
    doc.table(["term", "measured", "limit", "result"], [
        [r["term"], _fmt_value(r["measured"], r["unit"]), _fmt_value(r["limit"], r["unit"]),
         r["result"].upper() if r["result"] != "not measured" else "INCONCLUSIVE (not measured)"]
        for r in slo["terms"]
    ])


def _fmt_value(value: Optional[float], unit: str) -> str:
    if value is None:
        return "–"
    if unit == "fraction":
        return f"{value:.3%}"
    return f"{value:.2f} {unit}"


def _client_section(doc: Doc, client: dict[str, Any]) -> None:
    doc.h("Load generator")
    if client["client_limited"]:
        doc.p("**CLIENT-LIMITED**: the load generator may have set these figures, not the server. "
              "SLO gates treat this run as inconclusive.")
        doc.bullets(client["reasons"])
    else:
        doc.p("The load generator kept up: every process stayed under "
              f"{CPU_LIMIT:.0%} of a core with event-loop lag p99 under {client['lag_limit_ms']:.1f} ms "
              f"({LAG_P99_LIMIT_MS:g} ms, or {LAG_SHARE:.0%} of the median gap between tokens if larger)"
              f" (open loop also: send lateness and connection waits p99 under {LATENESS_P99_LIMIT_MS:g} "
              f"and {CONN_WAIT_P99_LIMIT_MS:g} ms).")
    doc.table(["process", "host", "CPU, mean (share of a core)", "CPU, busiest second", "loop lag p99 ms",
               "loop lag max ms"], [
        [p["proc"], p["host"], f"{p['cpu']:.0%}", f"{p['cpu_max']:.0%}", p["lag_p99_ms"], p["lag_max_ms"]]
        for p in client["processes"]
    ])
    cap = client.get("capacity")
    if cap:
        per_core = cap["responses_per_core_s"]
        doc.p(f"Streamed responses: {cap['responses_per_s']:,.0f}/s from {cap['processes']} Locust process(es)"
              + (f", {per_core:,.0f} per core-second of their CPU in this run" if per_core else "")
              + f"; that is {cap['ceiling_share_per_process']:.0%} of the recorded ceiling per process. "
              f"Ceiling: {cap['ceiling']}.")
        if cap["advice"]:
            doc.p(f"**Capacity**: {cap['advice']}.")


def _server_section(doc: Doc, results: dict[str, Any]) -> None:
    server = results.get("server", {})
    split = results.get("split")
    doc.h("Where the time went (server side)")
    if split:
        parts = split["parts"]
        doc.p(f"TTFT split of {split['requests']} requests from the engine's own per-request timestamps "
              "(`return_perf_metrics`). Mean parts add up to the mean client TTFT exactly "
              f"({split['parts_sum_mean_ms']:.2f} ms vs {split['ttft_mean_ms']:.2f} ms); requests with a negative "
              f"part (clock disagreement): {split['negative_parts']}."
              + (" Server and client share the monotonic clock, so the front end is split into the way in "
                 "(send → engine arrival) and the way out (first token → client)." if split["shared_clock"] else ""))
        order = ("send_delay", "front_in", "front_out", "front_end", "queue", "prefill", "decode")
        doc.table(["ms", *STAT_COLS], [[k] + [parts[k][s] for s in STAT_COLS] for k in order if k in parts])
    else:
        doc.p("The model returned no per-request perf metrics, so TTFT cannot be split.")
    trend = results.get("queue_trend")
    if trend:
        thirds = ", ".join(f"{v:.1f}" for v in trend["median_ms_by_third"])
        doc.p(f"Engine queue time over the run (median per third: {thirds} ms; slope "
              f"{trend['slope_ms_per_s']:+.2f} ms per second of run). A rising queue means requests arrive "
              "faster than the engine admits them.")
    stages = server.get("stages")
    if stages:
        doc.p("Per model, from Triton's statistics (`/v2/models/stats`, before vs after the run). For decoupled "
              "Python models the compute time ends when `execute()` returns, not at the last response.")
        doc.table(["model", "requests", "failures", "inferences", "executions", "batch size", "request ms",
                   "queue ms", "compute ms"],
                  [[m, s["requests"], s["failures"], s["inferences"], s["executions"], s["batch_size"],
                    s["request_ms"], s["queue_ms"], s["compute_ms"]] for m, s in stages.items()])
    from_metrics = server.get("metrics_stages")
    if from_metrics:
        doc.p("The same from the `/metrics` counters (increase over the run), as a cross-check:")
        doc.table(["model", "requests", "batch size", "queue ms", "compute (infer only) ms"],
                  [[m, s["requests"], s["batch_size"], s["queue_ms"], s["compute_ms"]] for m, s in from_metrics.items()])
    explained = server.get("split_vs_stages")
    if explained:
        doc.p(f"Front end: {explained['front_end_mean_ms']:.2f} ms per request, of which pre- and postprocessing "
              f"account for {explained['pre_post_ms']:.2f} ms; the remaining {explained['unexplained_ms']:.2f} ms are "
              "network, protocol handling and ensemble scheduling.")
    gauges = server.get("metrics", {}).get("gauges", {})
    if gauges:
        doc.p("Gauges sampled from `/metrics` every second during the run:")
        doc.table(["metric", "mean", "max"], [[k, v["mean"], v["max"]] for k, v in sorted(gauges.items())])


def _checks_section(doc: Doc, results: dict[str, Any]) -> None:
    checks = results["checks"]
    doc.h("Streamed output checks")
    if not checks["checked"]:
        doc.p("No streamed answers (non-streaming protocol): nothing to check.")
        return
    ref = checks["reference"]
    failures = checks["failures"]
    doc.p(f"{checks['checked']} streamed answers checked while under load; **{checks['failed_requests']}** failed a "
          f"check. {checks['with_reference']} could be compared with the same prompt asked again without streaming "
          f"after the run: {ref.get('equal', 0)} equal, {ref.get('detokenization', 0)} damaged by streaming, "
          f"{ref.get('diverged', 0)} where the engine generated different tokens (not a streaming fault). "
          f"Empty chunks before the last: {checks['empty_chunks']} (harmless when the text equals the one-piece "
          "text: a held-back character or a token that decodes to nothing).")
    doc.table(["check", "failures"], [
        ["no U+FFFD the one-piece text does not have", failures["replacement_char"]],
        ["no unexplained empty chunk before the last", failures["empty_chunk"]],
        ["server token count = requested length ≥ responses with text", failures["token_count"]],
        ["streamed text = one-piece text", failures["reference_mismatch"]],
    ])
    samples = checks["samples"]
    if samples:
        doc.p("Samples of failures (the streamed chunks, and the one-piece text where compared):")
        doc.pre("\n".join(json.dumps(s, ensure_ascii=True)[:700] for s in samples[:8]))
    if checks.get("reference_errors"):
        doc.p("Re-asking failed for: " + "; ".join(checks["reference_errors"][:5]))
    agree = results["tokens"].get("agreement", {})
    if agree:
        doc.p("Token counts, client tokenizer vs server (re-encoding text need not reproduce the generated "
              "tokens, so small differences are expected; input counts differ by any chat template):")
        doc.table(["tokens", "compared", "equal", "mean client − server"],
                  [[k, v["compared"], v["equal"], v["mean_client_minus_server"]] for k, v in agree.items()])


def _appendix(doc: Doc, results: dict[str, Any]) -> None:
    doc.h("Appendix: metric definitions")
    doc.bullets([
        "Every figure comes from exact per-request records (monotonic nanosecond timestamps of each response), "
        "never from Locust's statistics, which round (e.g. 147 ms is stored as 150 ms).",
        "**Scheduled send**: when the request was due. Closed loop: when the user sent it. Open loop: its slot in "
        "the seeded arrival schedule, so a stall shows up as latency, not as fewer requests.",
        "**TTFT**: scheduled send → first response carrying text.",
        "**ITL per gap**: time between two consecutive responses carrying text, pooled over all requests.",
        "**ITL per request**: (E2E − TTFT) / (output tokens − 1), output tokens as counted by the server "
        "(`num_output_tokens`), else by the model's tokenizer.",
        "**End-to-end (E2E)**: scheduled send → last response.",
        "**Send lateness**: actual send − scheduled send (open loop; the client's own delay).",
        "**Throughput**: successful requests and their output tokens divided by the window from the first "
        "scheduled send to the last answer. Warm-up requests are excluded from everything.",
        "**Percentiles**: linear interpolation between samples (numpy's default, as genai-perf and vLLM).",
        "**TTFT split**: send delay + front end + queue (arrival → first scheduled) + prefill (first scheduled → "
        "first token), from the engine's `arrival_time_ns`, `first_scheduled_time_ns`, `first_token_time_ns`; "
        "decode = first → last token.",
    ])
    eq = results.get("equivalents") or {}
    lat = results["latency_ms"]
    rows = []
    for label, ours, theirs in (
        ("TTFT (tritongen)", lat.get("ttft"), None),
        ("TTFT as genai-perf", (eq.get("genai_perf") or {}).get("ttft"), "first response (even empty) − actual send"),
        ("TTFT as vLLM benchmark", (eq.get("vllm") or {}).get("ttft"), "first chunk with text − actual send"),
        ("ITL per gap (tritongen)", lat.get("itl"), None),
        ("ITL as vLLM benchmark", (eq.get("vllm") or {}).get("itl"), "all gaps between chunks with text, pooled"),
        ("ITL per request (tritongen)", lat.get("itl_request"), None),
        ("ITL as genai-perf", (eq.get("genai_perf") or {}).get("itl"),
         "per request (E2E − TTFT)/(tokenizer-counted tokens − 1), from the actual send"),
        ("TPOT as vLLM benchmark", (eq.get("vllm") or {}).get("tpot"), "same as genai-perf's ITL, from first chunk with text"),
    ):
        if ours:
            rows.append([label, ours["mean"], ours["p50"], ours["p99"], theirs or "see above"])
    doc.p("The same raw records under the definitions of genai-perf and vLLM's benchmark_serving "
          "(ms), so the figures can be compared with numbers you already have:")
    doc.table(["figure", "mean", "p50", "p99", "definition"], rows)


def _loadtest_plots(doc: Doc, results: dict[str, Any]) -> None:
    plt = _plt()
    series = results.get("series") or []
    if not series:
        return
    lat = results["latency_ms"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    ttfts = [s["ttft_ms"] for s in series]
    axes[0].hist(ttfts, bins=min(40, max(5, len(ttfts) // 3)), color="#76b900")
    axes[0].set(title="TTFT", xlabel="ms", ylabel="requests")
    gaps = results.get("itl_gaps_sample_ms") or []
    if gaps:
        axes[1].hist(gaps, bins=40, color="#1f77b4")
        axes[1].set(title="Inter-token latency per gap", xlabel="ms", ylabel="gaps")
    for ax, key in ((axes[0], "ttft"), (axes[1], "itl")):
        if lat.get(key):
            for p, style in (("p50", "--"), ("p99", ":")):
                ax.axvline(lat[key][p], color="k", linestyle=style, label=f"{p} {lat[key][p]:.1f} ms")
            ax.legend(fontsize=8)
    doc.figure("latency_hist", fig, "Distributions of TTFT and per-gap ITL (exact, not Locust's rounded values)")

    fig, ax = plt.subplots(figsize=(11, 3.6))
    t = [s["t_s"] for s in series]
    ax.scatter(t, ttfts, s=8, label="TTFT", color="#76b900")
    queue = [(s["t_s"], s["queue_ms"]) for s in series if s["queue_ms"] is not None]
    if queue:
        ax.scatter([q[0] for q in queue], [q[1] for q in queue], s=8, label="engine queue", color="#d62728")
    ax.set(xlabel="request sent at (s into the run)", ylabel="ms", title="TTFT and engine queue time over the run")
    ax.legend(fontsize=8)
    doc.figure("timeline", fig, "Per request, by send time: a rising queue means the server is over capacity")

    split = results.get("split")
    if split:
        parts = split["ttft_parts"]
        fig, ax = plt.subplots(figsize=(11, 1.8))
        left = 0.0
        colours = {"send_delay": "#9467bd", "front_end": "#8c8c8c", "queue": "#d62728", "prefill": "#76b900",
                   "decode": "#1f77b4"}
        for k in parts:
            v = split["parts"][k]["mean"]
            ax.barh([0], [v], left=left, color=colours[k], label=f"{k} {v:.1f} ms")
            left += v
        ax.set(yticks=[], xlabel="ms", title=f"Mean TTFT {split['ttft_mean_ms']:.1f} ms split by stage")
        ax.legend(fontsize=8, ncol=len(parts), loc="upper center", bbox_to_anchor=(0.5, -0.45))
        doc.figure("ttft_split", fig, "Where the mean TTFT went")

    gauges = results.get("server", {}).get("metrics", {}).get("series", {})
    panels = (
        ("Requests in the server", lambda k: "pending_request_count" in k
         or ("nv_trt_llm_request_metrics" in k and 'request_type="max"' not in k)),
        ("KV-cache blocks in use", lambda k: "kv_cache_block_metrics" in k and 'kv_cache_block_type="used"' in k),
    )
    shown = [(title, {k: v for k, v in gauges.items() if pick(k) and any(y for _, y in v)}) for title, pick in panels]
    shown = [(title, series) for title, series in shown if series]
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(11, 3.4), squeeze=False)
        for ax, (title, series) in zip(axes[0], shown):
            for k, pts in sorted(series.items())[:8]:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k.split("{", 1)[-1].rstrip("}"))
            ax.set(xlabel="s into the run", title=title)
            ax.legend(fontsize=7)
        doc.figure("gauges", fig, "Triton gauges sampled every second: pending requests per model, the TensorRT-LLM "
                   "backend's request and KV-cache metrics")


def loadtest_doc(results: dict[str, Any]) -> Doc:
    run = results["run"]
    lt = run["loadtest"]
    doc = Doc(run["title"])
    load = (f"{lt['request_rate']:g} requests/s ({lt['arrival']} arrivals)" if lt["request_rate"] is not None
            else f"{lt['users']} users")
    doc.p(f"Target `{run['target']}`, model `{lt['model']}` over {lt['protocol']}, {run['mode']}: {load}, "
          f"{lt['duration_s']:g} s, prompts ~{lt['input_tokens_mean']} tokens in / {lt['output_tokens_mean']} out, "
          f"seed {lt['seed']}, {max(lt['workers'], 1)} Locust process(es).")
    c, tp = results["counts"], results["throughput"]
    slo = results.get("slo")
    verdicts = []
    if slo:
        verdicts.append(f"SLO **{slo['verdict'].upper()}**")
    verdicts.append("load generator **CLIENT-LIMITED**" if results["client"]["client_limited"] else "load generator kept up")
    doc.p(" · ".join(verdicts))
    doc.h("Summary")
    doc.table(["requests ok", "errors", "error rate", "window s", "requests/s", "output tokens/s", "input tokens/s"],
              [[c["ok"], c["errors"], f"{(results['error_rate'] or 0):.2%}", results["window_s"],
                tp["requests_per_s"], tp["output_tokens_per_s"], tp["input_tokens_per_s"]]])
    _latency_table(doc, results["latency_ms"])
    _slo_section(doc, slo)
    _loadtest_plots(doc, results)
    _client_section(doc, results["client"])
    _server_section(doc, results)
    _checks_section(doc, results)
    if results["error_samples"]:
        doc.h("Errors")
        doc.table(["message", "count"], [[e["message"][:200], e["count"]] for e in results["error_samples"]])
    _appendix(doc, results)
    return doc


def write_loadtest_report(out_dir: Path, results: dict[str, Any]) -> None:
    """results.json, report.md, report.html, plots/*.png."""
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, default=str))
    loadtest_doc(results).write(out_dir)


# ---------------------------------------------------------------- sweeps


POINT_COLUMNS = ("point", "status", "requests_per_s", "output_tokens_per_s", "ttft_p50_ms", "ttft_p95_ms",
                 "ttft_p99_ms", "itl_p50_ms", "itl_p95_ms", "itl_p99_ms", "e2e_p95_ms", "queue_p95_ms",
                 "error_rate", "client_limited", "slo", "detail")


def point_row(point: dict[str, Any]) -> dict[str, Any]:
    """One flat row per sweep point (the CSV and the tables)."""
    r = point.get("results") or {}
    lat = r.get("latency_ms", {})
    split = (r.get("split") or {}).get("parts", {})

    def stat(block: Optional[dict[str, float]], key: str) -> Optional[float]:
        return block[key] if block else None

    return {
        "point": point["label"],
        "status": point["status"],
        "requests_per_s": (r.get("throughput") or {}).get("requests_per_s"),
        "output_tokens_per_s": (r.get("throughput") or {}).get("output_tokens_per_s"),
        "ttft_p50_ms": stat(lat.get("ttft"), "p50"), "ttft_p95_ms": stat(lat.get("ttft"), "p95"),
        "ttft_p99_ms": stat(lat.get("ttft"), "p99"),
        "itl_p50_ms": stat(lat.get("itl"), "p50"), "itl_p95_ms": stat(lat.get("itl"), "p95"),
        "itl_p99_ms": stat(lat.get("itl"), "p99"),
        "e2e_p95_ms": stat(lat.get("e2e"), "p95"), "queue_p95_ms": stat(split.get("queue"), "p95"),
        "error_rate": r.get("error_rate"),
        "client_limited": (r.get("client") or {}).get("client_limited"),
        "slo": (r.get("slo") or {}).get("verdict"),
        "detail": point.get("detail", ""),
    }


def _sweep_plots(doc: Doc, rows: list[dict[str, Any]]) -> None:
    plt = _plt()
    done = [r for r in rows if r["status"] == "ok" and r["output_tokens_per_s"]]
    if not done:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "ttft", "TTFT"), (axes[1], "itl", "ITL per gap")):
        for pct, marker in (("p50", "o-"), ("p95", "s--")):
            pts = [(r["output_tokens_per_s"], r[f"{metric}_{pct}_ms"], r["point"]) for r in done if r[f"{metric}_{pct}_ms"]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=pct)
                for x, y, label in pts:
                    ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="output tokens/s", ylabel="ms", title=f"Throughput vs {title}")
        ax.legend(fontsize=8)
    doc.figure("throughput_latency", fig, "Throughput against latency, one point per setting (labelled)")

    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(done))
    for ax, metric, title in ((axes[0], "ttft", "TTFT"), (axes[1], "itl", "ITL per gap")):
        for i, pct in enumerate(("p50", "p95", "p99")):
            ax.bar(x + (i - 1) * 0.27, [r[f"{metric}_{pct}_ms"] or 0 for r in done], width=0.27, label=pct)
        ax.set_xticks(x, [r["point"] for r in done], rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="ms", title=f"{title} percentiles per setting")
        ax.legend(fontsize=8)
    doc.figure("percentiles", fig, "Percentile bars per setting")


def sweep_doc(title: str, points: list[dict[str, Any]], best: Optional[dict[str, Any]], slo_text: Optional[str]) -> Doc:
    rows = [point_row(p) for p in points]
    doc = Doc(title)
    doc.p(f"{len(points)} settings, each rendered, validated, served, warmed up and loaded with the same seeded "
          f"load; {sum(r['status'] == 'ok' for r in rows)} completed."
          + (f" SLO: `{slo_text}`." if slo_text else ""))
    if best:
        doc.p(f"Best setting under the SLO: **{best['label']}** ({best['reason']}).")
    elif slo_text:
        doc.p("**No setting passed the SLO** (inconclusive points — client-limited or unmeasured — do not count).")
    doc.h("Points")
    doc.table(["setting", "status", "req/s", "out tok/s", "TTFT p50", "TTFT p95", "ITL p50", "ITL p95",
               "queue p95", "errors", "client-limited", "SLO"],
              [[r["point"], r["status"] if r["status"] == "ok" else f"**{r['status'].upper()}**: {r['detail']}",
                r["requests_per_s"], r["output_tokens_per_s"], r["ttft_p50_ms"], r["ttft_p95_ms"], r["itl_p50_ms"],
                r["itl_p95_ms"], r["queue_p95_ms"],
                None if r["error_rate"] is None else f"{r['error_rate']:.2%}", r["client_limited"],
                (r["slo"] or "").upper() or None] for r in rows])
    _sweep_plots(doc, rows)
    doc.p("Each point's own report (latency split, server stages, checks) is in its folder: `points/<n>/report.html`.")
    return doc


def write_sweep_report(out_dir: Path, title: str, points: list[dict[str, Any]], best: Optional[dict[str, Any]],
                       slo_text: Optional[str]) -> None:
    """points.json (every point's full results), points.csv (one row each), report.md, report.html."""
    atomic_write_text(out_dir / "points.json", json.dumps({"points": points, "best": best}, indent=2, default=str))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=POINT_COLUMNS)
    writer.writeheader()
    writer.writerows(point_row(p) for p in points)
    atomic_write_text(out_dir / "points.csv", buf.getvalue())
    sweep_doc(title, points, best, slo_text).write(out_dir)
