"""The build plan: flags per GPU and format, refusals, parser conformance, memory figures, GPU lookup, CLI."""

from __future__ import annotations

import json
import shlex

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.errors import TritongenError
from generator.engine.gpus import GPUS, lookup_gpu
from generator.engine.flags import SRC_FIELD_SM120, SRC_SPEC, check_argv, flag_data
from generator.engine.plan import make_plan
from generator.engine.shape import read_model_config, reference_config_path
from generator.spec import load_spec

REFERENCE_FLAGS = (
    "--max_seq_len 4608 --max_batch_size 32 --max_num_tokens 8192 --gemm_plugin nvfp4 "
    "--gpt_attention_plugin bfloat16 --kv_cache_type paged --tokens_per_block 64 --remove_input_padding enable "
    "--use_fused_mlp enable --norm_quant_fusion enable --max_beam_width 1 --workers 1 --multiple_profiles enable"
)
SM120_CONSERVATIVE = ("--context_fmha", "--use_fp8_context_fmha", "--fuse_fp4_quant")


@pytest.fixture(scope="module")
def qwen3(qwen3_8b_config):
    return json.loads(qwen3_8b_config.read_text())


def plan_for(config, *overrides):
    return make_plan(load_spec(None, list(overrides)), config)


def flag_names(plan):
    return [f.flag for f in plan.flags]


def test_reference_deployment_exact_flags(qwen3):
    spec = load_spec(None)
    plan = make_plan(spec, qwen3)
    argv = plan.trtllm_build_argv()
    assert argv[:5] == ["trtllm-build", "--checkpoint_dir", str(spec.trtllm_checkpoint_dir),
                        "--output_dir", str(spec.engine_dir)]
    assert shlex.join(argv[5:]) == REFERENCE_FLAGS
    assert plan.errors == () and plan.warnings == ()
    assert plan.versions["tensorrt_llm"] == "1.2.1"
    assert plan.versions["triton_container"].startswith("nvcr.io/nvidia/tritonserver:") and "trtllm" in plan.versions["triton_container"]
    # a temporary output folder replaces only the --output_dir value
    moved = plan.trtllm_build_argv(output_dir="/tmp/x")
    assert moved[4] == "/tmp/x" and moved[5:] == argv[5:]


def test_accepted_but_no_effect_is_marked(qwen3):
    plan = plan_for(qwen3)
    by_flag = {f.flag: f for f in plan.flags}
    assert "not FP8" in by_flag["--use_fused_mlp"].no_effect
    assert "LlamaForCausalLM" in by_flag["--norm_quant_fusion"].no_effect
    assert by_flag["--max_seq_len"].no_effect is None
    # the same flags do act for a Llama NVFP4 / FP8 checkpoint
    llama = dict(qwen3, architectures=["LlamaForCausalLM"], model_type="llama")
    assert {f.flag: f for f in plan_for(llama).flags}["--norm_quant_fusion"].no_effect is None
    fp8 = {f.flag: f for f in plan_for(qwen3, "quantization.format=fp8").flags}
    assert fp8["--use_fused_mlp"].no_effect is None and "--norm_quant_fusion" not in fp8


def test_sm120_leaves_out_fmha_flags_as_conservative(qwen3):
    for gpu in ("rtx-5090", "rtx-pro-6000", "rtx-pro-4000", "sm120"):
        plan = plan_for(qwen3, f"build.gpu={gpu}")
        omitted = {o.flag: o for o in plan.omitted}
        for flag in SM120_CONSERVATIVE:
            assert flag not in flag_names(plan)
            assert omitted[flag].source == SRC_FIELD_SM120
    b200 = {o.flag: o for o in plan_for(qwen3, "build.gpu=b200").omitted}
    assert all(b200[f].source != SRC_FIELD_SM120 for f in SM120_CONSERVATIVE)


