"""Where the non-Python parts of the project live, in a source checkout and in an installed wheel."""

from __future__ import annotations

import functools
import json
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``templates``, ``model_repo`` or ``loadtest``: packaged copy first, then the checkout's top level."""
    for candidate in (_PKG / "_resources" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"tritongen resource folder {name!r} is missing from the installation")


def templates_dir() -> Path:
    return resource_dir("templates")


def model_repo_dir() -> Path:
    return resource_dir("model_repo")


def loadtest_dir() -> Path:
    return resource_dir("loadtest")


def data_dir() -> Path:
    """Bundled text (tokenizer training, calibration, held-out evaluation) and lookup tables."""
    return _PKG / "data"


@functools.lru_cache(maxsize=None)
def data_json(name: str) -> dict:
    """A recorded upstream fact table from generator/data (parsed once per process)."""
    return json.loads((data_dir() / name).read_text(encoding="utf-8"))
