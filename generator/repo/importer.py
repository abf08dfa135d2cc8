"""``tritongen import``: a spec derived from a repository that tritongen did not write.

Each value comes from the place that decides it at run time: the engine's config.json for build
limits, parallelism and quantization (``generator.engine.facts``); the configs for Triton batch sizes,
decoupling, instances, queue and KV-cache parameters; ``model.yaml`` for the LLM-API target (the spec
→ model.yaml mapping of ``generator.repo.llmapi`` read backwards). What cannot be known from the
files is listed, never guessed silently. Pure: reads files, writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, Field

from generator.engine.facts import KV_ALGOS, QUANT_ALGOS, read_engine_if_built, runtime_limits
from generator.errors import ArtifactCorrupt, ArtifactMissing, TritongenError
from generator.repo.meaning import ModelMeaning, RepoMeaning, read_meaning
from generator.repo.problems import count_value

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

# tensorrt_llm parameter -> (spec field, converter); values the backend reads straight into the spec.
_TRT_PARAMETERS: dict[str, tuple[str, Any]] = {
    "gpt_model_type": ("serving.batching_strategy", str),
    "batch_scheduler_policy": ("serving.batch_scheduler_policy", str),
    "kv_cache_free_gpu_mem_fraction": ("serving.kv_cache_free_gpu_mem_fraction", float),
    "max_tokens_in_paged_kv_cache": ("serving.max_tokens_in_paged_kv_cache", int),
    "enable_kv_cache_reuse": ("serving.enable_kv_cache_reuse", "bool"),
    "enable_chunked_context": ("serving.enable_chunked_context", "bool"),
    "exclude_input_in_output": ("serving.exclude_input_in_output", "bool"),
    "max_beam_width": ("build.max_beam_width", int),
}
# CPU reference engine only: its limits travel as parameters (no engine file).
_CPU_PARAMETERS: dict[str, tuple[str, Any]] = {
    "tokens_per_block": ("build.tokens_per_block", int),
    "max_num_tokens": ("build.max_num_tokens", int),
    "max_input_len": ("build.max_input_len", int),
    "max_seq_len": ("build.max_seq_len", int),
    "cpu_kv_cache_mib": ("serving.cpu_kv_cache_mib", int),
    "cpu_threads": ("serving.cpu_threads", int),
    "dtype": ("serving.cpu_dtype", str),
}


class ImportResult(BaseModel):
    """The derived spec (as YAML-ready data), what could not be inferred, and what disagrees."""

    spec: dict[str, Any]
    not_inferred: list[str] = Field(default_factory=list)
    """Spec fields left at tritongen's defaults because nothing in the repository says them."""
    inconsistencies: list[str] = Field(default_factory=list)
    """Places where the repository contradicts itself; the spec follows the first source named."""
    held_back: list[str] = Field(default_factory=list)
    """Values found that the spec carries only when asked: folders the repository names, and
    ``trust_remote_code`` (which lets later commands run the checkpoint's own Python)."""


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _convert(raw: str, kind: Any, where: str, result: ImportResult) -> Any:
    try:
        if kind == "bool":
            return _BOOL[raw.strip().lower()]
        return kind(raw.strip())
    except (KeyError, ValueError):
        result.inconsistencies.append(f"{where} = {raw!r} cannot be read; left at tritongen's default")
        return None


def _from_parameters(trt: ModelMeaning, table: dict[str, tuple[str, Any]], spec: dict[str, Any],
                     result: ImportResult) -> None:
    for key, (field, kind) in table.items():
        if key in trt.parameters:
            value = _convert(trt.parameters[key], kind, f"tensorrt_llm parameter {key}", result)
            if value is not None:
                _set(spec, field, value)


def _weights(meaning: RepoMeaning, spec: dict[str, Any], result: ImportResult) -> Optional[Path]:
    """The served weights / tokenizer folder: the checkpoint tritongen would serve (source unknown)."""
    dirs = {name: m.parameters["tokenizer_dir"] for name, m in meaning.models.items() if "tokenizer_dir" in m.parameters}
    if not dirs:
        result.not_inferred.append("model.source and artifacts.checkpoint_dir: no model names a tokenizer_dir")
        return None
    first = next(iter(dirs.values()))
    for name, path in dirs.items():
        if path != first:
            result.inconsistencies.append(f"{name} tokenizer_dir {path!r} differs from {first!r}; the spec uses the latter")
    _set(spec, "model.source", first)
    _set(spec, "artifacts.checkpoint_dir", first)
    result.not_inferred.append("model.source: the original Hugging Face model is not recorded; the tokenizer folder "
                               "(the served checkpoint) stands in for it")
    return Path(first)


