"""Render: the Triton model repository for a spec.

The pure part (``plan_repository``) turns a ``Spec`` into a ``RepoPlan`` (file texts, files to copy,
empty folders); ``render_repository`` writes that plan in one move. Every value in a config is decided
here; the Jinja2 templates in ``templates/<layout>/`` only lay them out.

Tensor names, types, dims and parameter keys follow NVIDIA's ``inflight_batcher_llm`` repository of
TensorRT-LLM 1.2.1 (``triton_backend/all_models/inflight_batcher_llm`` in NVIDIA/TensorRT-LLM); the
facts and the commits they were read from are in ``generator/data/inflight_batcher_llm_1.2.1.json``.
The ``llmapi`` target renders NVIDIA's LLM-API model instead (its files come from generator.repo.llmapi).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from generator.deploy.render import deploy_files, deploy_topology, engine_parameters
from generator.deploy.topology import Topology
from generator.engine.compare import engine_mismatches, mismatch_error
from generator.engine.facts import TRTLLM_VERSION, EngineFacts, read_engine_if_built
from generator.engine.rules import batch_fits_engine
from generator.errors import PlanRefused, SpecError, ToolMissing, TritongenError
from generator.fsutil import atomic_dir
from generator.repo.llmapi import CPU_ENGINE_MODEL, MappingRow, llmapi_data, render_llmapi_files
from generator.repo.llmapi import MODEL_NAME as LLMAPI_MODEL
from generator.repo.manifest import MANIFEST, RepoManifest
from generator.resources import data_json, model_repo_dir
from generator.spec import EngineTarget, Spec
from generator.templating import environment, pbtxt_bool

REFERENCE_FILE = "inflight_batcher_llm_1.2.1.json"
IFB_LAYOUT = "inflight_batcher_llm"
LLMAPI_LAYOUT = "llmapi"

# Model names of the layout; the ensemble and BLS call the others by these names.
PREPROCESSING, TENSORRT_LLM, POSTPROCESSING, ENSEMBLE, BLS = (
    "preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls",
)

# Parameters tritongen adds to upstream's keys, per model (validate accepts these and upstream's).
# tensorrt_llm's extras are the CPU reference engine's limits; it has no engine file to read them from.
EXTRA_PARAMETERS: dict[str, tuple[str, ...]] = {
    "tensorrt_llm": ("tokens_per_block", "max_num_tokens", "max_input_len", "max_seq_len", "cpu_kv_cache_mib",
                     "cpu_threads", "dtype", "cpu_max_batch_tokens", "max_queue_size"),
    "preprocessing": ("apply_chat_template", "max_output_len", "max_input_len"),
    "postprocessing": ("max_beam_width", "max_seq_len"),
    "tensorrt_llm_bls": ("engine_error_output",),
    "ensemble": (),
}

# Tensors tritongen adds to upstream's, per model and section: how postprocessing tells streams apart
# by an identity the server made (see model_repo/postprocessing/1/model.py).
EXTRA_TENSORS: dict[str, dict[str, tuple[str, ...]]] = {
    "preprocessing": {"input": ("RETURN_PERF_METRICS",), "output": ("OUT_RETURN_PERF_METRICS",)},
    "postprocessing": {"input": ("STREAM_ID", "ARRIVAL_TIME_NS"), "output": ()},
}

ENGINE_ERROR_OUTPUT = "error_message"
"""The CPU reference engine's own output (its config declares it; tensorrt_llm_bls asks for it through its
``engine_error_output`` parameter, the LLM-API stand-in always): a caller that asks for it gets an error as this
output of a normal response, because Triton 2.51 files an error response of a BLS stream under a stale stream id
(model_repo/_shared/model_common.py ``ENGINE_ERROR_OUTPUT``, which must name the same output)."""

# Only used when the executor runs in orchestrator mode; upstream ships this fixed path.
_EXECUTOR_WORKER_PATH = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"


def reference_facts() -> dict[str, Any]:
    """The recorded upstream tensors and parameter keys per model (used by render, validate and tests)."""
    return data_json(REFERENCE_FILE)


@dataclass(frozen=True)
class RepoPlan:
    """Everything a rendered repository contains, decided before anything is written."""

    target: EngineTarget
    layout: str
    max_batch_size: int
    max_batch_size_source: str
    files: dict[str, str] = field(default_factory=dict)
    """Relative path → text."""
    copies: dict[str, Path] = field(default_factory=dict)
    """Relative path → source file (Python model code from model_repo/)."""
    dirs: tuple[str, ...] = ()
    """Empty folders that must exist (tensorrt_llm/1 of the C++ backend)."""


# ---------------------------------------------------------------- engine and batch size


def engine_for(spec: Spec) -> Optional[EngineFacts]:
    """The built engine the repository will serve, or None before it is built.

    An engine that the spec does not describe is refused with the same comparison ``tritongen build`` and
    ``tritongen validate`` run (generator.engine.compare), so the three can never disagree about it.
    """
    facts = read_engine_if_built(spec.engine_dir)
    if facts is None:
        return None
    _check_serving_batch(spec, facts)
    problems = engine_mismatches(spec, facts)
    if problems:
        raise mismatch_error(f"the engine in {spec.engine_dir}", problems, facts.config_path)
    return facts


def _check_serving_batch(spec: Spec, facts: EngineFacts) -> None:
    """A serving batch size set above the engine's is named as such before the wider engine comparison."""
    if spec.serving.max_batch_size is not None:
        for f in batch_fits_engine(spec.serving.max_batch_size, facts.max_batch_size, facts.config_path):
            raise SpecError(f.message, where=f.field, fix=f.fix)


