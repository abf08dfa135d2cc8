"""Triton Python model ``tensorrt_llm_bls``: preprocessing → tensorrt_llm → postprocessing in Python.

The same inputs and outputs as NVIDIA's inflight_batcher_llm tensorrt_llm_bls (TensorRT-LLM 1.2.1),
so a client can call it instead of the ensemble. Differences from the ensemble that matter:

* Streaming text is always exact: every stream gets its own id for postprocessing, whose
  incremental detokenizer then holds back incomplete characters, and an empty chunk at the end
  flushes it (see postprocessing/1/model.py).
* Decoupled (the spec's ``serving.decoupled``): tensorrt_llm is called with
  ``exec(decoupled=True)``; with ``stream`` true each engine response becomes one response here,
  otherwise one response carries the whole text. ``accumulate_tokens`` sends the text so far in
  every streamed response instead of the new piece.
* Requests run on threads, so one instance keeps many streams in the engine's in-flight batch
  (upstream's BLS serves one request per instance at a time), with at most ``ENGINE_CALLS`` engine
  calls in flight (model_common.py): more than Triton's Python backend has threads held back every answer.
* Errors: an error is sent as its own response and the final flag separately; one ``send()``
  with both hangs a BLS caller in Triton 2.51. Clients get a short message with the status of its
  kind (400 for their own mistakes, 503 busy, 500 for the server's); an unexpected exception is
  logged in full on the server with the reference the client's message names, never sent back. In the
  other direction the CPU engine's errors come as its ``error_message`` output (``engine_error_output``):
  Triton 2.51 files an error response of a BLS stream under another stream's id (``ENGINE_ERROR_OUTPUT``
  in model_common.py). A stream that ends with a bare final flag is reported as an engine failure.
* A cancelled client (disconnect) stops the engine request through tensorrt_llm's ``stop`` input, seen
  between engine responses: with ``stream`` false (or not decoupled) the engine's one response is its
  last, so such a request runs to its end, as through the ensemble.

Parameters: ``tensorrt_llm_model_name``, ``accumulate_tokens``, ``engine_error_output`` (CPU engine only).
"""

import json
import os
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, nullcontext

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_common import (  # noqa: E402
    EngineCalls, RequestError, ServerBusy, ServerFault, bls_error, bls_stream, error_response, exit_with_server, flag,
    parameters, required, requested_only, stop_engine_request,
)

MODEL = "tensorrt_llm_bls"
PREPROCESSING = "preprocessing"
POSTPROCESSING = "postprocessing"

# BLS input → preprocessing input.
_TO_PREPROCESSING = {
    "text_input": "QUERY",
    "decoder_text_input": "DECODER_QUERY",
    "max_tokens": "REQUEST_OUTPUT_LEN",
    "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT",
    "embedding_bias_words": "EMBEDDING_BIAS_WORDS",
    "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS",
    "end_id": "END_ID",
    "pad_id": "PAD_ID",
    "prompt_table_extra_id": "PROMPT_TABLE_EXTRA_ID",
}
# preprocessing output → tensorrt_llm input.
_FROM_PREPROCESSING = {
    "INPUT_ID": "input_ids",
    "REQUEST_INPUT_LEN": "input_lengths",
    "DECODER_INPUT_ID": "decoder_input_ids",
    "REQUEST_DECODER_INPUT_LEN": "decoder_input_lengths",
    "REQUEST_OUTPUT_LEN": "request_output_len",
    "BAD_WORDS_IDS": "bad_words_list",
    "STOP_WORDS_IDS": "stop_words_list",
    "EMBEDDING_BIAS": "embedding_bias",
    "OUT_END_ID": "end_id",
    "OUT_PAD_ID": "pad_id",
    "OUT_PROMPT_TABLE_EXTRA_IDS": "prompt_table_extra_ids",
}
# BLS input → tensorrt_llm input, passed through unchanged.
_TO_ENGINE = {
    "beam_width": "beam_width",
    "top_k": "runtime_top_k",
    "top_p": "runtime_top_p",
    "temperature": "temperature",
    "length_penalty": "len_penalty",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_tokens",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "return_log_probs": "return_log_probs",
    "return_context_logits": "return_context_logits",
    "return_generation_logits": "return_generation_logits",
    "return_perf_metrics": "return_perf_metrics",
    "return_num_input_tokens": "return_num_input_tokens",
    "return_num_output_tokens": "return_num_output_tokens",
    "num_return_sequences": "num_return_sequences",
    "exclude_input_in_output": "exclude_input_in_output",
    "stream": "streaming",
    "prompt_embedding_table": "prompt_embedding_table",
    "prompt_vocab_size": "prompt_vocab_size",
    "lora_task_id": "lora_task_id",
    "lora_weights": "lora_weights",
    "lora_config": "lora_config",
    "guided_decoding_guide_type": "guided_decoding_guide_type",
    "guided_decoding_guide": "guided_decoding_guide",
}
# tensorrt_llm outputs that the BLS returns as they are (text_output comes from postprocessing).
_PASSTHROUGH_OUTPUTS = (
    "cum_log_probs", "output_log_probs", "context_logits", "generation_logits", "batch_index",
    "sequence_index", "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
    "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
    "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens", "num_input_tokens",
    "num_output_tokens",
)
_UNSUPPORTED = {
    "image_input": "image inputs need a multimodal model",
    "image_bytes_input": "image inputs need a multimodal model",
    "image_url_input": "image inputs need a multimodal model",
    "image_sizes_input": "image inputs need a multimodal model",
    "video_bytes_input": "video inputs need a multimodal model",
}


