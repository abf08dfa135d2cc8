"""Render: the five configs parse back as Triton ModelConfigs with NVIDIA's tensors, one batch size, no placeholders."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from generator.repo import render
from generator.errors import TritongenError
from generator.fsutil import MARKER
from generator.repo.render import (
    ENGINE_ERROR_OUTPUT, EXTRA_PARAMETERS, EXTRA_TENSORS, reference_facts, render_repository,
)
from generator.resources import model_repo_dir
from generator.spec import with_overrides
from helpers import small_spec

MODELS = ["ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls"]




def parse(repo: Path, model: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def tensor_facts(t) -> dict:
    """A parsed tensor in the recorded facts' shape."""
    d = {"name": t.name, "data_type": model_config_pb2.DataType.Name(t.data_type), "dims": list(t.dims)}
    if getattr(t, "optional", False):
        d["optional"] = True
    if t.HasField("reshape"):
        d["reshape"] = list(t.reshape.shape)
    if getattr(t, "allow_ragged_batch", False):
        d["allow_ragged_batch"] = True
    return d


@pytest.fixture
def cpu_repo(tokenizer_weights_dir, tmp_path):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=cpu-reference")
    return spec, render_repository(spec, tmp_path / "repo")


@pytest.fixture
def gpu_repo(tokenizer_weights_dir, tmp_path):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm")
    return spec, render_repository(spec, tmp_path / "repo-gpu")


@pytest.mark.parametrize("repo_fixture", ["cpu_repo", "gpu_repo"])
def test_tensors_match_nvidia_1_2_1(repo_fixture, request):
    _, repo = request.getfixturevalue(repo_fixture)
    facts = reference_facts()["models"]
    for model in MODELS:
        cfg = parse(repo, model)
        assert cfg.name == model
        for section, tensors in (("input", cfg.input), ("output", cfg.output)):
            extra = EXTRA_TENSORS.get(model, {}).get(section, ())
            if repo_fixture == "cpu_repo" and (model, section) == ("tensorrt_llm", "output"):
                extra += (ENGINE_ERROR_OUTPUT,)  # the CPU engine's error output for BLS callers
            assert [t.name for t in tensors if t.name in extra] == list(extra), model  # tritongen's own, at the end
            upstream = [tensor_facts(t) for t in tensors if t.name not in extra]
            assert upstream == facts[model][f"{section}s"], model
        assert cfg.HasField("dynamic_batching") == facts[model]["dynamic_batching"], model
        assert cfg.HasField("model_transaction_policy") == facts[model]["decoupled_policy"], model
        keys = {p for p in cfg.parameters}
        unknown = keys - set(facts[model]["parameters"]) - set(EXTRA_PARAMETERS[model])
        assert not unknown, (model, unknown)


def test_ensemble_exposes_perf_metrics_and_token_counts(cpu_repo):
    _, repo = cpu_repo
    ens = parse(repo, "ensemble")
    outputs = {t.name for t in ens.output}
    inputs = {t.name for t in ens.input}
    for name in ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
                 "kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
                 "num_input_tokens", "num_output_tokens"):
        assert name in outputs
    assert {"return_perf_metrics", "return_num_input_tokens", "return_num_output_tokens", "exclude_input_in_output",
            "stream", "max_tokens", "text_input"} <= inputs
    recorded = reference_facts()["models"]["ensemble"]["steps"]
    # tritongen's only changes to upstream's wiring: tensorrt_llm always stamps its arrival time, which
    # postprocessing keys streams by (a server-made identity; EXTRA_TENSORS)
    inputs_changed = {"preprocessing": {"RETURN_PERF_METRICS": "return_perf_metrics"},
                      "tensorrt_llm": {"return_perf_metrics": "_RETURN_PERF_METRICS"},
                      "postprocessing": {"ARRIVAL_TIME_NS": "arrival_time_ns"}}
    outputs_changed = {"preprocessing": {"OUT_RETURN_PERF_METRICS": "_RETURN_PERF_METRICS"}}
    for step, want in zip(ens.ensemble_scheduling.step, recorded, strict=True):
        assert step.model_name == want["model_name"]
        assert dict(step.input_map) == {**{e["key"]: e["value"] for e in want["input_map"]},
                                        **inputs_changed.get(step.model_name, {})}
        assert dict(step.output_map) == {**{e["key"]: e["value"] for e in want["output_map"]},
                                         **outputs_changed.get(step.model_name, {})}
    trt_step = ens.ensemble_scheduling.step[1]
    assert trt_step.model_name == "tensorrt_llm"
    assert trt_step.output_map["first_token_time_ns"] == "first_token_time_ns"
    assert trt_step.input_map["streaming"] == "stream"


