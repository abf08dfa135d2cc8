"""CPU stand-in for TensorRT-LLM's LLM-API Triton model: same tensors, text in and text out.

NVIDIA's model hands ``text_input`` to ``LLM.generate_async``. Here the tokenizer of the checkpoint
named in ``model.yaml`` encodes the prompt, the CPU reference engine (a model with the C++
``tensorrt_llm`` backend's token interface, named by the ``engine_model`` parameter) generates through
a BLS call, and the tokens are decoded back. Streamed ``text_output`` is the whole text so far, as
``CompletionOutput.text`` is in the LLM API. Stands alone: imports nothing from tritongen.

Each request is served on its own thread (upstream: an asyncio task per request),
so requests overlap and the engine batches them in flight, and a request with ``stop``
set cancels the requests in progress that carry the same request id and the same ``text_input`` (upstream
matches the id alone, so a client that guesses another's id could stop it; the prompt is the sender's own).
"""

import json
import os
import sys
import threading
import time
import uuid
from contextlib import closing, nullcontext

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_common import (  # noqa: E402
    ENGINE_ERROR_OUTPUT, EngineCalls, PromptLimit, bls_error, bls_stream, check_word_count, exit_with_server,
    load_tokenizer, parameters, required, requested_only, stop_engine_request, triton_error, utf8,
)

_SAMPLING_TO_ENGINE = {
    "sampling_param_temperature": ("temperature", np.float32),
    "sampling_param_top_k": ("runtime_top_k", np.int32),
    "sampling_param_top_p": ("runtime_top_p", np.float32),
    "sampling_param_frequency_penalty": ("frequency_penalty", np.float32),
    "sampling_param_presence_penalty": ("presence_penalty", np.float32),
    "sampling_param_seed": ("seed", np.uint64),
}

DEFAULT_MAX_TOKENS = 32
"""SamplingParams.max_tokens's default in TensorRT-LLM 1.2 (tensorrt_llm/sampling_params.py; tritongen records the source in
generator/data/llmapi_1.2.json, sources.request_semantics): what the LLM
API generates when a request gives no sampling_param_max_tokens."""

CANCELLED = "Request cancelled by client"

FINALIZE_WAIT_S = 20.0
"""How long unloading waits for requests in progress: each ends at its next engine step once cancelled,
and the engine ends its own requests when it unloads. (Triton stops waiting for the unloading after its
``--exit-timeout-secs``: ``tritongen serve``'s SERVE_EXIT_TIMEOUT_S, none for tritongen's own runs.)"""

PERF_TIMES = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")
"""Upstream returns the LLM engine's own time points; here the CPU engine's, on the same clock
(time.perf_counter_ns, CLOCK_MONOTONIC), with this model's own arrival."""


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise pb_utils.TritonModelException(f"Expected a scalar tensor for tensor {name}")
    return array.reshape(-1)[0]


