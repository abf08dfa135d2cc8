"""Did the load generator limit the run? Its limits and the verdict, in one place (the report quotes them).

Above any limit the load generator, not the server, may have set the figures, and an SLO verdict on the
run is at best ``inconclusive``. A gevent process uses at most one core.
"""

from __future__ import annotations

from typing import Any

from generator.measure.results import ClientVerdict, Latency, ProcessHealth

CPU_LIMIT = 0.90
"""Mean CPU of a Locust process over the run, as a fraction of one core."""
LAG_P99_LIMIT_MS = 10.0
"""99th percentile of event-loop lag (how late a 10 ms sleep wakes: the error on every timestamp), or
LAG_SHARE of the median gap between tokens if that is larger (a slow model tolerates a slower client)."""
LAG_SHARE = 0.25
LATENESS_P99_LIMIT_MS = 10.0
"""Open loop: 99th percentile of send lateness against the schedule."""
CONN_WAIT_P99_LIMIT_MS = 10.0
"""Open loop: 99th percentile of the wait for a connection when all were busy."""


def client_verdict(processes: list[dict[str, Any]], latency: Latency, open_loop: bool) -> ClientVerdict:
    """Each Locust process's health record (CPU, event-loop lag) and, open loop, send lateness and connection
    waits, against the limits above. Any reason flags the run as client-limited."""
    import numpy as np

    reasons = []
    health = []
    typical = latency.itl or latency.ttft
    lag_limit = max(LAG_P99_LIMIT_MS, LAG_SHARE * typical.p50) if typical else LAG_P99_LIMIT_MS
    for p in sorted(processes, key=lambda p: p["proc"]):
        cpu = p["cpu_s"] / p["wall_s"] if p["wall_s"] else 0.0
        lag99 = float(np.percentile(p["lag_ns"], 99)) / 1e6 if p["lag_ns"] else 0.0
        health.append(ProcessHealth(proc=p["proc"], host=p["host"], cpu=cpu,
                                    cpu_max=max(p.get("cpu_percent") or [0.0]) / 100, lag_p99_ms=lag99,
                                    lag_max_ms=p["lag_max_ns"] / 1e6))
        if cpu >= CPU_LIMIT:
            reasons.append(f"Locust process {p['proc']} used {cpu:.0%} of a core (limit {CPU_LIMIT:.0%})")
        if lag99 > lag_limit:
            reasons.append(f"Locust process {p['proc']} event-loop lag p99 {lag99:.1f} ms (limit {lag_limit:.1f} ms)")
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
