"""Triton Python-backend model standing in for NVIDIA's ``tensorrt_llm`` model on machines without a GPU.

Same inputs, outputs and parameters as the C++ ``tensorrtllm`` backend's model (TensorRT-LLM 1.2.1),
so the ensemble and BLS do not change between CPU and GPU. This file is only the Triton edge: it
turns Triton tensors into numpy, hands requests to ``CpuEngine`` (``cpu_engine.py``) and sends what
the engine produces. It also publishes the backend's ``nv_trt_llm_*`` gauges (request counts, KV-cache
blocks, iterations), fed from the engine every ``stats_check_period_ms``.
Stands alone: imports nothing from tritongen.
"""

import json
import os
import sys
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cpu_engine import CpuEngine, load_model  # noqa: E402
from engine_settings import MODEL, EngineSettings  # noqa: E402
from model_common import (  # noqa: E402
    ENGINE_ERROR_OUTPUT, RequestError, exit_with_server, parameters, requested_only, triton_error,
)
from trtllm_io import parse_request, stop_prompt  # noqa: E402

_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _error(exc: Exception):
    """The TritonError for ``exc``: 400 for the client's mistakes, 503 busy, 500 (logged, no traceback) otherwise."""
    return triton_error(exc, MODEL, pb_utils.Logger.log_error)


class _StreamSink:
    """Responses of one request through its decoupled response sender (only the outputs it asked for)."""

    def __init__(self, request):
        self.request = request
        self.sender = request.get_response_sender()
        self.error_as_output = (ENGINE_ERROR_OUTPUT in request.requested_output_names()
                                and json.loads(request.parameters() or "{}").get(ENGINE_ERROR_OUTPUT) is True)

    def send(self, tensors, final):
        flags = _FINAL if final else 0
        if tensors is None:
            self.sender.send(flags=flags)
            return
        self.sender.send(pb_utils.InferenceResponse(output_tensors=requested_only(self.request, tensors)), flags=flags)

    def send_error(self, error, final):
        if self.error_as_output:  # a BLS caller of this repository: never an error response (ENGINE_ERROR_OUTPUT)
            message = np.array([[_error(error).message().encode("utf-8")]], dtype=np.object_)
            self.sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ENGINE_ERROR_OUTPUT, message)]),
                             flags=_FINAL if final else 0)
            return
        # The error and the final flag go in two sends: a BLS caller files an error response under a stale
        # stream id, so only a bare final flag reaches its stream. It goes even when the error could not.
        try:
            self.sender.send(pb_utils.InferenceResponse(error=_error(error)))
        finally:
            if final:
                self.sender.send(flags=_FINAL)

    def is_cancelled(self):
        return self.sender.is_cancelled()


class _OneResponseSink:
    """Non-decoupled mode: the request's one response, sent with the final flag through its response sender once
    the engine is done. ``execute`` returns at once, as in decoupled mode, so the requests that come meanwhile join
    the engine's in-flight batch, as with upstream's backend; waiting in ``execute`` for its batch to finish held
    every later request (and the short ones of that batch) until the longest was done."""

    def __init__(self, request):
        self.request = request
        self.sender = request.get_response_sender()
        self.response = None

    def send(self, tensors, final):
        if tensors is not None:
            self.response = pb_utils.InferenceResponse(output_tensors=requested_only(self.request, tensors))
        if final:
            self.sender.send(self.response or pb_utils.InferenceResponse(output_tensors=[]), flags=_FINAL)

    def send_error(self, error, final):
        self.sender.send(pb_utils.InferenceResponse(error=_error(error)), flags=_FINAL)

    def is_cancelled(self):
        return self.sender.is_cancelled()


# nv_trt_llm_* families of the C++ backend (custom_metrics_reporter.cc): label value -> EngineStats field
_METRIC_FAMILIES = {
    ("nv_trt_llm_request_metrics", "TRT LLM request metrics", "request_type"): {
        "active": "active_requests", "max": "max_requests", "scheduled": "scheduled_requests",
        "context": "context_requests", "waiting": "waiting_requests",
    },
    ("nv_trt_llm_kv_cache_block_metrics", "TRT LLM KV cache block metrics", "kv_cache_block_type"): {
        "max": "max_blocks", "free": "free_blocks", "used": "used_blocks", "tokens_per": "tokens_per_block",
        "reused": "reused_blocks", "alloc_total": "alloc_total_blocks", "alloc_new": "alloc_new_blocks",
        "fraction": None,
    },
    ("nv_trt_llm_general_metrics", "General TRT LLM metrics", "general_type"): {
        "iteration_counter": "iterations",
    },
}


class _Metrics:
    """Publishes ``EngineStats`` as the backend's gauges from a background thread."""

    def __init__(self, engine, model_name, version, period_s):
        self.engine = engine
        self.period_s = period_s
        self.families = []
        self.gauges = []
        labels = {"model": model_name, "version": str(version)}
        for (name, description, category), fields in _METRIC_FAMILIES.items():
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
            self.families.append(family)
            for label, field in fields.items():
                self.gauges.append((family.Metric(labels={**labels, category: label}), field))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="cpu-engine-metrics", daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping.wait(self.period_s):
            try:
                stats = self.engine.stats()
            except Exception:  # a snapshot taken mid-update; the next one will do
                continue
            for gauge, field in self.gauges:
                if field is None:
                    value = stats.used_blocks / stats.max_blocks if stats.max_blocks else 0.0
                else:
                    value = getattr(stats, field)
                gauge.set(float(value))

    def close(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.gauges.clear()  # metrics must go before their families
        self.families.clear()


class TritonPythonModel:
    def initialize(self, args):
        exit_with_server()
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        settings = EngineSettings.from_parameters(parameters(config), config.get("max_batch_size", 1))
        logger = pb_utils.Logger
        started = time.perf_counter()
        model = load_model(settings.weights_dir, settings.dtype, settings.cpu_threads)
        logger.log_info(f"CPU reference engine: loaded {settings.weights_dir} in {time.perf_counter() - started:.1f} s")
        self.engine = CpuEngine(settings, model, log=logger.log_info)
        self.engine.start()
        self.metrics = _Metrics(
            self.engine, args["model_name"], args["model_version"], settings.stats_check_period_ms / 1000.0
        )

    def execute(self, requests):
        for request in requests:
            sink = _StreamSink(request) if self.decoupled else _OneResponseSink(request)
            try:
                self._submit(request, sink)
            except Exception as exc:  # one bad request must not leave the others of this batch unanswered
                try:
                    sink.send_error(exc, final=True)
                except Exception:  # noqa: BLE001 - its stream is closed; raising would close the whole batch's
                    pass
        return None

    def _submit(self, request, sink):
        arrival_ns = time.perf_counter_ns()
        tensors = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
        stop = tensors.get("stop")
        if stop is not None and stop.size and bool(stop.reshape(-1)[0]):
            self.engine.stop_request(request.request_id(), stop_prompt(tensors))
            sink.send(None, final=True)  # the C++ backend also answers a stop request with an empty response
            return
        try:
            rows = parse_request(
                tensors, default_exclude_input=self.engine.settings.exclude_input_in_output, decoupled=self.decoupled
            )
        except RequestError:
            raise
        except (TypeError, ValueError, IndexError, OverflowError) as exc:  # tensors of a shape no client should send
            raise RequestError(f"malformed request tensors: {exc}") from exc
        self.engine.submit(rows, sink, arrival_ns=arrival_ns, triton_id=request.request_id())

    def finalize(self):
        self.metrics.close()
        self.engine.shutdown()
