"""Triton Python model ``postprocessing``: token ids from tensorrt_llm to text.

Inputs and outputs are those of NVIDIA's inflight_batcher_llm postprocessing (TensorRT-LLM 1.2.1):
TOKENS_BATCH [batch, beams, tokens] and SEQUENCE_LENGTH [batch, beams] in, OUTPUT (one string per
batch item and beam, flat as upstream) out.

Streaming. In streaming mode tensorrt_llm sends only the new tokens of each step, and the ensemble
calls this model once per response, so decoding each chunk alone (upstream's way) splits
multi-byte characters and, with SentencePiece tokenizers, drops spaces. So:

* a request whose stream the server can tell apart is decoded incrementally: per (stream, batch
  item, beam) this model keeps the last few tokens and any tokens that end in an incomplete
  character (detok.StreamTable); the pieces of a stream then join to exactly the text of decoding
  all its tokens at once. An empty chunk (the engine's final response after an end token) flushes
  and forgets the stream; streams that end otherwise expire after 10 idle minutes. One request keeps
  state for at most MAX_STREAMS_PER_REQUEST streams, so that it cannot push others out of the table.
* the stream is known by an identity the server made, never by the client's request id alone (two
  clients sending the same id must not read or corrupt each other's held bytes): tensorrt_llm_bls
  sends STREAM_ID, its own id per stream; through the ensemble it is the request id together with
  ARRIVAL_TIME_NS, tensorrt_llm's arrival time of the request (preprocessing turns the engine's
  perf metrics on for this; a Triton 2.51 ensemble refuses a step whose inputs come from
  preprocessing and from the decoupled tensorrt_llm both, so a preprocessing-made id cannot reach
  this step).
* anything else is decoded chunk by chunk, as upstream does.

With several postprocessing instances the chunks of one stream may land on different instances
(keep one instance for exact streaming through the ensemble). A request that fails here (a token
id outside the vocabulary, a malformed tensor) gets its own error; the others of the batch are served.

Requests larger than any engine response are refused before any work (a request straight to this model with
200,000 beams of one token, 0.8 MB, held every other stream's text for 1.2 s): at most ``max_beam_width`` beams
of ``max_seq_len`` tokens (the batch is bounded by Triton at max_batch_size).

Parameters: ``tokenizer_dir``, ``skip_special_tokens``, ``max_beam_width``, ``max_seq_len`` (the last two absent in
repositories rendered before they were added: no bound then).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from detok import IncrementalDetokenizer, StreamTable  # noqa: E402
from model_common import (  # noqa: E402
    RequestError, error_response, exit_with_server, flag, integer, load_tokenizer, parameters, required, utf8,
)

MODEL = "postprocessing"
MAX_STREAMS_PER_REQUEST = 8
"""The most streams (batch item × beam) one request keeps state for: an engine response has one batch item
and at most max_beam_width beams. The table of streams is bounded, so a request with thousands of beams would
push every other client's stream out of it (their held bytes and context lost mid-character); a request with
more rows is decoded chunk by chunk, as upstream does."""


def _rows(tokens, lengths, max_shape=(None, None)):
    """(batch item, beam, token ids) of a TOKENS_BATCH [batch, beams, tokens] / SEQUENCE_LENGTH pair;
    ``max_shape``: the most beams and tokens an engine response holds (None: no bound)."""
    if tokens.ndim == 2:  # [batch, tokens] from a caller without a beam axis
        tokens = tokens[:, None, :]
    if tokens.ndim != 3:
        raise RequestError(f"TOKENS_BATCH must be [batch, beams, tokens], got shape {list(tokens.shape)}")
    for size, limit, what in zip(tokens.shape[1:], max_shape, ("beams", "tokens")):
        if limit is not None and size > limit:
            raise RequestError(f"TOKENS_BATCH holds {size} {what}, more than an engine response ({limit})")
    lengths = np.asarray(lengths).reshape(-1)
    if lengths.size != tokens.shape[0] * tokens.shape[1]:
        raise RequestError(f"SEQUENCE_LENGTH has {lengths.size} values for {tokens.shape[0] * tokens.shape[1]} sequences")
    lengths = lengths.reshape(tokens.shape[0], tokens.shape[1])
    rows = []
    for b in range(tokens.shape[0]):
        for beam in range(tokens.shape[1]):
            n = int(lengths[b, beam])
            if not 0 <= n <= tokens.shape[2]:
                raise RequestError(f"SEQUENCE_LENGTH {n} does not fit {tokens.shape[2]} tokens")
            rows.append((b, beam, tokens[b, beam, :n].tolist()))
    return rows


class TritonPythonModel:
    def initialize(self, args):
        exit_with_server()
        params = parameters(json.loads(args["model_config"]))
        self.tokenizer = load_tokenizer(required(params, "tokenizer_dir", MODEL))
        self.skip_special_tokens = flag(required(params, "skip_special_tokens", MODEL), "skip_special_tokens")
        self.vocab_size = len(self.tokenizer)
        self.max_shape = tuple(integer(params[k], k) if params.get(k) else None for k in ("max_beam_width", "max_seq_len"))
        self.streams = StreamTable(lambda: IncrementalDetokenizer(self._decode))

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _stateful(self, key, ids):
        if not ids:
            detok = self.streams.pop(key)
            return detok.finish() if detok else ""
        return self.streams.get(key).push(ids)

    def _texts(self, request):
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        rows = _rows(tokens, lengths, self.max_shape)
        for _, _, ids in rows:
            if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
                raise RequestError(f"TOKENS_BATCH holds token ids outside [0, {self.vocab_size - 1}]")
        streams = self._streams(request)
        if len(streams) != len(set(b for b, _, _ in rows)) or len(rows) > MAX_STREAMS_PER_REQUEST:
            # No identity, or one per prompt of a batched request while the engine answers row by row
            # (the row is not passed down the ensemble), or more rows than MAX_STREAMS_PER_REQUEST: decode each
            # chunk alone, as upstream does.
            return self.tokenizer.batch_decode([ids for _, _, ids in rows], skip_special_tokens=self.skip_special_tokens)
        return [self._stateful((streams[b], b, beam), ids) for b, beam, ids in rows]

    @staticmethod
    def _streams(request):
        """The server-made identity of each batch item's stream, or [] when there is none."""
        stream = pb_utils.get_input_tensor_by_name(request, "STREAM_ID")
        if stream is not None:
            return [utf8(v, "STREAM_ID") for v in stream.as_numpy().reshape(-1)]
        arrival = pb_utils.get_input_tensor_by_name(request, "ARRIVAL_TIME_NS")
        if arrival is None:
            return []
        stamps = [int(v) for v in arrival.as_numpy().reshape(-1)]
        if 0 in stamps:  # an engine that does not stamp requests: nothing the server made
            return []
        return [f"{request.request_id()}@{stamp}" for stamp in stamps]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                out = np.array([t.encode("utf-8") for t in self._texts(request)], dtype=np.object_)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", out)]))
            except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others of the batch
                responses.append(error_response(exc, MODEL, pb_utils.Logger.log_error))
        return responses
