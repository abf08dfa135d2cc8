"""What a run is, for comparing it with another: the load, the prompts, the tokenizer, the model, the tool.

Recorded into results.json (RunInfo.identity) when the run is made, because the files it fingerprints
(prompts, tokenizer, the repository's tritongen.json) may have changed or be elsewhere by the time two runs
are compared. Reads files; starts nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

from generator.measure.results import RunIdentity
from generator.spec import LoadTestSpec

LOAD_FIELDS = ("users", "spawn_rate", "duration_s", "max_requests", "request_rate", "arrival", "time_scale",
               "trace_block_tokens", "shared_prefix_tokens", "prefix_groups", "turns", "input_tokens_mean",
               "input_tokens_stddev", "output_tokens_mean", "output_tokens_stddev", "num_prompts", "seed",
               "warmup_requests")
"""Fields of the load itself: two runs with any of them different put different work on the server."""
SETTING_FIELDS = ("protocol", "openai_body", "request_timeout_s", "grpc_streams_used")
"""How the load was sent and when a request counts as an error (grpc_streams_used: see grpc_streams_used)."""
SERVER_FIELDS = ("target", "tensorrt_llm_version", "max_batch_size", "max_input_len", "max_seq_len")
"""Served settings from tritongen.json that compare lists when they changed."""


def _sha256(path: Optional[Path]) -> Optional[str]:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tritongen_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tritongen")
    except PackageNotFoundError:
        return "unknown"


def grpc_streams_used(lt: LoadTestSpec) -> Optional[int]:
    """The gRPC streams a grpc-stream run sent over, all processes together (None for other protocols): Triton
    writes a stream's responses one at a time, so one stream held it at about half its ceiling where 8 reached
    it, and a baseline sent over fewer streams compared as the same settings could hide a regression. Closed
    loop: each process opens loadtest.grpc_streams at most, one per user it runs; open loop: one per process."""
    if lt.protocol != "grpc-stream":
        return None
    processes = max(lt.workers, 1) if isinstance(lt.workers, int) else 1
    if lt.open_loop:
        return processes
    share, rest = divmod(lt.users, processes)
    return sum(min(lt.grpc_streams, share + (i < rest)) for i in range(processes))


def run_identity(lt: LoadTestSpec, repo_dir: Optional[Path]) -> RunIdentity:
    """The identity of a run of the resolved load ``lt`` against the repository ``repo_dir`` (None: a --url
    server whose repository is not known here)."""
    from generator.repo.manifest import read_manifest

    manifest = read_manifest(Path(repo_dir)) if repo_dir is not None else None
    recorded = manifest.model_dump(mode="json") if manifest else {}
    spec = recorded.get("spec") or {}
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    server = {k: recorded[k] for k in SERVER_FIELDS if recorded.get(k) is not None}
    for section in ("serving", "build"):
        if isinstance(spec.get(section), dict):
            server[section] = spec[section]
    return RunIdentity(
        load={k: getattr(lt, k) for k in LOAD_FIELDS},
        settings={k: grpc_streams_used(lt) if k == "grpc_streams_used" else getattr(lt, k) for k in SETTING_FIELDS},
        prompts=_sha256(lt.prompts or lt.trace),
        tokenizer=_sha256(Path(lt.tokenizer) / "tokenizer.json") if lt.tokenizer else None,
        model=lt.model or "",
        model_source=str(model["source"]) if model.get("source") is not None else None,
        server=server,
        tritongen_version=tritongen_version(),
    )
