"""The LLM-API target: TensorRT-LLM's PyTorch backend behind Triton, configured by ``model.yaml``.

TensorRT-LLM 1.2's ``triton_backend/all_models/llmapi/tensorrt_llm`` is one Python-backend model that
takes text and returns text; its ``model.yaml`` holds ``triton_config`` plus keyword arguments of
``LLM(...)``. No engine is built: ``LLM`` loads the ModelOpt checkpoint and reads its quantization from
``hf_quant_config.json``. This module maps the spec onto those keys (pure) and renders the two files;
``validate_llmapi.py`` checks a rendered repository against the argument names recorded from NVIDIA's
source in ``generator/data/llmapi_1.2.json`` (never guessed).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import yaml

from generator.errors import PlanRefused
from generator.resources import data_json
from generator.spec import KVCacheFormat, QuantFormat, Spec
from generator.templating import environment

MODEL_NAME = "tensorrt_llm"
"""The only model of an LLM-API repository; clients call /v2/models/tensorrt_llm/generate."""

CPU_ENGINE_MODEL = "tensorrt_llm_cpu"
"""CPU stand-in only: the CPU reference engine (tensorrt_llm's token interface) under its own name."""

DATA_FILE = "llmapi_1.2.json"

def llmapi_data() -> dict[str, Any]:
    """The recorded facts about the targeted TensorRT-LLM version (argument names, tensors, sources)."""
    return data_json(DATA_FILE)


def accepted_llm_args() -> set[str]:
    """Top-level ``model.yaml`` keys that ``LLM()`` (TorchLlmArgs, extra='forbid') accepts."""
    args = llmapi_data()["llm_args"]
    return set(args["BaseLlmArgs"]) | set(args["TorchLlmArgs"])


class MappingRow(NamedTuple):
    """One spec field and where it lands: a model.yaml key (LLM-API path) or a tensorrt_llm parameter (engine path)."""

    spec_field: str
    key: str
    value: Any
    note: str


# ---------------------------------------------------------------- spec → model.yaml


def llmapi_refusals(spec: Spec) -> list[str]:
    """Spec settings this backend does not have, each with the reason (empty when all fit)."""
    reasons = []
    q = spec.quantization
    if q.format is QuantFormat.int8_sq:
        reasons.append(
            "quantization.format=int8_sq: the PyTorch backend has no INT8 SmoothQuant kernels "
            "(its recipes are NVFP4, FP8, W4A16/W4A8 AWQ and GPTQ); use nvfp4, fp8 or int4_awq, or serving.engine=tensorrtllm"
        )
    if q.kv_cache is KVCacheFormat.int8:
        reasons.append(
            "quantization.kv_cache=int8: kv_cache_config.dtype only knows 'auto' and 'fp8' in the PyTorch backend; "
            "use fp8 or none, or serving.engine=tensorrtllm"
        )
    forced = [name for name, value in spec.build.plugins.model_dump().items() if value is not None]
    if forced:
        reasons.append(
            f"build.plugins ({', '.join(forced)}): trtllm-build plugin flags; the PyTorch backend builds no engine "
            "and has no such switches. Remove them or use serving.engine=tensorrtllm"
        )
    if spec.build.kv_cache_type != "paged":
        reasons.append(
            "build.kv_cache_type=continuous: the PyTorch backend's KV cache is always paged (KvCacheConfig has no layout switch)"
        )
    if spec.serving.batching_strategy != "inflight_fused_batching":
        reasons.append(
            f"serving.batching_strategy={spec.serving.batching_strategy}: LLM() always batches in flight "
            "and has no gpt_model_type; remove the setting"
        )
    if spec.serving.apply_chat_template:
        reasons.append(
            "serving.apply_chat_template=true: the LLM-API model passes text_input to LLM.generate_async unchanged "
            "(there is no preprocessing model); apply the chat template in the client"
        )
    b = spec.build
    if b.max_num_tokens < b.max_input_len and not spec.serving.enable_chunked_context:
        reasons.append(
            f"build.max_num_tokens ({b.max_num_tokens}) < build.max_input_len ({b.max_input_len}) without "
            "serving.enable_chunked_context: LLM() would reject long prompts; raise max_num_tokens or enable chunked context"
        )
    return reasons


def check_llmapi_spec(spec: Spec) -> None:
    """Raise one PlanRefused listing every setting the LLM-API backend cannot honour."""
    reasons = llmapi_refusals(spec)
    if reasons:
        raise PlanRefused(
            "the llmapi engine target cannot honour these settings:\n  " + "\n  ".join(reasons),
            where="serving.engine=llmapi",
            fix="change the settings named above, or pick serving.engine=tensorrtllm (engine build)",
        )


def llmapi_mapping(spec: Spec) -> list[MappingRow]:
    """How each spec field lands in ``model.yaml`` (or why it does not), for the plan to print."""
    b, s = spec.build, spec.serving
    kv_dtype = "fp8" if spec.quantization.kv_cache is KVCacheFormat.fp8 else "auto"
    rows = [
        MappingRow("spec.serving_weights_dir", "model", str(spec.serving_weights_dir),
                   "LLM() loads the ModelOpt checkpoint directly; quantization comes from its hf_quant_config.json"),
        MappingRow("serving.engine", "backend", "pytorch", "TensorRT-LLM's default backend since 1.0; no engine build"),
        MappingRow("build.tp_size", "tensor_parallel_size", b.tp_size, ""),
        MappingRow("build.pp_size", "pipeline_parallel_size", b.pp_size, ""),
        MappingRow("build.dtype", "dtype", b.dtype, "activations and unquantized weights"),
        MappingRow("model.trust_remote_code", "trust_remote_code", spec.model.trust_remote_code, ""),
        MappingRow("spec.triton_max_batch_size", "max_batch_size", spec.triton_max_batch_size,
                   "sequences batched in flight by LLM(); Triton itself sees one prompt per request"),
        MappingRow("build.max_num_tokens", "max_num_tokens", b.max_num_tokens, ""),
        MappingRow("build.max_input_len", "max_input_len", b.max_input_len, "LLM() defaults to 1024 when unset"),
        MappingRow("build.max_seq_len", "max_seq_len", b.resolved_max_seq_len, "prompt + output"),
        MappingRow("build.max_beam_width", "max_beam_width", b.max_beam_width, ""),
        MappingRow("serving.enable_chunked_context", "enable_chunked_prefill", s.enable_chunked_context, ""),
        MappingRow("serving.batch_scheduler_policy", "scheduler_config.capacity_scheduler_policy",
                   s.batch_scheduler_policy.upper(), ""),
        MappingRow("serving.kv_cache_free_gpu_mem_fraction", "kv_cache_config.free_gpu_memory_fraction",
                   s.kv_cache_free_gpu_mem_fraction, ""),
        MappingRow("serving.enable_kv_cache_reuse", "kv_cache_config.enable_block_reuse", s.enable_kv_cache_reuse,
                   "written always: LLM()'s default is true, the spec's is false"),
        MappingRow("build.tokens_per_block", "kv_cache_config.tokens_per_block", b.tokens_per_block,
                   "written always: LLM()'s default is 32"),
        MappingRow("quantization.kv_cache", "kv_cache_config.dtype", kv_dtype,
                   "fp8 also sets quant_config.kv_cache_quant_algo=FP8 inside LLM()"),
    ]
    if s.max_tokens_in_paged_kv_cache is not None:
        rows.append(MappingRow("serving.max_tokens_in_paged_kv_cache", "kv_cache_config.max_tokens",
                               s.max_tokens_in_paged_kv_cache, "the smaller of this and the memory fraction wins"))
    rows += [
        MappingRow("serving.max_batch_size", "triton_config.max_batch_size", 0,
                   "0 as in NVIDIA's model.yaml: text_input is one prompt, batching happens inside LLM()"),
        MappingRow("serving.decoupled", "triton_config.decoupled", s.decoupled,
                   "also written into config.pbtxt (launch_triton_server.py disables auto-complete)"),
        MappingRow("serving.exclude_input_in_output", "(per request) sampling_param_exclude_input_from_output",
                   s.exclude_input_in_output, "no server-side setting in the LLM-API model"),
    ]
    unused = ("build.gpu (plan only), build.multiple_profiles, build.workers (trtllm-build only), "
              "serving.bls*, serving.preprocessing_instances, serving.postprocessing_instances, "
              "serving.max_queue_delay_microseconds, serving.accumulate_tokens (no pre/post/BLS models; "
              "streamed text_output is the whole text so far, as CompletionOutput.text)")
    rows.append(MappingRow("(not used)", "-", None, unused))
    return rows


def llmapi_model_yaml(spec: Spec) -> dict[str, Any]:
    """The ``model.yaml`` content as data (nested dicts), built from :func:`llmapi_mapping`."""
    doc: dict[str, Any] = {}
    for row in llmapi_mapping(spec):
        if row.key.startswith(("(", "-")):
            continue
        node = doc
        *parents, leaf = row.key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = row.value
    return doc


def _config_values(spec: Spec, *, cpu: bool, instances: int = 1, gpu_device_ids: str | None = None) -> dict[str, Any]:
    data = llmapi_data()
    params = {"engine_model": CPU_ENGINE_MODEL} if cpu else {}
    if gpu_device_ids:
        params["gpu_device_ids"] = gpu_device_ids  # one GPU set per instance (multi-instance model.py)
    return {
        "name": MODEL_NAME,
        "max_batch_size": 0,
        "decoupled": "true" if spec.serving.decoupled else "false",
        "inputs": [_tensor_view(t) for t in data["triton_inputs"]],
        "outputs": [_tensor_view(t) for t in data["triton_outputs"]],
        "parameters": params,
        "instances": instances,
        "trtllm_version": data["tensorrt_llm_version"],
        "cpu": cpu,
    }


def _tensor_view(t: dict[str, Any]) -> dict[str, Any]:
    return {"name": t["name"], "data_type": t["data_type"], "dims": ", ".join(str(d) for d in t["dims"]),
            "optional": bool(t.get("optional"))}


def render_llmapi_files(spec: Spec, *, cpu: bool = False, instances: int = 1,
                        gpu_device_ids: str | None = None) -> dict[str, str]:
    """``{relative path: text}`` of the LLM-API model: ``tensorrt_llm/config.pbtxt`` and ``tensorrt_llm/1/model.yaml``.

    ``cpu`` renders the CPU stand-in's config (same tensors, plus the parameters that name the
    CPU engine model it calls). Refuses settings the backend does not have.
    """
    check_llmapi_spec(spec)
    env = environment("llmapi")
    llm_args = llmapi_model_yaml(spec)
    triton_yaml = yaml.safe_dump({"triton_config": llm_args.pop("triton_config")}, sort_keys=False)
    model_yaml = yaml.safe_dump(llm_args, sort_keys=False)
    values = _config_values(spec, cpu=cpu, instances=instances, gpu_device_ids=gpu_device_ids)
    return {
        f"{MODEL_NAME}/config.pbtxt": env.get_template("tensorrt_llm/config.pbtxt.j2").render(**values),
        f"{MODEL_NAME}/1/model.yaml": env.get_template("tensorrt_llm/model.yaml.j2").render(
            llm_args_yaml=model_yaml, triton_config_yaml=triton_yaml, trtllm_version=values["trtllm_version"], cpu=cpu),
    }
