"""Load-test commands: `tritongen loadtest` (one configuration) and `tritongen sweep` (many).

Flags are spec overrides: each one becomes a ``--set loadtest.<field>=<value>``, so generator/spec.py stays
the one source of defaults. Locust runs as a subprocess; nothing here imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from generator.cli._app import AdminKeyOpt, SetOpt, SpecArg, app, console, cuda_visible, out, step
from generator.errors import TritongenError
from generator.spec import Spec, apply_overrides, load_spec, spec_from_dict

_FLAG_FIELDS = {
    "users": "users", "spawn_rate": "spawn_rate", "duration": "duration_s", "requests": "max_requests",
    "rate": "request_rate", "arrival": "arrival", "protocol": "protocol", "model": "model", "workers": "workers",
    "slo": "slo", "prompts": "prompts", "tokenizer": "tokenizer", "seed": "seed",
}


def _flag_overrides(**flags: Any) -> list[str]:
    """Given flags as ``--set loadtest.FIELD=VALUE`` overrides (None means not given)."""
    return [f"loadtest.{_FLAG_FIELDS[k]}={json.dumps(v) if isinstance(v, str) else v}"
            for k, v in flags.items() if v is not None]


def loadtest_spec(spec_path: Optional[Path], repo: Optional[Path], overrides: list[str]) -> Spec:
    """The spec file if given, else the one the repository was rendered from (tritongen.json), else defaults."""
    if spec_path is not None or repo is None or not (repo / "tritongen.json").is_file():
        return load_spec(spec_path, overrides)
    manifest = json.loads((repo / "tritongen.json").read_text(encoding="utf-8"))
    return spec_from_dict(apply_overrides(manifest.get("spec", {}), overrides), base_dir=repo,
                          source=str(repo / "tritongen.json"))


def _print_results(results: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    c, tp = results["counts"], results["throughput"]
    lat = results["latency_ms"]
    table = Table(title=f"{results['run']['title']}: {c['ok']} ok, {c['errors']} errors in {results['window_s']:.1f} s")
    for col in ("ms", "mean", "p50", "p90", "p99", "max"):
        table.add_column(col, justify="right" if col != "ms" else "left")
    for key, label in (("ttft", "TTFT"), ("itl", "ITL per gap"), ("itl_request", "ITL per request"),
                       ("e2e", "end-to-end"), ("lateness", "send lateness")):
        if lat.get(key):
            table.add_row(label, *(f"{lat[key][s]:.1f}" for s in ("mean", "p50", "p90", "p99", "max")))
    out.print(table)
    rps, tps = tp["requests_per_s"], tp["output_tokens_per_s"]
    out.print(f"throughput: {rps or 0:.2f} requests/s, {tps or 0:.1f} output tokens/s; "
              f"error rate {(results['error_rate'] or 0):.2%}")
    checks = results["checks"]
    if checks["checked"]:
        out.print(f"streamed-output checks: {checks['failed_requests']} of {checks['checked']} answers failed "
                  f"({', '.join(f'{k} {v}' for k, v in checks['failures'].items() if v) or 'none'})")
    split = results.get("split")
    if split:
        parts = split["parts"]
        out.print("TTFT split (mean ms): " + ", ".join(
            f"{k} {parts[k]['mean']:.1f}" for k in split["ttft_parts"]))
    client = results["client"]
    if client["client_limited"]:
        console.print("[yellow]load generator was the limit:[/] " + "; ".join(client["reasons"]))
    slo = results.get("slo")
    if slo:
        _print_slo(slo)
    console.print(f"report: {out_dir / 'report.html'} (and report.md, results.json, records.jsonl)")


def _print_slo(slo: dict[str, Any]) -> None:
    from rich.table import Table

    style = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}[slo["verdict"]]
    table = Table(title=f"SLO: [{style}]{slo['verdict'].upper()}[/]" + (f" ({slo['reason']})" if slo["reason"] else ""))
    for col in ("term", "measured", "result"):
        table.add_column(col)
    for r in slo["terms"]:
        value = r["measured"]
        shown = "–" if value is None else (f"{value:.3%}" if r["unit"] == "fraction" else f"{value:.2f} {r['unit']}")
        result = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "inconclusive": "[yellow]inconclusive[/]",
                  "not measured": "[yellow]not measured[/]"}[r["result"]]
        table.add_row(r["term"], shown, result)
    out.print(table)


@app.command()
def loadtest(
    repo: Optional[Path] = typer.Argument(None, help="Rendered repository to serve and test (or use --url)."),
    url: Optional[str] = typer.Option(None, "--url", help="Test a running server instead: its HTTP URL."),
    grpc_url: Optional[str] = typer.Option(None, "--grpc-url", help="With --url: gRPC HOST:PORT (default: HTTP port + 1)."),
    metrics_url: Optional[str] = typer.Option(None, "--metrics-url", help="With --url: metrics URL (default: HTTP port + 2)."),
    spec_path: Optional[Path] = typer.Option(None, "--spec", help="Spec file (default: the repository's tritongen.json)."),
    users: Optional[int] = typer.Option(None, "--users", "-u", help="Concurrent users (closed loop)."),
    spawn_rate: Optional[float] = typer.Option(None, "--spawn-rate", "-r", help="Users started per second."),
    duration: Optional[float] = typer.Option(None, "--duration", "-t", help="Seconds of load after spawning."),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", help="Stop after this many requests."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Open loop: requests per second on a schedule."),
    arrival: Optional[str] = typer.Option(None, "--arrival", help="Open loop: poisson or constant."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="grpc-stream, http-stream or http."),
    model: Optional[str] = typer.Option(None, "--model", help="ensemble or tensorrt_llm_bls."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Distributed Locust: worker processes."),
    slo: Optional[str] = typer.Option(None, "--slo", help='e.g. "ttft_p95<500ms,itl_p95<50ms,error_rate<0.1%".'),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL prompts (a 'text' per line)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer folder (default: the served one)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for prompts, lengths and arrivals."),
    admin_key: Optional[str] = AdminKeyOpt,
    output: Path = typer.Option(Path("loadtest-results"), "--output", "-o", help="Folder for records and the report."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    overrides: Optional[List[str]] = SetOpt,
) -> None:
    """Load-test a Triton LLM endpoint with Locust: TTFT, ITL, throughput, server-side split, checks, SLO gate.

    Exit codes: 0 done (and the SLO passed), 1 SLO violated or no request succeeded, 3 SLO inconclusive
    (the load generator limited the run, or a term could not be measured), 2 bad input.
    """
    from generator.fsutil import atomic_dir
    from generator.measure.runner import run_loadtest
    from generator.measure.slo import EXIT_FAIL

    if (repo is None) == (url is None):
        raise TritongenError("give either a repository folder or --url", fix="tritongen loadtest REPO, or --url http://HOST:8000")
    flags = _flag_overrides(users=users, spawn_rate=spawn_rate, duration=duration, requests=requests, rate=rate,
                            arrival=arrival, protocol=protocol, model=model, workers=workers, slo=slo,
                            prompts=str(prompts.resolve()) if prompts else None,
                            tokenizer=str(tokenizer.resolve()) if tokenizer else None, seed=seed)
    spec = loadtest_spec(spec_path, repo, list(overrides or []) + flags)
    lt = spec.loadtest
    load = f"{lt.request_rate:g} req/s" if lt.request_rate else f"{lt.users} users"
    protected = dict(spec.named_paths(), **({"the repository": repo} if repo else {}))
    with atomic_dir(output, force=force, command_hint="tritongen loadtest ... -o " + str(output), protected=protected) as tmp:
        with step(f"load test: {load}, {lt.duration_s:g} s, {lt.protocol} ({repo or url})"):
            result = run_loadtest(spec, tmp, repo_dir=repo, url=url, grpc_url=grpc_url, metrics_url=metrics_url,
                                  admin_key=admin_key)
    _print_results(result.results, output.resolve())
    if result.results.get("slo"):
        raise typer.Exit(code=result.results["slo"]["exit_code"])
    if not result.results["counts"]["ok"]:
        raise typer.Exit(code=EXIT_FAIL)


@app.command()
def sweep(
    spec_path: Optional[Path] = SpecArg,
    sets: Optional[List[str]] = typer.Option(
        None, "--set", help="KEY=V1,V2,... sweeps a field (several give every combination); KEY=V fixes one."),
    users: Optional[int] = typer.Option(None, "--users", "-u", help="Concurrent users at every point."),
    duration: Optional[float] = typer.Option(None, "--duration", "-t", help="Seconds of load per point."),
    requests: Optional[int] = typer.Option(None, "--requests", "-n", help="Requests per point."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Open loop: requests per second."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="grpc-stream, http-stream or http."),
    slo: Optional[str] = typer.Option(None, "--slo", help="SLO each point is checked against; picks the best point."),
    output: Path = typer.Option(Path("sweep-results"), "--output", "-o", help="Folder for the sweep report."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Render, validate, serve and load-test each setting with the same seeded load; report and pick the best.

    Exit codes with --slo: 0 a setting passed, 1 none passed, 3 none passed but some were inconclusive.
    """
    from generator.fsutil import atomic_dir
    from generator.measure.slo import EXIT_FAIL, EXIT_INCONCLUSIVE
    from generator.measure.sweep import plan_sweep, run_sweep

    plan = plan_sweep(list(sets or []))
    flags = _flag_overrides(users=users, duration=duration, requests=requests, rate=rate, protocol=protocol, slo=slo)
    spec = load_spec(spec_path, flags)
    for overrides in plan.points:  # fail on a bad field before the first server starts
        load_spec(spec_path, flags + overrides)
    console.print(f"{len(plan.points)} points: " + "; ".join(plan.label(p) for p in plan.points))
    with atomic_dir(output, force=force, command_hint="tritongen sweep ... -o " + str(output), protected=spec.named_paths()) as tmp:
        with step("sweep"):
            result = run_sweep(spec, plan, tmp, gpu_visible=cuda_visible(), progress=lambda m: console.print(f"  {m}"))
    _print_sweep(result, output.resolve())
    if spec.loadtest.slo and result["best"] is None:
        verdicts = [(p.get("results") or {}).get("slo", {}).get("verdict") for p in result["points"]]
        raise typer.Exit(code=EXIT_INCONCLUSIVE if "inconclusive" in verdicts else EXIT_FAIL)


def _print_sweep(result: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    from generator.measure.report import point_row

    table = Table(title="sweep")
    cols = ("setting", "status", "out tok/s", "TTFT p95 ms", "ITL p95 ms", "queue p95 ms", "errors", "SLO")
    for col in cols:
        table.add_column(col, overflow="fold")
    for p in result["points"]:
        r = point_row(p)

        def f(v: Optional[float]) -> str:
            return "–" if v is None else f"{v:.1f}"

        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]: {r['detail'][:60]}"
        table.add_row(r["point"], status, f(r["output_tokens_per_s"]), f(r["ttft_p95_ms"]), f(r["itl_p95_ms"]),
                      f(r["queue_p95_ms"]), "–" if r["error_rate"] is None else f"{r['error_rate']:.1%}",
                      r["slo"] or "–")
    out.print(table)
    best = result["best"]
    out.print(f"best: [bold]{best['label']}[/] ({best['reason']})" if best else "[yellow]no setting qualified[/]")
    console.print(f"report: {out_dir / 'report.html'} (and report.md, points.csv, points.json)")
