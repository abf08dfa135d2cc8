"""``tritongen plan`` (what the engine build will do and why) and ``tritongen build`` (do it on a GPU host)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from generator.cli._app import EXIT_CODES, Force, Sets, SpecPath, app, console, escape, get_spec, out
from generator.cli.printing import print_plan, print_topology
from generator.measure.ceiling import loadgen_plan, loadgen_plan_lines, recorded_ceiling
from generator.errors import PlanRefused, ToolMissing
from generator.spec import EngineTarget

ModelConfig = Annotated[Optional[Path], typer.Option(
    "--model-config", help="The model's config.json (default: MODEL_DIR/config.json, or the shipped Qwen3-8B one).")]
EXIT_REFUSED = EXIT_CODES[PlanRefused]


def _plan_for(spec_path: Optional[Path], overrides: Optional[List[str]], model_config: Optional[Path]):
    from generator.engine.plan import make_plan
    from generator.engine.shape import read_model_config

    spec = get_spec(spec_path, overrides)
    config, source = read_model_config(spec, model_config)
    return spec, make_plan(spec, config, config_source=source), config


def _topology(spec, config):
    """The spec's topology on a GPU host (ranks, GPUs, instances, nodes, memory per GPU), or its refusal."""
    from generator.deploy.topology import resolve_topology

    target = EngineTarget.llmapi if spec.serving.engine is EngineTarget.llmapi else EngineTarget.tensorrtllm
    try:
        return resolve_topology(spec, target, model_config=config, gpu_visible=True), None
    except PlanRefused as exc:
        return None, exc


@app.command("plan")
def plan_cmd(
    spec_path: SpecPath = None,
    set_: Sets = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (for scripts).")] = False,
    model_config: ModelConfig = None,
    tokens_per_s: Annotated[Optional[float], typer.Option(
        "--tokens-per-s", help="Target output tokens/s of the load test: sizes loadtest.workers.")] = None,
) -> None:
    """Show how the engine would be built for the target GPU, and why.

    Each trtllm-build flag with its reason and source, the flags left out, the checkpoint step, the memory plan and the load generator's ceiling. Exit 4 when the spec is refused (all reasons are printed).
    """
    spec, plan, config = _plan_for(spec_path, set_, model_config)
    topo, refused = _topology(spec, config)
    lt = spec.loadtest
    loadgen = loadgen_plan(lt.request_rate, lt.output_tokens_mean, lt.workers, recorded_ceiling(), tokens_per_s)
    if spec.serving.engine is EngineTarget.llmapi:
        _print_llmapi_plan(spec, as_json, loadgen)
    elif as_json:
        typer.echo(json.dumps(plan.to_dict() | {"topology": topo.model_dump(mode="json") if topo else None,
                                                "topology_refused": refused.message if refused else None,
                                                "loadgen": loadgen},
                              indent=2, default=str))
    else:
        print_plan(plan)
    if not as_json:
        print_topology(topo, refused)
        for line in loadgen_plan_lines(loadgen):
            out.print(line, markup=False, highlight=False)
    if plan.errors and spec.serving.engine is not EngineTarget.llmapi or refused is not None:
        raise typer.Exit(EXIT_REFUSED)


def _print_llmapi_plan(spec, as_json: bool, loadgen: dict) -> None:
    """The LLM-API target builds no engine: show how the spec maps onto model.yaml, and what it refuses."""
    from generator.repo.llmapi import llmapi_mapping, llmapi_refusals

    rows, refusals = llmapi_mapping(spec), llmapi_refusals(spec)
    if as_json:
        typer.echo(json.dumps({"target": "llmapi", "mapping": [r._asdict() for r in rows], "errors": refusals,
                               "loadgen": loadgen}, indent=2, default=str))
    else:
        table = Table(title="LLM-API backend: spec → model.yaml (no engine build)", title_justify="left")
        for col in ("spec field", "model.yaml key", "value", "note"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r.spec_field, r.key, escape(str(r.value)), escape(r.note))
        out.print(table)
        for reason in refusals:
            out.print(f"[bold red]refused:[/] {escape(reason)}")
    if refusals:
        raise typer.Exit(EXIT_REFUSED)


@app.command("build")
def build_cmd(
    spec_path: SpecPath = None,
    set_: Sets = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands and exit 0 without running them.")] = False,
    force: Force = False,
    model_config: ModelConfig = None,
) -> None:
    """Build the TensorRT-LLM engine: checkpoint step, trtllm-build with exactly the plan's arguments, engine check.

    Exit 0: built, or --dry-run printed the commands. Exit 4: the plan refuses the spec. Exit 7: TensorRT-LLM is not installed here (the GPU-host commands are printed). Exit 8: a step failed, or the engine does not match the spec.
    """
    from generator.engine.build import run_build, trtllm_build_path

    spec, plan, _ = _plan_for(spec_path, set_, model_config)
    if plan.errors:
        for error in plan.errors:
            console.print(f"[bold red]refused:[/] {escape(error)}")
        raise typer.Exit(EXIT_REFUSED)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if dry_run or trtllm_build_path() is None:
        console.print("[bold]dry run[/]: nothing is run" if dry_run else
                      "[bold yellow]TensorRT-LLM is not installed here[/] (no trtllm-build on PATH). Run these on the "
                      f"GPU host, e.g. in {escape(plan.versions['triton_container'])}:")
        for line in plan.shell_commands():
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        if dry_run:
            return
        raise ToolMissing("TensorRT-LLM is not installed here; the commands above build the engine on a GPU host",
                          fix="pip install 'tritongen[gpu]' on the GPU host and run tritongen build there")
    started = time.monotonic()
    with console.status("building the engine") as status:
        def echo(line: str) -> None:
            console.print(line, markup=False, highlight=False)
            status.update(f"building the engine ({time.monotonic() - started:.0f} s)")

        result = run_build(spec, plan, force=force, on_line=echo)
    console.print(f"[green]✓[/] engine in {escape(str(result.engine_dir))} matches the spec [dim]({result.seconds:.1f} s; "
                  f"logs: {escape(', '.join(map(str, result.logs)))})[/]")
