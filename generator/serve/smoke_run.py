"""Which smoke checks a served model gets, and running them: the ensemble's (smoke.py) or, for TensorRT-LLM's
LLM-API model, smoke_llmapi.py's, which extend them. Kept apart from both so neither imports the other's caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from generator.repo.llmapi import CPU_ENGINE_MODEL
from generator.repo.manifest import read_manifest
from generator.serve.client import LLMAPI, LLMAPI_TARGET, UNREADABLE, model_config, post_json
from generator.serve.smoke import (
    DEFAULT_PROMPT, Smoke, SmokeReport, admin_headers, max_input_len_from_server, served_dialect,
)
from generator.serve.smoke_llmapi import LLMAPISmoke


def entry_model(http_url: str, repo_dir: Optional[Path] = None, admin_key: Optional[str] = None) -> str:
    """The model a smoke test checks unless told: what the repository's manifest (tritongen.json) says its
    target serves, else what the server serves: the ensemble when there is one, else the LLM-API model (from the
    repository index with the admin key, else from whether the ensemble's config can be read)."""
    manifest = read_manifest(Path(repo_dir)) if repo_dir is not None else None
    if manifest is not None:
        return "tensorrt_llm" if manifest.target.value == LLMAPI_TARGET else "ensemble"
    try:
        index = post_json(http_url, "/v2/repository/index", {}, 10.0, headers=admin_headers(admin_key))
        return "ensemble" if any(m.get("name") == "ensemble" for m in index) else "tensorrt_llm"
    except UNREADABLE:  # the index is an admin API: without the key, ask for the config
        try:
            model_config(http_url, "ensemble")
        except UNREADABLE:
            return "tensorrt_llm"
        return "ensemble"


def run_smoke(
    http_url: str,
    grpc_url: str,
    *,
    model: Optional[str] = None,
    repo_dir: Optional[Path] = None,
    bls_model: Optional[str] = "tensorrt_llm_bls",
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 16,
    max_input_len: Optional[int] = None,
    timeout_s: float = 120.0,
    progress: Optional[Callable[[str], None]] = None,
    admin_key: Optional[str] = None,
) -> SmokeReport:
    """Run every smoke check against a running server; ``progress(name)`` is told of each check.

    ``model`` None: see :func:`entry_model` (``repo_dir`` is the served repository, when known). The checks
    speak the served model's dialect: the LLM-API model gets smoke_llmapi's checks. ``admin_key``: the key
    of a server tritongen started (its repository index is an admin API).
    """
    model = model or entry_model(http_url, repo_dir, admin_key)
    if served_dialect(http_url, model) is LLMAPI:
        cls, engine_model = LLMAPISmoke, CPU_ENGINE_MODEL  # the CPU stand-in's engine; on a GPU: model.yaml
    else:
        cls, engine_model = Smoke, "tensorrt_llm"
    if max_input_len is None:
        max_input_len = max_input_len_from_server(http_url, engine_model)
    smoke = cls(http_url, grpc_url, model, bls_model, prompt, max_tokens, max_input_len, timeout_s, progress,
                admin_key)
    return smoke.run()
