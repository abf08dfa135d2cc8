"""The build stage's edge: run the plan's checkpoint step and trtllm-build on a GPU host, then check the engine.

All decisions come from generator.engine.plan (arguments, refusals) and generator.engine.compare (what the
checkpoint and the engine must look like, the same comparison render and validate run); this module only
finds the programs, runs them with exactly the planned arguments, streams and keeps their logs, and writes
outputs through a temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from generator.engine.compare import checkpoint_mismatches, engine_mismatches, mismatch_error
from generator.engine.facts import EngineFacts, read_engine
from generator.engine.flags import flag_data
from generator.engine.plan import Plan
from generator.errors import ArtifactMissing, StepFailed, ToolMissing
from generator.fsutil import atomic_dir, check_writable_target
from generator.spec import Spec

REBUILD_CHECKPOINT = "tritongen build SPEC --force (converts again)"

EXAMPLES_ENV = "TRTLLM_EXAMPLES_DIR"
"""Folder holding TensorRT-LLM's examples/ (quantization/quantize.py); defaults to the container's."""

LineSink = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    engine_dir: Path
    engine: EngineFacts
    checkpoint_reused: bool
    logs: tuple[Path, ...]
    seconds: float


def trtllm_build_path() -> str | None:
    """``trtllm-build`` on PATH: the sign that TensorRT-LLM is installed here."""
    return shutil.which("trtllm-build")


def examples_dir() -> Path:
    """TensorRT-LLM's examples folder: $TRTLLM_EXAMPLES_DIR, else the Triton container's, else the release container's."""
    candidates = [Path(os.environ[EXAMPLES_ENV])] if os.environ.get(EXAMPLES_ENV) else []
    candidates += [Path(flag_data()["container"]["examples_dir"]), Path("/app/tensorrt_llm/examples")]
    for candidate in candidates:
        if (candidate / "quantization" / "quantize.py").is_file():
            return candidate
    raise ToolMissing(
        "TensorRT-LLM's examples/quantization/quantize.py was not found", where=", ".join(map(str, candidates)),
        fix=f"git clone -b v1.2.1 https://github.com/NVIDIA/TensorRT-LLM and set {EXAMPLES_ENV}=TensorRT-LLM/examples")


def _python_with_trtllm() -> str:
    """The interpreter that can import tensorrt_llm: this one when it can, else python3 on PATH."""
    if importlib.util.find_spec("tensorrt_llm") is not None:
        return sys.executable
    return shutil.which("python3") or sys.executable


def _run(name: str, argv: list[str], *, log_path: Path, cwd: Path, on_line: LineSink, hint: str) -> None:
    """Run ``argv``, echo and log every output line, and turn a non-zero exit into StepFailed with the tail."""
    tail: deque[str] = deque(maxlen=15)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail.append(line.rstrip("\n"))
                on_line(line.rstrip("\n"))
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    if code != 0:
        last = "\n    ".join(tail)
        raise StepFailed(f"{name} failed with exit code {code}; last lines:\n    {last}", where=str(log_path), fix=hint)


def _failure_hint(spec: Spec, plan: Plan) -> str:
    if plan.gpu.sm == 120 and spec.build.plugins.context_fmha is None:
        return ("read the log; on SM120, FMHA errors have a known workaround: "
                "tritongen build SPEC --set build.plugins.context_fmha=false --force")
    return "read the log above, fix the cause, then run tritongen build SPEC --force"


