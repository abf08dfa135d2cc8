"""The CPU reference engine (model_repo/tensorrt_llm_cpu): TensorRT-LLM's tensor contract, the engine on
the tiny model without Triton, and the engine inside a real tritonserver.

The engine modules are loaded from model_repo/ by path, as Triton loads them. Outside the server the
only stand-in is the response sink (Triton's response sender exists only inside the server); the
model, transformers' continuous batching and the paged KV cache are the real ones.
"""

from __future__ import annotations

import json
import math
import queue
import random
import sys
import threading
import time

import numpy as np
import pytest

from generator.resources import model_repo_dir

ENGINE_DIR = model_repo_dir() / "tensorrt_llm_cpu" / "1"
for _folder in (ENGINE_DIR, model_repo_dir() / "_shared"):  # render copies _shared/ next to the engine
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))  # appended: the folder's model.py must not shadow anything

import trtllm_io  # noqa: E402
from trtllm_io import GenerationRequest, RequestError, SamplingParams  # noqa: E402

TPB = 16  # tokens per block in the engines below


class ListSink:
    """Collects one Triton request's responses (the Python backend's response sender, outside the server)."""

    def __init__(self):
        self.responses: list = []
        self.errors: list[str] = []
        self.kinds: list[str] = []
        self.finals = 0
        self.cancelled = False
        self.done = threading.Event()

    def send(self, tensors, final):
        if tensors is not None:
            self.responses.append(tensors)
        if final:
            self.finals += 1
            self.done.set()

    def send_error(self, error, final):
        self.errors.append(str(error))
        self.kinds.append(type(error).__name__)
        if final:
            self.finals += 1
            self.done.set()

    def is_cancelled(self):
        return self.cancelled

    def wait(self, timeout=60):
        assert self.done.wait(timeout), "the engine never sent the final response"
        return self

    def tokens(self) -> list[int]:
        """All tokens of the stream, responses concatenated (one response when not streaming)."""
        return [t for r in self.responses for t in r["output_ids"].reshape(-1).tolist()]


def make_request(prompt, n, **kwargs) -> GenerationRequest:
    kwargs.setdefault("exclude_input_in_output", True)
    return GenerationRequest(input_ids=list(prompt), max_new_tokens=n, **kwargs)


def run(engine, *requests, arrival_ns=0) -> list[ListSink]:
    sinks = []
    for request in requests:
        sink = ListSink()
        engine.submit([request], sink, arrival_ns=arrival_ns or time.perf_counter_ns())
        sinks.append(sink)
    return [sink.wait() for sink in sinks]


def greedy_reference(model, prompt, n, end_id=None) -> list[int]:
    import torch

    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=end_id, pad_token_id=end_id if end_id is not None else 0)
    out = out[0, len(prompt):].tolist()
    return out[: out.index(end_id)] if end_id is not None and end_id in out else out


# ---------------------------------------------------------------- the tensor contract (no model)


def test_declared_inputs_are_the_official_ones():
    """Every input the engine treats specially exists in TensorRT-LLM 1.2.1's tensorrt_llm config."""
    from generator.resources import data_dir

    facts = json.loads((data_dir() / "inflight_batcher_llm_1.2.1.json").read_text())
    official = {t["name"] for t in facts["models"]["tensorrt_llm"]["inputs"]}
    outputs = {t["name"] for t in facts["models"]["tensorrt_llm"]["outputs"]}
    assert set(trtllm_io.UNSUPPORTED_INPUTS) <= official and set(trtllm_io.IGNORED_INPUTS) <= official
    request = make_request([1, 2], 1, return_log_probs=True, return_perf_metrics=True,
                           return_num_input_tokens=True, return_num_output_tokens=True, batch_size=2)
    produced = trtllm_io.response_tensors(request, [5], log_probs=[-0.5], cum_log_prob=-0.5,
                                          perf=trtllm_io.PerfMetrics())
    assert set(produced) <= outputs


def test_word_list_reads_tensorrt_llm_format():
    # two words: [7, 8] and [9]; offsets padded with -1
    sparse = np.array([[7, 8, 9, 0], [2, 3, -1, -1]], dtype=np.int32)
    assert trtllm_io.word_list(sparse) == [[7, 8], [9]]
    assert trtllm_io.word_list(np.zeros((2, 0), dtype=np.int32)) == []
    with pytest.raises(RequestError):
        trtllm_io.word_list(np.array([[7, 8], [3, -1]], dtype=np.int32))  # offset past the ids
    with pytest.raises(RequestError):
        trtllm_io.word_list(np.array([[7, 8, 9], [2, 1, -1]], dtype=np.int32))  # offsets must increase


def _tensors(prompt, n, rows=1, **extra):
    tensors = {
        "input_ids": np.array([prompt] * rows, dtype=np.int32),
        "input_lengths": np.array([len(prompt)] * rows, dtype=np.int32),
        "request_output_len": np.array([n] * rows, dtype=np.int32),
    }
    tensors.update({k: np.asarray(v) for k, v in extra.items()})
    return tensors


