"""Printers more than one command uses (the plan: ``tritongen plan`` and the demo). User text is escaped,
never read as rich markup."""

from __future__ import annotations

from rich.table import Table

from generator.cli._app import console, escape, out


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({n / (1 << 30):.2f} GiB)"


def print_plan(plan) -> None:
    """The plan as tables: header, checkpoint step, flags with reasons, omissions, memory, findings, commands."""
    g, m = plan.gpu, plan.memory
    shipped = "shipped reference" in plan.model_config_source
    source = escape(plan.model_config_source)
    out.print(f"[bold]Model[/] {escape(plan.model)}   [bold]config[/] " + (f"[yellow]{source}[/]" if shipped else source))
    out.print(f"[bold]GPU[/] {escape(g.name)} — SM{g.sm} {g.architecture}, {g.memory_gib:g} GiB, native formats: "
              f"{', '.join(g.native_formats)}")
    out.print("[bold]Versions[/] " + escape(", ".join(f"{k}: {v}" for k, v in plan.versions.items())))

    out.print(f"\n[bold]1. {escape(plan.conversion.title)}[/]\n[dim]{escape(plan.conversion.reason)}[/]")

    flags = Table(title="2. trtllm-build arguments", title_justify="left", show_lines=False)
    for col in ("flag", "value", "why", "source"):
        flags.add_column(col, overflow="fold")
    for f in plan.flags:
        why = escape(f.reason) + (f"\n[yellow]no effect:[/] {escape(f.no_effect)}" if f.no_effect else "")
        flags.add_row(f.flag, escape(f.value or ""), why, escape(f.source))
    out.print(flags)

    omitted = Table(title="Left out", title_justify="left")
    for col in ("flag", "why", "source"):
        omitted.add_column(col, overflow="fold")
    for o in plan.omitted:
        omitted.add_row(o.flag, escape(o.reason), escape(o.source))
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
    c = plan.calibration
    if c is not None:
        mem.add_row(f"calibration peak (batch {c.batch_size} × {c.tokens_per_sample} tokens, unquantized weights)",
                    _gb(c.peak_bytes) + (" [green]fits[/]" if c.fits else " [red]does not fit: lower quantization.calibration.batch_size[/]"))
        if c.seconds_per_sample is not None:
            mem.add_row(f"calibration time ({c.samples} samples)",
                        f"~{c.seconds_per_sample:.2f} s/sample, ~{c.calibration_seconds / 60:.1f} min (H200-fitted estimate)")
    out.print(mem)
    out.print(f"[dim]{escape(m.assumption)}[/]")

    for note in plan.notes:
        out.print(f"[cyan]note:[/] {escape(note)}")
    for warning in plan.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}")
    for error in plan.errors:
        out.print(f"[bold red]refused:[/] {escape(error)}")
    out.print("\n[bold]Commands[/] (on the GPU host, in " + escape(plan.versions["triton_container"]) + ")")
    for line in plan.shell_commands():
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def print_topology(topo, refused) -> None:
    """Where the ranks run: instances, GPUs, nodes, launcher, memory per GPU; or why the topology does not fit."""
    if refused is not None:
        console.print(f"[bold red]topology refused:[/] {escape(refused.message)}\n  fix: {escape(refused.fix)}")
        return
    GIB = 1 << 30
    table = Table(title="Topology", title_justify="left")
    table.add_column("item")
    table.add_column("value")
    rows = [
        ("ranks per instance", f"tp {topo.tp} x pp {topo.pp} = {topo.ranks_per_instance}"),
        ("instances per server", str(topo.instance_count)),
        ("servers", f"{topo.replicas} ({topo.nodes_per_instance} node(s) of {topo.gpus_per_node} GPU(s) each)"),
        ("GPUs per pod", str(topo.gpus_per_pod)),
        ("engine mode / launcher / MPI world", f"{topo.mode} / {topo.launcher} / {topo.world_size}"),
    ]
    if topo.gpu_device_ids:
        rows.append(("gpu_device_ids", topo.gpu_device_ids))
    if topo.weights_per_gpu_bytes is not None:
        rows.append(("weights per GPU", f"{topo.weights_per_gpu_bytes / GIB:.2f} GiB"))
        rows.append(("KV tokens per instance", f"{topo.kv_tokens_per_instance:,}"))
    for item, value in rows:
        table.add_row(item, escape(value))
    out.print(table)
    for note in topo.notes:
        console.print(f"[dim]{escape(note)}[/]")
