"""Load-test commands: `tritongen loadtest` (one configuration) and `tritongen sweep` (many).

Flags are spec overrides (``spec_option``): each one given becomes a ``--set loadtest.<field>=<value>``, so
the spec stays the one source of defaults. Locust runs as a subprocess; nothing here imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from generator.cli._app import (
    AdminKey, AxisSets, Force, GrpcUrl, MetricsUrl, Output, Sets, SpecPath, Url, app, console, cuda_visible, escape, out,
    spec_option, spec_overrides, step,
)
from generator.cli.gate_cmds import Baseline, Gate, Junit, Summary, finish, gate_inputs, judge_folder
from generator.errors import LoadTestError, ServerError, SpecError, TritongenError
from generator.measure.metrics import LATENCIES
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
    for metric in LATENCIES:
        if metric.shown and (d := getattr(lat, metric.key)):
            table.add_row(metric.label, *(f"{getattr(d, s):.1f}" for s in ("mean", "p50", "p90", "p99", "max")))
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
Repeat = spec_option("loadtest.repeat", "--repeat")
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
    repeat: Repeat = None,
    baseline: Baseline = None,
    gate: Gate = None,
    junit: Junit = None,
    summary: Summary = None,
    records: Annotated[Optional[Path], typer.Option(
        "--records", help="Report on a run recorded elsewhere instead (e.g. the in-cluster Locust master's "
                          "records.jsonl from kubernetes-loadtest.yaml); starts no load.")] = None,
    output: Output = Path("loadtest-results"),
    force: Force = False,
    overrides: Sets = None,
) -> None:
    """Load-test a Triton LLM endpoint with Locust: TTFT, ITL, throughput, server-side split, checks, SLO gate.

    With --repeat N the same load runs N times on one server (OUT/run-01, ...) and the report gives each
    figure's spread and intervals; with --baseline it is compared with a saved baseline, and --gate fails it
    on a confirmed regression. Exit codes: 0 done (and every gate passed), 1 SLO violated, a confirmed
    regression, or no request succeeded, 3 inconclusive (the load generator limited the run, a term could not
    be measured, or an interval straddles a gate limit), 2 bad input; README "Exit codes" lists the others.
    """
    from generator.fsutil import atomic_dir, check_side_file

    spec = loadtest_spec(spec_path, repo, list(overrides or []) + spec_overrides(loadtest, locals()))
    reads = dict(spec.named_paths(except_=("folder",)), **{"the spec": spec_path, "the repository": repo,
                                                           "the records file": records})
    for side, option in ((junit, "--junit"), (summary, "--summary")):
        check_side_file(side, option, reads)
    protected = dict(spec.named_paths(), **({"the repository": repo} if repo else {}))
    if records is not None:
        code = _from_records(spec, records, output, force, junit, summary, dict(protected, **{"the records file": records}))
        if code:
            raise typer.Exit(code=code)
        return
    if (repo is None) == (url is None):
        raise SpecError("give either a repository folder or --url", fix="tritongen loadtest REPO, or --url http://HOST:8000")
    gating = gate_inputs(spec)
    lt = spec.loadtest
    load = (f"trace {lt.trace}" if lt.trace else f"{lt.request_rate:g} req/s" if lt.request_rate
            else f"{lt.users} users")
    runs = f" × {lt.repeat} runs" if lt.repeat > 1 else ""
    failed = None
    with atomic_dir(output, force=force, command_hint="tritongen loadtest ... -o " + str(output), protected=protected) as tmp:
        with step(f"load test: {load}, {lt.duration_s:g} s{runs}, {lt.protocol} ({repo or url})"):
            try:
                results, figures = _run(spec, tmp, repo, url, grpc_url, metrics_url, admin_key, str(output))
            except (LoadTestError, ServerError) as exc:
                if isinstance(exc, ServerError) and not (tmp / "triton.log").is_file():
                    raise  # a server given by --url that does not answer: no log to keep
                failed = exc  # Locust's logs, or those of the server tritongen started (review26: its error quoted
                # OUT/.out.tmp-*/triton.log, deleted with the output): they become the output (tmp is renamed to it)
        if failed is None:
            comparison, verdict = judge_folder(gating, tmp, str(output))
    if failed is not None:
        raise _naming_output(failed, tmp, output)
    code = _conclude(results, figures, output, comparison, verdict, junit, summary)
    if code:
        raise typer.Exit(code=code)


def _naming_output(failed: TritongenError, tmp: Path, output: Path) -> TritongenError:
    """``failed`` naming the kept output instead of the temporary folder it was written in."""
    failed.where = failed.where and failed.where.replace(str(tmp), str(output.resolve()))
    failed.message = failed.message.replace(str(tmp), str(output.resolve()))
    failed.fix += f" (the logs are kept in {output}; pass --force to replace them)"
    return failed


def _from_records(spec: Spec, records: Path, output: Path, force: bool, junit: Optional[Path],
                  summary: Optional[Path], protected: dict[str, Path]) -> int:
    """`--records`: the report of a run recorded elsewhere, judged as a run started here (its SLO, its gate, a lost
    worker; review21: they were ignored and the command exited 0); starts no load. Returns the exit code.
    ``protected``: what no --force may replace, as for a local run, and the records file (review22: ``-o`` naming the
    --baseline folder replaced the baseline the run had just been compared with)."""
    from generator.fsutil import atomic_dir
    from generator.measure.runner import report_records

    if not records.is_file():
        raise SpecError(f"no records file {records}", where="--records", fix="kubectl cp the master's records.jsonl here")
    gating = gate_inputs(spec)
    with atomic_dir(output, force=force, command_hint="tritongen loadtest --records ... -o " + str(output),
                    protected=protected) as tmp:
        result = report_records(spec, records, tmp)
        comparison, verdict = judge_folder(gating, tmp, str(output))
    return _conclude([result], None, output, comparison, verdict, junit, summary)


def _conclude(results: list, figures, output: Path, comparison, verdict, junit: Optional[Path],
              summary: Optional[Path]) -> int:
    """Print each run, write the CI files; the exit code of every gate (SLO, regression), or 1 if nothing succeeded."""
    from generator.measure.slo import EXIT_FAIL

    many = len(results) > 1
    for i, result in enumerate(results, 1):
        _print_results(result.results, output.resolve() / (f"run-{i:02d}" if many else ""))
    if figures:
        console.print(f"repeat report: {escape(str(output.resolve() / 'report.html'))} (and report.md, repeat.json)")
    slo_runs = [(f"run {i}", r.results.slo) for i, r in enumerate(results, 1) if r.results.slo]
    code = finish(slo_runs, comparison, verdict, junit, summary, figures)
    if not all(r.results.counts.ok for r in results):
        return EXIT_FAIL  # nothing succeeded: a failure, not an SLO that could not be measured (review28: exit 3)
    if not code and not all(r.results.completed for r in results):
        code = EXIT_FAIL  # a run lost a worker, and no gate called it inconclusive
    return code


def _run(spec: Spec, tmp: Path, repo: Optional[Path], url: Optional[str], grpc_url: Optional[str],
         metrics_url: Optional[str], admin_key: Optional[str], source: str):
    """One load test, or ``loadtest.repeat`` of them on one server: (the runs, the repeat figures or None)."""
    from generator.measure.runner import run_loadtest

    if spec.loadtest.repeat > 1:
        from generator.measure.repeat import run_repeated

        return run_repeated(spec, tmp, repo_dir=repo, url=url, grpc_url=grpc_url, metrics_url=metrics_url,
                            admin_key=admin_key, source=source, progress=lambda m: console.print(f"  {escape(m)}"))
    return [run_loadtest(spec, tmp, repo_dir=repo, url=url, grpc_url=grpc_url, metrics_url=metrics_url,
                         admin_key=admin_key)], None


@app.command()
def sweep(
    spec_path: SpecPath = None,
    sets: AxisSets = None,
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

    Exit codes with --slo: 0 a setting passed, 1 none passed, 3 none passed but some were inconclusive; with or
    without it, 1 when no setting was measured (every point failed: invalid, not valid, its server or load test, or
    no request of it succeeded, or it lost a Locust worker).
    """
    from generator.fsutil import atomic_dir
    from generator.measure.slo import EXIT_FAIL, EXIT_INCONCLUSIVE
    from generator.measure.sweep import plan_sweep, run_sweep

    plan = plan_sweep(list(sets or []))
    flags = spec_overrides(sweep, locals())
    spec = load_spec(spec_path, flags + plan.fixed)  # its SLO gives the exit code; its paths are protected
    for overrides in plan.points:  # fail on a bad field before the first server starts
        load_spec(spec_path, flags + overrides)
    console.print(f"{len(plan.points)} points: " + escape("; ".join(plan.label(p) for p in plan.points)))
    with atomic_dir(output, force=force, command_hint="tritongen sweep ... -o " + str(output), protected=spec.named_paths()) as tmp:
        with step("sweep"):
            result = run_sweep(spec, plan, tmp, gpu_visible=cuda_visible(), progress=lambda m: console.print(f"  {escape(m)}"))
    _print_sweep(result, output.resolve())
    # review26: without an SLO, a sweep whose every point failed (no server started) exited 0 having measured nothing;
    # review27: so did one whose every point ran but failed as its load test would (no request succeeded, a worker lost)
    if result.best is None and (spec.loadtest.slo or not any(p.results and p.results.completed for p in result.points)):
        # a point in which no request succeeded failed; its SLO could not be measured, which is no inconclusive run
        verdicts = [p.results.slo.verdict for p in result.points if p.results and p.results.slo and p.results.counts.ok]
        raise typer.Exit(code=EXIT_INCONCLUSIVE if Verdict.INCONCLUSIVE in verdicts else EXIT_FAIL)