def test_cpu_reference_target(cpu_repo):
    spec, repo = cpu_repo
    trt = parse(repo, "tensorrt_llm")
    assert trt.backend == "python"
    assert trt.model_transaction_policy.decoupled is True
    params = {k: v.string_value for k, v in trt.parameters.items()}
    assert params["gpt_model_path"] == str(spec.serving_weights_dir)
    assert params["max_seq_len"] == "320" and params["max_input_len"] == "256"
    assert params["tokens_per_block"] == "16" and params["max_num_tokens"] == "512"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert "cpu_threads" not in params  # None: omitted, never a placeholder
    assert "max_tokens_in_paged_kv_cache" not in params
    assert "executor_worker_path" not in params
    src = model_repo_dir() / "tensorrt_llm_cpu" / "1" / "model.py"
    assert (repo / "tensorrt_llm" / "1" / "model.py").read_bytes() == src.read_bytes()
    for model in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
        assert (repo / model / "1" / "model.py").read_bytes() == (model_repo_dir() / model / "1" / "model.py").read_bytes()
    for model in ("preprocessing", "postprocessing", "tensorrt_llm_bls", "tensorrt_llm"):  # each folder stands alone
        shared = model_repo_dir() / "_shared" / "model_common.py"
        assert (repo / model / "1" / "model_common.py").read_bytes() == shared.read_bytes()
    pre = {k: v.string_value for k, v in parse(repo, "preprocessing").parameters.items()}
    assert pre == {"tokenizer_dir": str(spec.serving_weights_dir), "apply_chat_template": "false",
                   "max_output_len": "64", "max_input_len": str(spec.build.max_input_len)}  # only what the model reads
    post = {k: v.string_value for k, v in parse(repo, "postprocessing").parameters.items()}
    assert post == {"tokenizer_dir": str(spec.serving_weights_dir), "skip_special_tokens": "true",
                    "max_beam_width": "1", "max_seq_len": str(spec.build.resolved_max_seq_len)}
    bls = {k: v.string_value for k, v in parse(repo, "tensorrt_llm_bls").parameters.items()}
    assert set(bls) == {"accumulate_tokens", "tensorrt_llm_model_name", "engine_error_output"}
    # the BLS asks the CPU engine for its errors as the output the engine's model code names
    common = runpy.run_path(str(model_repo_dir() / "_shared" / "model_common.py"))
    assert bls["engine_error_output"] == ENGINE_ERROR_OUTPUT == common["ENGINE_ERROR_OUTPUT"]
    for f in repo.rglob("*"):
        if f.is_file() and f.suffix in (".pbtxt", ".json", ".md"):
            assert "${" not in f.read_text(), f


def test_queue_limit_at_the_entrances_not_mid_stream(cpu_repo):
    """A refusal at postprocessing's queue, which the ensemble calls while tensorrt_llm still streams,
    leaves the ensemble request without a final response in Triton 2.51 (a hung client): only the
    models that start a request refuse when full."""
    spec, repo = cpu_repo
    assert spec.serving.max_queue_size > 0
    for model in ("preprocessing", "tensorrt_llm"):
        assert parse(repo, model).dynamic_batching.default_queue_policy.max_queue_size == spec.serving.max_queue_size
    post = parse(repo, "postprocessing")
    assert post.HasField("dynamic_batching") and post.dynamic_batching.default_queue_policy.max_queue_size == 0


def test_gpu_target_same_interface_other_parameters(cpu_repo, gpu_repo):
    spec, repo = gpu_repo
    gpu, cpu = parse(repo, "tensorrt_llm"), parse(cpu_repo[1], "tensorrt_llm")
    assert gpu.backend == "tensorrtllm"
    assert list(gpu.input) == list(cpu.input) and list(gpu.output) == list(cpu.output)[:-1]
    assert cpu.output[-1].name == ENGINE_ERROR_OUTPUT  # the CPU engine's own, which only the BLS asks for
    assert "engine_error_output" not in parse(repo, "tensorrt_llm_bls").parameters
    params = {k: v.string_value for k, v in gpu.parameters.items()}
    assert params["gpt_model_path"] == str(spec.engine_dir)
    assert not set(params) & set(EXTRA_PARAMETERS["tensorrt_llm"])
    # Like NVIDIA's repository: an empty version folder, the backend loads the engine from gpt_model_path.
    assert (repo / "tensorrt_llm" / "1").is_dir() and not any((repo / "tensorrt_llm" / "1").iterdir())
    manifest = json.loads((repo / "tritongen.json").read_text())
    assert manifest["target"] == "tensorrtllm" and manifest["tensorrt_llm_version"] == "1.2.1"
    assert manifest["spec"]["build"]["max_batch_size"] == 16


