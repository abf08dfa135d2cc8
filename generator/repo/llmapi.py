"""The LLM-API target: TensorRT-LLM's PyTorch backend behind Triton, configured by ``model.yaml``.

TensorRT-LLM 1.2's ``triton_backend/all_models/llmapi/tensorrt_llm`` is one Python-backend model that
takes text and returns text; its ``model.yaml`` holds ``triton_config`` plus keyword arguments of
``LLM(...)``. No engine is built: ``LLM`` loads the ModelOpt checkpoint and reads its quantization from
``hf_quant_config.json``. This module maps the spec onto those keys (pure), renders the two files, and
validates a rendered repository against the argument names recorded from NVIDIA's source in
``generator/data/llmapi_1.2.json`` (never guessed).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from generator.errors import PlanRefused, TritongenError
from generator.fsutil import read_json_object
from generator.repo.problems import (
    Problem, Severity, checkpoint_quant_problems, not_built, parse_config, type_name, weights_command,
)
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
    spec_field: str
    llmapi_key: str
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
        if row.llmapi_key.startswith(("(", "-")):
            continue
        node = doc
        *parents, leaf = row.llmapi_key.split(".")
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


def llmapi_smoke_request(prompt: str, max_tokens: int, *, streaming: bool) -> dict[str, Any]:
    """The JSON body of ``POST /v2/models/tensorrt_llm/generate[_stream]`` (answer in ``text_output``)."""
    return {"text_input": prompt, "sampling_param_max_tokens": max_tokens, "streaming": streaming}


# ---------------------------------------------------------------- validation


def _yaml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key in a YAML document, keyed by its path."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                sub = path + (str(key.value),)
                lines[sub] = key.start_mark.line + 1
                walk(value, sub)

    walk(yaml.compose(text), ())
    return lines


def _unknown_key(file: str, line: int | None, key: str, known: set[str], owner: str) -> Problem:
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see generator/data/" + DATA_FILE
    return Problem(file, line, f"unknown key {key!r}: not an argument of {owner} in TensorRT-LLM "
                   f"{llmapi_data()['tensorrt_llm_version']} (LLM() forbids extra keys and would fail at load); {hint}",
                   f"rename or remove {key!r}" + (f" (e.g. {close[0]})" if close else ""))


def _check_model_yaml(path: Path, doc: dict[str, Any], lines: dict[tuple[str, ...], int]) -> list[Problem]:
    data = llmapi_data()
    f = str(path)
    problems = []
    tc_key = data["model_yaml"]["triton_config_key"]
    tc = doc.get(tc_key)
    if not isinstance(tc, dict):
        problems.append(Problem(f, None, f"no {tc_key!r} mapping (NVIDIA's model.py reads max_batch_size and decoupled from it)",
                                "re-render with `tritongen render`"))
    else:
        for k in data["model_yaml"]["triton_config_required"]:
            if k not in tc:
                problems.append(Problem(f, lines.get((tc_key,)), f"{tc_key}.{k} is missing", f"add {tc_key}.{k}"))
    known = accepted_llm_args()
    for key, value in doc.items():
        if key == tc_key:
            continue
        if key not in known:
            problems.append(_unknown_key(f, lines.get((key,)), key, known, "LLM()/TorchLlmArgs"))
            continue
        nested = data["nested"].get(key)
        if nested is not None and isinstance(value, dict):
            for sub in value:
                if sub not in nested:
                    problems.append(_unknown_key(f, lines.get((key, sub)), sub, set(nested), key))
    for dotted, allowed in data["enums"].items():
        node: Any = doc
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and str(node) not in allowed:
            problems.append(Problem(f, lines.get(tuple(dotted.split("."))),
                                    f"{dotted}={node!r} is not one of {allowed}", f"set {dotted} to one of {allowed}"))
    if "model" not in doc:
        problems.append(Problem(f, None, "no 'model' key: LLM() needs the checkpoint folder", "re-render with `tritongen render`"))
    return problems


def _check_config(path: Path, tc: dict[str, Any] | None) -> list[Problem]:
    parsed, problems = parse_config(path)
    if parsed is None:
        return problems
    text, cfg = parsed
    f = str(path)
    if cfg.name != MODEL_NAME:
        problems.append(Problem(f, text.field("name"), f"name is {cfg.name!r}, expected {MODEL_NAME!r} (the folder "
                                "name clients call)", f'set name: "{MODEL_NAME}"'))
    if cfg.backend != "python":
        problems.append(Problem(f, text.field("backend") or text.field("platform"), f"backend is {cfg.backend!r}; the "
                                "LLM-API model is a Python-backend model", 'set backend: "python"'))
    if tc is not None:
        if "max_batch_size" in tc and str(cfg.max_batch_size) != str(tc["max_batch_size"]):
            problems.append(Problem(f, text.field("max_batch_size"), f"max_batch_size {cfg.max_batch_size} disagrees "
                                    f"with model.yaml triton_config.max_batch_size {tc['max_batch_size']}",
                                    "make them equal (re-render writes both from the spec)"))
        if "decoupled" in tc and cfg.model_transaction_policy.decoupled != bool(tc["decoupled"]):
            problems.append(Problem(f, text.field("decoupled") or text.field("name"),
                                    f"model_transaction_policy.decoupled {cfg.model_transaction_policy.decoupled} "
                                    f"disagrees with model.yaml triton_config.decoupled {tc['decoupled']} "
                                    "(launch_triton_server.py disables auto-complete, so config.pbtxt wins)",
                                    "make them equal (re-render writes both from serving.decoupled)"))
    return problems + _check_tensors(f, text, cfg)


def _check_tensors(f: str, text: Any, cfg: Any) -> list[Problem]:
    data = llmapi_data()
    problems = []
    for kind, recorded, actual in (("input", data["triton_inputs"], cfg.input), ("output", data["triton_outputs"], cfg.output)):
        by_name = {t.name: t for t in actual}
        for want in recorded:
            got = by_name.pop(want["name"], None)
            if got is None:
                if not want.get("optional"):
                    problems.append(Problem(f, text.field(kind), f"required {kind} {want['name']!r} is missing", "re-render"))
                continue
            line = text.tensor(kind, got.name)
            dtype = type_name(got.data_type)
            if dtype != want["data_type"] or list(got.dims) != want["dims"]:
                problems.append(Problem(f, line, f"{kind} {want['name']!r} is {dtype} {list(got.dims)}, NVIDIA's is "
                                        f"{want['data_type']} {want['dims']}", "re-render"))
            if kind == "input" and bool(got.optional) != bool(want.get("optional")):
                problems.append(Problem(f, line, f"input {want['name']!r} optional={got.optional}, NVIDIA's is "
                                        f"{bool(want.get('optional'))}", "re-render"))
        for extra in by_name:
            problems.append(Problem(f, text.tensor(kind, extra), f"{kind} {extra!r} is not one of the LLM-API model's "
                                    "tensors", f"remove {extra!r}"))
    return problems


def _check_checkpoint(ckpt: Path, spec: Spec, yaml_file: str, model_line: int | None) -> list[Problem]:
    """The folder LLM() loads: not there yet is a warning; there, its quantization must be the spec's."""
    if not ckpt.exists():
        return [not_built(yaml_file, model_line, f"model folder {str(ckpt)!r} (the checkpoint LLM() loads) does not exist",
                          weights_command(spec))]
    return [p._replace(message=p.message + "; LLM() serves what the checkpoint says")
            for p in checkpoint_quant_problems(ckpt, spec, required=True)]


