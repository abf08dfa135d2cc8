"""The typer application and what every command group shares: the option aliases, consoles, spinner.

Options that set a spec field are made from the field itself (``spec_option``): the help is the field's
docstring, the choices come from its ``Literal``/``Enum`` type, and ``spec_overrides`` turns the given
ones into ``--set`` overrides, so the spec stays the one source of defaults. Options that several
commands take (the spec file, ``--set``, ``-o/--output``, ``--force``, server URLs and ports) are
declared once here, so every command takes them the same way.
"""

from __future__ import annotations

import contextlib
import json
import time
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from generator.errors import (
    ArtifactCorrupt,
    ArtifactMissing,
    CheckFailed,
    HubError,
    LoadTestError,
    PlanRefused,
    ServerError,
    SpecError,
    StepFailed,
    ToolMissing,
    TritongenError,
)
from generator.measure.report_doc import visible
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

def escape(text: str) -> str:
    """Text from outside (a repository, a server, a records file, a path) as the terminal shows it: rich markup
    escaped and control characters written as ``\\xNN`` (newlines and tabs kept). A value of a foreign repository
    holding ESC sequences erased rows of ``tritongen diff``'s table (its trust_remote_code row among them)."""
    return escape_markup(visible(text))


# Exit status per error class (README "Exit codes"). 0 is success, 3 an inconclusive SLO verdict.
EXIT_CODES: dict[type[TritongenError], int] = {
    CheckFailed: 1,
    SpecError: 2,
    PlanRefused: 4,
    ArtifactMissing: 5,
    ArtifactCorrupt: 6,
    ToolMissing: 7,
    StepFailed: 8,
    HubError: 9,
    ServerError: 10,
    LoadTestError: 11,
}
EXIT_OS_ERROR = 12
EXIT_INTERRUPTED = 130


def exit_code(exc: TritongenError) -> int:
    """The code of the nearest class of ``exc`` in EXIT_CODES (2 for the bare base class)."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_CODES[SpecError]


# ---------------------------------------------------------------- options taken by several commands

SpecPath = Annotated[Optional[Path], typer.Argument(help="Spec YAML file (see `tritongen init`). Omitted: the defaults.")]
Sets = Annotated[Optional[List[str]], typer.Option(
    "--set", help="Override a spec field, e.g. --set build.max_batch_size=16 (repeatable).")]
AxisSets = Annotated[Optional[List[str]], typer.Option(
    "--set", help="KEY=V1,V2,... gives a field several settings (several give every combination); "
    "KEY=V fixes one (loadtest.slo, gate.max_change: their commas are one value).")]
"""``--set`` of sweep and tune: the same spelling as Sets, with axes."""
Output = Annotated[Path, typer.Option("--output", "-o", help="Folder to write (whole or not at all).")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]
Url = Annotated[Optional[str], typer.Option(
    "--url", help="Use a running server: its HTTP address, http://HOST:PORT or HOST:PORT.")]
GrpcUrl = Annotated[Optional[str], typer.Option("--grpc-url", help="With --url: gRPC HOST:PORT (default: the --url port + 1).")]
MetricsUrl = Annotated[Optional[str], typer.Option(
    "--metrics-url", help="With --url: metrics URL (default: http://HOST:PORT+2/metrics).")]
HttpPort = Annotated[Optional[int], typer.Option("--http-port", min=1, max=65535, help="HTTP port (default: a free one).")]
GrpcPort = Annotated[Optional[int], typer.Option("--grpc-port", min=1, max=65535, help="gRPC port (default: a free one).")]
MetricsPort = Annotated[Optional[int], typer.Option(
    "--metrics-port", min=1, max=65535, help="Prometheus metrics port (default: a free one).")]
Timeout = Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for every model to load.")]
AdminKey = Annotated[Optional[str], typer.Option(
    "--admin-key", envvar="TRITONGEN_ADMIN_KEY",
    help="Key for the admin APIs (repository index, logging, trace, shared memory) of a server `tritongen serve` "
         "started: the content of the admin-key file it prints. Prefer the environment variable: an option is "
         "on the command line, which every local user can read.")]


# ---------------------------------------------------------------- options made from spec fields


class SpecField(str):
    """Marks an option (in its ``Annotated`` metadata) as an override of this dotted spec field."""


def _field(dotted: str):
    model: Any = Spec
    *sections, name = dotted.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name]


def _optional_base(annotation: Any) -> Any:
    """``Optional[X]`` → X; anything else unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation


def spec_option(dotted: str, *names: str, help: Optional[str] = None, kind: Any = None) -> Any:
    """An ``Optional`` option overriding spec field ``dotted``: its type (choices for a Literal/Enum) and,
    unless ``help`` is given, its docstring come from the spec. ``kind`` replaces a type typer cannot parse
    (a union such as ``int | "auto"``); the spec still validates the value."""
    field = _field(dotted)
    text = " ".join((help or field.description or "").split())
    return Annotated[Optional[kind or _optional_base(field.annotation)],
                     typer.Option(*names, help=f"{text} (spec: {dotted})", show_default=False), SpecField(dotted)]


def _override_value(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value.expanduser().resolve())
    return json.dumps(value) if isinstance(value, str) else str(value)


def spec_overrides(command: Callable[..., Any], values: dict[str, Any]) -> list[str]:
    """``--set FIELD=VALUE`` for each spec option of ``command`` that was given (not None) in ``values``."""
    hints = typing.get_type_hints(command, include_extras=True)
    sets = []
    for name, hint in hints.items():
        marks = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, SpecField)]
        if marks and values.get(name) is not None:
            sets.append(f"{marks[0]}={_override_value(values[name])}")
    return sets


# ---------------------------------------------------------------- helpers


def get_spec(path: Optional[Path], overrides: Optional[List[str]]) -> Spec:
    return load_spec(path, list(overrides or []))


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner with elapsed time for anything that can take over a second (``description`` is plain text)."""
    started = time.monotonic()
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True
    ) as progress:
        progress.add_task(escape(description), total=None)
        yield
    console.print(f"[green]✓[/] {escape(description)} [dim]({time.monotonic() - started:.1f} s)[/]")


def cuda_visible() -> bool:
    """Whether a CUDA GPU is visible, without importing torch (nvidia-smi's device files)."""
    return Path("/dev/nvidiactl").exists() or any(Path("/dev").glob("nvidia[0-9]*"))