def test_optional_values_and_switches(tokenizer_weights_dir, tmp_path):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=cpu-reference", "serving.decoupled=false",
                      "serving.max_tokens_in_paged_kv_cache=2048", "serving.cpu_threads=2", "serving.bls=false",
                      "serving.max_batch_size=4", "serving.preprocessing_instances=3")
    repo = render_repository(spec, tmp_path / "repo")
    assert not (repo / "tensorrt_llm_bls").exists()
    trt = parse(repo, "tensorrt_llm")
    params = {k: v.string_value for k, v in trt.parameters.items()}
    assert params["max_tokens_in_paged_kv_cache"] == "2048" and params["cpu_threads"] == "2"
    assert trt.model_transaction_policy.decoupled is False
    for model in ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing"):
        assert parse(repo, model).max_batch_size == 4
    assert parse(repo, "preprocessing").instance_group[0].count == 3
    assert json.loads((repo / "tritongen.json").read_text())["models"] == MODELS[:4]


def test_batch_size_comes_from_the_engine(tokenizer_weights_dir, tmp_path, build_engine):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm", "build.max_batch_size=8")
    build_engine(spec)
    plan = render.plan_repository(spec)
    assert plan.max_batch_size == 8 and "engine" in plan.max_batch_size_source
    repo = render_repository(spec, tmp_path / "repo")
    assert {parse(repo, m).max_batch_size for m in MODELS} == {8}
    assert "preferred_batch_size: [ 8 ]" in (repo / "tensorrt_llm" / "config.pbtxt").read_text()

    # Serving may ask for less than the engine holds...
    lower = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm", "build.max_batch_size=8",
                       "serving.max_batch_size=2")
    assert render.plan_repository(lower).max_batch_size == 2
    # ...but a spec that describes another engine is refused, naming both numbers.
    other = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm", "build.max_batch_size=32")
    with pytest.raises(TritongenError) as err:
        render.plan_repository(other)
    assert "build_config.max_batch_size is 8, the spec wants 32" in err.value.message
    assert err.value.where.endswith("config.json")
    more = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm", "build.max_batch_size=32",
                      "serving.max_batch_size=16")
    with pytest.raises(TritongenError, match="max_batch_size 16 exceeds the engine's 8"):
        render.plan_repository(more)


def test_cpu_target_ignores_an_engine_folder(tokenizer_weights_dir, tmp_path, build_engine):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=cpu-reference")
    build_engine(with_overrides(spec, ["build.max_batch_size=4"]))
    assert render.plan_repository(spec).max_batch_size == 16


def test_auto_engine_follows_gpu_visibility(tokenizer_weights_dir, tmp_path):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art")
    assert render.plan_repository(spec, gpu_visible=False).target.value == "cpu-reference"
    assert render.plan_repository(spec, gpu_visible=True).target.value == "tensorrtllm"


def test_refuses_to_overwrite_without_force(cpu_repo):
    spec, repo = cpu_repo
    marker = repo / "keep.txt"
    marker.write_text("mine")
    with pytest.raises(TritongenError, match="already exists"):
        render_repository(spec, repo)
    assert marker.read_text() == "mine"
    with pytest.raises(TritongenError, match="files tritongen did not write there: keep.txt"):
        render_repository(spec, repo, force=True)  # --force never deletes the user's files
    marker.unlink()
    (repo / "ensemble" / "config.pbtxt").write_text("edited")
    render_repository(spec, repo, force=True)
    assert (repo / "ensemble" / "config.pbtxt").read_text() != "edited"


