"""The GPU path as a new user runs it, through the real CLI: init → build → render → validate --strict.

trtllm-build and quantize.py are the stand-ins of tests/fake_bin (TensorRT-LLM cannot be installed here); they
write what TensorRT-LLM 1.2.1 writes (generator/data/trtllm_engine_1.2.1.json). `tritongen quantize` needs the
real weights, so its output folder (tokenizer, config.json, hf_quant_config.json) is written by
helpers.write_quantized_checkpoint. The model is Qwen3-8B's own config.json in a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.engine.gpus import GPUS
from generator.spec import load_spec
from generator.spec.load import apply_overrides
from helpers import local_model, write_quantized_checkpoint

runner = CliRunner()

# The format each GPU generation is built with in these tests (the KV cache each can hold).
FORMATS = {80: [("int8_sq", "int8"), ("none", "none")], 89: [("fp8", "fp8")], 90: [("fp8", "fp8")],
           100: [("nvfp4", "fp8")], 120: [("nvfp4", "fp8")]}


def cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "300"})
    assert result.exit_code == code, f"tritongen {' '.join(args)} exited {result.exit_code}:\n{result.output}"
    return result.output


def init_project(tmp_path: Path, model_config: Path, tokenizer_dir: Path, *sets: str) -> Path:
    """`tritongen init spec.yaml`, then model.source pointed at a local Qwen3-8B folder (and ``sets``)."""
    spec_path = tmp_path / "spec.yaml"
    cli("init", str(spec_path))
    model = local_model(tmp_path / "Qwen3-8B", model_config, tokenizer_dir)
    data = apply_overrides(yaml.safe_load(spec_path.read_text()), [f"model.source={model}", *sets])
    spec_path.write_text(yaml.safe_dump(data))
    return spec_path


def test_issue_13_sequence_build_then_validate_agree(gpu_host, tmp_path, qwen3_8b_config, tokenizer_weights_dir):
    """The reported sequence: build said the engine matches, validate said max_input_len 1024 vs 4096."""
    gpu_host(120)
    spec_path = init_project(tmp_path, qwen3_8b_config, tokenizer_weights_dir)
    assert "matches the spec" in cli("build", str(spec_path))
    engine = json.loads((load_spec(spec_path).engine_dir / "config.json").read_text())
    assert engine["build_config"]["max_input_len"] == 1024  # trtllm-build's default: the plan leaves the flag out
    cli("render", str(spec_path), "-o", str(tmp_path / "repo"), "--set", "serving.engine=tensorrtllm")
    out = cli("validate", str(tmp_path / "repo"))
    assert "max_input_len" not in out and "0 error(s), 1 warning(s)" in out and "tritongen quantize" in out


@pytest.mark.parametrize("gpu, fmt, kv", [(g.key, f, kv) for g in GPUS for f, kv in FORMATS[g.sm]])
def test_golden_path_per_gpu(gpu_host, tmp_path, qwen3_8b_config, tokenizer_weights_dir, gpu, fmt, kv):
    sets = [f"build.gpu={gpu}", f"quantization.format={fmt}", f"quantization.kv_cache={kv}"]
    spec_path = init_project(tmp_path, qwen3_8b_config, tokenizer_weights_dir, *sets)
    spec = load_spec(spec_path)
    gpu_host(next(g.sm for g in GPUS if g.key == gpu))
    cli("build", str(spec_path))
    if spec.quantization.quantizes_anything:
        write_quantized_checkpoint(spec)
    cli("render", str(spec_path), "-o", str(tmp_path / "repo"), "--set", "serving.engine=tensorrtllm")
    assert "no problems found" in cli("validate", str(tmp_path / "repo"), "--strict")


def test_golden_path_tensor_parallel(gpu_host, tmp_path, qwen3_8b_config, tokenizer_weights_dir):
    spec_path = init_project(tmp_path, qwen3_8b_config, tokenizer_weights_dir, "build.gpu=h100-sxm",
                             "quantization.format=fp8", "build.tp_size=2", "topology.gpus_per_node=2")
    spec = load_spec(spec_path)
    gpu_host(90)
    cli("build", str(spec_path))
    assert sorted(p.name for p in spec.engine_dir.glob("rank*.engine")) == ["rank0.engine", "rank1.engine"]
    write_quantized_checkpoint(spec)
    cli("render", str(spec_path), "-o", str(tmp_path / "repo"), "--set", "serving.engine=tensorrtllm")
    assert "no problems found" in cli("validate", str(tmp_path / "repo"), "--strict")


def test_golden_path_llmapi_from_the_same_spec(gpu_host, tmp_path, qwen3_8b_config, tokenizer_weights_dir):
    """The same spec rendered for the LLM-API backend (its CPU stand-in here: NVIDIA's model.py needs a GPU)."""
    spec_path = init_project(tmp_path, qwen3_8b_config, tokenizer_weights_dir)
    gpu_host(120)
    cli("build", str(spec_path))
    write_quantized_checkpoint(load_spec(spec_path))
    cli("render", str(spec_path), "-o", str(tmp_path / "repo"), "--set", "serving.engine=tensorrtllm")
    cli("render", str(spec_path), "-o", str(tmp_path / "repo-llmapi"), "--set", "serving.engine=llmapi", "--no-gpu")
    for repo in ("repo", "repo-llmapi"):
        assert "no problems found" in cli("validate", str(tmp_path / repo), "--strict")
