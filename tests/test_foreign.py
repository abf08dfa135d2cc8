"""Repositories tritongen did not write: validate them, import them into a spec, diff two of them.

The "official-style" repositories are what NVIDIA's README flow leaves: its five inflight_batcher_llm
configs filled by ``fill_template.py`` with tokenizer and engine folders, batch size, queue settings,
decoupled mode and KV fraction, and every other optional parameter still a ``${…}`` placeholder (the
recorded upstream parameter list says which exist); no ``tritongen.json``. They are made here from a
render with the engine stand-in (tests/fake_bin), the manifest removed and the placeholders put back.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from generator.errors import TritongenError
from generator.repo.importer import import_repository
from generator.repo.meaning import diff_meanings, read_meaning
from generator.repo.problems import Severity, failing
from generator.repo.manifest import MANIFEST
from generator.repo.render import reference_facts
from generator.repo.validate import validate_repository
from generator.spec import load_spec
from helpers import write_quantized_checkpoint
from test_golden import cli, init_project


def nvidia_style(repo: Path) -> Path:
    """What fill_template.py leaves: no manifest or README, and each unfilled upstream parameter a placeholder."""
    (repo / MANIFEST).unlink()
    (repo / "README.md").unlink(missing_ok=True)
    for name, facts in reference_facts()["models"].items():
        cfg = repo / name / "config.pbtxt"
        if not cfg.is_file():
            continue
        text = cfg.read_text()
        present = set(re.findall(r'key:\s*"([^"]+)"', text))
        extra = "".join(f'parameters {{ key: "{k}" value {{ string_value: "${{{k}}}" }} }}\n'
                        for k in facts["parameters"] if k not in present)
        cfg.write_text(text + extra)
    return repo


@pytest.fixture
def official(gpu_host, tmp_path, qwen3_8b_config, tokenizer_weights_dir) -> Path:
    """An official-style engine repository for Qwen3-8B FP8 on an H100, engine built by the stand-in."""
    spec_path = init_project(tmp_path, qwen3_8b_config, tokenizer_weights_dir, "build.gpu=h100-sxm",
                             "quantization.format=fp8")
    gpu_host(90)
    cli("build", str(spec_path))
    write_quantized_checkpoint(load_spec(spec_path))
    cli("render", str(spec_path), "-o", str(tmp_path / "official"), "--set", "serving.engine=tensorrtllm")
    return nvidia_style(tmp_path / "official")


def errors_and_warnings(repo: Path) -> list:
    return [p for p in validate_repository(repo) if p.severity is not Severity.note]


def test_official_style_repository_has_notes_only(official):
    problems = validate_repository(official)
    assert errors_and_warnings(official) == []
    placeholders = [p for p in problems if "left as placeholder" in p.message]
    assert len(placeholders) >= 40 and all(p.line for p in placeholders)
    assert any("no spec" in p.message and "tritongen import" in p.fix for p in problems)
    assert not failing(problems, strict=True)


QUICK_START_FILLED = {"preprocessing": ("tokenizer_dir",), "postprocessing": ("tokenizer_dir",),
                      "tensorrt_llm": ("gpt_model_path", "gpt_model_type", "FORCE_CPU_ONLY_INPUT_TENSORS",
                                       "executor_worker_path"), "tensorrt_llm_bls": ()}
"""The parameters that hold a value after NVIDIA's quick start: those it fills with fill_template.py (tokenizer_dir;
engine_dir and batching_strategy for tensorrt_llm; the BLS gets only config fields) and the two NVIDIA's
tensorrt_llm template fixes itself (commit 0c8de69a). Every other parameter stays ``${…}``."""


def test_nvidias_quick_start_fill_validates_with_no_error(official):
    """Every parameter the quick start leaves ``${…}`` gets the verdict of the code that reads it: the BLS's
    tensorrt_llm_model_name becomes tensorrt_llm (get_valid_param_value), so it is a note, not an error."""
    for model, filled in QUICK_START_FILLED.items():
        cfg = official / model / "config.pbtxt"
        for key in set(re.findall(r'key:\s*"([^"]+)"', cfg.read_text())) - set(filled):
            _set_parameter(cfg, key, "${" + key + "}")
    problems = validate_repository(official)
    assert [p for p in problems if p.severity is Severity.error] == []
    bls = [p for p in problems if "'tensorrt_llm_model_name'" in p.message]
    assert len(bls) == 1 and bls[0].severity is Severity.note and "tensorrt_llm" in bls[0].message


def test_import_and_render_round_trip_to_the_same_meaning(official, tmp_path):
    cli("import", str(official), "-o", str(tmp_path / "imported.yaml"), "--keep-paths")
    spec = load_spec(tmp_path / "imported.yaml")
    assert (spec.build.max_batch_size, spec.build.tp_size, spec.quantization.format.value) == (32, 1, "fp8")
    # The prompt limit comes from preprocessing's parameter, so no note says it came from the engine's runtime.
    assert "taken as the limit the runtime enforces" not in (tmp_path / "imported.yaml").read_text()
    cli("render", str(tmp_path / "imported.yaml"), "-o", str(tmp_path / "again"), "--no-validate")
    assert diff_meanings(read_meaning(official), read_meaning(tmp_path / "again")) == []
    assert "mean the same" in cli("diff", str(official), str(tmp_path / "again"))
    assert not failing(validate_repository(official, spec), strict=True)  # the spec-needing checks now run, and pass


def test_llmapi_repository_round_trips(gpu_host, tmp_path, qwen3_8b_config, tokenizer_weights_dir):
    spec_path = init_project(tmp_path, qwen3_8b_config, tokenizer_weights_dir, "build.max_num_tokens=4096",
                             "serving.enable_kv_cache_reuse=true", "build.max_batch_size=16")
    write_quantized_checkpoint(load_spec(spec_path))
    cli("render", str(spec_path), "-o", str(tmp_path / "llmapi"), "--set", "serving.engine=llmapi", "--no-gpu")
    (tmp_path / "llmapi" / MANIFEST).unlink()
    result = import_repository(tmp_path / "llmapi", keep_paths=True)
    assert result.spec["serving"]["engine"] == "llmapi" and result.spec["build"]["max_num_tokens"] == 4096
    assert result.spec["serving"]["enable_kv_cache_reuse"] is True
    cli("import", str(tmp_path / "llmapi"), "-o", str(tmp_path / "imported.yaml"), "--keep-paths")
    cli("render", str(tmp_path / "imported.yaml"), "-o", str(tmp_path / "again"), "--no-gpu", "--no-validate")
    (tmp_path / "again" / MANIFEST).unlink()
    assert diff_meanings(read_meaning(tmp_path / "llmapi"), read_meaning(tmp_path / "again")) == []


def test_diff_names_what_a_hand_edit_changed(official, tmp_path):
    edited = Path(shutil.copytree(official, tmp_path / "edited"))
    cfg = edited / "tensorrt_llm" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('string_value: "0.9"', 'string_value: "0.5"'))
    cfg.write_text(cfg.read_text() + "\n# a comment changes nothing\n")
    differences = diff_meanings(read_meaning(official), read_meaning(edited))
    assert [(d.where, d.a, d.b) for d in differences] == [
        ("tensorrt_llm.parameters.kv_cache_free_gpu_mem_fraction", "0.9", "0.5")]
    out = cli("diff", str(official), str(edited), code=1)
    assert "kv_cache_free_gpu_mem_fraction" in out


def _replace(path: Path, old: str, new: str) -> int:
    """Replace the first ``old`` in ``path``; return its 1-based line."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))
    return text[: text.index(old)].count("\n") + 1


