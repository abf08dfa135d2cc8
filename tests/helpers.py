"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

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
