"""``tritongen loadtest --repeat N``: the same seeded load N times on one server, every run kept.

Each run is a whole load-test folder (OUT/run-01, ...); the repeat's own report gives every compared
figure per run, its spread, the run-to-run interval (Student t over the runs) and the per-request interval
(bootstrap over the pooled requests), with the number of runs and requests behind each. The server is
started once (or the one at ``url`` is used), so the runs differ only by what varies between runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from generator.errors import LoadTestError, ServerError
from generator.fsutil import atomic_write_text
from generator.measure import baseline
from generator.measure.ci import fmt
from generator.measure.evidence import Evidence, FigureSummary
from generator.measure.metrics import METRICS
from generator.measure.report_doc import Doc
from generator.measure.runner import LoadResult, run_loadtest, serving
from generator.spec import Spec


def run_repeated(spec: Spec, out_dir: Path, *, repo_dir: Optional[Path] = None, url: Optional[str] = None,
                 grpc_url: Optional[str] = None, metrics_url: Optional[str] = None, admin_key: Optional[str] = None,
                 title: str = "tritongen load test", source: Optional[str] = None, progress: Callable[[str], None] = lambda _: None,
                 ) -> tuple[list[LoadResult], Evidence]:
    """Run ``spec.loadtest.repeat`` load tests into OUT/run-NN and write OUT/repeat.json and its report
    (``source``: the folder's final name, when OUT is a temporary folder renamed into place)."""
    n = spec.loadtest.repeat
    out_dir = Path(out_dir).resolve()
    runs = []
    with serving(repo_dir, url, grpc_url, metrics_url, out_dir / "triton.log", admin_key) as ep:
        for i in range(1, n + 1):
            folder = out_dir / f"run-{i:02d}"
            folder.mkdir()
            try:
                runs.append(run_loadtest(spec, folder, url=ep.http_url, grpc_url=ep.grpc_url, metrics_url=ep.metrics_url,
                                         admin_key=ep.admin_key, manifest_dir=repo_dir, title=f"{title}, run {i} of {n}"))
            except ServerError as exc:  # review25: the server died in an earlier run ("--url" named as the cause, the
                # runs made and the server's log deleted); as a failed run, the folder is kept and compare refuses it
                raise LoadTestError(f"run {i} of {n} found no server: {exc.message}", where=str(
                    out_dir / "triton.log") if repo_dir else ep.http_url, fix="the server stopped answering before this "
                    "run (the runs before it and the server's log say why); mend that, then run the repeat again") from None
            r = runs[-1].results
            progress(f"run {i}/{n}: {r.counts.ok} ok, TTFT p95 "
                     f"{r.latency_ms.ttft.p95 if r.latency_ms.ttft else float('nan'):.1f} ms")
    ev = baseline.from_folder(out_dir).model_copy(update={"source": source or str(out_dir)})
    atomic_write_text(out_dir / "repeat.json", json.dumps(ev.model_dump(mode="json"), indent=1))
    repeat_doc(title, ev).write(out_dir)
    return runs, ev


def _row(f: FigureSummary) -> list[str]:
    metric = METRICS[f.metric]

    def iv(i):
        return "–" if i is None else f"{fmt(i.low, metric.unit)} – {fmt(i.high, metric.unit)}"

    return [metric.label, " · ".join(fmt(v, metric.unit) for v in f.runs), fmt(f.mean, metric.unit),
            "–" if f.spread is None else f"{f.spread:.1%}", "–" if f.cv is None else f"{f.cv:.1%}",
            iv(f.run_to_run), iv(f.within), str(f.requests)]


def repeat_doc(title: str, ev: Evidence) -> Doc:
    doc = Doc(f"{title}: {len(ev.runs)} runs")
    doc.p(f"The same seeded load {len(ev.runs)} times on one server; each run's full report is in its "
          "run-NN folder. Spread = (max − min) / mean over the runs; CV = standard deviation / mean. "
          "Run-to-run: 95% Student-t interval of the mean over runs (what a release gate should use). "
          "Per request: 95% bootstrap interval over all runs' requests pooled (Wilson for shares); it "
          "ignores what moves between runs, so it is narrower.")
    if ev.client_limited:
        doc.p("**CLIENT-LIMITED** runs (a gate on them is inconclusive): " + "; ".join(ev.client_limited))
    doc.table(["figure", "per run", "mean", "spread", "CV", "run-to-run interval", "per-request interval",
               "requests"], [_row(f) for f in ev.summary])
    return doc
