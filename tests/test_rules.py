"""Each engine/Triton rule that several stages check is decided once (generator/engine/rules.py): the plan,
the topology, render and validate give the same verdict and the same fix for the same input, and every
command a fix names exists in the CLI with the options it is given."""

from __future__ import annotations

import json
import re

import pytest

from generator.deploy.topology import resolve_topology
from generator.engine import rules
from generator.engine.facts import TRTLLM_VERSION
from generator.engine.plan import make_plan
from generator.errors import TritongenError
from generator.repo import render
from generator.repo.importer import import_repository
from generator.repo.validate import validate_repository
from generator.resources import data_json
from generator.spec import EngineTarget, load_spec
from helpers import small_spec

GPU = ["serving.engine=tensorrtllm", "build.gpu=b200"]


@pytest.fixture(scope="module")
def qwen3(qwen3_8b_config):
    return json.loads(qwen3_8b_config.read_text())


def _refusal(spec, config) -> str:
    with pytest.raises(TritongenError) as err:
        resolve_topology(spec, EngineTarget.tensorrtllm, model_config=config)
    return err.value.message


@pytest.mark.parametrize("overrides, rule", [
    (["build.tp_size=3", "topology.gpus_per_node=8"], "tp_heads"),
    (["build.tp_size=16", "topology.gpus_per_node=16", "build.gpu=b200"], None),  # 8 KV heads replicated: a note only
    (["build.pp_size=40", "topology.gpus_per_node=8", "topology.nodes=5"], "pp_layers"),
])
def test_parallel_layout_same_verdict_in_plan_and_topology(qwen3, overrides, rule):
    spec = load_spec(None, GPU + overrides)
    from generator.engine.shape import model_shape

    findings = rules.errors(rules.parallel_layout(spec.build.tp_size, spec.build.pp_size, model_shape(qwen3)))
    plan = make_plan(spec, qwen3)
    if rule is None:
        assert findings == [] and not any("heads" in e or "layers" in e for e in plan.errors)
        assert any("replicated" in n for n in plan.notes)
        return
    assert rule in [f.rule for f in findings]
    refusal = _refusal(spec, qwen3)
    for f in findings:
        assert f.text in plan.errors and f.text in refusal


def test_kv_smaller_than_one_sequence_is_refused_by_plan_and_topology_alike(qwen3):
    spec = load_spec(None, GPU + ["build.gpu=rtx-4090", "quantization.format=none", "quantization.kv_cache=none",
                                  "build.max_input_len=200000"])
    plan = make_plan(spec, qwen3)
    finding = [f for f in rules.memory_fits(plan.memory, plan.gpu, 1, 1, spec.build.max_batch_size)]
    assert [f.rule for f in finding] == ["kv_one_sequence"] and finding[0].severity == "error"
    assert finding[0].text in plan.errors
    assert finding[0].text in _refusal(spec, qwen3)


def test_weights_larger_than_the_gpu_refused_alike(qwen3):
    big = dict(qwen3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
               head_dim=128, vocab_size=128256)
    spec = load_spec(None, GPU + ["build.gpu=rtx-4090", "quantization.format=none", "quantization.kv_cache=none"])
    plan = make_plan(spec, big)
    [finding] = rules.memory_fits(plan.memory, plan.gpu, 1, 1, spec.build.max_batch_size)
    assert finding.rule == "weights_fit" and finding.text in plan.errors and finding.text in _refusal(spec, big)


def test_batch_above_the_engine_same_fix_in_render_and_validate(tokenizer_weights_dir, tmp_path, build_engine):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm", "build.max_batch_size=8")
    engine_config = build_engine(spec)
    [expected] = rules.batch_fits_engine(16, 8, str(engine_config))
    more = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.engine=tensorrtllm", "build.max_batch_size=32",
                      "serving.max_batch_size=16")
    with pytest.raises(TritongenError) as err:
        render.plan_repository(more)
    assert (err.value.message, err.value.fix) == (expected.message, expected.fix)

    repo = render.render_repository(spec, tmp_path / "repo")
    config = repo / "tensorrt_llm" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: 16"))
    found = [p for p in validate_repository(repo) if p.message == expected.message]
    assert found and found[0].fix == expected.fix


def test_kv_cap_same_verdict_in_plan_and_validate(qwen3):
    spec = load_spec(None, GPU + ["serving.max_tokens_in_paged_kv_cache=100000000"])
    plan = make_plan(spec, qwen3)
    [finding] = rules.kv_cap_fits(100000000, plan.memory, plan.gpu.name)
    assert finding.text in plan.errors
    assert rules.kv_cap_fits(1000, plan.memory, plan.gpu.name) == []


def test_every_command_a_fix_names_exists_in_the_cli():
    from typer.main import get_command

    from generator.cli import app

    cli = get_command(app)
    for command in (rules.REBUILD, rules.RERENDER, rules.PLAN):
        words = command.split()
        assert words[0] == "tritongen"
        sub = cli.commands[words[1]]
        options = {o for p in sub.params for o in getattr(p, "opts", [])}
        for flag in re.findall(r"(?<!\S)(-{1,2}[a-z][\w-]*)", command):
            assert flag in options, f"{command}: {words[1]} has no option {flag}"