def resolve_max_batch_size(spec: Spec, engine: Optional[EngineFacts]) -> tuple[int, str]:
    """Triton's max_batch_size for every model, from one place: the spec's ``triton_max_batch_size``, which
    :func:`engine_for` has checked against the engine when there is one."""
    origin = "serving.max_batch_size" if spec.serving.max_batch_size else "build.max_batch_size"
    if engine is None:
        return spec.triton_max_batch_size, f"spec {origin}"
    return spec.triton_max_batch_size, f"spec {origin}; engine {engine.config_path} allows {engine.max_batch_size}"


# ---------------------------------------------------------------- values per model


def _text(value: Any) -> str:
    return pbtxt_bool(value) if isinstance(value, bool) else str(value)


def _params(pairs: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Parameter (key, value) pairs as text; a None value means "not set" and is left out."""
    return [(key, _text(value)) for key, value in pairs if value is not None]


def engine_mapping(spec: Spec, target: EngineTarget, topo: Optional[Topology] = None) -> list[MappingRow]:
    """How each spec field lands in the ``tensorrt_llm`` model's parameters, as the LLM-API path's
    :func:`generator.repo.llmapi.llmapi_mapping` does for ``model.yaml``; a None value is left unset.

    ``topo`` defaults to the spec's topology (without one that fits, the topology's own parameters are left
    out: validate reports the refusal).
    """
    if topo is None:
        try:
            topo = deploy_topology(spec, target, gpu_visible=True)
        except TritongenError:
            topo = None
    s, b = spec.serving, spec.build
    gpu = target is EngineTarget.tensorrtllm
    rows = [
        MappingRow("build.max_beam_width", "max_beam_width", b.max_beam_width, ""),
        MappingRow("-", "FORCE_CPU_ONLY_INPUT_TENSORS", "no", "NVIDIA's fill for in-flight batching"),
        MappingRow("serving.batching_strategy", "gpt_model_type", s.batching_strategy, ""),
        MappingRow("artifacts.engine_dir" if gpu else "spec.serving_weights_dir", "gpt_model_path",
                   spec.engine_dir if gpu else spec.serving_weights_dir,
                   "the engine folder" if gpu else "the CPU reference engine loads the weights"),
        MappingRow("serving.batch_scheduler_policy", "batch_scheduler_policy", s.batch_scheduler_policy, ""),
        MappingRow("serving.kv_cache_free_gpu_mem_fraction", "kv_cache_free_gpu_mem_fraction",
                   s.kv_cache_free_gpu_mem_fraction, ""),
        MappingRow("serving.exclude_input_in_output", "exclude_input_in_output", s.exclude_input_in_output, ""),
        MappingRow("serving.enable_kv_cache_reuse", "enable_kv_cache_reuse", s.enable_kv_cache_reuse, ""),
        MappingRow("serving.enable_chunked_context", "enable_chunked_context", s.enable_chunked_context, ""),
        MappingRow("-", "executor_worker_path", _EXECUTOR_WORKER_PATH if gpu else None, "the container's worker"),
        MappingRow("spec.serving_weights_dir", "tokenizer_dir", spec.serving_weights_dir, ""),
    ]
    topology = engine_parameters(topo, spec) if topo is not None else \
        [("max_tokens_in_paged_kv_cache", s.max_tokens_in_paged_kv_cache)]
    rows += [MappingRow("topology" if key != "max_tokens_in_paged_kv_cache" else "serving.max_tokens_in_paged_kv_cache",
                        key, value, "") for key, value in topology]
    if not gpu:  # the CPU reference engine has no engine file to read its limits from: they travel as parameters
        rows += [MappingRow(f"build.{key}", key, getattr(b, key), "") for key in
                 ("tokens_per_block", "max_num_tokens", "max_input_len")]
        rows.append(MappingRow("build.max_seq_len", "max_seq_len", b.resolved_max_seq_len, "prompt + output"))
        rows += [MappingRow(f"serving.{field_}", key, getattr(s, field_), "CPU reference engine only") for field_, key in
                 (("cpu_kv_cache_mib", "cpu_kv_cache_mib"), ("cpu_threads", "cpu_threads"), ("cpu_dtype", "dtype"),
                  ("cpu_max_batch_tokens", "cpu_max_batch_tokens"), ("max_queue_size", "max_queue_size"))]
    return rows


def tensorrt_llm_parameters(spec: Spec, target: EngineTarget, topo: Optional[Topology] = None) -> list[tuple[str, str]]:
    """The engine model's parameters as (key, text), from :func:`engine_mapping`."""
    return _params([(r.key, r.value) for r in engine_mapping(spec, target, topo)])


