"""Validate, one model at a time: the parsed model, the report problems go into, and the checks that need
only one ``config.pbtxt`` (name, backend, version folder, batch sizes, NVIDIA's tensor interface, parameter
names and the form of their values)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from generator.repo.problems import ConfigText, Problem, Severity, count_value, type_name
from generator.repo.render import EXTRA_PARAMETERS, reference_facts
from generator.resources import data_json

KNOWN_BACKENDS = ("tensorrtllm", "python")

# How parameter values must read (keys of upstream and tritongen); others are free text.
_INT_PARAMS = {
    "max_beam_width", "max_tokens_in_paged_kv_cache", "max_attention_window_size", "sink_token_length",
    "kv_cache_host_memory_bytes", "cancellation_check_period_ms", "stats_check_period_ms",
    "iter_stats_max_iterations", "request_stats_max_iterations", "lora_cache_optimal_adapter_size",
    "lora_cache_max_adapter_size", "lora_cache_host_memory_bytes", "cuda_graph_cache_size", "num_nodes",
    "max_num_images", "tokens_per_block", "max_num_tokens", "max_input_len", "max_seq_len", "cpu_kv_cache_mib",
    "cpu_threads", "cpu_max_batch_tokens", "max_queue_size", "max_output_len", "cpu_step_delay_ms",
}
_FRACTION_PARAMS = {"kv_cache_free_gpu_mem_fraction", "cross_kv_cache_fraction", "lora_cache_gpu_memory_fraction",
                    "gpu_weights_percent"}
_BOOL_PARAMS = {
    "exclude_input_in_output", "enable_kv_cache_reuse", "enable_chunked_context", "normalize_log_probs",
    "kv_cache_onboard_blocks", "enable_trt_overlap", "enable_context_fmha_fp32_acc", "multi_block_mode",
    "cuda_graph_mode", "speculative_decoding_fast_logits", "skip_special_tokens", "add_special_tokens",
    "apply_chat_template", "accumulate_tokens",
}
_BOOL_WORDS = {"true", "false", "1", "0", "yes", "no"}
_ENUM_PARAMS = {
    "gpt_model_type": ("V1", "inflight_batching", "inflight_fused_batching"),
    "batch_scheduler_policy": ("max_utilization", "guaranteed_no_evict", "static_batch"),
    "dtype": ("bfloat16", "float16", "float32"),
}
PLACEHOLDER_FILE = "placeholders_1.2.json"
"""What NVIDIA's models do with a parameter left ``${…}`` or empty, per model and parameter, with the source read."""


def placeholder_verdict(kind: str, key: str) -> tuple[str, str]:
    """(verdict, why) for ``key`` of NVIDIA's model ``kind`` left as a placeholder or empty: ``unset`` (the model
    uses its default), ``required`` (it fails) or ``literal`` (it uses the text itself); unlisted keys are unset."""
    entry = data_json(PLACEHOLDER_FILE)["models"].get(kind, {}).get("parameters", {}).get(key)
    return (entry["verdict"], entry["why"]) if entry else ("unset", "not read by NVIDIA's model")


@dataclass
class Model:
    """A parsed model folder."""

    name: str
    dir: Path
    text: ConfigText
    config: Any  # model_config_pb2.ModelConfig
    role: str = ""
    """NVIDIA's model whose interface this one has, when the folder name differs (tensorrt_llm_cpu)."""

    @property
    def kind(self) -> str:
        return self.role or self.name

    @property
    def file(self) -> str:
        return str(self.text.path)

    @property
    def params(self) -> dict[str, str]:
        return {k: v.string_value for k, v in self.config.parameters.items()}

    def tensors(self, section: str) -> dict[str, Any]:
        return {t.name: t for t in getattr(self.config, section)}

    @property
    def decoupled(self) -> bool:
        return self.config.model_transaction_policy.decoupled


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str | Path, line: Optional[int], message: str, fix: str,
            severity: Severity = Severity.error) -> None:
        self.problems.append(Problem(str(file), line, message, fix, severity))

    def extend(self, problems: list[Problem]) -> None:
        self.problems.extend(problems)


def check_interface(m: Model, report: Report) -> None:
    """Tensors of an upstream model name must match NVIDIA's recorded interface (clients rely on it)."""
    facts = reference_facts()["models"].get(m.kind)
    if facts is None:
        return
    for section, key in (("input", "inputs"), ("output", "outputs")):
        have = m.tensors(section)
        for want in facts[key]:
            t = have.get(want["name"])
            if t is None:
                if not want.get("optional"):
                    report.add(m.file, m.text.field(section),
                               f"{section} {want['name']!r} of NVIDIA's {m.kind} model is missing",
                               "re-render; clients of the official repository send/expect it")
                continue
            line = m.text.tensor(section, t.name)
            got_type = type_name(t.data_type)
            if got_type != want["data_type"]:
                report.add(m.file, line, f"{section} {t.name!r} has data_type {got_type}, NVIDIA's {m.kind} uses "
                           f"{want['data_type']}", f"set data_type: {want['data_type']}")
            if list(t.dims) != want["dims"]:
                report.add(m.file, line, f"{section} {t.name!r} has dims {list(t.dims)}, NVIDIA's {m.kind} uses "
                           f"{want['dims']}", f"set dims: {want['dims']}")
            if section == "input" and bool(t.optional) != bool(want.get("optional")):
                report.add(m.file, line, f"input {t.name!r} optional is {str(t.optional).lower()}, NVIDIA's {m.kind} "
                           f"has {str(bool(want.get('optional'))).lower()}",
                           "make it match; a required input that clients do not send fails every request")


