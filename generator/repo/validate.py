"""Validate: check a rendered Triton repository before it ever reaches a GPU.

Reads files only (configs, manifest, tokenizer, engine ``config.json``); starts nothing. Every
``config.pbtxt`` is parsed as Triton's ``ModelConfig`` protobuf (the generated messages shipped with
tritonclient), then the models are checked against each other, against NVIDIA's recorded interface
(``generator/data/inflight_batcher_llm_1.2.1.json``), against the spec recorded in ``tritongen.json``
and against the built engine. All problems are returned at once, each with file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from generator.deploy.checks import check_deployment
from generator.errors import TritongenError
from generator.repo.llmapi import CPU_ENGINE_MODEL
from generator.repo.validate_llmapi import validate_llmapi
from generator.repo.llmapi import MODEL_NAME as LLMAPI_MODEL
from generator.repo.problems import Problem, Severity, parse_config
from generator.repo.manifest import MANIFEST, RepoManifest, read_manifest
from generator.repo.render import ENSEMBLE, LLMAPI_LAYOUT, POSTPROCESSING, PREPROCESSING, TENSORRT_LLM
from generator.repo.validate_artifacts import check_engine, check_tokenizers
from generator.repo.validate_models import Model, Report, check_model
from generator.repo.validate_wiring import check_batch_and_decoupling, check_bls_reach, check_ensemble
from generator.spec import Spec

__all__ = ["Problem", "Severity", "validate_repository"]


# ---------------------------------------------------------------- reading


def _manifest_and_spec(repo: Path, report: Report) -> tuple[Optional[RepoManifest], Optional[Spec]]:
    """The repository's manifest and the spec it records; each problem reading them is reported."""
    try:
        manifest = read_manifest(repo)
    except TritongenError as exc:
        report.add(exc.where or repo / MANIFEST, None, exc.message, exc.fix)
        return None, None
    if manifest is None:
        return None, None
    try:
        return manifest, manifest.recorded_spec(source=str(repo / MANIFEST))
    except TritongenError as exc:
        report.add(repo / MANIFEST, None, f"recorded spec is invalid: {exc.message}", "re-render from a valid spec")
        return manifest, None


# ---------------------------------------------------------------- entry point


def layout(repo: Path, manifest: Optional[RepoManifest]) -> Optional[str]:
    """The manifest's layout; without one, the LLM-API model when the files are laid out as NVIDIA's llmapi
    folder (tensorrt_llm/1/model.yaml and no ensemble), else the engine layout's checks apply."""
    if manifest is not None:
        return manifest.layout
    llmapi = (repo / LLMAPI_MODEL / "1" / "model.yaml").is_file() and not (repo / ENSEMBLE).is_dir()
    return LLMAPI_LAYOUT if llmapi else None


def validate_repository(repo_dir: Path, spec: Optional[Spec] = None) -> list[Problem]:
    """Every problem in the repository at ``repo_dir`` (empty list: it is fine), errors and warnings.

    ``spec`` defaults to the one recorded in ``tritongen.json``; without either, the checks that need
    the spec (engine limits and quantization vs spec, decoupled vs streaming) are skipped. The
    manifest's layout picks the checks: NVIDIA's inflight_batcher_llm, or the LLM-API model.
    """
    repo = Path(repo_dir)
    report = Report()
    if not repo.is_dir():
        return [Problem(str(repo), None, "repository folder does not exist", "tritongen render SPEC -o DIR")]
    manifest, recorded = _manifest_and_spec(repo, report)
    spec = spec or recorded
    if spec is None:
        report.add(repo, None, "no spec (no tritongen.json and no --spec): the engine-vs-spec, quantization-vs-spec "
                   "and decoupled-vs-streaming checks were skipped",
                   f"tritongen import {repo} -o spec.yaml, then tritongen validate {repo} --spec spec.yaml", Severity.note)
    if layout(repo, manifest) == LLMAPI_LAYOUT:
        _validate_llmapi(repo, manifest, spec, report)
    else:
        _validate_ifb(repo, manifest, spec, report)
    report.extend(check_deployment(repo, manifest, spec))
    return report.problems


