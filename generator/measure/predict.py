"""Predicted concurrency at which a setting's KV cache is full, to print next to the knee ``tune`` measures.

Requests that fit = KV-cache tokens / tokens one request holds (prompt + answer, rounded up to whole
blocks), and never more than the batch slots (the Triton max_batch_size). The KV-cache tokens come from
the planner's memory plan on a GPU target, and on the CPU reference engine from the engine's own sizing
code (model_repo/tensorrt_llm_cpu/1/engine_settings.py, loaded from its file as quality.py loads the
checkpoint loader), so the prediction cannot drift from what the engine allocates. Pure: reads config.json.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from types import SimpleNamespace
from typing import Optional

from pydantic import BaseModel

from generator.engine.shape import model_shape
from generator.errors import TritongenError
from generator.resources import model_repo_dir
from generator.spec import EngineTarget, Spec


class Prediction(BaseModel):
    """What the plan says about a setting's capacity, with where each figure comes from."""

    batch_slots: int
    """Requests the engine batches at once (Triton max_batch_size)."""
    kv_requests: Optional[int]
    """Requests whose prompt and answer fit in the KV cache at once (None: could not be predicted)."""
    concurrency: Optional[int]
    """The smaller of the two: above it requests wait for a slot or for KV blocks."""
    source: str


def _load(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def _engine_settings():
    """The engine's sizing module; its ``import model_common`` (the shared module render copies beside each
    model) is served from model_repo/_shared/ for the duration of the load only."""
    saved = sys.modules.get("model_common")
    sys.modules["model_common"] = _load(model_repo_dir() / "_shared" / "model_common.py", "model_common")
    try:
        return _load(model_repo_dir() / "tensorrt_llm_cpu" / "1" / "engine_settings.py", "tritongen_engine_settings")
    finally:
        if saved is None:
            del sys.modules["model_common"]
        else:
            sys.modules["model_common"] = saved


def _cpu_kv_tokens(spec: Spec, target: EngineTarget, config: dict) -> tuple[int, str]:
    from generator.repo.render import tensorrt_llm_parameters

    es = _engine_settings()
    settings = es.EngineSettings.from_parameters(dict(tensorrt_llm_parameters(spec, target)), spec.triton_max_batch_size)
    per_block = es.kv_bytes_per_block(SimpleNamespace(**config), settings.dtype, settings.tokens_per_block)
    blocks, why = es.resolve_num_blocks(settings, per_block)
    return blocks * settings.tokens_per_block, f"CPU engine: {blocks} KV blocks ({why})"


def _gpu_kv_tokens(spec: Spec, shape) -> tuple[int, str]:
    from generator.engine.gpus import lookup_gpu
    from generator.engine.memory import memory_plan

    plan = memory_plan(spec, shape, lookup_gpu(spec.build.gpu))
    return plan.kv_tokens, f"memory plan on {spec.build.gpu}: {plan.kv_tokens} KV tokens per GPU"


def predict(spec: Spec, gpu_visible: bool, config: dict, input_tokens: int, output_tokens: int) -> Prediction:
    """The KV-full concurrency of ``spec`` as served here, for requests of this shape."""
    target = spec.serving.resolved_engine(gpu_visible)
    slots = spec.triton_max_batch_size
    tpb = spec.build.tokens_per_block
    per_request = math.ceil((input_tokens + output_tokens) / tpb) * tpb
    try:
        # The sizes checked first, for the CPU engine too (it reads the same keys): review30, a checkpoint's
        # num_attention_heads 0 ended tune in a ZeroDivisionError, a head_dim "x" repeated a string gigabytes long.
        shape = model_shape(config)
        if target is EngineTarget.cpu_reference:
            tokens, source = _cpu_kv_tokens(spec, target, config)
        elif gpu_visible:
            tokens, source = _gpu_kv_tokens(spec, shape)
        else:
            raise ValueError(f"{target.value} is served by a stand-in here")
    except (TritongenError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return Prediction(batch_slots=slots, kv_requests=None, concurrency=slots,
                          source=f"KV capacity not predicted ({exc}); batch slots only")
    kv_requests = tokens // per_request
    return Prediction(batch_slots=slots, kv_requests=kv_requests, concurrency=min(slots, kv_requests),
                      source=f"{source}; {per_request} tokens per request ({input_tokens} in + {output_tokens} out, "
                             f"whole {tpb}-token blocks); {slots} batch slots")
