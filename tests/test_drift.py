"""The drift corpus: changes users really make after a clean deployment, each caught by validate at the file
that holds the fault, with a fix that, applied as written, makes `validate --strict` clean again.

Every case starts from the golden state (engine built by the trtllm-build stand-in, checkpoint, a rendered
tensorrt_llm repository and an LLM-API one, both clean), applies one mutation, checks where and what validate
reports, then applies the reported fix: a `--set` it names (then re-render), a rebuild, a re-quantize or a
re-render, whichever the fix text says first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from generator.errors import TritongenError
from generator.repo.problems import failing
from generator.repo.render import render_repository
from generator.repo.validate import validate_repository
from generator.spec import load_spec, with_overrides
from helpers import local_model, write_quantized_checkpoint


@dataclass
class Deployment:
    tmp: Path
    spec: object
    build: Callable
    repo: Path = field(init=False)
    llmapi_repo: Path = field(init=False)

    def __post_init__(self):
        self.repo, self.llmapi_repo = self.tmp / "repo", self.tmp / "repo-llmapi"

    @property
    def engine_config(self) -> Path:
        return self.spec.engine_dir / "config.json"

    @property
    def trt_config(self) -> Path:
        return self.repo / "tensorrt_llm" / "config.pbtxt"

    @property
    def model_yaml(self) -> Path:
        return self.llmapi_repo / "tensorrt_llm" / "1" / "model.yaml"

    def render(self, llmapi: bool = False) -> None:
        target = "serving.engine=llmapi" if llmapi else "serving.engine=tensorrtllm"
        render_repository(with_overrides(self.spec, [target]), self.llmapi_repo if llmapi else self.repo, force=True)

    def rebuild(self, *overrides: str, **env: str) -> None:
        """Build the engine again, from the spec or (a user's other build) from the spec with ``overrides``."""
        self.build(with_overrides(self.spec, list(overrides)) if overrides else self.spec, **env)

    def edit(self, path: Path, old: str, new: str) -> None:
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new, 1))


@pytest.fixture
def deployed(tmp_path, build_engine, qwen3_8b_config, tokenizer_weights_dir) -> Deployment:
    model = local_model(tmp_path / "Qwen3-8B", qwen3_8b_config, tokenizer_weights_dir)
    spec = load_spec(None, [f"model.source={model}", f"artifacts.dir={tmp_path / 'out'}", "serving.engine=tensorrtllm",
                            "topology.gpus_per_node=4"])  # a 4-GPU host: the tp cases fit on it
    d = Deployment(tmp_path, spec, build_engine)
    d.rebuild()
    write_quantized_checkpoint(spec)
    d.render()
    d.render(llmapi=True)
    for repo in (d.repo, d.llmapi_repo):
        assert validate_repository(repo) == [], repo
    return d


def _built_elsewhere(d: Deployment, **env: str) -> None:
    """A build whose engine `tritongen build` already refused; the user serves it anyway."""
    with pytest.raises(TritongenError, match="does not match the spec"):
        d.rebuild(**env)


@dataclass
class Case:
    mutate: Callable[[Deployment], None]
    where: Callable[[Deployment], Path]
    says: str
    fix: str
    """The kind of fix the problem must name: set, rebuild, requantize or rerender."""
    llmapi: bool = False


