"""Model commands: ``fetch`` (Hugging Face download), ``tiny-model`` (a local test model) and ``quantize``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from generator.cli._app import Force, Output, Sets, app, console, escape, get_spec, out, spec_option, spec_overrides, step
from generator.spec import Spec

STAGES = {
    "load": "loading model and tokenizer",
    "original": "scoring the original model (held-out text)",
    "calibrate": "calibrating",
    "simulated": "scoring simulated quantization",
    "export": "exporting the unified checkpoint",
    "exported": "scoring the exported checkpoint",
    "reuse": "copying the checkpoint kept in the cache",
}


Target = Annotated[Optional[str], typer.Argument(
    help="Spec YAML file, or a model (local folder or hub id) with default settings.")]
ModelDir = spec_option("artifacts.model_dir", "--output", "-o")
Revision = spec_option("model.revision", "--revision")


@app.command()
def fetch(target: Target = None, revision: Revision = None, output: ModelDir = None, overrides: Sets = None) -> None:
    """Download a model's config, tokenizer and safetensors (nothing else); a local folder is checked as is."""
    from generator.model.fetch import fetch as fetch_model

    spec = _spec_for(target, list(overrides or []) + spec_overrides(fetch, locals()))
    with step(f"fetching {spec.model.source}"):
        path = fetch_model(spec)
    out.print(str(path), markup=False, highlight=False)


@app.command("tiny-model")
def tiny_model(
    output: Output = Path("tiny-model"),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and training (same seed, same bytes)."),
    force: Force = False,
) -> None:
    """Make a tiny trained Qwen3 model with its own BPE tokenizer and chat template (for tests and the demo).

    A model made before (same seed, same code) is copied from tritongen's cache folder, not trained again.

    The cache folder: $TRITONGEN_CACHE_DIR, else $XDG_CACHE_HOME/tritongen (default ~/.cache/tritongen)."""
    from generator.model.tinymodel import make_tiny_model

    with step(f"training a tiny Qwen3 model into {output}"):
        path = make_tiny_model(output, seed=seed, force=force)
    out.print(str(path), markup=False, highlight=False)


def _progress_callback(progress: Progress):
    """Turn quantize()'s (stage, done, total) reports into one rich task per stage."""
    tasks: dict[str, Any] = {}

    def report(stage: str, done: int, total: Optional[int]) -> None:
        if stage not in tasks:
            label = STAGES.get(stage) or STAGES.get(stage.split(" ")[0], stage)
            if stage.startswith("calibrate ("):
                label += " " + stage.split(" ", 1)[1]
            tasks[stage] = progress.add_task(label, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return report


def _spec_for(target: Optional[str], overrides: list[str]) -> Spec:
    """A spec file as given, or the default spec pointed at a model folder / hub id."""
    if target and Path(target).is_file():
        return get_spec(Path(target), overrides)
    if target:
        local = Path(target).expanduser()
        source = str(local.resolve()) if local.is_dir() else target
        overrides = [f"model.source={source}", *overrides]
    return get_spec(None, overrides)


def print_manifest(manifest: dict, checkpoint: Path) -> None:
    hq = manifest["hf_quant_config"]
    sizes, q, t = manifest["sizes"], manifest["quality"], manifest["timings_s"]
    out.print(f"[bold]Checkpoint[/] {escape(str(checkpoint))}")
    if "reused" in manifest:
        out.print(f"[bold]Reused[/] the checkpoint kept in the cache ({escape(manifest['reused']['from_cache'])}): the "
                  f"same model files, settings, calibration text, libraries and device; the figures below are its own")
    kept = ", ".join(hq.get("exclude_modules") or [])
    out.print(f"[bold]Format[/] {hq.get('quant_algo') or 'unquantized'} weights, "
              f"{hq.get('kv_cache_quant_algo') or 'unquantized'} KV cache" + (f"; kept unquantized: {escape(kept)}" if kept else ""))
    cal = manifest["calibration"]
    out.print(f"[bold]Calibration[/] {cal['samples']} samples ({cal['tokens']} tokens, ≤{cal['max_seq_len']} each) "
              f"from {escape(cal['dataset'])} on {manifest['device']}")
    table = Table(title="Sizes", title_justify="left")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("all weights", f"{sizes['input_bytes']:,} B", f"{sizes['output_bytes']:,} B")
    if sizes["quantized_layers"]:
        table.add_row(f"quantized linear layers ({sizes['quantized_layers']})", f"{sizes['quantized_linear_bf16_bytes']:,} B (BF16)",
                      f"{sizes['quantized_linear_bytes']:,} B = {sizes['quantized_linear_ratio']:.1%}")
    out.print(table)
    if q:
        table = Table(title=f"Quality on {q['tokens']} held-out tokens ({q['dtype']})", title_justify="left")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_row("perplexity, original", f"{q['perplexity_original']:.3f}")
        table.add_row("perplexity, exported checkpoint", f"{q['perplexity_quantized']:.3f}")
        table.add_row("perplexity, ModelOpt simulated quantization", f"{q['perplexity_simulated']:.3f}")
        table.add_row("top-1 agreement with original", f"{q['top1_agreement']:.2%}")
        table.add_row("KL(original ‖ exported), nats/token", f"{q['kl_divergence_mean']:.6f}")
        fid = q["simulated_vs_exported"]
        table.add_row("simulated vs exported: max |Δlogit|", f"{fid['max_abs_logit_diff']:.4g}")
        out.print(table)
    out.print("[bold]Times[/] " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items()))


Format = spec_option("quantization.format", "--format")
KVCache = spec_option("quantization.kv_cache", "--kv-cache")
CalibSize = spec_option("quantization.calibration.size", "--calib-size")
CalibSeqLen = spec_option("quantization.calibration.max_seq_len", "--calib-seq-len")
Checkpoint = spec_option("artifacts.checkpoint_dir", "--output", "-o")


@app.command()
def quantize(
    target: Target = None,
    format: Format = None,
    kv_cache: KVCache = None,
    calib_size: CalibSize = None,
    calib_seq_len: CalibSeqLen = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="Calibration .txt/.jsonl file, or a hub data set name (spec: quantization.calibration.dataset).")] = None,
    output: Checkpoint = None,
    force: Force = False,
    overrides: Sets = None,
) -> None:
    """Quantize with ModelOpt (NVFP4 + FP8 KV by default) and export the checkpoint TensorRT-LLM builds from."""
    from generator.model.quantize import quantize as run_quantize

    sets = list(overrides or []) + spec_overrides(quantize, locals())
    if dataset is not None:
        local = Path(dataset).expanduser()
        sets.append(f"quantization.calibration.dataset={local.resolve() if local.exists() else dataset}")
    spec = _spec_for(target, sets)

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        manifest = run_quantize(spec, force=force, progress=_progress_callback(progress))
    if "skipped" in manifest:
        console.print(f"[yellow]nothing to do:[/] {escape(manifest['skipped'])}")
        return
    print_manifest(manifest, spec.checkpoint_dir)