def _engine(meaning: RepoMeaning, trt: ModelMeaning, spec: dict[str, Any], result: ImportResult,
            prompt_limit: Optional[int]) -> None:
    path = trt.parameters.get("gpt_model_path")
    if not path:
        result.not_inferred.append("artifacts.engine_dir: tensorrt_llm has no gpt_model_path")
        return
    _set(spec, "artifacts.engine_dir", path)
    try:
        facts = read_engine_if_built(Path(path))
    except TritongenError as exc:
        result.inconsistencies.append(f"engine {path}: {exc.message}")
        facts = None
    if facts is None:
        result.not_inferred.append(f"build limits, parallelism and quantization: no engine config.json in {path} "
                                   "(pass the engine folder, or set them with --set)")
        return
    for field, value in (("build.max_batch_size", facts.max_batch_size), ("build.max_seq_len", facts.max_seq_len),
                         ("build.max_beam_width", facts.max_beam_width), ("build.tokens_per_block", facts.tokens_per_block),
                         ("build.tp_size", facts.tp_size), ("build.pp_size", facts.pp_size), ("build.dtype", facts.dtype),
                         ("build.kv_cache_type", facts.kv_cache_type.lower())):
        _set(spec, field, value)
    if facts.max_num_tokens is not None:
        _set(spec, "build.max_num_tokens", facts.max_num_tokens)
    fmt = next((f.value for f, algos in QUANT_ALGOS.items() if facts.quant_algo in algos), None)
    kv = next((k.value for k, algos in KV_ALGOS.items() if facts.kv_cache_quant_algo in algos), None)
    if fmt is None or kv is None:
        result.inconsistencies.append(f"engine quant_algo {facts.quant_algo!r} / kv_cache_quant_algo "
                                      f"{facts.kv_cache_quant_algo!r} is no format tritongen makes")
    else:
        _set(spec, "quantization.format", fmt)
        _set(spec, "quantization.kv_cache", kv)
    chunked = _BOOL.get(trt.parameters.get("enable_chunked_context", "false").lower(), False)
    limits = runtime_limits(facts, chunked_context=chunked)
    if prompt_limit is None:
        _set(spec, "build.max_input_len", limits.max_input_len)
        result.not_inferred.append(f"build.max_input_len: taken as the limit the runtime enforces ({limits.max_input_len}, "
                                   f"{limits.max_input_len_rule}), not config.json's recorded value")
    elif prompt_limit != limits.max_input_len:
        result.not_inferred.append(f"build.max_input_len: preprocessing's max_input_len ({prompt_limit}), the prompt "
                                   f"limit the repository enforces; the engine's runtime would take {limits.max_input_len} "
                                   f"({limits.max_input_len_rule})")
    result.not_inferred.append("build.gpu: an engine does not record the GPU it was built for")


def _ifb(meaning: RepoMeaning, spec: dict[str, Any], result: ImportResult) -> None:
    trt = meaning.models.get("tensorrt_llm")
    if trt is None:
        raise ArtifactCorrupt("no tensorrt_llm model (inflight_batcher_llm layout expected)", where="tensorrt_llm/config.pbtxt",
                             fix="point tritongen import at the folder that holds ensemble/, preprocessing/, tensorrt_llm/ …")
    pre = meaning.models.get("preprocessing")
    prompt_limit = count_value(pre.parameters.get("max_input_len")) if pre is not None else None  # render wrote it
    cpu = trt.backend == "python"
    _set(spec, "serving.engine", "cpu-reference" if cpu else "tensorrtllm")
    _set(spec, "serving.max_batch_size", trt.max_batch_size)
    _set(spec, "serving.decoupled", trt.decoupled)
    _set(spec, "serving.max_queue_delay_microseconds", trt.max_queue_delay_microseconds)
    _set(spec, "serving.max_queue_size", trt.max_queue_size)
    _from_parameters(trt, _TRT_PARAMETERS, spec, result)
    if cpu:
        _from_parameters(trt, _CPU_PARAMETERS, spec, result)
        _set(spec, "build.max_batch_size", trt.max_batch_size)
    else:
        _engine(meaning, trt, spec, result, prompt_limit)
    for name, field in (("preprocessing", "serving.preprocessing_instances"),
                        ("postprocessing", "serving.postprocessing_instances"), ("tensorrt_llm_bls", "serving.bls_instances")):
        model = meaning.models.get(name)
        if model is not None and model.instances:
            _set(spec, field, sum(count for _, count in model.instances))
    if prompt_limit is not None:
        _set(spec, "build.max_input_len", prompt_limit)
    bls = meaning.models.get("tensorrt_llm_bls")
    _set(spec, "serving.bls", bls is not None)
    if bls is not None and "accumulate_tokens" in bls.parameters:
        _set(spec, "serving.accumulate_tokens", _BOOL.get(bls.parameters["accumulate_tokens"].lower(), False))
    post = meaning.models.get("postprocessing")
    if post is not None and "skip_special_tokens" in post.parameters:
        _set(spec, "serving.skip_special_tokens", _BOOL.get(post.parameters["skip_special_tokens"].lower(), True))
    for name, m in meaning.models.items():
        if m.max_batch_size != trt.max_batch_size:
            result.inconsistencies.append(f"{name} max_batch_size {m.max_batch_size} differs from tensorrt_llm's "
                                          f"{trt.max_batch_size}; the spec uses tensorrt_llm's")


