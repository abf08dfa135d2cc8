"""The load generator's own ceiling: streamed responses per second that one Locust process drives per core
of CPU, saturated on one core of a GPU host, as measured by bench/gpuhost_loadgen.py (kept as data with the
command and the machine, in loadgen_ceiling.json).

A Locust process is one gevent loop and uses at most one core, so a target rate of streamed responses
(one per output token) needs enough processes: ``workers_for`` keeps each at ``TARGET_SHARE`` of the
ceiling, where its timestamps are still exact (a loop near saturation wakes late). The figure is the
measured CPU cost per response turned into a rate; the trivial model sends an answer's responses at
once, so several arrive per socket read. A server whose tokens arrive spread out costs more reads per
response: read the figure as an upper bound there; each run's own verdict (CPU, loop lag) stays the judge.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from generator.measure.records import ProcessRecord
from generator.measure.results import Capacity
from generator.spec import LoadTestSpec

TARGET_SHARE = 0.7
"""Plan each Locust process for this fraction of its ceiling."""


class Ceiling(BaseModel):
    """One measurement of the load generator against a trivial model (no server-side work per token)."""

    responses_per_core_s: float
    requests_per_core_s: float
    responses_per_request: int
    protocol: str
    perf_analyzer_requests_per_core_s: Optional[float]
    """NVIDIA's perf_analyzer on the same load and core, taking turns with tritongen; None where it finished
    no measurement window confined to one core."""
    server_requests_per_s: float
    """The most requests/s one Triton server (the trivial model, every instance and client it was given)
    answered in the measurement: beyond it, more Locust processes add nothing; more servers do."""
    command: str
    machine: str
    measured: str


@lru_cache(maxsize=1)
def recorded_ceiling() -> Ceiling:
    return Ceiling.model_validate(json.loads(Path(__file__).with_name("loadgen_ceiling.json").read_text(encoding="utf-8")))


def workers_for(responses_per_s: float, ceiling: Ceiling) -> int:
    """Locust processes (one per core) that drive ``responses_per_s`` streamed responses at TARGET_SHARE each."""
    return max(1, math.ceil(responses_per_s / (ceiling.responses_per_core_s * TARGET_SHARE)))


def auto_workers(request_rate: Optional[float], output_tokens_mean: int, users: int, cores: int,
                 ceiling: Ceiling) -> int:
    """``loadtest.workers=auto``: the Locust worker processes the load needs, not one per core.

    The target is the open-loop rate times the mean answer length in streamed responses/s, or, closed loop
    (no rate to go by), the most one Triton server streamed in the recorded measurement. Processes at
    TARGET_SHARE of the per-process ceiling each (the headroom that keeps timestamps exact), at most one per
    closed-loop user and one per core beside the master; a single process runs alone (0: no master).
    """
    target = (request_rate * output_tokens_mean if request_rate is not None
              else ceiling.server_requests_per_s * ceiling.responses_per_request)
    processes = min(workers_for(target, ceiling), max(cores - 1, 1),
                    max(users, 1) if request_rate is None else cores)
    return processes if processes > 1 else 0


def resolve_workers(lt: LoadTestSpec, cores: int) -> int:
    """Worker processes for ``loadtest.workers``; ``auto`` sized by auto_workers from the recorded ceiling
    (what the measuring side passes to Spec.resolved_loadtest, which sits below the ceiling)."""
    if lt.workers != "auto":
        return int(lt.workers)
    return auto_workers(lt.request_rate, lt.output_tokens_mean, lt.users, cores, recorded_ceiling())


def ceiling_text(ceiling: Ceiling) -> str:
    pa = (f"perf_analyzer {ceiling.perf_analyzer_requests_per_core_s:,.0f} requests/s per core on the same load"
          if ceiling.perf_analyzer_requests_per_core_s else "perf_analyzer finished no measurement there on one core")
    return (f"one Locust process drives about {ceiling.responses_per_core_s:,.0f} streamed responses/s per core "
            f"({ceiling.requests_per_core_s:,.0f} requests/s of {ceiling.responses_per_request} responses, "
            f"{ceiling.protocol}; {pa}; one Triton server answered at most {ceiling.server_requests_per_s:,.0f} "
            f"requests/s there), "
            f"measured by `{ceiling.command}` on {ceiling.machine}, {ceiling.measured}")


def capacity(processes: list[ProcessRecord], ceiling: Ceiling) -> Optional[Capacity]:
    """This run's load against the ceiling: streamed responses/s in all, per process and per core-second of
    the processes' CPU (this machine's own figure), the share of the recorded ceiling per process, and how
    many Locust processes the rate needs at TARGET_SHARE."""
    if not processes:
        return None
    responses = sum(p["responses"] for p in processes)
    cpu_s = sum(p["cpu_s"] for p in processes)
    wall_s = max(p["wall_s"] for p in processes)
    rate = responses / wall_s if wall_s else 0.0
    needed = workers_for(rate, ceiling)
    return Capacity(
        responses_per_s=rate,
        responses_per_core_s=responses / cpu_s if cpu_s else None,
        ceiling_responses_per_core_s=ceiling.responses_per_core_s,
        ceiling_share_per_process=rate / len(processes) / ceiling.responses_per_core_s,
        processes=len(processes),
        processes_needed=needed,
        advice=(f"{rate:,.0f} streamed responses/s need {needed} Locust processes at {TARGET_SHARE:.0%} of the "
                f"ceiling each: --workers {needed}")
        if needed > len(processes) else None,
        ceiling=ceiling_text(ceiling),
    )


def loadgen_plan(request_rate: Optional[float], output_tokens_mean: int, workers: int | str, ceiling: Ceiling,
                 tokens_per_s: Optional[float] = None) -> dict[str, Any]:
    """What the load test's client side needs: the target output-token rate (given, or the open-loop rate
    times the mean answer length), the Locust processes it takes, and what the spec's workers can drive."""
    target = tokens_per_s if tokens_per_s is not None else (
        request_rate * output_tokens_mean if request_rate is not None else None)
    per_process = ceiling.responses_per_core_s * TARGET_SHARE
    return {
        "ceiling": ceiling_text(ceiling),
        "tokens_per_s_per_process": per_process,
        "target_tokens_per_s": target,
        "processes_needed": workers_for(target, ceiling) if target is not None else None,
        "workers": workers,
    }


def loadgen_plan_lines(plan: dict[str, Any]) -> list[str]:
    lines = [f"Load generator: {plan['ceiling']}.",
             f"Planned at {TARGET_SHARE:.0%} of that: {plan['tokens_per_s_per_process']:,.0f} output tokens/s "
             f"(one response per token) per Locust process and core."]
    if plan["target_tokens_per_s"] is not None:
        lines.append(f"Target {plan['target_tokens_per_s']:,.0f} output tokens/s: {plan['processes_needed']} Locust "
                     f"process(es) (loadtest.workers={plan['workers']}; auto sizes from the target rate).")
    else:
        lines.append("Give a target with --tokens-per-s (closed loop) or loadtest.request_rate (open loop) to size "
                     "loadtest.workers.")
    return lines
