"""Throughput of the pre- and postprocessing code next to plain per-request tokenizer calls (by hand, not CI).

The model files are loaded from model_repo/ by path, as Triton loads them, and timed in this
process (no server, no RPC), so the figures are the cost of the Python models' own work:

  preprocessing   per-request ``tokenizer.encode`` (one call per prompt)  vs  the model's batched
                  encode of all prompts of one ``execute`` (batch of --batch requests)
  postprocessing  per-request ``tokenizer.decode`` of a whole answer (non-streaming)  vs  upstream's
                  streaming (each token decoded alone, which breaks multi-byte characters)  vs  the
                  model's incremental detokenizer (each token in context, exact)

Without --tokenizer the demo's tokenizer (byte-level BPE trained on the bundled text) is used.

    .venv/bin/python bench/bench_prepost.py
    .venv/bin/python bench/bench_prepost.py --tokenizer /path/to/Qwen3-8B --batch 32

Prints a markdown table of tokens/s (prompt tokens for preprocessing, output tokens for postprocessing).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.resources import model_repo_dir  # noqa: E402
from generator.model.tinymodel import corpus_paragraphs  # noqa: E402


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _tokenizer(path: str | None):
    from transformers import PreTrainedTokenizerFast

    if path:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    from generator.model.tinymodel import train_tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(corpus_paragraphs()), eos_token="<|im_end|>")


def _rate(fn, tokens: int, min_seconds: float) -> float:
    """Tokens per second of ``fn`` (repeated until ``min_seconds`` have passed)."""
    runs, started = 0, time.perf_counter()
    while True:
        fn()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return runs * tokens / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--tokenizer", help="Hugging Face tokenizer folder (default: the demo's tokenizer)")
    ap.add_argument("--batch", type=int, default=16, help="requests per preprocessing execute")
    ap.add_argument("--answer-tokens", type=int, default=64, help="tokens per decoded answer")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum time per measurement")
    args = ap.parse_args()

    import pytriton

    sys.path.insert(0, str(Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python"))
    pre = _load("bench_preprocessing", model_repo_dir() / "preprocessing" / "1" / "model.py")
    detok = _load("bench_detok", model_repo_dir() / "postprocessing" / "1" / "detok.py")
    tok = _tokenizer(args.tokenizer)

    sentences = [s.strip() + "." for p in corpus_paragraphs() for s in p.split(".") if s.strip()]
    prompts = (sentences * (args.batch // len(sentences) + 1))[: args.batch]
    prompt_tokens = sum(len(tok.encode(p)) for p in prompts)
    model = pre.TritonPythonModel()
    model.tokenizer, model.add_special_tokens = tok, True

    ids = tok.encode(" ".join(corpus_paragraphs()), add_special_tokens=False)
    answers = [ids[i:i + args.answer_tokens] for i in range(0, len(ids) - args.answer_tokens, args.answer_tokens)][:32]
    answer_tokens = sum(len(a) for a in answers)

    def decode(x):
        return tok.decode(x, skip_special_tokens=True)

    def incremental():
        for answer in answers:
            detokenizer = detok.IncrementalDetokenizer(decode)
            for token in answer:
                detokenizer.push([token])
            detokenizer.finish()

    rows = [
        ("preprocessing", "per-request tokenizer.encode", _rate(lambda: [tok.encode(p) for p in prompts], prompt_tokens, args.seconds)),
        ("preprocessing", f"model, batched encode ({args.batch} requests)",
         _rate(lambda: model._encode_prompts(prompts, chat=False), prompt_tokens, args.seconds)),
        ("postprocessing", "per-request tokenizer.decode (whole answer)",
         _rate(lambda: [decode(a) for a in answers], answer_tokens, args.seconds)),
        ("postprocessing", "streaming, each token decoded alone (upstream)",
         _rate(lambda: [decode([t]) for a in answers for t in a], answer_tokens, args.seconds)),
        ("postprocessing", "streaming, model's incremental detokenizer",
         _rate(incremental, answer_tokens, args.seconds)),
    ]
    print(f"tokenizer: {args.tokenizer or 'demo byte-level BPE'} (vocabulary {len(tok)}); "
          f"{len(prompts)} prompts, {prompt_tokens} prompt tokens; {len(answers)} answers of "
          f"{args.answer_tokens} tokens; {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("\n| stage | how | tokens/s |\n|---|---|---:|")
    for stage, how, rate in rows:
        print(f"| {stage} | {how} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
