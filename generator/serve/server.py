"""Start and stop a real ``tritonserver`` on a model repository.

``tritonserver`` on PATH wins (an NGC container); otherwise the copy bundled in the nvidia-pytriton
wheel runs, with a backend folder assembled for the running Python (the Python backend's ``.so``,
its utils module and the stub built for this Python version). Every address binds to loopback by
default, free ports are picked, readiness is polled, and a failed start names the models that did
not load. The server runs in its own process group (``generator.procs``) so that stopping it also
ends the Python backend stubs, even when tritongen itself is killed; the shared-memory regions of
this server carry their own prefix and are removed. The admin APIs (``install.ADMIN_APIS``) answer only
requests that carry the run's key in the ``ADMIN_HEADER`` header; the key reaches the server through
``argvkey`` (never on its command line, where local users could read it) wherever a C compiler has built
that library, and the server sees only the environment variables it needs.

Where the server is installed and its command line and environment are decided in ``install.py``; why a start
failed is read in ``startlog.py``; `TritonServer` acts.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Mapping, Optional, Sequence

from generator.errors import ArtifactMissing, ServerError, ServerNotReady, SpecError
from generator.fsutil import pid_alive
from generator.procs import ChildGroup, child_env
from generator.serve import argvkey
from generator.serve.adminapi import KEY_PLACEHOLDER, admin_credential
from generator.serve.ports import free_port, port_taken
from generator.serve.startlog import failed_models_from_index, failed_models_from_log
from generator.templating import stub_launch_problem
from generator.serve.install import (
    ADMIN_HEADER, LAUNCH_SCRIPT, RUN_EXIT_TIMEOUT_S, ServerInstall, assemble_backend_dir, bundled_lib_dirs,
    find_install, launch_env, server_command, server_env,
)

SHM_DIR = Path("/dev/shm")
STUB_NAME = "triton_python_backend_stub"
_WORKDIR_PREFIX = "tritongen-server-"
PYTHON_ENV_GLOB = "/tmp/python_env_*"
"""The folder the Python backend makes per server at its start (``mkdtemp``, always under /tmp: its
EnvironmentManager, python_backend r24.10 pb_env.cc) and removes only when the server unloads every
model before it exits, which a server stopped on its exit timeout or killed never does."""


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def python_envs() -> set[Path]:
    return {Path(p) for p in glob.glob(PYTHON_ENV_GLOB)}


def own_python_env(before: set[Path], after: set[Path]) -> Optional[Path]:
    """This server's Python-backend folder: the one folder that appeared between just before its start and
    its readiness. Two or more means another server started meanwhile, and which is whose cannot be told:
    None, and nothing of another server's is ever removed."""
    new = after - before
    return new.pop() if len(new) == 1 else None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


