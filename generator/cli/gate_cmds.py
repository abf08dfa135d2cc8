"""Release-gate commands: `tritongen compare` and `tritongen baseline save`, and the gate step of `loadtest`.

A baseline is what a team commits next to its spec (generator/measure/evidence.py says what it holds and
why); `compare` and `loadtest --baseline` read it, or a load-test / repeat / sweep / tune folder in its place.
Exit codes follow the SLO gate's: 0 pass, 1 a confirmed regression (or SLO violation), 3 inconclusive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from generator.cli._app import Force, app, console, escape, get_spec, out, spec_option
from generator.errors import OutputExists, SpecError
from generator.fsutil import atomic_write_text, check_side_file
from generator.measure import baseline as baseline_io
from generator.measure.ci import SloRuns, fmt, fmt_change, junit_xml, shown_verdict, summary_markdown
from generator.measure.compare import Change, Comparison, compare
from generator.measure.evidence import Evidence
from generator.measure.gate import GateTerm, GateVerdict, combined_exit, evaluate_gate, parse_gate
from generator.measure.results import TermOutcome, Verdict
from generator.spec import Spec

Junit = Annotated[Optional[Path], typer.Option(
    "--junit", help="Write JUnit XML here: a test case per SLO term and gate term (for CI test reports).")]
Summary = Annotated[Optional[Path], typer.Option(
    "--summary", help="Write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")]
Baseline = spec_option("gate.baseline", "--baseline")
Gate = spec_option("gate.max_change", "--gate")

baseline_app = typer.Typer(help="Save the baseline a release is compared with.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")

_STYLE = {Change.BETTER: "green", Change.WORSE: "bold red", Change.NONE: "", Change.NOT_COMPARABLE: "yellow",
          Change.INCONCLUSIVE: "yellow"}
_RESULT = {TermOutcome.PASS: "[green]pass[/]", TermOutcome.FAIL: "[bold red]FAIL[/]",
           TermOutcome.INCONCLUSIVE: "[yellow]inconclusive[/]", TermOutcome.NOT_MEASURED: "[yellow]not measured[/]"}


@dataclass
class GateInputs:
    """What the gate step needs, read and checked before any load runs."""

    baseline: Optional[Evidence]
    terms: Optional[list[GateTerm]]
    confidence: float


def gate_inputs(spec: Spec) -> GateInputs:
    g = spec.gate
    terms = parse_gate(g.max_change, "gate.max_change (--gate)") if g.max_change else None
    if terms and g.baseline is None:
        raise SpecError("a regression gate needs a baseline", where="gate.baseline (--baseline)",
                        fix="pass --baseline baseline.json (from `tritongen baseline save RUN -o baseline.json`)")
    return GateInputs(baseline_io.load_baseline(spec.path(g.baseline)) if g.baseline else None, terms, g.confidence)


def judge_folder(inputs: GateInputs, folder: Path, source: str) -> tuple[Optional[Comparison], Optional[GateVerdict]]:
    """Compare the run(s) in ``folder`` with the baseline; writes compare.json and compare.md there."""
    if inputs.baseline is None:
        return None, None
    candidate = baseline_io.load(folder).model_copy(update={"source": source})
    comparison = compare(inputs.baseline, candidate, inputs.confidence)
    gate = evaluate_gate(inputs.terms, comparison) if inputs.terms else None
    atomic_write_text(folder / "compare.json", json.dumps(
        {"comparison": comparison.model_dump(mode="json"), "gate": gate.model_dump(mode="json") if gate else None},
        indent=1))
    atomic_write_text(folder / "compare.md", summary_markdown([], gate, comparison))
    return comparison, gate


def print_comparison(c: Comparison) -> None:
    from rich.table import Table

    table = Table(title=f"{escape(c.candidate)} against {escape(c.baseline)} ({c.runs[1]} vs {c.runs[0]} run(s), "
                        f"{c.confidence:.0%} intervals)")
    for col in ("metric", "baseline", "candidate", "change [interval]", "verdict", "interval from"):
        table.add_column(col, overflow="fold")
    for m in c.metrics:
        style = _STYLE[m.verdict]
        shown = shown_verdict(m)
        table.add_row(m.label, fmt(m.baseline, m.unit), fmt(m.candidate, m.unit), fmt_change(m.change, m.relative),
                      f"[{style}]{shown}[/]" if style else shown, escape(m.method))
    out.print(table)
    for reason in c.reasons:
        console.print(f"[yellow]not comparable:[/] {escape(reason)}")
    for reason in c.client_limited:
        console.print(f"[yellow]inconclusive, the load generator was the limit:[/] {escape(reason)}")
    if c.server_changes:
        console.print("served settings that changed: " + escape("; ".join(c.server_changes)))
    for note in c.notes:
        console.print(f"[dim]{escape(note)}[/]")


def print_gate(gate: GateVerdict) -> None:
    from rich.table import Table

    style = {Verdict.PASS: "green", Verdict.FAIL: "bold red", Verdict.INCONCLUSIVE: "yellow"}[gate.verdict]
    table = Table(title=f"regression gate: [{style}]{gate.verdict.upper()}[/]")
    for col in ("term", "change [interval]", "result", "why"):
        table.add_column(col, overflow="fold")
    for r in gate.terms:
        table.add_row(escape(r.term), fmt_change(r.change, r.relative), _RESULT[r.result], escape(r.reason))
    out.print(table)


def finish(slo_runs: SloRuns, comparison: Optional[Comparison], gate: Optional[GateVerdict],
           junit: Optional[Path], summary: Optional[Path], figures: Optional[Evidence] = None) -> int:
    """Print the comparison and gate, write the CI files; the exit code of all gates together."""
    if comparison:
        print_comparison(comparison)
    if gate:
        print_gate(gate)
    if junit:
        by_metric = {f.metric: f for f in figures.summary} if figures else {}
        atomic_write_text(junit, junit_xml(slo_runs, gate, by_metric))
        console.print(f"JUnit XML: {escape(str(junit))}")
    if summary:
        atomic_write_text(summary, summary_markdown(slo_runs, gate, comparison))
        console.print(f"summary: {escape(str(summary))}")
    return combined_exit(*(v.verdict for _, v in slo_runs), gate.verdict if gate else None)


@app.command("compare")
def compare_cmd(
    baseline: Annotated[Path, typer.Argument(help="Baseline: a baseline file, or a load-test, repeat, sweep or tune folder.")],
    candidate: Annotated[Path, typer.Argument(help="Candidate: a load-test, repeat, sweep or tune folder (or a baseline file).")],
    gate: Gate = None,
    spec_path: Annotated[Optional[Path], typer.Option("--spec", help="Spec whose gate section applies.")] = None,
    junit: Junit = None,
    summary: Summary = None,
) -> None:
    """Compare two runs metric by metric: the change with its interval and a verdict; with --gate, gate on it.

    Exit codes: 0 (with --gate: every term shown within its limit), 1 a regression beyond its limit that the
    interval confirms, 3 inconclusive (interval straddles a limit, runs not comparable, or client-limited).
    """
    reads = {"the baseline": baseline, "the candidate": candidate, "the spec": spec_path}
    for side, option in ((junit, "--junit"), (summary, "--summary")):
        check_side_file(side, option, reads)
    flags = [f"gate.max_change={json.dumps(gate)}"] if gate else []
    spec = get_spec(spec_path, flags)
    terms = parse_gate(spec.gate.max_change, "gate.max_change (--gate)") if spec.gate.max_change else None
    comparison = compare(baseline_io.load_baseline(baseline), baseline_io.load(candidate), spec.gate.confidence)
    verdict = evaluate_gate(terms, comparison) if terms else None
    code = finish([], comparison, verdict, junit, summary)
    raise typer.Exit(code=code)


@baseline_app.command("save")
def baseline_save(
    run: Annotated[Path, typer.Argument(help="A load-test, repeat (--repeat), sweep or tune output folder.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Baseline file to write.")] = Path("baseline.json"),
    force: Force = False,
) -> None:
    """Save a run as the baseline file a team commits: figures, intervals, load, settings, versions; no text."""
    if output.exists() and not force:
        raise OutputExists(f"{output} exists", where=str(output), fix="pass --force to replace it, or another -o")
    ev = baseline_io.load_baseline(run)
    atomic_write_text(output, json.dumps(ev.model_dump(mode="json"), indent=1) + "\n")
    out.print("\n".join(_describe(ev)))
    console.print(f"baseline: {escape(str(output))} ({output.stat().st_size / 1024:.1f} KiB)")


def _describe(ev: Evidence) -> list[str]:
    n = sum(r.requests for r in ev.runs)
    lines = [f"{len(ev.runs)} run(s), {n} requests" + (", CLIENT-LIMITED" if ev.client_limited else "")]
    for f in ev.summary:
        lines.append(f"  {f.metric}: {f.mean:.4g}" + (f" (run-to-run CV {f.cv:.1%})" if f.cv is not None else ""))
    return lines