def test_parse_request_defaults_and_overrides():
    [row] = trtllm_io.parse_request(_tensors([5, 6, 7], 4), default_exclude_input=True, decoupled=True)
    assert row.input_ids == [5, 6, 7] and row.max_new_tokens == 4
    assert row.exclude_input_in_output and not row.streaming
    assert row.sampling.greedy and row.sampling.seed == 0 and row.end_id is None
    [row] = trtllm_io.parse_request(
        _tensors([5, 6, 7], 4, exclude_input_in_output=[False], streaming=[True], end_id=[3], runtime_top_k=[20],
                 temperature=np.array([0.7], np.float32), seed=np.array([9], np.uint64),
                 stop_words_list=np.array([[[7, 8, 9], [2, 3, -1]]], np.int32)),
        default_exclude_input=True, decoupled=True,
    )
    assert not row.exclude_input_in_output and row.streaming and row.end_id == 3
    assert row.stop_words == [[7, 8], [9]]
    assert not row.sampling.greedy and row.sampling.top_k == 20 and row.sampling.seed == 9
    assert abs(row.sampling.temperature - 0.7) < 1e-6


def test_parse_request_splits_batches_and_honours_input_lengths():
    tensors = _tensors([5, 6, 7, 0], 4, rows=2)
    tensors["input_lengths"] = np.array([3, 4], dtype=np.int32)
    rows = trtllm_io.parse_request(tensors, default_exclude_input=False, decoupled=True)
    assert [r.input_ids for r in rows] == [[5, 6, 7], [5, 6, 7, 0]]
    assert [(r.batch_index, r.batch_size) for r in rows] == [(0, 2), (1, 2)]
    with pytest.raises(RequestError, match="decoupled"):
        trtllm_io.parse_request(tensors, default_exclude_input=False, decoupled=False)


def test_parse_request_ignores_what_the_preprocessing_always_sends():
    extra = {"decoder_input_ids": np.array([[0]], np.int32), "decoder_input_lengths": np.array([1], np.int32),
             "prompt_table_extra_ids": np.array([[0, 0]], np.uint64), "embedding_bias": np.zeros((1, 0), np.float32),
             "bad_words_list": np.array([[[0], [-1]]], np.int32), "guided_decoding_guide_type": np.array([[b""]], object)}
    [row] = trtllm_io.parse_request(_tensors([5, 6], 4, **extra), default_exclude_input=True, decoupled=True)
    assert row.sampling.bad_words == () and row.sampling.embedding_bias == ()


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"beam_width": [2]}, "one beam"),
        ({"num_return_sequences": [2]}, "one sequence"),
        ({"return_generation_logits": [True]}, "logits"),
        ({"lora_task_id": np.array([1], np.uint64)}, "LoRA"),
        ({"draft_input_ids": np.array([[1, 2]], np.int32)}, "speculative"),
        ({"runtime_top_p": np.array([1.5], np.float32)}, r"runtime_top_p \(top_p\) must be in \(0, 1\]"),
        ({"runtime_top_p": np.array([np.nan], np.float32)}, "runtime_top_p"),
        ({"temperature": np.array([-1.0], np.float32)}, r"temperature must be a finite number \(>= 0\)"),
        ({"temperature": np.array([np.inf], np.float32)}, "temperature"),
        ({"temperature": np.array([np.nan], np.float32)}, "temperature"),
        ({"repetition_penalty": np.array([0.0], np.float32)}, r"repetition_penalty must be a finite number \(> 0\)"),
        ({"presence_penalty": np.array([-np.inf], np.float32)}, "presence_penalty must be a finite number"),
        ({"frequency_penalty": np.array([np.nan], np.float32)}, "frequency_penalty"),
        ({"len_penalty": np.array([-1.0], np.float32)}, r"len_penalty \(length_penalty\)"),
        ({"beam_search_diversity_rate": np.array([-1.0], np.float32)}, "beam_search_diversity_rate"),
        ({"runtime_top_k": np.array([-1], np.int32)}, r"runtime_top_k \(top_k\) must be >= 0"),
        ({"min_tokens": np.array([-1], np.int32)}, "min_tokens must be >= 0"),
        ({"embedding_bias": np.array([[0.0, np.inf]], np.float32)}, "embedding_bias must hold finite numbers"),
    ],
)
def test_parse_request_refuses_what_it_cannot_do(extra, message):
    with pytest.raises(RequestError, match=message):
        trtllm_io.parse_request(_tensors([5, 6], 4, **extra), default_exclude_input=True, decoupled=True)


