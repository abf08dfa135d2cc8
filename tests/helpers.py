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


MS = 1_000_000


def request_record(texts, *, sched=0, sent=0, first=10, gap=5, end=None, server=None, max_tokens=None, **fields):
    """A streamed request's record as the load generator writes it (loadtest/clients.py ``new_record``), with
    round times: responses at first, first+gap, ... ms (monotonic ms → ns), so figures can be worked out on
    paper. ``fields`` set any other key of RequestRecord."""
    import sys

    from generator.resources import loadtest_dir

    if str(loadtest_dir()) not in sys.path:
        sys.path.insert(0, str(loadtest_dir()))
    from clients import new_record  # gevent and the protocol layer only; no Locust
    from prompts import Prompt

    times = [(first + i * gap) * MS for i in range(len(texts))]
    prompt = Prompt(0, "a prompt", max_tokens if max_tokens is not None else len(texts), 7)
    rec = new_record("grpc-stream", "ensemble", 0, 0, prompt, False, sched * MS, conn_ns=0, cumulative=False,
                     prompt_text=None)
    rec.update(start_unix_ns=1_700_000_000 * 10**9 + sched * MS, sent_ns=sent * MS, resp_ns=times,
               resp_text=list(texts), server=server or {}, exact_length=True, output_tokens=len(texts),
               end_ns=(end if end is not None else times[-1] / MS) * MS)
    rec.update(fields)
    return rec


def process_record(**fields):
    """A Locust process's record (loadtest/sink.py ``ProcessMonitor.record``): a calm process by default."""
    rec = {"kind": "process", "proc": 0, "host": "h", "pid": 1, "wall_s": 10.0, "cpu_s": 2.0, "cpu_percent": [],
           "lag_ns": [MS] * 100, "lag_max_ns": 2 * MS, "demand": [], "sched_wait_s": None, "tokenizer": "/tok",
           "requests": 0, "responses": 0}
    rec.update(fields)
    return rec


LLMAPI_SHORT_LOAD = ["loadtest.protocol=grpc-stream", "loadtest.users=4", "loadtest.duration_s=2",
                     "loadtest.input_tokens_mean=32", "loadtest.output_tokens_mean=16", "loadtest.warmup_requests=2",
                     "loadtest.num_prompts=6", "loadtest.reference_checks=6", "loadtest.request_timeout_s=120"]
"""The short load test of the LLM-API server (conftest's ``llmapi_loadtest``; other protocols append theirs)."""
