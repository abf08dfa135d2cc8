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
from typing import Any, Callable, Optional

from generator.errors import SpecError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_INCONCLUSIVE = 3

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt,
}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
# Latency metrics (results["latency_ms"][name][stat]) and the statistics they allow.
_LATENCY = ("ttft", "itl_request", "itl", "e2e", "lateness")
_STATS = ("p50", "p90", "p95", "p99", "mean", "max")
# Other metrics: where they live in the results, and whether they are fractions (so % is allowed).
_SCALARS: dict[str, tuple[Callable[[dict[str, Any]], Optional[float]], bool]] = {
    "error_rate": (lambda r: r.get("error_rate"), True),
    "check_failure_rate": (
        lambda r: (sum(r["checks"]["failures"].values()) / r["checks"]["checked"]) if r["checks"]["checked"] else None,
        True,
    ),
    "requests_per_s": (lambda r: r["throughput"]["requests_per_s"], False),
    "output_tokens_per_s": (lambda r: r["throughput"]["output_tokens_per_s"], False),
}
_TERM = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-z%]*)\s*$")


@dataclass(frozen=True)
class Term:
    text: str
    metric: str
    stat: Optional[str]
    op: str
    limit: float
    """In ms for latency terms, as a fraction for rates, as given otherwise."""


def _split_metric(name: str) -> tuple[str, Optional[str]]:
    for metric in _LATENCY:
        for stat in _STATS:
            if name == f"{metric}_{stat}":
                return metric, stat
    if name in _SCALARS:
        return name, None
    known = [f"{m}_{{{'|'.join(_STATS)}}}" for m in _LATENCY] + list(_SCALARS)
    raise SpecError(f"unknown SLO metric {name!r}", where="--slo", fix="use one of: " + ", ".join(known))


def parse_slo(text: str) -> list[Term]:
    """Parse a comma-separated SLO; units: us/ms/s for latencies, % or a fraction for rates."""
    terms = []
    for raw in [t for t in text.split(",") if t.strip()]:
        m = _TERM.match(raw.lower())
        if not m:
            raise SpecError(f"cannot read SLO term {raw.strip()!r}", where="--slo",
                            fix='write METRIC<VALUE[UNIT], e.g. "ttft_p95<500ms,error_rate<0.1%"')
        name, op, value, unit = m.groups()
        metric, stat = _split_metric(name)
        limit = float(value)
        if stat is not None:
            if unit not in _TIME_UNITS:
                raise SpecError(f"SLO term {raw.strip()!r} needs a time unit", where="--slo", fix="add us, ms or s")
            limit *= _TIME_UNITS[unit]
        elif unit == "%":
            if not _SCALARS[metric][1]:
                raise SpecError(f"{metric} is not a rate; drop the %", where="--slo", fix=f"write {metric} as a plain number")
            limit /= 100.0
        elif unit:
            raise SpecError(f"unit {unit!r} does not fit {metric}", where="--slo", fix=f"write {metric} without a unit")
        terms.append(Term(raw.strip(), metric, stat, op, limit))
    if not terms:
        raise SpecError("empty SLO", where="--slo", fix='e.g. --slo "ttft_p95<500ms"')
    return terms


def measured(term: Term, results: dict[str, Any]) -> Optional[float]:
    if term.stat is not None:
        block = results["latency_ms"].get(term.metric)
        return None if not block else block[term.stat]
    return _SCALARS[term.metric][0](results)


def client_margin_ms(results: dict[str, Any]) -> float:
    """How late the load generator's own timestamps may be: the worst process's event-loop lag p99."""
    return max((p["lag_p99_ms"] for p in results.get("client", {}).get("processes", [])), default=0.0)


def judge(term: Term, value: Optional[float], client_limited: bool, margin_ms: float) -> str:
    """``pass``, ``fail``, ``inconclusive`` or ``not measured`` for one term.

    When the load generator limited the run, it may have offered less load than asked (so passing proves
    nothing) and its timestamps may be up to ``margin_ms`` late: a latency term fails only when it misses
    by more than that; an error-rate term fails as measured; a throughput term cannot fail.
    """
    if value is None:
        return "not measured"
    if _OPS[term.op](value, term.limit):
        return "inconclusive" if client_limited else "pass"
    if not client_limited:
        return "fail"
    if term.stat is not None and term.op in ("<", "<="):
        return "fail" if not _OPS[term.op](value - margin_ms, term.limit) else "inconclusive"
    return "fail" if _SCALARS.get(term.metric, (None, False))[1] else "inconclusive"


def evaluate(terms: list[Term], results: dict[str, Any]) -> dict[str, Any]:
    """Each term's measured value and outcome, and the overall verdict with its exit code.

    fail if any term definitely fails; else inconclusive if the load generator limited the run or a term
    was not measured; else pass.
    """
    client_limited = bool(results.get("client", {}).get("client_limited"))
    margin = client_margin_ms(results) if client_limited else 0.0
    rows = []
    for term in terms:
        value = measured(term, results)
        rows.append({
            "term": term.text, "metric": term.metric + (f"_{term.stat}" if term.stat else ""),
            "op": term.op, "limit": term.limit, "measured": value,
            "unit": "ms" if term.stat else ("fraction" if _SCALARS[term.metric][1] else "per s"),
            "result": judge(term, value, client_limited, margin),
        })
    results_set = {r["result"] for r in rows}
    if "fail" in results_set:
        verdict = "fail"
    elif results_set != {"pass"}:
        verdict = "inconclusive"
    else:
        verdict = "pass"
    code = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "inconclusive": EXIT_INCONCLUSIVE}[verdict]
    reason = (f"the load generator limited the run (its timestamps may be up to {margin:.1f} ms late)"
              if client_limited else None)
    return {"verdict": verdict, "exit_code": code, "terms": rows, "reason": reason}
