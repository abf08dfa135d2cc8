"""Statistics of a run from its raw request records: the figures of results.json, computed exactly.

Per-request figures come from request_figures.request_metrics (one definition shared with the Locust process);
this module aggregates them: distributions, throughput over the run's window, the engine queue's trend,
token-count agreement, the server-side TTFT split, and TTFT/ITL under genai-perf's and vLLM's
definitions. Pure: plain records in, typed results out.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from generator.measure.metrics import LATENCIES
from generator.measure.records import RequestRecord, quantile_sample
from generator.measure.request_figures import CHECK_REFERENCE, CHECKS, RequestMetrics, empty_chunks, request_metrics
from generator.measure.results import (
    CheckSample,
    Checks,
    Counts,
    Dist,
    Equivalents,
    ErrorSample,
    FrontEndExplained,
    GenaiPerfFigures,
    Latency,
    PrefixReuse,
    QueueTrend,
    SeriesPoint,
    Split,
    StageStats,
    Summary,
    Throughput,
    TokenAgreement,
    Tokens,
    VllmFigures,
)

PERCENTILES = (50, 90, 95, 99)

Measured = list[tuple[RequestRecord, RequestMetrics]]
"""Records with their per-request figures."""


def dist(values: Sequence[float], scale: float = 1.0) -> Optional[Dist]:
    """count, mean, min, max and p50/p90/p95/p99 (numpy's linear interpolation, as genai-perf and vLLM)."""
    import numpy as np

    if not len(values):
        return None
    a = np.asarray(values, dtype=float) / scale
    return Dist(count=int(a.size), mean=float(a.mean()), min=float(a.min()), max=float(a.max()),
                **{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES})


def _ms(ns: Sequence[float]) -> Optional[Dist]:
    return dist(ns, 1e6)


def _window(measured: Measured) -> float:
    """First scheduled send to last answer, in seconds, on wall-clock time (processes may be on other hosts)."""
    starts = [m.start_unix_ns for _, m in measured]
    ends = [m.start_unix_ns + (r["end_ns"] - r["sched_ns"]) for r, m in measured]
    return max(ends) / 1e9 - min(starts) / 1e9 if measured else 0.0


def queue_trend(measured: Measured) -> Optional[QueueTrend]:
    """Server queue time over the run: median per third and the least-squares slope (ms per s of run)."""
    import numpy as np

    points = sorted((m.start_unix_ns, m.split["queue"]) for _, m in measured if m.split)
    if len(points) < 6:
        return None
    t = np.array([p[0] for p in points], dtype=float)
    q = np.array([p[1] for p in points], dtype=float) / 1e6
    t = (t - t[0]) / 1e9
    thirds = np.array_split(q, 3)
    slope = float(np.polyfit(t, q, 1)[0]) if t[-1] > 0 else 0.0
    return QueueTrend(median_ms_by_third=[float(np.median(x)) for x in thirds], slope_ms_per_s=slope)


def equivalents(measured: Measured) -> Equivalents:
    """TTFT and ITL as genai-perf and vLLM's benchmark_serving define them, from the same records.

    genai-perf: TTFT = first response (even an empty one) minus the actual send; ITL = per request
    (E2E - TTFT) / (tokenizer-counted output tokens - 1), E2E from the actual send.
    vLLM: TTFT = first chunk with text minus the send; ITL = every gap between chunks with text, pooled;
    TPOT = per request (E2E - TTFT) / (tokenizer-counted output tokens - 1).
    """
    g_ttft, g_itl, v_ttft, v_itl, v_tpot = [], [], [], [], []
    for r, m in measured:
        if not m.streaming or m.ttft_ns is None:
            continue
        sent = r["sent_ns"]
        e2e = r["end_ns"] - sent
        g_ttft.append(r["resp_ns"][0] - sent)
        v_ttft.append(m.ttft_ns - m.lateness_ns)
        v_itl.extend(m.gaps_ns)
        n = m.client_output_tokens or 0
        if n > 1:
            g_itl.append((e2e - g_ttft[-1]) / (n - 1))
            v_tpot.append((e2e - v_ttft[-1]) / (n - 1))
    return Equivalents(genai_perf=GenaiPerfFigures(ttft=_ms(g_ttft), itl=_ms(g_itl)),
                       vllm=VllmFigures(ttft=_ms(v_ttft), itl=_ms(v_itl), tpot=_ms(v_tpot)))


def prefix_reuse(measured: Measured) -> Optional[PrefixReuse]:
    """The server's per-request prefix-cache figures (see PrefixReuse), with the TTFT of hits and misses."""
    # Triton's figures of 0 are not recorded (clients.absorb): with the block total there, none was reused.
    # An OpenAI server that reports no cached_tokens says nothing about reuse.
    for unit, part, whole, zero_left_out in (("blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks", True),
                                             ("tokens", "num_cached_tokens", "num_input_tokens", False)):
        rows = [(r["server"].get(part, 0), r["server"][whole], m.ttft_ns) for r, m in measured  # (a records file's
                if r["server"].get(whole, 0) > 0 and (zero_left_out or part in r["server"])]  # negatives summed to 0)
        if rows:
            return PrefixReuse(
                unit=unit, requests=len(rows), hit_share=sum(p for p, _, _ in rows) / sum(w for _, w, _ in rows),
                hit_requests=sum(1 for p, _, _ in rows if p), ttft_hit=_ms([t for p, _, t in rows if p]),
                ttft_miss=_ms([t for p, _, t in rows if not p]),
            )
    return None


def token_agreement(measured: Measured) -> dict[str, TokenAgreement]:
    """Server counts against the client tokenizer's: re-encoding text need not give the same tokens."""
    out: dict[str, TokenAgreement] = {}
    for side, client_of, server_of in (
        ("output", lambda m: m.client_output_tokens, lambda m: m.server_output_tokens),
        ("input", lambda m: m.input_tokens, lambda m: m.server_input_tokens),
    ):
        pairs = [(client_of(m), server_of(m)) for _, m in measured if client_of(m) is not None and server_of(m) is not None]
        if pairs:
            out[side] = TokenAgreement(compared=len(pairs), equal=sum(c == s for c, s in pairs),
                                       mean_client_minus_server=sum(c - s for c, s in pairs) / len(pairs))
    return out


def split_stats(measured: Measured) -> Optional[Split]:
    """The server-side TTFT split over every request that returned the engine's timestamps."""
    splits = [(m.ttft_ns, m.split) for _, m in measured if m.split]
    if not splits:
        return None
    names = ("send_delay", "front_end", "queue", "prefill", "decode", "front_in", "front_out")
    stats = {p: _ms([s[p] for _, s in splits if p in s]) for p in names}
    parts = {p: v for p, v in stats.items() if v}
    in_ttft = ["send_delay", "front_end", "queue", "prefill"] + ([] if measured[0][1].streaming else ["decode"])
    return Split(
        requests=len(splits),
        parts=parts,
        ttft_mean_ms=sum(t for t, _ in splits) / len(splits) / 1e6,
        ttft_parts=in_ttft,
        parts_sum_mean_ms=sum(parts[p].mean for p in in_ttft),
        negative_parts=sum(1 for _, s in splits if min(s[p] for p in in_ttft) < 0),
        shared_clock=all("front_in" in s for _, s in splits),
    )


def _checks(ok: Measured, references: dict[int, str]) -> Checks:
    failures: Counter[str] = Counter()
    samples: list[CheckSample] = []
    for r, m in ok:
        for name in m.failures:
            failures[name] += 1
            if sum(1 for s in samples if s.check == name) < 3:
                samples.append(CheckSample(check=name, id=r["id"], chunks=r["resp_text"][:40],
                                           reference=references[r["prompt"]][:400] if name == CHECK_REFERENCE else None))
    streamed = [m for _, m in ok if m.streaming]
    return Checks(
        checked=len(streamed),
        with_reference=sum(1 for m in streamed if m.reference is not None),
        reference=dict(Counter(m.reference for m in streamed if m.reference is not None)),
        failed_requests=sum(1 for m in streamed if m.failures),
        empty_chunks=sum(empty_chunks(r) for r, m in ok if m.streaming),
        failures={name: failures[name] for name in CHECKS},
        samples=samples,
    )


def populations(requests: list[RequestRecord], references: Optional[dict[int, str]] = None
                ) -> tuple[Measured, Measured, Measured]:
    """(every record, the measured ones: warm-up and cut-off requests excluded, the successful ones with text)."""
    references = references or {}
    rows = [(r, request_metrics(r, references.get(r["prompt"]))) for r in requests]
    measured = [(r, m) for r, m in rows if not m.warmup and not r["cancelled"]]
    return rows, measured, [(r, m) for r, m in measured if m.ok and m.ttft_ns is not None]


def latency(ok: Measured, measured: Measured) -> Latency:
    """Every registered latency distribution (metrics.LATENCIES), in ms, from its population of requests."""
    rows = {"ok": ok, "measured": measured}
    return Latency(**{lat.key: _ms([v for r, m in rows[lat.population] for v in lat.values(r, m)])
                      for lat in LATENCIES})


def summarize(requests: list[RequestRecord], references: Optional[dict[int, str]] = None) -> Summary:
    """Every client-side figure of a run, from its request records (warm-up and cut-off requests excluded).

    ``references`` maps prompt indexes to their one-piece answers (see runner.reference_answers).
    """
    references = references or {}
    rows, measured, ok = populations(requests, references)
    errors = [r for r, m in measured if not m.ok]
    window = _window(ok)
    out_tokens = sum(m.output_tokens or 0 for _, m in ok)
    in_tokens = sum(m.input_tokens or 0 for _, m in ok)
    t0 = min((m.start_unix_ns for _, m in ok), default=0)
    return Summary(
        counts=Counts(requests=len(measured), ok=len(ok), errors=len(errors),
                      warmup=sum(1 for _, m in rows if m.warmup),
                      cancelled=sum(1 for r, _ in rows if r["cancelled"]),
                      no_text=len(measured) - len(ok) - len(errors)),
        window_s=window,
        throughput=Throughput(
            requests_per_s=len(ok) / window if window else None,
            output_tokens_per_s=out_tokens / window if window else None,
            input_tokens_per_s=in_tokens / window if window else None,
        ),
        latency_ms=latency(ok, measured),
        tokens=Tokens(
            input=dist([m.input_tokens for _, m in ok if m.input_tokens is not None]),
            output=dist([m.output_tokens for _, m in ok if m.output_tokens is not None]),
            agreement=token_agreement(ok),
        ),
        error_rate=len(errors) / len(measured) if measured else None,
        error_samples=[ErrorSample(message=msg, count=n)
                       for msg, n in Counter(r["error"] for r in errors).most_common(5)],
        checks=_checks(ok, references),
        split=split_stats(ok),
        queue_trend=queue_trend(ok),
        equivalents=equivalents(ok),
        prefix_reuse=prefix_reuse(ok),
        itl_gaps_sample_ms=quantile_sample([g / 1e6 for _, m in ok for g in m.gaps_ns]),
        series=[SeriesPoint(t_s=(m.start_unix_ns - t0) / 1e9, ttft_ms=m.ttft_ns / 1e6,
                            queue_ms=m.split["queue"] / 1e6 if m.split else None, e2e_ms=m.e2e_ns / 1e6)
                for _, m in ok],
    )


def split_vs_stages(split: Optional[Split], stages: dict[str, StageStats]) -> Optional[FrontEndExplained]:
    """How much of the client's front-end time Triton's own statistics explain (pre- and postprocessing)."""
    if not split or "front_end" not in split.parts:
        return None
    pre = stages["preprocessing"].request_ms if "preprocessing" in stages else None
    post = stages["postprocessing"].request_ms if "postprocessing" in stages else None
    if pre is None and post is None:
        return None
    explained = (pre or 0.0) + (post or 0.0)
    front = split.parts["front_end"].mean
    return FrontEndExplained(front_end_mean_ms=front, pre_post_ms=explained, unexplained_ms=front - explained)
