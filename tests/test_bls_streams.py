"""How the LLM-API stand-in (a BLS caller) and the CPU engine end their streams in Triton 2.51.

Triton 2.51 delivers an error response of a decoupled BLS stream under a stale stream id (python_backend
r24.10 ``InferResponse::SaveToSharedMemory``), which corrupted the caller's shared-memory pool in the
10-minute soaks of issue 22; so the engine gives its BLS callers errors as its ``error_message`` output.
And a BLS stream its caller leaves early stays in the caller's stub, with its shared memory, until the
model unloads; so the callers read every stream to its final response (model_common ``bls_stream``).
"""

from __future__ import annotations

import queue
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from generator.repo.render import ENGINE_ERROR_OUTPUT
from generator.serve.client import grpc_stream, llmapi_inputs

ENGINE = "tensorrt_llm_cpu"


def _engine_stream(server, inputs: dict, *, parameters=None, outputs=()) -> list:
    """Every (response, error) of one gRPC stream to the engine, up to its final response or error."""
    import tritonclient.grpc as grpcclient

    got: "queue.Queue" = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensors = []
    for name, value in inputs.items():
        tensor = grpcclient.InferInput(name, list(value.shape), "INT32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    seen = []
    try:
        client.start_stream(callback=lambda result, error: got.put((result, error)))
        client.async_stream_infer(ENGINE, tensors, request_id=uuid.uuid4().hex, parameters=parameters,
                                  outputs=[grpcclient.InferRequestedOutput(o) for o in outputs] or None,
                                  enable_empty_final_response=True)
        while True:
            result, error = got.get(timeout=60)
            seen.append((result, error))
            if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
                return seen
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


OUT_OF_VOCABULARY = {"input_ids": np.array([[10**6]], np.int32), "input_lengths": np.array([[1]], np.int32),
                     "request_output_len": np.array([[4]], np.int32)}


@pytest.mark.server
def test_the_engine_gives_a_bls_caller_its_error_as_an_output_and_a_client_an_error(llmapi_server):
    asked = _engine_stream(llmapi_server, OUT_OF_VOCABULARY, parameters={ENGINE_ERROR_OUTPUT: True},
                           outputs=("output_ids", ENGINE_ERROR_OUTPUT))
    assert [error for _, error in asked] == [None]  # one response, final, and not an error response
    message = asked[0][0].as_numpy(ENGINE_ERROR_OUTPUT).reshape(-1)[0].decode()
    assert message.startswith("input_ids must be token ids")

    plain = _engine_stream(llmapi_server, OUT_OF_VOCABULARY)  # a client naming no outputs gets them all
    assert plain[-1][1] is not None and "input_ids must be token ids" in plain[-1][1].message()


def _pool_bytes(server, model: str) -> int:
    """Size of the shared-memory pool of ``model``'s stub (the stub's second argument names it)."""
    import psutil

    for pid, name in server.stubs().items():
        if name == model:
            return (Path("/dev/shm") / psutil.Process(pid).cmdline()[2]).stat().st_size
    raise AssertionError(f"no stub for {model}")


@pytest.mark.server
def test_streams_left_at_a_stop_string_do_not_stay_in_the_stand_ins_shared_memory(llmapi_server):
    """Each stream the stand-in left at a stop string used to stay in its stub with its responses: its pool
    grew by 1 MiB every ~100 of them. Read to their ends, 240 of them leave the pool as it was."""
    def one(_):
        inputs = llmapi_inputs("Once upon a time", {"streaming": True, "sampling_param_max_tokens": 24,
                                                    "sampling_param_stop": ["e", " "]})
        return grpc_stream(llmapi_server.grpc_url, "tensorrt_llm", inputs, timeout=120)

    grpc_stream(llmapi_server.grpc_url, "tensorrt_llm", llmapi_inputs("warm up", {"streaming": True}), timeout=120)
    before = _pool_bytes(llmapi_server, "tensorrt_llm")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(240)))
    assert [r.error for r in results if r.error] == []
    assert all(r.text and " " not in r.text and "e" not in r.text for r in results)  # each was cut at a stop string
    assert _pool_bytes(llmapi_server, "tensorrt_llm") == before
