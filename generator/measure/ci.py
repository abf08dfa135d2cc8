"""What CI systems read: JUnit XML (one test case per SLO term and gate term) and a Markdown step summary.

The XML follows the Jenkins/Ant JUnit schema that Jenkins, GitLab and GitHub test-report actions read
(tests/data/junit-10.xsd checks it). A failed term is a <failure> and an inconclusive one an <error> (the
run could not show the term is met: exit 3), each with the figure, the limit and the interval in its
text. Pure: verdicts in, text out.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Optional

from generator.measure.compare import Change, Comparison, MetricComparison
from generator.measure.evidence import FigureSummary
from generator.measure.gate import GateTermResult, GateVerdict
from generator.measure.intervals import Interval
from generator.measure.report_doc import md_text
from generator.measure.results import SloVerdict, TermOutcome, TermResult

SloRuns = list[tuple[str, SloVerdict]]
"""(run label, its SLO verdict) for each run that had an SLO."""


def fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "–"
    if unit == "fraction":
        return f"{value:.2%}"
    return f"{value:.2f} ms" if unit == "ms" else f"{value:.2f}/s"


def _pct(x: float) -> str:
    return f"{x:+.1%}" if abs(x) < 10 else (">+1000%" if x > 0 else "<-1000%")


def fmt_change(iv: Optional[Interval], relative: bool) -> str:
    """``+12.3% [+8.1%, +16.0%]`` (relative) or ``+0.40 pts [...]`` (difference of shares)."""
    if iv is None:
        return "–"
    if relative:
        return f"{_pct(iv.estimate)} [{_pct(iv.low)}, {_pct(iv.high)}]"
    return f"{iv.estimate * 100:+.2f} pts [{iv.low * 100:+.2f}, {iv.high * 100:+.2f}]"


def _slo_text(r: TermResult, figure: Optional[FigureSummary]) -> str:
    interval = ""
    if figure and figure.within:
        w = figure.within
        pooled = f" pooled over {len(figure.runs)} runs" if len(figure.runs) > 1 else ""
        interval = (f"; {w.confidence:.0%} interval {fmt(w.low, r.unit)} – {fmt(w.high, r.unit)} "
                    f"({w.n} requests{pooled}, {w.method})")
    return f"{r.metric} measured {fmt(r.measured, r.unit)}, limit {r.op} {fmt(r.limit, r.unit)}{interval}"


def _gate_text(r: GateTermResult) -> str:
    limit = f"{r.limit:.1%}" if r.relative else f"{r.limit * 100:.2f} points"
    conf = f"{r.change.confidence:.0%} " if r.change else ""
    return (f"{r.metric} baseline {fmt(r.baseline, r.unit)}, candidate {fmt(r.candidate, r.unit)}; change "
            f"{fmt_change(r.change, r.relative)} ({conf}interval), allowed {limit} worse: {r.reason}")


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""What XML 1.0 cannot hold, even as a character reference: control characters and lone surrogates."""


def _xml(text: str) -> str:
    """``text`` with what XML cannot hold written as its escape (``\\x07``): a baseline's client reason holding
    one made the whole junit.xml not well-formed, so the CI's test report read none of it (review14)."""
    return _NOT_XML.sub(lambda m: ascii(m.group())[1:-1], text)


def _case(suite: ET.Element, classname: str, name: str, outcome: TermOutcome, text: str) -> None:
    name, text = _xml(name), _xml(text)
    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    if outcome is TermOutcome.FAIL:
        ET.SubElement(case, "failure", type="regression" if "gate" in classname else "slo", message=text).text = text
    elif outcome is not TermOutcome.PASS:
        ET.SubElement(case, "error", type="inconclusive", message=text).text = text
    ET.SubElement(case, "system-out").text = text


def _suite(root: ET.Element, name: str, cases: list[tuple[str, str, TermOutcome, str]]) -> None:
    suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(cases)),
                          failures=str(sum(c[2] is TermOutcome.FAIL for c in cases)),
                          errors=str(sum(c[2] not in (TermOutcome.FAIL, TermOutcome.PASS) for c in cases)))
    for classname, case_name, outcome, text in cases:
        _case(suite, classname, case_name, outcome, text)


