"""tensorrt_llm_bls against the real CPU engine (batches, non-streaming on a decoupled model, errors,
cancellation), and its handling of an engine that fails in the middle of a stream.

The mid-stream failure needs an engine that fails on demand, which the real one never does; that
one test runs the real BLS, preprocessing and postprocessing with a fault-injecting stand-in for
tensorrt_llm (same config, so the same tensors).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from generator.serve.client import generate, grpc_stream, text_inputs
from generator.serve.server import TritonServer
from generator.serve.smoke import same_text

BLS = "tensorrt_llm_bls"
PROMPT = "The repair café meets in the church hall"


def _answer(server, prompt: str, max_tokens: int, model: str = "ensemble") -> str:
    return generate(server.http_url, model, {"text_input": prompt, "max_tokens": max_tokens})["text_output"]


@pytest.mark.server
def test_non_streaming_request_on_the_decoupled_bls_is_one_response(cpu_server):
    expected = _answer(cpu_server, PROMPT, 10)
    result = grpc_stream(cpu_server.grpc_url, BLS, text_inputs(PROMPT, 10, stream=False))
    assert result.error is None
    assert result.pieces == [expected]


@pytest.mark.server
def test_a_batch_of_two_prompts_keeps_each_text_apart(cpu_server):
    prompts = [PROMPT, "東京 and 京都 are"]
    expected = [_answer(cpu_server, p, 10) for p in prompts]
    batch = {
        "text_input": np.array([[p.encode()] for p in prompts], dtype=np.object_),
        "max_tokens": np.array([[10], [10]], dtype=np.int32),
    }
    whole = grpc_stream(cpu_server.grpc_url, BLS, {**batch, "stream": np.array([[False], [False]])})
    assert whole.error is None
    assert [t.decode() for t in whole.outputs[0]["text_output"].reshape(-1)] == expected
    streamed = grpc_stream(cpu_server.grpc_url, BLS, {**batch, "stream": np.array([[True], [True]])})
    assert streamed.error is None
    texts = ["", ""]
    for out in streamed.outputs:  # responses of both prompts interleave, tagged with batch_index
        texts[int(out["batch_index"].reshape(-1)[0])] += out["text_output"].reshape(-1)[0].decode()
    for got, want in zip(texts, expected):
        assert same_text(got, want)[0], (got, want)


@pytest.mark.server
def test_error_before_the_first_token_reaches_the_client(cpu_server):
    result = grpc_stream(cpu_server.grpc_url, BLS, text_inputs("hello " * 300, 4, stream=True), timeout=60)
    assert result.error is not None and "no final response" not in result.error
    # 300 words pass the cheap character bound (PromptLimit) and exceed the 256 tokens after tokenizing.
    assert "exceeds" in result.error and "256" in result.error  # the limit of the test spec
    assert _answer(cpu_server, PROMPT, 4, BLS) == _answer(cpu_server, PROMPT, 4)


@pytest.mark.server
def test_cancelled_bls_stream_stops_the_engine_request(cpu_server, trtllm_gauge, engine_settled):
    """The client goes away after two tokens of a 64-token answer (the server's max_output_len): the BLS
    stops the engine request, so the engine runs fewer than 64 steps for it and frees its KV blocks."""
    steps_before = trtllm_gauge(cpu_server, "nv_trt_llm_general_metrics", "iteration_counter")
    inputs = text_inputs(PROMPT, 64, stream=True, extra={"min_tokens": np.array([[64]], np.int32)})
    with engine_settled(cpu_server):
        result = grpc_stream(cpu_server.grpc_url, BLS, inputs, on_response=lambda n: n < 2)
        assert result.error is None and len(result.pieces) == 2
    assert trtllm_gauge(cpu_server, "nv_trt_llm_kv_cache_block_metrics", "used") == 0
    assert trtllm_gauge(cpu_server, "nv_trt_llm_general_metrics", "iteration_counter") - steps_before < 64
    assert _answer(cpu_server, PROMPT, 4, BLS) == _answer(cpu_server, PROMPT, 4)


# A tensorrt_llm that streams three tokens and then fails: the error goes in a response of its own
# and the final flag in a second send (one send with both hangs the BLS caller in Triton 2.51, and
# a separate error response is dropped on its way to the BLS: only the bare final flag arrives).
_FAILING_ENGINE = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._run, args=(request,)).start()
        return None

    def _run(self, request):
        sender = request.get_response_sender()
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()[0]
        for token in ids[:3]:
            sender.send(pb_utils.InferenceResponse([
                pb_utils.Tensor("output_ids", np.array([[[token]]], np.int32)),
                pb_utils.Tensor("sequence_length", np.array([[1]], np.int32))]))
        sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("injected engine failure after 3 tokens")))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''


@pytest.mark.server
def test_engine_failure_mid_stream_reaches_the_client_after_its_tokens(cpu_repo_dir, tmp_path):
    repo = tmp_path / "repo"
    for model in ("preprocessing", "postprocessing", BLS):
        shutil.copytree(cpu_repo_dir / model, repo / model)
    (repo / "tensorrt_llm" / "1").mkdir(parents=True)
    shutil.copy(cpu_repo_dir / "tensorrt_llm" / "config.pbtxt", repo / "tensorrt_llm" / "config.pbtxt")
    (repo / "tensorrt_llm" / "1" / "model.py").write_text(_FAILING_ENGINE)
    with TritonServer(repo) as server:
        # The stand-in echoes the first three prompt tokens, so the text before the error is known.
        prompt = "Tea travelled a long way before it reached the café"
        result = grpc_stream(server.grpc_url, BLS, text_inputs(prompt, 8, stream=True), timeout=60)
        assert result.error is not None and "tensorrt_llm failed during generation" in result.error
        assert len(result.pieces) == 3 and prompt.startswith(result.text)
        again = grpc_stream(server.grpc_url, BLS, text_inputs(prompt, 8, stream=True), timeout=60)
        assert again.error is not None and again.pieces == result.pieces  # still serving, same behaviour
