"""What ``tritongen tune`` produces, as types: tune.json is a ``TuneResult``, dumped.

Per setting: why it was refused or skipped, or its search (every level with its figures and intervals),
its goodput per GPU with intervals, where it broke and which objective broke first, and the predicted
KV-full concurrency next to the measured knee. Then the Pareto front, the winner and runner-up, and the
repeats. Figures are per GPU; the CPU reference engine counts as one GPU.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Optional

from pydantic import BaseModel

from generator.measure.goodput import Level, SearchOutcome
from generator.measure.intervals import Interval
from generator.measure.predict import Prediction


class SettingStatus(StrEnum):
    MEASURED = "measured"
    REFUSED = "refused"
    """The spec, plan, validator or server refused it: no load was sent."""
    FAILED = "failed"
    """The load test itself failed, or the server was still loading at the start timeout (the reason says)."""
    SKIPPED = "skipped"
    """A measured setting showed it cannot do better (the reason says which and why)."""
    UNMEASURED = "not measured"
    """The budget ran out first."""


class Goodput(BaseModel):
    """A setting's goodput: the figures of its highest passing level, per GPU."""

    load: float
    """Concurrent users or requests/s of that level."""
    requests: int
    """Requests measured at that level (all rounds)."""
    requests_per_s_per_gpu: Interval
    output_tokens_per_s_per_gpu: Interval
    attainment: Interval
    ttft_p95_ms: Optional[Interval]
    itl_p95_ms: Optional[Interval]


class SettingResult(BaseModel):
    label: str
    overrides: list[str]
    dir: str
    """The setting's folder, relative to the tune output (settings/N; empty when nothing was measured)."""
    gpus: int
    """GPUs one server of this setting uses (tp x pp x instances; 1 for the CPU engine)."""
    status: SettingStatus
    reason: str = ""
    """Why it was refused, skipped or left unmeasured (refusals name the stage: spec, validation, server)."""
    prediction: Optional[Prediction] = None
    search: Optional[SearchOutcome] = None
    goodput: Optional[Goodput] = None
    seconds: float = 0.0


class RepeatResult(BaseModel):
    """The winner's or runner-up's goodput level measured again on fresh servers."""

    label: str
    load: float
    runs: list[Level]
    output_tokens_per_s_per_gpu: Interval
    """Across the original run and the repeats (t interval over runs)."""
    passed: int
    """Runs whose level passed again."""
    failed: list[str] = []
    """Why each repeat that measured nothing failed (its fresh server did not start in time, its load test failed)."""


class Choice(BaseModel):
    label: str
    overrides: list[str]
    reason: str


class TuneResult(BaseModel):
    """tune.json."""

    slo: str
    attainment: float
    mode: str
    """``closed loop`` (load = concurrent users) or ``open loop`` (load = requests/s)."""
    settings: list[SettingResult]
    front: list[str]
    """Labels of the settings on the Pareto front (goodput per GPU against TTFT p95 at that load)."""
    best: Optional[Choice]
    runner_up: Optional[Choice]
    repeats: list[RepeatResult] = []
    order: str = ""
    """Whether the winner stayed ahead of the runner-up across the repeats, in words."""
    budget_min: Optional[float]
    elapsed_s: float
    left: str = ""
    """What the budget left unmeasured, in words ("" when nothing)."""
