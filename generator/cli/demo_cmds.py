"""``tritongen demo``: the whole pipeline on the CPU with a tiny model."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from generator.cli._app import app, console, out
from generator.fsutil import check_writable_target, write_marker


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for everything the demo makes."),
    force: bool = typer.Option(False, "--force", help="Replace an existing demo folder."),
) -> None:
    """Tiny Qwen3 → NVFP4 + FP8 KV → plan → two repositories → real tritonserver → smoke → load test → sweep."""
    from generator.cli.plan_cmds import print_plan
    from generator.demo import DemoRun, demo_stages, run_stages

    check_writable_target(out_dir, force, f"tritongen demo --out {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir)
    run = DemoRun(out=out_dir.resolve())
    started = time.monotonic()
    with contextlib.ExitStack() as stack, Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        task = {"id": None}

        def on_start(name: str) -> None:
            task["id"] = progress.add_task(name, total=None)

        def on_end(result) -> None:
            progress.remove_task(task["id"])
            mark = "[green]✓[/]" if result.ok else "[bold red]✗[/]"
            console.print(f"{mark} {result.name} [dim]({result.seconds:.1f} s)[/] {result.detail}")
            if result.log:
                console.print(f"  log: {result.log}")

        def show_plan(plan) -> None:
            progress.stop()
            print_plan(plan)
            progress.start()

        run_stages(run, demo_stages(run, stack, show_plan=show_plan), on_start, on_end)

    table = Table(title=f"tritongen demo: {'passed' if run.ok else 'FAILED'} in {time.monotonic() - started:.0f} s")
    for col in ("stage", "seconds", "result"):
        table.add_column(col, overflow="fold")
    for s in run.stages:
        table.add_row(("" if s.ok else "[red]") + s.name, f"{s.seconds:.1f}", s.detail)
    out.print(table)
    for key in ("loadtest", "sweep"):
        if key in run.figures:
            out.print(f"{key} report: {run.figures[key]['report']}")
    out.print(f"summary: {run.out / 'demo-summary.json'}")
    if not run.ok:
        raise typer.Exit(1)