def junit_xml(slo: SloRuns, gate: Optional[GateVerdict], figures: Optional[dict[str, FigureSummary]] = None) -> str:
    """One <testsuite> for the SLO (a case per term and run) and one for the regression gate."""
    figures = figures or {}
    root = ET.Element("testsuites", name="tritongen")
    if slo:
        several = len(slo) > 1
        _suite(root, "tritongen.slo", [
            ("tritongen.slo", f"{label}: {r.term}" if several else r.term, r.result,
             _slo_text(r, figures.get(r.metric)))
            for label, verdict in slo for r in verdict.terms])
    if gate:
        _suite(root, "tritongen.gate", [("tritongen.gate", r.term, r.result, _gate_text(r)) for r in gate.terms])
    totals = root.findall("testsuite")
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key)) for s in totals)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_MARK = {TermOutcome.PASS: "✅ pass", TermOutcome.FAIL: "❌ FAIL", TermOutcome.INCONCLUSIVE: "⚠️ inconclusive",
         TermOutcome.NOT_MEASURED: "⚠️ not measured"}


def _cell(text: str) -> str:
    return md_text(text).replace("|", "\\|")


def summary_markdown(slo: SloRuns, gate: Optional[GateVerdict], comparison: Optional[Comparison]) -> str:
    """A step summary: the verdicts first, then every compared metric with its interval."""
    lines = ["## tritongen release gate", ""]
    for label, verdict in slo:
        lines += [f"**SLO ({_cell(label)}): {verdict.verdict.upper()}** (exit {verdict.exit_code})"
                  + (f" — {_cell(verdict.reason)}" if verdict.reason else ""), "",
                  "| term | measured | result |", "| --- | --- | --- |"]
        lines += [f"| `{_cell(r.term)}` | {fmt(r.measured, r.unit)} | {_MARK[r.result]} |" for r in verdict.terms]
        lines.append("")
    if gate:
        lines += [f"**Regression gate: {gate.verdict.upper()}** (exit {gate.exit_code})"
                  + (f" — {_cell(gate.reason)}" if gate.reason else ""), "",
                  "| term | baseline | candidate | change [interval] | result |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| `{_cell(r.term)}` | {fmt(r.baseline, r.unit)} | {fmt(r.candidate, r.unit)} | "
                  f"{fmt_change(r.change, r.relative)} | {_MARK[r.result]} |" for r in gate.terms]
        lines.append("")
    if comparison:
        lines += comparison_markdown(comparison)
    return "\n".join(lines) + "\n"


def shown_verdict(m: MetricComparison) -> str:
    """The verdict, and what the data alone said when a block (not comparable, client-limited) overrides it."""
    return str(m.verdict) if m.measured in (m.verdict, Change.NOT_COMPARABLE) else f"{m.verdict} (data: {m.measured})"


def comparison_markdown(c: Comparison) -> list[str]:
    lines = [f"Compared `{_cell(c.baseline)}` ({c.runs[0]} run(s)) with `{_cell(c.candidate)}` ({c.runs[1]} run(s)), "
             f"{c.confidence:.0%} intervals.", ""]
    if c.reasons:
        lines += ["**Not comparable:**", *[f"- {_cell(r)}" for r in c.reasons], ""]
    if c.client_limited:
        lines += ["**Inconclusive — the load generator was the limit:**", *[f"- {_cell(r)}" for r in c.client_limited], ""]
    if c.server_changes:
        lines += ["Served settings that changed: " + "; ".join(_cell(s) for s in c.server_changes), ""]
    lines += ["| metric | baseline | candidate | change [interval] | verdict | interval from |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {m.label} | {fmt(m.baseline, m.unit)} | {fmt(m.candidate, m.unit)} | "
              f"{fmt_change(m.change, m.relative)} | {shown_verdict(m)} | {m.method} |" for m in c.metrics]
    lines += ["", *[f"_{_cell(n)}_" for n in c.notes]]
    return lines
