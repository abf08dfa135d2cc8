"""The LLM-API dialect on the client side, without a server: cumulative text into pieces, request fields,
per-request figures from cumulative records, and which model a smoke test or load test picks."""

from __future__ import annotations


import numpy as np
import pytest

from generator.errors import TritongenError
from generator.measure.records import request_inputs
from generator.measure.request_figures import answer_text, request_metrics, stream_failures
from generator.serve.client import (
    ENSEMBLE, LLMAPI, REPLACEMENT, dialect_for_inputs, joined_text, llmapi_inputs, output_scalar, text_delta,
)
from generator.serve.smoke_run import entry_model
from generator.serve.smoke_llmapi import extends
from generator.spec import load_spec
from helpers import MS, request_record

LLMAPI_INPUTS = {"text_input", "streaming", "sampling_param_max_tokens", "sampling_param_exclude_input_from_output",
                 "sampling_param_return_perf_metrics", "sampling_param_top_k", "stop"}


def test_cumulative_text_becomes_the_new_part():
    assert text_delta("", "The") == "The"
    assert text_delta("The", "The cat") == " cat"
    assert text_delta("The cat", "The cat") == ""
    # a held-back incomplete character is rewritten once its last byte arrives
    assert text_delta("caf" + REPLACEMENT, "café au") == "é au"


def test_whole_answer_of_a_stream():
    assert joined_text(["The", "The cat", "The cat sat", ""], cumulative=True) == "The cat sat"
    assert joined_text(["The", " cat", " sat", ""], cumulative=False) == "The cat sat"


def test_cumulative_texts_extend_each_other():
    assert extends("The cat", "The cat sat")
    assert extends("caf" + REPLACEMENT, "café")
    assert not extends("The cat", " sat")


def test_dialect_comes_from_the_served_inputs():
    assert dialect_for_inputs(LLMAPI_INPUTS) is LLMAPI
    assert dialect_for_inputs({"text_input", "max_tokens", "stream"}) is ENSEMBLE


def test_llmapi_tensors_are_one_dimensional_with_upstream_dtypes():
    t = llmapi_inputs("hi", {"sampling_param_max_tokens": 4, "streaming": True, "sampling_param_temperature": 0.5,
                             "sampling_param_seed": 7, "sampling_param_stop": ["."]})
    assert t["text_input"].shape == (1,) and t["text_input"][0] == b"hi"
    assert t["sampling_param_max_tokens"].dtype == np.int32 and t["streaming"].dtype == np.bool_
    assert t["sampling_param_temperature"].dtype == np.float32 and t["sampling_param_seed"].dtype == np.uint64
    assert list(t["sampling_param_stop"]) == [b"."]


def test_numbers_sent_as_strings_are_read_as_numbers():
    assert output_scalar(np.array([b"1234"], dtype=np.object_)) == 1234
    assert output_scalar([5]) == 5 and output_scalar("None") == "None" and output_scalar(np.int64(3)) == 3


def test_load_requests_use_the_llmapi_names():
    fields = request_inputs(LLMAPI_INPUTS, "hello", 24, True)
    assert fields == {"text_input": "hello", "sampling_param_max_tokens": 24, "streaming": True,
                      "sampling_param_exclude_input_from_output": True, "sampling_param_return_perf_metrics": True}
    assert request_inputs(LLMAPI_INPUTS, "hello", 24, False)["streaming"] is False


def _cumulative_record(texts, server=None):
    return request_record(texts, first=10, gap=5, server=server, cumulative=True, max_tokens=8, exact_length=False,
                          output_tokens=4, input_tokens=3)


def test_cumulative_records_time_each_new_token():
    rec = _cumulative_record(["The", "The cat", "The cat sat", "The cat sat down"])
    m = request_metrics(rec, reference="The cat sat down")
    assert answer_text(rec) == "The cat sat down"
    assert m.ttft_ns == 10 * MS and m.gaps_ns == [5 * MS] * 3 and m.itl_ns == 5 * MS
    assert m.reference == "equal" and m.failures == []


def test_a_cumulative_response_that_adds_nothing_is_no_token():
    rec = _cumulative_record(["The", "The", "The cat"])
    m = request_metrics(rec)
    assert m.gaps_ns == [10 * MS]
    # a repeated cumulative text loses nothing (the next response carries it all): no streaming damage
    assert stream_failures(rec) == []


def test_perf_metric_split_from_the_llmapi_time_outputs():
    server = {"arrival_time_ns": 1_000 * MS, "first_scheduled_time_ns": 1_002 * MS, "first_token_time_ns": 1_008 * MS,
              "last_token_time_ns": 1_020 * MS}
    m = request_metrics(_cumulative_record(["a", "a b"], server))
    assert m.split["queue"] == 2 * MS and m.split["prefill"] == 6 * MS and m.split["decode"] == 12 * MS


def test_smoke_picks_the_model_the_manifest_names(tokenizer_weights_dir, tmp_path):
    from generator.repo.render import render_repository
    from helpers import small_spec

    for engine, model in (("llmapi", "tensorrt_llm"), ("cpu-reference", "ensemble")):
        spec = small_spec(tokenizer_weights_dir, tmp_path / "art", f"serving.engine={engine}")
        repo = render_repository(spec, tmp_path / engine)
        assert entry_model("127.0.0.1:9", repo) == model


def test_load_tests_follow_the_engine_unless_told(tmp_path):
    spec = load_spec(None, ["serving.engine=llmapi", f"artifacts.dir={tmp_path}"])
    assert spec.loadtest_model == "tensorrt_llm" and spec.loadtest_tokenizer == spec.serving_weights_dir
    assert load_spec(None, []).loadtest_model == "ensemble" and load_spec(None, []).loadtest_tokenizer is None
    assert load_spec(None, ["loadtest.model=tensorrt_llm_bls"]).loadtest_model == "tensorrt_llm_bls"


def test_an_ensemble_model_with_the_llmapi_engine_is_refused():
    with pytest.raises(TritongenError) as err:
        load_spec(None, ["serving.engine=llmapi", "loadtest.model=ensemble"])
    assert "loadtest.model" in str(err.value) and "tensorrt_llm" in str(err.value)