def test_response_tensors_have_the_cpp_backend_shapes():
    request = make_request([1, 2, 3], 4)
    out = trtllm_io.response_tensors(request, [9, 8])
    assert out["output_ids"].shape == (1, 1, 2) and out["output_ids"].dtype == np.int32
    assert out["sequence_length"].tolist() == [[2]]
    assert set(out) == {"output_ids", "sequence_length"}  # nothing that was not asked for
    request = make_request([1, 2, 3], 4, return_perf_metrics=True, return_num_input_tokens=True,
                           return_num_output_tokens=True, return_log_probs=True, batch_index=1, batch_size=2)
    perf = trtllm_io.PerfMetrics(arrival_time_ns=5, first_scheduled_time_ns=6, kv_cache_alloc_total_blocks=1)
    out = trtllm_io.response_tensors(request, [9], log_probs=[-0.25], cum_log_prob=-1.0, perf=perf)
    assert out["arrival_time_ns"].dtype == np.int64 and out["arrival_time_ns"].tolist() == [[5]]
    assert out["last_token_time_ns"].tolist() == [[0]]
    assert out["kv_cache_alloc_total_blocks"].dtype == np.int32
    assert out["num_input_tokens"].tolist() == [[3]] and out["num_output_tokens"].tolist() == [[1]]
    assert out["output_log_probs"].shape == (1, 1, 1) and out["cum_log_probs"].tolist() == [[-1.0]]
    assert out["batch_index"].tolist() == [[1]]


# ---------------------------------------------------------------- settings and KV sizing


