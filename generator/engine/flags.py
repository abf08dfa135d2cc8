"""trtllm-build's and quantize.py's recorded parsers, the plan's command records, and the argv checker.

Every flag the plan emits carries its reason and the source of that reason (the ``SRC_*`` texts); every
argument list is checked against the parser recorded from TensorRT-LLM 1.2.1
(generator/data/trtllm_build_1.2.1.json), so an unknown, removed or deprecated flag is a plan error
instead of a failed build on a GPU host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from generator.resources import data_json

FLAG_DATA_FILE = "trtllm_build_1.2.1.json"

# Where a decision comes from. The plan shows these next to every flag.
SRC_SPEC = "spec"
SRC_REFERENCE = "reference deployment (Qwen3-8B NVFP4 on SM120, TensorRT-LLM 1.2)"
SRC_FIELD_SM120 = "field report, SM120, TRT-LLM 1.2"
SRC_PARSER = "trtllm-build 1.2.1 parser (commands/build.py, plugin/plugin.py)"
SRC_BUILD_PY = "upstream rule: tensorrt_llm/commands/build.py"
SRC_BUILDER = "upstream rule: tensorrt_llm/builder.py build()"
SRC_CHECKPOINT = "upstream rule: PretrainedConfig.from_dict needs a TensorRT-LLM checkpoint"


def flag_data() -> dict[str, Any]:
    """The recorded trtllm-build 1.2.1 parser (and quantize.py flags, container tag, sources)."""
    return data_json(FLAG_DATA_FILE)


@dataclass(frozen=True)
class Flag:
    flag: str
    value: Optional[str]
    reason: str
    source: str
    no_effect: Optional[str] = None
    """Set when the parser accepts the flag but the build ignores or overrides it, with the rule."""


@dataclass(frozen=True)
class Omitted:
    flag: str
    reason: str
    source: str


@dataclass(frozen=True)
class Command:
    title: str
    argv: tuple[str, ...]
    reason: str
    source: str

    def with_values(self, values: dict[str, str], head: Optional[tuple[str, ...]] = None) -> list[str]:
        """The argv with some flag values (e.g. ``--output_dir``) and optionally the program part replaced."""
        argv = list(self.argv)
        for i, arg in enumerate(argv[:-1]):
            if arg in values:
                argv[i + 1] = str(values[arg])
        if head is not None:
            argv[: len(head)] = list(head)
        return argv



def check_argv(argv: list[str], table: dict[str, Any], not_accepted: dict[str, str] | None = None) -> list[str]:
    """Problems of an argument list against a recorded parser table: unknown, removed or deprecated flags,
    values outside the choices, non-integers, switches given a value, values missing."""
    aliases = {a: name for name, spec in table.items() for a in spec.get("aliases", [])}
    problems, i = [], 0
    while i < len(argv):
        flag = argv[i]
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
        i += 1 if value is None else 2
        spec = table.get(aliases.get(flag, flag))
        if spec is None:
            why = (not_accepted or {}).get(flag, "not in the recorded parser")
            problems.append(f"{flag} is not accepted: {why}")
            continue
        if spec.get("deprecated"):
            problems.append(f"{flag} is deprecated: {spec['deprecated']}")
        kind = spec["type"]
        if kind == "switch":
            if value is not None:
                problems.append(f"{flag} takes no value (got {value!r})")
        elif value is None:
            problems.append(f"{flag} needs a value")
        elif kind == "choice" and value not in spec["choices"]:
            problems.append(f"{flag} {value!r} is not one of {', '.join(spec['choices'])}")
        elif kind == "int" and not value.lstrip("-").isdigit():
            problems.append(f"{flag} needs an integer (got {value!r})")
    return problems

