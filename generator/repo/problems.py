"""What ``tritongen validate`` reports, and the checks both repository layouts share.

The inflight_batcher_llm validator (generator/validate.py) and the LLM-API one (generator/llmapi.py)
report the same ``Problem`` record, parse ``config.pbtxt`` the same way and compare checkpoints with
the spec through the quant-algo table of generator.engine.facts. Kept apart from both so that render (which imports llmapi)
and validate (which imports render) share it without an import cycle. Reads files only.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple, Optional

from generator.engine.facts import KV_ALGOS, QUANT_ALGOS
from generator.errors import ArtifactCorrupt
from generator.spec import Spec


class Severity(str, Enum):
    """An error is something that exists and is wrong; a warning is an artifact that does not exist yet.

    Users render on a laptop before the GPU host has quantized and built: a missing checkpoint or
    engine is the normal state then, so it must not fail ``validate`` unless ``--strict`` asks it to.
    """

    error = "error"
    warning = "warning"
    note = "note"
    """Worth knowing, never a failure: an optional parameter left as a ``${…}`` placeholder (unset)."""


class Problem(NamedTuple):
    """One thing wrong with a repository: where (file, 1-based line or None), what, how to fix it, how bad."""

    file: str
    line: Optional[int]
    message: str
    fix: str
    severity: Severity = Severity.error


def not_built(file: str | Path, line: Optional[int], what: str, command: str) -> Problem:
    """A warning for an artifact that a later pipeline step writes (checkpoint, tokenizer, engine)."""
    return Problem(str(file), line, f"not built yet: {what}", f"run `{command}`, then validate again", Severity.warning)


def weights_command(spec: Optional[Spec]) -> str:
    """The command that writes the served weights folder (and its tokenizer) for this spec."""
    if spec is not None and not spec.quantization.quantizes_anything:
        return "tritongen fetch SPEC"
    return "tritongen quantize SPEC"


def failing(problems: list[Problem], *, strict: bool = False) -> list[Problem]:
    """The problems that make ``validate`` fail: errors, and with ``strict`` warnings too (notes never)."""
    return [p for p in problems if p.severity is Severity.error or (strict and p.severity is Severity.warning)]


# ---------------------------------------------------------------- config.pbtxt


_PARAMETER_KEY = re.compile(r'key\s*:\s*"((?:[^"\\]|\\.)*)"')
"""A map entry's key as written in a config.pbtxt (escapes kept)."""


class ConfigText:
    """A config.pbtxt's lines, to point problems at the line that holds a field, tensor or parameter."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()
        self._code = [line.split("#", 1)[0] for line in self.lines]  # comments never match (validate asks often)

    def find(self, pattern: str, start: int = 1) -> Optional[int]:
        rx = re.compile(pattern)
        for i in range(max(start, 1) - 1, len(self._code)):
            if rx.search(self._code[i]):
                return i + 1
        return None

    def field(self, name: str) -> Optional[int]:
        return self.find(rf"(^|[\s{{]){re.escape(name)}\s*[:{{]")

    def tensor(self, section: str, name: str) -> Optional[int]:
        start = self.find(rf"^\s*{section}\s*\[") or 1
        return self.find(rf'name\s*:\s*"{re.escape(name)}"', start)

    def parameter(self, key: str) -> Optional[int]:
        return self._parameter_lines.get(key)

    @functools.cached_property
    def _parameter_lines(self) -> dict[str, int]:
        """Each parameter key's first line (from the first ``parameters`` on), found in one pass: a search per
        key made validate quadratic (a 2 MB config of 40,000 parameters took more than two minutes)."""
        lines: dict[str, int] = {}
        for i in range((self.field("parameters") or 1) - 1, len(self._code)):
            for key in _PARAMETER_KEY.findall(self._code[i]):
                lines.setdefault(key, i + 1)
        return lines

    def step(self, index: int) -> Optional[int]:
        line = 0
        for _ in range(index + 1):
            line = self.find(r"model_name\s*:", line + 1)
            if line is None:
                return None
        return line

    def map_entry(self, step_line: Optional[int], kind: str, key: str) -> Optional[int]:
        return self.find(rf'{kind}\s*{{\s*key\s*:\s*"{re.escape(key)}"', step_line or 1) or step_line


@functools.lru_cache(maxsize=1)
def model_config_pb2() -> Any:
    """Triton's ModelConfig protobuf module (tritonclient's generated model_config_pb2).

    Loaded from its file, because ``import tritonclient.grpc.model_config_pb2`` first runs
    ``tritonclient/grpc/__init__.py``, which imports the gRPC client: a decider needs the schema, not a
    network stack. It is registered under its own name, so a later client import reuses it.
    """
    name = "tritonclient.grpc.model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("tritonclient")
    path = Path(list(package.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def type_name(dtype: int) -> str:
    return model_config_pb2().DataType.Name(dtype)


def count_value(text: Optional[str]) -> Optional[int]:
    """The count a parameter's text spells in ASCII digits (at most 18), else None: ``str.isdigit`` also takes
    "²", which ``int`` refuses, and ``int`` refuses 4,300 digits (review19: tracebacks in import and validate)."""
    return int(text) if text and len(text) < 19 and text.isascii() and text.isdigit() else None


def group_instances(group: Any) -> int:
    """The model instances Triton starts for one ``instance_group``: ``count`` (at least 1) on each GPU a KIND_GPU
    group lists (review20: ``count: 1 kind: KIND_GPU gpus: [0, 1]`` is two, which validate and import read as one;
    without a list, one set per visible GPU, which a repository does not say: counted once)."""
    gpus = len(group.gpus) if group.kind == type(group).KIND_GPU else 0
    return max(group.count, 1) * max(gpus, 1)


def model_instances(config: Any) -> int:
    """The instances Triton starts for a model: its groups' (``group_instances``), or one without a group."""
    return sum(group_instances(g) for g in config.instance_group) or 1


