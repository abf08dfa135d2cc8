"""``tritongen`` command line: a module per command group, all registered on one typer app."""

from __future__ import annotations

import errno
import signal
import sys
import urllib.error
import warnings

from generator.cli._app import EXIT_INTERRUPTED, EXIT_OS_ERROR, app, console, escape, exit_code
from generator.errors import ServerError, TritongenError, TritongenWarning

# Command groups register themselves on `app` when imported.
from generator.cli import (  # noqa: E402,F401
    demo_cmds,
    gate_cmds,
    load_cmds,
    model_cmds,
    plan_cmds,
    repo_cmds,
    serve_cmds,
    spec_cmds,
    tune_cmds,
)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def os_error_line(exc: OSError) -> str:
    """The OS's cause and the file it concerns. A copy that fills the disk (or the user's quota, or the file-size
    limit) names its source first and the file being written second (shutil): the one written is where it ran out."""
    name = exc.filename2 if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) and exc.filename2 else exc.filename
    return (f"{name}: " if name else "") + (exc.strerror or str(exc))


def _fail(exc: TritongenError) -> None:
    console.print(f"[bold red]error:[/] {escape(str(exc))}")
    sys.exit(exit_code(exc))


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """tritongen's own warnings as ``warning:`` lines; other libraries' as Python shows them."""
    if issubclass(category, TritongenWarning):
        console.print(f"[bold yellow]warning:[/] {escape(str(message))}")
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    # SIGTERM (a supervisor, `kill`) unwinds like Ctrl-C: servers, Locust and temporary folders are cleaned up.
    # SIGINT too, even when started as a background job (which inherits SIGINT ignored, and then never stops).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    # A file name that is not UTF-8 reaches Python as lone surrogates; print them escaped, never crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    warnings.showwarning = _show_warning
    try:
        app()
    except TritongenError as exc:
        _fail(exc)
    except urllib.error.HTTPError as exc:  # an OSError too, but the server's status says what to mend
        from generator.serve.endpoints import http_status_fix

        _fail(ServerError(f"HTTP {exc.code} {exc.reason}", where=exc.url, fix=http_status_fix(exc.code)))
    except OSError as exc:  # permissions, a full disk, a path that is a file: the OS names the cause
        console.print(f"[bold red]error:[/] {escape(os_error_line(exc))}\n"
                      "  fix: check the path, its permissions and the free space")
        sys.exit(EXIT_OS_ERROR)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(EXIT_INTERRUPTED)
