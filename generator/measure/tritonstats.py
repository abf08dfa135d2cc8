"""Triton's own view of a load test: per-model statistics and Prometheus metrics sampled around the run.

``/v2/models/stats`` (cumulative counters per model) is read before and after the run; the difference gives
each ensemble step's time in queue and compute and its achieved batch size (inferences / executions).
``/metrics`` is sampled every second and parsed with prometheus_client's text parser: gauges (pending
requests, CPU use, and the TensorRT-LLM backend's ``nv_trt_llm_*`` KV-cache and request metrics when
present) become time series, counters become differences. Parsing and arithmetic are pure; the sampler
thread and the two GETs are the only edges.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families

from generator.measure.results import CounterStage, Gauge, MetricsSummary, StageStats

# Gauges worth a time series; every nv_trt_llm_* family is kept too.
_GAUGES = ("nv_inference_pending_request_count", "nv_cpu_utilization", "nv_cpu_memory_used_bytes")
_TRTLLM_PREFIX = "nv_trt_llm_"

Sample = tuple[str, str, dict[str, str], float]


def http_get(url: str, timeout: float = 10.0, headers: Optional[dict[str, str]] = None) -> bytes:
    """The body of a GET, at most MAX_ANSWER_BYTES and within ``timeout`` seconds in all (``client.exchange``; an
    OSError past either, as for the network's own failures; an HTTPError for an error status)."""
    from generator.serve.client import ServerRequestError, exchange

    with exchange("GET", url, headers=headers, timeout=timeout) as (status, chunks):
        try:
            body = b"".join(chunks)
        except ServerRequestError as exc:
            raise OSError(str(exc)) from None
    if status >= 400:
        raise urllib.error.HTTPError(url, status, http.client.responses.get(status, "error"), None, None)
    return body


def fetch_model_stats(http_url: str, admin_key: Optional[str] = None) -> dict[str, Any]:
    """``/v2/models/stats``; a server tritongen started answers it only with its admin key."""
    from generator.serve.install import ADMIN_HEADER

    headers = {ADMIN_HEADER: admin_key} if admin_key else None
    return json.loads(http_get(f"{http_url.rstrip('/')}/v2/models/stats", headers=headers))


# ---------------------------------------------------------------- /v2/models/stats


def _flat(entry: dict[str, Any]) -> dict[str, int]:
    inf = entry.get("inference_stats", {})
    out = {"inference_count": int(entry.get("inference_count", 0)), "execution_count": int(entry.get("execution_count", 0))}
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        out[f"{key}_count"] = int(inf.get(key, {}).get("count", 0))
        out[f"{key}_ns"] = int(inf.get(key, {}).get("ns", 0))
    return out


def stage_times(before: dict[str, Any], after: dict[str, Any]) -> dict[str, StageStats]:
    """Per model, what the run added: requests, mean queue and compute time (ms), achieved batch size.

    For decoupled Python models (the CPU engine, BLS) Triton's request time ends when ``execute()``
    returns, not at the last response, so their compute time can be far below the streaming time.
    """
    old = {m["name"]: _flat(m) for m in before.get("model_stats", [])}
    result: dict[str, StageStats] = {}
    for entry in after.get("model_stats", []):
        new, prev = _flat(entry), old.get(entry["name"], {})
        d = {k: v - prev.get(k, 0) for k, v in new.items()}
        if d["success_count"] == 0 and d["fail_count"] == 0:
            continue

        def per(ns_key: str, count_key: str) -> Optional[float]:
            return d[ns_key] / d[count_key] / 1e6 if d[count_key] else None

        compute_ns = d["compute_input_ns"] + d["compute_infer_ns"] + d["compute_output_ns"]
        result[entry["name"]] = StageStats(
            requests=d["success_count"],
            failures=d["fail_count"],
            inferences=d["inference_count"],
            executions=d["execution_count"],
            batch_size=d["inference_count"] / d["execution_count"] if d["execution_count"] else None,
            request_ms=per("success_ns", "success_count"),
            queue_ms=per("queue_ns", "queue_count"),
            compute_ms=compute_ns / d["compute_infer_count"] / 1e6 if d["compute_infer_count"] else None,
        )
    return result


# ---------------------------------------------------------------- /metrics


def parse_metrics(text: str) -> list[Sample]:
    """(kind, name, labels, value) of the families tritongen follows, from Prometheus text format.

    Kept: every counter of Triton (nv_inference_*) and of the TensorRT-LLM backend (nv_trt_llm_*), and the
    gauges named above plus every nv_trt_llm_* gauge.
    """
    keep = []
    for family in text_string_to_metric_families(text):
        trtllm = family.name.startswith(_TRTLLM_PREFIX)
        if family.type == "counter" and (trtllm or family.name.startswith("nv_inference_")):
            kind = "counter"
        elif family.type == "gauge" and (trtllm or family.name in _GAUGES):
            kind = "gauge"
        else:
            continue
        keep.extend((kind, s.name, dict(s.labels), float(s.value)) for s in family.samples)
    return keep


def _key(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "version")
    return f"{name}{{{inner}}}" if inner else name


def metrics_summary(samples: list[tuple[float, list[Sample]]]) -> MetricsSummary:
    """Counters: increase over the run. Gauges: mean and max over the run, and the series for plots."""
    if not samples:
        return MetricsSummary()
    first = {_key(n, lab): v for kind, n, lab, v in samples[0][1] if kind == "counter"}
    counters = {}
    for kind, name, labels, value in samples[-1][1]:
        key = _key(name, labels)
        if kind == "counter" and value - first.get(key, 0.0):
            counters[key] = value - first.get(key, 0.0)
    series: dict[str, list[tuple[float, float]]] = {}
    t0 = samples[0][0]
    for t, sample in samples:
        for kind, name, labels, value in sample:
            if kind == "gauge":
                series.setdefault(_key(name, labels), []).append((round(t - t0, 3), value))
    gauges = {k: Gauge(mean=sum(v for _, v in s) / len(s), max=max(v for _, v in s)) for k, s in series.items()}
    return MetricsSummary(counters=counters, gauges=gauges, series=series)


def counter_stages(counters: dict[str, float]) -> dict[str, CounterStage]:
    """The same per-model figures as stage_times, from the /metrics counters (a cross-check of the two)."""
    per_model: dict[str, dict[str, float]] = {}
    for key, value in counters.items():
        name, _, labels = key.partition("{")
        model = dict(part.split("=", 1) for part in labels.rstrip("}").split(",") if "=" in part).get("model")
        if model and name.startswith("nv_inference_"):
            per_model.setdefault(model.strip('"'), {})[name.removesuffix("_total")] = value
    out = {}
    for model, c in per_model.items():
        ok = c.get("nv_inference_request_success", 0.0)
        if not ok:
            continue
        execs = c.get("nv_inference_exec_count", 0.0)
        out[model] = CounterStage(
            requests=ok,
            batch_size=c.get("nv_inference_count", 0.0) / execs if execs else None,
            queue_ms=c.get("nv_inference_queue_duration_us", 0.0) / ok / 1e3,
            compute_ms=c.get("nv_inference_compute_infer_duration_us", 0.0) / ok / 1e3,
        )
    return out


class MetricsSampler:
    """Reads ``/metrics`` every ``interval_s`` in a thread until stopped; misses are counted, not fatal."""

    def __init__(self, metrics_url: str, interval_s: float = 1.0) -> None:
        self.url, self.interval_s = metrics_url, interval_s
        self.samples: list[tuple[float, list[Sample]]] = []
        self.misses = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tritongen-metrics", daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic(), parse_metrics(http_get(self.url, timeout=5).decode())))
            except OSError:
                self.misses += 1
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "MetricsSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:  # one last sample, so counters cover the whole run
            self.samples.append((time.monotonic(), parse_metrics(http_get(self.url, timeout=5).decode())))
        except OSError:
            self.misses += 1
