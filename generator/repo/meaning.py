"""What a Triton LLM repository means, read from its files, and how two repositories differ in it.

Two repositories mean the same when every model has the same tensors, batch size, decoupling,
instances and set parameters, the ensemble wires the same steps, and the engine or ``model.yaml``
settings agree. Formatting, comments, order and ``${…}`` placeholders that the backend reads as unset
do not count. ``tritongen import`` reads a repository this way and ``tritongen diff`` compares two
(a TensorRT-LLM upgrade, or hand edits against a render). Reads files only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, Field

from generator.errors import ArtifactCorrupt, TritongenError
from generator.fsutil import read_text_bounded
from generator.repo.problems import MAX_CONFIG_BYTES, group_instances, parse_config, type_name
from generator.spec.load import safe_yaml

PLACEHOLDER = "${"


class Tensor(BaseModel):
    data_type: str
    dims: list[int]
    optional: bool = False


class Step(BaseModel):
    model_name: str
    input_map: dict[str, str]
    output_map: dict[str, str]


class ModelMeaning(BaseModel):
    """One model folder's config.pbtxt as the server reads it."""

    backend: str
    """``backend`` (python, tensorrtllm), or ``platform`` for an ensemble."""
    max_batch_size: int
    decoupled: bool
    instances: list[tuple[str, int]] = Field(default_factory=list)
    """(kind, count) of each instance group."""
    dynamic_batching: bool = False
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 0
    inputs: dict[str, Tensor] = Field(default_factory=dict)
    outputs: dict[str, Tensor] = Field(default_factory=dict)
    parameters: dict[str, str] = Field(default_factory=dict)
    """Set parameters only: one whose value still holds a ``${…}`` placeholder is unset for the backend."""
    placeholders: list[str] = Field(default_factory=list)
    """Parameters left as placeholders (the backend reads them as unset)."""
    steps: list[Step] = Field(default_factory=list)


class RepoMeaning(BaseModel):
    """Every model, the engine's recorded build settings and the LLM-API ``model.yaml``, when present."""

    root: str = ""
    """The repository folder read."""
    models: dict[str, ModelMeaning] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict)
    """The engine config.json at tensorrt_llm's gpt_model_path, flattened (``build_config.max_batch_size`` …)."""
    engine_file: Optional[str] = None
    llmapi: dict[str, Any] = Field(default_factory=dict)
    """``tensorrt_llm/1/model.yaml``, flattened."""
    unreadable: list[str] = Field(default_factory=list)
    """Config files that do not parse: their meaning is unknown (validate says why)."""
    not_read: list[str] = Field(default_factory=list)
    """Files the repository names but that were not read, and why (outside the repository, not a regular file)."""


class Difference(BaseModel):
    """One setting that differs: where (model.what), and the value in each repository (None: absent/unset)."""

    where: str
    a: Any
    b: Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``a.b.c`` keys; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def _tensors(section) -> dict[str, Tensor]:
    return {t.name: Tensor(data_type=type_name(t.data_type), dims=list(t.dims), optional=bool(getattr(t, "optional", False)))
            for t in section}