def test_nothing_half_written_on_failure(cpu_repo, monkeypatch):
    """A failure while writing (here: the disk refusing the third copied file) leaves no trace."""
    spec, repo = cpu_repo
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    real_copy, calls = render.shutil.copy2, []

    def failing_copy(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(render.shutil, "copy2", failing_copy)
    fresh = repo.parent / "fresh"
    with pytest.raises(OSError, match="disk full"):
        render_repository(spec, fresh)
    assert not fresh.exists()
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        render_repository(spec, repo, force=True)
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert [p.name for p in repo.parent.iterdir()] == ["repo"]  # no temporary folders left behind


def test_values_that_cannot_be_written_are_refused(tokenizer_weights_dir, tmp_path):
    weird = tmp_path / 'we"ird\\dir'
    weird.mkdir()
    spec = small_spec(weird, tmp_path / "art", "serving.engine=cpu-reference")
    text = render.plan_repository(spec).files["preprocessing/config.pbtxt"]
    params = {k: v.string_value for k, v in
              text_format.Parse(text, model_config_pb2.ModelConfig()).parameters.items()}
    assert params["tokenizer_dir"] == str(weird)  # quotes and backslashes survive the round trip


@pytest.mark.parametrize("gpu_visible", [True, False])
def test_llmapi_target(tokenizer_weights_dir, tmp_path, gpu_visible):
    """serving.engine=llmapi: NVIDIA's LLM-API model; without a GPU, the stand-in plus the CPU engine it calls."""
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=llmapi")
    repo = render_repository(spec, tmp_path / "repo", gpu_visible=gpu_visible)
    front = parse(repo, "tensorrt_llm")
    assert front.backend == "python" and front.max_batch_size == 0
    assert (repo / "tensorrt_llm" / "1" / "model.yaml").is_file()
    manifest = json.loads((repo / "tritongen.json").read_text())
    assert (manifest["layout"], manifest["target"], manifest["cpu_stand_in"]) == ("llmapi", "llmapi", not gpu_visible)
    assert not (repo / "ensemble").exists() and not (repo / "preprocessing").exists()
    if gpu_visible:  # NVIDIA's model.py is the user's to copy; tritongen ships none
        assert manifest["models"] == ["tensorrt_llm"]
        assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["tensorrt_llm"]
        assert sorted(p.name for p in repo.iterdir() if p.is_file()) == [
            MARKER, "kubernetes-loadtest.yaml", "kubernetes.yaml", "launch.sh", "loadtest.Dockerfile", "tritongen.json"]
        assert not (repo / "tensorrt_llm" / "1" / "model.py").exists()
        return
    assert manifest["models"] == ["tensorrt_llm", "tensorrt_llm_cpu"]
    assert front.parameters["engine_model"].string_value == "tensorrt_llm_cpu"
    assert (repo / "tensorrt_llm/1/model.py").read_bytes() == (model_repo_dir() / "llmapi_cpu/1/model.py").read_bytes()
    src = model_repo_dir() / "tensorrt_llm_cpu" / "1"
    for f in src.glob("*.py"):
        assert (repo / "tensorrt_llm_cpu" / "1" / f.name).read_bytes() == f.read_bytes()
    # The engine model is the cpu-reference tensorrt_llm config under its own name, nothing else changed.
    cpu_ref = render.plan_repository(small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=cpu-reference"))
    want = text_format.Parse(cpu_ref.files["tensorrt_llm/config.pbtxt"], model_config_pb2.ModelConfig())
    want.name = "tensorrt_llm_cpu"
    assert parse(repo, "tensorrt_llm_cpu") == want


def test_pbtxt_strings_escape_every_control_character_and_read_back_identical():
    from generator.templating import pbtxt_string as _quote

    nasty = "".join(chr(c) for c in range(32)) + '\x7f"\\\'é/東京 😊'
    parsed = text_format.Parse(f"name: {_quote(nasty)}", model_config_pb2.ModelConfig())
    assert parsed.name == nasty
    assert all(ord(c) >= 32 and c != "\x7f" for c in _quote(nasty))  # nothing raw reaches the file


def test_rendered_path_with_quotes_reads_back_identical(tokenizer_weights_dir, tmp_path):
    """Quotes, backslashes, $() and # in a folder name reach the configs intact; control characters (a tab, a
    newline) are refused by the spec, naming the field, since no line-oriented file could carry them."""
    import shutil

    from generator.repo.validate import validate_repository

    with pytest.raises(TritongenError, match="artifacts.checkpoint_dir: holds the control character"):
        small_spec(tmp_path / "we\x01ird\tname\nwith", tmp_path / "art", "serving.engine=cpu-reference")
    weights = tmp_path / "we'ird \\name $(x)#with \"quotes\""
    shutil.copytree(tokenizer_weights_dir, weights)
    spec = small_spec(weights, tmp_path / "art", "serving.engine=cpu-reference")
    repo = render_repository(spec, tmp_path / "repo")
    cfg = text_format.Parse((repo / "preprocessing" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.parameters["tokenizer_dir"].string_value == str(weights)
    assert not [p for p in validate_repository(repo, spec) if p.severity == "error"]


def test_lone_surrogate_is_refused_with_a_message():
    from generator.templating import pbtxt_string as _quote

    with pytest.raises(TritongenError, match="lone surrogate"):
        _quote("bad\udcff")
