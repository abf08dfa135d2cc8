"""Output folders are written whole or not at all: build in a temporary sibling, then move into place."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from generator.errors import ArtifactCorrupt, OutputExists


def check_writable_target(target: Path, force: bool, command_hint: str = "") -> None:
    """Refuse to replace an existing non-empty folder or file unless ``force``."""
    if target.exists() and not force and (target.is_file() or any(target.iterdir())):
        fix = f"{command_hint} --force" if command_hint else "pass --force to replace it, or choose another output"
        raise OutputExists("output already exists and would be overwritten", where=str(target), fix=fix)


@contextlib.contextmanager
def atomic_dir(target: Path, *, force: bool = False, command_hint: str = "") -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``.

    On any exception the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target).resolve()
    check_writable_target(target, force, command_hint)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def atomic_write_text(path: Path, text: str, *, force: bool = True) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExists("file exists", where=str(path), fix="pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False, encoding="utf-8") as f:
        f.write(text)
    Path(f.name).replace(path)


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; anything else (not UTF-8, not JSON, not an object) is ArtifactCorrupt
    naming the file, with ``fix`` saying how to make it again."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ArtifactCorrupt(f"not UTF-8 text (byte {exc.start})", where=str(path), fix=fix) from None
    except json.JSONDecodeError as exc:
        raise ArtifactCorrupt(f"not valid JSON ({exc.msg} at line {exc.lineno})", where=str(path), fix=fix) from None
    if not isinstance(data, dict):
        raise ArtifactCorrupt(f"not a JSON object (a {type(data).__name__})", where=str(path), fix=fix)
    return data
