"""Commands about the Triton repository: render it from a spec, validate it offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from generator.cli._app import Force, Output, Sets, SpecPath, app, console, cuda_visible, get_spec, out, step


_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow"}


def print_problems(problems: list, repo: Path) -> None:
    """A table of problems (severity, file:line, what, fix), errors first, or one line saying the repository is fine."""
    from rich.table import Table

    from generator.repo.problems import Severity

    if not problems:
        console.print(f"[green]✓[/] {escape(str(repo))}: no problems found")
        return
    errors = sum(p.severity == "error" for p in problems)
    title = f"{errors} error(s), {len(problems) - errors} warning(s) in {escape(str(repo))}"
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("where", overflow="fold", ratio=3)
    table.add_column("problem", overflow="fold", ratio=4)
    table.add_column("fix", overflow="fold", ratio=3)
    for p in sorted(problems, key=lambda p: p.severity != "error"):
        path = Path(p.file)
        shown = str(path.relative_to(repo)) if path.is_relative_to(repo) else p.file
        sev = Severity(p.severity).value
        where = f"{shown}:{p.line}" if p.line else shown
        table.add_row(f"[{_SEVERITY_STYLE[sev]}]{sev}[/]", escape(where), escape(p.message), escape(p.fix))
    out.print(table)


def _validate_and_report(repo: Path, spec=None, *, strict: bool = False) -> None:
    """Print every problem; exit 1 on errors (and, with ``strict``, on warnings: artifacts not built yet)."""
    from generator.repo.problems import failing
    from generator.repo.validate import validate_repository

    with step(f"validating {repo}"):
        problems = validate_repository(repo, spec)
    print_problems(problems, repo)
    if failing(problems, strict=strict):
        raise typer.Exit(code=1)
    if problems:
        console.print("[yellow]warnings only[/]: the repository is consistent; build the missing artifacts, then "
                      "validate again (--strict fails on warnings)")


@app.command()
def render(
    output: Output,
    spec_path: SpecPath = None,
    force: Force = False,
    overrides: Sets = None,
    gpu: Annotated[Optional[bool], typer.Option(
        "--gpu/--no-gpu", help="For serving.engine=auto: render for a GPU engine. Default: whether CUDA is visible.")] = None,
    check: Annotated[bool, typer.Option("--validate/--no-validate", help="Validate the repository after writing it.")] = True,
    strict: Annotated[bool, typer.Option(
        "--strict", help="With --validate: fail on warnings too (artifacts not built yet).")] = False,
) -> None:
    """Render the Triton repository (engine layout, or the LLM-API model for serving.engine=llmapi), then validate it."""
    from generator.repo.render import render_repository

    spec = get_spec(spec_path, overrides)
    gpu_visible = gpu if gpu is not None else cuda_visible()
    with step(f"rendering {output}"):
        repo = render_repository(spec, output, force=force, gpu_visible=gpu_visible)
    console.print(f"wrote {escape(str(repo))} (engine target {spec.serving.resolved_engine(gpu_visible).value})")
    if check:
        _validate_and_report(repo, spec, strict=strict)


@app.command()
def validate(
    repo_dir: Annotated[Path, typer.Argument(help="Rendered repository folder.")],
    spec_path: Annotated[Optional[Path], typer.Option(
        "--spec", help="Check against this spec instead of the one recorded in DIR/tritongen.json.")] = None,
    overrides: Sets = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Fail on warnings too: checkpoint, tokenizer or engine not built yet (for the GPU host).")] = False,
) -> None:
    """Check a repository offline: protobuf syntax, ensemble wiring, batch sizes, tokenizer, engine vs spec.

    Exit 1 on errors; artifacts that do not exist yet are warnings (exit 0) unless --strict.
    """
    spec = get_spec(spec_path, overrides) if spec_path or overrides else None
    _validate_and_report(repo_dir, spec, strict=strict)

