"""The sweep report page: every point (failed ones with their reason), the best one, and the plots;
points.csv has one flat row per point, points.json every point's full results."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel

from generator.fsutil import atomic_write_text
from generator.measure.metrics import LATENCY_BY_KEY
from generator.measure.report_doc import Doc, interval_cell, pyplot
from generator.measure.results import BestPoint, Dist, PointStatus, SweepPoint, SweepResult, Verdict


class PointRow(BaseModel):
    """One flat row per sweep point: the CSV, the report's table and the CLI's."""

    point: str
    status: PointStatus
    requests_per_s: Optional[float]
    output_tokens_per_s: Optional[float]
    ttft_p50_ms: Optional[float]
    ttft_p95_ms: Optional[float]
    ttft_p99_ms: Optional[float]
    itl_p50_ms: Optional[float]
    itl_p95_ms: Optional[float]
    itl_p99_ms: Optional[float]
    e2e_p95_ms: Optional[float]
    queue_p95_ms: Optional[float]
    error_rate: Optional[float]
    client_limited: Optional[bool]
    slo: Optional[Verdict]
    detail: str
    requests: Optional[int] = None
    """Measured requests behind the point's figures."""
    requests_per_s_low: Optional[float] = None
    requests_per_s_high: Optional[float] = None
    output_tokens_per_s_low: Optional[float] = None
    output_tokens_per_s_high: Optional[float] = None
    """95% interval of throughput in the run's steady part (attainment.level_figures)."""
    ttft_p95_low_ms: Optional[float] = None
    ttft_p95_high_ms: Optional[float] = None
    attainment: Optional[float] = None
    """Share of requests meeting every per-request SLO limit (all requests without an SLO, errors aside)."""
    attainment_low: Optional[float] = None
    attainment_high: Optional[float] = None


POINT_COLUMNS = tuple(PointRow.model_fields)


def point_row(point: SweepPoint) -> PointRow:
    r = point.results

    def stat(d: Optional[Dist], name: str) -> Optional[float]:
        return getattr(d, name) if d else None

    f = point.figures
    bounds = {}
    if f is not None:
        for key, iv in (("requests_per_s", f.requests_per_s), ("output_tokens_per_s", f.output_tokens_per_s),
                        ("attainment", f.attainment)):
            bounds[f"{key}_low"], bounds[f"{key}_high"] = iv.low, iv.high
        if f.ttft_p95_ms is not None:
            bounds["ttft_p95_low_ms"], bounds["ttft_p95_high_ms"] = f.ttft_p95_ms.low, f.ttft_p95_ms.high
    lat = r.latency_ms if r else None
    ttft, itl = (lat.ttft, lat.itl) if lat else (None, None)
    return PointRow(
        point=point.label,
        status=point.status,
        requests_per_s=r.throughput.requests_per_s if r else None,
        output_tokens_per_s=r.throughput.output_tokens_per_s if r else None,
        ttft_p50_ms=stat(ttft, "p50"), ttft_p95_ms=stat(ttft, "p95"), ttft_p99_ms=stat(ttft, "p99"),
        itl_p50_ms=stat(itl, "p50"), itl_p95_ms=stat(itl, "p95"), itl_p99_ms=stat(itl, "p99"),
        e2e_p95_ms=stat(lat.e2e if lat else None, "p95"),
        queue_p95_ms=stat(r.split.parts.get("queue") if r and r.split else None, "p95"),
        error_rate=r.error_rate if r else None,
        client_limited=r.client.client_limited if r else None,
        slo=r.slo.verdict if r and r.slo else None,
        detail=point.detail,
        requests=f.requests if f else None,
        attainment=f.attainment.estimate if f else None,
        **bounds,
    )