def _check_parallel_vs_checkpoint(ckpt: Path, doc: dict[str, Any], yaml_file: str,
                                  lines: dict[tuple[str, ...], int]) -> list[Problem]:
    """tensor_parallel_size must split the checkpoint's attention and KV heads evenly (as the plan refuses for
    engines); LLM() fails at load otherwise. Not compared while the checkpoint is not there."""
    tp = doc.get("tensor_parallel_size", 1)
    if not (ckpt / "config.json").is_file():
        return []
    try:
        config = read_json_object(ckpt / "config.json", fix=weights_command(None))
    except TritongenError:
        return []  # reported by the checkpoint checks
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads") or config.get("num_attention_heads")
    if not isinstance(tp, int) or not isinstance(heads, int) or not isinstance(kv, int) or tp < 1:
        return []
    if heads % tp == 0 and (kv % tp == 0 or tp % kv == 0):
        return []
    fits = max(n for n in range(1, min(tp, heads) + 1) if heads % n == 0 and (kv % n == 0 or n % kv == 0))
    return [Problem(yaml_file, lines.get(("tensor_parallel_size",)), f"tensor_parallel_size {tp} does not split the "
                    f"checkpoint's {heads} attention heads and {kv} KV heads ({ckpt / 'config.json'}) evenly; LLM() "
                    f"fails at load", f"re-render from the spec (`tritongen render SPEC -o DIR --force`), with a "
                    f"build.tp_size that splits both (e.g. {fits})")]


