"""The tensor contract of NVIDIA's ``tensorrt_llm`` Triton model (TensorRT-LLM 1.2.1), in plain numpy.

Requests are read and responses written here the way the C++ ``tensorrtllm`` backend does it
(``triton_backend/inflight_batcher_llm/src/utils.cc`` and ``model_instance_state.cc``), so that the
ensemble and BLS cannot tell the CPU reference engine from the GPU one. Nothing here touches Triton
or torch: the Python-backend adapter turns Triton tensors into a dict of numpy arrays first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model_common import RequestError, check_word_count

# The ensemble's and BLS's names of the engine inputs they rename, so an error names what the client sent.
CLIENT_NAMES = {"runtime_top_k": "top_k", "runtime_top_p": "top_p", "len_penalty": "length_penalty",
                "request_output_len": "max_tokens", "streaming": "stream"}


def _name(name: str) -> str:
    client = CLIENT_NAMES.get(name)
    return f"{name} ({client})" if client else name


# Inputs of the official config that need an engine feature the CPU reference engine does not have.
# Sending one of them is an error, as it is for a TensorRT-LLM engine built without the feature.
UNSUPPORTED_INPUTS = {
    "encoder_input_features": "encoder-decoder or multimodal encoder inputs",
    "draft_input_ids": "speculative decoding with draft tokens",
    "draft_logits": "speculative decoding with draft tokens",
    "prompt_embedding_table": "prompt tuning",
    "cross_attention_mask": "multimodal (mllama) models",
    "mrope_rotary_cos_sin": "multimodal rotary embeddings",
    "lora_task_id": "LoRA adapters",
    "lora_weights": "LoRA adapters",
    "lora_config": "LoRA adapters",
    "context_phase_params": "disaggregated serving",
    "guided_decoding_guide_type": "guided decoding",
    "lookahead_window_size": "lookahead decoding",
    "lookahead_ngram_size": "lookahead decoding",
    "lookahead_verification_set_size": "lookahead decoding",
}

# Inputs accepted and ignored: they change nothing for a decoder-only model on their own (the official
# preprocessing always sends the decoder ones), or are hints without effect on the output (KV retention).
IGNORED_INPUTS = (
    "decoder_input_ids", "decoder_input_lengths", "encoder_output_lengths", "prompt_vocab_size",
    "prompt_table_extra_ids", "draft_acceptance_threshold", "skip_cross_attn_blocks", "mrope_position_deltas",
    "guided_decoding_guide", "retention_token_range_starts", "retention_token_range_ends",
    "retention_token_range_priorities", "retention_token_range_durations_ms", "retention_decode_priority",
    "retention_decode_duration_ms",
    # beam-search knobs: TensorRT-LLM ignores them at beam width 1, the only width here
    "len_penalty", "early_stopping", "beam_search_diversity_rate",
)


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings, with TensorRT-LLM's defaults (greedy unless top-k or top-p ask otherwise)."""

    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    seed: int = 0  # TensorRT-LLM's random seed defaults to 0: unseeded sampling is repeatable too
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    end_id: int | None = None
    bad_words: tuple[tuple[int, ...], ...] = ()
    embedding_bias: tuple[float, ...] = ()

    @property
    def greedy(self) -> bool:
        """Greedy when neither top-k (>1) nor top-p (>0) is set, as in TensorRT-LLM, or at temperature 0."""
        return (self.top_k <= 1 and self.top_p <= 0.0) or self.temperature == 0.0

    @property
    def uses_history(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass
class GenerationRequest:
    """One sequence to generate: a row of a (possibly batched) Triton request."""

    input_ids: list[int]
    max_new_tokens: int
    streaming: bool = False
    exclude_input_in_output: bool = False
    stop_words: list[list[int]] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    return_log_probs: bool = False
    return_perf_metrics: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    batch_index: int = 0
    batch_size: int = 1

    @property
    def end_id(self) -> int | None:
        return self.sampling.end_id


def word_list(sparse: np.ndarray, name: str = "stop/bad words list") -> list[list[int]]:
    """TensorRT-LLM's ``[2, L]`` word list (flat token ids, then end offsets padded with -1) as lists of ids.

    Follows ``convertWordList`` of the C++ backend, with its checks turned into request errors, and at most
    ``MAX_WORDS`` words (counted before any is read).
    """
    arr = np.asarray(sparse).reshape(-1).astype(np.int64)
    if arr.size == 0:
        return []
    if arr.size % 2:
        raise RequestError("stop/bad words list must have shape [2, N] (token ids, then end offsets)")
    n = arr.size // 2
    ids, offsets = arr[:n], arr[n:]
    check_word_count(int(np.count_nonzero(offsets != -1)), name)
    words, start, previous = [], 0, 0
    for i, end in enumerate(offsets):
        end = int(end)
        if end == -1:
            if np.any(offsets[i:] != -1):
                raise RequestError("stop/bad words list: offsets must not continue after the first -1")
            break
        if end > n or end <= previous and i > 0 or end < 0:
            raise RequestError("stop/bad words list: offsets must increase and stay within the token ids")
        words.append([int(t) for t in ids[start:end]])
        start = previous = end
    return [w for w in words if w]


def _row(tensors: dict[str, np.ndarray], name: str, index: int) -> np.ndarray | None:
    value = tensors.get(name)
    if value is None:
        return None
    value = np.asarray(value)
    if value.ndim == 0:
        return value
    if value.shape[0] == 1:
        return value[0]
    return value[index]


def _scalar(tensors, name, index, cast, default=None):
    value = _row(tensors, name, index)
    if value is None or np.asarray(value).size == 0:
        return default
    return cast(np.asarray(value).reshape(-1)[0])


def _present(value) -> bool:
    """Sent with content: a non-empty array (of non-empty strings, for string tensors)."""
    if value is None:
        return False
    value = np.asarray(value)
    if value.dtype == np.object_:
        return any(len(v) for v in value.reshape(-1))
    return value.size > 0


def stop_prompt(tensors: dict[str, np.ndarray]) -> list[int]:
    """The prompt a ``stop`` request repeats (first row, cut at input_lengths); [] when unreadable."""
    try:
        ids = np.asarray(_row(tensors, "input_ids", 0)).reshape(-1)
        return [int(t) for t in ids[:_scalar(tensors, "input_lengths", 0, int, ids.size)]]
    except (TypeError, ValueError, IndexError, OverflowError):
        return []


def batch_size_of(tensors: dict[str, np.ndarray]) -> int:
    """Rows in the Triton request: the batch dimension of ``input_ids`` (``max_batch_size > 0`` configs)."""
    ids = tensors.get("input_ids")
    if ids is None:
        raise RequestError("input_ids is not present in the request")
    ids = np.asarray(ids)
    return 1 if ids.ndim < 2 else int(ids.shape[0])


def parse_request(
    tensors: dict[str, np.ndarray], *, default_exclude_input: bool, decoupled: bool
) -> list[GenerationRequest]:
    """Read one Triton request (numpy inputs by name, batch dimension first) into one request per row.

    Raises RequestError for anything the C++ backend would also reject, and for features this engine
    lacks, so no setting is silently ignored.
    """
    for name, feature in UNSUPPORTED_INPUTS.items():
        if _present(tensors.get(name)):
            raise RequestError(f"input {name!r} needs {feature}, which the CPU reference engine does not support")
    rows = batch_size_of(tensors)
    if rows > 1 and not decoupled:
        raise RequestError("Batch size > 1 requires the tensorrt_llm backend to be using decoupled transaction policy")
    if "request_output_len" not in tensors:
        raise RequestError("request_output_len is not present in the request")
    if "input_lengths" not in tensors:
        raise RequestError("input_lengths is not present in the request")
    return [_parse_row(tensors, i, rows, default_exclude_input, decoupled) for i in range(rows)]


def _parse_row(tensors, i, rows, default_exclude_input, decoupled) -> GenerationRequest:
    streaming = _scalar(tensors, "streaming", i, bool, False)
    if streaming and not decoupled:
        raise RequestError("Streaming is only supported if model is deployed using decoupled mode.")
    ids = np.asarray(_row(tensors, "input_ids", i)).reshape(-1)
    length = _scalar(tensors, "input_lengths", i, int, ids.size)
    if length < 0 or length > ids.size:
        raise RequestError(f"input_lengths ({length}) does not fit input_ids ({ids.size} tokens)")
    input_ids = [int(t) for t in ids[:length]]

    beam_width = _scalar(tensors, "beam_width", i, int, 1)
    if beam_width != 1:
        raise RequestError(f"beam_width {beam_width}: the CPU reference engine decodes one beam (max_beam_width 1)")
    returns = _scalar(tensors, "num_return_sequences", i, int, 1)
    if returns != 1:
        raise RequestError(f"num_return_sequences {returns}: the CPU reference engine returns one sequence")
    for name in ("return_context_logits", "return_generation_logits"):
        if _scalar(tensors, name, i, bool, False):
            raise RequestError(f"{name}: the CPU reference engine does not gather logits")
    for name in ("runtime_top_p_min", "runtime_top_p_decay", "runtime_top_p_reset_ids"):
        if _scalar(tensors, name, i, float) is not None:
            raise RequestError(f"{name}: top-p decay is not supported by the CPU reference engine")

    sampling = _sampling(tensors, i)
    return GenerationRequest(
        input_ids=input_ids,
        max_new_tokens=_scalar(tensors, "request_output_len", i, int, 0),
        streaming=streaming,
        exclude_input_in_output=_scalar(tensors, "exclude_input_in_output", i, bool, default_exclude_input),
        stop_words=word_list(_row(tensors, "stop_words_list", i), "stop_words_list") if "stop_words_list" in tensors else [],
        sampling=sampling,
        return_log_probs=_scalar(tensors, "return_log_probs", i, bool, False),
        return_perf_metrics=_scalar(tensors, "return_perf_metrics", i, bool, False),
        return_num_input_tokens=_scalar(tensors, "return_num_input_tokens", i, bool, False),
        return_num_output_tokens=_scalar(tensors, "return_num_output_tokens", i, bool, False),
        batch_index=i,
        batch_size=rows,
    )


# Per-request ranges of TensorRT-LLM 1.2's executor::SamplingConfig (the check* functions of
# cpp/tensorrt_llm/executor/samplingConfig.cpp, which refuse NaN too): (lowest, lowest included, highest).
# Presence and frequency penalties have no range there; here they must be finite, like every float:
# an infinite penalty or bias turns a whole row of logits into NaN.
_FLOAT_RANGES = {
    "temperature": (0.0, True, math.inf),
    "repetition_penalty": (0.0, False, math.inf),
    "presence_penalty": (-math.inf, True, math.inf),
    "frequency_penalty": (-math.inf, True, math.inf),
    "len_penalty": (0.0, True, math.inf),
    "beam_search_diversity_rate": (0.0, True, math.inf),
}
_INT_RANGES = {"runtime_top_k": 0, "min_tokens": 0}  # lowest value; the INT32 tensor bounds the top


def _float_input(tensors, name, i, default):
    value = _scalar(tensors, name, i, float, default)
    low, inclusive, high = _FLOAT_RANGES[name]
    ok = math.isfinite(value) and (value >= low if inclusive else value > low) and value <= high
    if not ok:
        bound = f"{'>=' if inclusive else '>'} {low:g}" if low > -math.inf else "any"
        raise RequestError(f"{_name(name)} must be a finite number ({bound}), got {value!r}")
    return value


def _int_input(tensors, name, i, default):
    value = _scalar(tensors, name, i, int, default)
    if value < _INT_RANGES[name]:
        raise RequestError(f"{_name(name)} must be >= {_INT_RANGES[name]}, got {value}")
    return value


def _sampling(tensors, i) -> SamplingParams:
    """Sampling settings of one row, each checked against TensorRT-LLM's range (a RequestError names the input)."""
    top_p = _scalar(tensors, "runtime_top_p", i, float, 0.0)
    if math.isnan(top_p) or top_p > 1.0:
        raise RequestError(f"{_name('runtime_top_p')} must be in (0, 1] (0 or less means unset), got {top_p!r}")
    for name in ("len_penalty", "beam_search_diversity_rate"):  # ignored at beam width 1, but still checked
        _float_input(tensors, name, i, 0.0)
    bias = _row(tensors, "embedding_bias", i)
    bias = np.asarray(bias, dtype=np.float64).reshape(-1) if bias is not None else np.zeros(0)
    if not np.all(np.isfinite(bias)):
        raise RequestError("embedding_bias must hold finite numbers (no inf or NaN)")
    bad = word_list(_row(tensors, "bad_words_list", i), "bad_words_list") if "bad_words_list" in tensors else []
    return SamplingParams(
        top_k=_int_input(tensors, "runtime_top_k", i, 0),
        top_p=max(0.0, top_p),  # the C++ backend reads runtime_top_p <= 0 as unset (inflight_batcher_llm utils.cc)
        temperature=_float_input(tensors, "temperature", i, 1.0),
        seed=_scalar(tensors, "seed", i, int, 0),
        min_tokens=_int_input(tensors, "min_tokens", i, 0),
        repetition_penalty=_float_input(tensors, "repetition_penalty", i, 1.0),
        presence_penalty=_float_input(tensors, "presence_penalty", i, 0.0),
        frequency_penalty=_float_input(tensors, "frequency_penalty", i, 0.0),
        end_id=_scalar(tensors, "end_id", i, int),
        bad_words=tuple(tuple(w) for w in bad),
        embedding_bias=tuple(float(b) for b in bias),
    )


@dataclass
class PerfMetrics:
    """``executor::RequestPerfMetrics`` of one request: steady-clock nanoseconds and KV-cache block counts.

    A time stays 0 until it happens, as a default-constructed ``TimePoint`` does in the C++ backend;
    ``last_token_time_ns`` is set only when the request finishes.
    """

    arrival_time_ns: int = 0
    first_scheduled_time_ns: int = 0
    first_token_time_ns: int = 0
    last_token_time_ns: int = 0
    kv_cache_alloc_new_blocks: int = 0
    kv_cache_reused_blocks: int = 0
    kv_cache_alloc_total_blocks: int = 0


_PERF_INT32 = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks")
_PERF_INT64 = ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")


def response_tensors(
    request: GenerationRequest,
    tokens: list[int],
    *,
    log_probs: list[float] | None = None,
    cum_log_prob: float | None = None,
    perf: PerfMetrics | None = None,
) -> dict[str, np.ndarray]:
    """The output tensors of one response, shaped ``[1, ...]`` as ``fillTritonResponse`` shapes them.

    ``tokens`` is what this response carries: the new tokens when streaming, otherwise the whole
    output (with the prompt unless it is excluded). Optional outputs appear only when asked for, and
    ``num_output_tokens`` counts this response's tokens, as in the C++ backend.
    """
    out = {
        "output_ids": np.asarray(tokens, dtype=np.int32).reshape(1, 1, len(tokens)),
        "sequence_length": np.asarray([[len(tokens)]], dtype=np.int32),
    }
    if request.return_log_probs and log_probs is not None:
        out["output_log_probs"] = np.asarray(log_probs, dtype=np.float32).reshape(1, 1, len(log_probs))
        out["cum_log_probs"] = np.asarray([[cum_log_prob or 0.0]], dtype=np.float32)
    if request.batch_size > 1:
        out["batch_index"] = np.asarray([[request.batch_index]], dtype=np.int32)
    if request.return_num_input_tokens:
        out["num_input_tokens"] = np.asarray([[len(request.input_ids)]], dtype=np.int32)
    if request.return_num_output_tokens:
        out["num_output_tokens"] = np.asarray([[len(tokens)]], dtype=np.int32)
    if request.return_perf_metrics and perf is not None:
        for name in _PERF_INT32:
            out[name] = np.asarray([[getattr(perf, name)]], dtype=np.int32)
        for name in _PERF_INT64:
            out[name] = np.asarray([[getattr(perf, name)]], dtype=np.int64)
        out["acceptance_rate"] = np.zeros((1, 1), dtype=np.float32)
        out["total_accepted_draft_tokens"] = np.zeros((1, 1), dtype=np.int32)
        out["total_draft_tokens"] = np.zeros((1, 1), dtype=np.int32)
    return out
