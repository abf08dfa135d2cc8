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
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from generator.errors import ArtifactCorrupt, OutputExists

MARKER = ".tritongen-output"
"""Written into every folder tritongen creates as a whole; ``--force`` replaces only folders that have it."""

_LEFTOVER_KINDS = ("tmp", "old")

CACHE_VAR = "TRITONGEN_CACHE_DIR"
"""Environment variable naming the folder tritongen keeps what it builds once (the test suite gives each run its own)."""


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where tritongen keeps what it builds once and reuses: ``$TRITONGEN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/tritongen`` (default ``~/.cache/tritongen``)."""
    if env.get(CACHE_VAR):
        return Path(env[CACHE_VAR])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tritongen"


def _replaceable_by_others(folder: Path) -> Optional[str]:
    """Why another user could rename or replace ``folder`` (a resolved path) or a folder above it, or None: one of
    them is not this user's or root's, or others may write to it without the sticky bit that keeps them from
    renaming what is not theirs (/tmp has it)."""
    for part in [*reversed(folder.parents), folder]:
        st = part.lstat()
        if st.st_uid not in (0, os.geteuid()):
            return f"{part} belongs to another user (uid {st.st_uid})"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"other users may write to {part} (mode {stat.filemode(st.st_mode)}, no sticky bit)"
    return None


def private_dir(folder: Path) -> Path:
    """``folder``, made if missing and mode 0700, as a path without links: nobody else may swap what tritongen
    reuses from it (an LD_PRELOAD library, kept checkpoints), neither in it nor by renaming a folder above it
    (review14: with XDG_CACHE_HOME in another user's folder, that user swapped the cache folder between its check
    and its use, and tritonserver preloaded their library with the admin key in its environment)."""
    made = [part for part in (folder, *folder.parents) if not part.exists()]
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for part in made[1:]:  # folders above it made here: writable by this user alone, whatever the umask (0000)
        with contextlib.suppress(OSError):
            part.chmod(part.stat().st_mode & ~0o022)
    folder = folder.resolve()
    above = _replaceable_by_others(folder.parent)
    if above:
        raise ArtifactCorrupt(f"the cache folder sits where another user could replace it: {above}", where=str(folder),
                              fix=f"point {CACHE_VAR} (or XDG_CACHE_HOME) at a folder only you (and root) can write, "
                                  "e.g. ~/.cache")
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ArtifactCorrupt(f"the cache folder is not a folder of this user (uid {os.geteuid()})", where=str(folder),
                              fix=f"remove it, or point {CACHE_VAR} (or XDG_CACHE_HOME) at a folder of yours")
    if st.st_mode & 0o077:
        folder.chmod(0o700)
    return folder


def kept_folder(kind: str, key: str) -> Path:
    """Where the cache keeps one thing tritongen made from fixed inputs (``kind``: tiny-model, quantize), under the
    ``key`` of all that decides its bytes. The folder may not exist yet: ``reusable`` says whether it does."""
    return private_dir(cache_dir() / kind) / key


def reusable(folder: Path) -> bool:
    """Whether ``folder`` is a kept folder: a folder (not a link) of this user in the private cache folder."""
    try:
        st = folder.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def keep_copy(built: Path, kept: Path) -> None:
    """Copy the files of ``built`` to ``kept`` as one folder, whole or not at all. The cache is an aid: a full disk,
    or another run that kept its copy first, leaves this run's output as it is; a copy left by a killed run goes."""
    remove_leftovers(kept)
    staged = Path(tempfile.mkdtemp(prefix=f".{kept.name}.tmp-{os.getpid()}-", dir=kept.parent))
    try:
        with contextlib.suppress(OSError):
            for file in built.iterdir():
                shutil.copy(file, staged / file.name)
            staged.rename(kept)
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # nothing left once renamed


def copy_kept(kept: Path, target: Path) -> None:
    """The files of a kept folder into ``target`` (a command's temporary output folder)."""
    for file in kept.iterdir():
        shutil.copy(file, target / file.name)


