"""Session fixtures shared by the whole suite: one tiny model, one checkpoint, one repository, one server.

Everything is made locally through the same code paths users run; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def qwen3_8b_config() -> Path:
    """Qwen/Qwen3-8B's config.json (architecture figures only), for plans that need a real shape."""
    return DATA / "qwen3-8b-config.json"


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tritongen")


@pytest.fixture(scope="session")
def tiny_model_dir(work_dir) -> Path:
    from generator.tinymodel import make_tiny_model

    return make_tiny_model(work_dir / "tiny-qwen3", seed=0)


@pytest.fixture(scope="session")
def cpu_spec(tiny_model_dir, work_dir):
    """A spec for the tiny model on the CPU reference engine with small, test-sized limits."""
    from generator.spec import load_spec
    from generator.resources import data_dir

    corpus = data_dir() / "corpus.txt"
    return load_spec(
        None,
        [
            f"model.source={tiny_model_dir}",
            f"artifacts.dir={work_dir / 'artifacts'}",
            f"quantization.calibration.dataset={corpus}",
            "quantization.calibration.size=16",
            "quantization.calibration.max_seq_len=128",
            "build.max_input_len=256",
            "build.max_output_len=64",
            "build.max_batch_size=16",
            "build.max_num_tokens=512",
            "build.tokens_per_block=16",
            "serving.engine=cpu-reference",
        ],
    )


@pytest.fixture(scope="session")
def nvfp4_checkpoint_dir(cpu_spec) -> Path:
    from generator.quantize import quantize

    quantize(cpu_spec)
    return cpu_spec.checkpoint_dir


@pytest.fixture(scope="session")
def cpu_repo_dir(cpu_spec, nvfp4_checkpoint_dir, work_dir) -> Path:
    from generator.render import render_repository

    return render_repository(cpu_spec, work_dir / "repo-cpu")


@pytest.fixture(scope="session")
def cpu_server(cpu_repo_dir, work_dir):
    from generator.server import TritonServer

    with TritonServer(cpu_repo_dir, log_file=work_dir / "triton-cpu.log") as server:
        yield server
