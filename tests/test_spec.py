"""The spec: defaults, errors that name the field, overrides, and docs generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from generator.errors import SpecError, TritongenError
from generator.spec import EngineTarget, Spec, load_spec, with_overrides
from generator.spec.doc import commented_yaml, markdown_reference, with_reference
from generator.spec.load import parse_override

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_reference_deployment():
    spec = load_spec(None)
    assert spec.model.source == "Qwen/Qwen3-8B"
    assert (spec.quantization.format.value, spec.quantization.kv_cache.value) == ("nvfp4", "fp8")
    assert spec.quantization.exclude_modules == ["lm_head"]
    assert (spec.quantization.calibration.size, spec.quantization.calibration.max_seq_len) == (512, 2048)
    assert spec.build.gpu == "rtx-5090"
    assert spec.build.resolved_max_seq_len == 4096 + 512
    assert spec.triton_max_batch_size == 32


@pytest.mark.parametrize(
    "override, needle",
    [
        ("build.max_batch_size=abc", "build.max_batch_size: got 'abc'"),
        ("quantization.format=nvfp5", "quantization.format: got 'nvfp5'; allowed: 'nvfp4'"),
        ("build.max_batch_sise=4", "build.max_batch_sise: unknown field"),
        ("serving.max_batch_size=64", "exceeds build.max_batch_size (32)"),
        ("build.max_seq_len=100", "build.max_input_len (4096) must be below build.max_seq_len (100)"),
        ("serving.kv_cache_free_gpu_mem_fraction=1.5", "serving.kv_cache_free_gpu_mem_fraction: got 1.5"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(TritongenError) as err:
        load_spec(None, [override])
    assert needle in str(err.value)


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("build:\n  max_batch_size: [1\n", encoding="utf-8")
    with pytest.raises(TritongenError) as err:
        load_spec(bad)
    assert str(bad) in str(err.value) and ":3:" in str(err.value)
    with pytest.raises(TritongenError, match="tritongen init"):
        load_spec(tmp_path / "missing.yaml")


def test_overrides_and_relative_paths(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"artifacts": {"dir": "work"}, "serving": {"engine": "cpu-reference"}}))
    spec = load_spec(path, ["serving.max_batch_size=4"])
    assert spec.checkpoint_dir == (tmp_path / "work" / "checkpoint").resolve()
    assert spec.triton_max_batch_size == 4
    assert with_overrides(spec, ["serving.engine=tensorrtllm"]).serving.engine is EngineTarget.tensorrtllm
    assert spec.serving.engine is EngineTarget.cpu_reference


def test_a_hash_in_an_override_is_text_not_a_yaml_comment(tmp_path):
    folder = tmp_path / "run #2"
    spec = load_spec(None, [f"artifacts.dir={folder}", "kubernetes.name=tritongen"])
    assert spec.artifacts.dir == folder and parse_override("loadtest.model=#x")[1] == "#x"
    assert parse_override("build.max_batch_size=16")[1] == 16


def test_auto_engine_follows_the_gpu():
    serving = load_spec(None).serving
    assert serving.resolved_engine(gpu_visible=True) is EngineTarget.tensorrtllm
    assert serving.resolved_engine(gpu_visible=False) is EngineTarget.cpu_reference


def test_init_yaml_round_trips_to_the_defaults(tmp_path):
    path = tmp_path / "tritongen.yaml"
    path.write_text(commented_yaml(), encoding="utf-8")
    assert load_spec(path).to_yaml_dict() == Spec().to_yaml_dict()


def test_every_field_is_documented():
    reference = markdown_reference()
    assert "| `build.max_num_tokens` | `8192` |" in reference
    for line in reference.splitlines()[2:]:
        assert line.rstrip("| ").split("|")[-1].strip(), f"field without a docstring: {line}"


def test_readme_reference_is_current():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert with_reference(readme) == readme, "run `tritongen spec-reference --update README.md`"


@pytest.mark.parametrize("override", ["build.max_batch_size=10000000000", "loadtest.output_tokens_mean=2147483648",
                                      "serving.max_queue_size=99999999999", "quantization.calibration.seed=-4294967296"])
def test_integers_must_fit_the_int32_they_become(override):
    with pytest.raises(TritongenError) as err:
        load_spec(None, [override])
    field = override.split("=")[0]
    assert f"{field}: got {int(override.split('=')[1])}; allowed:" in err.value.message
    assert "2147483647" in err.value.message


def test_max_seq_len_sum_must_fit_int32():
    with pytest.raises(TritongenError, match="max_input_len \\+ build.max_output_len"):
        load_spec(None, ["build.max_input_len=2147483000", "build.max_output_len=100000"])


def test_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")  # 9**9 strings once expanded: gigabytes
    with pytest.raises(TritongenError, match="alias bomb") as err:
        load_spec(bomb)
    assert err.value.where == str(bomb)
    with pytest.raises(TritongenError, match="alias bomb"):  # the same bomb in one --set value
        load_spec(None, ["model.source={" + ", ".join(lines) + "}"])


def test_recursive_yaml_alias_is_refused(tmp_path):
    spec = tmp_path / "loop.yaml"
    spec.write_text("model: &m\n  source: x\n  again: *m\n")
    with pytest.raises(TritongenError, match="refers to itself"):
        load_spec(spec)


@pytest.mark.parametrize("nested", ["[" * 100_000 + "]" * 100_000, "{a: " * 50_000 + "1" + "}" * 50_000])
def test_yaml_nested_past_what_python_parses_is_an_error_naming_the_file(tmp_path, nested):
    """A spec file or a --set value nested 100,000 deep ended in a RecursionError traceback."""
    deep = tmp_path / "deep.yaml"
    deep.write_text(f"model:\n  source: {nested}\n")
    with pytest.raises(SpecError, match="nested deeper") as err:
        load_spec(deep)
    assert err.value.where == str(deep)
    with pytest.raises(SpecError, match="nested deeper") as err:
        load_spec(None, [f"model.source={nested}"])
    assert err.value.where == "--set"


def test_anchors_within_limits_still_work(tmp_path):
    spec = tmp_path / "ok.yaml"
    spec.write_text("build: &b\n  max_input_len: 100\nloadtest:\n  input_tokens_mean: 7\n")
    assert load_spec(spec).build.max_input_len == 100


@pytest.mark.parametrize("value", ["2001-12-14", "!!binary aGVsbG8=", "!!set {x, y}", ".nan", "[.inf]"])
def test_an_openai_body_that_is_not_json_is_refused_naming_the_field(tmp_path, value):
    """YAML holds values JSON cannot (dates, bytes, sets, NaN): they were a json.dumps traceback at render (review 11)."""
    path = tmp_path / "spec.yaml"
    path.write_text(f"loadtest:\n  protocol: openai-chat\n  openai_body: {{a: {value}}}\n")
    with pytest.raises(SpecError, match=r"loadtest\.openai_body.*not JSON"):
        load_spec(path)