def _failure(message, model):
    """The error message of a model this BLS called, as the exception of the same kind. Triton 2.51 does
    not pass error codes back to a BLS caller, so the kind is read from the message, which the models
    of this repository start with "server error" or "server busy" when it is not the client's fault."""
    if message.startswith("server busy") or "maximum queue size" in message:
        return ServerBusy(message)
    if message.startswith("server error"):
        return ServerFault(message)
    return RequestError(message)


def _as_batch(array, batch_size):
    """Inputs declared with ``reshape: { shape: [] }`` arrive as [batch]; tensorrt_llm wants [batch, 1]."""
    array = np.asarray(array)
    return array.reshape(batch_size, 1) if array.ndim == 1 else array


def _index(response, name):
    tensor = pb_utils.get_output_tensor_by_name(response, name)
    return 0 if tensor is None else int(tensor.as_numpy().reshape(-1)[0])


def _first(array, default=None):
    return default if array is None else np.asarray(array).reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        exit_with_server()
        config = json.loads(args["model_config"])
        params = parameters(config)
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.accumulate = flag(required(params, "accumulate_tokens", MODEL), "accumulate_tokens")
        self.engine = required(params, "tensorrt_llm_model_name", MODEL)
        # the CPU engine's error output, which render names for it (see ENGINE_ERROR_OUTPUT); none for the GPU engine
        self.error_output = (params["engine_error_output"],) if "engine_error_output" in params else ()
        self.logger = pb_utils.Logger
        self.pool = ThreadPoolExecutor(max_workers=max(4, int(config.get("max_batch_size", 0)) * 2),
                                       thread_name_prefix="bls")
        self.engine_calls = EngineCalls()  # the threads can make more calls than Triton serves: see ENGINE_CALLS

    # -------------------------------------------------------------- the three calls

    def _preprocess(self, inputs, stream_id):
        tensors = [pb_utils.Tensor(dst, inputs[src]) for src, dst in _TO_PREPROCESSING.items() if src in inputs]
        response = pb_utils.InferenceRequest(
            model_name=PREPROCESSING, inputs=tensors, request_id=stream_id,
            requested_output_names=list(_FROM_PREPROCESSING),
        ).exec()
        if response.has_error():
            raise _failure(response.error().message(), PREPROCESSING)
        return {t.name(): t.as_numpy() for t in response.output_tensors()}

    def _engine_request(self, inputs, pre, stream_id):
        batch = inputs["text_input"].shape[0]
        tensors = [pb_utils.Tensor(_FROM_PREPROCESSING[name], value) for name, value in pre.items()
                   if name in _FROM_PREPROCESSING]
        tensors += [pb_utils.Tensor(dst, _as_batch(inputs[src], batch)) for src, dst in _TO_ENGINE.items()
                    if src in inputs]
        return pb_utils.InferenceRequest(
            model_name=self.engine, inputs=tensors, request_id=stream_id,
            parameters={name: True for name in self.error_output} or None,
            requested_output_names=["output_ids", "sequence_length", *_PASSTHROUGH_OUTPUTS, *self.error_output],
        )

    def _postprocess(self, tokens, lengths, stream_id):
        """Text of new tokens for this stream; empty ``tokens`` flushes what postprocessing holds."""
        ids = np.array([[stream_id.encode()]] * tokens.shape[0], dtype=np.object_)
        response = pb_utils.InferenceRequest(
            model_name=POSTPROCESSING, requested_output_names=["OUTPUT"],
            inputs=[pb_utils.Tensor("TOKENS_BATCH", tokens.astype(np.int32)),
                    pb_utils.Tensor("SEQUENCE_LENGTH", lengths.astype(np.int32)),
                    pb_utils.Tensor("STREAM_ID", ids)],
        ).exec()
        if response.has_error():
            raise _failure(response.error().message(), POSTPROCESSING)
        return [t.decode("utf-8") for t in pb_utils.get_output_tensor_by_name(response, "OUTPUT").as_numpy().reshape(-1)]

    def _stop_engine(self, stream_id, pre, caller):
        """Cancel a running engine request (``stop_engine_request``): the prompt is the first row's."""
        try:
            stop_engine_request(self.engine, stream_id,
                                pre["INPUT_ID"][0][:int(pre["REQUEST_INPUT_LEN"].reshape(-1)[0])], self.decoupled,
                                error_output=bool(self.error_output), caller=caller)
        except Exception:  # noqa: BLE001 - best effort; the engine may already be done
            self.logger.log_warn(f"tensorrt_llm_bls: could not stop engine request {stream_id}")

    # -------------------------------------------------------------- one request

    def _inputs(self, request):
        inputs = {}
        for tensor in request.inputs():
            inputs[tensor.name()] = tensor.as_numpy()
        for name, why in _UNSUPPORTED.items():
            if name in inputs:
                raise RequestError(f"{name}: {why}; this repository serves a text-only model")
        if _first(inputs.get("num_draft_tokens"), 0) > 0:
            raise RequestError("num_draft_tokens: speculative decoding needs a draft model, which this repository has none of")
        return inputs

    def _generate(self, request, sender):
        """Yield (sequence key, text pieces per beam, engine response) for each engine response.

        The engine answers a batch (or several return sequences) as separate responses tagged with
        batch_index / sequence_index; each such sequence is its own stream for postprocessing.
        """
        inputs = self._inputs(request)
        stream_id = f"bls-{uuid.uuid4().hex}"
        pre = self._preprocess(inputs, stream_id)
        engine_request = self._engine_request(inputs, pre, stream_id)
        shapes, result_ended = {}, False
        try:
            with self.engine_calls.slot() as admitted:
                if not admitted:
                    raise ServerBusy(f"server busy: {MODEL} is unloading")
                if self.decoupled:  # stopped when left early, not read on (bls_stream)
                    responses = closing(bls_stream(
                        request, engine_request.exec(decoupled=True),
                        stop=lambda: self._stop_engine(stream_id, pre, request), drain=False))
                else:
                    responses = nullcontext([engine_request.exec()])
                with responses as stream:
                    for response in stream:
                        error = bls_error(response)
                        if error is not None:
                            raise _failure(error, self.engine)
                        if sender is not None and sender.is_cancelled():
                            return  # bls_stream stops the engine request
                        ids = pb_utils.get_output_tensor_by_name(response, "output_ids")
                        result_ended = ids is not None
                        if ids is None:
                            continue
                        tokens = ids.as_numpy()
                        lengths = pb_utils.get_output_tensor_by_name(response, "sequence_length").as_numpy()
                        key = (_index(response, "batch_index"), _index(response, "sequence_index"))
                        shapes[key] = tokens.shape[:2]
                        yield key, self._postprocess(tokens, lengths, f"{stream_id}/{key[0]}/{key[1]}"), response
            if not result_ended:
                # tensorrt_llm ends every result with a response carrying output_ids. A bare final flag
                # means it failed mid-stream: Triton 2.51 drops such an error on its way to a BLS caller.
                raise ServerFault(f"{self.engine} failed during generation (its error is in the server log)")
        finally:
            tails = {key: self._postprocess(np.zeros((*shape, 0), np.int32), np.zeros(shape, np.int32),
                                            f"{stream_id}/{key[0]}/{key[1]}") for key, shape in shapes.items()}
        for key, tail in tails.items():
            if any(tail):
                yield key, tail, None

    @staticmethod
    def _response(request, texts, engine_response):
        tensors = {"text_output": np.array([t.encode("utf-8") for t in texts], dtype=np.object_)}
        if engine_response is not None:
            for name in _PASSTHROUGH_OUTPUTS:
                tensor = pb_utils.get_output_tensor_by_name(engine_response, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
        return pb_utils.InferenceResponse(output_tensors=requested_only(request, tensors))

    def _run(self, request, sender):
        """Stream pieces to ``sender`` and return None, or return one response with the whole text."""
        stream = pb_utils.get_input_tensor_by_name(request, "stream")
        streaming = sender is not None and stream is not None and bool(_first(stream.as_numpy(), False))
        whole, last = {}, {}
        for key, pieces, engine_response in self._generate(request, sender):
            whole[key] = [a + b for a, b in zip(whole[key], pieces)] if key in whole else pieces
            last[key] = engine_response or last.get(key)
            if streaming:
                sender.send(self._response(request, whole[key] if self.accumulate else pieces, last[key]))
        if streaming:
            return None
        keys = sorted(whole)
        texts = [t for key in keys for t in whole[key]] or [""]
        return self._response(request, texts, last[keys[-1]] if keys else None)

    def _serve(self, request):
        """One request from start to end, answered through its response sender, decoupled or not."""
        sender = request.get_response_sender()
        try:
            response = self._run(request, sender if self.decoupled else None)
            if response is not None:
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the client, as a short message
            error = error_response(exc, MODEL, self.logger.log_error)
            try:
                if self.decoupled:  # error first, final flag in a send of its own (both in one send hangs BLS callers)
                    sender.send(error)
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:  # the one response of a request that is not decoupled
                    sender.send(error, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:  # noqa: BLE001 - the client is gone
                pass

    def execute(self, requests):
        """Requests run side by side on threads, so one instance keeps many streams in the engine's
        in-flight batch; each is answered through its response sender after this returns, decoupled or not.
        Returning the answers of the batch served a non-decoupled BLS one request at a time (Triton batches none
        for it): a 1-token request waited 7.6 s for a 64-token one sent 0.5 s before it (review17)."""
        for request in requests:
            self.pool.submit(self._serve, request)
        return None

    def finalize(self):
        self.engine_calls.close()  # requests waiting for an engine call end (ENGINE_CALLS)
        self.pool.shutdown(wait=True, cancel_futures=True)