def parameters_of(spec) -> dict[str, str]:
    """The tensorrt_llm parameters render writes for ``spec`` (planned, no file written), as the engine reads them."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from generator.repo.render import plan_repository
    from model_common import parameters

    text = plan_repository(spec).files["tensorrt_llm/config.pbtxt"]
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    return parameters({"parameters": {k: {"string_value": v.string_value} for k, v in config.parameters.items()}})


def rendered_parameters(weights, *overrides: str) -> dict[str, str]:
    """The parameters of a test-sized cpu-reference spec."""
    from helpers import small_spec

    return parameters_of(small_spec(weights, weights.parent / "artifacts", "serving.engine=cpu-reference", *overrides))


def test_settings_come_from_the_rendered_parameters_only(tmp_path):
    from engine_settings import EngineSettings

    params = rendered_parameters(tmp_path / "w", "serving.exclude_input_in_output=true", "serving.cpu_max_batch_tokens=64")
    s = EngineSettings.from_parameters(params, max_batch_size=8)
    # the spec's values, not defaults of the engine's own (exclude_input_in_output was once False here)
    assert (s.tokens_per_block, s.max_num_tokens, s.max_seq_len, s.exclude_input_in_output) == (16, 512, 320, True)
    assert (s.cpu_max_batch_tokens, s.batch_tokens, s.max_queue_size) == (64, 64, 64)
    assert s.max_tokens_in_paged_kv_cache is None and s.cpu_threads is None and s.max_batch_size == 8
    for missing in ("exclude_input_in_output", "max_seq_len", "cpu_max_batch_tokens", "gpt_model_path"):
        with pytest.raises(ValueError, match=f"'{missing}' is not set"):
            EngineSettings.from_parameters({k: v for k, v in params.items() if k != missing}, 1)
    with pytest.raises(ValueError, match="batch_scheduler_policy"):
        EngineSettings.from_parameters({**params, "batch_scheduler_policy": "static"}, 1)
    with pytest.raises(ValueError, match="'tokens_per_block': 'x' is not an integer"):
        EngineSettings.from_parameters({**params, "tokens_per_block": "x"}, 1)


def test_kv_blocks_follow_tensorrt_llm_sizing(qwen3_8b_config, tmp_path):
    from transformers import AutoConfig

    from engine_settings import EngineSettings, kv_bytes_per_block, resolve_num_blocks

    values = json.loads(qwen3_8b_config.read_text())
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    # Qwen3-8B: 36 layers x 8 KV heads x 128 dims x K and V x 2 bytes = 147,456 B per token in BF16
    assert kv_bytes_per_block(config, "bfloat16", 1) == 147_456
    per_block = kv_bytes_per_block(config, "bfloat16", 64)
    params = rendered_parameters(tmp_path / "w", "build.tokens_per_block=64", "serving.cpu_kv_cache_mib=4096",
                                 "serving.kv_cache_free_gpu_mem_fraction=0.5", "build.max_batch_size=64")
    s = EngineSettings.from_parameters(params, 64)
    assert resolve_num_blocks(s, per_block)[0] == int(0.5 * 4096 * 2**20 // per_block)
    capped = EngineSettings.from_parameters({**params, "max_tokens_in_paged_kv_cache": "1000"}, 64)
    assert resolve_num_blocks(capped, per_block)[0] == math.ceil(1000 / 64)  # the smaller limit wins
    # never more than max_batch_size sequences of max_seq_len (320 tokens: 5 blocks, +1 each) can use
    few = EngineSettings.from_parameters(params, 2)
    assert resolve_num_blocks(few, per_block) == (2 * 6, "max_batch_size 2 x max_seq_len 320")


def test_working_memory_at_the_spec_defaults_stays_small(tiny_model_dir, tmp_path):
    """Finding 9: at the spec's default limits the dense attention mask of transformers' continuous batching
    (batch tokens x (cache tokens + batch tokens) values) took 4 GB for the 2.6 M-parameter tiny model."""
    from transformers import AutoConfig

    from engine_settings import EngineSettings, kv_bytes_per_block, resolve_num_blocks, working_memory
    from generator.spec import load_spec

    spec = load_spec(None, [f"artifacts.dir={tmp_path}", f"artifacts.checkpoint_dir={tiny_model_dir}",
                            "serving.engine=cpu-reference"])
    s = EngineSettings.from_parameters(parameters_of(spec), spec.triton_max_batch_size)
    per_block = kv_bytes_per_block(AutoConfig.from_pretrained(tiny_model_dir), s.dtype, s.tokens_per_block)
    blocks, _ = resolve_num_blocks(s, per_block)
    memory = working_memory(s, per_block, blocks)
    uncapped = s.max_num_tokens * (blocks * s.tokens_per_block + s.max_num_tokens) * 4
    assert uncapped > 3 * 2**30  # what max_batch_tokens = max_num_tokens (8192) allocated before
    assert memory["attention_mask"] < 300 * 2**20 and sum(memory.values()) < 600 * 2**20


# ---------------------------------------------------------------- token selection


def test_select_token_semantics():
    import torch

    from cpu_sampling import select_token

    logits = torch.tensor([0.0, 3.0, 2.0, 1.0, 2.9])
    assert select_token(logits, SamplingParams(), [], 0, None)[0] == 1  # greedy
    assert select_token(logits, SamplingParams(embedding_bias=(0, 0, 2.0)), [], 0, None)[0] == 2
    assert select_token(logits, SamplingParams(bad_words=((1,),)), [], 0, None)[0] == 4
    assert select_token(logits, SamplingParams(bad_words=((7, 1),)), [3, 7], 1, None)[0] == 4  # prefix matches
    assert select_token(logits, SamplingParams(bad_words=((7, 1),)), [3, 6], 1, None)[0] == 1  # it does not
    assert select_token(logits, SamplingParams(end_id=1, min_tokens=2), [], 1, None)[0] == 4
    assert select_token(logits, SamplingParams(end_id=1, min_tokens=2), [], 2, None)[0] == 1
    assert select_token(logits, SamplingParams(repetition_penalty=2.0), [1], 1, None)[0] == 4
    # sampling: the request's own seed makes it repeatable; top-k 1 and a tiny top-p collapse to greedy
    draws = [select_token(logits, SamplingParams(top_k=5, seed=3), [], 0, torch.Generator().manual_seed(3))[0]
             for _ in range(2)]
    assert draws[0] == draws[1]
    assert select_token(logits, SamplingParams(top_p=1e-6, seed=1), [], 0, torch.Generator().manual_seed(1))[0] == 1
    token, log_prob = select_token(logits, SamplingParams(top_k=2, seed=0), [], 0, torch.Generator().manual_seed(0))
    assert token in (1, 4) and log_prob < 0


def test_select_token_stays_finite_at_the_edges_of_tensorrt_llm_ranges():
    """Finding 1: temperature 1e-38 (valid: >= 0) divided float32 logits into inf and NaN probabilities."""
    import torch

    from cpu_sampling import select_token

    logits = torch.tensor([0.0, 3.0, 2.0, 1.0, 2.9])
    gen = torch.Generator().manual_seed(0)
    for params in (SamplingParams(top_k=5, temperature=1e-38), SamplingParams(top_p=0.9, temperature=1e-45),
                   SamplingParams(top_k=3, repetition_penalty=1e-38), SamplingParams(top_k=3, presence_penalty=3e38),
                   SamplingParams(top_k=5, embedding_bias=(3e38, -3e38, 3e38), temperature=1e-38)):
        token, log_prob = select_token(logits, params, [1, 2], 2, gen)
        assert 0 <= token < 5 and math.isfinite(log_prob), params
    # the limit of temperature -> 0 is greedy
    assert select_token(logits, SamplingParams(top_k=5, temperature=1e-38), [], 0, gen)[0] == 1
    everything_banned = SamplingParams(top_k=5, bad_words=tuple((t,) for t in range(5)))
    with pytest.raises(ValueError, match="no token is left"):
        select_token(logits, everything_banned, [], 0, gen)


# ---------------------------------------------------------------- the engine on the tiny model


@pytest.fixture(scope="module")
def engine_factory(tiny_model_dir, tmp_path_factory):
    from cpu_engine import CpuEngine, load_model
    from engine_settings import EngineSettings

    engines = []
    base = rendered_parameters(tmp_path_factory.mktemp("engine") / "w", "build.max_input_len=128",
                               "build.max_output_len=96", "build.max_num_tokens=256",
                               "serving.max_tokens_in_paged_kv_cache=4096", "serving.exclude_input_in_output=false")

    def make(**params):
        values = {**base, "gpt_model_path": str(tiny_model_dir)}
        values.update({k: str(v) for k, v in params.items()})
        max_batch = int(values.pop("max_batch_size", 8))
        settings = EngineSettings.from_parameters(values, max_batch)
        engine = CpuEngine(settings, load_model(settings.weights_dir, settings.dtype), log=lambda _: None)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


@pytest.fixture(scope="module")
def engine(engine_factory):
    return engine_factory()


@pytest.fixture(scope="module")
def prompts(engine):
    rng = random.Random(0)
    vocab = engine.vocab_size
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in (5, 16, 17, 40)]


def test_greedy_equals_generate_streaming_and_not(engine, prompts):
    model = engine.model
    requests = [make_request(p, 12, streaming=i % 2 == 0) for i, p in enumerate(prompts)]
    sinks = run(engine, *requests)
    for prompt, request, sink in zip(prompts, requests, sinks):
        assert sink.tokens() == greedy_reference(model, prompt, 12)
        assert sink.finals == 1 and not sink.errors
        if request.streaming:  # one response per token, each with only the new token
            assert [r["output_ids"].shape for r in sink.responses] == [(1, 1, 1)] * 12
        else:
            assert len(sink.responses) == 1


def test_exclude_input_in_output_false_returns_prompt_first(engine, prompts):
    [sink] = run(engine, make_request(prompts[1], 5, exclude_input_in_output=False))
    assert sink.tokens() == prompts[1] + greedy_reference(engine.model, prompts[1], 5)
    [sink] = run(engine, make_request(prompts[1], 5, exclude_input_in_output=False, streaming=True))
    assert sink.tokens() == greedy_reference(engine.model, prompts[1], 5)  # streaming sends new tokens only


def test_concurrent_requests_share_engine_steps(engine, prompts):
    before = engine.stats().iterations
    sinks = run(engine, *[make_request(p, 10) for p in prompts])
    steps = engine.stats().iterations - before
    assert all(len(s.tokens()) == 10 for s in sinks)
    assert steps < 10 * len(prompts)  # one request per step would need 40


def test_end_id_stops_and_is_not_returned(engine, prompts):
    full = greedy_reference(engine.model, prompts[2], 8)
    end_id = full[3]
    expected = full[: full.index(end_id)]
    for streaming in (False, True):
        [sink] = run(engine, make_request(prompts[2], 8, streaming=streaming,
                                          sampling=SamplingParams(end_id=end_id)))
        assert sink.tokens() == expected


def test_stop_words_end_the_output_after_the_word(engine, prompts):
    prompt = prompts[0]
    full = greedy_reference(engine.model, prompt, 10)
    word = full[4:6]
    sequence = prompt + full
    # the first place the word completes after the prompt is where TensorRT-LLM stops (word included)
    end = min(i + 2 for i in range(len(prompt) - 1, len(sequence) - 1) if sequence[i:i + 2] == word)
    [sink] = run(engine, make_request(prompt, 10, stop_words=[[engine.vocab_size - 1] * 3, word]))
    assert sink.tokens() == full[: end - len(prompt)]
    assert sink.tokens()[-2:] == word


def test_request_output_len_and_errors(engine, prompts):
    [sink] = run(engine, make_request(prompts[0], 3))
    assert len(sink.tokens()) == 3
    cases = [
        (make_request([], 4), "empty"),
        (make_request(prompts[0], 0), "request_output_len"),
        (make_request(list(range(3, 140)), 4), "max_input_len"),
        (make_request(prompts[3], 200), "max_seq_len"),
        (make_request([engine.vocab_size + 5], 4), "token ids"),
        # a word longer than any sequence never matches: refused, not compared at every step (review 12)
        (make_request(prompts[0], 3, stop_words=[[5] * 400]), "stop_words_list holds a word of 400 tokens"),
        (make_request(prompts[0], 3, sampling=SamplingParams(bad_words=((5,) * 400,))), "could never match"),
    ]
    for request, message in cases:
        with pytest.raises(RequestError, match=message):
            engine.submit([request], ListSink(), arrival_ns=0)
    [sink] = run(engine, make_request(prompts[0], 3))  # still serving
    assert len(sink.tokens()) == 3


def test_perf_metrics_follow_the_request(engine, prompts):
    sent = time.perf_counter_ns()
    [sink] = run(engine, make_request(prompts[3], 6, streaming=True, return_perf_metrics=True,
                                      return_num_input_tokens=True, return_num_output_tokens=True), arrival_ns=sent)
    first, last = sink.responses[0], sink.responses[-1]
    t = {k: int(last[k].reshape(-1)[0]) for k in
         ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")}
    assert sent == t["arrival_time_ns"] <= t["first_scheduled_time_ns"] <= t["first_token_time_ns"]
    assert t["first_token_time_ns"] <= t["last_token_time_ns"] <= time.perf_counter_ns()
    assert int(first["last_token_time_ns"].reshape(-1)[0]) == 0  # set only when the request finishes
    assert int(first["first_token_time_ns"].reshape(-1)[0]) == t["first_token_time_ns"]
    blocks = math.ceil(len(prompts[3]) / TPB)
    assert int(last["kv_cache_alloc_total_blocks"].reshape(-1)[0]) == blocks
    assert int(last["kv_cache_alloc_new_blocks"].reshape(-1)[0]) == blocks
    assert int(last["kv_cache_reused_blocks"].reshape(-1)[0]) == 0
    assert [int(r["num_output_tokens"].reshape(-1)[0]) for r in sink.responses] == [1] * 6
    assert int(last["num_input_tokens"].reshape(-1)[0]) == len(prompts[3])


def test_log_probs_match_the_model(engine, prompts):
    import torch

    [sink] = run(engine, make_request(prompts[1], 3, return_log_probs=True))
    tokens = sink.tokens()
    log_probs = sink.responses[0]["output_log_probs"].reshape(-1).tolist()
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompts[1] + tokens])).logits[0].float()
    expected = [float(torch.log_softmax(logits[len(prompts[1]) - 1 + i], -1)[t]) for i, t in enumerate(tokens)]
    assert np.allclose(log_probs, expected, atol=1e-4)
    assert abs(float(sink.responses[0]["cum_log_probs"].reshape(-1)[0]) - sum(expected)) < 1e-3


def test_seeded_sampling_is_repeatable_whatever_the_batch(engine, prompts):
    sampling = SamplingParams(top_k=50, temperature=1.5, seed=1234)
    [alone] = run(engine, make_request(prompts[2], 10, sampling=sampling))
    crowd = run(engine, make_request(prompts[2], 10, sampling=sampling), *[make_request(p, 10) for p in prompts])
    assert alone.tokens() == crowd[0].tokens()
    [other] = run(engine, make_request(prompts[2], 10, sampling=SamplingParams(top_k=50, temperature=1.5, seed=99)))
    assert other.tokens() != alone.tokens()


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_cancelled_requests_free_their_kv_blocks(engine, prompts):
    sink = ListSink()
    engine.submit([make_request(prompts[3], 180, streaming=True)], sink, arrival_ns=0)
    assert _wait_for(lambda: len(sink.responses) >= 2)
    assert engine.kv_blocks_in_use() >= math.ceil(len(prompts[3]) / TPB)
    sink.cancelled = True  # what response_sender.is_cancelled() reports after a client disconnects
    assert _wait_for(lambda: engine.kv_blocks_in_use() == 0)
    assert sink.finals == 1 and len(sink.responses) < 180
    # the `stop` input: the request ends early with a final response and its blocks are freed; a stop
    # with the same id but another prompt (another client guessing the id, issue 23) changes nothing
    sink = ListSink()
    engine.submit([make_request(prompts[3], 180, streaming=True)], sink, arrival_ns=0, triton_id="abc")
    assert _wait_for(lambda: len(sink.responses) >= 2)
    engine.stop_request("abc", list(prompts[2]))
    seen = len(sink.responses)
    assert _wait_for(lambda: len(sink.responses) >= seen + 3) and sink.finals == 0
    engine.stop_request("abc", list(prompts[3]))
    sink.wait()
    assert len(sink.tokens()) < 180 and _wait_for(lambda: engine.kv_blocks_in_use() == 0)


def test_batched_triton_request_gets_one_final_flag(engine, prompts):
    rows = trtllm_io.parse_request(
        _tensors(prompts[1], 4, rows=3, streaming=[True, True, True]), default_exclude_input=True, decoupled=True)
    sink = ListSink()
    engine.submit(rows, sink, arrival_ns=0)
    sink.wait()
    time.sleep(0.2)
    assert sink.finals == 1
    by_row = {}
    for r in sink.responses:
        by_row.setdefault(int(r["batch_index"].reshape(-1)[0]), []).extend(r["output_ids"].reshape(-1).tolist())
    expected = greedy_reference(engine.model, prompts[1], 4)
    assert by_row == {0: expected, 1: expected, 2: expected}


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
def test_a_small_kv_cache_queues_requests_instead_of_failing(engine_factory, engine, prompts, policy):
    # room for 96 tokens: one 40-token prompt + 20 outputs needs 4 blocks of 16; six of them need 24
    small = engine_factory(max_tokens_in_paged_kv_cache=96, batch_scheduler_policy=policy,
                           enable_kv_cache_reuse="false")
    requests = [make_request(prompts[3][:30 + i], 20) for i in range(6)]
    sinks = [ListSink() for _ in requests]
    for request, sink in zip(requests, sinks):
        small.submit([request], sink, arrival_ns=0)
    admitted = small.stats().active_requests
    # guaranteed_no_evict reserves prompt + output blocks: one request (4 of 6 blocks) at a time;
    # max_utilization admits them all and lets the scheduler pause and resume under KV pressure
    assert admitted == (1 if policy == "guaranteed_no_evict" else 6)
    for i, sink in enumerate(sinks):
        sink.wait()
        assert not sink.errors
        assert sink.tokens() == greedy_reference(engine.model, prompts[3][:30 + i], 20)
    with pytest.raises(RequestError, match="KV blocks"):
        small.submit([make_request(prompts[3], 100)], ListSink(), arrival_ns=0)  # larger than the whole cache


def test_engine_survives_a_failing_step(engine_factory, prompts):
    fragile = engine_factory()
    original = fragile.model.forward
    calls = {"n": 0}

    def forward_failing_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    fragile.model.forward = forward_failing_once
    [failed] = run(fragile, make_request(prompts[0], 4))
    assert failed.errors and "injected failure" in failed.errors[0] and not failed.responses
    [ok] = run(fragile, make_request(prompts[0], 4))  # the generation loop was restarted
    assert not ok.errors and len(ok.tokens()) == 4
    assert fragile.kv_blocks_in_use() == 0


def test_a_request_whose_sampling_fails_fails_alone(engine, prompts):
    """Finding 1: one row that cannot be sampled used to stop the batch-wide step and fail every request in it."""
    innocent = [make_request(p, 24) for p in prompts] + [make_request(prompts[0], 24, streaming=True)]
    banned = make_request(prompts[1], 4, sampling=SamplingParams(top_k=5, bad_words=tuple(
        (t,) for t in range(engine.vocab_size))))
    sinks = []
    for request in innocent[:3] + [banned] + innocent[3:]:
        sinks.append(ListSink())
        engine.submit([request], sinks[-1], arrival_ns=time.perf_counter_ns())
    for sink in sinks:
        sink.wait()
    failed = sinks.pop(3)
    assert failed.kinds == ["ServerFault"] and "no token is left" in failed.errors[0] and not failed.responses
    for request, sink in zip(innocent, sinks):
        assert not sink.errors
        assert sink.tokens() == greedy_reference(engine.model, request.input_ids, 24)
    assert engine.kv_blocks_in_use() == 0


def test_queue_is_bounded_and_refusal_says_busy(engine_factory, prompts):
    from model_common import ServerBusy

    small = engine_factory(max_batch_size=1, max_queue_size=2)
    sinks = [ListSink() for _ in range(3)]
    refused = 0
    for sink in sinks + [ListSink()]:
        try:
            small.submit([make_request(prompts[0], 90)], sink, arrival_ns=0)
        except ServerBusy as exc:
            refused += 1
            assert "max_queue_size 2" in str(exc)
    assert refused == 1  # one running and two waiting fit; the fourth is refused at once
    for sink in sinks:
        assert not sink.wait().errors


def test_prefix_reuse_counts_reused_blocks(engine_factory, engine, prompts):
    reuse = engine_factory(enable_kv_cache_reuse="true")
    prompt = prompts[3]  # 40 tokens: two full blocks can be shared
    run(reuse, make_request(prompt, 2))
    [sink] = run(reuse, make_request(prompt, 4, return_perf_metrics=True))
    out = sink.responses[-1]
    reused = int(out["kv_cache_reused_blocks"].reshape(-1)[0])
    assert reused == 2
    assert int(out["kv_cache_alloc_new_blocks"].reshape(-1)[0]) == math.ceil(len(prompt) / TPB) - reused
    assert sink.tokens() == greedy_reference(engine.model, prompt, 4)
    stats = reuse.stats()  # the backend's reused / alloc_total / alloc_new gauges: 2 of the 2 x 3 context blocks
    assert (stats.reused_blocks, stats.alloc_total_blocks, stats.alloc_new_blocks) == (2, 6, 4)


# ---------------------------------------------------------------- inside a real tritonserver


def _rendered_parameters(repo_dir) -> dict[str, str]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((repo_dir / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


class _Stream:
    """One gRPC bidirectional stream to the tensorrt_llm model, responses gathered per request id."""

    _TYPES = {np.int32: "INT32", np.bool_: "BOOL", np.float32: "FP32", np.uint64: "UINT64"}

    def __init__(self, url):
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.queues: dict[str, queue.Queue] = {}
        self.client.start_stream(callback=self._callback)

    def _callback(self, result, error):
        if error is not None:
            self.queues[self._pending_error_id].put(("error", str(error), time.perf_counter_ns()))
            return
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        self.queues[response.id].put((result, final, time.perf_counter_ns()))

    def send(self, request_id, prompt, n, **extra):
        arrays = {"input_ids": np.array([prompt], np.int32), "input_lengths": np.array([[len(prompt)]], np.int32),
                  "request_output_len": np.array([[n]], np.int32)}
        arrays.update({k: np.asarray(v) for k, v in extra.items()})
        inputs = []
        for name, value in arrays.items():
            tensor = self.grpc.InferInput(name, value.shape, self._TYPES[value.dtype.type])
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        self.queues.setdefault(request_id, queue.Queue())
        self._pending_error_id = request_id
        self.client.async_stream_infer("tensorrt_llm", inputs, request_id=request_id,
                                       enable_empty_final_response=True)

    def collect(self, request_id, timeout=60):
        """(tokens, results, receive times) of one request, up to its final response."""
        tokens, results, times = [], [], []
        while True:
            result, final, received = self.queues[request_id].get(timeout=timeout)
            if result == "error":
                raise RuntimeError(final)
            ids = result.as_numpy("output_ids")
            if ids is not None:
                tokens += ids.reshape(-1).tolist()
                results.append(result)
                times.append(received)
            if final:
                return tokens, results, times

    def close(self, cancel=False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def _gauges(metrics_url) -> dict[tuple[str, str], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("nv_trt_llm_"):
            for sample in family.samples:
                category = next(v for k, v in sample.labels.items() if k not in ("model", "version"))
                values[(family.name, category)] = sample.value
    return values


@pytest.fixture(scope="module")
def served_model(cpu_repo_dir):
    """The weights the server serves, loaded the way the engine loads them, for reference answers."""
    from cpu_engine import load_model

    params = _rendered_parameters(cpu_repo_dir)
    return load_model(params["gpt_model_path"], params["dtype"])


@pytest.mark.server
def test_server_streams_generate_equal_answers_to_concurrent_clients(cpu_server, served_model):
    stream = _Stream(cpu_server.grpc_url)
    rng = random.Random(1)
    vocab = served_model.config.get_text_config().vocab_size
    prompts = [[rng.randrange(3, vocab) for _ in range(n)] for n in (3, 9, 20, 33, 12, 7)]
    try:
        for i, prompt in enumerate(prompts):
            stream.send(f"c{i}", prompt, 16, streaming=[[i % 2 == 0]])
        for i, prompt in enumerate(prompts):
            tokens, results, _ = stream.collect(f"c{i}")
            assert tokens == greedy_reference(served_model, prompt, 16)
            assert len(results) == (16 if i % 2 == 0 else 1)
    finally:
        stream.close()


@pytest.mark.server
def test_server_perf_metrics_share_the_clients_monotonic_clock(cpu_server):
    stream = _Stream(cpu_server.grpc_url)
    try:
        sent = time.perf_counter_ns()
        stream.send("p1", [5, 6, 7, 8], 5, streaming=[[True]], return_perf_metrics=[[True]],
                    return_num_output_tokens=[[True]])
        _, results, received = stream.collect("p1")
    finally:
        stream.close()
    last = {k: int(results[-1].as_numpy(k).reshape(-1)[0]) for k in
            ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")}
    # CLOCK_MONOTONIC on both sides: the server's stamps fall between the client's send and receive
    assert sent <= last["arrival_time_ns"] <= last["first_scheduled_time_ns"] <= last["first_token_time_ns"]
    assert last["first_token_time_ns"] <= received[0]
    assert last["first_token_time_ns"] <= last["last_token_time_ns"] <= received[-1]
    assert sum(int(r.as_numpy("num_output_tokens").reshape(-1)[0]) for r in results) == 5


@pytest.mark.server
def test_server_stop_input_and_disconnects_free_kv_blocks(cpu_server, cpu_repo_dir):
    params = _rendered_parameters(cpu_repo_dir)
    longest = int(params["max_seq_len"]) - 1
    stream = _Stream(cpu_server.grpc_url)
    try:
        stream.send("long", [5], longest, streaming=[[True]])
        first = stream.queues["long"].get(timeout=60)
        assert not first[1]
        stream.send("long", [5], 1, stop=[[True]])  # TensorRT-LLM's stop input, same request id
        tokens, _, _ = stream.collect("long")
        assert len(tokens) + 1 < longest  # ended early, with a final response
        # a bad request gets a clear error and the model keeps serving
        stream.send("bad", [5] * (int(params["max_input_len"]) + 1), 4)
        with pytest.raises(RuntimeError, match="max_input_len"):
            stream.collect("bad")
        stream.send("after", [5, 6], 3)
        assert len(stream.collect("after")[0]) == 3
        stream.send("gone", [5], longest, streaming=[[True]])
        stream.queues["gone"].get(timeout=60)
        steps_before = _gauges(cpu_server.metrics_url)[("nv_trt_llm_general_metrics", "iteration_counter")]
    finally:
        stream.close(cancel=True)  # the client disconnects mid-stream

    def settled():
        gauges = _gauges(cpu_server.metrics_url)
        return gauges[("nv_trt_llm_request_metrics", "active")] == 0 and gauges[
            ("nv_trt_llm_kv_cache_block_metrics", "used")] == 0

    assert _wait_for(settled, timeout=30)
    gauges = _gauges(cpu_server.metrics_url)
    # the engine stopped generating for the gone client long before its request_output_len
    assert gauges[("nv_trt_llm_general_metrics", "iteration_counter")] - steps_before < longest // 2
    assert gauges[("nv_trt_llm_kv_cache_block_metrics", "max")] > 0
    # the backend's per-block accounting (reuse is off here: every context block is new)
    assert gauges[("nv_trt_llm_kv_cache_block_metrics", "alloc_total")] == gauges[
        ("nv_trt_llm_kv_cache_block_metrics", "alloc_new")] > 0