def test_one_tensorrt_llm_version_across_the_recorded_upstream_facts():
    for name in ("trtllm_build_1.2.1.json", "trtllm_engine_1.2.1.json", "inflight_batcher_llm_1.2.1.json",
                 "llmapi_1.2.json"):
        assert data_json(name)["tensorrt_llm_version"] == TRTLLM_VERSION, name


def test_exclusion_rule_lives_on_the_quantization_spec():
    q = load_spec(None, ["quantization.exclude_modules=[lm_head,'*mlp*']"]).quantization
    assert q.keeps_unquantized("lm_head") and q.keeps_unquantized("model.layers.0.mlp.up_proj")
    assert not q.keeps_unquantized("model.layers.0.self_attn.q_proj")
    assert load_spec(None, ["quantization.format=none"]).quantization.keeps_unquantized("model.layers.0.self_attn.q_proj")


def _cli_commands():
    from typer.main import get_command

    from generator.cli import app

    def walk(command, prefix=()):
        for name, sub in getattr(command, "commands", {}).items():
            yield prefix + (name,), sub
            yield from walk(sub, prefix + (name,))

    return dict(walk(get_command(app)))


def test_every_command_any_message_names_exists_with_its_options():
    """Errors, fixes and notes anywhere in generator/ name `tritongen CMD --opt`: each must be real."""
    import ast
    from pathlib import Path

    commands = _cli_commands()
    mention = re.compile(r"tritongen ([a-z][a-z-]*(?: [a-z][a-z-]*)?)((?:(?! or | and |, |; |[`'\"()]).)*)")
    checked, bad = 0, []
    for file in sorted((Path(__file__).resolve().parents[1] / "generator").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            for m in mention.finditer(node.value):
                words = tuple(m.group(1).split())
                key = words[:2] if words[:2] in commands else words[:1]
                if key not in commands:
                    continue  # prose ("tritongen started ..."), not a command
                checked += 1
                options = {o for p in commands[key].params for o in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
                bad += [f"{file.name}:{node.lineno}: {m.group(0)!r} has no {flag}"
                        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", m.group(2)) if flag not in options]
    assert checked > 50 and not bad, "\n".join(bad)


def test_bls_instances_that_cannot_fill_the_batch_are_warned_by_validate(tokenizer_weights_dir, tmp_path):
    """Rule "bls_fills_batch" (review18): each tensorrt_llm_bls instance puts at most 24 requests into the engine
    (model_common.ENGINE_CALLS, review17), so one instance can never fill the reference's batch of 32. By default
    render makes as many instances as the batch needs; validate warns when the repository has fewer, with the fix
    the rule gives (the field to change)."""
    import importlib.util

    from generator.resources import model_repo_dir
    from generator.spec.serving import BLS_ENGINE_CALLS

    spec = importlib.util.spec_from_file_location("_model_common", model_repo_dir() / "_shared" / "model_common.py")
    model_common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_common)
    assert BLS_ENGINE_CALLS == model_common.ENGINE_CALLS  # the bound the BLS applies is the one the rule assumes
    assert rules.bls_fills_batch(24, 1) == [] and rules.bls_fills_batch(48, 2) == []
    [expected] = rules.bls_fills_batch(32, 1)
    assert expected.severity == "warning" and "serving.bls_instances=2" in expected.fix

    def bls_warnings(repo):
        return [p for p in validate_repository(repo) if "tensorrt_llm_bls" in p.file and p.severity == "warning"]

    gpu = ("serving.engine=tensorrtllm", "build.max_batch_size=32")
    repo = render.render_repository(small_spec(tokenizer_weights_dir, tmp_path / "art", *gpu), tmp_path / "default")
    assert "count: 2 " in (repo / "tensorrt_llm_bls" / "config.pbtxt").read_text() and bls_warnings(repo) == []
    one = render.render_repository(small_spec(tokenizer_weights_dir, tmp_path / "art", *gpu, "serving.bls_instances=1"),
                                   tmp_path / "one")
    [found] = bls_warnings(one)
    assert (found.message, found.fix) == (expected.message, expected.fix)
    config = repo / "tensorrt_llm_bls" / "config.pbtxt"  # the same count edited by hand in the default's repository
    config.write_text(config.read_text().replace("count: 2 ", "count: 1 "))
    [edited] = bls_warnings(repo)
    assert (edited.message, edited.fix, edited.line) == (expected.message, expected.fix, found.line)
    config.write_text(config.read_text().replace("count: 1 kind: KIND_CPU", "count: 1 kind: KIND_GPU gpus: [ 0, 1 ]"))
    assert bls_warnings(repo) == []  # review20: one instance on each of two GPUs is two, as for import
    assert import_repository(repo).spec["serving"]["bls_instances"] == 2