class TritonServer:
    """A tritonserver process on ``repo_dir``; a context manager that starts and stops it.

    ``.http_url`` / ``.grpc_url`` are ``host:port`` (what tritonclient takes); ``.metrics_url`` is a
    full URL. Ports left as None are picked free at start.
    """

    def __init__(
        self,
        repo_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        http_port: Optional[int] = None,
        grpc_port: Optional[int] = None,
        metrics_port: Optional[int] = None,
        log_file: Path | str | None = None,
        extra_args: Sequence[str] = (),
        log_verbose: int = 0,
        admin_key: Optional[str] = None,
        exit_timeout_s: int = RUN_EXIT_TIMEOUT_S,
    ):
        self.repo_dir = Path(repo_dir).resolve()
        self.exit_timeout_s = exit_timeout_s
        """How long a stopping server waits for in-flight requests. tritongen's own runs stop their server
        once their requests are done, so little; ``tritongen serve`` gives its clients longer. (Triton 2.51
        also counts an ensemble request it refused for a wrong input type as in flight until it exits.)"""
        self.host = host
        self._ports_given = (http_port, grpc_port, metrics_port)
        self.http_port, self.grpc_port, self.metrics_port = self._ports_given
        self._log_given = Path(log_file).resolve() if log_file else None
        self.log_file = self._log_given
        self.extra_args = tuple(extra_args)
        self.log_verbose = log_verbose
        self.shm_prefix = f"tritongen_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        """Value of the ``ADMIN_HEADER`` header the admin APIs require (made per run unless given)."""
        self.admin_key_file: Optional[Path] = None
        self.key_on_command_line = False
        """True when ``argvkey`` could not be built or loaded here: the key is then on tritonserver's command line."""
        script = self.repo_dir / LAUNCH_SCRIPT
        self.launch_script: Optional[Path] = script if script.is_file() else None
        """The repository's rendered launch script, which starts the server(s) when there is one."""
        self.process: Optional[subprocess.Popen] = None
        self._group: Optional[ChildGroup] = None
        self._workdir: Optional[Path] = None
        self._log_handle = None
        self._start_failed = False
        self.ready_stubs: dict[int, str] = {}
        """pid -> model name of each Python backend stub when the server became ready."""
        self.python_env: Optional[Path] = None
        """This server's Python-backend folder under /tmp (``own_python_env``), removed by ``stop`` if the
        server left it."""
        self._exited_on_its_own = False

    # ------------------------------------------------------------------ addresses

    @property
    def http_url(self) -> str:
        return f"{_client_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_client_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def exit_code(self) -> Optional[int]:
        """tritonserver's exit code once it has exited on its own (a signal as its negative), else None: running,
        or never started (``serve`` and tune's rounds watch it)."""
        return self.process.poll() if self.process is not None else None

    def stubs(self) -> dict[int, str]:
        """pid -> model name of each running Python backend stub of this server (one per model instance)."""
        import psutil

        found: dict[int, str] = {}
        if self.process is None:
            return found
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return found
        for proc in children:
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if len(cmd) > 1 and cmd[0].endswith(STUB_NAME) and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = Path(cmd[1]).parts[-3]
        return found

    def dead_stubs(self) -> dict[int, str]:
        """The stubs that ran when the server became ready and have exited since (pid -> model name).
        Triton 2.51 neither restarts such a stub nor marks its model unready: its requests just fail or hang."""
        now = self.stubs()
        return {pid: model for pid, model in self.ready_stubs.items() if pid not in now}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "TritonServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 180.0) -> "TritonServer":
        """Start the server and wait until ``/v2/health/ready``; raise naming the failed models."""
        if self.process is not None:
            raise RuntimeError("server already started")
        if not self.repo_dir.is_dir():
            raise ArtifactMissing("model repository folder not found", where=str(self.repo_dir),
                                  fix="render one first: tritongen render SPEC -o DIR")
        unsafe = next(filter(None, map(stub_launch_problem, [self.repo_dir, *(
            p.name for p in self.repo_dir.iterdir() if (p / "config.pbtxt").is_file())])), None)
        if unsafe:
            raise SpecError(f"cannot serve it safely: {unsafe}", where=str(self.repo_dir),
                            fix="move or copy the repository to a folder whose path, and model folder names, hold "
                                "none of these characters (tritongen render SPEC -o DIR)")
        taken = [f"{name} {port}" for name, port in zip(("HTTP", "gRPC", "metrics"), self._ports_given)
                 if port is not None and port_taken(self.host, port)]
        if taken:  # before anything starts: another server's readiness must never pass for this one's
            raise ServerError(f"port(s) already in use on {self.host or '0.0.0.0'}: {', '.join(taken)} "
                              "(another server?)", fix="pass free --http-port/--grpc-port/--metrics-port, or stop "
                              "the server using them")
        install = find_install()
        self._start_failed = False
        self._exited_on_its_own = False
        remove_stale_workdirs()
        built = argvkey.library()
        self.key_on_command_line = built is None
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-"))
        self.log_file = self._log_given or self._workdir / "tritonserver.log"
        self.admin_key_file = self._workdir / "admin-key"
        fd = os.open(self.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.admin_key + "\n")
        backend_dir = assemble_backend_dir(install.pytriton_dir, self._workdir / "backends") if install.bundled else None
        lib_dirs = bundled_lib_dirs(install.pytriton_dir) if install.bundled else []
        env = server_env(child_env(os.environ), python_bin_dir=Path(sys.executable).parent, lib_dirs=lib_dirs)
        if built is not None:
            env.update(argvkey.handover_env(built, admin_credential(self.admin_key), env.get("LD_PRELOAD")))
        # A port picked free can be taken before the server binds it; then try fresh ones.
        attempts = 1 if all(self._ports_given) else 3
        envs_before = python_envs()
        for attempt in range(attempts):
            self._launch(install, backend_dir, env, append=attempt > 0)
            try:
                self._wait_ready(timeout_s)
                self.ready_stubs = self.stubs()
                if self.ready_stubs:  # a server with Python models has made its folder by now
                    self.python_env = own_python_env(envs_before, python_envs())
                    if self.python_env is not None:
                        self._group.also_clean(self.python_env)
                return self
            except _PortTaken:
                self._terminate()
                if attempt == attempts - 1:
                    self._start_failed = True
                    self._cleanup()
                    raise ServerError(
                        "tritonserver could not bind its ports:\n" + _tail(self.log_file, 10),
                        fix="pass free --http-port/--grpc-port/--metrics-port",
                    ) from None
            except BaseException as exc:
                self._start_failed = isinstance(exc, Exception)  # Ctrl-C/SIGTERM: no error names the log, none kept
                if self.python_env is None and self.stubs():  # review26: a failed or interrupted start left it in /tmp
                    self.python_env = own_python_env(envs_before, python_envs())
                self.stop()
                raise
        return self

    def _launch(self, install: ServerInstall, backend_dir: Optional[Path], env: dict, append: bool) -> None:
        given = self._ports_given
        picked = [p if p is not None else free_port(self.host or "127.0.0.1") for p in given]
        self.http_port, self.grpc_port, self.metrics_port = picked
        cmd = server_command(
            install.binary,
            self.repo_dir,
            host=self.host,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            backend_dir=backend_dir,
            shm_prefix=self.shm_prefix,
            log_verbose=self.log_verbose,
            exit_timeout_s=self.exit_timeout_s,
            admin_credential=admin_credential(self.admin_key) if self.key_on_command_line else KEY_PLACEHOLDER,
            extra_args=self.extra_args,
            launch_script=self.launch_script,
        )
        if self.launch_script is not None:
            env = {**env, **launch_env(install.binary, self.shm_prefix)}
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self._log_handle:
            self._log_handle.close()
        self._log_handle = open(self.log_file, "ab" if append else "wb")
        self._group = ChildGroup(cleanup=[self._workdir], shm_prefix=self.shm_prefix)
        self.process = self._group.start(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_handle, stderr=subprocess.STDOUT, env=env, cwd=self._workdir,
        )

    @property
    def admin_headers(self) -> dict[str, str]:
        return {ADMIN_HEADER: self.admin_key}

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        url = f"http://{self.http_url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _post(self, path: str, body: dict, timeout: float = 5.0) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://{self.http_url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", **self.admin_headers},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def is_ready(self) -> bool:
        try:
            return self._get("/v2/health/ready")[0] == 200
        except OSError:
            return False

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                log = self.log_file.read_text(encoding="utf-8", errors="replace")
                if "already in use" in log:
                    if not all(self._ports_given):
                        raise _PortTaken()
                    raise ServerError("tritonserver could not bind its ports (another server took them after the "
                                      f"check?); the end of its log ({self.log_file}):\n" + _tail(self.log_file, 10),
                                      fix="pass free --http-port/--grpc-port/--metrics-port, or stop the server using them")
                raise self._start_error(f"tritonserver exited with code {code} while loading",
                                        failed_models_from_log(log))
            if self.is_ready() and self._listening():
                return
            time.sleep(0.25)
        index = []
        try:
            status, body = self._post("/v2/repository/index", {})
            if status == 200:
                index = json.loads(body)
        except (OSError, ValueError):
            pass
        log = self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""
        failed = failed_models_from_index(index) or failed_models_from_log(log)
        error = self._start_error(f"tritonserver was not ready after {timeout_s:.0f} s", failed)
        if failed:
            raise error
        raise ServerNotReady(error.message, where=error.where,
                             fix="the models were still loading: check the machine's load (uptime) and run again")

    def _listening(self) -> bool:
        """This server's own HTTP endpoint is up (its log says so): a ready answer on a port another server
        holds must not count."""
        try:
            return "Started HTTPService at" in self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False

    def _start_error(self, headline: str, failed: Mapping[str, str]) -> ServerError:
        """The start failure with the models that failed to load (``failed``: name -> reason) named first."""
        lines = [headline]
        if failed:
            lines.append("models that failed to load:")
            lines += [f"  {name}: {reason}" for name, reason in sorted(failed.items())]
        lines.append(f"last lines of the server log ({self.log_file}):")
        lines.append(_tail(self.log_file))
        first = sorted(failed)[0] if failed else None
        return ServerError(
            "\n".join(lines),
            where=str(self.repo_dir / first / "config.pbtxt") if first else str(self.repo_dir),
            fix=f"tritongen validate {self.repo_dir}, then see the named model's error above",
        )

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; return once every process of it
        is gone (else raise naming the survivors); remove this server's shm regions and work folder."""
        try:
            self._terminate(timeout_s)
        finally:
            self._cleanup()

    def _terminate(self, timeout_s: float = 20.0) -> None:
        """The server drains its in-flight requests and unloads its models (``--exit-timeout-secs`` for
        both), then exits. A stub still there has been abandoned (the timeout cut its model's unloading
        short) and is SIGKILLed *before* the server is reaped: Triton 2.51's stub takes its parent for
        alive while ``kill(parent, 0)`` succeeds, which a zombie does, and the moment it sees the parent
        gone it tears itself down under its own running threads and segfaults (``Non-graceful termination
        detected``, then ``segfault at 1c8`` in ``triton_python_backend_stub`` or in libc's ``sem_wait``)."""
        group, process, self._group, self.process = self._group, self.process, None, None
        if group is None:
            return
        if process is not None and process.poll() is not None:
            self._exited_on_its_own = True  # its log says why: keep it (the error names it)
        group.signal(signal.SIGTERM)
        if process is not None:
            _wait_exit_unreaped(process.pid, timeout_s)
        group.signal(signal.SIGKILL)  # abandoned stubs (and, past timeout_s, the server itself)
        if process is not None:
            process.wait()
        group.stop(0.0)

    def _cleanup(self) -> None:
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None
        if self.python_env is not None:
            shutil.rmtree(self.python_env, ignore_errors=True)
            self.python_env = None
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            try:
                region.unlink()
            except OSError:
                pass
        if self._workdir is not None:
            # A failed start keeps its log (the error names it); otherwise nothing is left behind.
            keep_log = (self._start_failed or self._exited_on_its_own) and self._workdir in self.log_file.parents
            if keep_log:
                shutil.rmtree(self._workdir / "backends", ignore_errors=True)
                self.admin_key_file.unlink(missing_ok=True)
            else:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _wait_exit_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait until child ``pid`` has exited, leaving it a zombie (not reaped); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # already reaped elsewhere
            return True
        time.sleep(0.05)
    return False


class _PortTaken(Exception):
    pass


def remove_stale_workdirs() -> None:
    """Work folders of servers whose tritongen was killed before its guard could remove them (a failed
    start's folder holds only its log, which its error message names: that one stays)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"):
        pid = folder.name[len(_WORKDIR_PREFIX):].split("-", 1)[0]
        if not (folder / "admin-key").exists():
            continue
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
