"""`tritongen build` with test doubles for trtllm-build and quantize.py (tests/fake_bin/): TensorRT-LLM
cannot be installed here, so these tests prove the plumbing (arguments, temp folders, logs, engine checks),
not TensorRT-LLM's behaviour."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.engine.build import run_build
from generator.cli import app
from generator.errors import TritongenError
from generator.engine.compare import Relation, compare_engine, engine_mismatches
from generator.engine import compare
from generator.engine.facts import read_engine, rules
from generator.engine.plan import make_plan
from generator.errors import ArtifactCorrupt
from generator.fsutil import MARKER
from generator.spec import load_spec



@pytest.fixture
def host(gpu_host, monkeypatch, tmp_path, qwen3_8b_config):
    """PATH with the trtllm-build stand-in (an SM120 build host), its examples folder, a local model folder and a
    spec for it."""
    gpu_host(120)
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_TRTLLM_RECORD", str(record))
    model = tmp_path / "Qwen3-8B"
    model.mkdir()
    shutil.copy(qwen3_8b_config, model / "config.json")
    spec = load_spec(None, [f"model.source={model}", f"artifacts.dir={tmp_path / 'out'}"])
    plan = make_plan(spec, json.loads(qwen3_8b_config.read_text()))

    def calls():
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    return spec, plan, calls


def test_planned_arguments_reach_trtllm_build(host):
    spec, plan, calls = host
    lines = []
    result = run_build(spec, plan, on_line=lines.append)
    convert, build = calls()
    assert convert["tool"] == "quantize.py" and build["tool"] == "trtllm-build"
    # quantize.py got the planned arguments, with only the output folder moved to a temporary sibling
    tmp_ckpt = convert["argv"][convert["argv"].index("--output_dir") + 1]
    assert convert["argv"] == plan.conversion.with_values({"--output_dir": tmp_ckpt})[2:]
    assert Path(tmp_ckpt).parent == spec.trtllm_checkpoint_dir.parent and not Path(tmp_ckpt).exists()
    # trtllm-build got exactly the plan's list, the engine folder likewise written via a temporary sibling
    tmp_engine = build["argv"][build["argv"].index("--output_dir") + 1]
    assert build["argv"] == plan.trtllm_build_argv(output_dir=tmp_engine)[1:]
    assert tmp_engine != str(spec.engine_dir) and Path(tmp_engine).parent == spec.engine_dir.parent
    # it ran in the logs folder, so the timing cache did not land in the engine or a read-only cwd
    assert build["cwd"] == str(spec.logs_dir) and (spec.logs_dir / "model.cache").is_file()
    assert sorted(p.name for p in spec.engine_dir.iterdir()) == [MARKER, "config.json", "rank0.engine"]
    assert result.engine.max_seq_len == 4608 and not result.checkpoint_reused
    log = (spec.logs_dir / "trtllm-build.log").read_text()
    assert "--multiple_profiles enable" in log.splitlines()[0] and "Total time of building" in log
    assert any("Overriding norm_quant_fusion" in line for line in lines)


def test_matching_checkpoint_is_reused_and_engine_needs_force(host):
    spec, plan, calls = host
    run_build(spec, plan, on_line=lambda _: None)
    with pytest.raises(TritongenError, match="would be overwritten"):
        run_build(spec, plan, on_line=lambda _: None)
    run_build(spec, plan, force=True, on_line=lambda _: None)
    assert [c["tool"] for c in calls()] == ["quantize.py", "trtllm-build", "quantize.py", "trtllm-build"]
    shutil.rmtree(spec.engine_dir)
    result = run_build(spec, plan, on_line=lambda _: None)
    assert result.checkpoint_reused
    assert [c["tool"] for c in calls()][4:] == ["trtllm-build"]  # no third quantize.py run
    shutil.rmtree(spec.engine_dir)
    fp8 = load_spec(None, [f"model.source={spec.model.source}", f"artifacts.dir={spec.artifacts.dir}",
                           "quantization.format=fp8"])
    fp8_plan = make_plan(fp8, json.loads((spec.model_dir / "config.json").read_text()))
    with pytest.raises(TritongenError, match="quant_algo is 'NVFP4', the spec wants 'FP8'"):
        run_build(fp8, fp8_plan, on_line=lambda _: None)


def test_engine_that_differs_from_the_spec_is_reported(host, monkeypatch):
    spec, plan, _ = host
    monkeypatch.setenv("FAKE_TRTLLM_OVERRIDES", json.dumps(
        {"build_config": {"max_batch_size": 16}, "pretrained_config": {"quantization": {"kv_cache_quant_algo": None}}}))
    with pytest.raises(TritongenError) as err:
        run_build(spec, plan, on_line=lambda _: None)
    assert "build_config.max_batch_size is 16, the spec wants 32" in str(err.value)
    assert "pretrained_config.quantization.kv_cache_quant_algo is None" in str(err.value)
    assert (spec.engine_dir / "config.json").is_file()  # kept for inspection


def test_failed_build_leaves_no_engine(host, monkeypatch):
    spec, plan, _ = host
    monkeypatch.setenv("FAKE_TRTLLM_EXIT", "3")
    with pytest.raises(TritongenError) as err:
        run_build(spec, plan, on_line=lambda _: None)
    assert "trtllm-build failed with exit code 3" in str(err.value) and "context_fmha=false" in str(err.value)
    assert not spec.engine_dir.exists()
    assert not [p for p in spec.engine_dir.parent.iterdir() if p.name.startswith(".engine")]


def test_one_comparison_says_how_each_fact_is_compared(host):
    spec, plan, _ = host
    engine = run_build(spec, plan, on_line=lambda _: None).engine
    checks = {c.key: c for c in compare_engine(spec, engine)}
    assert engine_mismatches(spec, engine) == []
    # The recorded max_input_len is trtllm-build's default (the plan leaves the flag out); the runtime's limit counts.
    assert engine.max_input_len == 1024
    assert checks["build_config.max_input_len"].relation is Relation.not_compared
    runtime = checks["runtime max_input_len"]
    assert runtime.relation is Relation.at_least and (runtime.engine, runtime.spec) == (4607, 4096)
    assert checks["build_config.max_batch_size"].relation is Relation.equal
    tp2 = load_spec(None, ["build.tp_size=2"])
    assert [c.message for c in engine_mismatches(tp2, engine)] == [
        "pretrained_config.mapping.tp_size is 1, the spec wants 2",
        "pretrained_config.mapping.world_size is 1, the spec wants 2",
    ]


def test_every_rule_named_is_recorded_with_its_source():
    named = set(re.findall(r'rule \\"(\w+)\\"', Path(compare.__file__).read_text()))
    assert named and named <= set(rules())
    for name, entry in rules().items():
        src = entry["source"]
        assert entry["rule"] and src["path"] and src["symbol"] and src["commit"], name


@pytest.mark.parametrize("text, says", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}', "Hugging Face model config"),
    ('{"builder_config": {"name": "gpt"}}', "before 0.9"),
    ('{"version": "1.2.1", "pretrained_config": {}, "build_config": {}}', "no pretrained_config.dtype"),
])
def test_corrupt_or_foreign_engine_config_is_named_with_its_fix(tmp_path, text, says):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ArtifactCorrupt) as err:
        read_engine(tmp_path)
    assert says in err.value.message and err.value.where == str(tmp_path / "config.json") and err.value.fix


def test_cli_build_without_tensorrt_llm(tmp_path, monkeypatch):
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    monkeypatch.setenv("PATH", str(empty_path))
    runner = CliRunner()
    spec = tmp_path / "t.yaml"
    runner.invoke(app, ["init", str(spec)])
    dry = runner.invoke(app, ["build", str(spec), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "quantization/quantize.py" in dry.output and "trtllm-build --checkpoint_dir" in dry.output
    refused = runner.invoke(app, ["build", str(spec), "--dry-run", "--set", "build.gpu=a100"])
    assert refused.exit_code == 4 and "nvfp4 needs Blackwell" in refused.output
    # the installed command: the GPU-host commands are printed and the exit code says nothing was built
    tritongen = Path(sys.executable).parent / "tritongen"
    missing = subprocess.run([str(tritongen), "build", str(spec)], capture_output=True, text=True,
                             env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert missing.returncode == 7, missing.stderr
    assert "not installed here" in missing.stderr and "--multiple_profiles enable" in missing.stdout
