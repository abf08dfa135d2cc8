"""Fetch stage: get a Hugging Face model's config, tokenizer and safetensors weights onto disk.

A local folder is used as it is (after checking it has what the later stages read). A hub id is
downloaded with ``huggingface_hub.snapshot_download`` limited to those files, so a repo's other
weight formats (PyTorch .bin, GGUF, ONNX) are never pulled. Hub failures become messages that say
what to do: log in for a gated model, check the id, or work offline from the cache or a folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from generator.errors import ArtifactCorrupt, ArtifactMissing, HubError, SpecError
from generator.spec import Spec

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
]
"""What later stages read: model config, generation defaults, tokenizer files and safetensors."""

TOKENIZER_FILES = ALLOW_PATTERNS[4:]
"""The tokenizer part of a model folder (copied beside a quantized checkpoint)."""

LOCAL_FOLDER_FIX = "pass a local folder with config.json, tokenizer files and *.safetensors instead"


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, not only when huggingface_hub was imported."""
    from huggingface_hub import constants

    raw = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or raw.strip().upper() in {"1", "ON", "YES", "TRUE"}


def missing_model_files(folder: Path) -> list[str]:
    """What a model folder lacks for quantization and serving (empty when complete)."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        missing.append("tokenizer (tokenizer.json or tokenizer_config.json)")
    return missing


def add_legacy_rope_theta(config_path: Path) -> None:
    """Repeat rope_theta at the top level of a config.json written by transformers 5.

    transformers 5 nests it in ``rope_parameters``; transformers 4 (Triton containers, TensorRT-LLM's
    checkpoint conversion) reads only the top-level key and silently falls back to 10000 without it.
    """
    import json

    cfg = json.loads(config_path.read_text(encoding="utf-8"))
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in cfg:
        cfg["rope_theta"] = theta
        config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def not_regular_files(folder: Path) -> list[str]:
    """The files of a model folder that later stages read (ALLOW_PATTERNS) which are no regular file, links followed:
    a FIFO, a device, a folder, a dangling link. review29: a link extra.safetensors -> /dev/zero in a folder a user
    was handed made quantize hash it without end (100% CPU, no exit) after the quantization itself had run."""
    from fnmatch import fnmatchcase

    return sorted(f.name for f in folder.iterdir() if any(fnmatchcase(f.name, p) for p in ALLOW_PATTERNS) and not f.is_file())


def check_model_folder(folder: Path, *, where: str | None = None) -> Path:
    odd = not_regular_files(folder)
    if odd:
        shown = ", ".join(repr(name[:80]) for name in odd[:5])
        raise ArtifactCorrupt(f"the model folder's {shown} {'is' if len(odd) == 1 else 'are'} no regular file (a FIFO, "
                              "a device, a folder or a link to one, or a dangling link)", where=where or str(folder),
                              fix="replace each with the file it stands for, or remove it")
    missing = missing_model_files(folder)
    if missing:
        has_bin = any(folder.glob("*.bin"))
        fix = (
            "tritongen reads safetensors only: convert the .bin weights (save_pretrained(..., safe_serialization=True))"
            if has_bin and "*.safetensors weights" in missing
            else "point model.source at a complete Hugging Face model folder, or at a hub id (org/name)"
        )
        raise ArtifactMissing(f"model folder is missing {', '.join(missing)}", where=where or str(folder), fix=fix)
    return folder


def hub_error(exc: BaseException, repo_id: str, revision: str | None = None) -> HubError | SpecError | None:
    """Translate a huggingface_hub failure into what the user can do about it (None: not a hub failure we know)."""
    from huggingface_hub import errors

    where = f"{repo_id}@{revision}" if revision else repo_id
    login = "hf auth login (or huggingface-cli login), or set HF_TOKEN=hf_... in the environment"
    if isinstance(exc, errors.GatedRepoError):
        return HubError(
            f"the model is gated: accept its license on https://huggingface.co/{repo_id} with your account, then use a token",
            where=where,
            fix=login,
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(
            "model not found on the Hugging Face Hub (wrong id, or private and no token)",
            where=where,
            fix=f"check the id (org/name, e.g. Qwen/Qwen3-8B); if it is private: {login}",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(
            f"revision {revision!r} does not exist in this repo", where=where, fix="pass an existing branch, tag or commit with --revision"
        )
    if isinstance(exc, errors.HFValidationError):
        return SpecError(
            "neither a local folder nor a valid Hugging Face repo id", where=repo_id, fix=f"use org/name, or {LOCAL_FOLDER_FIX}"
        )
    if isinstance(exc, errors.HfHubHTTPError) and exc.response is not None and exc.response.status_code in (401, 403):
        return HubError("the Hugging Face Hub refused the token", where=where, fix=login)
    if isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)):
        if offline_mode():
            return HubError(
                "offline mode (HF_HUB_OFFLINE=1) is on and the model is not in the local Hugging Face cache",
                where=where,
                fix=f"download it once with network access (unset HF_HUB_OFFLINE), or {LOCAL_FOLDER_FIX}",
            )
        return HubError(
            "could not reach the Hugging Face Hub (no network?) and the model is not in the local cache",
            where=where,
            fix=f"set HF_HUB_OFFLINE=1 to use a cached copy, or {LOCAL_FOLDER_FIX}",
        )
    return None


def fetch(spec_or_source: Union[Spec, str, Path], revision: str | None = None, dir: Path | None = None) -> Path:
    """Return a folder holding the model: the local folder itself, or a download of the hub repo.

    With a Spec, the source, revision and target folder come from it (``spec.model_dir``); with a
    hub id and no ``dir``, files go to the Hugging Face cache and the snapshot folder is returned.
    """
    if isinstance(spec_or_source, Spec):
        spec = spec_or_source
        source, revision = spec.model.source, spec.model.revision
        local = spec.path(Path(source))
        dir = spec.model_dir
    else:
        source = str(spec_or_source)
        local = Path(source).expanduser()
    if local.is_dir():
        return check_model_folder(local.resolve())
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ArtifactMissing(
            "no such folder, and not a Hugging Face repo id (org/name)", where=source, fix=LOCAL_FOLDER_FIX
        )

    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            source,
            revision=revision,
            local_dir=str(dir) if dir else None,
            allow_patterns=ALLOW_PATTERNS,
            local_files_only=offline_mode(),
        )
    except Exception as exc:
        translated = hub_error(exc, source, revision)
        if translated is None:
            raise
        raise translated from exc
    return check_model_folder(Path(path), where=source)
