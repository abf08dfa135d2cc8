"""``tritongen`` command line: a module per command group, all registered on one typer app."""

from __future__ import annotations

import sys

from generator.cli._app import app, console
from generator.errors import TritongenError

# Command groups register themselves on `app` when imported.
from generator.cli import (  # noqa: E402,F401
    demo_cmds,
    load_cmds,
    model_cmds,
    plan_cmds,
    repo_cmds,
    serve_cmds,
    spec_cmds,
)


def main() -> None:
    try:
        app()
    except TritongenError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
