"""Reading a spec: YAML file or dict, ``--set`` overrides, and validation errors that name the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from generator.errors import ArtifactMissing, SpecError
from generator.spec.schema import Spec

MAX_SPEC_BYTES = 1 << 20
"""A spec is a few kilobytes; a bigger file is not one."""
MAX_YAML_NODES = 100_000
"""Values a YAML document may expand to once its aliases are followed (a spec has a few hundred);
counted on the parsed node graph, before any object is built, so an alias bomb costs nothing."""


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], path: set[int]) -> int:
    key = id(node)
    if key in path:
        raise SpecError("the YAML refers to itself through an alias (a recursive structure)",
                        fix="remove the anchor (&name) used inside its own value")
    if key not in memo:
        path.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        memo[key] = 1 + sum(_expanded_nodes(child, memo, path) for child in children)
        path.discard(key)
    return memo[key]


def _bounded(node: yaml.Node, where: str) -> int:
    """The values ``node`` expands to, at most MAX_YAML_NODES."""
    try:
        size = _expanded_nodes(node, {}, set())
    except SpecError as exc:
        raise SpecError(exc.message, where=where, fix=exc.fix) from None
    if size > MAX_YAML_NODES:
        raise SpecError(
            f"the YAML expands to {size:,} values through its aliases (at most {MAX_YAML_NODES:,}): "
            "an alias bomb, not a configuration", where=where, fix="write the values out instead of nesting aliases")
    return size


def _too_deep(where: str) -> SpecError:
    return SpecError("nested deeper than Python parses: not a configuration", where=where,
                     fix="write the values out flat (a spec or config nests a few levels)")


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses a document whose aliases expand past ``MAX_YAML_NODES`` values, or that
    nests deeper than Python parses (a spec or --set of 100,000 brackets ended in a RecursionError traceback)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _bounded(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise _too_deep(where) from None
    finally:
        loader.dispose()


def safe_yaml_all(text: str, where: str) -> list[tuple[Any, int]]:
    """Every document of a YAML stream with its first line, bounded together as ``safe_yaml`` bounds one (review22:
    600,000 documents ``--- {}`` in 4 MiB, each within the bound, took validate 8 minutes and 1.2 million lines).
    Parsed by libyaml where PyYAML has it (validate reads every rendered manifest; the pure-Python parser is ~15x
    slower)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    docs = []
    values = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            values += _bounded(node, where)
            if values > MAX_YAML_NODES:
                raise SpecError(f"its {len(docs) + 1:,} YAML documents hold more than {MAX_YAML_NODES:,} values "
                                "together: not a manifest", where=where, fix="re-render (a manifest holds a few "
                                "documents of a few hundred values)")
            docs.append((loader.construct_document(node), node.start_mark.line + 1))
        return docs
    except RecursionError:
        raise _too_deep(where) from None
    finally:
        loader.dispose()


def _describe_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "spec"
    got = err.get("input")
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown field (check the spelling; `tritongen init` writes every field with its default)"
    if err["type"] == "enum" and "expected" in ctx:
        return f"{loc}: got {got!r}; allowed: {ctx['expected']}"
    if err["type"] == "literal_error" and "expected" in ctx:
        return f"{loc}: got {got!r}; allowed: {ctx['expected']}"
    if err["type"] == "value_error":
        return f"{loc}: {msg.removeprefix('Value error, ')}"
    return f"{loc}: got {got!r}; {msg[0].lower() + msg[1:]}"


def spec_error_from_validation(exc: ValidationError, source: str) -> SpecError:
    lines = [_describe_error(e) for e in exc.errors()]
    return SpecError(
        "invalid spec:\n  " + "\n  ".join(lines),
        where=source,
        fix="edit the fields named above (see `tritongen spec-reference` for allowed values)",
    )


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], YAML-parsed value)."""
    if "=" not in item:
        raise SpecError(
            f"override {item!r} is not KEY=VALUE", where="--set", fix="write e.g. --set build.max_batch_size=16"
        )
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise SpecError(f"override {item!r} has an empty key", where="--set",
                        fix="name a spec field before =, e.g. --set build.max_batch_size=16")
    try:
        value = safe_yaml(raw, "--set") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if "#" in raw and (value is None or isinstance(value, str)):
        value = raw.strip()  # YAML reads " #…" as a comment; on a command line it is part of the text
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = {}
                node[k] = nxt
            node = nxt
        node[keys[-1]] = value
    return data


def _not_utf8(node: Any, loc: str = "") -> str | None:
    """The dotted field of the first string that UTF-8 cannot encode (a lone surrogate), or None."""
    if isinstance(node, dict):
        return next((bad for k, v in node.items() if (bad := _not_utf8(v, f"{loc}{k}.") or _not_utf8(k, loc))), None)
    if isinstance(node, list):
        return next((bad for i, v in enumerate(node) if (bad := _not_utf8(v, f"{loc}{i}."))), None)
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return loc.rstrip(".") or "spec"
    return None


def spec_from_dict(data: dict[str, Any], *, base_dir: Path = Path("."), source: str = "spec") -> Spec:
    bad = _not_utf8(data)
    if bad:
        raise SpecError(f"{bad}: not valid text (bytes that are not UTF-8, or a lone surrogate)", where=source,
                        fix="write the value as UTF-8 text (file names too)")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        raise spec_error_from_validation(exc, source) from None
    try:
        spec.base_dir = Path(base_dir).resolve()
    except ValidationError:
        raise SpecError(f"the spec's folder {str(Path(base_dir).resolve())!r} holds a control character, which "
                        "would reach every path of the spec", where=source, fix="move the spec to a folder with a "
                        "one-line printable name") from None
    return spec


def load_spec(path: Path | str | None, overrides: list[str] | None = None) -> Spec:
    """Read a spec YAML file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    overrides = overrides or []
    if path is None:
        return spec_from_dict(apply_overrides({}, overrides), source="defaults")
    path = Path(path)
    if not path.is_file():
        raise ArtifactMissing("spec file not found", where=str(path), fix=f"tritongen init {path}")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"the file has {path.stat().st_size:,} bytes; a spec has at most {MAX_SPEC_BYTES:,}",
                        where=str(path), fix="pass the spec file, not a data file")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x})", where=str(path),
                        fix="save the spec as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where,
                        fix="correct the YAML at the line and column shown (`tritongen init` writes a valid spec)") from None
    if not isinstance(data, dict):
        raise SpecError("the spec must be a YAML mapping of sections (model, quantization, ...)", where=str(path),
                        fix="start from `tritongen init` and keep its section: field layout")
    return spec_from_dict(apply_overrides(data, overrides), base_dir=path.parent, source=str(path))


def with_overrides(spec: Spec, overrides: list[str]) -> Spec:
    """A copy of ``spec`` with ``--set`` overrides applied (used by sweeps)."""
    return spec_from_dict(apply_overrides(spec.to_yaml_dict(), overrides), base_dir=spec.base_dir, source="--set")
