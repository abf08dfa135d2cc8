"""Fetch: local folders, offline mode and hub failures, without touching the network."""

from __future__ import annotations

import shutil

import pytest

from generator.errors import TritongenError
from generator.model.fetch import fetch, hub_error


def test_local_folder_is_used_as_is(tiny_model_dir, cpu_spec):
    assert fetch(str(tiny_model_dir)) == tiny_model_dir
    assert fetch(cpu_spec) == tiny_model_dir


def test_incomplete_local_folder_says_what_is_missing(tiny_model_dir, tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(TritongenError) as err:
        fetch(folder)
    assert "*.safetensors" in err.value.message and "tokenizer" in err.value.message
    assert "safetensors" in err.value.fix


def test_a_model_file_that_is_no_regular_file_is_refused(tiny_model_dir, tmp_path):
    """review29: extra.safetensors -> /dev/zero in a folder a user was handed: quantize hashed it without end after
    quantizing. Links to regular files stay allowed (a Hugging Face snapshot is links into its blobs)."""
    import os

    folder = tmp_path / "handed"
    folder.mkdir()
    for f in tiny_model_dir.iterdir():
        (folder / f.name).symlink_to(f)
    assert fetch(folder) == folder.resolve()
    (folder / "extra.safetensors").symlink_to("/dev/zero")
    os.mkfifo(folder / "added_tokens.json")
    (folder / "vocab.json").symlink_to(tmp_path / "gone")
    with pytest.raises(TritongenError) as err:
        fetch(folder)
    assert all(name in err.value.message for name in ("extra.safetensors", "added_tokens.json", "vocab.json"))
    assert err.value.fix


def test_missing_path_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(TritongenError, match="no such folder"):
        fetch(str(tmp_path / "nope"))


def test_offline_without_cache_explains_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TritongenError) as err:
        fetch("tritongen-tests/never-downloaded", revision="main")
    assert "HF_HUB_OFFLINE" in err.value.message and "local folder" in err.value.fix


def _http_error(cls, status: int):
    """A real huggingface_hub HTTP error with a response from the HTTP library the hub client uses."""
    import importlib

    from huggingface_hub import errors

    http = importlib.import_module(errors.Response.__module__.split(".")[0])
    response = http.Response(status, request=http.Request("GET", "https://huggingface.co/api/models/org/model"))
    return cls(f"{status} error", response=response)


def test_hub_errors_become_fixable_messages(monkeypatch):
    from huggingface_hub import errors

    gated = hub_error(_http_error(errors.GatedRepoError, 403), "meta-llama/Llama-3.1-8B")
    assert "gated" in gated.message and "HF_TOKEN" in gated.fix and "login" in gated.fix
    missing = hub_error(_http_error(errors.RepositoryNotFoundError, 404), "Qwen/Qwen3-8X")
    assert "not found" in missing.message and "org/name" in missing.fix
    revision = hub_error(_http_error(errors.RevisionNotFoundError, 404), "Qwen/Qwen3-8B", "v9")
    assert "'v9'" in revision.message and "--revision" in revision.fix
    token = hub_error(_http_error(errors.HfHubHTTPError, 401), "Qwen/Qwen3-8B")
    assert "token" in token.message

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    no_network = hub_error(errors.LocalEntryNotFoundError("connection error"), "Qwen/Qwen3-8B")
    assert "could not reach" in no_network.message and "HF_HUB_OFFLINE=1" in no_network.fix
    assert hub_error(ValueError("something else"), "Qwen/Qwen3-8B") is None


def test_cli_prints_the_folder_or_the_fix(tiny_model_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    tritongen = str(Path(sys.executable).parent / "tritongen")
    ok = subprocess.run([tritongen, "fetch", str(tiny_model_dir)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == str(tiny_model_dir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    failed = subprocess.run([tritongen, "fetch", "tritongen-tests/never-downloaded"], capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 9 and "HF_HUB_OFFLINE" in failed.stderr and "Traceback" not in failed.stderr


def test_cli_reads_the_spec_like_every_stage(tiny_model_dir, tmp_path):
    """`tritongen fetch SPEC` fetches the spec's model.source into artifacts.model_dir (`-o` overrides it),
    so the later stages find it where the same spec says."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tritongen = str(Path(sys.executable).parent / "tritongen")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"model:\n  source: {tiny_model_dir}\n", encoding="utf-8")
    ok = subprocess.run([tritongen, "fetch", str(spec)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == str(tiny_model_dir), ok.stderr
    spec.write_text("model:\n  source: tritongen-tests/never-downloaded\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    failed = subprocess.run([tritongen, "fetch", str(spec), "-o", str(tmp_path / "m"), "--revision", "v1"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 9 and "tritongen-tests/never-downloaded@v1" in failed.stderr, failed.stderr
    assert not (tmp_path / "m").exists() and "Traceback" not in failed.stderr