def _strings(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return []
    return [utf8(v, name) if isinstance(v, bytes) else str(v) for v in tensor.as_numpy().reshape(-1)]


def _client_error(exc):
    """This model's own refusals (and the engine's errors it passes on) as they are; anything else as a
    reference, its traceback in the server log only."""
    if isinstance(exc, pb_utils.TritonModelException):
        return pb_utils.TritonError(str(exc))
    return triton_error(exc, "tensorrt_llm", pb_utils.Logger.log_error)


class TritonPythonModel:
    def initialize(self, args):
        exit_with_server()
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.engine_model = required(parameters(config), "engine_model", "tensorrt_llm")
        with open(os.path.join(os.path.dirname(__file__), "model.yaml"), encoding="utf-8") as f:
            self.llm_args = yaml.safe_load(f)
        self.tokenizer = load_tokenizer(self.llm_args["model"], bool(self.llm_args.get("trust_remote_code", False)))
        self.prompt_limit = PromptLimit(self.tokenizer, self.llm_args.get("max_input_len"))
        self.end_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        self.lock = threading.Lock()
        self.cancel_events = {}  # request id ("" for none) -> {threading.Event: text_input} of each request in progress
        self.threads = set()  # the threads serving requests (decoupled mode)
        self.engine_calls = EngineCalls()

    def execute(self, requests):
        """Every request on a thread of its own, decoupled or not: served one after another, a short request
        waited for the end of every long one before it (0.59 s instead of 0.04 s beside a 100-token one)."""
        serve = self._serve_decoupled if self.decoupled else self._serve_one
        for request in requests:
            thread = threading.Thread(target=serve, args=(request,), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None

    def _serve_one(self, request):
        """Non-decoupled: the one response, with the final flag, through the request's sender (Triton 2.51's
        Python backend allows one); an error as its message alone, never the stack frames."""
        try:
            try:
                response = self._serve(request, None, None)
            except Exception as exc:  # noqa: BLE001 - each request gets its own error
                response = pb_utils.InferenceResponse(error=_client_error(exc))
            request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _serve_decoupled(self, request):
        sender = request.get_response_sender()
        rid = request.request_id()
        try:
            if _scalar(request, "stop"):
                self._stop(rid, sender, _strings(request, "text_input"))
                return
            cancelled = threading.Event()
            with self.lock:
                self.cancel_events.setdefault(rid, {})[cancelled] = _strings(request, "text_input")
            try:
                self._serve(request, sender, cancelled)
            finally:
                with self.lock:
                    self.cancel_events.get(rid, {}).pop(cancelled, None)
                    if not self.cancel_events.get(rid):
                        self.cancel_events.pop(rid, None)
        except Exception as exc:  # one failing request must not take the others down
            sender.send(pb_utils.InferenceResponse(error=_client_error(exc)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def finalize(self):
        """End the requests in progress and wait for their threads. Triton 2.51's stub frees its shared
        memory right after ``finalize`` returns: a thread still inside a ``pb_utils`` call then crashes
        the stub (segfault in libc's ``sem_wait``), so none may be left."""
        self.engine_calls.close()  # ends the waits for an engine call (non-decoupled requests have no event)
        with self.lock:
            for events in self.cancel_events.values():
                for event in events:
                    event.set()
            threads = list(self.threads)
        deadline = time.monotonic() + FINALIZE_WAIT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _stop(self, rid, sender, texts):
        """A ``stop`` request: cancel the requests in progress with this id and this prompt; the stop
        request itself is answered with a CANCELLED error, as upstream does, whether it matched or not."""
        if not rid:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                "A request id must be provided for request cancellation")),
                flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        with self.lock:
            for event, prompt in self.cancel_events.get(rid, {}).items():
                if prompt == texts:
                    event.set()
        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(CANCELLED, pb_utils.TritonError.CANCELLED)),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _serve(self, request, sender, cancelled):
        """Generate one request; streams through ``sender`` when given, else returns the response."""
        arrival = time.perf_counter_ns()
        if _scalar(request, "stop"):
            raise pb_utils.TritonModelException("a stop request needs a decoupled model")
        texts = _strings(request, "text_input")
        if len(texts) != 1:
            raise pb_utils.TritonModelException("text_input must hold exactly one prompt")
        streaming = bool(_scalar(request, "streaming") or False)
        if streaming and not self.decoupled:
            raise pb_utils.TritonModelException("Streaming is only supported in decoupled mode.")
        max_tokens = _scalar(request, "sampling_param_max_tokens")
        max_tokens = int(max_tokens) if max_tokens is not None else DEFAULT_MAX_TOKENS
        stop_tensor = pb_utils.get_input_tensor_by_name(request, "sampling_param_stop")
        check_word_count(stop_tensor.as_numpy().size if stop_tensor is not None else 0, "sampling_param_stop")
        stops = _strings(request, "sampling_param_stop")
        wants = {k: bool(_scalar(request, k) or False)
                 for k in ("return_finish_reason", "return_stop_reason", "sampling_param_return_perf_metrics")}

        self.prompt_limit.check(texts[0])
        prompt_ids = self.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
        engine_id = f"llmapi-{uuid.uuid4().hex}"
        engine_request = pb_utils.InferenceRequest(
            model_name=self.engine_model, request_id=engine_id, parameters={ENGINE_ERROR_OUTPUT: True},
            requested_output_names=["output_ids", "sequence_length", ENGINE_ERROR_OUTPUT] + list(PERF_TIMES[1:]),
            inputs=self._engine_inputs(request, prompt_ids, max_tokens, self.decoupled),
        )
        generated: list[int] = []
        first_token = None
        stop_hit = None
        aborted = False
        engine_times = {}
        with self.engine_calls.slot(lambda: cancelled is None or not cancelled.is_set()) as admitted:
            if not admitted:
                aborted, responses = True, nullcontext(())
            elif self.decoupled:  # read to its final response even when left early; leaving it stops the engine
                responses = closing(bls_stream(
                    request, engine_request.exec(decoupled=True),
                    stop=lambda: stop_engine_request(self.engine_model, engine_id, prompt_ids, error_output=True,
                                                     caller=request)))
            else:
                responses = nullcontext([engine_request.exec()])
            with responses as stream:
                for response in stream:
                    if cancelled is not None and cancelled.is_set():
                        aborted = True
                        break
                    error = bls_error(response)  # the engine's errors come as its error output (ENGINE_ERROR_OUTPUT)
                    if error is not None:
                        raise pb_utils.TritonModelException(error)
                    for name in PERF_TIMES[1:]:
                        tensor = pb_utils.get_output_tensor_by_name(response, name)
                        if tensor is not None and int(tensor.as_numpy().reshape(-1)[0]):
                            engine_times[name] = int(tensor.as_numpy().reshape(-1)[0])
                    ids_tensor = pb_utils.get_output_tensor_by_name(response, "output_ids")
                    if ids_tensor is None:  # the engine's empty final response
                        continue
                    new = self._new_tokens(response, ids_tensor, prompt_ids, len(generated), self.decoupled)
                    if not new:
                        continue
                    first_token = first_token or time.perf_counter_ns()
                    generated += new
                    text, stop_hit = self._text(generated, stops)
                    if streaming and stop_hit is None:  # each step at once, as upstream; the final one repeats the text
                        sender.send(self._response(request, text, None, None, {}, ()))
                    if stop_hit is not None:
                        break
        text, stop_hit = self._text(generated, stops)
        if aborted:
            finish = "cancelled"
        elif stop_hit is not None or (generated and generated[-1] == self.end_id):
            finish = "stop"
        else:
            finish = "length"
        now = time.perf_counter_ns()
        times = (arrival, engine_times.get("first_scheduled_time_ns", arrival),
                 engine_times.get("first_token_time_ns", first_token or now), engine_times.get("last_token_time_ns", now))
        final = self._response(request, text, finish, stop_hit, wants, times)
        if sender is None:
            return final
        sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _engine_inputs(self, request, prompt_ids, max_tokens, streaming):
        def t(name, value, dtype):
            return pb_utils.Tensor(name, np.array([[value]], dtype=dtype))

        inputs = [
            pb_utils.Tensor("input_ids", np.array([prompt_ids], dtype=np.int32)),
            t("input_lengths", len(prompt_ids), np.int32),
            t("request_output_len", max_tokens, np.int32),
            t("end_id", self.end_id, np.int32),
            t("pad_id", self.pad_id, np.int32),
            t("streaming", streaming, np.bool_),
            t("return_perf_metrics", bool(_scalar(request, "sampling_param_return_perf_metrics")), np.bool_),
        ]
        for source, (target, dtype) in _SAMPLING_TO_ENGINE.items():
            value = _scalar(request, source)
            if value is not None:
                inputs.append(t(target, value, dtype))
        return inputs

    @staticmethod
    def _new_tokens(response, ids_tensor, prompt_ids, have, engine_streams):
        """Streamed engine responses carry only new tokens; a single response may include the prompt."""
        ids = ids_tensor.as_numpy().reshape(-1, ids_tensor.as_numpy().shape[-1])[0]
        lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length")
        if lengths is not None:
            ids = ids[: int(lengths.as_numpy().reshape(-1)[0])]
        ids = [int(i) for i in ids]
        if engine_streams:
            return ids
        if ids[: len(prompt_ids)] == list(prompt_ids):
            ids = ids[len(prompt_ids):]
        return ids[have:]

    def _text(self, generated, stops):
        """Decoded text so far, cut at the first stop string (returned as the stop reason)."""
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        hits = [(text.find(s), s) for s in stops if s and s in text]
        if not hits:
            return text, None
        pos, stop = min(hits)
        return text[:pos], stop

    @staticmethod
    def _response(request, text, finish, stop, wants, times):
        out = {"text_output": np.array([text.encode("utf-8")], dtype=np.object_)}
        if wants.get("return_finish_reason"):
            out["finish_reason"] = np.array([str(finish).encode()], dtype=np.object_)
        if wants.get("return_stop_reason"):
            out["stop_reason"] = np.array([str(stop).encode()], dtype=np.object_)
        if wants.get("sampling_param_return_perf_metrics") and times:
            out.update((n, np.array([v], dtype=np.int64)) for n, v in zip(PERF_TIMES, times))
        return pb_utils.InferenceResponse(output_tensors=requested_only(request, out))
