"""Quality check: how much a quantized checkpoint changes the model's next-token predictions.

Both models score the same held-out text (bundled, never seen in calibration): perplexity of each,
the share of positions where their most likely next token agrees, and the mean KL divergence from
the original's next-token distribution to the quantized one's. The quantized model is read through
the same loader the CPU reference engine serves with (model_repo/tensorrt_llm_cpu/1/
modelopt_checkpoint.py, loaded from its file so there is one copy of the code).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Callable, Optional

from generator.resources import data_dir, model_repo_dir

Progress = Optional[Callable[[str, int, Optional[int]], None]]


@functools.lru_cache(maxsize=1)
def checkpoint_loader():
    """The stand-alone checkpoint loader module (``load_causal_lm``, the fake-quantization ops)."""
    path = model_repo_dir() / "tensorrt_llm_cpu" / "1" / "modelopt_checkpoint.py"
    spec = importlib.util.spec_from_file_location("tritongen_modelopt_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def heldout_chunks(tokenizer, *, max_tokens: int, chunk_len: int) -> list:
    """The bundled held-out text as token-id tensors of at most ``chunk_len``, ``max_tokens`` in all."""
    import torch

    text = (data_dir() / "heldout.txt").read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return [torch.tensor(ids[i : i + chunk_len]) for i in range(0, len(ids), chunk_len) if len(ids[i : i + chunk_len]) > 1]


def next_token_logits(model, chunks, *, stage: str = "quality", progress: Progress = None) -> list:
    """Float32 CPU logits [tokens, vocab] for each chunk (one sequence at a time, no cache)."""
    import torch

    device = next(model.parameters()).device
    logits = []
    with torch.no_grad():
        for i, chunk in enumerate(chunks):
            out = model(input_ids=chunk[None].to(device), use_cache=False).logits[0]
            logits.append(out.float().cpu())
            if progress:
                progress(stage, i + 1, len(chunks))
    return logits


def perplexity(logits, chunks) -> float:
    """exp(mean negative log-likelihood of each chunk's next tokens)."""
    import torch

    nll, count = 0.0, 0
    for lg, ids in zip(logits, chunks):
        logp = torch.log_softmax(lg[:-1], dim=-1)
        nll -= logp.gather(-1, ids[1:, None]).sum().item()
        count += len(ids) - 1
    return math.exp(nll / count)


def compare(reference: list, candidate: list, chunks: list) -> dict:
    """Perplexity of both, top-1 agreement and mean KL(reference || candidate) in nats per token."""
    import torch

    agree, kl, positions = 0, 0.0, 0
    for ref, cand in zip(reference, candidate):
        ref_logp, cand_logp = torch.log_softmax(ref, dim=-1), torch.log_softmax(cand, dim=-1)
        agree += (ref.argmax(-1) == cand.argmax(-1)).sum().item()
        kl += (ref_logp.exp() * (ref_logp - cand_logp)).sum().item()
        positions += ref.shape[0]
    return {
        "tokens": positions,
        "perplexity_original": round(perplexity(reference, chunks), 4),
        "perplexity_quantized": round(perplexity(candidate, chunks), 4),
        "top1_agreement": round(agree / positions, 4),
        "kl_divergence_mean": round(kl / positions, 6),
    }


def max_abs_difference(a: list, b: list) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def figures(original: list, simulated: list, exported: list, chunks: list) -> dict:
    """The manifest's quality section: exported vs original, and how exactly export kept the simulation."""
    result = compare(original, exported, chunks)
    result["perplexity_simulated"] = round(perplexity(simulated, chunks), 4)
    fidelity = compare(simulated, exported, chunks)
    result["simulated_vs_exported"] = {
        "max_abs_logit_diff": max_abs_difference(simulated, exported),
        "top1_agreement": fidelity["top1_agreement"],
        "kl_divergence_mean": fidelity["kl_divergence_mean"],
    }
    return result