MID_STREAM_QUEUE_SIZE = 0
"""Postprocessing's queue is unbounded (0): the ensemble calls it once per tensorrt_llm response, while
tensorrt_llm is still streaming, and Triton 2.51 never finishes an ensemble request whose step is refused
at enqueue ("Exceeds maximum queue size") while another step is in flight: the client gets no final
response and the server counts the request in flight until its exit timeout (core r24.10
ensemble_scheduler.cc ScheduleSteps/PrepareSteps; fixed upstream in core PR #466, after 2.51). The
requests that reach postprocessing are bounded by the engine's batch and queue, where refusals end a
request cleanly."""


def _ifb_models(spec: Spec, target: EngineTarget, max_batch_size: int, topo: Topology) -> dict[str, dict[str, Any]]:
    """Template values of the five inflight_batcher_llm models."""
    s = spec.serving
    facts = reference_facts()
    shared = {
        "max_batch_size": max_batch_size,
        "max_queue_delay_microseconds": s.max_queue_delay_microseconds,
        "max_queue_size": s.max_queue_size,
        "decoupled": s.decoupled,
        **facts["placeholder_types"],
    }
    cpu_error_output = None if target is EngineTarget.tensorrtllm else ENGINE_ERROR_OUTPUT
    models = {
        ENSEMBLE: {"platform": "ensemble", "preprocessing_model": PREPROCESSING,
                   "tensorrt_llm_model": TENSORRT_LLM, "postprocessing_model": POSTPROCESSING},
        PREPROCESSING: {"backend": "python", "instance_count": s.preprocessing_instances, "parameters": _params([
            ("tokenizer_dir", spec.serving_weights_dir),
            ("apply_chat_template", s.apply_chat_template),
            ("max_output_len", spec.build.max_output_len),
            ("max_input_len", spec.build.max_input_len),
        ])},
        TENSORRT_LLM: {"backend": "tensorrtllm" if target is EngineTarget.tensorrtllm else "python",
                       "instance_count": topo.instance_count, "parameters": tensorrt_llm_parameters(spec, target, topo),
                       "error_output": cpu_error_output},
        POSTPROCESSING: {"backend": "python", "instance_count": s.postprocessing_instances, "parameters": _params([
            ("tokenizer_dir", spec.serving_weights_dir),
            ("skip_special_tokens", s.skip_special_tokens),
            ("max_beam_width", spec.build.max_beam_width),
            ("max_seq_len", spec.build.resolved_max_seq_len),
        ])},
    }
    if s.bls:
        models[BLS] = {"backend": "python", "instance_count": spec.bls_instance_count, "parameters": _params([
            ("accumulate_tokens", s.accumulate_tokens),
            ("tensorrt_llm_model_name", TENSORRT_LLM),
            ("engine_error_output", cpu_error_output),
        ])}
    for name, values in models.items():
        values.update(shared, name=name, platform=values.get("platform"),
                      reference=f"NVIDIA TensorRT-LLM {TRTLLM_VERSION} {facts['models'][name]['source']['path']}")
    models[POSTPROCESSING]["max_queue_size"] = MID_STREAM_QUEUE_SIZE
    return models


