"""The tune report: per setting its goodput with intervals and request counts (or why it has none), the
levels measured, predicted against measured knees, the Pareto front, the winner, the repeats, and the
plots (goodput per setting with error bars, latency against load per setting, the front). tune.json is
the whole TuneResult."""

from __future__ import annotations

import json
from pathlib import Path

from generator.fsutil import atomic_write_text
from generator.measure.report_doc import Doc, interval_cell, pyplot
from generator.measure.tune_results import SettingResult, SettingStatus, TuneResult


def _plots(doc: Doc, result: TuneResult) -> None:
    plt = pyplot()
    measured = [s for s in result.settings if s.search is not None and s.search.levels]
    with_goodput = [s for s in measured if s.goodput is not None]
    unit = "users" if result.mode == "closed loop" else "requests/s"
    if with_goodput:
        fig, ax = plt.subplots(figsize=(9, 4))
        est = [s.goodput.output_tokens_per_s_per_gpu.estimate for s in with_goodput]
        err = [[e - s.goodput.output_tokens_per_s_per_gpu.low for e, s in zip(est, with_goodput)],
               [s.goodput.output_tokens_per_s_per_gpu.high - e for e, s in zip(est, with_goodput)]]
        ax.bar(range(len(est)), est, yerr=err, capsize=4, color="#76b900")
        ax.set_xticks(range(len(est)), [f"{s.label}\n@{s.goodput.load:g} (n={s.goodput.requests})" for s in with_goodput],
                      fontsize=7)
        ax.set(ylabel="output tokens/s per GPU", title="Goodput per setting (95% interval)")
        doc.figure("goodput", fig, "Goodput per setting: output tokens/s per GPU at its highest passing load, "
                   "with the 95% interval and the requests behind it")
    if measured:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for s in measured:
            levels = sorted(s.search.levels, key=lambda lv: lv.load)
            for ax, key in ((axes[0], "ttft_p95_ms"), (axes[1], "itl_p95_ms")):
                pts = [(lv.load, getattr(lv.figures, key)) for lv in levels if getattr(lv.figures, key) is not None]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1].estimate for p in pts],
                                yerr=[[p[1].estimate - p[1].low for p in pts], [p[1].high - p[1].estimate for p in pts]],
                                marker="o", capsize=3,
                                label=f"{s.label} (n={min(lv.figures.requests for lv in levels)}–"
                                      f"{max(lv.figures.requests for lv in levels)} per level)")
        for ax, title in ((axes[0], "TTFT p95"), (axes[1], "ITL p95 (per-request mean)")):
            ax.set(xlabel=f"load ({unit})", ylabel="ms", title=f"{title} against load")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        doc.figure("latency_load", fig, "Latency against load per setting (95% bootstrap intervals)")
    if with_goodput:
        fig, ax = plt.subplots(figsize=(7, 4))
        for s in with_goodput:
            g = s.goodput
            if g.ttft_p95_ms is None:
                continue
            on = s.label in result.front
            ax.scatter([g.ttft_p95_ms.estimate], [g.output_tokens_per_s_per_gpu.estimate],
                       color="#76b900" if on else "#888888", s=40)
            ax.annotate(f"{s.label} (n={g.requests})", (g.ttft_p95_ms.estimate, g.output_tokens_per_s_per_gpu.estimate), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        front = sorted((s.goodput.ttft_p95_ms.estimate, s.goodput.output_tokens_per_s_per_gpu.estimate)
                       for s in with_goodput if s.label in result.front and s.goodput.ttft_p95_ms)
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="#76b900")
        ax.set(xlabel="TTFT p95 at goodput (ms)", ylabel="output tokens/s per GPU", title="Pareto front")
        doc.figure("front", fig, "Throughput per GPU against latency at each setting's goodput; the front in green")


def setting_cells(s: SettingResult) -> dict[str, str]:
    """One setting's figures as table cells (the report's table and the CLI's)."""
    g, sr, pr = s.goodput, s.search, s.prediction
    return {
        "goodput load": f"{g.load:g}" if g else "–",
        "req/s per GPU [95%] (n)": interval_cell(g.requests_per_s_per_gpu, "{:.2f}") if g else "–",
        "out tok/s per GPU [95%] (n)": interval_cell(g.output_tokens_per_s_per_gpu) if g else "–",
        "attainment [95%] (n)": interval_cell(g.attainment, "{:.3f}") if g else "–",
        "broke at": f"{sr.breaking_load:g}" if sr and sr.breaking_load is not None else "–",
        "broke first": (sr.broke_first or "–") if sr else "–",
        "predicted KV-full concurrency": f"{pr.concurrency}" if pr and pr.concurrency is not None else "–",
        "seconds": f"{s.seconds:.0f}",
    }


