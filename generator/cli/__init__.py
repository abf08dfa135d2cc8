"""``tritongen`` command line: a module per command group, all registered on one typer app."""

from __future__ import annotations

import signal
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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (a supervisor, `kill`) unwinds like Ctrl-C: servers, Locust and temporary folders are cleaned up.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()
    except TritongenError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
