"""Keep the admin key off tritonserver's command line: build the LD_PRELOAD library ``argvkey.c`` and the
environment that hands the key to it.

Triton 2.51 takes its admin-API restriction only from argv (docs/architecture.md), and every local user can
read a command line (/proc/PID/cmdline, ``ps``). The command line therefore carries
``adminapi.KEY_PLACEHOLDER``; the library, loaded into tritonserver only, puts ``VALUE_VAR``'s value in its
place in memory before ``main()`` and takes that variable and LD_PRELOAD out of the environment the Python
stubs inherit. It is compiled with the system C compiler into a private cache folder and reused while its
source is unchanged. Without a compiler (or a library that loads) the key goes on the command line as before,
with a warning.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import uuid
import warnings
from pathlib import Path
from typing import Mapping, Optional

from generator.errors import TritongenWarning
from generator.fsutil import cache_dir, private_dir

SOURCE = Path(__file__).with_name("argvkey.c")
VALUE_VAR = "TRITONGEN_ARGV_KEY"
INHERITED_VAR = "TRITONGEN_INHERITED_LD_PRELOAD"
"""Environment variable argvkey.c reads the placeholder's value from (the same name is in the C source)."""
COMPILERS = ("cc", "gcc", "clang")
_COMPILE_TIMEOUT_S = 120


class KeyOnCommandLine(TritongenWarning):
    """The admin key could not be kept off tritonserver's command line: local users can read it there."""


def _ours(path: Path) -> bool:
    """Whether ``path`` is a plain file of this user that nobody else may write: the only kept library loaded. A
    folder made private by ``private_dir`` may hold files another user put there while it was not."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


_INSTALL_CC = "install a C compiler (e.g. apt-get install gcc) so tritongen can keep it off"


def _warn(why: str, fix: str = _INSTALL_CC) -> None:
    warnings.warn(KeyOnCommandLine(
        f"the admin key goes on tritonserver's command line, where every local user can read it (ps): {why}. "
        f"Fix: {fix}, or serve only where no untrusted user logs in"), stacklevel=3)


def _loads(path: Path) -> bool:
    """Whether this machine maps ``path`` as a library (a sound file, not on a noexec mount). Loading it into
    this process does nothing: the library acts in tritonserver only."""
    try:
        ctypes.CDLL(str(path))
    except OSError:
        return False
    return True


def library(env: Mapping[str, str] = os.environ) -> Optional[Path]:
    """The built library (compiled on first use, and again if the kept one does not load), or None after a
    ``KeyOnCommandLine`` warning when it cannot be built or loaded from here."""
    folder = private_dir(cache_dir(env))  # the path the server preloads from: links resolved, none another user swaps
    if any(c in str(folder) for c in " :"):  # LD_PRELOAD splits on both
        _warn(f"the cache folder {folder} holds a space or colon, which LD_PRELOAD cannot load from",
              "set TRITONGEN_CACHE_DIR (or XDG_CACHE_HOME) to a path without them")
        return None
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    built = folder / f"argvkey-{digest}.so"
    if _ours(built) and _loads(built):
        return built
    path = env.get("PATH")
    compiler = next(filter(None, (shutil.which(c, path=path) for c in COMPILERS)), None)
    if compiler is None:
        _warn(f"no C compiler ({', '.join(COMPILERS)}) on PATH to build tritongen's argvkey library")
        return None
    tmp = folder / f".argvkey-{uuid.uuid4().hex}.so"
    try:
        run = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SOURCE)],
                             capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
        if run.returncode != 0:
            lines = run.stderr.strip().splitlines() or ["no output"]
            _warn(f"{compiler} could not build {SOURCE.name} ({next((x for x in lines if 'error' in x), lines[-1])})")
            return None
        tmp.chmod(0o700)  # whatever the umask: what _ours trusts next time
        os.replace(tmp, built)  # atomic: a server started meanwhile loads the old or the new file, never half
    except (OSError, subprocess.TimeoutExpired) as exc:
        _warn(f"{compiler} could not build {SOURCE.name} ({exc})")
        return None
    finally:
        tmp.unlink(missing_ok=True)
    if not _loads(built):
        _warn(f"the argvkey library built in {folder} does not load (a noexec mount?)",
              "set TRITONGEN_CACHE_DIR (or XDG_CACHE_HOME) to a folder programs may run from")
        return None
    return built


def handover_env(built: Path, value: str, inherited: Optional[str] = None) -> dict[str, str]:
    """What a server started with the placeholder needs: the library preloaded (before the user's own
    ``inherited`` LD_PRELOAD, which the library hands on to the server's children) and the value it fills in."""
    if not inherited:
        return {"LD_PRELOAD": str(built), VALUE_VAR: value}
    return {"LD_PRELOAD": f"{built}:{inherited}", INHERITED_VAR: inherited, VALUE_VAR: value}
