"""Commands that run a real Triton server: serve a repository, smoke-test it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from generator.cli._app import AdminKeyOpt, app, console, out, step
from generator.errors import TritongenError

RepoArg = typer.Argument(..., help="Rendered repository folder (see `tritongen render`).")
HostOpt = typer.Option("127.0.0.1", "--host", help="Address HTTP, gRPC and metrics bind to (0.0.0.0 exposes them).")
HttpPortOpt = typer.Option(None, "--http-port", help="HTTP port (default: a free one).")
GrpcPortOpt = typer.Option(None, "--grpc-port", help="gRPC port (default: a free one).")
MetricsPortOpt = typer.Option(None, "--metrics-port", help="Prometheus metrics port (default: a free one).")
TimeoutOpt = typer.Option(300.0, "--timeout", help="Seconds to wait for every model to load.")
LogOpt = typer.Option(None, "--log-file", help="Server log file (default: a temporary file, kept if the start fails).")


def _start(repo_dir: Path, host: str, http_port, grpc_port, metrics_port, timeout: float, log_file, admin_key=None):
    from generator.serve.server import TritonServer

    server = TritonServer(repo_dir, host=host, http_port=http_port, grpc_port=grpc_port,
                          metrics_port=metrics_port, log_file=log_file, admin_key=admin_key)
    with step(f"starting tritonserver on {repo_dir}"):
        server.start(timeout_s=timeout)
    return server


@app.command()
def serve(
    repo_dir: Path = RepoArg,
    http_port: Optional[int] = HttpPortOpt,
    grpc_port: Optional[int] = GrpcPortOpt,
    metrics_port: Optional[int] = MetricsPortOpt,
    host: str = HostOpt,
    timeout: float = TimeoutOpt,
    log_file: Optional[Path] = LogOpt,
    admin_key: Optional[str] = typer.Option(
        None, "--admin-key", envvar="TRITONGEN_ADMIN_KEY",
        help="Key the admin APIs (logging, trace, shared memory, statistics, repository) require "
             "(default: a new one per run, written to the admin-key file printed at start)."),
) -> None:
    """Serve a repository with tritonserver until Ctrl-C or SIGTERM (then stop it and its stubs).

    The admin APIs answer only requests with the header `tritongen-admin-key: KEY`; smoke and loadtest
    take the key with --admin-key (or TRITONGEN_ADMIN_KEY)."""
    from generator.serve.server import ADMIN_HEADER

    server = _start(repo_dir, host, http_port, grpc_port, metrics_port, timeout, log_file, admin_key)
    try:
        out.print(f"HTTP     {server.http_url}\ngRPC     {server.grpc_url}\nmetrics  {server.metrics_url}\n"
                  f"log      {server.log_file}\n"
                  f"admin    header {ADMIN_HEADER}: the key in {server.admin_key_file}", soft_wrap=True)
        console.print("[dim]serving; Ctrl-C stops[/]")
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        code = server.process.returncode if server.process is not None else None
        raise TritongenError(f"tritonserver exited on its own (code {code})", where=str(server.log_file))
    except KeyboardInterrupt:
        console.print("stopping tritonserver")
    finally:
        server.stop()


def print_report(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"smoke test of {report.model} at {report.http_url} (gRPC {report.grpc_url})",
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
    repo_dir: Optional[Path] = typer.Argument(None, help="Repository to serve and test (omit with --url)."),
    url: Optional[str] = typer.Option(None, "--url", help="HTTP address HOST:PORT of a running server."),
    grpc_url: Optional[str] = typer.Option(None, "--grpc-url", help="gRPC address HOST:PORT of that server."),
    model: str = typer.Option("ensemble", "--model", help="Model to test: ensemble (or tensorrt_llm_bls)."),
    max_tokens: int = typer.Option(16, "--max-tokens", min=2, max=2**31 - 1, help="Tokens per test answer."),
    timeout: float = TimeoutOpt,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
    admin_key: Optional[str] = AdminKeyOpt,
) -> None:
    """Check a served repository end to end (health, metadata, generate, infer, gRPC and SSE streaming, stop words, limits, bad requests, BLS); exit 1 on any failure."""
    from generator.serve.smoke import run_smoke

    if (repo_dir is None) == (url is None):
        raise TritongenError("give either a repository folder or --url (with --grpc-url)",
                             fix="tritongen smoke REPO_DIR   or   tritongen smoke --url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001")
    if url is not None and grpc_url is None:
        raise TritongenError("--url needs --grpc-url too (streaming is tested over gRPC)", where="--grpc-url")

    def run(http: str, grpc: str, key: Optional[str]):
        with step("running smoke checks"):
            return run_smoke(http, grpc, model=model, max_tokens=max_tokens, timeout_s=min(timeout, 300.0),
                             admin_key=key)

    if repo_dir is not None:
        server = _start(repo_dir, "127.0.0.1", None, None, None, timeout, None)
        try:
            report = run(server.http_url, server.grpc_url, server.admin_key)
        finally:
            server.stop()
    else:
        report = run(url, grpc_url, admin_key)
    print_report(report)
    if json_out is not None:
        import json

        json_out.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    if not report.ok:
        raise typer.Exit(code=1)
