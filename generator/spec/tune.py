"""The spec's tune section: how ``tritongen tune`` searches the load each serving setting sustains under the SLO."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from generator.spec.base import Section


class TuneSpec(Section):
    """Defaults of ``tritongen tune`` (the SLO itself is loadtest.slo; the request shape is the loadtest section's)."""

    attainment: float = Field(0.95, gt=0.0, lt=1.0)
    """Share of requests that must meet every SLO objective for a load level to pass; a level passes only
    when the whole confidence interval of its measured share (Wilson score, 95%) lies at or above it."""

    start_users: int = Field(1, ge=1)
    """Closed loop: the first concurrency tried; the search doubles it until a level fails, then bisects."""

    max_users: int = Field(256, ge=1)
    """Closed loop: the highest concurrency tried."""

    start_rate: Optional[float] = Field(None, gt=0)
    """Open loop: search over request rate (requests/s on loadtest.arrival's schedule) starting here;
    None searches over concurrency (closed loop)."""

    max_rate: float = Field(1000.0, gt=0)
    """Open loop: the highest request rate tried."""

    rate_resolution: float = Field(0.1, gt=0, lt=1)
    """Open loop: bisection stops when the failing rate is within this share above the passing one (or 0.001
    requests/s above it: rates are set to 3 decimals)."""

    requests_per_level: int = Field(80, ge=5)
    """Requests measured per round at one load level (after warm-up; closed loop: at least 3 per user); a
    level is measured again, up to max_rounds rounds pooled, while its attainment interval straddles the
    target. With every request meeting the SLO, a 0.95 target needs 73 requests to pass."""

    max_rounds: int = Field(3, ge=1)
    """Most rounds per level; a level still straddling the target after them is reported unresolved."""

    level_timeout_s: float = Field(60.0, gt=0)
    """Longest one round may run (an overloaded open-loop level ends here); also the longest a request of a
    round is waited for (loadtest.request_timeout_s, if shorter, wins): one never answered is an error."""

    budget_min: Optional[float] = Field(None, gt=0)
    """Stop starting new measurements after this many minutes and report what was left unmeasured."""

    repeat: int = Field(0, ge=0)
    """Measure the winner's and the runner-up's goodput level this many more times (fresh servers) and say
    whether their order holds across runs."""
