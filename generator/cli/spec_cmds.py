"""Commands about the spec itself: init and spec-reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from generator.cli._app import Force, app, console, escape, out
from generator.errors import OutputExists, SpecError
from generator.spec.doc import README_END, README_START, commented_yaml, markdown_reference, with_reference


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the spec.")] = Path("tritongen.yaml"),
    force: Force = False,
) -> None:
    """Write a commented spec with every field and its default (Qwen3-8B, NVFP4 + FP8 KV, RTX 5090)."""
    if path.exists() and not force:
        raise OutputExists("file exists", where=str(path), fix=f"tritongen init {path} --force")
    path.write_text(commented_yaml(), encoding="utf-8")
    console.print(f"wrote {escape(str(path))}")


@app.command("spec-reference")
def spec_reference(
    readme: Annotated[Optional[Path], typer.Option(
        "--update", help="Rewrite the table between the spec-reference markers of this file.")] = None,
) -> None:
    """Print the spec reference (every field, default, meaning) as Markdown, or update it in the README."""
    if readme is None:
        out.print(markdown_reference(), markup=False, highlight=False, soft_wrap=True)
        return
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise SpecError(f"no {README_START} ... {README_END} markers", where=str(readme),
                        fix=f"put both marker lines where the table belongs in {readme}")
    readme.write_text(with_reference(text), encoding="utf-8")
    console.print(f"updated {escape(str(readme))}")
