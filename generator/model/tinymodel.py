"""A tiny but real Qwen3 model made locally, so tests and the demo run the code path of a real model.

The architecture is Qwen3-8B's (Qwen3ForCausalLM, GQA, q/k norms, untied lm_head, RoPE theta 1e6)
scaled down until it trains in seconds on two CPU cores; every quantized linear layer keeps
dimensions that are multiples of 128, so NVFP4 (blocks of 16) and INT4-AWQ (groups of 128) both
fit. The tokenizer is a byte-level BPE trained on the bundled text, so any UTF-8 round-trips.
A short, fixed training run on the same text makes greedy output and held-out perplexity mean
something. Everything is seeded: the same seed gives the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Iterator

from generator.model.fetch import add_legacy_rope_theta
from generator.fsutil import atomic_dir, copy_kept, keep_copy, kept_folder, reusable
from generator.resources import data_dir

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
"""Qwen's special tokens: end of text (also padding) and the ChatML turn markers."""

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML, the turn format Qwen models use (without Qwen3's thinking blocks)."""

# Qwen's pre-tokenizer split: contractions, letter runs, single digits, punctuation runs, whitespace.
_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

VOCAB_SIZE = 2048
"""Tokenizer (and embedding) size: a multiple of 16, reached on the bundled text with min frequency 1."""

ARCHITECTURE = {
    # Qwen3-8B: 36 layers, hidden 4096, intermediate 12288 (3x), 32 heads / 8 KV heads, head_dim 128.
    "num_hidden_layers": 2,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    # Unchanged from Qwen3-8B.
    "hidden_act": "silu",
    "attention_bias": False,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
}

TRAIN_STEPS = 40
TRAIN_BATCH = 8
TRAIN_SEQ_LEN = 128
TRAIN_LR = 5e-3


def corpus_paragraphs(name: str = "corpus.txt") -> list[str]:
    """Blank-line-separated paragraphs of a bundled text file."""
    text = (data_dir() / name).read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def train_tokenizer(paragraphs: list[str], vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE with Qwen's split pattern and special tokens (deterministic for the same text)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(paragraphs, trainer)
    return tok


def _save_tokenizer(tok, out: Path) -> None:
    """Save so both transformers 5 and older releases (Triton containers) load it.

    transformers 5 writes ``tokenizer_class: TokenizersBackend``, unknown to older releases;
    ``PreTrainedTokenizerFast`` loads in both, and an inline chat template serves releases that
    do not read ``chat_template.jinja``.
    """
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=ARCHITECTURE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def tiny_config(tok):
    """Qwen3Config at the tiny size, with the special-token ids of the trained tokenizer."""
    from transformers import Qwen3Config

    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    return Qwen3Config(
        vocab_size=tok.get_vocab_size(),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        architectures=["Qwen3ForCausalLM"],
        **ARCHITECTURE,
    )


TRAIN_THREADS = 1
"""Torch threads while training. A fixed count: a matrix product's sums split differently over another number of
threads, so the same seed gave other bytes on a machine with another core count. One: at this size a second thread
gains nothing on the 2-core box and costs much when it is busy (make_tiny_model 7.3 s against 8.4 s with two at load
average 4, 11.3 s against 31.9 s at load average 6: the second thread spins waiting for a core)."""


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Torch's intra-op thread count set to ``count`` for the block, the caller's restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(model, token_ids, seed: int) -> float:
    """A fixed, seeded number of AdamW steps on random windows of the corpus; returns the last loss."""
    import torch

    data = torch.tensor(token_ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(TRAIN_STEPS):
        warmup = min(1.0, (step + 1) / 5)
        for group in opt.param_groups:
            group["lr"] = TRAIN_LR * warmup * 0.5 * (1 + math.cos(math.pi * step / TRAIN_STEPS))
        starts = torch.randint(0, len(data) - TRAIN_SEQ_LEN, (TRAIN_BATCH,), generator=gen)
        batch = torch.stack([data[s : s + TRAIN_SEQ_LEN] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def cache_key(seed: int) -> str:
    """What decides the model's bytes: the seed, this code (constants as they are now, source as written), the
    corpus, the libraries that train and save it, and the machine's kind of CPU (its kernels round differently)."""
    import hashlib
    import platform

    import torch

    from generator.model import fetch
    from generator.model.manifest import library_versions

    facts = {
        "seed": seed, "architecture": ARCHITECTURE, "vocab_size": VOCAB_SIZE,
        "train": [TRAIN_STEPS, TRAIN_BATCH, TRAIN_SEQ_LEN, TRAIN_LR, TRAIN_THREADS],
        "sources": [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in (__file__, fetch.__file__)],
        "corpus": hashlib.sha256((data_dir() / "corpus.txt").read_bytes()).hexdigest(),
        "versions": library_versions(), "cpu": [platform.machine(), torch.backends.cpu.get_cpu_capability()],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def make_tiny_model(out_dir: Path, *, seed: int = 0, force: bool = False, cache: bool = True) -> Path:
    """Write a tiny trained Qwen3 model (BF16 safetensors, tokenizer, chat template) to ``out_dir``.

    With ``cache``, the files are kept in tritongen's cache folder under ``cache_key`` and copied from there
    next time (the demo run again, the test suite's second copy): the same bytes a build would write."""
    out_dir = Path(out_dir)
    kept = kept_folder("tiny-model", cache_key(seed)) if cache else None
    with atomic_dir(out_dir, force=force, command_hint=f"tritongen tiny-model -o {out_dir}") as tmp:
        if kept is not None and reusable(kept):
            copy_kept(kept, tmp)
        else:
            _build(tmp, seed)
            if kept is not None:
                keep_copy(tmp, kept)
    return out_dir.resolve()


def _build(tmp: Path, seed: int) -> None:
    """Train the model and write its files into ``tmp``."""
    import torch
    from transformers import GenerationConfig, Qwen3ForCausalLM

    paragraphs = corpus_paragraphs()
    tok = train_tokenizer(paragraphs)
    config = tiny_config(tok)
    eot = config.pad_token_id
    token_ids: list[int] = []
    for p in paragraphs:
        token_ids += tok.encode(p).ids + [eot]
    with torch.random.fork_rng(devices=[]), _torch_threads(TRAIN_THREADS):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
        final_loss = _train(model, token_ids, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, eot],
        pad_token_id=eot,
    )
    model.to(torch.bfloat16).save_pretrained(str(tmp))
    add_legacy_rope_theta(tmp / "config.json")
    _save_tokenizer(tok, tmp)
    (tmp / "tritongen-tiny.json").write_text(
        json.dumps(
            {"seed": seed, "train_steps": TRAIN_STEPS, "train_tokens": len(token_ids),
             "final_train_loss": round(final_loss, 4), "parameters": sum(p.numel() for p in model.parameters())},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
