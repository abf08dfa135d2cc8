"""Triton Python model ``preprocessing``: prompts to token ids for tensorrt_llm.

Inputs and outputs are those of NVIDIA's inflight_batcher_llm preprocessing (TensorRT-LLM 1.2.1),
so the ensemble and BLS are unchanged: QUERY → INPUT_ID / REQUEST_INPUT_LEN, bad and stop words →
BAD_WORDS_IDS / STOP_WORDS_IDS in the [2, N] (flat ids, end offsets) layout, END_ID / PAD_ID from
the request or else the tokenizer, REQUEST_OUTPUT_LEN passed through. Text only: image and video
inputs are refused. Every prompt of every request in one ``execute`` is tokenized in one batch.
Bad requests (non-UTF-8 bytes, empty prompt, max_tokens < 1) get an error response of their own
while the rest of the batch is served.

Parameters: ``tokenizer_dir``, ``add_special_tokens`` (default true), ``apply_chat_template``
(wrap each prompt as one user message of the tokenizer's chat template; default false).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

_TRUE = {"true", "1", "yes", "y", "t", "on"}
_MULTIMODAL_INPUTS = ("IMAGE_BYTES", "IMAGE_URL", "IMAGES", "VIDEO_BYTES")


class RequestError(Exception):
    """A problem with one request that its sender can fix."""


def load_tokenizer(tokenizer_dir):
    """The fast tokenizer; PreTrainedTokenizerFast reads tokenizer.json where AutoTokenizer does not
    know the class name saved by a newer transformers (TokenizersBackend)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True)
    except (ValueError, OSError, KeyError, AttributeError):
        return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


def parameter_flag(params, key, default):
    value = params.get(key, {}).get("string_value", "").strip().lower()
    if not value or value.startswith("${"):
        return default
    return value in _TRUE


def _utf8(raw, name):
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{name} is not valid UTF-8 (byte {exc.start}: {bytes(raw)[exc.start:exc.start + 1]!r})")


def word_lists_to_ids(encode, word_lists, batch_size, name="stop_words"):
    """Bad/stop words per batch item → int32 [batch, 2, N]: row 0 the ids of all words back to back
    (padded with 0), row 1 the cumulative end offset of each word (padded with -1).

    Words that encode to nothing are dropped; no words at all gives [batch, 2, 0].
    """
    if word_lists is None:
        return np.zeros((batch_size, 2, 0), dtype=np.int32)
    flat, offsets = [], []
    for words in word_lists:
        ids, ends = [], []
        for word in words:
            text = _utf8(word, name)
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
    return [_utf8(row[0] if len(row) else b"", name) for row in array.reshape(array.shape[0], -1)]


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _per_item(values, batch_size, name):
    """A [batch, 1] (or [batch]) int input as one int per batch item."""
    flat = np.asarray(values).reshape(-1)
    if flat.size != batch_size:
        raise RequestError(f"{name} has {flat.size} values for a batch of {batch_size}")
    return [int(v) for v in flat]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        tokenizer_dir = params.get("tokenizer_dir", {}).get("string_value", "")
        if not tokenizer_dir:
            raise pb_utils.TritonModelException("preprocessing: parameter tokenizer_dir is not set")
        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.add_special_tokens = parameter_flag(params, "add_special_tokens", True)
        self.chat = parameter_flag(params, "apply_chat_template", False)
        if self.chat and not getattr(self.tokenizer, "chat_template", None):
            raise pb_utils.TritonModelException(
                f"preprocessing: apply_chat_template is true but the tokenizer in {tokenizer_dir} has no chat template"
            )
        self.end_id = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id
        self.vocab_size = len(self.tokenizer)

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
        bias = np.zeros((batch_size, self.vocab_size), dtype=np.float32)
        for i, (item_words, item_weights) in enumerate(zip(words, weights)):
            if len(item_words) != len(item_weights):
                raise RequestError("embedding_bias_words and embedding_bias_weights differ in length")
            for word, weight in zip(item_words, item_weights):
                for token in self._encode_words(_utf8(word, "embedding_bias_words")):
                    bias[i, token] += weight
        return bias

    # -------------------------------------------------------------- requests

    def _parse(self, request):
        """Everything of one request except the prompt ids (those are encoded for the whole batch)."""
        for name in _MULTIMODAL_INPUTS:
            if pb_utils.get_input_tensor_by_name(request, name) is not None:
                raise RequestError(f"{name} given, but this repository serves a text-only model")
        query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
        batch = query.shape[0]
        prompts = _texts(query, "text_input")
        output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
        for value in _per_item(output_len, batch, "max_tokens"):
            if value < 1:
                raise RequestError(f"max_tokens must be at least 1 (got {value})")
        decoder = _optional(request, "DECODER_QUERY")
        end = _optional(request, "END_ID")
        pad = _optional(request, "PAD_ID")
        end_ids = _per_item(end, batch, "end_id") if end is not None else [self.end_id] * batch
        if None in end_ids:
            raise RequestError("the tokenizer defines no end-of-sequence token: send end_id with the request")
        pad_ids = _per_item(pad, batch, "pad_id") if pad is not None else [
            self.pad_id if self.pad_id is not None else e for e in end_ids]
        extra = _optional(request, "PROMPT_TABLE_EXTRA_ID")
        return {
            "batch": batch,
            "prompts": prompts,
            "decoder_prompts": _texts(decoder, "decoder_text_input") if decoder is not None else None,
            "output_len": output_len.astype(np.int32),
            "bad": word_lists_to_ids(self._encode_words, _optional(request, "BAD_WORDS_DICT"), batch, "bad_words"),
            "stop": word_lists_to_ids(self._encode_words, _optional(request, "STOP_WORDS_DICT"), batch, "stop_words"),
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
        ]
        if parsed["extra_id"] is not None:
            # Tokens past the vocabulary are prompt-table rows; they carry the request's extra id.
            extra = np.asarray(parsed["extra_id"], dtype=np.uint64).reshape(batch, 1)
            tensors.append(pb_utils.Tensor(
                "OUT_PROMPT_TABLE_EXTRA_IDS", np.where(input_ids >= self.vocab_size, extra, 0).astype(np.uint64)
            ))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        parsed, errors = [], {}
        for i, request in enumerate(requests):
            try:
                parsed.append(self._parse(request))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the whole batch
                parsed.append(None)
                errors[i] = str(exc) if isinstance(exc, RequestError) else f"preprocessing failed: {exc!r}"
        prompts = [p for item in parsed if item for p in item["prompts"]]
        decoder_prompts = [p for item in parsed if item and item["decoder_prompts"] for p in item["decoder_prompts"]]
        encoded = iter(self._encode_prompts(prompts, self.chat))
        decoder_encoded = iter(self._encode_prompts(decoder_prompts, False))
        responses = []
        for i, item in enumerate(parsed):
            if item is None:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(errors[i])))
                continue
            prompt_ids = [next(encoded) for _ in range(item["batch"])]
            decoder_ids = [next(decoder_encoded) for _ in range(item["batch"])] if item["decoder_prompts"] else None
            try:
                responses.append(self._response(item, prompt_ids, decoder_ids))
            except RequestError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
        return responses
