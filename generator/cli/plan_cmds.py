"""``tritongen plan`` (what the engine build will do and why) and ``tritongen build`` (do it on a GPU host)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from generator.cli._app import SetOpt, SpecArg, app, console, get_spec, out
from generator.errors import TritongenError
from generator.spec import EngineTarget

ModelConfigOpt = typer.Option(
    None, "--model-config", help="The model's config.json (default: MODEL_DIR/config.json, or the shipped Qwen3-8B one)."
)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({n / (1 << 30):.2f} GiB)"


def print_plan(plan) -> None:
    """The plan as tables: header, checkpoint step, flags with reasons, omissions, memory, findings, commands."""
    g, m = plan.gpu, plan.memory
    shipped = "shipped reference" in plan.model_config_source
    out.print(f"[bold]Model[/] {plan.model}   [bold]config[/] "
              + (f"[yellow]{plan.model_config_source}[/]" if shipped else plan.model_config_source))
    out.print(f"[bold]GPU[/] {g.name} — SM{g.sm} {g.architecture}, {g.memory_gib:g} GiB, native formats: "
              f"{', '.join(g.native_formats)}")
    out.print("[bold]Versions[/] " + ", ".join(f"{k}: {v}" for k, v in plan.versions.items()))

    out.print(f"\n[bold]1. {plan.conversion.title}[/]\n[dim]{plan.conversion.reason}[/]")

    flags = Table(title="2. trtllm-build arguments", title_justify="left", show_lines=False)
    for col in ("flag", "value", "why", "source"):
        flags.add_column(col, overflow="fold")
    for f in plan.flags:
        why = f.reason + (f"\n[yellow]no effect:[/] {f.no_effect}" if f.no_effect else "")
        flags.add_row(f.flag, f.value or "", why, f.source)
    out.print(flags)

    omitted = Table(title="Left out", title_justify="left")
    for col in ("flag", "why", "source"):
        omitted.add_column(col, overflow="fold")
    for o in plan.omitted:
        omitted.add_row(o.flag, o.reason, o.source)
    out.print(omitted)

    mem = Table(title=f"Memory plan ({m.parameters:,} parameters)", title_justify="left")
    mem.add_column("item")
    mem.add_column("value", justify="right")
    for group, size in m.weight_bytes.items():
        if size:
            mem.add_row(f"  {group}", f"{size:,} B")
    mem.add_row("checkpoint weights", _gb(m.checkpoint_bytes))
    mem.add_row("weights per GPU", _gb(m.weights_per_gpu_bytes))
    mem.add_row(f"KV cache per token ({m.kv_dtype})", f"{m.kv_bytes_per_token:,} B ({m.kv_bytes_per_token_per_gpu:,} B per GPU)")
    mem.add_row("GPU memory", _gb(m.gpu_bytes))
    mem.add_row("runtime reserve + activations (assumed)", _gb(m.runtime_reserve_bytes + m.activation_bytes))
    mem.add_row(f"KV budget ({m.kv_fraction:g} of the rest)", _gb(m.kv_budget_bytes))
    mem.add_row("KV capacity", f"{m.kv_tokens:,} tokens = {m.full_sequences} sequences of {m.max_seq_len}")
    mem.add_row("max_batch_size x max_seq_len", f"{m.demand_tokens:,} tokens " + ("[green]fits[/]" if m.fits_batch else "[yellow]does not fit[/]"))
    out.print(mem)
    out.print(f"[dim]{m.assumption}[/]")

    for note in plan.notes:
        out.print(f"[cyan]note:[/] {note}")
    for warning in plan.warnings:
        out.print(f"[yellow]warning:[/] {warning}")
    for error in plan.errors:
        out.print(f"[bold red]refused:[/] {error}")
    out.print("\n[bold]Commands[/] (on the GPU host, in " + plan.versions["triton_container"] + ")")
    for line in plan.shell_commands():
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def _plan_for(spec_path: Optional[Path], overrides: Optional[List[str]], model_config: Optional[Path]):
    from generator.engine.plan import make_plan
    from generator.engine.shape import read_model_config

    spec = get_spec(spec_path, overrides)
    config, source = read_model_config(spec, model_config)
    return spec, make_plan(spec, config, config_source=source)


@app.command("plan")
def plan_cmd(
    spec_path: Optional[Path] = SpecArg,
    set_: Optional[List[str]] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (for scripts)."),
    model_config: Optional[Path] = ModelConfigOpt,
) -> None:
    """Show how the engine would be built for the target GPU, and why.

    Each trtllm-build flag with its reason and source, the flags left out, the checkpoint step and the memory plan. Exit 1 when the spec is refused (all reasons are printed).
    """
    spec, plan = _plan_for(spec_path, set_, model_config)
    if spec.serving.engine is EngineTarget.llmapi:
        _print_llmapi_plan(spec, as_json)
        return
    if as_json:
        typer.echo(json.dumps(plan.to_dict(), indent=2, default=str))
    else:
        print_plan(plan)
    if plan.errors:
        raise typer.Exit(1)


def _print_llmapi_plan(spec, as_json: bool) -> None:
    """The LLM-API target builds no engine: show how the spec maps onto model.yaml, and what it refuses."""
    from generator.repo.llmapi import llmapi_mapping, llmapi_refusals

    rows, refusals = llmapi_mapping(spec), llmapi_refusals(spec)
    if as_json:
        typer.echo(json.dumps({"target": "llmapi", "mapping": [r._asdict() for r in rows], "errors": refusals},
                              indent=2, default=str))
    else:
        table = Table(title="LLM-API backend: spec → model.yaml (no engine build)", title_justify="left")
        for col in ("spec field", "model.yaml key", "value", "note"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r.spec_field, r.llmapi_key, str(r.value), r.note)
        out.print(table)
        for reason in refusals:
            out.print(f"[bold red]refused:[/] {reason}")
    if refusals:
        raise typer.Exit(1)


@app.command("build")
def build_cmd(
    spec_path: Optional[Path] = SpecArg,
    set_: Optional[List[str]] = SetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands and exit 0 without running them."),
    force: bool = typer.Option(False, "--force", help="Replace an existing engine and TensorRT-LLM checkpoint."),
    model_config: Optional[Path] = ModelConfigOpt,
) -> None:
    """Build the TensorRT-LLM engine: checkpoint step, trtllm-build with exactly the plan's arguments, engine check.

    Exit 0: built, or --dry-run printed the commands. Exit 1: the plan refuses the spec. Exit 2: TensorRT-LLM is not installed here (the GPU-host commands are printed), a step failed, or the engine does not match the spec.
    """
    from generator.engine.build import run_build, trtllm_build_path

    spec, plan = _plan_for(spec_path, set_, model_config)
    if plan.errors:
        for error in plan.errors:
            console.print(f"[bold red]refused:[/] {error}")
        raise typer.Exit(1)
    for warning in plan.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    if dry_run or trtllm_build_path() is None:
        console.print("[bold]dry run[/]: nothing is run" if dry_run else
                      "[bold yellow]TensorRT-LLM is not installed here[/] (no trtllm-build on PATH). Run these on the "
                      f"GPU host, e.g. in {plan.versions['triton_container']}:")
        for line in plan.shell_commands():
            out.print(line, markup=False, highlight=False, soft_wrap=True)
        if dry_run:
            return
        raise TritongenError("TensorRT-LLM is not installed here; the commands above build the engine on a GPU host",
                             fix="pip install 'tritongen[gpu]' on the GPU host and run tritongen build there")
    started = time.monotonic()
    with console.status("building the engine") as status:
        def echo(line: str) -> None:
            console.print(line, markup=False, highlight=False)
            status.update(f"building the engine ({time.monotonic() - started:.0f} s)")

        result = run_build(spec, plan, force=force, on_line=echo)
    console.print(f"[green]✓[/] engine in {result.engine_dir} matches the spec [dim]({result.seconds:.1f} s; logs: "
                  f"{', '.join(map(str, result.logs))})[/]")