def _check_model_code(model_dir: Path) -> list[Problem]:
    """NVIDIA's model.py is not shipped with tritongen (GPU variant): until it is copied in, warn."""
    code = model_dir / "1" / "model.py"
    if code.is_file():
        return []
    v = llmapi_data()["tensorrt_llm_version"]
    return [Problem(str(code), None, "not there yet: NVIDIA's LLM-API model.py and helpers.py (tritongen does not "
                    "ship them)", f"copy triton_backend/all_models/llmapi/tensorrt_llm/1/{{model,helpers}}.py of "
                    f"TensorRT-LLM v{v} into {code.parent}", Severity.warning)]


def validate_llmapi(repo_dir: Path, spec: Spec | None = None) -> list[Problem]:
    """Every problem of the LLM-API model in ``repo_dir`` at once (reads files only).

    Without ``spec`` the spec-dependent checks (quantization vs checkpoint, model.yaml vs spec) are
    skipped; ``generator.repo.validate.validate_repository`` passes the one recorded in ``tritongen.json``
    and adds the CPU stand-in's engine model.
    """
    repo = Path(repo_dir)
    model_dir = repo / MODEL_NAME
    yaml_path = model_dir / "1" / "model.yaml"
    cfg_path = model_dir / "config.pbtxt"
    problems: list[Problem] = []
    doc: dict[str, Any] = {}
    lines: dict[tuple[str, ...], int] = {}
    if not yaml_path.is_file():
        problems.append(Problem(str(yaml_path), None, "model.yaml is missing", "re-render with `tritongen render`"))
    else:
        text = yaml_path.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(text)
            lines = _yaml_key_lines(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problems.append(Problem(str(yaml_path), mark.line + 1 if mark else None, f"not valid YAML: {exc}", "fix the syntax"))
            loaded = None
        if loaded is not None and not isinstance(loaded, dict):
            problems.append(Problem(str(yaml_path), 1, "model.yaml must be a mapping of LLM() arguments", "re-render"))
        elif isinstance(loaded, dict):
            doc = loaded
            problems += _check_model_yaml(yaml_path, doc, lines)
    tc = doc.get("triton_config") if isinstance(doc.get("triton_config"), dict) else None
    if not cfg_path.is_file():
        problems.append(Problem(str(cfg_path), None, "config.pbtxt is missing", "re-render with `tritongen render`"))
    else:
        problems += _check_config(cfg_path, tc)
    problems += _check_model_code(model_dir)
    if spec is not None and doc:
        expected = llmapi_model_yaml(spec)
        for key, value in _flatten(expected).items():
            got = _flatten(doc).get(key)
            if key != ("model",) and got != value:
                dotted = ".".join(key)
                problems.append(Problem(str(yaml_path), lines.get(key), f"{dotted}={got!r} but the spec gives {value!r}",
                                        "re-render from the spec, or change the spec"))
        if "model" in doc:
            problems += _check_checkpoint(Path(str(doc["model"])), spec, str(yaml_path), lines.get(("model",)))
    if "model" in doc:
        problems += _check_parallel_vs_checkpoint(Path(str(doc["model"])), doc, str(yaml_path), lines)
    return problems


def _flatten(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out
