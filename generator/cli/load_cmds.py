"""Load-test commands: `tritongen loadtest` (one configuration) and `tritongen sweep` (many).

Flags are spec overrides (``spec_option``): each one given becomes a ``--set loadtest.<field>=<value>``, so
the spec stays the one source of defaults. Locust runs as a subprocess; nothing here imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape

from generator.cli._app import (
    AdminKey, Force, GrpcUrl, MetricsUrl, Output, Sets, SpecPath, Url, app, console, cuda_visible, out, spec_option,
    spec_overrides, step,
)
from generator.errors import SpecError
from generator.repo.manifest import MANIFEST, read_manifest
from generator.measure.results import LoadTestResult, PointStatus, SloVerdict, SweepResult, TermOutcome, Verdict
from generator.spec import Spec, load_spec


def loadtest_spec(spec_path: Optional[Path], repo: Optional[Path], overrides: list[str]) -> Spec:
    """The spec file if given, else the one the repository was rendered from (tritongen.json), else defaults."""
    manifest = read_manifest(repo) if spec_path is None and repo is not None else None
    if manifest is None:
        return load_spec(spec_path, overrides)
    return manifest.recorded_spec(source=str(repo / MANIFEST), overrides=overrides)


def _print_results(results: LoadTestResult, out_dir: Path) -> None:
    from rich.table import Table

    c, tp, lat = results.counts, results.throughput, results.latency_ms
    table = Table(title=f"{escape(results.run.title)}: {c.ok} ok, {c.errors} errors in {results.window_s:.1f} s")
    for col in ("ms", "mean", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right" if col != "ms" else "left")
    for key, label in (("ttft", "TTFT"), ("itl", "ITL per gap"), ("itl_request", "ITL per request"),
                       ("e2e", "end-to-end"), ("lateness", "send lateness")):
        if d := getattr(lat, key):
            table.add_row(label, *(f"{getattr(d, s):.1f}" for s in ("mean", "p50", "p90", "p99", "max")))
    out.print(table)
    rps, tps = tp.requests_per_s, tp.output_tokens_per_s
    out.print(f"throughput: {rps or 0:.2f} requests/s, {tps or 0:.1f} output tokens/s; "
              f"error rate {(results.error_rate or 0):.2%}")
    if reuse := results.prefix_reuse:
        out.print(f"prefix cache: {reuse.hit_share:.1%} of prompt {reuse.unit} reused ({reuse.hit_requests} of "
                  f"{reuse.requests} requests hit)")
    checks = results.checks
    if checks.checked:
        out.print(f"streamed-output checks: {checks.failed_requests} of {checks.checked} answers failed "
                  f"({', '.join(f'{k} {v}' for k, v in checks.failures.items() if v) or 'none'})")
    split = results.split
    if split:
        out.print("TTFT split (mean ms): " + ", ".join(f"{k} {split.parts[k].mean:.1f}" for k in split.ttft_parts))
    if results.client.client_limited:
        console.print("[yellow]load generator was the limit:[/] " + escape("; ".join(results.client.reasons)))
    integrity = results.run.integrity
    if integrity.rejected_messages:
        console.print(f"[red]the Locust master rejected {sum(integrity.rejected_messages.values())} messages not "
                      f"from a worker of this run:[/] {escape(str(integrity.rejected_messages))}")
    if integrity.incomplete:
        console.print(f"[red]run incomplete:[/] {escape(integrity.incomplete)} (the records received are kept)")
    if results.slo:
        _print_slo(results.slo)
    console.print(f"report: {escape(str(out_dir / 'report.html'))} (and report.md, results.json, records.jsonl)")


def _print_slo(slo: SloVerdict) -> None:
    from rich.table import Table

    style = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.INCONCLUSIVE: "yellow"}[slo.verdict]
    table = Table(title=f"SLO: [{style}]{slo.verdict.upper()}[/]" + (f" ({escape(slo.reason)})" if slo.reason else ""))
    for col in ("term", "measured", "result"):
        table.add_column(col)
    for r in slo.terms:
        value = r.measured
        shown = "–" if value is None else (f"{value:.3%}" if r.unit == "fraction" else f"{value:.2f} {r.unit}")
        result = {TermOutcome.PASS: "[green]pass[/]", TermOutcome.FAIL: "[bold red]FAIL[/]",
                  TermOutcome.INCONCLUSIVE: "[yellow]inconclusive[/]",
                  TermOutcome.NOT_MEASURED: "[yellow]not measured[/]"}[r.result]
        table.add_row(escape(r.term), shown, result)
    out.print(table)


Users = spec_option("loadtest.users", "--users", "-u")
SpawnRate = spec_option("loadtest.spawn_rate", "--spawn-rate", "-r")
Duration = spec_option("loadtest.duration_s", "--duration", "-t")
Requests = spec_option("loadtest.max_requests", "--requests", "-n")
Rate = spec_option("loadtest.request_rate", "--rate")
Arrival = spec_option("loadtest.arrival", "--arrival")
Protocol = spec_option("loadtest.protocol", "--protocol")
Model = spec_option("loadtest.model", "--model")
Workers = spec_option("loadtest.workers", "--workers", kind=str)
Slo = spec_option("loadtest.slo", "--slo")
Prompts = spec_option("loadtest.prompts", "--prompts")
Tokenizer = spec_option("loadtest.tokenizer", "--tokenizer")
Seed = spec_option("loadtest.seed", "--seed")
Trace = spec_option("loadtest.trace", "--trace")
TimeScale = spec_option("loadtest.time_scale", "--time-scale")


@app.command()
def loadtest(
    repo: Annotated[Optional[Path], typer.Argument(help="Rendered repository to serve and test (or use --url).")] = None,
    url: Url = None,
    grpc_url: GrpcUrl = None,
    metrics_url: MetricsUrl = None,
    spec_path: Annotated[Optional[Path], typer.Option(
        "--spec", help="Spec file (default: the repository's tritongen.json).")] = None,
    users: Users = None,
    spawn_rate: SpawnRate = None,
    duration: Duration = None,
    requests: Requests = None,
    rate: Rate = None,
    arrival: Arrival = None,
    protocol: Protocol = None,
    model: Model = None,
    workers: Workers = None,
    slo: Slo = None,
    prompts: Prompts = None,
    tokenizer: Tokenizer = None,
    seed: Seed = None,
    trace: Trace = None,
    time_scale: TimeScale = None,
    admin_key: AdminKey = None,
    records: Annotated[Optional[Path], typer.Option(
        "--records", help="Report on a run recorded elsewhere instead (e.g. the in-cluster Locust master's "
                          "records.jsonl from kubernetes-loadtest.yaml); starts no load.")] = None,
    output: Output = Path("loadtest-results"),
    force: Force = False,
    overrides: Sets = None,
) -> None:
    """Load-test a Triton LLM endpoint with Locust: TTFT, ITL, throughput, server-side split, checks, SLO gate.

    Exit codes: 0 done (and the SLO passed), 1 SLO violated or no request succeeded, 3 SLO inconclusive
    (the load generator limited the run, or a term could not be measured), 2 bad input; README "Exit codes" lists the others.
    """
    from generator.fsutil import atomic_dir
    from generator.measure.runner import report_records, run_loadtest
    from generator.measure.slo import EXIT_FAIL

    if records is not None:
        if not records.is_file():
            raise SpecError(f"no records file {records}", where="--records", fix="kubectl cp the master's records.jsonl here")
        spec = loadtest_spec(spec_path, repo, list(overrides or []) + spec_overrides(loadtest, locals()))
        with atomic_dir(output, force=force, command_hint="tritongen loadtest --records ... -o " + str(output)) as tmp:
            result = report_records(spec, records, tmp)
        _print_results(result.results, output.resolve())
        return
    if (repo is None) == (url is None):
        raise SpecError("give either a repository folder or --url", fix="tritongen loadtest REPO, or --url http://HOST:8000")
    flags = spec_overrides(loadtest, locals())
    spec = loadtest_spec(spec_path, repo, list(overrides or []) + flags)
    lt = spec.loadtest
    load = (f"trace {lt.trace}" if lt.trace else f"{lt.request_rate:g} req/s" if lt.request_rate
            else f"{lt.users} users")
    protected = dict(spec.named_paths(), **({"the repository": repo} if repo else {}))
    with atomic_dir(output, force=force, command_hint="tritongen loadtest ... -o " + str(output), protected=protected) as tmp:
        with step(f"load test: {load}, {lt.duration_s:g} s, {lt.protocol} ({repo or url})"):
            result = run_loadtest(spec, tmp, repo_dir=repo, url=url, grpc_url=grpc_url, metrics_url=metrics_url,
                                  admin_key=admin_key)
    _print_results(result.results, output.resolve())
    if result.results.run.integrity.incomplete:
        raise typer.Exit(code=EXIT_FAIL)
    if result.results.slo:
        raise typer.Exit(code=result.results.slo.exit_code)
    if not result.results.counts.ok:
        raise typer.Exit(code=EXIT_FAIL)


@app.command()
def sweep(
    spec_path: SpecPath = None,
    sets: Annotated[Optional[List[str]], typer.Option(
        "--set", help="KEY=V1,V2,... sweeps a field (several give every combination); KEY=V fixes one.")] = None,
    users: Users = None,
    duration: Duration = None,
    requests: Requests = None,
    rate: Rate = None,
    protocol: Protocol = None,
    slo: Slo = None,
    output: Output = Path("sweep-results"),
    force: Force = False,
) -> None:
    """Render, validate, serve and load-test each setting with the same seeded load; report and pick the best.

    Exit codes with --slo: 0 a setting passed, 1 none passed, 3 none passed but some were inconclusive.
    """
    from generator.fsutil import atomic_dir
    from generator.measure.slo import EXIT_FAIL, EXIT_INCONCLUSIVE
    from generator.measure.sweep import plan_sweep, run_sweep

    plan = plan_sweep(list(sets or []))
    flags = spec_overrides(sweep, locals())
    spec = load_spec(spec_path, flags)
    for overrides in plan.points:  # fail on a bad field before the first server starts
        load_spec(spec_path, flags + overrides)
    console.print(f"{len(plan.points)} points: " + escape("; ".join(plan.label(p) for p in plan.points)))
    with atomic_dir(output, force=force, command_hint="tritongen sweep ... -o " + str(output), protected=spec.named_paths()) as tmp:
        with step("sweep"):
            result = run_sweep(spec, plan, tmp, gpu_visible=cuda_visible(), progress=lambda m: console.print(f"  {escape(m)}"))
    _print_sweep(result, output.resolve())
    if spec.loadtest.slo and result.best is None:
        verdicts = [p.results.slo.verdict for p in result.points if p.results and p.results.slo]
        raise typer.Exit(code=EXIT_INCONCLUSIVE if Verdict.INCONCLUSIVE in verdicts else EXIT_FAIL)


def _print_sweep(result: SweepResult, out_dir: Path) -> None:
    from rich.table import Table

    from generator.measure.report_sweep import point_row

    table = Table(title="sweep")
    cols = ("setting", "status", "out tok/s", "TTFT p95 ms", "ITL p95 ms", "queue p95 ms", "errors", "SLO")
    for col in cols:
        table.add_column(col, overflow="fold")
    for p in result.points:
        r = point_row(p)

        def f(v: Optional[float]) -> str:
            return "–" if v is None else f"{v:.1f}"

        status = r.status if r.status is PointStatus.OK else f"[red]{r.status}[/]: {escape(r.detail[:60])}"
        table.add_row(escape(r.point), status, f(r.output_tokens_per_s), f(r.ttft_p95_ms), f(r.itl_p95_ms),
                      f(r.queue_p95_ms), "–" if r.error_rate is None else f"{r.error_rate:.1%}", r.slo or "–")
    out.print(table)
    best = result.best
    out.print(f"best: [bold]{escape(best.label)}[/] ({escape(best.reason)})" if best else "[yellow]no setting qualified[/]")
    console.print(f"report: {escape(str(out_dir / 'report.html'))} (and report.md, points.csv, points.json)")
