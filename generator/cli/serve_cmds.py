"""Commands that run a real Triton server: serve a repository, smoke-test it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from generator.cli._app import (
    AdminKey, GrpcPort, GrpcUrl, HttpPort, MetricsPort, Timeout, Url, app, console, escape, out, spec_option, step,
)
from generator.errors import ServerError, SpecError

Host = Annotated[str, typer.Option("--host", help="Address HTTP, gRPC and metrics bind to (0.0.0.0 exposes them).")]
LogFile = Annotated[Optional[Path], typer.Option(
    "--log-file", help="Server log file (default: a temporary file, kept if the start fails).")]
Model = spec_option("loadtest.model", "--model", help="Model to test (default: the repository's entry model, from its "
                    "tritongen.json or what the server serves: ensemble, or tensorrt_llm for the LLM-API target).")


SERVE_EXIT_TIMEOUT_S = 10
"""How long `tritongen serve` lets in-flight requests finish after Ctrl-C or SIGTERM (Triton 2.51 counts
the models' unloading against the same ``--exit-timeout-secs``; see install.RUN_EXIT_TIMEOUT_S)."""


def stub_died_message(dead: dict[int, str]) -> str:
    """Why `serve` stops: models whose Python stub died. Triton 2.51 keeps such a model READY and neither
    restarts its stub nor answers its requests, so the server is stopped rather than left half alive."""
    models = ", ".join(sorted({f"'{model}' (stub pid {pid})" for pid, model in dead.items()}))
    return (f"model {models} is down: its Python backend stub exited while serving. Triton 2.51 keeps the "
            "model READY, never restarts the stub and leaves its requests unanswered, so tritongen stops "
            "the server instead")


def _start(repo_dir: Path, host: str, http_port, grpc_port, metrics_port, timeout: float, log_file, admin_key=None,
           *, exit_timeout_s: int):
    from generator.serve.server import TritonServer

    server = TritonServer(repo_dir, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          log_file=log_file, admin_key=admin_key, exit_timeout_s=exit_timeout_s)
    with step(f"starting tritonserver on {repo_dir}"):
        server.start(timeout_s=timeout)
    return server


@app.command()
def serve(
    repo_dir: Annotated[Path, typer.Argument(help="Rendered repository folder (see `tritongen render`).")],
    http_port: HttpPort = None,
    grpc_port: GrpcPort = None,
    metrics_port: MetricsPort = None,
    host: Host = "127.0.0.1",
    timeout: Timeout = 300.0,
    log_file: LogFile = None,
    admin_key: Annotated[Optional[str], typer.Option(
        "--admin-key", envvar="TRITONGEN_ADMIN_KEY",
        help="Key the admin APIs (logging, trace, shared memory, repository) require "
             "(default: a new one per run, written to the admin-key file printed at start). Prefer "
             "TRITONGEN_ADMIN_KEY: tritongen's own command line is visible to local users (tritonserver's "
             "holds only a placeholder, where a C compiler is installed).")] = None,
) -> None:
    """Serve a repository with tritonserver until Ctrl-C or SIGTERM (then stop it and its stubs).

    The admin APIs answer only requests with the header `tritongen-admin-key: KEY`; smoke and loadtest
    take the key with --admin-key (or TRITONGEN_ADMIN_KEY)."""
    from generator.fsutil import check_side_file
    from generator.serve.install import ADMIN_HEADER

    check_side_file(log_file, "--log-file", {"the repository": repo_dir})
    server = _start(repo_dir, host, http_port, grpc_port, metrics_port, timeout, log_file, admin_key,
                    exit_timeout_s=SERVE_EXIT_TIMEOUT_S)
    try:
        visible = ("\n         (on tritonserver's command line: local users can read it there)"
                   if server.key_on_command_line else "")
        out.print(f"HTTP     {server.http_url}\ngRPC     {server.grpc_url}\nmetrics  {server.metrics_url}\n"
                  f"log      {server.log_file}\nadmin    header {ADMIN_HEADER}: the key in {server.admin_key_file}"
                  f"{visible}", markup=False, highlight=False, soft_wrap=True)
        console.print("[dim]serving; Ctrl-C stops[/]")
        while server.process is not None and server.exit_code is None:
            time.sleep(0.5)
            dead = server.dead_stubs()
            if dead:
                raise ServerError(stub_died_message(dead), where=str(server.log_file),
                                  fix="read the server log named here and the kernel log (dmesg), then serve again")
        raise ServerError(f"tritonserver exited on its own (code {server.exit_code})", where=str(server.log_file),
                          fix="read the server log named here")
    except KeyboardInterrupt:
        console.print("stopping tritonserver")
    finally:
        server.stop()


def print_report(report) -> None:
    from rich.table import Table

    table = Table(title=escape(f"smoke test of {report.model} at {report.http_url} (gRPC {report.grpc_url})"),
                  show_lines=False, expand=True)
    table.add_column("", width=2)
    table.add_column("check", ratio=3)
    table.add_column("detail", ratio=6, overflow="fold")
    table.add_column("s", justify="right", width=6)
    for c in report.checks:
        table.add_row("[green]✓[/]" if c.ok else "[red]✗[/]", escape(c.name), escape(c.detail), f"{c.seconds:.1f}")
    out.print(table)
    passed = len(report.checks) - len(report.failed)
    colour = "green" if report.ok else "red"
    console.print(f"[{colour}]{passed}/{len(report.checks)} checks passed[/]")


@app.command()
def smoke(
    repo_dir: Annotated[Optional[Path], typer.Argument(help="Repository to serve and test (omit with --url).")] = None,
    url: Url = None,
    grpc_url: GrpcUrl = None,
    model: Model = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=2, max=2**31 - 1, help="Tokens per test answer.")] = 16,
    timeout: Timeout = 300.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON here.")] = None,
    admin_key: AdminKey = None,
) -> None:
    """Check a served repository end to end (health, metadata, generate, infer, gRPC and SSE streaming, stop words, limits, bad requests, BLS; for the LLM-API model also finish/stop reasons, perf metrics, cancellation, default max_tokens); exit 1 on any failure."""
    from generator.fsutil import check_side_file
    from generator.serve.client import check_reachable
    from generator.serve.endpoints import Endpoints
    from generator.serve.smoke_run import run_smoke

    if (repo_dir is None) == (url is None):
        raise SpecError("give either a repository folder or --url",
                        fix="tritongen smoke REPO_DIR   or   tritongen smoke --url 127.0.0.1:8000 (gRPC on port + 1)")
    check_side_file(json_out, "--json", {"the repository": repo_dir})

    def run(http: str, grpc: str, key: Optional[str]):
        with step("running smoke checks"):
            return run_smoke(http, grpc, model=model, repo_dir=repo_dir, max_tokens=max_tokens,
                             timeout_s=min(timeout, 300.0), admin_key=key)

    if repo_dir is not None:
        from generator.serve.install import RUN_EXIT_TIMEOUT_S

        server = _start(repo_dir, "127.0.0.1", None, None, None, timeout, None, exit_timeout_s=RUN_EXIT_TIMEOUT_S)
        try:
            report = run(server.http_url, server.grpc_url, server.admin_key)
        finally:
            server.stop()
    else:
        endpoints = Endpoints.from_urls(url, grpc_url)
        check_reachable(endpoints.http_url)
        report = run(endpoints.http_hostport, endpoints.grpc_url, admin_key)
    print_report(report)
    if json_out is not None:
        import json

        json_out.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if not report.ok:
        raise typer.Exit(code=1)
