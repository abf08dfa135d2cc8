"""Commands about the Triton repository: render it from a spec, validate it offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from generator.cli._app import Force, Output, Sets, SpecPath, app, console, cuda_visible, escape, get_spec, out, step


_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "note": "cyan"}
_SEVERITY_ORDER = {"error": 0, "warning": 1, "note": 2}
ROWS_PER_FILE = 50
"""The problems of one file print_problems shows; the rest are one row (review22: 40,000 problems of one 0.5 MiB
manifest took 43 s to print, 600,000 of a 4 MiB one 8 minutes). Every problem still counts for the exit code."""


def print_problems(problems: list, repo: Path) -> None:
    """A table of problems (severity, file:line, what, fix), errors first, or one line saying the repository is fine."""
    from rich.table import Table

    from generator.repo.problems import Severity

    if not problems:
        console.print(f"[green]✓[/] {escape(str(repo))}: no problems found")
        return
    count = {sev: sum(Severity(p.severity).value == sev for p in problems) for sev in _SEVERITY_ORDER}
    title = f"{count['error']} error(s), {count['warning']} warning(s), {count['note']} note(s) in {escape(str(repo))}"
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("where", overflow="fold", ratio=3)
    table.add_column("problem", overflow="fold", ratio=4)
    table.add_column("fix", overflow="fold", ratio=3)
    rows: dict[str, int] = {}
    hidden: dict[str, list[str]] = {}
    for p in sorted(problems, key=lambda p: _SEVERITY_ORDER[Severity(p.severity).value]):
        path = Path(p.file)
        shown = str(path.relative_to(repo)) if path.is_relative_to(repo) else p.file
        sev = Severity(p.severity).value
        rows[shown] = rows.get(shown, 0) + 1
        if rows[shown] > ROWS_PER_FILE:
            hidden.setdefault(shown, []).append(sev)
            continue
        where = f"{shown}:{p.line}" if p.line else shown
        table.add_row(f"[{_SEVERITY_STYLE[sev]}]{sev}[/]", escape(where), escape(p.message), escape(p.fix))
    for shown, severities in hidden.items():
        sev = severities[0]  # the worst: sorted above
        table.add_row(f"[{_SEVERITY_STYLE[sev]}]{sev}[/]", escape(shown), f"{len(severities):,} more problem(s) in "
                      "this file, not shown", "mend the ones above, then validate again")
    out.print(table)


def _validate_and_report(repo: Path, spec=None, *, strict: bool = False) -> None:
    """Print every problem; exit 1 on errors (and, with ``strict``, on warnings: artifacts not built yet)."""
    from generator.repo.problems import Severity, failing
    from generator.repo.validate import validate_repository

    with step(f"validating {repo}"):
        problems = validate_repository(repo, spec)
    print_problems(problems, repo)
    if failing(problems, strict=strict):
        raise typer.Exit(code=1)
    if any(Severity(p.severity) is Severity.warning for p in problems):
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



@app.command("import")
def import_cmd(
    repo_dir: Annotated[Path, typer.Argument(help="An existing model repository (fill_template.py, hand edits, tritongen).")],
    output: Output,
    force: Force = False,
    keep_paths: Annotated[bool, typer.Option(
        "--keep-paths", help="Carry the folders the repository names (engine, tokenizer, model) into the spec.")] = False,
    trust_remote_code: Annotated[bool, typer.Option(
        "--trust-remote-code", help="Carry model.yaml's trust_remote_code: true (later commands run the "
        "checkpoint's own Python).")] = False,
) -> None:
    """Derive a spec from an existing repository: values found, values it could not infer, inconsistencies.

    `tritongen render` of the written spec gives a repository of the same meaning (check with `tritongen diff`).
    Folders the repository names and trust_remote_code are reported and carried only with --keep-paths and
    --trust-remote-code.
    """
    import yaml

    from generator.fsutil import atomic_write_text
    from generator.repo.importer import import_repository
    from generator.spec import spec_from_dict
    from generator.templating import comment_text

    result = import_repository(repo_dir, trust_remote_code=trust_remote_code, keep_paths=keep_paths)
    spec_from_dict(result.spec, source=f"the spec imported from {repo_dir}")  # refuse to write a spec that does not load
    header = [f"Imported by `tritongen import {repo_dir}`."]
    header += [f"not inferred: {line}" for line in result.not_inferred]
    header += [f"inconsistent: {line}" for line in result.inconsistencies]
    header += [f"held back: {line}" for line in result.held_back]
    comments = "".join(f"# {comment_text(line)}\n" for line in header)  # repository text never leaves its comment
    atomic_write_text(output, comments + yaml.safe_dump(result.spec, sort_keys=False), force=force)
    for line in result.not_inferred:
        console.print(f"[yellow]not inferred:[/] {escape(line)}")
    for line in result.inconsistencies:
        console.print(f"[bold red]inconsistent:[/] {escape(line)}")
    for line in result.held_back:
        console.print(f"[bold yellow]held back:[/] {escape(line)}")
    console.print(f"wrote {escape(str(output))}; next: tritongen render {escape(str(output))} -o NEW_REPO, "
                  f"then tritongen diff {escape(str(repo_dir))} NEW_REPO")


@app.command("diff")
def diff_cmd(
    repo_a: Annotated[Path, typer.Argument(help="First repository.")],
    repo_b: Annotated[Path, typer.Argument(help="Second repository.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the differences as JSON (for scripts).")] = False,
) -> None:
    """Compare two repositories in meaning (tensors, parameters, batch sizes, engine settings), not as text.

    Exit 0 when they mean the same, 1 when they differ.
    """
    import json

    from rich.table import Table

    from generator.errors import ArtifactMissing
    from generator.repo.meaning import diff_meanings, read_meaning

    for repo in (repo_a, repo_b):
        if not repo.is_dir():
            raise ArtifactMissing("repository folder does not exist", where=str(repo), fix="pass two repository folders")
    meanings = [read_meaning(repo_a), read_meaning(repo_b)]
    for meaning in meanings:
        for line in meaning.not_read:
            console.print(f"[yellow]not compared:[/] {escape(line)}")
    differences = diff_meanings(*meanings)
    if as_json:
        typer.echo(json.dumps([d.model_dump() for d in differences], indent=2, default=str))
    elif not differences:
        console.print(f"[green]✓[/] {escape(str(repo_a))} and {escape(str(repo_b))} mean the same")
    else:
        table = Table(title=f"{len(differences)} difference(s)", show_lines=True, expand=True)
        for col in ("where", str(repo_a), str(repo_b)):
            table.add_column(escape(col), overflow="fold")
        for d in differences:
            table.add_row(escape(d.where), escape(str(d.a)), escape(str(d.b)))
        out.print(table)
    if differences:
        raise typer.Exit(code=1)
