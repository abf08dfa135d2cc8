"""Calibration texts for quantization: a local .txt/.jsonl file (pure reading and seeded sampling) or a
Hugging Face data set (needs the network and the ``datasets`` package)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from generator.errors import ArtifactCorrupt, ArtifactMissing, SpecError, ToolMissing
from generator.spec import Spec

HUB_DATASETS = {"cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", "article")}
"""Known hub calibration sets: name -> (repo, config, text column). Others are read with config None and column ``text``."""


def read_calibration_file(path: Path) -> list[str]:
    """Texts of a local calibration file: .jsonl (a ``text`` field per line) or text (blank-line paragraphs)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactCorrupt(f"calibration file is not UTF-8 text (byte {exc.start})", where=str(path),
                              fix="save it as UTF-8, or pass another file with --dataset") from None
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ArtifactCorrupt(
                    f"line {n} is not a JSON object with a text field", where=str(path), fix='write one {"text": "..."} per line'
                ) from None
        return [t for t in texts if t.strip()]
    return [p.strip() for p in raw.split("\n\n") if p.strip()]


def select_samples(texts: list[str], size: int, seed: int) -> list[str]:
    """A seeded sample of ``size`` texts (all of them, shuffled, when there are fewer)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [texts[i] for i in order[:size]]


def calibration_texts(spec: Spec) -> tuple[list[str], str]:
    """Calibration texts and a description of where they came from."""
    cal = spec.quantization.calibration
    local = spec.path(Path(cal.dataset))
    looks_local = local.exists() or local.suffix in (".txt", ".jsonl", ".md") or cal.dataset.startswith((".", "/", "~"))
    if looks_local:
        if not local.is_file():
            raise ArtifactMissing(
                "calibration file not found", where=str(local),
                fix="pass an existing .txt or .jsonl file with --dataset (e.g. generator/data/corpus.txt)",
            )
        texts = read_calibration_file(local)
        if not texts:
            raise ArtifactCorrupt("calibration file holds no text", where=str(local),
                                  fix="put text in it (paragraphs separated by blank lines), or pass another --dataset")
        return select_samples(texts, cal.size, cal.seed), str(local)
    return _hub_texts(cal.dataset, cal.size, cal.seed), f"hub:{cal.dataset}"


def _hub_texts(name: str, size: int, seed: int) -> list[str]:
    from generator.model.fetch import offline_mode

    fix = "calibrate from a local file instead: --dataset PATH.txt|PATH.jsonl (or --set quantization.calibration.dataset=PATH)"
    if offline_mode():
        raise SpecError(f"calibration data set {name!r} needs the Hugging Face Hub, but HF_HUB_OFFLINE is set", where="quantization.calibration.dataset", fix=fix)
    try:
        import datasets
    except ImportError:
        raise ToolMissing(
            f"calibration data set {name!r} needs the `datasets` package (not a tritongen dependency) and network access",
            where="quantization.calibration.dataset", fix=f"pip install datasets, or {fix}",
        ) from None
    repo, config, column = HUB_DATASETS.get(name, (name, None, "text"))
    try:
        stream = datasets.load_dataset(repo, config, split="train", streaming=True).shuffle(seed=seed, buffer_size=10_000)
        texts = [row[column] for _, row in zip(range(size), stream)]
    except Exception as exc:  # network, missing repo, missing column: all end the same way for the user
        raise ArtifactMissing(f"could not read calibration data set {name!r}: {exc}", where="quantization.calibration.dataset", fix=fix) from exc
    return [t for t in texts if t and t.strip()]