def _set_parameter(path: Path, key: str, value: str) -> int:
    text = path.read_text()
    start = text.index(f'"{key}"')
    value_start = text.index('string_value: "', start) + len('string_value: "')
    path.write_text(text[:value_start] + value + text[text.index('"', value_start):])
    return text[:start].count("\n") + 1


# (name, file, mutation -> line, words expected in the message): the mistakes users report.
MISTAKES = [
    ("batch size placeholder Triton parses", "preprocessing",
     lambda f: _replace(f, "max_batch_size: 32", "max_batch_size: ${triton_max_batch_size}"), "placeholder"),
    ("tokenizer_dir left unfilled", "postprocessing",
     lambda f: _set_parameter(f, "tokenizer_dir", "${tokenizer_dir}"), "still the template placeholder"),
    ("engine path left unfilled", "tensorrt_llm",
     lambda f: _set_parameter(f, "gpt_model_path", "${engine_dir}"), "still the template placeholder"),
    ("batch sizes differ", "postprocessing", lambda f: _replace(f, "max_batch_size: 32", "max_batch_size: 16"),
     "differs from"),
    ("BLS decoupled, tensorrt_llm not", "tensorrt_llm",
     lambda f: _replace(f, "decoupled: true", "decoupled: false"), "decoupled"),
    ("parameter misspelled", "tensorrt_llm",
     lambda f: _replace(f, '"kv_cache_free_gpu_mem_fraction"', '"kv_cache_free_gpu_memory_fraction"'), "did you mean"),
    ("KV fraction above 1", "tensorrt_llm", lambda f: _set_parameter(f, "kv_cache_free_gpu_mem_fraction", "1.5"),
     "fraction"),
    ("chunked context not a boolean", "tensorrt_llm", lambda f: _set_parameter(f, "enable_chunked_context", "yes please"),
     "true or false"),
    ("logits data type placeholder", "tensorrt_llm",
     lambda f: _replace(f, "data_type: TYPE_FP32", "data_type: ${logits_datatype}"), "placeholder"),
    ("batch size above the engine's", "tensorrt_llm", lambda f: _replace(f, "max_batch_size: 32", "max_batch_size: 64"),
     "max_batch_size"),
    ("unknown backend name", "postprocessing", lambda f: _replace(f, 'backend: "python"', 'backend: "pyhton"'),
     "backend"),
    ("platform and backend both set (Triton refuses the pair)", "postprocessing",
     lambda f: _replace(f, 'backend: "python"', 'backend: "python"\nplatform: "ensemble"') + 1, "both platform"),
    ("batching strategy left unfilled (the C++ backend throws on it)", "tensorrt_llm",
     lambda f: _set_parameter(f, "gpt_model_type", "${batching_strategy}"), "'gpt_model_type' of tensorrt_llm"),
]