def test_sm120_choices_overridable_in_spec(qwen3):
    plan = plan_for(qwen3, "build.plugins.context_fmha=false", "build.plugins.use_fp8_context_fmha=false",
                    "build.plugins.fuse_fp4_quant=true")
    args = shlex.join(plan.trtllm_build_argv())
    assert "--context_fmha disable" in args and "--use_fp8_context_fmha disable" in args
    assert "--fuse_fp4_quant enable" in args
    assert {f.flag: f.source for f in plan.flags}["--context_fmha"] == SRC_SPEC
    # without context FMHA trtllm-build sizes the context phase from max_input_len, so it is passed
    assert "--max_input_len 4096" in args
    assert any("fuse_fp4_quant=true on SM120" in w for w in plan.warnings)
    assert not plan.errors


def test_nvfp4_refused_on_hopper_ampere_ada(qwen3):
    for gpu in ("h100-sxm", "h100-pcie", "h200", "a100-80gb", "l40s", "rtx-4090"):
        plan = plan_for(qwen3, f"build.gpu={gpu}")
        assert any("nvfp4 needs Blackwell" in e and f"SM{lookup_gpu(gpu).sm}" in e for e in plan.errors), plan.errors


def test_fp8_allowed_on_hopper_refused_on_ampere(qwen3):
    plan = plan_for(qwen3, "build.gpu=h100-sxm", "quantization.format=fp8")
    assert plan.errors == ()
    assert {f.flag: f.value for f in plan.flags}["--gemm_plugin"] == "auto"
    ampere = plan_for(qwen3, "build.gpu=a100", "quantization.format=fp8")
    assert any("fp8 needs SM89+" in e for e in ampere.errors)
    assert any("kv_cache=fp8 needs SM89+" in e for e in ampere.errors)
    assert plan_for(qwen3, "build.gpu=a100", "quantization.format=int4_awq", "quantization.kv_cache=int8").errors == ()


def test_int_quant_refused_on_b200(qwen3):
    plan = plan_for(qwen3, "build.gpu=b200", "quantization.format=int4_awq")
    assert any("SM100-SM119" in e for e in plan.errors)


@pytest.mark.parametrize("overrides", [
    (), ("build.gpu=b200",), ("build.gpu=h100", "quantization.format=fp8"), ("quantization.format=none",),
    ("build.gpu=a100", "quantization.format=int8_sq", "quantization.kv_cache=int8"),
    ("build.gpu=l40s", "quantization.format=int4_awq", "build.tp_size=2", "build.multiple_profiles=false"),
    ("serving.enable_chunked_context=true", "serving.enable_kv_cache_reuse=true", "build.plugins.gemm_plugin=disable",
     "build.plugins.use_fused_mlp=false", "build.plugins.norm_quant_fusion=false", "build.plugins.context_fmha=true",
     "build.plugins.use_fp8_context_fmha=true", "build.plugins.fuse_fp4_quant=false"),
])
def test_every_emitted_flag_is_in_the_recorded_parser(qwen3, overrides):
    data = flag_data()
    plan = plan_for(qwen3, *overrides)
    argv = plan.trtllm_build_argv()[1:]
    assert check_argv(argv, data["flags"], data["not_accepted"]) == []
    assert check_argv(list(plan.conversion.argv[2:]), data["quantize_py"]) == []
    names = [a for a in argv if a.startswith("--")]
    assert set(names) <= set(data["flags"])
    assert "--max_output_len" not in names and "--exclude_modules" not in names
    assert not any(e.startswith(("trtllm-build:", "quantize.py:")) for e in plan.errors)


def test_flag_checker_rejects_what_the_parser_rejects():
    data = flag_data()
    problems = check_argv(["--max_output_len", "512", "--exclude_modules", "lm_head", "--gemm_plugin", "int4",
                           "--max_batch_size", "many", "--paged_kv_cache", "enable", "--strip_plan", "yes"],
                          data["flags"], data["not_accepted"])
    assert len(problems) == 6
    assert "removed from trtllm-build in 2024" in problems[0]
    assert "quantization config" in problems[1]


def test_bad_gemm_plugin_override_is_an_error(qwen3):
    plan = plan_for(qwen3, "build.plugins.gemm_plugin=int4")
    assert any("--gemm_plugin 'int4' is not one of" in e for e in plan.errors)


