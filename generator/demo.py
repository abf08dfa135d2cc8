"""The CPU demo: every stage of the pipeline on a tiny Qwen3 model, end to end.

The demo's spec is an ordinary spec file written into the output folder, so every stage runs the
same code a user runs on a real model; only the sizes are small.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import yaml

from generator.errors import CheckFailed
from generator.measure.results import Dist, SweepPoint
from generator.resources import data_dir

GPU_TARGET = "rtx-5090"
"""The GPU the demo's tensorrtllm repository is planned, rendered and validated for (not served)."""

SERVED_BATCH = 16
"""The demo's build.max_batch_size, which its repositories serve."""


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
        f"build.max_batch_size={SERVED_BATCH}",
        "build.max_num_tokens=512",
        "build.tokens_per_block=16",
        "serving.engine=cpu-reference",
        "loadtest.users=8",
        "loadtest.spawn_rate=8",
        "loadtest.duration_s=10",
        "loadtest.input_tokens_mean=32",
        "loadtest.output_tokens_mean=24",
    ]


TARGET_FILES = {"cpu-reference": "", "llmapi": "-llmapi"}
"""The two served targets and the suffix of their smoke/load-test outputs: the ensemble on the CPU reference
engine, and the LLM-API model (the CPU stand-in) in front of the same engine."""

SWEEP_POINTS = [f"serving.max_batch_size=1,{SERVED_BATCH}"]
"""The demo's two-point sweep: no in-flight batching against batching up to 16 requests, the served setting: the
CPU load test already measured that point, so the sweep takes its run instead of starting a second server for it
(tests/test_demo.py checks that the point renders as the served repository)."""


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
    overrides: list[str] = field(default_factory=list)
    """The user's ``--set`` values, applied after the demo's own (e.g. a longer load test)."""
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


def run_stages(run: DemoRun, stages: list[Stage], on_start: Callable[[str], Any],
               on_end: Callable[[StageResult], Any]) -> DemoRun:
    """Run stages in order; stop at the first failure, keeping what succeeded in place."""
    for name, fn in stages:
        on_start(name)
        started = time.monotonic()
        try:
            detail = fn() or ""
            result = StageResult(name, time.monotonic() - started, True, detail)
        except Exception as exc:  # a failing stage is reported, not raised: earlier outputs stay usable
            log = run.out / "logs" / f"{name.replace(' ', '-')}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc(), encoding="utf-8")
            result = StageResult(name, time.monotonic() - started, False, str(exc), log)
        run.stages.append(result)
        on_end(result)
        if not result.ok:
            break
    (run.out / "demo-summary.json").write_text(run.summary_json(), encoding="utf-8")
    return run


def _problems_line(problems) -> str:
    from generator.repo.problems import Severity

    errors = sum(1 for p in problems if p.severity is Severity.error)
    return f"{errors} errors, {len(problems) - errors} warnings"