def _listing(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (relative, POSIX), the marker left out; links are not followed.
    ``__pycache__`` folders are Python's own (the Python backend writes them beside model.py) and left out."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = Path(root).relative_to(folder)
        out += [(rel / name).as_posix() for name in dirs + files]
    return sorted(set(out) - {MARKER})


def write_marker(folder: Path, *, entries: Optional[list[str]] = None) -> None:
    """Mark ``folder`` as tritongen's, recording everything it holds (``files``, at every depth), so a file
    added later anywhere inside (NVIDIA's model.py copied into a model folder) keeps ``--force`` off it.
    ``entries`` None: the command fills the folder bit by bit (the demo) and replaces only marked subfolders,
    never the folder itself."""
    record: dict[str, Any] = {"written_by": "tritongen", "entries": entries}
    if entries is not None:
        record["files"] = _listing(folder)
    (folder / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def _not_ours(target: Path, *, fill_in_place: bool = False) -> Optional[str]:
    """None when ``target`` is a folder tritongen wrote and nobody added to since, else why not.
    ``fill_in_place``: the caller writes into a folder the demo marked, and deletes nothing in it."""
    if not target.is_dir():
        return "it is a file, not a folder tritongen wrote"
    marker = target / MARKER
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"it has no {MARKER} marker, so tritongen did not write it"
    if not isinstance(recorded, dict):
        return f"its {MARKER} marker is not tritongen's"
    entries = recorded.get("entries")
    if entries is None:
        return None if fill_in_place else ("tritongen demo fills it bit by bit, so what else it holds is not "
                                           "known to be tritongen's; only `tritongen demo --force` writes into it")
    files = recorded.get("files")
    now = _listing(target) if isinstance(files, list) else sorted(p.name for p in target.iterdir())
    added = sorted(set(now) - set(files if isinstance(files, list) else entries) - {MARKER})
    if added:
        more = f" and {len(added) - 5} more" if len(added) > 5 else ""
        return f"it holds files tritongen did not write there: {', '.join(added[:5])}{more}"
    return None


def output_path(target: Path) -> Path:
    """``target`` resolved; a symbolic link that leads to itself is an error naming it (pathlib raised a
    RuntimeError, a traceback)."""
    try:
        return Path(target).resolve()
    except RuntimeError:
        raise OutputExists("the output is a symbolic link that leads back to itself (a loop)", where=str(target),
                           fix="remove the link, or choose another output") from None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_writable_target(
    target: Path, force: bool, command_hint: str = "", protected: Mapping[str, Path] = {}, *,
    fill_in_place: bool = False,
) -> None:
    """Refuse an output that would replace something not tritongen's own.

    ``protected`` names paths (label -> path) that must survive: a target that is one of them or
    holds one is refused, with or without ``force``; so is a target holding the working directory.
    ``fill_in_place``: the command writes into the folder without deleting it (the demo).
    """
    target = output_path(target)
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
    reason = _not_ours(target, fill_in_place=fill_in_place)
    if reason:
        raise OutputExists(
            f"--force replaces only a folder tritongen wrote, and {reason}",
            where=str(target), fix="choose another output folder, or move this one away yourself",
        )


def check_side_file(path: Optional[Path], option: str, reads: Mapping[str, Optional[Path]]) -> None:
    """Refuse a file a command writes beside its output (``--junit``, ``--summary``, smoke's ``--json``, serve's
    ``--log-file``) that is one of what it ``reads`` (label -> path; None: not given) or lies inside one. Such files
    replace what is there without ``--force``, as CI files do (``$GITHUB_STEP_SUMMARY`` exists before the step);
    review23: ``--junit R`` replaced the records R, ``--summary`` the spec or the baseline the command had just read
    (where ``-o`` refuses them even with --force), and ``--log-file`` truncated a file of the repository served."""
    if path is None:
        return
    target = output_path(path)
    for label, read in reads.items():
        if read is not None and _inside(target, output_path(read)):
            raise OutputExists(f"{path} would replace {label} ({read}), which this command reads",
                               where=option, fix=f"write {option} to a file of its own")


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
    target = output_path(target)
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
    try:  # again: the user may have written into the folder while the command ran (a load test runs for hours)
        check_writable_target(target, force, command_hint, protected)
    except OutputExists as exc:
        kept = target.with_name(f"{target.name}.new-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
        tmp.rename(kept)
        raise OutputExists(f"{exc.message} (it changed while this command ran); the new output is in {kept}",
                           where=exc.where, fix=f"move what you added out of {target}, then move {kept} there") from None
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
        try:
            f.write(text)
            f.flush()
        except BaseException:  # a full disk, an interrupt: no half-written temporary file stays behind
            with contextlib.suppress(OSError):  # closing flushes what the full disk refused again, and fails again
                f.close()
            Path(f.name).unlink(missing_ok=True)
            raise
    Path(f.name).replace(path)


MAX_READ_BYTES = 64 << 20
"""The largest configuration, manifest or record file tritongen reads whole (a 2 GiB sparse file is not one)."""


def unreadable_file(path: Path, *, limit: int = MAX_READ_BYTES) -> Optional[str]:
    """Why ``path`` is not a file a library may read whole (a FIFO, device or socket, or more than ``limit``
    bytes), or None; a file that does not exist is None (the library reports it). For files tritongen hands to
    other libraries (a tokenizer folder), which read without asking."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{Path(path).name} cannot be read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{Path(path).name} is not a regular file (a FIFO, device, socket or folder)"
    if st.st_size > limit:
        return f"{Path(path).name} has {st.st_size:,} bytes, more than the {limit:,} a file of this kind may have"
    return None


def _opened_path(fd: int, fallback: Path) -> Path:
    """The path of the file open as ``fd`` as the kernel resolved it (Linux's /proc), else ``fallback``."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return fallback


def read_text_bounded(path: Path, *, fix: str, limit: int = MAX_READ_BYTES, inside: Optional[Path] = None) -> str:
    """The UTF-8 text of ``path``, read only when it is a regular file (never a FIFO that would block, a
    device such as /dev/zero, or a folder) of at most ``limit`` bytes, and, with ``inside``, when it
    resolves inside that folder, also when the path changes between that check and the read (the path
    resolved is opened without following a link, and the file opened must lie inside). Anything else is
    ArtifactCorrupt naming the file (never its content)."""
    path = opened = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if inside is not None:
        folder = Path(inside).resolve()
        try:
            opened = path.resolve()
        except (OSError, RuntimeError) as exc:  # a link loop, or a link swapped in while it was followed
            raise ArtifactCorrupt(f"cannot be resolved: {getattr(exc, 'strerror', None) or exc}", where=str(path),
                                  fix=fix) from None
        if not _inside(opened, folder):
            raise ArtifactCorrupt(f"resolves outside {inside} (to {opened}); only files inside it are read",
                                  where=str(path), fix=fix)
        flags |= getattr(os, "O_NOFOLLOW", 0)  # the path checked, never a link put there since (review20)
    try:
        fd = os.open(opened, flags)
    except OSError as exc:
        raise ArtifactCorrupt(f"cannot be opened: {exc.strerror}", where=str(path), fix=fix) from None
    try:  # before fdopen, which refuses a folder with IsADirectoryError (review30: a traceback)
        if inside is not None and not _inside(_opened_path(fd, opened), folder):  # a folder above swapped for a link
            raise ArtifactCorrupt(f"changed while it was read: it no longer resolves inside {inside}; only files inside "
                                  "it are read", where=str(path), fix=fix)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactCorrupt("not a regular file (a FIFO, device, socket or folder)", where=str(path), fix=fix)
    except ArtifactCorrupt:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise ArtifactCorrupt(f"{st.st_size:,} bytes, more than the {limit:,} a file of this kind may have",
                                  where=str(path), fix=fix)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ArtifactCorrupt(f"more than the {limit:,} bytes a file of this kind may have", where=str(path), fix=fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactCorrupt(f"not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}; a binary file?)",
                              where=str(path), fix=fix) from None


def read_json_object(path: Path, *, fix: str, inside: Optional[Path] = None) -> dict[str, Any]:
    """The JSON object in ``path`` (read by ``read_text_bounded``); anything else (not UTF-8, not JSON, nested
    past what Python parses, not an object) is ArtifactCorrupt naming the file, with ``fix`` saying how to
    make it again."""
    try:
        data = json.loads(read_text_bounded(path, fix=fix, inside=inside))
    except json.JSONDecodeError as exc:
        raise ArtifactCorrupt(f"not valid JSON ({exc.msg} at line {exc.lineno})", where=str(path), fix=fix) from None
    except ValueError as exc:  # an integer past Python's 4,300 digits
        raise ArtifactCorrupt(f"not valid JSON ({str(exc).split(':')[0]})", where=str(path), fix=fix) from None
    except RecursionError:
        raise ArtifactCorrupt("nested deeper than any configuration is", where=str(path), fix=fix) from None
    if not isinstance(data, dict):
        raise ArtifactCorrupt(f"not a JSON object (a {type(data).__name__})", where=str(path), fix=fix)
    return data