def test_kv_bytes_per_token(qwen3):
    assert plan_for(qwen3, "quantization.kv_cache=none").memory.kv_bytes_per_token == 147_456
    fp8 = plan_for(qwen3).memory
    assert fp8.kv_bytes_per_token == 73_728 and fp8.kv_dtype == "fp8"
    assert plan_for(qwen3, "build.gpu=b200", "build.tp_size=2").memory.kv_bytes_per_token_per_gpu == 73_728 // 2


def test_checkpoint_sizes_match_measured_exports(qwen3):
    nvfp4 = plan_for(qwen3).memory
    assert nvfp4.parameters == 8_190_735_360
    assert nvfp4.checkpoint_bytes == pytest.approx(6_397_066_432, rel=0.01)
    fp8 = plan_for(qwen3, "quantization.format=fp8").memory
    assert fp8.checkpoint_bytes == pytest.approx(9_435_809_112, rel=0.01)
    bf16 = plan_for(qwen3, "quantization.format=none", "quantization.kv_cache=none").memory
    assert bf16.checkpoint_bytes == 2 * 8_190_735_360
    awq = plan_for(qwen3, "build.gpu=a100", "quantization.format=int4_awq").memory
    assert awq.checkpoint_bytes < nvfp4.checkpoint_bytes < fp8.checkpoint_bytes  # 4.125 < 4.5 < 8 bits


