"""Validate's engine family: the engine a ``tensorrt_llm`` model names, against its config and the spec.

The engine is read by generator.engine.facts and compared with the spec by generator.engine.compare, the
comparison ``tritongen build`` and ``tritongen render`` run, so validate reports exactly what build would.
Problems about what the engine records point at its ``config.json``; problems about what the repository
asks of it (batch size, beam width, KV-cache cap, parameters edited by hand) point at the line of
``tensorrt_llm/config.pbtxt``. Reads files only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from generator.engine.compare import compare_engine
from generator.engine.facts import EngineFacts, read_engine
from generator.engine.gpus import lookup_gpu
from generator.engine.memory import memory_plan
from generator.engine.rules import RERENDER, batch_fits_engine, kv_cap_fits
from generator.engine.shape import model_shape, read_model_config
from generator.errors import TritongenError
from generator.repo.problems import ConfigText, Problem, count_value, not_built
from generator.spec import Spec

_PATHS = ("gpt_model_path", "tokenizer_dir", "executor_worker_path")
"""Parameters that hold paths: checked where they lead (engine, tokenizer), not against the spec's text."""


def engine_problems(file: str, text: ConfigText, params: dict[str, str], triton_max_batch_size: int,
                    spec: Optional[Spec], rendered: dict[str, str]) -> list[Problem]:
    """Every problem of the C++ ``tensorrt_llm`` model's engine; ``rendered`` is what render writes as its
    parameters for ``spec`` (empty without a spec)."""
    problems = [Problem(file, text.parameter(key), f"parameter {key} is {params.get(key)!r} but the spec renders "
                        f"{want!r}", f"re-render ({RERENDER}), or change the spec to match")
                for key, want in rendered.items() if key not in _PATHS and params.get(key) != want]
    path_text = params.get("gpt_model_path", "")
    line = text.parameter("gpt_model_path")
    if not path_text:
        return problems + [Problem(file, text.field("parameters"), "tensorrt_llm has no gpt_model_path parameter",
                                   "re-render; it names the engine folder")]
    if not Path(path_text).exists():  # built later, usually on the GPU host
        return problems + [not_built(file, line, f"engine folder {path_text!r} does not exist", "tritongen build SPEC")]
    if not (Path(path_text) / "config.json").is_file():
        return problems + [Problem(file, line, f"engine folder {path_text!r} has no config.json (not a trtllm-build "
                                   "output)", "rebuild with `tritongen build SPEC --force`, or fix artifacts.engine_dir")]
    try:
        engine = read_engine(Path(path_text))
    except TritongenError as exc:
        return problems + [Problem(exc.where or file, None if exc.where else line, exc.message, exc.fix or "")]
    problems += _repository_vs_engine(file, text, params, triton_max_batch_size, engine)
    if spec is not None:
        problems += [Problem(engine.config_path, None, c.message, c.fix) for c in compare_engine(spec, engine) if not c.ok]
        problems += _kv_cap_problems(file, text, params, spec)
    return problems


def _repository_vs_engine(file: str, text: ConfigText, params: dict[str, str], mbs: int,
                          engine: EngineFacts) -> list[Problem]:
    """What the config asks of the engine at load (rule "runtime_batch_and_beam")."""
    problems = [Problem(file, text.field("max_batch_size"), f.message, f.fix)
                for f in batch_fits_engine(mbs, engine.max_batch_size, engine.config_path)]
    beam = count_value(params.get("max_beam_width", "1"))
    if beam is not None and beam > engine.max_beam_width:
        problems.append(Problem(file, text.parameter("max_beam_width"), f"max_beam_width {beam} exceeds the engine's "
                                f"{engine.max_beam_width}", f"re-render ({RERENDER}), or rebuild the engine with build.max_beam_width={beam}"))
    if engine.tp_size * engine.pp_size != engine.world_size:
        problems.append(Problem(engine.config_path, None, f"engine mapping tp_size {engine.tp_size} x pp_size "
                                f"{engine.pp_size} = {engine.tp_size * engine.pp_size} but world_size is "
                                f"{engine.world_size}", "rebuild the engine; the checkpoint's mapping is inconsistent"))
    return problems


def _kv_cap_problems(file: str, text: ConfigText, params: dict[str, str], spec: Spec) -> list[Problem]:
    """max_tokens_in_paged_kv_cache above what the GPU holds after the weights (rule "kv_capacity")."""
    value = params.get("max_tokens_in_paged_kv_cache", "")
    if not re.fullmatch(r"\d+", value):
        return []
    try:
        config, _ = read_model_config(spec)
        gpu = lookup_gpu(spec.build.gpu)
        memory = memory_plan(spec, model_shape(config), gpu)
    except TritongenError:
        return []  # no model config here: the cap is not compared
    return [Problem(file, text.parameter("max_tokens_in_paged_kv_cache"), f.message, f.fix)
            for f in kv_cap_fits(int(value), memory, gpu.name)]
