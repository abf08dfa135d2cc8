"""Did the load generator limit the run? Its limits and the verdict, in one place (the report quotes them).

Above any limit the load generator, not the server, may have set the figures, and an SLO verdict on the
run is at best ``inconclusive``. A gevent process uses at most one core.
"""

from __future__ import annotations

from generator.measure.records import ProcessRecord
from generator.measure.results import ClientVerdict, Latency, ProcessHealth

CPU_LIMIT = 0.90
"""What a Locust process's event loop wanted, as a share of one core (on a CPU or runnable and waiting for
one, the median of its per-second figures): at this it is saturated, whether it got the core or something
else on the core starved it."""
BUSY = 0.5
"""Below this share of a core, a process's event-loop lag comes from the machine (timer and scheduler noise
of a busy host), not from the process being full: flagged only above IDLE_LAG_FACTOR times the limit."""
IDLE_LAG_FACTOR = 3.0
LAG_P99_LIMIT_MS = 10.0
"""99th percentile of event-loop lag (how late a 10 ms sleep wakes: the error on every timestamp), or
LAG_SHARE of the median gap between tokens if that is larger (a slow model tolerates a slower client)."""
LAG_SHARE = 0.25
LATENESS_P99_LIMIT_MS = 10.0
"""Open loop: 99th percentile of send lateness against the schedule."""
CONN_WAIT_P99_LIMIT_MS = 10.0
"""Open loop: 99th percentile of the wait for a connection when all were busy."""


def process_health(p: ProcessRecord) -> ProcessHealth:
    """One process record's figures: mean CPU, the busiest second, what its loop wanted, the lag."""
    import numpy as np

    cpu = p["cpu_s"] / p["wall_s"] if p["wall_s"] else 0.0
    demand = p["demand"]  # empty where the kernel keeps no schedstat: its CPU stands in
    wait = p["sched_wait_s"]
    return ProcessHealth(
        proc=p["proc"], host=p["host"], cpu=cpu, cpu_max=max(p["cpu_percent"], default=0.0) / 100,
        demand=float(np.median(demand)) if demand else cpu,
        wait=wait / p["wall_s"] if wait is not None and p["wall_s"] else None,
        lag_p99_ms=float(np.percentile(p["lag_ns"], 99)) / 1e6 if p["lag_ns"] else 0.0,
        lag_max_ms=p["lag_max_ns"] / 1e6,
    )


def process_reasons(h: ProcessHealth, lag_limit: float) -> list[str]:
    """Why one process limited the run: its loop wanted (nearly) a whole core, or its loop lag is its own."""
    reasons = []
    if h.demand >= CPU_LIMIT:
        starved = f", waiting for a CPU {h.wait:.0%} of the time" if h.wait and h.wait >= 0.05 else ""
        reasons.append(f"Locust process {h.proc} was saturated: its event loop wanted {h.demand:.0%} of a core "
                       f"(limit {CPU_LIMIT:.0%}; mean CPU {h.cpu:.0%}{starved})")
    limit = lag_limit if h.demand >= BUSY else IDLE_LAG_FACTOR * lag_limit
    if h.lag_p99_ms > limit:
        reasons.append(f"Locust process {h.proc} event-loop lag p99 {h.lag_p99_ms:.1f} ms (limit {limit:.1f} ms"
                       + ("" if h.demand >= BUSY else f" for a process below {BUSY:.0%} of a core") + ")")
    return reasons


def client_verdict(processes: list[ProcessRecord], latency: Latency, open_loop: bool) -> ClientVerdict:
    """Each Locust process's health record against the limits above and, open loop, send lateness and
    connection waits. Any reason flags the run as client-limited."""
    typical = latency.itl or latency.ttft
    lag_limit = max(LAG_P99_LIMIT_MS, LAG_SHARE * typical.p50) if typical else LAG_P99_LIMIT_MS
    health = [process_health(p) for p in sorted(processes, key=lambda p: p["proc"])]
    reasons = [r for h in health for r in process_reasons(h, lag_limit)]
    if open_loop and latency.lateness and latency.lateness.p99 > LATENESS_P99_LIMIT_MS:
        reasons.append(f"sends were late against the schedule: p99 {latency.lateness.p99:.1f} ms "
                       f"(limit {LATENESS_P99_LIMIT_MS:g} ms)")
    if open_loop and latency.conn_wait and latency.conn_wait.p99 > CONN_WAIT_P99_LIMIT_MS:
        reasons.append(f"requests waited for connections: p99 {latency.conn_wait.p99:.1f} ms "
                       f"(limit {CONN_WAIT_P99_LIMIT_MS:g} ms)")
    if not processes:
        reasons.append("no load-generator health record arrived (the Locust process did not finish cleanly)")
    return ClientVerdict(client_limited=bool(reasons), reasons=reasons, processes=health, lag_limit_ms=lag_limit)


def client_margin_ms(client: ClientVerdict) -> float:
    """How late the load generator's own timestamps may be: the worst process's event-loop lag p99."""
    return max((p.lag_p99_ms for p in client.processes), default=0.0)