def _unfilled(m: Model, key: str, v: str, line: Optional[int], report: Report) -> None:
    """A parameter left as fill_template.py's placeholder or empty: what the model that reads it does with that."""
    verdict, why = placeholder_verdict(m.kind, key)
    shown = f"left as placeholder {v!r}" if v else "left empty"
    if verdict == "unset":
        report.add(m.file, line, f"optional parameter {key!r} {shown}: the model reads it as unset ({why})",
                   "nothing to do, or set a value / remove the parameter", Severity.note)
    elif verdict == "required":
        report.add(m.file, line, f"parameter {key!r} of {m.name} is {'still the template placeholder ' + repr(v) if v else 'empty'}; "
                   f"the deployment needs it: {why}", f"fill it (e.g. fill_template.py {m.name}/config.pbtxt {key}:PATH), "
                   "or re-render with `tritongen render`")
    else:
        report.add(m.file, line, f"parameter {key!r} of {m.name} is {shown}, and the model uses that text itself: {why}",
                   "set a real value, or remove the parameter to leave it unset")


def check_parameters(m: Model, report: Report) -> None:
    facts = reference_facts()["models"].get(m.kind)
    known = set(facts["parameters"]) | set(EXTRA_PARAMETERS.get(m.kind, ())) if facts else None
    for key, value in m.params.items():
        line = m.text.parameter(key)
        if known is not None and key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "the model ignores it"
            report.add(m.file, line, f"unknown parameter {key!r} for {m.name} ({hint})",
                       f"rename it to {close[0]!r}" if close else "remove it")
        v = value.strip()
        if "${" in v or v == "":
            _unfilled(m, key, v, line, report)
            continue
        if key in _INT_PARAMS:
            if count_value(v) is None:  # 5,000 digits were a ValueError from int() (review19)
                report.add(m.file, line, f"parameter {key!r} must be a non-negative integer, got {value!r}",
                           "write a whole number")
        elif key in _FRACTION_PARAMS:
            try:
                f = float(v)
            except ValueError:
                f = None
            if f is None or not 0.0 < f <= 1.0:
                report.add(m.file, line, f"parameter {key!r} must be a fraction in (0, 1], got {value!r}",
                           f"e.g. 0.9 (spec: serving.{key})" if key == "kv_cache_free_gpu_mem_fraction" else "e.g. 0.5")
        elif key in _BOOL_PARAMS and v.lower() not in _BOOL_WORDS:
            report.add(m.file, line, f"parameter {key!r} must be true or false, got {value!r}", "write true or false")
        elif key in _ENUM_PARAMS and v not in _ENUM_PARAMS[key]:
            report.add(m.file, line, f"parameter {key!r} is {value!r}; allowed: {', '.join(_ENUM_PARAMS[key])}",
                       "pick one of the allowed values")


def check_model(m: Model, report: Report) -> None:
    cfg = m.config
    if cfg.name and cfg.name != m.name:
        report.add(m.file, m.text.field("name"), f"name is {cfg.name!r} but the folder is {m.name!r}",
                   f'set name: "{m.name}" (Triton requires them to match)')
    if cfg.platform and cfg.backend:  # review19: validate passed it, and Triton refused to load the repository
        report.add(m.file, m.text.field("platform"), f"both platform {cfg.platform!r} and backend {cfg.backend!r}: Triton "
                   "loads a model by one of them (an ensemble has no backend) and refuses this pair",
                   'keep platform: "ensemble" for the ensemble, backend: "python" or "tensorrtllm" for the others')
    elif cfg.platform != "ensemble" and cfg.backend not in KNOWN_BACKENDS:
        what = f"backend {cfg.backend!r}" if cfg.backend else "no backend"
        report.add(m.file, m.text.field("backend") or m.text.field("platform"),
                   f"{what}; this layout uses {' or '.join(KNOWN_BACKENDS)}", 'set backend: "python" or "tensorrtllm"')
    versions = sorted(p for p in m.dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        report.add(m.dir / "1", None, f"{m.name} has no version folder", f"create {m.dir / '1'}")
    elif cfg.backend == "python" and not (versions[-1] / "model.py").is_file():
        report.add(versions[-1] / "model.py", None, f"Python model {m.name} has no {versions[-1].name}/model.py",
                   "re-render (it is copied from tritongen's model_repo/)")
    if cfg.max_batch_size < 0:
        report.add(m.file, m.text.field("max_batch_size"), "max_batch_size is negative", "use the engine's batch size")
    db = cfg.dynamic_batching
    if cfg.HasField("dynamic_batching") and any(b > cfg.max_batch_size for b in db.preferred_batch_size):
        report.add(m.file, m.text.field("preferred_batch_size"),
                   f"preferred_batch_size {list(db.preferred_batch_size)} exceeds max_batch_size {cfg.max_batch_size}",
                   "use max_batch_size as the preferred size")
    for ig in cfg.instance_group:
        if ig.count < 1:
            report.add(m.file, m.text.field("instance_group"), f"instance_group count is {ig.count}", "use 1 or more")
    check_interface(m, report)
    check_parameters(m, report)