def model_meaning(config: Any) -> ModelMeaning:
    """The meaning of one parsed ``ModelConfig``."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    db = config.dynamic_batching
    return ModelMeaning(
        backend=config.platform or config.backend,
        max_batch_size=config.max_batch_size,
        decoupled=config.model_transaction_policy.decoupled,
        instances=[(type(g).Kind.Name(g.kind), group_instances(g)) for g in config.instance_group],
        dynamic_batching=config.HasField("dynamic_batching"),
        max_queue_delay_microseconds=db.max_queue_delay_microseconds,
        max_queue_size=db.default_queue_policy.max_queue_size,
        inputs=_tensors(config.input), outputs=_tensors(config.output),
        parameters={k: v for k, v in params.items() if PLACEHOLDER not in v},
        placeholders=sorted(k for k, v in params.items() if PLACEHOLDER in v),
        steps=[Step(model_name=s.model_name, input_map=dict(s.input_map), output_map=dict(s.output_map))
               for s in config.ensemble_scheduling.step],
    )


_REREAD = "run `tritongen validate` on the repository to see why"


def _engine_config(repo: Path, meaning: RepoMeaning, engine_root: Optional[Path]) -> None:
    """The engine config.json at gpt_model_path, read only inside ``engine_root`` (a path the user named):
    a repository can name any folder, and its content must not be read and printed on its word."""
    trt = meaning.models.get("tensorrt_llm")
    if trt is None or trt.backend != "tensorrtllm" or not trt.parameters.get("gpt_model_path"):
        return
    path = Path(trt.parameters["gpt_model_path"])
    file = (path if path.is_absolute() else repo / path) / "config.json"
    if not file.exists() and not file.is_symlink():
        return  # not built here: validate reports it
    try:
        data = json.loads(read_text_bounded(file, fix=_REREAD, inside=engine_root or repo))
    except ArtifactCorrupt as exc:
        meaning.not_read.append(f"engine {file}: {exc.message}")
        return
    except (json.JSONDecodeError, RecursionError):
        return  # validate reports it; an unreadable engine has no meaning to compare
    meaning.engine, meaning.engine_file = (flatten(data) if isinstance(data, dict) else {}), str(file)


def _model_yaml(repo: Path, meaning: RepoMeaning) -> None:
    path = repo / "tensorrt_llm" / "1" / "model.yaml"
    if not path.exists():
        return
    try:
        data = safe_yaml(read_text_bounded(path, fix=_REREAD, limit=MAX_CONFIG_BYTES, inside=repo), str(path))
    except (TritongenError, yaml.YAMLError):
        data = None
    if not isinstance(data, dict):  # not YAML, or no mapping of LLM() arguments: no meaning to read
        meaning.unreadable.append(str(path))
        return
    meaning.llmapi = flatten(data)


def read_meaning(repo: Path, *, engine_root: Optional[Path] = None) -> RepoMeaning:
    """Read every ``*/config.pbtxt`` of ``repo``, ``model.yaml`` and the engine's config.json (when it lies in
    ``repo`` or ``engine_root``). Only regular files of bounded size are read, each model folder's config
    must resolve inside ``repo``; what could not be read is listed, never skipped silently."""
    repo = Path(repo)
    meaning = RepoMeaning(root=str(repo))
    for cfg in sorted(repo.glob("*/config.pbtxt")):
        parsed, _ = parse_config(cfg, inside=repo)
        if parsed is None:
            meaning.unreadable.append(str(cfg))
            continue
        meaning.models[cfg.parent.name] = model_meaning(parsed[1])
    _engine_config(repo, meaning, engine_root)
    _model_yaml(repo, meaning)
    return meaning


def _compare(where: str, a: dict[str, Any], b: dict[str, Any]) -> list[Difference]:
    return [Difference(where=f"{where}{k}", a=a.get(k), b=b.get(k))
            for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]


def diff_meanings(a: RepoMeaning, b: RepoMeaning, *, ignore: frozenset[str] = frozenset()) -> list[Difference]:
    """Every difference in meaning between two repositories; ``ignore`` drops parameter keys (e.g. paths)."""
    out: list[Difference] = []
    for name in sorted(set(a.models) | set(b.models)):
        ma, mb = a.models.get(name), b.models.get(name)
        if ma is None or mb is None:
            out.append(Difference(where=name, a="present" if ma else None, b="present" if mb else None))
            continue
        da, db = ma.model_dump(exclude={"placeholders"}), mb.model_dump(exclude={"placeholders"})
        for section in ("parameters",):
            for key in ignore:
                da[section].pop(key, None)
                db[section].pop(key, None)
        for key in ("backend", "max_batch_size", "decoupled", "instances", "dynamic_batching",
                    "max_queue_delay_microseconds", "max_queue_size", "steps"):
            if da[key] != db[key]:
                out.append(Difference(where=f"{name}.{key}", a=da[key], b=db[key]))
        for section in ("inputs", "outputs", "parameters"):
            out += _compare(f"{name}.{section}.", da[section], db[section])
    out += _compare("engine.", a.engine, b.engine)
    out += _compare("model.yaml.", a.llmapi, b.llmapi)
    # A file that does not parse has no meaning to compare: the two cannot be called the same.
    unread_a, unread_b = ({Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root) else p for p in m.unreadable}
                          for m, root in ((a, Path(a.root)), (b, Path(b.root))))
    for rel in sorted(unread_a | unread_b):
        out.append(Difference(where=rel, a="does not parse" if rel in unread_a else "parses",
                              b="does not parse" if rel in unread_b else "parses"))
    return out
