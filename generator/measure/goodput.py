"""The goodput search of one serving setting: the highest load whose requests meet the SLO at the target share.

Grow the load (double it) until a level fails, then bisect between the last passing and the first failing
level. A level is measured in rounds of requests, pooled: it passes when the whole Wilson interval of its
attainment share lies at or above the target, fails when it lies below, and while it straddles the target
it is measured again, up to ``tune.max_rounds`` rounds; then it is *unresolved*: never counted as a pass,
it caps the bracket like a failure (the search narrows below it) but is never reported as the breaking
load. A round where the load generator was the limit is never a verdict about the server: it is set
aside and the level measured again; a level with no other round is client-limited, and the search stops
there and says so. A level whose TTFT kept climbing while its share was below the target has
clearly fallen behind: it fails at once, without further rounds.

Pure: the measurement is a function passed in (one load-test round against a running server in
``tune.py``, a simulated server in the tests), as is the clock of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Optional

from pydantic import BaseModel

from generator.errors import LoadTestError
from generator.measure.attainment import RequestRow, attainment, level_figures, ttft_growth
from generator.measure.intervals import Interval
from generator.measure.results import LevelFigures
from generator.spec import TuneSpec

FELL_BEHIND_GROWTH = 2.0
"""TTFT growth (last third's median over the first's) above which a level has clearly fallen behind."""


class LevelVerdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNRESOLVED = "unresolved"
    """The attainment interval still straddled the target after tune.max_rounds rounds."""
    CLIENT_LIMITED = "client-limited"
    """The load generator was the limit: no verdict about the server."""


@dataclass
class RoundSample:
    """One round of requests at one load, as the measurement function returns it."""

    rows: list[RequestRow]
    client_limited: bool = False
    client_reasons: tuple[str, ...] = ()
    seconds: float = 0.0
    dir: str = ""


class Level(BaseModel):
    """One load level as measured: its figures (rounds pooled) and its verdict with the reason."""

    load: float
    """Concurrent users (closed loop) or requests/s (open loop)."""
    rounds: int
    verdict: LevelVerdict
    reason: str
    figures: LevelFigures
    client_reasons: list[str] = []
    """Why the load generator limited the rounds set aside (or all rounds, for a client-limited level)."""
    seconds: float
    """Wall time spent measuring this level."""
    dirs: list[str] = []
    """Each round's load-test folder, relative to the setting's (or the repeat's) folder: ``levels/LOAD-ROUND``."""


class SearchOutcome(BaseModel):
    """Where one setting's search ended."""

    levels: list[Level]
    """In the order measured."""
    goodput_load: Optional[float]
    """The highest load that passed (None: none did)."""
    breaking_load: Optional[float]
    """The lowest load that failed (None: none did within the limits, or only unresolved levels)."""
    broke_first: Optional[str]
    """At the breaking load, the objective missed by the most requests."""
    resolved: bool
    """The goodput lies within one search step of a level that failed outright."""
    note: str
    """How the search ended, in words."""
    step: float
    """The search's resolution: 1 user, or the rate step at the end."""

    def level(self, load: Optional[float]) -> Optional[Level]:
        return next((lv for lv in reversed(self.levels) if lv.load == load), None)


def judge(a: Interval, growth: Optional[float], target: float, client_limited: bool,
          last_round: bool) -> Optional[tuple[LevelVerdict, str]]:
    """A level's verdict after a round from its attainment share and TTFT growth, or None to measure again."""
    if client_limited:
        return LevelVerdict.CLIENT_LIMITED, "the load generator was the limit"
    if a.low >= target:
        return LevelVerdict.PASS, f"the interval clears {target:.0%}"
    if a.high < target:
        return LevelVerdict.FAIL, f"the interval lies below {target:.0%}"
    if a.estimate < target and growth is not None and growth > FELL_BEHIND_GROWTH:
        return LevelVerdict.FAIL, f"fell behind: TTFT grew {growth:.1f}x over the level, stopped early"
    if last_round:
        return LevelVerdict.UNRESOLVED, f"still straddles the target {target:.0%}"
    return None


def measure_level(measure: Callable[[float, int], RoundSample], load: float, tune: TuneSpec,
                  time_left: Callable[[], bool]) -> Optional[Level]:
    """Rounds at one load until the verdict is clear (None if the budget ran out before the first round).

    A round the load generator limited is set aside, never pooled, and the level is measured again; a level
    whose every round was client-limited gets no verdict about the server."""
    rows: list[RequestRow] = []
    limited: list[RoundSample] = []
    seconds, dirs, rounds = 0.0, [], 0
    verdict: Optional[tuple[LevelVerdict, str]] = None
    while verdict is None:
        if not time_left():
            if rounds == 0:
                return None
            verdict = (LevelVerdict.UNRESOLVED, "the budget ran out before its interval cleared the target")
            break
        sample = measure(load, rounds)
        rounds += 1
        seconds += sample.seconds
        dirs.append(sample.dir)
        last = rounds >= tune.max_rounds
        if not rows and not sample.rows:  # review28: attainment() of no request was a ValueError that ended the tune
            raise LoadTestError(
                f"load {load:g}: its round measured no request: none but warm-up requests was sent and answered "
                f"within the round's time (tune.level_timeout_s = {tune.level_timeout_s:g} s)", where="tune.level_timeout_s",
                fix="raise tune.level_timeout_s (a low rate sends few requests in it; a slow setting answers few), or "
                    "lower loadtest.warmup_requests or loadtest.output_tokens_mean")
        if sample.client_limited:
            limited.append(sample)
            if last and not rows:
                verdict = (LevelVerdict.CLIENT_LIMITED, f"the load generator was the limit in all {rounds} rounds")
            elif last:
                verdict = judge(attainment(rows), ttft_growth(rows), tune.attainment, False, True)
            continue
        rows += sample.rows
        verdict = judge(attainment(rows), ttft_growth(rows), tune.attainment, False, last)
    if rows and verdict[0] is not LevelVerdict.CLIENT_LIMITED:
        share = attainment(rows)
        verdict = (verdict[0], f"{share.estimate:.1%} of {share.n} requests met the SLO ({share.confidence:.0%} "
                   f"interval {share.low:.1%}–{share.high:.1%}): " + verdict[1])
    reasons = sorted({r for s in limited for r in s.client_reasons})
    if limited:
        verdict = (verdict[0], verdict[1] + f"; {len(limited)} client-limited round(s) set aside")
    figures = level_figures(rows or [r for s in limited for r in s.rows])
    return Level(load=load, rounds=rounds, verdict=verdict[0], reason=verdict[1], figures=figures,
                 client_reasons=reasons, seconds=seconds, dirs=dirs)


def _levels(tune: TuneSpec, open_loop: bool) -> tuple[float, float, Callable[[float, float], Optional[float]]]:
    """Start, ceiling and the bisection's next point (None once the bracket is one step wide)."""
    if open_loop:
        def mid_rate(lo: float, hi: float) -> Optional[float]:
            # rates are rounded to 3 decimals: a midpoint that rounds onto the bracket's end was measured again for
            # ever (rate_resolution 0.0001 near 1 request/s, or rates below ~0.01/s; review9)
            mid = round((lo + hi) / 2, 3)
            return None if hi <= lo * (1 + tune.rate_resolution) or not lo < mid < hi else mid
        return float(tune.start_rate), tune.max_rate, mid_rate

    def mid_users(lo: float, hi: float) -> Optional[float]:
        return None if hi - lo <= 1 else float((int(lo) + int(hi)) // 2)
    return float(tune.start_users), float(tune.max_users), mid_users


def search(measure: Callable[[float, int], RoundSample], tune: TuneSpec, *, open_loop: bool,
           time_left: Callable[[], bool] = lambda: True, start: Optional[float] = None) -> SearchOutcome:
    """Grow then bisect; ``start`` overrides the first load (e.g. a prediction)."""
    first, ceiling, midpoint = _levels(tune, open_loop)
    load = min(start or first, ceiling)
    levels: list[Level] = []
    lo: Optional[float] = None
    hi: Optional[float] = None  # the bracket's top: a failing or an unresolved level
    note = ""
    while True:
        level = measure_level(measure, load, tune, time_left)
        if level is None:
            note = f"the budget ran out before load {load:g} was measured"
            break
        levels.append(level)
        if level.verdict is LevelVerdict.PASS:
            lo = load
        elif level.verdict in (LevelVerdict.FAIL, LevelVerdict.UNRESOLVED):
            hi = load  # an unresolved level is no pass: the search narrows below it, and says so
        else:
            note = f"stopped at load {load:g}: {level.reason}; no verdict about the server above it"
            break
        if hi is None:
            if load >= ceiling:
                note = f"passed up to the highest load tried ({ceiling:g}); raise the tune section's maximum"
                break
            load = min(load * 2, ceiling)
            continue
        if lo is None:
            # a rate halved rounds to 3 decimals: below 0.002/s onto itself or 0, measured again for ever (review19)
            lower = max(1.0, float(int(load // 2))) if not open_loop else round(load / 2, 3)
            if load <= (1 if not open_loop else first / 8) or not 0 < lower < load:
                note = f"even load {load:g} did not pass"
                break
            load = lower
            continue
        nxt = midpoint(lo, hi)
        if nxt is None:
            at_hi = next(lv.verdict for lv in reversed(levels) if lv.load == hi)
            note = f"goodput between {lo:g} (pass) and {hi:g} ({at_hi})"
            break
        load = nxt
    fails = [lv for lv in levels if lv.verdict is LevelVerdict.FAIL]
    broke = min(fails, key=lambda lv: lv.load) if fails else None
    top = next((lv for lv in levels if lv.load == hi), None)
    unresolved = [lv.load for lv in levels if lv.verdict is LevelVerdict.UNRESOLVED]
    if unresolved:
        note += f"; unresolved (never counted as pass or fail): {', '.join(f'{u:g}' for u in unresolved)}"
    step = (hi - lo) if (lo is not None and hi is not None) else (1.0 if not open_loop else tune.rate_resolution)
    resolved = (lo is not None and top is not None and top.verdict is LevelVerdict.FAIL and midpoint(lo, hi) is None)
    return SearchOutcome(levels=levels, goodput_load=lo, breaking_load=broke.load if broke else None,
                         broke_first=broke.figures.broke_first if broke else None, resolved=resolved,
                         note=note, step=step)