def _checkpoint(spec: Spec, plan: Plan, *, force: bool, on_line: LineSink) -> bool:
    """Make the TensorRT-LLM checkpoint, or reuse one that matches the spec. True when reused."""
    target = spec.trtllm_checkpoint_dir
    existing = target / "config.json"
    if existing.is_file() and not force:
        problems = checkpoint_mismatches(spec, existing, fix=REBUILD_CHECKPOINT)
        if problems:
            raise mismatch_error("the existing TensorRT-LLM checkpoint", problems, str(existing), REBUILD_CHECKPOINT)
        on_line(f"reusing the TensorRT-LLM checkpoint in {target} (it matches the spec; --force converts again)")
        return True
    if not (spec.model_dir / "config.json").is_file():
        raise ArtifactMissing("the checkpoint step quantizes from the original model, which is not here",
                             where=str(spec.model_dir), fix=f"tritongen fetch {spec.model.source}")
    script = examples_dir() / "quantization" / "quantize.py"
    with atomic_dir(target, force=force, command_hint="tritongen build SPEC",
                    protected=spec.named_paths(except_=("trtllm_checkpoint_dir", "engine_dir"))) as tmp:
        argv = plan.conversion.with_values({"--output_dir": str(tmp)}, head=(_python_with_trtllm(), str(script)))
        _run("quantize.py", argv, log_path=spec.logs_dir / "checkpoint.log", cwd=spec.logs_dir, on_line=on_line,
             hint="read the log; the step needs a CUDA GPU with TensorRT-LLM 1.2.1 and ModelOpt installed")
        written = tmp / "config.json"
        if not written.is_file():
            raise StepFailed("quantize.py finished but wrote no config.json", where=str(tmp),
                             fix=f"read {spec.logs_dir / 'checkpoint.log'}")
        log_hint = f"read {spec.logs_dir / 'checkpoint.log'} for clipped or ignored flags"
        problems = checkpoint_mismatches(spec, written, fix=log_hint)
        if problems:
            raise mismatch_error("the checkpoint quantize.py wrote", problems, str(written), log_hint, StepFailed)
    return False


def run_build(spec: Spec, plan: Plan, *, force: bool = False, on_line: LineSink = print) -> BuildResult:
    """Checkpoint step (unless a matching checkpoint exists) and trtllm-build with exactly ``plan``'s arguments.

    The engine is written to a temporary sibling of spec.engine_dir and moved into place when trtllm-build
    succeeds; trtllm-build runs in spec.logs_dir so its timing cache (model.cache) lands somewhere writable.
    Raises PlanRefused when the plan refuses the spec, a step fails, or the engine does not match the spec
    (the engine is kept for inspection in that case).
    """
    plan.raise_if_refused()
    trtllm_build = trtllm_build_path()
    if trtllm_build is None:
        raise ToolMissing("trtllm-build is not on PATH: TensorRT-LLM is not installed here",
                             fix="run on a GPU host with pip install 'tritongen[gpu]', or tritongen build SPEC --dry-run")
    protected = spec.named_paths(except_=("engine_dir",))
    check_writable_target(spec.engine_dir, force, "tritongen build SPEC", protected)
    started = time.monotonic()
    spec.logs_dir.mkdir(parents=True, exist_ok=True)
    reused = _checkpoint(spec, plan, force=force, on_line=on_line)
    build_log = spec.logs_dir / "trtllm-build.log"
    with atomic_dir(spec.engine_dir, force=force, command_hint="tritongen build SPEC", protected=protected) as tmp:
        argv = plan.trtllm_build_argv(output_dir=tmp)
        argv[0] = trtllm_build
        _run("trtllm-build", argv, log_path=build_log, cwd=spec.logs_dir, on_line=on_line, hint=_failure_hint(spec, plan))
        if not (tmp / "config.json").is_file():
            raise StepFailed("trtllm-build finished but wrote no config.json", where=str(tmp), fix=f"read {build_log}")
    engine = read_engine(spec.engine_dir)
    problems = engine_mismatches(spec, engine)
    if problems:
        raise mismatch_error("the engine", problems, engine.config_path,
                             "check the trtllm-build log for clipped values, then tritongen build SPEC --force", StepFailed)
    logs = (() if reused else (spec.logs_dir / "checkpoint.log",)) + (build_log,)
    return BuildResult(spec.engine_dir, engine, reused, logs, time.monotonic() - started)
