"""Which ``tritonserver`` runs and how it is invoked: the binary (on PATH, else the one bundled in the
nvidia-pytriton wheel), the Python backend folder assembled for the running Python, the command line
(loopback addresses, ports, admin APIs closed by a key) and the environment (allowlisted, with the
bundled libraries). Deciders except ``find_install`` and ``assemble_backend_dir``, which look at and
copy files.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from generator.errors import ToolMissing
from generator.serve.adminapi import ADMIN_APIS, ADMIN_HEADER, restriction_flags  # noqa: F401 (re-exported)

RUN_EXIT_TIMEOUT_S = 0
"""``--exit-timeout-secs`` of the servers tritongen's runs start and stop (see ``TritonServer.exit_timeout_s``):
none, since a run stops its server once its own requests are done. Triton 2.51 counts its models' unloading
against the same timeout in whole seconds, and unloading the Python models takes longer than that here
(the CPU engine took 12 s on the loaded 2-core machine): with 2 s every stop waited 2 s and then left the
same stubs behind, which ``TritonServer.stop`` ends before it reaps the server (that keeps them from
segfaulting). ``tritongen serve`` gives its clients longer (SERVE_EXIT_TIMEOUT_S)."""
_PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class ServerInstall:
    """Where the server binary and its Python backend come from."""

    binary: Path
    bundled: bool
    """True for the nvidia-pytriton copy (needs an assembled backend folder and library path)."""
    pytriton_dir: Optional[Path] = None
    """The wheel's ``pytriton`` package folder when bundled."""


def find_install() -> ServerInstall:
    """``tritonserver`` on PATH (NGC container), else the one in the nvidia-pytriton wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        return ServerInstall(Path(on_path), bundled=False)
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ToolMissing(
            "no tritonserver found: not on PATH and the nvidia-pytriton wheel is not installed",
            fix="pip install nvidia-pytriton==0.7.0 (bundles tritonserver), or run inside an NGC Triton container",
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    binary = pkg / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        raise ToolMissing("the nvidia-pytriton wheel has no tritonserver binary", where=str(binary),
                          fix="pip install --force-reinstall nvidia-pytriton==0.7.0")
    return ServerInstall(binary, bundled=True, pytriton_dir=pkg)


def assemble_backend_dir(pytriton_dir: Path, target: Path, python_version: str = _PY_VERSION) -> Path:
    """Make ``target/python/`` hold the Python backend and the stub for ``python_version``.

    The wheel keeps one stub per Python version apart from the backend; Triton expects them together.
    """
    src = pytriton_dir / "tritonserver"
    stub = src / "python_backend_stubs" / python_version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in (src / "python_backend_stubs").glob("3.*"))
        raise ToolMissing(
            f"the bundled Python backend has no stub for Python {python_version} (has {', '.join(available)})",
            where=str(stub.parent),
            fix="run tritongen with one of those Python versions",
        )
    dest = target / "python"
    dest.mkdir(parents=True, exist_ok=True)
    for item in (
        src / "backends" / "python" / "libtriton_python.so",
        src / "backends" / "python" / "triton_python_backend_utils.py",
        stub,
    ):
        link = dest / item.name
        if not link.exists():
            try:
                link.symlink_to(item)
            except OSError:
                shutil.copy2(item, link)
    return target


def server_command(
    binary: Path,
    repo_dir: Path,
    *,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    backend_dir: Optional[Path],
    shm_prefix: str,
    log_verbose: int = 0,
    exit_timeout_s: int = RUN_EXIT_TIMEOUT_S,
    admin_credential: Optional[str] = None,
    extra_args: Sequence[str] = (),
    launch_script: Optional[Path] = None,
) -> list[str]:
    """The tritonserver command line. ``extra_args`` come last so they override the defaults.
    With ``admin_credential`` (``adminapi.admin_credential(key)``, or its placeholder) the admin APIs need the
    ``ADMIN_HEADER`` header with the key (HTTP and gRPC).

    With the repository's ``launch_script`` (what render writes for the topology), the script starts the
    server(s) and these arguments go to every process; the binary and the shared-memory prefix then
    travel as TRITONSERVER and SHM_PREFIX (see ``launch_env``).
    """
    head = ["/bin/sh", str(launch_script)] if launch_script is not None else [str(binary), f"--model-repository={repo_dir}"]
    cmd = [
        *head,
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        f"--log-verbose={log_verbose}",
        f"--exit-timeout-secs={exit_timeout_s}",
    ]
    if launch_script is None:
        cmd.append(f"--backend-config=python,shm-region-prefix-name={shm_prefix}")
    if backend_dir is not None:
        cmd.append(f"--backend-directory={backend_dir}")
    if admin_credential is not None:
        cmd += restriction_flags(admin_credential)
    cmd.extend(extra_args)
    return cmd


LAUNCH_SCRIPT = "launch.sh"


def launch_env(binary: Path, shm_prefix: str) -> dict[str, str]:
    """What the rendered launch script reads: the server binary and the shared-memory prefix of its ranks."""
    return {"TRITONSERVER": str(binary), "SHM_PREFIX": shm_prefix}


def server_env(
    base: Mapping[str, str],
    *,
    python_bin_dir: Path,
    lib_dirs: Sequence[Path] = (),
) -> dict[str, str]:
    """Environment for the server: this Python's ``bin`` first on PATH (the stub runs the first
    ``python3`` there to find packages) and, for the bundled server, this Python's LIBDIR before the
    wheel's libraries (otherwise another libpython mixes with this standard library)."""
    env = dict(base)
    env["PATH"] = os.pathsep.join([str(python_bin_dir)] + [p for p in env.get("PATH", "").split(os.pathsep) if p])
    if lib_dirs:
        rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(d) for d in lib_dirs] + rest)
    env.pop("PYTHONHOME", None)
    return env


def bundled_lib_dirs(pytriton_dir: Path) -> list[Path]:
    libdir = sysconfig.get_config_var("LIBDIR")
    dirs = [Path(libdir)] if libdir else []
    return dirs + [pytriton_dir.parent / "nvidia_pytriton.libs"]