def _print_sweep(result: SweepResult, out_dir: Path) -> None:
    from rich.table import Table

    from generator.measure.report_sweep import point_row

    table = Table(title="sweep")
    cols = ("setting", "status", "requests", "out tok/s", "TTFT p95 ms", "ITL p95 ms", "queue p95 ms", "errors", "SLO")
    for col in cols:
        table.add_column(col, overflow="fold")
    for p in result.points:
        r = point_row(p)

        def f(v: Optional[float]) -> str:
            return "–" if v is None else f"{v:.1f}"

        status = r.status if r.status is PointStatus.OK else f"[red]{r.status}[/]: {escape(r.detail[:60])}"
        table.add_row(escape(r.point), status, "–" if r.requests is None else str(r.requests), f(r.output_tokens_per_s), f(r.ttft_p95_ms), f(r.itl_p95_ms),
                      f(r.queue_p95_ms), "–" if r.error_rate is None else f"{r.error_rate:.1%}", r.slo or "–")
    out.print(table)
    best = result.best
    out.print(f"best at this load: [bold]{escape(best.label)}[/] ({escape(best.reason)})" if best
              else "[yellow]no setting qualified[/]")
    console.print(f"report: {escape(str(out_dir / 'report.html'))} (and report.md, points.csv, points.json)")
