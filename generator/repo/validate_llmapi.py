"""Validate the LLM-API target: ``model.yaml`` keys against the ``LLM(...)`` arguments recorded from NVIDIA's
source (``generator/data/llmapi_1.2.json``), its Triton config and tensors, the checkpoint it loads, and the
values the spec asks for."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from generator.errors import TritongenError
from generator.fsutil import read_json_object, read_text_bounded
from generator.repo.llmapi import (
    DATA_FILE, MODEL_NAME, accepted_llm_args, llmapi_data, llmapi_model_yaml,
)
from generator.repo.problems import (
    MAX_CONFIG_BYTES, Problem, Severity, checkpoint_quant_problems, not_built, parse_config, type_name, weights_command,
)
from generator.spec import Spec
from generator.spec.load import safe_yaml



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


def _check_config(path: Path, tc: dict[str, Any] | None, repo: Path) -> list[Problem]:
    parsed, problems = parse_config(path, inside=repo)
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
    if not yaml_path.exists():
        problems.append(Problem(str(yaml_path), None, "model.yaml is missing", "re-render with `tritongen render`"))
    else:
        loaded = None
        try:
            text = read_text_bounded(yaml_path, fix="re-render with `tritongen render`", limit=MAX_CONFIG_BYTES, inside=repo)
            loaded = safe_yaml(text, str(yaml_path))
            lines = _yaml_key_lines(text)
        except TritongenError as exc:  # not a regular file, too big, not UTF-8, an alias bomb, nested too deep
            problems.append(Problem(str(yaml_path), None, exc.message, exc.fix or "re-render"))
        except yaml.YAMLError as exc:  # the problem and its place, never the file's text
            mark = getattr(exc, "problem_mark", None)
            problems.append(Problem(str(yaml_path), mark.line + 1 if mark else None,
                                    f"not valid YAML: {getattr(exc, 'problem', None) or type(exc).__name__}", "fix the syntax"))
        if loaded is not None and not isinstance(loaded, dict):
            problems.append(Problem(str(yaml_path), 1, "model.yaml must be a mapping of LLM() arguments", "re-render"))
        elif isinstance(loaded, dict):
            doc = loaded
            problems += _check_model_yaml(yaml_path, doc, lines)
    tc = doc.get("triton_config") if isinstance(doc.get("triton_config"), dict) else None
    if not cfg_path.is_file():
        problems.append(Problem(str(cfg_path), None, "config.pbtxt is missing", "re-render with `tritongen render`"))
    else:
        problems += _check_config(cfg_path, tc, repo)
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
