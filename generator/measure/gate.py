"""The regression gate: ``ttft_p95:+10%,throughput:-5%`` checked against a comparison with the baseline.

A term names a metric (metrics.METRICS) and the largest change allowed in its worse direction: a relative
change for latencies and throughput, percentage points for rates (``error_rate:+0.5%``). Per term, on the
change's confidence interval (compare.py):
- ``fail`` when the whole interval lies beyond the limit: a regression the data confirm (exit 1);
- ``pass`` when the whole interval lies within it (exit 0);
- ``inconclusive`` otherwise, and whenever the runs are not comparable, the load generator limited a run
  on either side, or a side did not measure the metric (exit 3).
So, as with the SLO gate (slo.py), only a shown absence of regression exits 0: too few repeats for the
machine's noise give 3, never a silent pass; a pass on one run a side is inconclusive too (its interval cannot
see the run-to-run spread).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from pydantic import BaseModel

from generator.errors import SpecError
from generator.measure.compare import Comparison, MetricComparison
from generator.measure.intervals import Interval
from generator.measure.metrics import COMPARED, Direction, Metric, lookup
from generator.measure.results import TermOutcome, Verdict
from generator.measure.slo import EXIT_CODES, overall

_TERM = re.compile(r"^\s*([a-z_0-9]+)\s*:\s*([+-]?)\s*([0-9]*\.?[0-9]+)\s*%\s*$")
EXAMPLE = "ttft_p95:+10%,throughput:-5%"


@dataclass(frozen=True)
class GateTerm:
    text: str
    metric: Metric
    limit: float
    """Largest change allowed in the worse direction, as a positive fraction (0.10 = 10 %, or 10 points)."""


class GateTermResult(BaseModel):
    term: str
    metric: str
    limit: float
    relative: bool
    direction: Direction
    baseline: Optional[float]
    candidate: Optional[float]
    unit: str
    change: Optional[Interval]
    result: TermOutcome
    reason: str


class GateVerdict(BaseModel):
    verdict: Verdict
    exit_code: int
    terms: list[GateTermResult]
    reason: Optional[str]


def parse_gate(text: str, where: str = "--gate") -> list[GateTerm]:
    terms = []
    for raw in [t for t in text.split(",") if t.strip()]:
        m = _TERM.match(raw.lower())
        if not m:
            raise SpecError(f"cannot read gate term {raw.strip()!r}", where=where,
                            fix=f'write METRIC:+N% (or -N% for what should not drop), e.g. "{EXAMPLE}"')
        name, sign, value = m.groups()
        metric = lookup(name, where, "gate metric")
        if metric.name not in COMPARED:
            raise SpecError(f"gate metric {name!r} is not one that compare reports", where=where,
                            fix="use one of: " + ", ".join(COMPARED) + " (throughput = output_tokens_per_s)")
        worse = "+" if metric.direction is Direction.LOWER else "-"
        if sign and sign != worse:
            raise SpecError(f"gate term {raw.strip()!r}: {metric.name} gets worse when it "
                            f"{'rises' if worse == '+' else 'falls'}", where=where,
                            fix=f"write {name}:{worse}{value}% (the largest change allowed in the worse direction)")
        terms.append(GateTerm(raw.strip(), metric, float(value) / 100))
    if not terms:
        raise SpecError("empty gate", where=where, fix=f'e.g. --gate "{EXAMPLE}"')
    return terms


def judge(term: GateTerm, change: Optional[Interval]) -> TermOutcome:
    """fail/pass/inconclusive of one term on its change interval (worse direction made positive)."""
    if change is None:
        return TermOutcome.NOT_MEASURED
    sign = 1 if term.metric.direction is Direction.LOWER else -1
    low, high = sorted((sign * change.low, sign * change.high))
    if low > term.limit:
        return TermOutcome.FAIL
    if high <= term.limit:
        return TermOutcome.PASS
    return TermOutcome.INCONCLUSIVE


def _reason(term: GateTerm, outcome: TermOutcome, blocked: Optional[str]) -> str:
    if blocked:
        return blocked
    limit = f"{term.limit:.1%}" + ("" if term.metric.kind != "proportion" else " points")
    return {
        TermOutcome.FAIL: f"the whole interval is beyond the allowed {limit}",
        TermOutcome.PASS: f"the whole interval is within the allowed {limit}",
        TermOutcome.INCONCLUSIVE: f"the interval straddles the allowed {limit}: more repeats narrow it",
        TermOutcome.NOT_MEASURED: "not measured on both sides",
    }[outcome]


ONE_RUN = ("one run on a side: its interval covers request-to-request variation only, not how the server's speed "
           "moves from run to run, so it cannot show an absence of regression: --repeat N (2 or more a side)")


def _one_run_pass(term: GateTerm, outcome: TermOutcome, row: MetricComparison) -> bool:
    """A pass from one run on a side, whose interval is narrower than two runs give (run to run): with the server's
    speed moving 5% between runs it passed a true +15% regression 3 times in 40 against ``+10%`` (a 95% interval
    allows 1), where two runs a side read inconclusive (review 13). Runs that carry the figure count: of two
    candidate runs, one whose every request failed left the other's narrow interval to pass (review 19). Rates
    (pooled counts) use the same method at any number of runs."""
    return outcome is TermOutcome.PASS and min(row.runs) < 2 and term.metric.kind != "proportion"


def evaluate_gate(terms: list[GateTerm], comparison: Comparison) -> GateVerdict:
    """Each term's outcome on the comparison, and the overall verdict with its exit code (as slo.evaluate)."""
    blocked = None
    if not comparison.comparable:
        blocked = "not comparable: " + "; ".join(comparison.reasons)
    elif comparison.client_limited:
        blocked = "the load generator limited a run: " + "; ".join(comparison.client_limited)
    rows = []
    for term in terms:
        row = comparison.get(term.metric.name)
        outcome = judge(term, row.change)
        why = blocked
        if blocked and outcome is not TermOutcome.NOT_MEASURED:
            outcome = TermOutcome.INCONCLUSIVE
        elif _one_run_pass(term, outcome, row):
            outcome, why = TermOutcome.INCONCLUSIVE, ONE_RUN
        rows.append(GateTermResult(
            term=term.text, metric=term.metric.name, limit=term.limit, relative=row.relative,
            direction=term.metric.direction, baseline=row.baseline, candidate=row.candidate, unit=term.metric.unit,
            change=row.change, result=outcome, reason=_reason(term, outcome, why),
        ))
    verdict = overall(r.result for r in rows)
    return GateVerdict(verdict=verdict, exit_code=EXIT_CODES[verdict], terms=rows, reason=blocked)


def combined_exit(*verdicts: Optional[Verdict]) -> int:
    """One exit code for several gates (SLO per run, regression): any fail → 1, else any inconclusive → 3."""
    given = {v for v in verdicts if v is not None}
    if Verdict.FAIL in given:
        return EXIT_CODES[Verdict.FAIL]
    return EXIT_CODES[Verdict.INCONCLUSIVE] if Verdict.INCONCLUSIVE in given else EXIT_CODES[Verdict.PASS]