def test_excluded_modules_stay_at_dtype_size(qwen3):
    base = plan_for(qwen3).memory
    more = plan_for(qwen3, 'quantization.exclude_modules=["lm_head", "*mlp.down_proj"]')
    down = 36 * 12288 * 4096
    assert more.memory.checkpoint_bytes - base.checkpoint_bytes == down * 2 - (down // 2 + down // 16 + 36 * 8)
    assert any("keeps only lm_head" in w for w in more.warnings)


def test_max_num_tokens_below_prompt_needs_chunked_context(qwen3):
    refused = plan_for(qwen3, "build.max_num_tokens=2048")
    assert any("max_num_tokens (2048) is below build.max_input_len (4096)" in e for e in refused.errors)
    chunked = plan_for(qwen3, "build.max_num_tokens=2048", "serving.enable_chunked_context=true")
    assert chunked.errors == ()
    assert "--use_paged_context_fmha enable" in shlex.join(chunked.trtllm_build_argv())
    no_fmha = plan_for(qwen3, "build.max_num_tokens=2048", "serving.enable_chunked_context=true",
                       "build.plugins.context_fmha=false")
    assert any("need paged context FMHA" in e for e in no_fmha.errors)


def test_max_input_len_not_below_max_seq_len_refused(qwen3):
    spec = load_spec(None)
    spec.build.max_seq_len = 4096  # assignment validates the section, not the cross-field rule
    assert any("must be below max_seq_len (4096)" in e for e in make_plan(spec, qwen3).errors)


def test_tensor_parallel_must_divide_heads(qwen3):
    plan = plan_for(qwen3, "build.gpu=h100", "quantization.format=fp8", "build.tp_size=3")
    assert any("does not divide the model's 32 attention heads" in e for e in plan.errors)
    assert any("8 KV heads" in e for e in plan.errors)
    two = plan_for(qwen3, "build.gpu=h100", "quantization.format=fp8", "build.tp_size=2", "build.pp_size=2")
    assert two.errors == () and any("world size 4" in n for n in two.notes)
    assert "--tp_size" in {o.flag for o in two.omitted}
    assert two.conversion.argv[two.conversion.argv.index("--tp_size") + 1] == "2"
    sixteen = plan_for(qwen3, "build.gpu=h100", "quantization.format=fp8", "build.tp_size=16")
    assert sixteen.errors == () and any("replicated" in n for n in sixteen.notes)


def test_model_too_big_for_the_gpu_refused(qwen3):
    seventy_b = dict(qwen3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                     head_dim=128, vocab_size=128256)
    plan = plan_for(seventy_b, "quantization.format=none", "quantization.kv_cache=none")
    assert any("the weights need" in e and "GiB per GPU" in e for e in plan.errors)
    assert plan_for(seventy_b, "build.gpu=rtx-pro-6000").errors == ()


def test_warning_when_batch_of_full_sequences_does_not_fit(qwen3):
    plan = plan_for(qwen3, "build.gpu=rtx-pro-4000", "build.max_batch_size=128")
    m = plan.memory
    assert not m.fits_batch and m.demand_tokens == 128 * 4608 > m.kv_tokens > 0
    assert any("max_batch_size 128 sequences" in w for w in plan.warnings)
    assert plan.errors == ()
    capped = plan_for(qwen3, "serving.max_tokens_in_paged_kv_cache=4096")
    assert capped.memory.kv_tokens == 4096 and any("less than one sequence" in e for e in capped.errors)


def test_gpu_lookup_names_aliases_and_sm():
    assert lookup_gpu("RTX 5090").key == "rtx-5090"
    assert lookup_gpu("NVIDIA GeForce RTX 5090").key == "rtx-5090"
    assert lookup_gpu("H100").key == "h100-sxm" and lookup_gpu("h100_pcie").key == "h100-pcie"
    sm90 = lookup_gpu("SM90")
    assert sm90.sm == 90 and sm90.memory_gib == 80 and "assumes" in sm90.name
    assert lookup_gpu("sm120").memory_gib == 24
    with pytest.raises(TritongenError) as err:
        lookup_gpu("rtx-3090")
    assert "rtx-5090" in str(err.value) and "sm120" in str(err.value)
    for gpu in GPUS:
        assert ("nvfp4" in gpu.native_formats) == (gpu.sm >= 100)
        assert ("fp8" in gpu.native_formats) == (gpu.sm >= 89)
        assert gpu.source


def test_reference_config_is_shipped_and_announced(qwen3_8b_config, tmp_path):
    assert json.loads(reference_config_path().read_text()) == json.loads(qwen3_8b_config.read_text())
    config, source = read_model_config(load_spec(None, [f"artifacts.dir={tmp_path}"]))
    assert config["num_key_value_heads"] == 8 and "shipped reference" in source
    with pytest.raises(TritongenError, match="no config.json"):
        read_model_config(load_spec(None, ["model.source=org/other-model", f"artifacts.dir={tmp_path}"]))
    config, source = read_model_config(load_spec(None), qwen3_8b_config)
    assert source == str(qwen3_8b_config)


def test_cli_plan_text_json_and_refusal(tmp_path):
    runner = CliRunner()
    spec = tmp_path / "t.yaml"
    assert runner.invoke(app, ["init", str(spec)]).exit_code == 0
    text = runner.invoke(app, ["plan", str(spec)])
    assert text.exit_code == 0, text.output
    assert "shipped reference config" in text.output and REFERENCE_FLAGS in text.output
    as_json = runner.invoke(app, ["plan", str(spec), "--json"])
    data = json.loads(as_json.stdout)
    assert data["memory"]["kv_bytes_per_token"] == 73_728 and data["errors"] == []
    assert data["trtllm_build"]["argv"][0] == "trtllm-build"
    refused = runner.invoke(app, ["plan", str(spec), "--set", "build.gpu=h100-sxm", "--set", "build.tp_size=3"])
    assert refused.exit_code == 4
    assert "nvfp4 needs Blackwell" in refused.output and "attention heads" in refused.output


@pytest.mark.parametrize("bad", [
    {"num_hidden_layers": 20_000_000},  # review29: 8 GB and a MemoryError in render, plan, validate
    {"num_attention_heads": 0, "head_dim": None},  # was a ZeroDivisionError
    {"num_key_value_heads": "8"}, {"num_key_value_heads": -8}, {"head_dim": 1.5}, {"hidden_size": True},
    {"max_position_embeddings": "x"}, {"architectures": "Qwen3ForCausalLM"}, {"architectures": [{"a": 1}]},
])
def test_a_hostile_model_config_is_refused_naming_its_field(qwen3, bad):
    """A config.json from a model folder a user was handed: a size that is no whole number in range, or
    architectures that are no list of names, is an error naming the key before any per-layer loop runs."""
    from generator.engine.shape import model_shape

    with pytest.raises(TritongenError) as err:
        model_shape(qwen3 | bad)
    assert next(iter(bad)) in str(err.value) and err.value.fix