CASES = {
    "engine built with another batch size": Case(
        lambda d: d.rebuild("build.max_batch_size=16"), lambda d: d.engine_config,
        "build_config.max_batch_size is 16, the spec wants 32", "set"),
    "triton batch size above the engine's": Case(
        lambda d: d.rebuild("build.max_batch_size=16"), lambda d: d.trt_config,
        "max_batch_size 32 exceeds the engine's 16", "set"),
    "engine built with another sequence length": Case(
        lambda d: d.rebuild("build.max_output_len=256"), lambda d: d.engine_config,
        "build_config.max_seq_len is 4352, the spec wants 4608", "rebuild"),
    "engine built with another tokens per block": Case(
        lambda d: d.rebuild("build.tokens_per_block=32"), lambda d: d.engine_config,
        "tokens_per_block is 32, the spec wants 64", "set"),
    "engine built with fewer tokens per step": Case(
        lambda d: d.rebuild("build.max_num_tokens=2048", "serving.enable_chunked_context=true"), lambda d: d.engine_config,
        "runtime max_input_len is 2048, the spec wants at least 4096", "rebuild"),
    "engine built with another KV-cache dtype": Case(
        lambda d: d.rebuild("quantization.kv_cache=none"), lambda d: d.engine_config,
        "kv_cache_quant_algo is None, the spec wants 'FP8'", "rebuild"),
    "engine built from a checkpoint of another format": Case(
        lambda d: d.rebuild("quantization.format=fp8"), lambda d: d.engine_config,
        "quant_algo is 'FP8', the spec wants 'NVFP4'", "rebuild"),
    "engine built for tensor parallelism 2": Case(
        lambda d: d.rebuild("build.tp_size=2"), lambda d: d.engine_config,
        "mapping.tp_size is 2, the spec wants 1", "set"),
    "engine built in another dtype": Case(
        lambda d: d.rebuild("build.dtype=float16"), lambda d: d.engine_config,
        "pretrained_config.dtype is 'float16', the spec wants 'bfloat16'", "set"),
    "engine built by another TensorRT-LLM version": Case(
        lambda d: _built_elsewhere(d, FAKE_TRTLLM_VERSION="1.1.0"), lambda d: d.engine_config,
        "version is '1.1.0', the spec wants '1.2.1'", "rebuild"),
    "engine folder copied without its rank file": Case(
        lambda d: (d.spec.engine_dir / "rank0.engine").unlink(), lambda d: d.engine_config,
        "rank*.engine files is 0", "rebuild"),
    "engine config.json truncated by a copy": Case(
        lambda d: d.engine_config.write_text(d.engine_config.read_text()[:200]), lambda d: d.engine_config,
        "not valid JSON", "rebuild"),
    "KV-cache cap larger than the GPU can hold": Case(
        lambda d: (setattr(d, "spec", with_overrides(d.spec, ["serving.max_tokens_in_paged_kv_cache=10000000"])),
                   d.render()),
        lambda d: d.trt_config, "max_tokens_in_paged_kv_cache=10000000 is more KV cache than one NVIDIA GeForce RTX 5090 holds", "set"),
    "config.pbtxt max_batch_size raised by hand": Case(
        lambda d: d.edit(d.trt_config, "max_batch_size: 32", "max_batch_size: 64"), lambda d: d.trt_config,
        "max_batch_size 64 exceeds the engine's 32", "set"),
    "config.pbtxt beam width raised by hand": Case(
        lambda d: d.edit(d.trt_config, 'key: "max_beam_width" value { string_value: "1"',
                                'key: "max_beam_width" value { string_value: "2"'),
        lambda d: d.trt_config, "max_beam_width 2 exceeds the engine's 1", "rerender"),
    "config.pbtxt chunked context switched on by hand": Case(
        lambda d: d.edit(d.trt_config, 'key: "enable_chunked_context" value { string_value: "false"',
                         'key: "enable_chunked_context" value { string_value: "true"'),
        lambda d: d.trt_config, "parameter enable_chunked_context is 'true' but the spec renders 'false'", "rerender"),
    "LLM-API checkpoint of another format": Case(
        lambda d: write_quantized_checkpoint(d.spec, quant_algo="FP8"),
        lambda d: d.spec.checkpoint_dir / "hf_quant_config.json", "quant_algo is 'FP8'", "requantize", llmapi=True),
    "LLM-API model.yaml limit edited by hand": Case(
        lambda d: d.edit(d.model_yaml, "max_num_tokens: 8192", "max_num_tokens: 2048"), lambda d: d.model_yaml,
        "max_num_tokens=2048 but the spec gives 8192", "rerender", llmapi=True),
    "LLM-API tensor parallelism that does not split the checkpoint's heads": Case(
        lambda d: d.edit(d.model_yaml, "tensor_parallel_size: 1", "tensor_parallel_size: 3"), lambda d: d.model_yaml,
        "tensor_parallel_size 3 does not split the checkpoint's 32 attention heads", "rerender", llmapi=True),
}


def _apply(d: Deployment, fix: str, kind: str, llmapi: bool) -> None:
    sets = [s.rstrip(".,;)") for s in re.findall(r"--set (\S+=\S+)", fix)]
    if kind == "set":
        assert sets, fix
        d.spec = with_overrides(d.spec, sets)
    elif kind == "rebuild":
        assert "tritongen build" in fix, fix
        d.rebuild()
    elif kind == "requantize":
        assert "re-quantize" in fix, fix
        write_quantized_checkpoint(d.spec)
    else:
        assert "re-render" in fix or "tritongen render" in fix, fix
    d.render(llmapi=llmapi)


@pytest.mark.parametrize("name", CASES)
def test_drift_is_caught_at_its_file_and_the_fix_works(deployed, name):
    case = CASES[name]
    case.mutate(deployed)
    repo = deployed.llmapi_repo if case.llmapi else deployed.repo
    problems = validate_repository(repo)
    where = str(case.where(deployed))
    hits = [p for p in problems if p.file == where and case.says in p.message]
    assert hits, f"nothing at {where} says {case.says!r}; got:\n" + "\n".join(f"{p.file}: {p.message}" for p in problems)
    assert all(p.severity == "error" for p in hits)
    _apply(deployed, hits[0].fix, case.fix, case.llmapi)
    assert failing(validate_repository(repo), strict=True) == [], f"fix {hits[0].fix!r} did not make {repo} clean"


def test_corpus_is_large_enough():
    assert len(CASES) >= 15


def test_build_render_and_validate_run_one_comparison(deployed):
    """An engine the spec does not describe: build refuses it, render refuses it, validate reports it, same words."""
    other = with_overrides(deployed.spec, ["build.max_batch_size=8"])
    with pytest.raises(TritongenError) as built:
        deployed.build(other, FAKE_TRTLLM_OVERRIDES=json.dumps({"build_config": {"max_batch_size": 32}}))
    with pytest.raises(TritongenError) as rendered:
        render_repository(other, deployed.tmp / "repo-other")
    said = "build_config.max_batch_size is 32, the spec wants 8"
    assert said in built.value.message and said in rendered.value.message
    validated = validate_repository(deployed.repo, spec=other)
    assert [p.message for p in validated if p.file == str(deployed.engine_config)] == [said]