def tune_doc(result: TuneResult, best_repo_problems: list[str]) -> Doc:
    unit = "users" if result.mode == "closed loop" else "requests/s"
    doc = Doc("tritongen tune")
    doc.p(f"SLO `{result.slo}` met by at least {result.attainment:.0%} of the requests of a level (judged on the "
          f"95% Wilson interval of the share); {result.mode}, load in {unit}. {len(result.settings)} settings; "
          f"{result.elapsed_s / 60:.1f} min" + (f" of a {result.budget_min:g}-minute budget." if result.budget_min else "."))
    if result.best:
        doc.p(f"Best: **{result.best.label}**: {result.best.reason}.")
        doc.p("The winner is written as a spec (`best.yaml`) and a rendered, validated repository (`best-repo/`)"
              + (f"; the validator found: {'; '.join(best_repo_problems)}." if best_repo_problems else "."))
    else:
        doc.p("**No setting met the SLO at any load measured.**")
    if result.runner_up:
        doc.p(f"Runner-up: {result.runner_up.label}: {result.runner_up.reason}.")
    if result.left:
        doc.p(f"Left by the budget or the search: {result.left}.")
    doc.h("Settings")
    cells = [setting_cells(s) for s in result.settings]
    doc.table(["setting", "status"] + [f"goodput load ({unit})" if k == "goodput load" else k for k in cells[0]],
              [[s.label, s.status if s.status is SettingStatus.MEASURED else f"**{s.status.upper()}**: {s.reason}",
                *c.values()] for s, c in zip(result.settings, cells)])
    doc.p("Predicted KV-full concurrency: requests whose prompt and answer fit in the KV cache at once, capped by "
          "the batch slots; above it requests queue, so the measured knee should not lie far above it.")
    for s in result.settings:
        if s.prediction:
            doc.bullets([f"{s.label}: {s.prediction.source}"])
    doc.h("Pareto front")
    doc.p("Goodput per GPU against TTFT p95 at that load: " + (", ".join(result.front) or "no setting had a goodput") + ".")
    if result.repeats:
        doc.h("Repeats")
        doc.table(["setting", "load", "runs (incl. the search's)", "passed again", "out tok/s per GPU across runs [95%]"],
                  [[r.label, f"{r.load:g}", len(r.runs) + 1, f"{r.passed}/{len(r.runs) + len(r.failed)}",
                    interval_cell(r.output_tokens_per_s_per_gpu)] for r in result.repeats])
        failed = [f"{r.label}, {why}" for r in result.repeats for why in r.failed]
        if failed:
            doc.p("**Repeats that failed** (they measured nothing; their logs are in repeats/):")
            doc.bullets(failed)
        doc.p(f"Order of winner and runner-up: {result.order}.")
    _plots(doc, result)
    doc.h("Levels measured")
    for s in result.settings:
        if not s.search:
            continue
        doc.p(f"**{s.label}**: {s.search.note}.")
        doc.table(["load", "rounds", "verdict", "attainment [95%] (n)", "out tok/s [95%] (n)", "TTFT p95 ms [95%] (n)",
                   "ITL p95 ms [95%] (n)", "why"],
                  [[f"{lv.load:g}", lv.rounds, lv.verdict, interval_cell(lv.figures.attainment, "{:.3f}"),
                    interval_cell(lv.figures.output_tokens_per_s), interval_cell(lv.figures.ttft_p95_ms), interval_cell(lv.figures.itl_p95_ms),
                    lv.reason] for lv in s.search.levels])
    doc.p("Each level's rounds are in `settings/<n>/levels/<load>-<round>/` (records.jsonl, results.json).")
    return doc


def write_tune_report(out_dir: Path, result: TuneResult, best_repo_problems: list[str]) -> None:
    """tune.json, report.md, report.html, plots/*.png."""
    atomic_write_text(out_dir / "tune.json", json.dumps(result.model_dump(mode="json"), indent=2))
    tune_doc(result, best_repo_problems).write(out_dir)
