"""``tritongen demo``: the whole pipeline on the CPU with a tiny model."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from generator.cli._app import Force, Output, Sets, app, console, escape, out
from generator.fsutil import check_writable_target, write_marker


@app.command()
def demo(
    out_dir: Output = Path("demo-out"),
    force: Force = False,
    overrides: Sets = None,
) -> None:
    """Tiny Qwen3 → NVFP4 + FP8 KV → plan → repositories → real tritonserver for the ensemble and the LLM-API model → smoke → load test → sweep."""
    from generator.cli.printing import print_plan
    from generator.demo import TARGET_COLUMNS, DemoRun, demo_overrides, demo_stages, run_stages, target_rows
    from generator.spec import load_spec

    sets = list(overrides or [])
    load_spec(None, [*demo_overrides(out_dir / "tiny-model", out_dir / "artifacts"), *sets])  # a bad --set stops here
    check_writable_target(out_dir, force, f"tritongen demo -o {out_dir}", fill_in_place=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir)
    run = DemoRun(out=out_dir.resolve(), overrides=sets)
    started = time.monotonic()
    with contextlib.ExitStack() as stack, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = {"id": None}

        def on_start(name: str) -> None:
            task["id"] = progress.add_task(escape(name), total=None)

        def on_end(result) -> None:
            progress.remove_task(task["id"])
            mark = "[green]✓[/]" if result.ok else "[bold red]✗[/]"
            console.print(f"{mark} {escape(result.name)} [dim]({result.seconds:.1f} s)[/] {escape(result.detail)}")
            if result.log:
                console.print(f"  log: {escape(str(result.log))}")

        def show_plan(plan) -> None:
            progress.stop()
            print_plan(plan)
            progress.start()

        run_stages(run, demo_stages(run, stack, show_plan=show_plan), on_start, on_end)

    table = Table(title=f"tritongen demo: {'passed' if run.ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    for col in ("stage", "seconds", "result"):
        table.add_column(col, overflow="fold")
    for s in run.stages:
        table.add_row(("" if s.ok else "[red]") + escape(s.name), f"{s.seconds:.1f}", escape(s.detail))
    out.print(table)
    rows = target_rows(run.figures)
    if rows:
        side = Table(title="served targets side by side (same checkpoint, same CPU engine)")
        for col in TARGET_COLUMNS:
            side.add_column(col, overflow="fold")
        for row in rows:
            side.add_row(*(escape(v) for v in row))
        out.print(side)
    for engine, figures in run.figures.get("targets", {}).items():
        if "loadtest" in figures:
            out.print(f"load test report ({escape(engine)}): {escape(figures['loadtest']['report'])}")
    if "sweep" in run.figures:
        out.print(f"sweep report: {escape(str(run.figures['sweep']['report']))}")
    out.print(f"summary: {escape(str(run.out / 'demo-summary.json'))}")
    if not run.ok:
        raise typer.Exit(1)
