"""The typer application and what every command group shares: options, console, error exit."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from generator.errors import TritongenError
from generator.spec import Spec, load_spec

app = typer.Typer(
    name="tritongen",
    help="Turn a Hugging Face LLM into a validated, load-tested Triton repository for TensorRT-LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

SpecArg = typer.Argument(None, help="Spec YAML file (see `tritongen init`). Omitted: the defaults.")
SetOpt = typer.Option(
    None, "--set", help="Override a spec field, e.g. --set build.max_batch_size=16 (repeatable)."
)
AdminKeyOpt = typer.Option(
    None, "--admin-key", envvar="TRITONGEN_ADMIN_KEY",
    help="Key for the admin APIs (statistics, repository index) of a server `tritongen serve` started: "
         "the content of the admin-key file it prints.",
)


def get_spec(path: Optional[Path], overrides: Optional[List[str]]) -> Spec:
    return load_spec(path, list(overrides or []))


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner with elapsed time for anything that can take over a second."""
    started = time.monotonic()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        progress.add_task(description, total=None)
        yield
    console.print(f"[green]✓[/] {description} [dim]({time.monotonic() - started:.1f} s)[/]")


def fail(exc: TritongenError) -> "typer.Exit":
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


def cuda_visible() -> bool:
    """Whether a CUDA GPU is visible, without importing torch (nvidia-smi's device files)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