def _load_models(repo: Path, expected: list[str], report: Report, *, others: bool = True,
                 roles: Optional[dict[str, str]] = None) -> dict[str, Model]:
    """Parse the ``expected`` models (reporting missing ones) and, with ``others``, every other model folder."""
    for name in expected:
        if not (repo / name / "config.pbtxt").is_file():
            report.add(repo / name / "config.pbtxt", None, f"model {name!r} is missing",
                       "re-render with `tritongen render SPEC -o DIR --force`")
    folders = sorted(p.parent for p in repo.glob("*/config.pbtxt")) if others else [repo / n for n in expected]
    models: dict[str, Model] = {}
    for folder in folders:
        if not (folder / "config.pbtxt").is_file():
            continue
        parsed, problems = parse_config(folder / "config.pbtxt", inside=repo)  # never quote a file elsewhere
        report.extend(problems)
        if parsed is not None:
            models[folder.name] = Model(folder.name, folder, *parsed, role=(roles or {}).get(folder.name, ""))
    return models


def _validate_ifb(repo: Path, manifest: Optional[RepoManifest], spec: Optional[Spec], report: Report) -> None:
    expected = manifest.models if manifest is not None else [ENSEMBLE, PREPROCESSING, TENSORRT_LLM, POSTPROCESSING]
    models = _load_models(repo, expected, report)
    if not models and not any(repo.glob("*/config.pbtxt")):
        report.add(repo, None, "no model folders with config.pbtxt (inflight_batcher_llm layout expected)",
                   "tritongen render SPEC -o DIR")
    for m in models.values():
        check_model(m, report)
    if ENSEMBLE in models:
        check_ensemble(models[ENSEMBLE], {**models}, report)
    if models:
        check_batch_and_decoupling(models, manifest, spec, report)
        check_bls_reach(models, spec, report)
    check_tokenizers(models, spec, report)
    if TENSORRT_LLM in models:
        check_engine(models[TENSORRT_LLM], spec, report)


def _validate_llmapi(repo: Path, manifest: Optional[RepoManifest], spec: Optional[Spec], report: Report) -> None:
    """The LLM-API model (generator.repo.llmapi), plus, in the CPU stand-in, the engine model it calls.

    The stand-in's engine is the CPU reference engine under another folder name, with the C++
    tensorrt_llm model's interface: the single-model checks of the engine layout apply to it unchanged.
    """
    report.extend(validate_llmapi(repo, spec))
    if (manifest is None or CPU_ENGINE_MODEL not in manifest.models) and not (repo / CPU_ENGINE_MODEL).is_dir():
        return  # the GPU variant: NVIDIA's model.py runs LLM() itself
    engine = _load_models(repo, [CPU_ENGINE_MODEL], report, others=False,
                          roles={CPU_ENGINE_MODEL: TENSORRT_LLM}).get(CPU_ENGINE_MODEL)
    if engine is None:
        return
    check_model(engine, report)
    check_tokenizers({engine.name: engine}, spec, report)
    check_engine(engine, spec, report)
    front_cfg = repo / LLMAPI_MODEL / "config.pbtxt"
    parsed = parse_config(front_cfg, inside=repo)[0] if front_cfg.is_file() else None  # its own problems: validate_llmapi
    if parsed is None:
        return
    front = Model(LLMAPI_MODEL, front_cfg.parent, *parsed)
    named = front.params.get("engine_model")
    if named != engine.name:
        report.add(front.file, front.text.parameter("engine_model") or front.text.field("name"),
                   f"engine_model parameter is {named!r}, but the CPU engine model is {engine.name!r}",
                   f'set the parameter engine_model to "{engine.name}" (re-render)')
    if engine.decoupled != front.decoupled:
        report.add(engine.file, engine.text.field("model_transaction_policy") or engine.text.field("name"),
                   f"{engine.name} decoupled={str(engine.decoupled).lower()} but {front.name} "
                   f"decoupled={str(front.decoupled).lower()}; the stand-in streams what the engine sends",
                   "use one decoupled setting in both (spec: serving.decoupled)")
    if engine.config.max_batch_size < 1:
        report.add(engine.file, engine.text.field("max_batch_size"),
                   f"{engine.name} max_batch_size is {engine.config.max_batch_size}; the stand-in sends [1, n] batches",
                   "re-render (it comes from serving.max_batch_size / build.max_batch_size)")
