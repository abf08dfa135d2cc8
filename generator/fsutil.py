"""Output folders are written whole or not at all, and ``--force`` replaces only what tritongen wrote.

A folder is built in a temporary sibling and moved into place. The finished folder carries a marker
file listing what it held when tritongen wrote it; ``--force`` replaces a folder only when that
marker is there and nothing was added since, and never a folder that is, or holds, a path the spec
names (the model, checkpoint, engine, the spec's own folder) or the working directory. Temporary
siblings name the process that made them, so the next run removes those of a process that died.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from generator.errors import ArtifactCorrupt, OutputExists

MARKER = ".tritongen-output"
"""Written into every folder tritongen creates as a whole; ``--force`` replaces only folders that have it."""

_LEFTOVER_KINDS = ("tmp", "old")


def write_marker(folder: Path, *, entries: Optional[list[str]] = None) -> None:
    """Mark ``folder`` as tritongen's. ``entries`` None: the command fills the folder bit by bit
    (the demo) and replaces only marked subfolders, never the folder itself."""
    (folder / MARKER).write_text(json.dumps({"written_by": "tritongen", "entries": entries}) + "\n", encoding="utf-8")


def _not_ours(target: Path) -> Optional[str]:
    """None when ``target`` is a folder tritongen wrote and nobody added to since, else why not."""
    if not target.is_dir():
        return "it is a file, not a folder tritongen wrote"
    marker = target / MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"it has no {MARKER} marker, so tritongen did not write it"
    entries = recorded.get("entries") if isinstance(recorded, dict) else None
    if entries is None:
        return None
    added = sorted({p.name for p in target.iterdir()} - set(entries) - {MARKER})
    if added:
        more = f" and {len(added) - 5} more" if len(added) > 5 else ""
        return f"it holds files tritongen did not write there: {', '.join(added[:5])}{more}"
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_writable_target(
    target: Path, force: bool, command_hint: str = "", protected: Mapping[str, Path] = {},
) -> None:
    """Refuse an output that would replace something not tritongen's own.

    ``protected`` names paths (label -> path) that must survive: a target that is one of them or
    holds one is refused, with or without ``force``; so is a target holding the working directory.
    """
    target = Path(target).resolve()
    named = dict(protected, **{"the working directory": Path.cwd()})
    for label, path in named.items():
        if _inside(Path(path).resolve(), target):
            raise OutputExists(
                f"output folder holds {label} ({path}), which this command must not replace",
                where=str(target), fix="choose an output folder outside it",
            )
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not force:
        fix = f"{command_hint} --force" if command_hint else "pass --force to replace it, or choose another output"
        raise OutputExists("output already exists and would be overwritten", where=str(target), fix=fix)
    reason = _not_ours(target)
    if reason:
        raise OutputExists(
            f"--force replaces only a folder tritongen wrote, and {reason}",
            where=str(target), fix="choose another output folder, or move this one away yourself",
        )


def _leftover_owner(name: str, target_name: str) -> Optional[int]:
    """The process id in a temporary sibling's name ``.NAME.tmp-PID-XXXX`` (or ``.old-``), else None."""
    for kind in _LEFTOVER_KINDS:
        prefix = f".{target_name}.{kind}-"
        if name.startswith(prefix):
            pid = name[len(prefix):].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(target: Path) -> list[Path]:
    """Remove temporary siblings of ``target`` left by a run that was killed; returns what went."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for sibling in target.parent.iterdir():
        pid = _leftover_owner(sibling.name, target.name)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() else sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_dir(
    target: Path, *, force: bool = False, command_hint: str = "", protected: Mapping[str, Path] = {},
) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, marked as ours.

    On any exception the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target).resolve()
    check_writable_target(target, force, command_hint, protected)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        write_marker(tmp, entries=sorted(p.name for p in tmp.iterdir()))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
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