@functools.lru_cache(maxsize=64)
def _parsed_model_config(text: str) -> Any:
    """``text`` parsed as a ModelConfig, once per distinct text: protobuf's text parser is pure Python (10-15 ms
    for an engine config), and validate, import, diff and the deployment checks parse the same files again
    and again. A parse error is raised each time (exceptions are not cached); callers get a copy."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


MAX_CONFIG_BYTES = 256 << 10
"""A config.pbtxt or model.yaml read at most: NVIDIA's largest config is some 20 KB, a model.yaml 1 KB. protobuf's
pure-Python text parser and the parameter checks take about 20 s of CPU a MiB (review19: 2.8 MB of parameters held
validate 65 s and diff 37 s; the 64 MiB other files may have would have held each for over ten minutes), PyYAML's
about 5 s a MiB, twice in validate (review20: a 14 MB model.yaml held validate and import for over a minute each)."""


def parse_config(path: Path, *, inside: Path) -> tuple[Optional[tuple[ConfigText, Any]], list[Problem]]:
    """Parse a config.pbtxt as Triton's ModelConfig protobuf: ((text, config) or None, problems). Only a regular
    file of at most MAX_CONFIG_BYTES resolving inside the repository ``inside`` is read (a link to a token file
    elsewhere was quoted in a parse error, review19)."""
    from google.protobuf import text_format

    from generator.fsutil import read_text_bounded

    try:
        text = read_text_bounded(path, fix="re-render, or replace the file with a model configuration",
                                 limit=MAX_CONFIG_BYTES, inside=inside)
    except ArtifactCorrupt as exc:
        return None, [Problem(str(path), None, exc.message, exc.fix or "")]
    ct = ConfigText(path, text)
    problems = []
    for no, line in enumerate(ct.lines, 1):
        code = line.split("#", 1)[0]
        # A parameter's string_value is the backend's to read (validate judges those per key); anywhere
        # else Triton itself parses the text, so a placeholder there is always wrong.
        if "${" in code and "string_value" not in code:
            problems.append(Problem(
                str(path), no, f"unfilled template placeholder {re.search(r'[$][{][^}]*[}]?', line).group(0)!r}",
                "re-render with `tritongen render SPEC -o DIR --force` (tritongen never leaves placeholders)"))
    try:
        config = model_config_pb2().ModelConfig()
        config.CopyFrom(_parsed_model_config(text))
    except RecursionError:
        problems.append(Problem(str(path), None, "nested deeper than any Triton ModelConfig is", "re-render"))
        return None, problems
    except text_format.ParseError as exc:
        message = re.sub(r"^\d+:\d+ : ", "", str(exc))
        problems.append(Problem(str(path), exc.GetLine(), f"not a valid Triton ModelConfig (column {exc.GetColumn()}): "
                                f"{message}", "fix the syntax or the field name (see Triton's model_config.proto), or re-render"))
        return None, problems
    return (ct, config), problems


# ---------------------------------------------------------------- JSON and quantization


def read_json(path: Path) -> tuple[Optional[dict[str, Any]], list[Problem]]:
    """A JSON object from ``path`` (None with a problem when unreadable or not an object)."""
    from generator.fsutil import read_json_object

    try:
        return read_json_object(path, fix="rebuild / re-export it"), []
    except ArtifactCorrupt as exc:
        return None, [Problem(str(path), None, f"cannot read JSON: {exc.message}", exc.fix or "rebuild / re-export it")]


def quant_problems(file: str | Path, quant: dict[str, Any], spec: Spec, what: str, note: str = "") -> list[Problem]:
    """``quant_algo`` / ``kv_cache_quant_algo`` (engine or checkpoint) against the spec's quantization."""
    q = spec.quantization
    problems = []
    for key, got, allowed, field, value in (
        ("quant_algo", quant.get("quant_algo"), QUANT_ALGOS[q.format], "quantization.format", q.format.value),
        ("kv_cache_quant_algo", quant.get("kv_cache_quant_algo"), KV_ALGOS[q.kv_cache], "quantization.kv_cache",
         q.kv_cache.value),
    ):
        if (got or None) not in allowed:
            problems.append(Problem(str(file), None, f"{what} {key} is {got!r}{note} but the spec's {field} is "
                                    f"{value!r} (expects {allowed[0]!r})", f"re-quantize (and rebuild), or set {field} to match"))
    return problems


def checkpoint_quant_problems(weights: Path, spec: Spec, *, required: bool) -> list[Problem]:
    """The checkpoint's ``hf_quant_config.json`` against the spec.

    ``required``: a missing file counts as "not quantized" (LLM() then serves unquantized weights);
    otherwise a folder without one is not compared.
    """
    path = weights / "hf_quant_config.json"
    if not path.is_file():
        return quant_problems(path, {}, spec, "checkpoint", " (no hf_quant_config.json)") if required else []
    doc, problems = read_json(path)
    if doc is None:
        return problems
    quant = doc.get("quantization", doc)
    return quant_problems(path, quant if isinstance(quant, dict) else {}, spec, "checkpoint")
