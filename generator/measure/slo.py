"""SLO gate: ``ttft_p95<500ms,itl_p95<50ms,error_rate<0.1%`` checked against a load test's results.

Verdicts: ``fail`` when a term is violated (exit 1); ``inconclusive`` when nothing failed but the load
generator limited the run (it may have offered less load than asked, so a pass proves nothing) or a term
could not be measured, e.g. ITL without streaming (exit 3); else ``pass`` (exit 0). On a client-limited
run a latency term fails only if it misses by more than the client's own timestamp error (see judge).
Only ``pass`` exits 0, so a release pipeline never passes on a run that could not show the SLO is met.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from generator.errors import SpecError
from generator.measure.metrics import Metric, lookup
from generator.measure.results import ClientVerdict, SloVerdict, Summary, TermOutcome, TermResult, Verdict
from generator.measure.verdict import client_margin_ms

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_INCONCLUSIVE = 3
EXIT_CODES = {Verdict.PASS: EXIT_PASS, Verdict.FAIL: EXIT_FAIL, Verdict.INCONCLUSIVE: EXIT_INCONCLUSIVE}

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_TERM = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-z%]*)\s*$")


@dataclass(frozen=True)
class Term:
    text: str
    metric: Metric
    """From the registry (metrics.METRICS)."""
    op: str
    limit: float
    """In ms for latency terms, as a fraction for rates, as given otherwise."""


def parse_slo(text: str) -> list[Term]:
    """Parse a comma-separated SLO; units: us/ms/s for latencies, % or a fraction for rates."""
    terms = []
    for raw in [t for t in text.split(",") if t.strip()]:
        m = _TERM.match(raw.lower())
        if not m:
            raise SpecError(f"cannot read SLO term {raw.strip()!r}", where="--slo",
                            fix='write METRIC<VALUE[UNIT], e.g. "ttft_p95<500ms,error_rate<0.1%"')
        name, op, value, unit = m.groups()
        metric = lookup(name, "--slo", "SLO metric")
        limit = float(value)
        if metric.unit == "ms":
            if unit not in _TIME_UNITS:
                raise SpecError(f"SLO term {raw.strip()!r} needs a time unit", where="--slo", fix="add us, ms or s")
            limit *= _TIME_UNITS[unit]
        elif unit == "%":
            if not metric.is_fraction:
                raise SpecError(f"{name} is not a rate; drop the %", where="--slo", fix=f"write {name} as a plain number")
            limit /= 100.0
        elif unit:
            raise SpecError(f"unit {unit!r} does not fit {name}", where="--slo", fix=f"write {name} without a unit")
        terms.append(Term(raw.strip(), metric, op, limit))
    if not terms:
        raise SpecError("empty SLO", where="--slo", fix='e.g. --slo "ttft_p95<500ms"')
    return terms


def judge(term: Term, value: Optional[float], client_limited: bool, margin_ms: float) -> TermOutcome:
    """The outcome of one term.

    When the load generator limited the run, it may have offered less load than asked (so passing proves
    nothing) and its timestamps may be up to ``margin_ms`` late: a latency term fails only when it misses
    by more than that; an error-rate term fails as measured; a throughput term cannot fail.
    """
    if value is None:
        return TermOutcome.NOT_MEASURED
    if _OPS[term.op](value, term.limit):
        return TermOutcome.INCONCLUSIVE if client_limited else TermOutcome.PASS
    if not client_limited:
        return TermOutcome.FAIL
    if term.metric.unit == "ms" and term.op in ("<", "<="):
        return TermOutcome.FAIL if not _OPS[term.op](value - margin_ms, term.limit) else TermOutcome.INCONCLUSIVE
    return TermOutcome.FAIL if term.metric.is_fraction else TermOutcome.INCONCLUSIVE


def overall(outcomes: Iterable[TermOutcome]) -> Verdict:
    """A gate's verdict from its terms: fail if any failed, else pass only if every one passed."""
    seen = set(outcomes)
    if TermOutcome.FAIL in seen:
        return Verdict.FAIL
    return Verdict.PASS if seen == {TermOutcome.PASS} else Verdict.INCONCLUSIVE


def evaluate(terms: list[Term], summary: Summary, client: ClientVerdict, incomplete: Optional[str] = None) -> SloVerdict:
    """Each term's measured value and outcome, and the overall verdict with its exit code.

    fail if any term definitely fails; else inconclusive if the load generator limited the run, the run is
    ``incomplete`` (a Locust worker lost: less load than asked, its requests missing) or a term was not measured;
    else pass.
    """
    margin = client_margin_ms(client) if client.client_limited else 0.0
    rows = []
    for term in terms:
        value = term.metric.read(summary)
        result = judge(term, value, client.client_limited, margin)
        rows.append(TermResult(
            term=term.text, metric=term.metric.name, op=term.op, limit=term.limit, measured=value, unit=term.metric.unit,
            result=TermOutcome.INCONCLUSIVE if incomplete and result is TermOutcome.PASS else result,
        ))
    verdict = overall(r.result for r in rows)
    reasons = ([f"the load generator limited the run (its timestamps may be up to {margin:.1f} ms late)"]
               if client.client_limited else []) + ([f"run incomplete: {incomplete}"] if incomplete else [])
    reason = "; ".join(reasons) or None
    return SloVerdict(verdict=verdict, exit_code=EXIT_CODES[verdict], terms=rows, reason=reason)