@pytest.mark.parametrize("name, model, mutate, words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_reported_mistake_is_caught_at_its_file_and_line(official, name, model, mutate, words):
    cfg = official / model / "config.pbtxt"
    line = mutate(cfg)
    problems = [p for p in validate_repository(official) if p.severity is Severity.error]
    hits = [p for p in problems if re.search(words, p.message)]
    assert hits, f"{name}: nothing matching {words!r} in:\n" + "\n".join(map(str, problems))
    assert all(p.fix for p in hits)
    # At the edited line, or (a disagreement between two models) at the line of the other side.
    assert any(p.line and (Path(p.file) == cfg and p.line == line or Path(p.file) != cfg) for p in hits), \
        "\n".join(map(str, hits))


def _same_config(path: Path, original: bytes) -> bool:
    """The damaged file still parses to the ModelConfig the original parses to."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def parse(data: bytes):
        try:
            return text_format.Parse(data.decode("utf-8"), model_config_pb2.ModelConfig())
        except (text_format.ParseError, UnicodeDecodeError):
            return None

    damaged = parse(path.read_bytes())
    return damaged is not None and damaged == parse(original)


def test_validate_never_crashes_on_a_mangled_repository(official):
    """Seeded random damage to every config: validate answers with problems, import with a TritongenError."""
    rng = random.Random(7)
    configs = sorted(official.glob("*/config.pbtxt"))
    originals = {c: c.read_bytes() for c in configs}
    pristine = sorted((p.file, p.message, p.severity) for p in validate_repository(official))
    junk = [b"${x}", b"\x00", b"\xff\xfe", b"{", b"}", b"-1", b"99999999999999999999", b'"', b"\n", b"nan", b"\\"]
    for _ in range(150):
        for c, data in originals.items():
            c.write_bytes(data)
        target = rng.choice(configs)
        data = bytearray(originals[target])
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                del data[pos: pos + rng.randint(1, 40)]
            elif action == 1:
                data[pos:pos] = rng.choice(junk)
            else:
                data = data[:pos]
        target.write_bytes(bytes(data))
        problems = validate_repository(official)
        assert all(p.fix for p in problems)
        verdict = sorted((p.file, p.message, p.severity) for p in problems)
        if _same_config(target, originals[target]):
            assert verdict == pristine  # damage that leaves the same ModelConfig changes no verdict
        else:
            assert verdict != pristine, f"damage to {target} changed nothing validate says"
        try:
            import_repository(official)
        except TritongenError as exc:
            assert exc.fix


def test_foreign_llmapi_repository_is_validated_as_one(tmp_path):
    """NVIDIA's llmapi model folder as shipped (no tritongen.json; max_batch_size and decoupled only in
    model.yaml's triton_config, as NVIDIA's config.pbtxt leaves them out) is checked as an LLM-API model,
    not as a broken engine repository (21 false errors before)."""
    from generator.repo.llmapi import llmapi_data

    model = tmp_path / "repo" / "tensorrt_llm"
    (model / "1").mkdir(parents=True)

    def tensors(items):
        return ",\n".join(f'  {{ name: "{t["name"]}" data_type: {t["data_type"]} dims: [ {", ".join(map(str, t["dims"]))} ]'
                          + (" optional: true" if t.get("optional") else "") + " }" for t in items)

    data = llmapi_data()
    (model / "config.pbtxt").write_text('name: "tensorrt_llm"\nbackend: "python"\n'
                                        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
                                        f"input [\n{tensors(data['triton_inputs'])}\n]\n"
                                        f"output [\n{tensors(data['triton_outputs'])}\n]\n")
    (model / "1" / "model.yaml").write_text("model: TinyLlama/TinyLlama-1.1B-Chat-v1.0\nbackend: pytorch\n"
                                            "tensor_parallel_size: 1\npipeline_parallel_size: 1\n"
                                            "triton_config:\n  max_batch_size: 0\n  decoupled: False\n")
    for name in ("model.py", "helpers.py"):
        (model / "1" / name).write_text(f"# NVIDIA's {name}, copied by the user\n")
    assert errors_and_warnings(tmp_path / "repo") == []
    (model / "1" / "model.yaml").write_text("model: x\nbackend: pytorch\ntensor_paralel_size: 1\n")
    assert any("tensor_paralel_size" in p.message for p in errors_and_warnings(tmp_path / "repo"))
