"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from generator.spec import load_spec


def small_spec(weights: Path, artifacts: Path, *extra: str):
    """A spec with test-sized limits whose checkpoint folder is ``weights``."""
    return load_spec(None, [
        f"artifacts.dir={artifacts}",
        f"artifacts.checkpoint_dir={weights}",
        "build.max_input_len=256",
        "build.max_output_len=64",
        "build.max_batch_size=16",
        "build.max_num_tokens=512",
        "build.tokens_per_block=16",
        *extra,
    ])


def local_model(folder: Path, model_config: Path, tokenizer_dir: Path) -> Path:
    """A local model folder as `tritongen fetch` leaves it, minus the weights: config.json and tokenizer files."""
    shutil.copytree(tokenizer_dir, folder, dirs_exist_ok=True)
    shutil.copy(model_config, folder / "config.json")
    return folder


def write_quantized_checkpoint(spec, quant_algo: str | None = None, kv_algo: str | None = None) -> Path:
    """Stand-in for `tritongen quantize` (ModelOpt needs the real weights): the served checkpoint folder with the
    model's tokenizer and config.json and ModelOpt's hf_quant_config.json for the spec's formats (or the given
    quant_algo/kv_algo, to imitate a checkpoint of another format)."""
    from generator.engine.facts import KV_ALGOS, QUANT_ALGOS

    q = spec.quantization
    out = spec.checkpoint_dir
    shutil.copytree(spec.model_dir, out, dirs_exist_ok=True)
    quant = {"quant_algo": quant_algo or QUANT_ALGOS[q.format][0],
             "kv_cache_quant_algo": kv_algo or KV_ALGOS[q.kv_cache][0], "exclude_modules": ["lm_head"]}
    (out / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": quant}))
    return out


LLMAPI_SHORT_LOAD = ["loadtest.protocol=grpc-stream", "loadtest.users=4", "loadtest.duration_s=4",
                     "loadtest.input_tokens_mean=32", "loadtest.output_tokens_mean=16", "loadtest.warmup_requests=2",
                     "loadtest.num_prompts=6", "loadtest.reference_checks=6", "loadtest.request_timeout_s=120"]
"""The short load test of the LLM-API server (conftest's ``llmapi_loadtest``; other protocols append theirs)."""
