"""`tritongen tune`: which serving settings, for which load, under my SLO (sweep is the fixed-load grid)."""

from __future__ import annotations

from pathlib import Path

import typer

from generator.cli._app import (
    AxisSets, Force, Output, SpecPath, app, console, cuda_visible, escape, out, spec_option, spec_overrides, step,
)
from generator.errors import SpecError
from generator.measure.tune_results import SettingStatus, TuneResult
from generator.spec import load_spec

Slo = spec_option("loadtest.slo", "--slo")
Attainment = spec_option("tune.attainment", "--attainment")
Rate = spec_option("tune.start_rate", "--rate")
Budget = spec_option("tune.budget_min", "--budget")
Repeat = spec_option("tune.repeat", "--repeat")


@app.command()
def tune(
    spec_path: SpecPath = None,
    sets: AxisSets = None,
    slo: Slo = None,
    attainment: Attainment = None,
    rate: Rate = None,
    budget: Budget = None,
    repeat: Repeat = None,
    output: Output = Path("tune-results"),
    force: Force = False,
) -> None:
    """Find each setting's goodput (the highest load meeting the SLO) and the best setting, with intervals.

    Exit codes: 0 a setting met the SLO (its spec is DIR/best.yaml), 1 none did, 2 bad input.
    """
    from generator.fsutil import atomic_dir
    from generator.measure.slo import EXIT_FAIL
    from generator.measure.sweep import plan_sweep
    from generator.measure.tune import run_tune

    plan = plan_sweep(list(sets or []), need_axis=False)
    flags = spec_overrides(tune, locals())
    spec = load_spec(spec_path, flags + plan.fixed)
    if not spec.loadtest.slo:
        raise SpecError("tune needs an SLO", where="--slo", fix='e.g. --slo "ttft_p95<500ms,itl_p95<50ms"')
    refusals = []
    for overrides in plan.points:  # a setting the spec refuses is reported as such; all refused: bad input
        try:
            load_spec(spec_path, flags + overrides)
        except SpecError as exc:
            refusals.append(exc)
    if len(refusals) == len(plan.points):
        raise refusals[0]
    console.print(f"{len(plan.points)} settings: " + escape("; ".join(plan.label(p) for p in plan.points)))
    with atomic_dir(output, force=force, command_hint="tritongen tune ... -o " + str(output), protected=spec.named_paths()) as tmp:
        with step("tune"):
            result = run_tune(spec, plan, tmp, gpu_visible=cuda_visible(), progress=lambda m: console.print(f"  {escape(m)}"))
    _print_tune(result, output.resolve())
    if result.best is None:
        raise typer.Exit(code=EXIT_FAIL)


def _print_tune(result: TuneResult, out_dir: Path) -> None:
    from rich.table import Table

    from generator.measure.report_tune import setting_cells

    unit = "users" if result.mode == "closed loop" else "req/s"
    table = Table(title=f"tune: {escape(result.slo)} at {result.attainment:.0%} ({result.mode})")
    shown = ("goodput load", "out tok/s per GPU [95%] (n)", "broke at", "broke first", "predicted KV-full concurrency")
    for col in ("setting", "status", *shown):
        table.add_column(f"goodput ({unit})" if col == "goodput load" else col, overflow="fold")
    for s in result.settings:
        status = s.status.value if s.status is SettingStatus.MEASURED else f"[yellow]{s.status}[/]: {escape(s.reason[:80])}"
        cells = setting_cells(s)
        table.add_row(escape(s.label), status, *(escape(cells[k]) for k in shown))
    out.print(table)
    if result.best:
        out.print(f"best: [bold]{escape(result.best.label)}[/] ({escape(result.best.reason)})")
    else:
        out.print("[yellow]no setting met the SLO at any load measured[/]")
    if result.order:
        out.print(f"winner vs runner-up across repeats: {escape(result.order)}")
    if result.left:
        out.print(f"[yellow]left:[/] {escape(result.left)}")
    console.print(f"report: {escape(str(out_dir / 'report.html'))} (and report.md, tune.json, best.yaml, best-repo/)")