def _llmapi(meaning: RepoMeaning, spec: dict[str, Any], result: ImportResult) -> None:
    from generator.repo.llmapi import llmapi_mapping
    from generator.spec import Spec

    _set(spec, "serving.engine", "llmapi")
    yaml_doc = meaning.llmapi
    if "model" in yaml_doc:
        _set(spec, "model.source", str(yaml_doc["model"]))
        _set(spec, "artifacts.checkpoint_dir", str(yaml_doc["model"]))
    readers = {"scheduler_config.capacity_scheduler_policy": lambda v: str(v).lower(),
               "kv_cache_config.dtype": lambda v: "fp8" if str(v).lower() == "fp8" else "none"}
    for row in llmapi_mapping(Spec()):
        field = row.spec_field
        if field.startswith(("spec.", "(")) or row.key.startswith(("(", "-")) or row.key not in yaml_doc:
            continue
        if field in ("serving.max_batch_size", "serving.engine"):
            continue  # Triton's own batch size comes from max_batch_size; backend: pytorch is the target itself
        _set(spec, field, readers.get(row.key, lambda v: v)(yaml_doc[row.key]))
    if "max_batch_size" in yaml_doc:
        _set(spec, "serving.max_batch_size", yaml_doc["max_batch_size"])
    front = meaning.models.get("tensorrt_llm")
    if front is not None:
        _set(spec, "serving.decoupled", front.decoupled)
    result.not_inferred.append("quantization: read from the checkpoint's hf_quant_config.json at run time, not from model.yaml")


PATH_FIELDS = ("model.source", "artifacts.checkpoint_dir", "artifacts.engine_dir")
"""Spec fields import fills with folders named by the repository's files."""


def _pop(tree: dict[str, Any], dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p, {})
    return tree.pop(leaf, None)


def _hold_back(spec: dict[str, Any], result: ImportResult, *, trust_remote_code: bool, keep_paths: bool) -> None:
    """Keep out of the spec what a foreign repository must not decide on its own, and say so."""
    if not keep_paths:
        for field in PATH_FIELDS:
            value = _pop(spec, field)
            if value is not None:
                result.held_back.append(f"{field} = {str(value)!r}: a folder the repository names; "
                                        "pass --keep-paths to use it")
    if not trust_remote_code and _pop(spec, "model.trust_remote_code"):
        result.held_back.append("model.trust_remote_code = true: later commands (quantize, serve) would run the "
                                "checkpoint's own Python code; review it, then pass --trust-remote-code")


def import_repository(repo: Path, *, trust_remote_code: bool = False, keep_paths: bool = False) -> ImportResult:
    """The spec a repository implies, with what is unknown and what contradicts itself. Folders the repository
    names and ``trust_remote_code`` are held back (reported) unless ``keep_paths`` / ``trust_remote_code``."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ArtifactMissing("repository folder does not exist", where=str(repo), fix="pass the model repository folder")
    meaning = read_meaning(repo)
    if not meaning.models:
        raise ArtifactCorrupt("no model folder with a config.pbtxt that parses", where=str(repo),
                             fix=f"run `tritongen validate {repo}` to see why, then import again")
    for needed in (repo / "tensorrt_llm" / "config.pbtxt", repo / "tensorrt_llm" / "1" / "model.yaml"):
        if str(needed) in meaning.unreadable:  # the spec would follow a guess (an empty model.yaml: a CPU engine)
            raise ArtifactCorrupt(f"{needed.relative_to(repo).as_posix()} does not parse as the settings the spec is "
                                  "derived from", where=str(needed),
                                  fix=f"run `tritongen validate {repo}` to see why, then import again")
    result = ImportResult(spec={})
    spec: dict[str, Any] = {}
    _weights(meaning, spec, result)
    if meaning.llmapi:
        _llmapi(meaning, spec, result)
    else:
        _ifb(meaning, spec, result)
    for path in meaning.unreadable:
        result.inconsistencies.append(f"{path} does not parse; its settings are not imported")
    _hold_back(spec, result, trust_remote_code=trust_remote_code, keep_paths=keep_paths)
    result.spec = spec
    return result
