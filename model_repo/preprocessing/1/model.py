"""Triton Python model ``preprocessing``: prompts to token ids for tensorrt_llm.

Inputs and outputs are those of NVIDIA's inflight_batcher_llm preprocessing (TensorRT-LLM 1.2.1),
so the ensemble and BLS are unchanged: QUERY → INPUT_ID / REQUEST_INPUT_LEN, bad and stop words →
BAD_WORDS_IDS / STOP_WORDS_IDS in the [2, N] (flat ids, end offsets) layout, END_ID / PAD_ID from
the request or else the tokenizer, REQUEST_OUTPUT_LEN passed through. Text only: image and video
inputs are refused. Every prompt of every request in one ``execute`` is tokenized in one batch.
Bad requests (non-UTF-8 bytes, empty prompt, max_tokens outside [1, max_output_len], end_id or
pad_id outside the vocabulary, non-finite bias weights) get an error response of their own (HTTP
400) while the rest of the batch is served.

One output is tritongen's own: OUT_RETURN_PERF_METRICS, always true, which the ensemble passes to
tensorrt_llm so that every response carries the engine's arrival time of its request: the
server-made part of the key of postprocessing's streaming state (see postprocessing/1/model.py).
The client's RETURN_PERF_METRICS comes in only because an ensemble must use every input it has.

Parameters: ``tokenizer_dir``, ``add_special_tokens`` (upstream's key, default true),
``apply_chat_template`` (wrap each prompt as one user message of the tokenizer's chat template),
``max_output_len`` (the most tokens a request may ask for) and ``max_input_len`` (prompts, decoder prompts
included, certainly longer are refused before they are tokenized).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_common import (  # noqa: E402
    PromptLimit, RequestError, check_word_count, error_response, exit_with_server, flag, integer, load_tokenizer,
    parameters, required, utf8,
)

MODEL = "preprocessing"
_MULTIMODAL_INPUTS = ("IMAGE_BYTES", "IMAGE_URL", "IMAGES", "VIDEO_BYTES")
_INT32_WRAP = "; a JSON number of 2^31 or more wraps around in this INT32 input"

def word_lists_to_ids(encode, word_lists, batch_size, name="stop_words", limit=None):
    """Bad/stop words per batch item → int32 [batch, 2, N]: row 0 the ids of all words back to back
    (padded with 0), row 1 the cumulative end offset of each word (padded with -1).

    Words that encode to nothing are dropped; no words at all gives [batch, 2, 0]. Before anything is
    tokenized, each item may hold at most ``MAX_WORDS`` words, and with ``limit`` (a PromptLimit) its words
    together no more text than a prompt.
    """
    if word_lists is None:
        return np.zeros((batch_size, 2, 0), dtype=np.int32)
    flat, offsets = [], []
    for words in word_lists:
        check_word_count(sum(1 for word in words if len(word)), name)  # a batch pads shorter lists with b""
        texts = [utf8(word, name) for word in words]
        if limit is not None:
            limit.check("".join(texts), name)
        ids, ends = [], []
        for text in texts:
            word_ids = encode(text) if text else []
            if word_ids:
                ids.extend(word_ids)
                ends.append(len(ids))
        flat.append(ids)
        offsets.append(ends)
    width = max(1, max(len(ids) for ids in flat))
    out = np.zeros((len(flat), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for i, (ids, ends) in enumerate(zip(flat, offsets)):
        out[i, 0, : len(ids)] = ids
        out[i, 1, : len(ends)] = ends
    return out


def _texts(array, name):
    """A [batch, 1] BYTES tensor as str, with a clear error for bytes that are not UTF-8."""
    return [utf8(row[0] if len(row) else b"", name) for row in array.reshape(array.shape[0], -1)]


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _per_item(values, batch_size, name):
    """A [batch, 1] (or [batch]) int input as one int per batch item."""
    flat = np.asarray(values).reshape(-1)
    if flat.size != batch_size:
        raise RequestError(f"{name} has {flat.size} values for a batch of {batch_size}")
    return [int(v) for v in flat]


def _token_ids(values, batch_size, name, vocab_size):
    """END_ID / PAD_ID per batch item, each a token of the vocabulary."""
    ids = _per_item(values, batch_size, name)
    for value in ids:
        if not 0 <= value < vocab_size:
            raise RequestError(f"{name} must be a token id in [0, {vocab_size - 1}], got {value}"
                               + (_INT32_WRAP if value < 0 else ""))
    return ids


class TritonPythonModel:
    def initialize(self, args):
        exit_with_server()
        params = parameters(json.loads(args["model_config"]))
        tokenizer_dir = required(params, "tokenizer_dir", MODEL)
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.add_special_tokens = flag(params.get("add_special_tokens", "true"), "add_special_tokens")
        self.chat = flag(required(params, "apply_chat_template", MODEL), "apply_chat_template")
        self.max_output_len = integer(required(params, "max_output_len", MODEL), "max_output_len")
        max_input_len = params.get("max_input_len")  # absent in repositories rendered before it was added
        self.prompt_limit = PromptLimit(self.tokenizer, integer(max_input_len, "max_input_len") if max_input_len else None)
        if self.chat and not getattr(self.tokenizer, "chat_template", None):
            raise pb_utils.TritonModelException(
                f"preprocessing: apply_chat_template is true but the tokenizer in {tokenizer_dir} has no chat template"
            )
        self.vocab_size = len(self.tokenizer)
        self.end_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id

    # -------------------------------------------------------------- encoding

    def _encode_words(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _encode_prompts(self, prompts, chat):
        """All prompts of the batch in one call of the fast tokenizer."""
        if not prompts:
            return []
        if chat:
            prompts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
            return self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompts, add_special_tokens=self.add_special_tokens)["input_ids"]

    def _embedding_bias(self, words, weights, batch_size):
        if words is None and weights is None:
            return np.zeros((batch_size, 0), dtype=np.float32)
        if words is None or weights is None:
            raise RequestError("embedding_bias_words and embedding_bias_weights must be given together")
        if not np.all(np.isfinite(np.asarray(weights, dtype=np.float64))):
            raise RequestError("embedding_bias_weights must be finite numbers (no inf or NaN)")
        bias = np.zeros((batch_size, self.vocab_size), dtype=np.float32)
        for i, (item_words, item_weights) in enumerate(zip(words, weights)):
            if len(item_words) != len(item_weights):
                raise RequestError("embedding_bias_words and embedding_bias_weights differ in length")
            check_word_count(sum(1 for word in item_words if len(word)), "embedding_bias_words")  # as stop words
            texts = [utf8(word, "embedding_bias_words") for word in item_words]
            self.prompt_limit.check("".join(texts), "embedding_bias_words")
            for text, weight in zip(texts, item_weights):
                for token in self._encode_words(text):
                    bias[i, token] += weight
        if not np.all(np.isfinite(bias)):
            raise RequestError("embedding_bias_weights add up to more than a 32-bit float holds for one token")
        return bias

    # -------------------------------------------------------------- requests

    def _output_len(self, request, batch):
        output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
        for value in _per_item(output_len, batch, "max_tokens"):
            if not 1 <= value <= self.max_output_len:
                raise RequestError(f"max_tokens must be in [1, {self.max_output_len}] (this repository's "
                                   f"max_output_len), got {value}" + (_INT32_WRAP if value < 0 else ""))
        return output_len.astype(np.int32)

    def _parse(self, request):
        """Everything of one request except the prompt ids (those are encoded for the whole batch)."""
        for name in _MULTIMODAL_INPUTS:
            if pb_utils.get_input_tensor_by_name(request, name) is not None:
                raise RequestError(f"{name} given, but this repository serves a text-only model")
        query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
        batch = query.shape[0]
        prompts = _texts(query, "text_input")
        for prompt in prompts:
            self.prompt_limit.check(prompt)
        decoder = _optional(request, "DECODER_QUERY")
        decoder_prompts = _texts(decoder, "decoder_text_input") if decoder is not None else None
        for prompt in decoder_prompts or ():  # tokenized like the prompt: the same bound first
            self.prompt_limit.check(prompt, "decoder_text_input")
        end = _optional(request, "END_ID")
        pad = _optional(request, "PAD_ID")
        end_ids = _token_ids(end, batch, "end_id", self.vocab_size) if end is not None else [self.end_id] * batch
        if None in end_ids:
            raise RequestError("the tokenizer defines no end-of-sequence token: send end_id with the request")
        pad_ids = _token_ids(pad, batch, "pad_id", self.vocab_size) if pad is not None else [
            self.pad_id if self.pad_id is not None else e for e in end_ids]
        extra = _optional(request, "PROMPT_TABLE_EXTRA_ID")
        return {
            "batch": batch,
            "prompts": prompts,
            "decoder_prompts": decoder_prompts,
            "output_len": self._output_len(request, batch),
            "bad": word_lists_to_ids(self._encode_words, _optional(request, "BAD_WORDS_DICT"), batch, "bad_words",
                                     self.prompt_limit),
            "stop": word_lists_to_ids(self._encode_words, _optional(request, "STOP_WORDS_DICT"), batch, "stop_words",
                                      self.prompt_limit),
            "bias": self._embedding_bias(
                _optional(request, "EMBEDDING_BIAS_WORDS"), _optional(request, "EMBEDDING_BIAS_WEIGHTS"), batch
            ),
            "end_ids": end_ids,
            "pad_ids": pad_ids,
            "extra_id": extra,
        }

    def _padded(self, id_lists, pad_ids):
        width = max(1, max(len(ids) for ids in id_lists))
        out = np.empty((len(id_lists), width), dtype=np.int32)
        for i, ids in enumerate(id_lists):
            out[i, :] = pad_ids[i]
            out[i, : len(ids)] = ids
        lengths = np.array([[len(ids)] for ids in id_lists], dtype=np.int32)
        return out, lengths

    def _response(self, parsed, prompt_ids, decoder_ids):
        for ids in prompt_ids:
            if not ids:
                raise RequestError("text_input is empty: there is nothing to generate from")
        batch = parsed["batch"]
        input_ids, input_lengths = self._padded(prompt_ids, parsed["pad_ids"])
        if decoder_ids is not None:
            dec_ids, dec_lengths = self._padded(decoder_ids, parsed["pad_ids"])
        else:  # decoder-only models: one pad token, as upstream sends
            dec_ids = np.array([[p] for p in parsed["pad_ids"]], dtype=np.int32)
            dec_lengths = np.ones((batch, 1), dtype=np.int32)
        tensors = [
            pb_utils.Tensor("INPUT_ID", input_ids),
            pb_utils.Tensor("REQUEST_INPUT_LEN", input_lengths),
            pb_utils.Tensor("DECODER_INPUT_ID", dec_ids),
            pb_utils.Tensor("REQUEST_DECODER_INPUT_LEN", dec_lengths),
            pb_utils.Tensor("BAD_WORDS_IDS", parsed["bad"]),
            pb_utils.Tensor("STOP_WORDS_IDS", parsed["stop"]),
            pb_utils.Tensor("EMBEDDING_BIAS", parsed["bias"]),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", parsed["output_len"]),
            pb_utils.Tensor("OUT_END_ID", np.array([[e] for e in parsed["end_ids"]], dtype=np.int32)),
            pb_utils.Tensor("OUT_PAD_ID", np.array([[p] for p in parsed["pad_ids"]], dtype=np.int32)),
            pb_utils.Tensor("OUT_RETURN_PERF_METRICS", np.ones((batch, 1), dtype=bool)),
        ]
        if parsed["extra_id"] is not None:
            # Tokens past the vocabulary are prompt-table rows; they carry the request's extra id.
            extra = np.asarray(parsed["extra_id"], dtype=np.uint64).reshape(batch, 1)
            tensors.append(pb_utils.Tensor(
                "OUT_PROMPT_TABLE_EXTRA_IDS", np.where(input_ids >= self.vocab_size, extra, 0).astype(np.uint64)
            ))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _encode_all(self, parsed, key, chat):
        """Prompt ids per parsed request (None where it failed): one tokenizer call for the batch, and
        request by request only if that call fails, so one prompt the tokenizer chokes on fails alone."""
        items = [item for item in parsed if item is not None and item[key] is not None]
        try:
            flat = iter(self._encode_prompts([p for item in items for p in item[key]], chat))
            return {id(item): [next(flat) for _ in item[key]] for item in items}
        except Exception:  # noqa: BLE001 - find the culprit below
            out = {}
            for item in items:
                try:
                    out[id(item)] = self._encode_prompts(item[key], chat)
                except Exception as exc:  # noqa: BLE001
                    out[id(item)] = exc
            return out

    def execute(self, requests):
        log = pb_utils.Logger.log_error
        parsed, errors = [], {}
        for i, request in enumerate(requests):
            try:
                parsed.append(self._parse(request))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the whole batch
                parsed.append(None)
                errors[i] = exc
        prompts = self._encode_all(parsed, "prompts", self.chat)
        decoder_prompts = self._encode_all(parsed, "decoder_prompts", False)
        responses = []
        for i, item in enumerate(parsed):
            try:
                if item is None:
                    raise errors[i]
                ids, decoder_ids = prompts[id(item)], decoder_prompts.get(id(item))
                for value in (ids, decoder_ids):
                    if isinstance(value, Exception):
                        raise value
                responses.append(self._response(item, ids, decoder_ids))
            except Exception as exc:  # noqa: BLE001
                responses.append(error_response(exc, MODEL, log))
        return responses
