"""The tiny model: Qwen3's architecture scaled down, a byte-level tokenizer, seeded and trained."""

from __future__ import annotations

import json
import math

import pytest

from generator.errors import TritongenError
from generator.fsutil import CACHE_VAR


def test_config_is_a_scaled_down_qwen3(tiny_model_dir, qwen3_8b_config):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    ref = json.loads(qwen3_8b_config.read_text())
    for key in ("architectures", "model_type", "hidden_act", "tie_word_embeddings", "rope_theta", "rms_norm_eps", "attention_bias"):  # rope_theta also top level, for transformers 4
        assert cfg[key] == ref[key], key
    assert cfg["dtype"] == "bfloat16"
    assert cfg["num_hidden_layers"] < ref["num_hidden_layers"] and cfg["hidden_size"] < ref["hidden_size"]
    assert cfg["num_attention_heads"] > cfg["num_key_value_heads"]  # grouped-query attention
    assert cfg["intermediate_size"] / cfg["hidden_size"] == ref["intermediate_size"] / ref["hidden_size"]
    # Every quantized linear dimension tiles NVFP4 blocks (16) and INT4-AWQ groups (128).
    dims = [cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"] * cfg["head_dim"],
            cfg["num_key_value_heads"] * cfg["head_dim"]]
    assert all(d % 128 == 0 for d in dims), dims


def test_tokenizer_loads_both_ways_and_round_trips_utf8(tiny_model_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    tok_cfg = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # older transformers cannot read TokenizersBackend
    text = "Grüße from 東京: naïve café, 😊 and 🇯🇵 — ok?\n\tend"
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        tok = cls.from_pretrained(tiny_model_dir)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert len(tok) == cfg["vocab_size"] and cfg["vocab_size"] % 16 == 0
        assert tok.convert_ids_to_tokens(cfg["eos_token_id"]) == "<|im_end|>" == tok.eos_token
        assert tok.pad_token == "<|endoftext|>"
        marked = tok("<|im_start|>user", add_special_tokens=False)["input_ids"]
        assert marked[0] == tok.convert_tokens_to_ids("<|im_start|>") and tok.decode(marked) == "<|im_start|>user"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_generation_config_stops_at_chat_end(tiny_model_dir):
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["eos_token_id"] in gen["eos_token_id"] and gen["pad_token_id"] == cfg["pad_token_id"]


def test_training_made_it_better_than_chance(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from generator.resources import data_dir

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = tok((data_dir() / "heldout.txt").read_text(encoding="utf-8"), return_tensors="pt").input_ids[:, :256]
    with torch.no_grad():
        ppl = math.exp(model(ids, labels=ids).loss.item())
    assert ppl < len(tok) / 2, ppl  # an untrained model sits near the vocabulary size


def test_same_seed_same_bytes(tmp_path, monkeypatch):
    """Two builds with the same seed are byte-identical (a shortened run: the same code, fewer steps). The cache
    keeps a build and hands the next call the same bytes without training; another seed or step count is
    another model."""
    import generator.model.tinymodel as tiny

    monkeypatch.setattr(tiny, "TRAIN_STEPS", 2)
    first = tiny.make_tiny_model(tmp_path / "first", seed=3, cache=False)
    second = tiny.make_tiny_model(tmp_path / "second", seed=3, cache=False)
    monkeypatch.setenv(CACHE_VAR, str(tmp_path / "cache"))
    kept = tiny.make_tiny_model(tmp_path / "kept", seed=3)
    monkeypatch.setattr(tiny, "_build", lambda *_: pytest.fail("trained again although the cache holds the model"))
    copied = tiny.make_tiny_model(tmp_path / "copied", seed=3)
    names = sorted(p.name for p in first.iterdir())
    assert "model.safetensors" in names
    for folder in (second, kept, copied):
        assert sorted(p.name for p in folder.iterdir()) == names, folder
        for name in names:
            assert (first / name).read_bytes() == (folder / name).read_bytes(), (folder, name)
    key = tiny.cache_key(3)
    assert [p.name for p in (tmp_path / "cache" / "tiny-model").iterdir()] == [key]  # one folder, nothing staged left
    assert tiny.cache_key(4) != key
    monkeypatch.setattr(tiny, "TRAIN_STEPS", 3)
    assert tiny.cache_key(3) != key


def test_refuses_to_overwrite_without_force(tiny_model_dir):
    from generator.model.tinymodel import make_tiny_model

    with pytest.raises(TritongenError, match="already exists"):
        make_tiny_model(tiny_model_dir)
