"""The CPU demo: every stage of the pipeline on a tiny Qwen3 model, end to end.

The demo's spec is an ordinary spec file written into the output folder, so every stage runs the
same code a user runs on a real model; only the sizes are small.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from generator.resources import data_dir

GPU_TARGET = "rtx-5090"
"""The GPU the demo's tensorrtllm repository is planned, rendered and validated for (not served)."""


def demo_overrides(model_dir: Path, artifacts_dir: Path) -> list[str]:
    """Spec overrides that shrink the default deployment to the tiny model on 2 CPU cores.

    Shared with the test suite so the tests exercise exactly the demo's configuration.
    """
    return [
        f"model.source={model_dir}",
        f"artifacts.dir={artifacts_dir}",
        f"quantization.calibration.dataset={data_dir() / 'corpus.txt'}",
        "quantization.calibration.size=16",
        "quantization.calibration.max_seq_len=128",
        f"build.gpu={GPU_TARGET}",
        "build.max_input_len=256",
        "build.max_output_len=64",
        "build.max_batch_size=16",
        "build.max_num_tokens=512",
        "build.tokens_per_block=16",
        "serving.engine=cpu-reference",
        "loadtest.users=8",
        "loadtest.spawn_rate=8",
        "loadtest.duration_s=15",
        "loadtest.input_tokens_mean=32",
        "loadtest.output_tokens_mean=24",
    ]


SWEEP_POINTS = ["serving.max_batch_size=1,16"]
"""The demo's two-point sweep: no in-flight batching against batching up to 16 requests."""


@dataclass
class StageResult:
    name: str
    seconds: float
    ok: bool
    detail: str = ""
    log: Path | None = None


@dataclass
class DemoRun:
    """What the demo did, stage by stage, and the figures worth a headline."""

    out: Path
    stages: list[StageResult] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages)

    def summary_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "stages": [
                    {"name": s.name, "seconds": round(s.seconds, 2), "ok": s.ok, "detail": s.detail,
                     "log": str(s.log) if s.log else None}
                    for s in self.stages
                ],
                "figures": self.figures,
            },
            indent=2,
            default=str,
        )


Stage = tuple[str, Callable[[], str]]


def run_stages(run: DemoRun, stages: list[Stage], on_start: Callable[[str], Any], on_end: Callable[[StageResult], Any]) -> DemoRun:
    """Run stages in order; stop at the first failure, keeping what succeeded in place."""
    for name, fn in stages:
        on_start(name)
        started = time.monotonic()
        log = run.out / "logs" / f"{name.replace(' ', '-')}.log"
        try:
            detail = fn() or ""
            result = StageResult(name, time.monotonic() - started, True, detail)
        except Exception as exc:  # a failing stage is reported, not raised: earlier outputs stay usable
            log.parent.mkdir(parents=True, exist_ok=True)
            import traceback

            log.write_text(traceback.format_exc(), encoding="utf-8")
            result = StageResult(name, time.monotonic() - started, False, str(exc), log)
        run.stages.append(result)
        on_end(result)
        if not result.ok:
            break
    (run.out / "demo-summary.json").write_text(run.summary_json(), encoding="utf-8")
    return run
