"""Validate: a clean repository has no problems; each deliberate mistake is caught, with file and line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.repo.render import render_repository
from helpers import small_spec as make_spec
from generator.repo.problems import Severity, failing
from generator.repo.validate import Problem, validate_repository




@pytest.fixture
def repo(tokenizer_weights_dir, tmp_path) -> Path:
    spec = make_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=cpu-reference")
    return render_repository(spec, tmp_path / "repo")


@pytest.fixture
def gpu_repo(tokenizer_weights_dir, tmp_path, build_engine):
    """A GPU-target repository whose engine (built by the trtllm-build stand-in) matches the spec."""
    spec = make_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm")
    engine_cfg = build_engine(spec)
    return render_repository(spec, tmp_path / "repo-gpu"), engine_cfg


def edit(path: Path, old: str, new: str, count: int = 1) -> int:
    """Replace ``old`` (which must occur) and return the 1-based line of the first change."""
    text = path.read_text()
    at = text.index(old)
    path.write_text(text.replace(old, new, count))
    return text.count("\n", 0, at) + 1


def line_of(path: Path, pattern: str) -> int:
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if re.search(pattern, line):
            return no
    raise AssertionError(f"{pattern!r} not in {path}")


def set_tokenizer_dir(cfg: Path, folder: Path) -> None:
    text = cfg.read_text()
    cfg.write_text(re.sub(r'(key: "tokenizer_dir" value \{ string_value: ")[^"]*', lambda m: m.group(1) + str(folder), text))


def only(problems: list[Problem], file: Path, words: str) -> Problem:
    """The one problem in ``file`` whose message contains ``words``."""
    hits = [p for p in problems if Path(p.file) == file and words in p.message]
    assert len(hits) == 1, f"expected one problem in {file} with {words!r}, got:\n" + "\n".join(map(str, problems))
    assert hits[0].fix
    return hits[0]


def test_clean_repositories_have_no_problems(repo, gpu_repo):
    assert validate_repository(repo) == []
    assert validate_repository(gpu_repo[0]) == []


def test_misspelled_field_is_a_syntax_error_with_line(repo):
    cfg = repo / "preprocessing" / "config.pbtxt"
    line = edit(cfg, "max_batch_size:", "max_batch_sise:")
    p = only(validate_repository(repo), cfg, "max_batch_sise")
    assert p.line == line and "not a valid Triton ModelConfig" in p.message


def test_wrong_dtype_in_ensemble_map(repo):
    ens = repo / "ensemble" / "config.pbtxt"
    edit(ens, '{ name: "max_tokens" data_type: TYPE_INT32', '{ name: "max_tokens" data_type: TYPE_INT64')
    problems = validate_repository(repo)
    p = only(problems, ens, "is TYPE_INT64 but preprocessing input 'REQUEST_OUTPUT_LEN' is TYPE_INT32")
    assert p.line == line_of(ens, r'input_map \{ key: "REQUEST_OUTPUT_LEN"')
    iface = only(problems, ens, "NVIDIA's ensemble uses TYPE_INT32")
    assert iface.line == line_of(ens, r'name: "max_tokens"')


def test_missing_model(repo):
    shutil.rmtree(repo / "postprocessing")
    problems = validate_repository(repo)
    only(problems, repo / "postprocessing" / "config.pbtxt", "model 'postprocessing' is missing")
    ens = repo / "ensemble" / "config.pbtxt"
    p = only(problems, ens, "calls model 'postprocessing', which is not in the repository")
    assert p.line == line_of(ens, r'model_name: "postprocessing"')


def test_batch_size_mismatch(repo):
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    line = edit(cfg, "max_batch_size: 16", "max_batch_size: 8")
    edit(cfg, "preferred_batch_size: [ 16 ]", "preferred_batch_size: [ 8 ]")
    p = only(validate_repository(repo), cfg, "max_batch_size 8 differs from ensemble's 16")
    assert p.line == line


def test_decoupled_mismatch_between_bls_and_tensorrt_llm(repo):
    cfg = repo / "tensorrt_llm_bls" / "config.pbtxt"
    line = edit(cfg, "decoupled: true", "decoupled: false")
    p = only(validate_repository(repo), cfg, "tensorrt_llm_bls decoupled=false but tensorrt_llm decoupled=true")
    assert p.line == line


def test_streaming_needs_decoupled(tokenizer_weights_dir, tmp_path):
    spec = make_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=cpu-reference",
                     "serving.decoupled=false", "loadtest.protocol=grpc-stream")
    repo = render_repository(spec, tmp_path / "repo")
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    p = only(validate_repository(repo), cfg, "streaming (grpc-stream")
    assert p.line == line_of(cfg, "model_transaction_policy") and "serving.decoupled=true" in p.fix


def test_missing_tokenizer_dir(repo, tmp_path):
    cfg = repo / "postprocessing" / "config.pbtxt"
    gone = tmp_path / "no-such-tokenizer"
    set_tokenizer_dir(cfg, gone)
    p = only(validate_repository(repo), cfg, "does not exist")
    assert p.line == line_of(cfg, '"tokenizer_dir"') and str(gone) in p.message
    assert p.severity == "warning" and "not built yet" in p.message and "tritongen quantize" in p.fix


def test_tokenizer_that_does_not_load(repo, tmp_path):
    broken = tmp_path / "broken-tokenizer"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    (broken / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    cfg = repo / "preprocessing" / "config.pbtxt"
    set_tokenizer_dir(cfg, broken)
    p = only(validate_repository(repo), cfg, "cannot be used")
    assert p.line == line_of(cfg, '"tokenizer_dir"')


def test_folder_without_tokenizer_files_fails(repo, tmp_path):
    """transformers loads a folder with only config.json as an empty tokenizer; the server would then read
    every prompt as empty. validate must refuse it, naming the folder and what is missing."""
    bare = tmp_path / "checkpoint-without-tokenizer"
    bare.mkdir()
    (bare / "config.json").write_text('{"model_type": "qwen3", "vocab_size": 8}')
    cfg = repo / "preprocessing" / "config.pbtxt"
    set_tokenizer_dir(cfg, bare)
    p = only(validate_repository(repo), cfg, "cannot be used")
    assert p.severity == "error" and str(bare) in p.message and "encodes to no tokens" in p.message
    assert "tokenizer.json" in p.message and "tokenizer" in p.fix


def test_end_id_outside_the_models_vocabulary_fails(repo, tokenizer_weights_dir, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tokenizer_weights_dir, weights)
    (weights / "config.json").write_text('{"model_type": "qwen3", "vocab_size": 1}')  # <eos> is id 1
    cfg = repo / "preprocessing" / "config.pbtxt"
    set_tokenizer_dir(cfg, weights)
    p = only(validate_repository(repo), cfg, "cannot be used")
    assert "end token id 1" in p.message and "vocab_size" in p.message


def test_placeholder_in_an_optional_parameter_is_a_note_not_a_failure(repo):
    cfg = repo / "postprocessing" / "config.pbtxt"
    line = edit(cfg, '"skip_special_tokens" value { string_value: "true"',
                '"skip_special_tokens" value { string_value: "${skip_special_tokens}"')
    problems = [p for p in validate_repository(repo) if Path(p.file) == cfg]
    assert [(p.line, p.severity) for p in problems] == [(line, Severity.note)]
    assert "'${skip_special_tokens}'" in problems[0].message and "unset" in problems[0].message
    assert not failing(problems, strict=True)


def test_placeholder_in_a_parameter_the_deployment_needs_is_an_error(repo):
    cfg = repo / "preprocessing" / "config.pbtxt"
    text = cfg.read_text()
    start = text.index('"tokenizer_dir"')
    value_start = text.index('string_value: "', start) + len('string_value: "')
    cfg.write_text(text[:value_start] + "${tokenizer_dir}" + text[text.index('"', value_start):])
    p = only(validate_repository(repo), cfg, "'tokenizer_dir' of preprocessing is still the template placeholder")
    assert p.line == line_of(cfg, '"tokenizer_dir"') and "fill_template.py" in p.fix


def test_placeholder_outside_a_string_is_reported_twice_with_the_same_line(repo):
    cfg = repo / "preprocessing" / "config.pbtxt"
    line = edit(cfg, "max_batch_size: 16", "max_batch_size: ${triton_max_batch_size}")
    problems = [p for p in validate_repository(repo) if Path(p.file) == cfg]
    assert {p.line for p in problems} == {line}
    assert any("placeholder" in p.message for p in problems) and any("ModelConfig" in p.message for p in problems)


def test_bad_fraction(repo):
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    line = edit(cfg, '"kv_cache_free_gpu_mem_fraction" value { string_value: "0.9"',
                '"kv_cache_free_gpu_mem_fraction" value { string_value: "1.5"')
    p = only(validate_repository(repo), cfg, "must be a fraction in (0, 1], got '1.5'")
    assert p.line == line


def test_numbers_and_enums_must_parse(repo):
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    l1 = edit(cfg, '"max_num_tokens" value { string_value: "512"', '"max_num_tokens" value { string_value: "512k"')
    l2 = edit(cfg, '"batch_scheduler_policy" value { string_value: "guaranteed_no_evict"',
              '"batch_scheduler_policy" value { string_value: "guaranteed"')
    problems = validate_repository(repo)
    assert only(problems, cfg, "'max_num_tokens' must be a non-negative integer").line == l1
    assert only(problems, cfg, "'batch_scheduler_policy' is 'guaranteed'").line == l2


def test_misspelled_parameter_key(repo):
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    line = edit(cfg, 'key: "enable_kv_cache_reuse"', 'key: "enable_kv_cache_reuze"')
    p = only(validate_repository(repo), cfg, "unknown parameter 'enable_kv_cache_reuze'")
    assert p.line == line and "enable_kv_cache_reuse" in p.message


def test_missing_model_py(repo):
    (repo / "preprocessing" / "1" / "model.py").unlink()
    only(validate_repository(repo), repo / "preprocessing" / "1" / "model.py", "has no 1/model.py")


def test_unknown_backend(repo):
    cfg = repo / "postprocessing" / "config.pbtxt"
    line = edit(cfg, 'backend: "python"', 'backend: "pytorch"')
    assert only(validate_repository(repo), cfg, "backend 'pytorch'").line == line


def test_ensemble_maps_a_tensor_the_model_does_not_have(repo):
    ens = repo / "ensemble" / "config.pbtxt"
    line = edit(ens, 'input_map { key: "runtime_top_k"', 'input_map { key: "runtime_topk"')
    assert only(validate_repository(repo), ens, "tensorrt_llm has no input 'runtime_topk'").line == line


def test_required_interface_tensor_removed(repo):
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    edit(cfg, '  { name: "request_output_len" data_type: TYPE_INT32 dims: [ 1 ] reshape { shape: [ ] } },\n', "")
    problems = validate_repository(repo)
    only(problems, cfg, "input 'request_output_len' of NVIDIA's tensorrt_llm model is missing")
    ens = repo / "ensemble" / "config.pbtxt"
    assert only(problems, ens, "tensorrt_llm has no input 'request_output_len'").line == \
        line_of(ens, r'input_map \{ key: "request_output_len"')


def test_engine_disagrees_on_max_batch_size(gpu_repo):
    repo, engine_cfg = gpu_repo
    cfg = json.loads(engine_cfg.read_text())
    cfg["build_config"]["max_batch_size"] = 8
    engine_cfg.write_text(json.dumps(cfg))
    trt = repo / "tensorrt_llm" / "config.pbtxt"
    p = only(validate_repository(repo), trt, "max_batch_size 16 exceeds the engine's 8")
    assert p.line == line_of(trt, "^max_batch_size")


def test_engine_tp_pp_and_limits_and_quantization(gpu_repo):
    repo, engine_cfg = gpu_repo
    cfg = json.loads(engine_cfg.read_text())
    cfg["pretrained_config"]["mapping"] = {"world_size": 2, "tp_size": 1, "pp_size": 1}
    cfg["pretrained_config"]["quantization"] = {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    cfg["build_config"]["max_input_len"] = 1024
    engine_cfg.write_text(json.dumps(cfg))
    problems = validate_repository(repo)
    only(problems, engine_cfg, "tp_size 1 x pp_size 1 = 1 but world_size is 2")
    only(problems, engine_cfg, "pretrained_config.mapping.world_size is 2, the spec wants 1")
    only(problems, engine_cfg, "quant_algo is 'FP8', the spec wants 'NVFP4'")
    # The recorded max_input_len is trtllm-build's default with context FMHA and packed input: not a problem.
    assert not [p for p in problems if "max_input_len" in p.message]


def test_checkpoint_quantization_vs_spec_on_cpu(repo, tokenizer_weights_dir, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tokenizer_weights_dir, weights)
    (weights / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt"}, "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None}}))
    spec = make_spec(weights, tmp_path / "art", "serving.engine=cpu-reference")
    repo2 = render_repository(spec, tmp_path / "repo2")
    problems = validate_repository(repo2)
    only(problems, weights / "hf_quant_config.json", "checkpoint quant_algo is 'FP8'")
    only(problems, weights / "hf_quant_config.json", "checkpoint kv_cache_quant_algo is None")


def test_all_problems_at_once(repo):
    edit(repo / "postprocessing" / "config.pbtxt", 'backend: "python"', 'backend: "onnx"')
    edit(repo / "tensorrt_llm" / "config.pbtxt", '"kv_cache_free_gpu_mem_fraction" value { string_value: "0.9"',
         '"kv_cache_free_gpu_mem_fraction" value { string_value: "0"')
    (repo / "tensorrt_llm_bls" / "1" / "model.py").unlink()
    problems = validate_repository(repo)
    files = {Path(p.file).relative_to(repo).parts[0] for p in problems}
    assert files == {"postprocessing", "tensorrt_llm", "tensorrt_llm_bls"}
    assert len(problems) == 3


def test_cli_validate_prints_table_and_exits_1(repo):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(repo)])
    assert ok.exit_code == 0, ok.output
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    line = edit(cfg, "decoupled: true", "decoupled: false")
    bad = runner.invoke(app, ["validate", str(repo)], env={"COLUMNS": "300"})
    assert bad.exit_code == 1
    assert f"tensorrt_llm/config.pbtxt:{line}" in bad.output and "serving.decoupled" in bad.output


def test_cli_render_then_validate(tokenizer_weights_dir, tmp_path):
    runner = CliRunner()
    args = ["render", "-o", str(tmp_path / "out"), "--set", f"artifacts.checkpoint_dir={tokenizer_weights_dir}",
            "--set", f"artifacts.dir={tmp_path / 'art'}", "--set", "serving.engine=cpu-reference"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "out" / "ensemble" / "config.pbtxt").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    assert runner.invoke(app, args + ["--force"]).exit_code == 0


def test_artifacts_not_built_yet_warn_and_strict_fails(tokenizer_weights_dir, tmp_path):
    """Rendered before quantize/build (the GPU host does those): warnings, exit 0; --strict exits 1.
    What exists but is wrong stays an error."""
    spec = make_spec(tmp_path / "no-checkpoint", tmp_path / "art", "serving.engine=tensorrtllm")
    repo = render_repository(spec, tmp_path / "repo")
    problems = validate_repository(repo)
    assert {p.severity for p in problems} == {"warning"}
    tok = only(problems, repo / "postprocessing" / "config.pbtxt", "tokenizer_dir")
    assert "also named by preprocessing, tensorrt_llm)" in tok.message  # one warning per folder
    trt = repo / "tensorrt_llm" / "config.pbtxt"
    eng = only(problems, trt, "engine folder")
    assert eng.line == line_of(trt, '"gpt_model_path"') and "tritongen build" in eng.fix
    assert len(problems) == 2

    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(repo)], env={"COLUMNS": "300"})
    assert ok.exit_code == 0, ok.output
    assert "0 error(s), 2 warning(s)" in ok.output and "not built yet" in ok.output
    assert runner.invoke(app, ["validate", str(repo), "--strict"]).exit_code == 1

    spec.engine_dir.mkdir(parents=True)  # there, but not a trtllm-build output
    p = only(validate_repository(repo), trt, "has no config.json")
    assert p.severity == "error"
    assert runner.invoke(app, ["validate", str(repo)]).exit_code == 1


def test_cpu_weights_folder_without_model_config_is_an_error(tokenizer_weights_dir, tmp_path):
    weights = tmp_path / "weights"
    shutil.copytree(tokenizer_weights_dir, weights)
    repo = render_repository(make_spec(weights, tmp_path / "art", "serving.engine=cpu-reference"), tmp_path / "repo")
    assert validate_repository(repo) == []
    (weights / "config.json").unlink()
    p = only(validate_repository(repo), repo / "tensorrt_llm" / "config.pbtxt", "no model config.json")
    assert p.severity == "error"
