"""Triton Python model ``postprocessing``: token ids from tensorrt_llm to text.

Inputs and outputs are those of NVIDIA's inflight_batcher_llm postprocessing (TensorRT-LLM 1.2.1):
TOKENS_BATCH [batch, beams, tokens] and SEQUENCE_LENGTH [batch, beams] in, OUTPUT (one string per
batch item and beam, flat as upstream) out.

Streaming. In streaming mode tensorrt_llm sends only the new tokens of each step, and the ensemble
calls this model once per response with nothing else, so decoding each chunk alone (upstream's
way) splits multi-byte characters and, with SentencePiece tokenizers, drops spaces. The only
per-stream handle Triton passes down an ensemble is the client's request id, so:

* a request with an id is decoded incrementally: per (id, batch item, beam) this model keeps the
  last few tokens and any tokens that end in an incomplete character (detok.StreamTable); the
  pieces of a stream then join to exactly the text of decoding all its tokens at once. An empty
  chunk (the engine's final response after an end token) flushes and forgets the stream; streams
  that end otherwise expire after 10 idle minutes.
* a request without an id is decoded chunk by chunk, as upstream does.

tensorrt_llm_bls always sends a fresh id per stream and a final empty chunk, so its streams are
always exact. Clients of the ensemble send a unique request id per request (tritonclient's
``request_id=``, the generate endpoint's ``"id"``) to get the same guarantee; the id must not be
reused while its stream runs, and with several postprocessing instances the chunks of one stream
may land on different instances (keep one instance for exact streaming through the ensemble).

Parameters: ``tokenizer_dir``, ``skip_special_tokens`` (default true).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detok import IncrementalDetokenizer, StreamTable  # noqa: E402

_TRUE = {"true", "1", "yes", "y", "t", "on"}


def load_tokenizer(tokenizer_dir):
    """The fast tokenizer (PreTrainedTokenizerFast when AutoTokenizer does not know the saved class)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True)
    except (ValueError, OSError, KeyError, AttributeError):
        return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        tokenizer_dir = params.get("tokenizer_dir", {}).get("string_value", "")
        if not tokenizer_dir:
            raise pb_utils.TritonModelException("postprocessing: parameter tokenizer_dir is not set")
        self.tokenizer = load_tokenizer(tokenizer_dir)
        skip = params.get("skip_special_tokens", {}).get("string_value", "").strip().lower()
        self.skip_special_tokens = skip in _TRUE if skip and not skip.startswith("${") else True
        self.streams = StreamTable(lambda: IncrementalDetokenizer(self._decode))

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _stateful(self, key, ids):
        if not ids:
            detok = self.streams.pop(key)
            return detok.finish() if detok else ""
        return self.streams.get(key).push(ids)

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            if tokens.ndim == 2:  # [batch, tokens] from a caller without a beam axis
                tokens = tokens[:, None, :]
            lengths = lengths.reshape(tokens.shape[0], -1)
            rows = [
                (b, beam, tokens[b, beam, : int(lengths[b, beam])].tolist())
                for b in range(tokens.shape[0])
                for beam in range(tokens.shape[1])
            ]
            rid = request.request_id()
            if rid:
                texts = [self._stateful((rid, b, beam), ids) for b, beam, ids in rows]
            else:
                texts = self.tokenizer.batch_decode(
                    [ids for _, _, ids in rows], skip_special_tokens=self.skip_special_tokens
                )
            out = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", out)]))
        return responses
