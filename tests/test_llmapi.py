"""The LLM-API target: spec mapping onto model.yaml, rendered files, validation, refusals (fast, no server)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.repo import llmapi
from generator.cli import app
from generator.errors import TritongenError
from generator.repo.render import render_repository
from generator.spec import load_spec
from generator.repo.validate import validate_repository


def _spec(tmp_path: Path, *overrides: str):
    return load_spec(None, ["serving.engine=llmapi", f"artifacts.dir={tmp_path / 'out'}", *overrides])


def _write_checkpoint(ckpt: Path, quant_algo="NVFP4", kv="FP8", *, like: Path | None = None) -> None:
    """A ModelOpt export's hf_quant_config.json; ``like``: also copy a folder's tokenizer and config.json."""
    if like is not None:
        shutil.copytree(like, ckpt, dirs_exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    doc = {"producer": {"name": "modelopt"},
           "quantization": {"quant_algo": quant_algo, "kv_cache_quant_algo": kv, "group_size": 16,
                            "exclude_modules": ["lm_head"]}}
    (ckpt / "hf_quant_config.json").write_text(json.dumps(doc))


def _render(spec, repo: Path, *, cpu=False) -> Path:
    return render_repository(spec, repo, gpu_visible=not cpu)


def errors(problems):
    return [p for p in problems if p.severity == "error"]


def test_reference_deployment_maps_onto_llm_args(tmp_path):
    spec = _spec(tmp_path)  # Qwen3-8B NVFP4 + FP8 KV on an RTX 5090, the spec defaults
    doc = llmapi.llmapi_model_yaml(spec)
    assert doc["model"] == str(spec.checkpoint_dir)
    assert doc["backend"] == "pytorch"
    assert (doc["max_batch_size"], doc["max_num_tokens"], doc["max_seq_len"]) == (32, 8192, 4608)
    assert (doc["tensor_parallel_size"], doc["pipeline_parallel_size"]) == (1, 1)
    assert doc["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": False,
                                      "tokens_per_block": 64, "dtype": "fp8"}
    assert doc["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    data = llmapi.llmapi_data()
    assert set(doc) - {"triton_config"} <= llmapi.accepted_llm_args()
    assert set(doc["kv_cache_config"]) <= set(data["nested"]["kv_cache_config"])
    rows = {r.spec_field: r for r in llmapi.llmapi_mapping(spec)}
    assert rows["serving.kv_cache_free_gpu_mem_fraction"].key == "kv_cache_config.free_gpu_memory_fraction"


def test_spec_changes_reach_model_yaml(tmp_path):
    spec = _spec(tmp_path, "build.tp_size=2", "serving.max_tokens_in_paged_kv_cache=100000",
                 "serving.enable_kv_cache_reuse=true", "quantization.kv_cache=none", "serving.max_batch_size=8",
                 "serving.enable_chunked_context=true")
    doc = llmapi.llmapi_model_yaml(spec)
    assert doc["tensor_parallel_size"] == 2 and doc["max_batch_size"] == 8
    assert doc["enable_chunked_prefill"] is True
    assert doc["kv_cache_config"]["max_tokens"] == 100000
    assert doc["kv_cache_config"]["enable_block_reuse"] is True
    assert doc["kv_cache_config"]["dtype"] == "auto"


@pytest.mark.parametrize("cpu", [False, True])
def test_rendered_repository_validates_clean(tmp_path, tokenizer_weights_dir, cpu):
    spec = _spec(tmp_path, "serving.decoupled=false", "build.max_input_len=256", "build.max_output_len=64",
                 "build.max_num_tokens=512")
    _write_checkpoint(spec.checkpoint_dir, like=tokenizer_weights_dir)
    repo = _render(spec, tmp_path / "repo", cpu=cpu)
    problems = validate_repository(repo)
    if cpu:  # the stand-in's model.py and the CPU engine model are there: nothing to say
        assert problems == []
    else:  # only NVIDIA's model.py, which the user copies in on the GPU host
        assert [(Path(p.file).name, p.severity) for p in problems] == [("model.py", "warning")]
        (repo / "tensorrt_llm/1/model.py").write_text("# NVIDIA's\n")
        assert validate_repository(repo) == []

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((repo / "tensorrt_llm/config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.backend == "python" and cfg.max_batch_size == 0
    assert cfg.model_transaction_policy.decoupled is False
    names = [t.name for t in cfg.input]
    assert names[0] == "text_input" and "sampling_param_max_tokens" in names
    assert ("engine_model" in cfg.parameters) is cpu


def test_wrong_model_yaml_key_is_named_with_line_and_suggestion(tmp_path):
    spec = _spec(tmp_path)
    _write_checkpoint(spec.checkpoint_dir)
    repo = _render(spec, tmp_path / "repo")
    path = repo / "tensorrt_llm/1/model.yaml"
    text = path.read_text()
    text = text.replace("max_num_tokens:", "max_num_token:").replace("free_gpu_memory_fraction:", "free_gpu_mem_fraction:")
    path.write_text(text)
    problems = errors(validate_repository(repo))
    top = [p for p in problems if "'max_num_token'" in p.message]
    assert len(top) == 1
    assert "max_num_tokens" in top[0].message and top[0].file == str(path)
    assert top[0].line == text.splitlines().index("max_num_token: 8192") + 1
    nested = [p for p in problems if "'free_gpu_mem_fraction'" in p.message]
    assert nested and "free_gpu_memory_fraction" in nested[0].message

    result = CliRunner().invoke(app, ["validate", str(repo)], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert f"tensorrt_llm/1/model.yaml:{top[0].line}" in result.output and "max_num_token" in result.output


def test_checkpoint_quantization_must_match_spec(tmp_path):
    spec = _spec(tmp_path)
    _write_checkpoint(spec.checkpoint_dir, quant_algo="FP8", kv=None)
    repo = _render(spec, tmp_path / "repo")
    problems = errors(validate_repository(repo))
    assert {p.file for p in problems} == {str(spec.checkpoint_dir / "hf_quant_config.json")}
    messages = [p.message for p in problems]
    assert any("quant_algo is 'FP8'" in m and "'nvfp4'" in m for m in messages)
    assert any("kv_cache_quant_algo is None" in m for m in messages)
    # A checkpoint folder without hf_quant_config.json is unquantized to LLM(): also a mismatch, not a warning.
    (spec.checkpoint_dir / "hf_quant_config.json").unlink()
    problems = errors(validate_repository(repo))
    assert len(problems) == 2 and all("no hf_quant_config.json" in p.message for p in problems)


def test_config_and_yaml_must_agree(tmp_path):
    spec = _spec(tmp_path)
    _write_checkpoint(spec.checkpoint_dir)
    repo = _render(spec, tmp_path / "repo")
    cfg = repo / "tensorrt_llm/config.pbtxt"
    text = cfg.read_text()
    cfg.write_text(text.replace("decoupled: true", "decoupled: false"))
    problems = errors(validate_repository(repo))
    assert len(problems) == 1 and "disagrees with model.yaml triton_config.decoupled" in problems[0].message
    assert problems[0].line == text.splitlines().index("  decoupled: true") + 1


def test_checkpoint_not_built_yet_is_a_warning(tmp_path):
    """Rendering before quantizing is normal (the GPU host quantizes): warn, fail only with --strict."""
    spec = _spec(tmp_path)
    repo = _render(spec, tmp_path / "repo", cpu=True)
    problems = validate_repository(repo)
    assert problems and not errors(problems)
    assert any(p.file.endswith("model.yaml") and "not built yet" in p.message and "tritongen quantize" in p.fix
               for p in problems)
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(repo)], env={"COLUMNS": "300"})
    assert ok.exit_code == 0, ok.output
    assert "warning" in ok.output and "0 error(s)" in ok.output
    assert runner.invoke(app, ["validate", str(repo), "--strict"]).exit_code == 1


def test_cpu_engine_model_gets_the_engine_checks(tmp_path, tokenizer_weights_dir):
    """In the CPU stand-in, tensorrt_llm_cpu is checked like the cpu-reference tensorrt_llm model."""
    spec = _spec(tmp_path, "build.max_input_len=256", "build.max_output_len=64", "build.max_num_tokens=512")
    _write_checkpoint(spec.checkpoint_dir, like=tokenizer_weights_dir)
    repo = _render(spec, tmp_path / "repo", cpu=True)
    engine_cfg = repo / "tensorrt_llm_cpu/config.pbtxt"
    text = engine_cfg.read_text()
    engine_cfg.write_text(text.replace('"max_seq_len" value { string_value: "320"', '"max_seq_len" value { string_value: "999"')
                          .replace('data_type: TYPE_INT32 dims: [ 1 ] reshape { shape: [ ] } },', 'data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } },', 1)
                          .replace("decoupled: true", "decoupled: false"))
    messages = [p.message for p in errors(validate_repository(repo)) if p.file == str(engine_cfg)]
    assert any("max_seq_len 999 but the spec gives 320" in m for m in messages)
    assert any("has data_type TYPE_FP32, NVIDIA's tensorrt_llm uses TYPE_INT32" in m for m in messages)
    assert any("tensorrt_llm_cpu decoupled=false but tensorrt_llm decoupled=true" in m for m in messages)


def test_settings_without_llmapi_meaning_are_refused_together(tmp_path):
    spec = _spec(tmp_path, "quantization.format=int8_sq", "quantization.kv_cache=int8",
                 "build.plugins.context_fmha=true", "build.kv_cache_type=continuous")
    with pytest.raises(TritongenError) as err:
        llmapi.render_llmapi_files(spec)
    text = str(err.value)
    for needle in ("int8_sq", "kv_cache=int8", "context_fmha", "continuous"):
        assert needle in text
    assert llmapi.llmapi_refusals(_spec(tmp_path)) == []