class _Stages:
    """The demo's steps over one shared spec, each returning a one-line result.

    The server one step starts lives on ``stack``; the caller closes it whatever happens.
    """

    def __init__(self, run: DemoRun, stack: contextlib.ExitStack, show_plan: Callable[[Any], None]) -> None:
        self.run, self.stack, self.show_plan, self.out = run, stack, show_plan, run.out
        self.spec: Any = None
        self.repos: dict[str, Path] = {}
        self.loads: dict[str, Any] = {}
        self.server: Any = None

    def on(self, engine: str) -> Any:
        from generator.spec import with_overrides

        return with_overrides(self.spec, [f"serving.engine={engine}"])

    def target_figures(self, engine: str) -> dict[str, Any]:
        return self.run.figures.setdefault("targets", {}).setdefault(engine, {})

    def tiny_model(self) -> str:
        from generator.model.tinymodel import make_tiny_model
        from generator.spec import load_spec

        path = make_tiny_model(self.out / "tiny-model", seed=0, force=True)
        spec_file = self.out / "tritongen.yaml"
        spec = load_spec(None, [*demo_overrides(path, self.out / "artifacts"), *self.run.overrides])
        spec_file.write_text(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False), encoding="utf-8")
        self.spec = load_spec(spec_file)
        return f"{path} (spec: {spec_file})"

    def quantize(self) -> str:
        from generator.model.quantize import quantize as run_quantize

        manifest = run_quantize(self.spec, force=True)
        self.run.figures["quantize"] = {k: manifest.get(k) for k in ("format", "kv_cache", "sizes", "quality", "timings_s",
                                                                      "reused")}
        kept = manifest.get("reused")
        return f"{self.spec.checkpoint_dir}" + (f" (copied from the cache: {kept['from_cache']})" if kept else "")

    def plan(self) -> str:
        from generator.engine.plan import make_plan
        from generator.engine.shape import read_model_config

        spec = self.on("tensorrtllm")
        config, source = read_model_config(spec)
        the_plan = make_plan(spec, config, config_source=source)
        self.show_plan(the_plan)
        the_plan.raise_if_refused()
        return f"{len(the_plan.flags)} trtllm-build flags for {the_plan.gpu.name}"

    def render(self, engine: str, folder: str) -> str:
        from generator.repo.problems import failing
        from generator.repo.render import render_repository
        from generator.repo.validate import validate_repository

        repo = render_repository(self.on(engine), self.out / folder, force=True)
        problems = validate_repository(repo)
        bad = failing(problems)
        if bad:
            raise CheckFailed(f"validate {repo}: " + "; ".join(f"{p.file}:{p.line}: {p.message}" for p in bad),
                              fix=f"tritongen validate {repo} shows each problem with its fix")
        self.repos[engine] = repo
        return f"{repo} ({_problems_line(problems)})"

    def serve(self, engine: str) -> str:
        from generator.serve.server import TritonServer

        self.stack.close()  # one server at a time: two on 2 cores would skew the figures
        self.server = TritonServer(self.repos[engine], log_file=self.out / "logs" / f"tritonserver-{engine}.log")
        self.stack.enter_context(self.server)
        return f"HTTP {self.server.http_url}, gRPC {self.server.grpc_url}"

    def smoke(self, engine: str) -> str:
        from generator.serve.smoke_run import run_smoke

        server, out = self.server, self.out
        report = run_smoke(server.http_url, server.grpc_url, repo_dir=self.repos[engine],
                           max_input_len=self.spec.build.max_input_len, admin_key=server.admin_key)
        name = TARGET_FILES[engine]
        (out / f"smoke{name}.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        passed = len(report.checks) - len(report.failed)
        self.target_figures(engine)["smoke"] = {"model": report.model, "passed": passed, "checks": len(report.checks)}
        if not report.ok:
            raise CheckFailed("smoke checks failed: " + ", ".join(c.name for c in report.failed),
                              fix=f"read {out / f'smoke{name}.json'} and the server log {server.log_file}")
        return f"{len(report.checks)} checks passed ({report.model})"

    def loadtest(self, engine: str) -> str:
        from generator.measure.runner import run_loadtest

        server = self.server
        folder = self.out / f"loadtest{TARGET_FILES[engine]}"
        folder.mkdir(parents=True, exist_ok=True)
        result = run_loadtest(self.on(engine), folder, url=server.http_url, grpc_url=server.grpc_url,
                              metrics_url=server.metrics_url, title=f"demo load test ({engine})",
                              admin_key=server.admin_key)
        self.stack.close()  # the next stages start their own servers
        self.loads[engine] = result
        r = result.results
        figures = {
            "requests_ok": r.counts.ok, "errors": r.counts.errors,
            "output_tokens_per_s": r.throughput.output_tokens_per_s,
            "ttft_ms": _dumped(r.latency_ms.ttft), "itl_ms": _dumped(r.latency_ms.itl),
            "report": str(folder / "report.html"),
        }
        self.target_figures(engine)["loadtest"] = figures
        if engine == "cpu-reference":
            self.run.figures["loadtest"] = figures
        if r.failure:  # review28: the demo passed a run that had lost a Locust worker
            raise CheckFailed(r.failure, where=str(folder / "report.html"),
                              fix="read the report's errors, the server log and locust.log")
        tps = r.throughput.output_tokens_per_s or 0
        return f"{r.counts.ok} requests, {tps:.0f} output tokens/s, report {folder / 'report.html'}"

    def served_point(self, plan: Any) -> dict[str, Any]:
        """The CPU load test as the sweep's point with the served settings, by its label; none when a --set changed
        the engine or the batch size the repositories serve (then the sweep serves every point itself)."""
        if self.spec != self.on("cpu-reference") or self.spec.triton_max_batch_size != SERVED_BATCH:
            return {}
        return {plan.label([f"serving.max_batch_size={SERVED_BATCH}"]): self.loads["cpu-reference"]}

    def sweep(self) -> str:
        from generator.measure.sweep import plan_sweep, run_sweep

        folder = self.out / "sweep"
        folder.mkdir(parents=True, exist_ok=True)
        plan = plan_sweep(SWEEP_POINTS)
        result = run_sweep(self.spec, plan, folder, measured=self.served_point(plan))
        self.run.figures["sweep"] = {"report": str(folder / "report.html"),
                                     "best": result.best.label if result.best else None,
                                     "points": [_point_figures(p) for p in result.points]}
        return f"report {folder / 'report.html'}"


def demo_stages(run: DemoRun, stack: contextlib.ExitStack, *, show_plan: Callable[[Any], None]) -> list[Stage]:
    """The demo as a list of named steps sharing one spec (see `_Stages`)."""
    s = _Stages(run, stack, show_plan)
    return [
        ("tiny model", s.tiny_model),
        ("quantize nvfp4 + fp8 kv", s.quantize),
        ("plan for " + GPU_TARGET, s.plan),
        ("render + validate tensorrtllm", partial(s.render, "tensorrtllm", "repo-" + GPU_TARGET)),
        ("render + validate cpu-reference", partial(s.render, "cpu-reference", "repo-cpu")),
        ("serve", partial(s.serve, "cpu-reference")),
        ("smoke", partial(s.smoke, "cpu-reference")),
        ("load test", partial(s.loadtest, "cpu-reference")),
        ("render + validate llmapi", partial(s.render, "llmapi", "repo-llmapi")),
        ("serve llmapi", partial(s.serve, "llmapi")),
        ("smoke llmapi", partial(s.smoke, "llmapi")),
        ("load test llmapi", partial(s.loadtest, "llmapi")),
        ("sweep", s.sweep),
    ]


TARGET_COLUMNS = ("target", "model", "smoke", "requests ok", "errors", "out tok/s", "TTFT p50 ms", "ITL p50 ms")


def target_rows(figures: dict[str, Any]) -> list[list[str]]:
    """The served targets side by side (TARGET_COLUMNS), from the demo's figures; "–" where a stage did not run."""
    def num(value: Any, fmt: str = "{:.1f}") -> str:
        return "–" if value is None else fmt.format(value)

    rows = []
    for engine, f in figures.get("targets", {}).items():
        smoke, load = f.get("smoke") or {}, f.get("loadtest") or {}
        rows.append([
            engine, smoke.get("model", "–"),
            f"{smoke['passed']}/{smoke['checks']}" if smoke else "–",
            num(load.get("requests_ok"), "{}"), num(load.get("errors"), "{}"),
            num(load.get("output_tokens_per_s"), "{:.0f}"),
            num((load.get("ttft_ms") or {}).get("p50")), num((load.get("itl_ms") or {}).get("p50")),
        ])
    return rows


def _dumped(dist: Dist | None) -> dict[str, Any] | None:
    return dist.model_dump() if dist is not None else None


def _point_figures(point: SweepPoint) -> dict[str, Any]:
    r = point.results
    return {
        "label": point.label,
        "status": point.status.value,
        "output_tokens_per_s": r.throughput.output_tokens_per_s if r else None,
        "ttft_p50_ms": r.latency_ms.ttft.p50 if r and r.latency_ms.ttft else None,
    }