def _sweep_plots(doc: Doc, rows: list[PointRow]) -> None:
    plt = pyplot()
    done = [r for r in rows if r.status is PointStatus.OK and r.output_tokens_per_s]
    if not done:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in ((axes[0], "ttft"), (axes[1], "itl")):
        title = LATENCY_BY_KEY[metric].label
        for pct, marker in (("p50", "o-"), ("p95", "s--")):
            pts = [(r.output_tokens_per_s, y, f"{r.point} (n={r.requests})" if r.requests else r.point)
                   for r in done if (y := getattr(r, f"{metric}_{pct}_ms"))]
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
    for ax, metric in ((axes[0], "ttft"), (axes[1], "itl")):
        title = LATENCY_BY_KEY[metric].label
        for i, pct in enumerate(("p50", "p95", "p99")):
            ax.bar(x + (i - 1) * 0.27, [getattr(r, f"{metric}_{pct}_ms") or 0 for r in done], width=0.27, label=pct)
        ax.set_xticks(x, [f"{r.point} (n={r.requests})" if r.requests else r.point for r in done], rotation=20,
                      ha="right", fontsize=8)
        ax.set(ylabel="ms", title=f"{title} percentiles per setting")
        ax.legend(fontsize=8)
    doc.figure("percentiles", fig, "Percentile bars per setting")


def sweep_doc(title: str, points: list[SweepPoint], best: Optional[BestPoint], slo_text: Optional[str]) -> Doc:
    rows = [point_row(p) for p in points]
    doc = Doc(title)
    doc.p(f"{len(points)} settings, each rendered, validated, served, warmed up and loaded with the same seeded "
          f"load; {sum(r.status is PointStatus.OK for r in rows)} completed."
          + (f" SLO: `{slo_text}`." if slo_text else "")
          + " Every figure is at this one load: a setting that would sustain twice the load looks the same here as "
            "one that barely copes (`tritongen tune` finds the load each setting sustains under an SLO).")
    if best:
        doc.p(f"Best setting under the SLO at this load: **{best.label}** ({best.reason}).")
    elif slo_text:
        doc.p("**No setting passed the SLO** (inconclusive points — client-limited or unmeasured — do not count).")
    doc.h("Points")
    doc.table(["setting", "status", "requests", "req/s [95%] (n)", "out tok/s [95%] (n)", "TTFT p50", "TTFT p95 [95%] (n)",
               "ITL p50", "ITL p95", "queue p95", "errors", "SLO attainment [95%] (n)", "client-limited", "SLO"],
              [[r.point, r.status if r.status is PointStatus.OK else f"**{r.status.upper()}**: {r.detail}",
                p.figures.requests if p.figures else None,
                interval_cell(p.figures.requests_per_s, "{:.2f}") if p.figures else r.requests_per_s,
                interval_cell(p.figures.output_tokens_per_s) if p.figures else r.output_tokens_per_s,
                r.ttft_p50_ms, interval_cell(p.figures.ttft_p95_ms) if p.figures else r.ttft_p95_ms, r.itl_p50_ms,
                r.itl_p95_ms, r.queue_p95_ms,
                None if r.error_rate is None else f"{r.error_rate:.2%}",
                interval_cell(p.figures.attainment, "{:.3f}") if p.figures else None, r.client_limited,
                r.slo.upper() if r.slo else None] for r, p in zip(rows, points)])
    doc.p("Intervals: throughput over the run's steady part (t over time slices), TTFT p95 by bootstrap, the "
          "attainment share by Wilson score; n is the requests behind each. Percentiles without an interval "
          "rest on the same requests.")
    _sweep_plots(doc, rows)
    doc.p("Each point's own report (latency split, server stages, checks) is in its folder: `points/<n>/report.html`.")
    for p in points:
        if p.status is PointStatus.OK and p.detail:
            doc.p(f"Point {p.label}: {p.detail}.")
    return doc


def write_sweep_report(out_dir: Path, title: str, result: SweepResult, slo_text: Optional[str]) -> None:
    """points.json (every point's full results), points.csv (one row each), report.md, report.html."""
    atomic_write_text(out_dir / "points.json", json.dumps(result.model_dump(mode="json"), indent=2))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=POINT_COLUMNS)
    writer.writeheader()
    writer.writerows(point_row(p).model_dump(mode="json") for p in result.points)
    atomic_write_text(out_dir / "points.csv", buf.getvalue())
    sweep_doc(title, result.points, result.best, slo_text).write(out_dir)