SHARED_CODE = "_shared"
"""model_repo/_shared/: modules every Python model imports (model_common.py), copied next to each model.py."""


def _code_files(src: Path) -> dict[str, Path]:
    return {f.relative_to(src).as_posix(): f for f in sorted(src.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")}


def _model_code(model: str, src_name: str) -> dict[str, Path]:
    """``{model}/1/<file>`` → source: model_repo/<src_name>/1/ plus the shared modules, so each model
    folder of a rendered repository stands alone."""
    src = model_repo_dir() / src_name / "1"
    shared = model_repo_dir() / SHARED_CODE
    for needed in (src / "model.py", shared / "model_common.py"):
        if not needed.is_file():
            raise ToolMissing(
                f"Python model code for {model} is missing ({needed})",
                where=str(needed.parent),
                fix="reinstall tritongen; model_repo/ must ship with it",
            )
    files = {**_code_files(shared), **_code_files(src)}
    return {f"{model}/1/{rel}": path for rel, path in files.items()}


def _ifb_code(target: EngineTarget, models: list[str]) -> tuple[dict[str, Path], tuple[str, ...]]:
    """Python model code copied from model_repo/, and the empty version folder of the C++ backend."""
    sources = {name: name for name in models if name != ENSEMBLE}
    dirs: list[str] = [f"{ENSEMBLE}/1"]  # Triton wants a version folder even for an ensemble
    if target is EngineTarget.tensorrtllm:
        del sources[TENSORRT_LLM]
        dirs.append(f"{TENSORRT_LLM}/1")
    else:
        sources[TENSORRT_LLM] = "tensorrt_llm_cpu"
    copies: dict[str, Path] = {}
    for model, src_name in sources.items():
        copies.update(_model_code(model, src_name))
    return copies, tuple(dirs)


# ---------------------------------------------------------------- templates and plan


def render_template(layout: str, name: str, **values: Any) -> str:
    return environment(layout).get_template(name).render(**values)


def manifest(spec: Spec, plan_target: EngineTarget, layout: str, max_batch_size: int, source: str,
             models: list[str], reference: str, topo: Topology, cpu_stand_in: Optional[bool] = None) -> RepoManifest:
    """tritongen.json: how the repository was made, so validate and people can check it later."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tritongen_version = version("tritongen")
    except PackageNotFoundError:
        tritongen_version = "unknown"
    return RepoManifest(
        tritongen_version=tritongen_version, layout=layout, target=plan_target, tensorrt_llm_version=TRTLLM_VERSION,
        reference=reference, models=models, max_batch_size=max_batch_size, max_batch_size_source=source,
        max_input_len=spec.build.max_input_len, max_seq_len=spec.build.resolved_max_seq_len,
        weights_dir=str(spec.serving_weights_dir),
        engine_dir=str(spec.engine_dir) if plan_target is EngineTarget.tensorrtllm else None,
        cpu_stand_in=cpu_stand_in, topology=topo.model_dump(mode="json"),
        spec=spec.to_yaml_dict(), spec_base_dir=str(spec.base_dir),
    )


def _plan_ifb(spec: Spec, target: EngineTarget, gpu_visible: bool, topo: Topology) -> RepoPlan:
    engine = engine_for(spec) if target is EngineTarget.tensorrtllm else None
    bs, source = resolve_max_batch_size(spec, engine)
    models = _ifb_models(spec, target, bs, topo)
    files = {
        f"{name}/config.pbtxt": render_template(IFB_LAYOUT, f"{name}/config.pbtxt.j2", m=values)
        for name, values in models.items()
    }
    copies, dirs = _ifb_code(target, list(models))
    facts = reference_facts()
    info = manifest(spec, target, IFB_LAYOUT, bs, source, list(models), f"{facts['repository']}/{facts['path_prefix']}",
                    topo)
    files[MANIFEST] = info.to_json()
    files["README.md"] = render_template(IFB_LAYOUT, "README.md.j2", info=info)
    return RepoPlan(target=target, layout=IFB_LAYOUT, max_batch_size=bs, max_batch_size_source=source,
                    files=files, copies=copies, dirs=dirs)


def _plan_llmapi(spec: Spec, target: EngineTarget, gpu_visible: bool, topo: Topology) -> RepoPlan:
    """NVIDIA's LLM-API model; without a GPU, tritongen's stand-in and the CPU reference engine it calls.

    On a GPU host, 1/model.py and helpers.py are NVIDIA's and are not shipped (the config says where
    to copy them from). The CPU stand-in calls the CPU reference engine, which keeps the C++
    tensorrt_llm model's interface, so its config is the cpu-reference one under another name.
    """
    cpu = not gpu_visible
    bs, source = resolve_max_batch_size(spec, None)
    files = render_llmapi_files(spec, cpu=cpu, instances=1 if cpu else topo.instance_count,
                                gpu_device_ids=topo.gpu_device_ids)
    copies: dict[str, Path] = {}
    models = [LLMAPI_MODEL]
    if cpu:
        engine = {**_ifb_models(spec, EngineTarget.cpu_reference, bs, topo)[TENSORRT_LLM], "name": CPU_ENGINE_MODEL}
        files[f"{CPU_ENGINE_MODEL}/config.pbtxt"] = render_template(IFB_LAYOUT, "tensorrt_llm/config.pbtxt.j2", m=engine)
        copies.update(_model_code(LLMAPI_MODEL, "llmapi_cpu"))
        copies.update(_model_code(CPU_ENGINE_MODEL, "tensorrt_llm_cpu"))
        models.append(CPU_ENGINE_MODEL)
    info = manifest(spec, target, LLMAPI_LAYOUT, bs, f"{source}, as LLM() max_batch_size (Triton's is 0)", models,
                    llmapi_data()["sources"]["triton_model"]["path"], topo, cpu_stand_in=cpu)
    files[MANIFEST] = info.to_json()
    return RepoPlan(target=target, layout=LLMAPI_LAYOUT, max_batch_size=bs, max_batch_size_source=source,
                    files=files, copies=copies)


# A target is a layout planner.
_PLANNERS: dict[EngineTarget, Callable[[Spec, EngineTarget, bool, Topology], RepoPlan]] = {
    EngineTarget.tensorrtllm: _plan_ifb,
    EngineTarget.cpu_reference: _plan_ifb,
    EngineTarget.llmapi: _plan_llmapi,
}


def plan_repository(spec: Spec, *, gpu_visible: bool = False) -> RepoPlan:
    """Decide every file of the repository (reads templates, model code and an engine config.json; writes nothing)."""
    target = spec.serving.resolved_engine(gpu_visible)
    planner = _PLANNERS.get(target)
    if planner is None:
        allowed = ", ".join(t.value for t in _PLANNERS)
        raise PlanRefused(
            f"render does not support engine target {target.value!r} yet",
            where="serving.engine",
            fix=f"use one of: {allowed}",
        )
    topo = deploy_topology(spec, target, gpu_visible)
    plan = planner(spec, target, gpu_visible, topo)
    plan.files.update(deploy_files(spec, topo, TRTLLM_VERSION))
    return plan


def write_plan(plan: RepoPlan, root: Path) -> None:
    for rel in plan.dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for rel, text in plan.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if text.startswith("#!"):
            path.chmod(0o755)  # the launch script and kubessh run as programs
    for rel, src in plan.copies.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, path)


def render_repository(spec: Spec, out_dir: Path, *, force: bool = False, gpu_visible: bool = False) -> Path:
    """Write the repository for ``spec`` to ``out_dir`` whole or not at all; returns the folder."""
    plan = plan_repository(spec, gpu_visible=gpu_visible)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=force, command_hint=f"tritongen render -o {out_dir}", protected=spec.named_paths()) as tmp:
        write_plan(plan, tmp)
    return out_dir.resolve()
