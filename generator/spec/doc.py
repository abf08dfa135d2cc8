"""Spec documentation generated from the pydantic fields: the commented YAML of ``tritongen init``
and the Markdown reference in the README. Written once, here, never by hand."""

from __future__ import annotations

import json
import textwrap
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from generator.spec import Spec


def _sections(model: type[BaseModel]):
    """(name, field, default value, is-section) for each field in declaration order."""
    defaults = model().model_dump(mode="json") if model is not Spec else Spec().to_yaml_dict()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        ann = field.annotation
        is_section = isinstance(ann, type) and issubclass(ann, BaseModel)
        yield name, field, defaults.get(name), is_section


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (Path, Enum)):
        value = str(value.value if isinstance(value, Enum) else value)
    return json.dumps(value) if isinstance(value, (str, list)) else str(value).lower() if isinstance(value, bool) else str(value)


def _comment(text: str, indent: str) -> list[str]:
    flat = " ".join((text or "").split())
    return [f"{indent}# {line}" for line in textwrap.wrap(flat, 96 - len(indent))] if flat else []


def _yaml_lines(model: type[BaseModel], indent: str = "") -> list[str]:
    lines: list[str] = []
    for name, field, default, is_section in _sections(model):
        lines += _comment(field.description or "", indent)
        if is_section:
            lines.append(f"{indent}{name}:")
            lines += _yaml_lines(field.annotation, indent + "  ")
        else:
            lines.append(f"{indent}{name}: {_yaml_scalar(default)}")
    return lines


def commented_yaml() -> str:
    head = [
        "# tritongen spec: one file drives quantize, build, render, validate, serve and load test.",
        "# Every field is shown with its default; delete what you do not change.",
        "# Default profile: Qwen/Qwen3-8B, NVFP4 weights + FP8 KV cache, RTX 5090 (SM120), TensorRT-LLM 1.2.1.",
        "",
    ]
    return "\n".join(head + _yaml_lines(Spec)) + "\n"


def _md_rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for name, field, default, is_section in _sections(model):
        key = f"{prefix}{name}"
        if is_section:
            rows += _md_rows(field.annotation, key + ".")
        else:
            desc = " ".join((field.description or "").split()).replace("|", "\\|")
            rows.append(f"| `{key}` | `{_yaml_scalar(default)}` | {desc} |")
    return rows


def markdown_reference() -> str:
    return "\n".join(["| field | default | meaning |", "| --- | --- | --- |", *_md_rows(Spec)]) + "\n"


README_START = "<!-- spec-reference:start -->"
README_END = "<!-- spec-reference:end -->"


def with_reference(readme: str) -> str:
    """``readme`` with the text between the spec-reference markers replaced by the current table."""
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{markdown_reference()}{README_END}{tail}"
