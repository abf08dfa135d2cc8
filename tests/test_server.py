"""The server launcher: command line and environment (pure), then real tritonserver runs: a failed
start names the broken model, stopping leaves no process or shared memory behind, `tritongen serve`
stops on SIGTERM, and the CPU repository serves 16 concurrent streams and survives a killed client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from generator.errors import ServerNotReady, TritongenError
from generator.fsutil import CACHE_VAR
from generator.serve.client import generate, grpc_stream, text_inputs
from generator.serve.adminapi import ADMIN_APIS, KEY_PLACEHOLDER
from generator.serve.argvkey import VALUE_VAR, KeyOnCommandLine
from generator.serve.install import ADMIN_HEADER, assemble_backend_dir, find_install, server_command, server_env
from generator.serve.ports import free_port
from generator.serve.server import SHM_DIR, TritonServer, own_python_env
from generator.serve.startlog import failed_models_from_index, failed_models_from_log
from generator.serve.smoke import same_text

# ---------------------------------------------------------------- pure pieces


def test_command_binds_loopback_and_lets_extra_args_override():
    cmd = server_command(Path("/x/tritonserver"), Path("/repo"), host="127.0.0.1", http_port=1, grpc_port=2,
                         metrics_port=3, backend_dir=Path("/b"), shm_prefix="pfx_", extra_args=["--log-verbose=1"])
    assert cmd[0] == "/x/tritonserver" and "--model-repository=/repo" in cmd
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
                 "--http-port=1", "--grpc-port=2", "--metrics-port=3", "--backend-directory=/b",
                 "--backend-config=python,shm-region-prefix-name=pfx_"):
        assert flag in cmd
    assert cmd[-1] == "--log-verbose=1" and cmd.index("--log-verbose=0") < len(cmd) - 1
    ngc = server_command(Path("tritonserver"), Path("/repo"), host="0.0.0.0", http_port=1, grpc_port=2,
                         metrics_port=3, backend_dir=None, shm_prefix="p")
    assert not any(a.startswith("--backend-directory") for a in ngc)


def test_environment_puts_this_python_first():
    env = server_env({"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/old", "PYTHONHOME": "/elsewhere"},
                     python_bin_dir=Path("/venv/bin"), lib_dirs=[Path("/py/lib"), Path("/wheel.libs")])
    assert env["PATH"].split(os.pathsep) == ["/venv/bin", "/usr/bin"]
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/py/lib", "/wheel.libs", "/old"]
    assert "PYTHONHOME" not in env
    assert "LD_LIBRARY_PATH" not in server_env({"PATH": ""}, python_bin_dir=Path("/venv/bin"))


def test_backend_folder_has_the_stub_for_this_python(tmp_path):
    install = find_install()
    if not install.bundled:
        pytest.skip("tritonserver comes from PATH here, not from the nvidia-pytriton wheel")
    backend = assemble_backend_dir(install.pytriton_dir, tmp_path / "b")
    names = sorted(p.name for p in (backend / "python").iterdir())
    assert names == ["libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    with pytest.raises(TritongenError, match="no stub for Python 2.7"):
        assemble_backend_dir(install.pytriton_dir, tmp_path / "c", python_version="2.7")


def test_own_python_env_is_the_one_folder_that_appeared():
    mine, other, older = Path("/tmp/python_env_mine"), Path("/tmp/python_env_other"), Path("/tmp/python_env_old")
    assert own_python_env({older}, {older, mine}) == mine
    assert own_python_env({older}, {older, mine, other}) is None  # another server started meanwhile: unknown
    assert own_python_env({older}, {older}) is None


@pytest.mark.parametrize("why", [KeyboardInterrupt, ServerNotReady])
def test_a_start_that_fails_or_is_interrupted_removes_its_python_backend_folder(tmp_path, monkeypatch, why):
    """review26: a start interrupted (Ctrl-C, SIGTERM to the CLI) or failed after the Python backend made its
    /tmp/python_env_* folder left that folder behind: it was taken as the server's own only once ready."""
    from generator.serve import server as server_mod

    monkeypatch.setattr(server_mod, "PYTHON_ENV_GLOB", str(tmp_path / "python_env_*"))
    monkeypatch.setattr(TritonServer, "_launch", lambda self, *a, **k: (tmp_path / "python_env_x").mkdir())
    monkeypatch.setattr(TritonServer, "stubs", lambda self: {1: "slots"})  # its stub runs: the folder is its own

    def stopped(self, timeout_s):
        raise why() if why is KeyboardInterrupt else why("not ready", fix="run again")

    monkeypatch.setattr(TritonServer, "_wait_ready", stopped)
    (tmp_path / "repo").mkdir()
    with pytest.raises(why):
        TritonServer(tmp_path / "repo", log_file=tmp_path / "triton.log").start()
    assert not (tmp_path / "python_env_x").exists()


def test_failed_models_are_read_from_the_log_and_the_index():
    log = textwrap.dedent("""\
        E1126 01:19:27.006480 7350 model_repository_manager.cc:703] "Invalid argument: in ensemble ens, step of model 'ens' receives inputs originated from different decoupled models"
        E1126 01:20:00.000000 7350 model_lifecycle.cc:654] "failed to load 'tensorrt_llm' version 1: Internal: MemoryError: too big\\n\\nAt:\\n  cache.py(704)"
        | preprocessing | 1       | READY                     |
        | tensorrt_llm  | 1       | UNAVAILABLE: Internal: MemoryError: too big |
        """)
    failed = failed_models_from_log(log)
    assert set(failed) == {"ens", "tensorrt_llm"}
    assert failed["tensorrt_llm"] == "Internal: MemoryError: too big"  # the traceback is cut off
    assert "different decoupled models" in failed["ens"]
    # a reason with a long run of spaces is read in one pass (it took minutes: review 12)
    wide = failed_models_from_log(f"| m | 1 | UNAVAILABLE: bad{' ' * 1_000_000}x |\n| n | 1 | UNAVAILABLE: y{' ' * 9} |")
    assert wide["m"].startswith("UNAVAILABLE: bad ") and wide["n"] == "UNAVAILABLE: y"
    index = [{"name": "a", "state": "READY"}, {"name": "b", "state": "UNAVAILABLE", "reason": "boom\\nAt: x"}]
    assert failed_models_from_index(index) == {"b": "boom"}


# ---------------------------------------------------------------- small real repositories

_PLAIN_MODEL = """
import numpy as np
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        {init}

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
                for r in requests]

    def finalize(self):
        {finalize}
"""


def _write_model(repo: Path, name: str, *, init: str = "pass", finalize: str = "pass", instances: int = 1) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(textwrap.dedent(f"""\
        name: "{name}"
        backend: "python"
        max_batch_size: 4
        input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
        """))
    (repo / name / "1" / "model.py").write_text(_PLAIN_MODEL.format(init=init, finalize=finalize))


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.server
def test_failed_start_names_the_broken_model_and_leaves_nothing(tmp_path):
    repo = tmp_path / "repo"
    _write_model(repo, "healthy")
    _write_model(repo, "broken_model", init='raise ValueError("weights are missing from /nowhere")')
    server = TritonServer(repo, log_file=tmp_path / "triton.log")
    with pytest.raises(TritongenError) as info:
        server.start(timeout_s=120)
    message = str(info.value)
    assert "broken_model: " in message and "weights are missing from /nowhere" in message
    assert "healthy:" not in message  # only the failed model is named
    assert info.value.where.endswith("broken_model/config.pbtxt")
    assert f"last lines of the server log ({tmp_path / 'triton.log'})" in message
    assert server.process is None and not list(SHM_DIR.glob(f"{server.shm_prefix}*"))


@pytest.mark.server
def test_a_server_still_loading_at_the_timeout_is_slow_not_refused(tmp_path):
    """tune and sweep report such a setting as failed, not as refused by the server (no model failed)."""
    repo = tmp_path / "repo"
    _write_model(repo, "slow", init="time.sleep(60)")
    server = TritonServer(repo, log_file=tmp_path / "triton.log")
    with pytest.raises(ServerNotReady) as info:
        server.start(timeout_s=3)
    assert "not ready after 3 s" in str(info.value) and "still loading" in info.value.fix
    assert "models that failed to load" not in str(info.value)
    assert server.process is None and not list(SHM_DIR.glob(f"{server.shm_prefix}*"))


@pytest.mark.server
def test_stop_ends_the_process_group_even_when_a_model_hangs(tmp_path, alone):
    repo = tmp_path / "repo"
    _write_model(repo, "echo", instances=2)
    _write_model(repo, "stuck", finalize="time.sleep(600)")  # unloading never ends: SIGKILL must follow
    server = TritonServer(repo)
    with alone():  # its server's Python-backend folder: the one that appeared while it started
        server.start(timeout_s=120)
    try:
        assert requests.get(f"http://{server.http_url}/v2/health/ready", timeout=5).status_code == 200
        family = [server.pid] + [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
        stubs = [p for p in psutil.Process(server.pid).children(recursive=True) if "stub" in p.name()]
        assert len(stubs) == 3  # two echo instances and one stuck instance, all in the server's group
        assert all(os.getpgid(p.pid) == server.pid for p in stubs)
        assert list(SHM_DIR.glob(f"{server.shm_prefix}*"))
        python_env = server.python_env
        assert python_env is not None and python_env.is_dir()  # its Python backend's folder under /tmp
    finally:
        server.stop(timeout_s=3)
    assert _alive(family) == []
    assert not list(SHM_DIR.glob(f"{server.shm_prefix}*"))
    assert not python_env.exists()  # the exit timeout cut unloading short: Triton left it, stop removed it


_LAUNCHER = """
import sys, time
from generator.serve.server import TritonServer

server = TritonServer(sys.argv[1], log_file=sys.argv[2])
server.start(timeout_s=120)
print(server.pid, server.python_env, flush=True)
time.sleep(600)
"""


@pytest.mark.server
def test_server_goes_when_its_launcher_is_killed(tmp_path, alone):
    """The server runs in its own session, so a launcher killed outright cannot stop it; Linux sends
    it SIGTERM instead (parent-death signal) and it shuts down with its stubs."""
    repo = tmp_path / "repo"
    _write_model(repo, "echo")
    with alone():  # its server's Python-backend folder: the one that appeared while it started
        launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(repo), str(tmp_path / "triton.log")],
                                    stdout=subprocess.PIPE, text=True)
        started = launcher.stdout.readline()
    try:
        pid, python_env = started.split()
        server_pid = int(pid)
        family = [server_pid] + [p.pid for p in psutil.Process(server_pid).children(recursive=True)]
        assert len(family) == 2  # tritonserver and the echo model's stub
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 60
    while (_alive(family) or Path(python_env).exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(family) == []
    assert not Path(python_env).exists()  # its Python-backend folder: no temporary folder left


@pytest.mark.server
def test_serve_command_stops_on_sigterm(tmp_path):
    repo = tmp_path / "repo"
    _write_model(repo, "echo")
    http_port = free_port()
    tritongen = Path(sys.executable).parent / "tritongen"
    cli = subprocess.Popen([str(tritongen), "serve", str(repo), "--http-port", str(http_port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in cli.stdout:  # the addresses are printed once every model is ready
            lines.append(line)
            if line.startswith("HTTP"):
                break
        assert f"127.0.0.1:{http_port}" in "".join(lines), "".join(lines)
        assert requests.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=5).status_code == 200
        family = [p.pid for p in psutil.Process(cli.pid).children(recursive=True)]
        assert any("tritonserver" in psutil.Process(p).name() for p in family)
        cli.send_signal(signal.SIGTERM)
        output, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, output
    assert _alive(family) == []


def _serve(repo: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, dict[str, str]]:
    """`tritongen serve REPO` started as a user would; returns it and the lines it printed at start."""
    tritongen = Path(sys.executable).parent / "tritongen"
    cli = subprocess.Popen([str(tritongen), "serve", str(repo), *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env)
    printed = {}
    for line in cli.stdout:  # the addresses are printed once every model is ready
        key, _, value = line.partition(" ")
        printed[key] = value.strip()
        if key == "admin":
            break
    return cli, printed


@pytest.mark.server
def test_serve_defaults_close_the_admin_apis_and_keep_secrets_from_the_server(tmp_path):
    """Admin APIs need the per-run key (written 0600 where `serve` says), over HTTP and gRPC; statistics do
    not. The key is on no command line (tritonserver's shows the placeholder argvkey fills in) and, like
    HF_TOKEN, in no stub's environment, nor is the LD_PRELOAD that carried it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    repo = tmp_path / "repo"
    _write_model(repo, "echo")
    cli, printed = _serve(repo, env=dict(os.environ, HF_TOKEN="hf_secret_of_the_user", AWS_SECRET_ACCESS_KEY="x"))
    try:
        url = f"http://{printed['HTTP']}"
        key_file = Path(printed["admin"].rsplit(" ", 1)[-1])
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = {ADMIN_HEADER: key_file.read_text().strip()}
        for path, body in (("/v2/logging", {"log_verbose_level": 1}), ("/v2/trace/setting", {"trace_rate": "1000"}),
                           ("/v2/repository/index", {})):
            assert requests.post(url + path, json=body, timeout=10).status_code == 403, path
            assert requests.post(url + path, json=body, headers=key, timeout=10).status_code == 200, path
        assert requests.post(url + "/v2/repository/index", json={}, headers={ADMIN_HEADER: KEY_PLACEHOLDER},
                             timeout=10).status_code == 403
        assert requests.get(url + "/v2/models/stats", timeout=10).status_code == 200  # perf_analyzer reads it
        assert requests.get(url + "/v2/systemsharedmemory/status", timeout=10).status_code == 403
        assert requests.get(url + "/v2/models/echo/config", timeout=10).status_code == 200  # clients still work
        with grpcclient.InferenceServerClient(printed["gRPC"]) as grpc:
            with pytest.raises(InferenceServerException, match="tritongen-admin-key"):
                grpc.get_model_repository_index()
            index = grpc.get_model_repository_index(headers={f"triton-grpc-protocol-{ADMIN_HEADER}": key[ADMIN_HEADER]})
            assert [m.name for m in index.models] == ["echo"]
        server = next(p for p in psutil.Process(cli.pid).children() if "tritonserver" in p.name())
        stub = next(p for p in server.children(recursive=True) if "stub" in p.name())
        for proc in (psutil.Process(cli.pid), server, *server.children(recursive=True)):
            assert key[ADMIN_HEADER].encode() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), proc.name()
        assert f"{ADMIN_HEADER}=" not in " ".join(server.cmdline())
        assert server.cmdline().count(f"--http-restricted-api={','.join(ADMIN_APIS)}:{KEY_PLACEHOLDER}") == 1
        for proc in (server, stub):
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
            assert b"hf_secret_of_the_user" not in environ and b"AWS_SECRET" not in environ
            assert key[ADMIN_HEADER].encode() not in environ
            assert b"PATH=" in environ
        stub_env = Path(f"/proc/{stub.pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in stub_env if v.startswith((b"LD_PRELOAD=", f"{VALUE_VAR}=".encode()))]
    finally:
        cli.send_signal(signal.SIGTERM)
        cli.communicate(timeout=60)
    assert not key_file.exists()


@pytest.mark.server
def test_without_a_compiler_the_server_warns_and_its_key_still_closes_the_admin_apis(tmp_path, monkeypatch):
    """No C compiler (PATH with only the shells the stub launcher needs, an empty cache): a warning that the key
    is on tritonserver's command line, where it then is, and it still guards the admin APIs."""
    repo, shells = tmp_path / "repo", tmp_path / "bin"
    _write_model(repo, "echo")
    shells.mkdir()
    for shell in ("sh", "bash"):
        (shells / shell).symlink_to(next(p for p in (Path("/bin") / shell, Path("/usr/bin") / shell) if p.exists()))
    monkeypatch.setenv("PATH", str(shells))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(CACHE_VAR)
    warned = pytest.warns(KeyOnCommandLine, match="every local user can read it")
    with warned, TritonServer(repo, exit_timeout_s=0) as server:
        assert server.key_on_command_line
        assert f"{ADMIN_HEADER}={server.admin_key}" in " ".join(psutil.Process(server.pid).cmdline())
        url = f"http://{server.http_url}/v2/repository/index"
        assert requests.post(url, json={}, timeout=10).status_code == 403
        assert requests.post(url, json={}, headers=server.admin_headers, timeout=10).status_code == 200


PERF_ANALYZER_WHEEL = "tritonclient==2.51.0"
"""NVIDIA's perf_analyzer ships only in tritonclient's manylinux wheels; 2.51 runs on this glibc (later ones
need 2.38) and is the server's own version. pip would conflict with Locust's pins, so it is extracted."""


@pytest.fixture(scope="session")
def perf_analyzer() -> Path:
    """NVIDIA's perf_analyzer 2.51, unchanged: downloaded once with pip into the venv (``<venv>/perf_analyzer-2.51``)
    and extracted, with the two libraries it needs linked beside it from the nvidia-pytriton wheel (facts.md);
    run it with that folder on LD_LIBRARY_PATH."""
    import platform
    import zipfile

    folder = Path(sys.prefix) / "perf_analyzer-2.51"
    binary = folder / "perf_analyzer"
    if binary.is_file():
        return binary
    install = find_install()
    if platform.machine() != "x86_64" or not install.bundled:
        pytest.skip("perf_analyzer 2.51 comes as an x86_64 manylinux binary; its libraries from nvidia-pytriton")
    download = folder.with_name(folder.name + ".download")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--platform", "manylinux1_x86_64", "-d", str(download), PERF_ANALYZER_WHEEL],
                          capture_output=True, text=True, timeout=600)
    wheels = sorted(download.glob("tritonclient-2.51.0-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"the package registry gave no {PERF_ANALYZER_WHEEL} wheel: {proc.stderr.strip()[-300:]}")
    staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    staging.mkdir()
    with zipfile.ZipFile(wheels[0]) as wheel:
        (staging / "perf_analyzer").write_bytes(wheel.read("tritonclient-2.51.0.data/data/bin/perf_analyzer"))
    (staging / "perf_analyzer").chmod(0o755)
    libs = install.pytriton_dir.parent / "nvidia_pytriton.libs"
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        (staging / name).symlink_to(next(libs.glob(pattern)))
    staging.rename(folder)
    for wheel in wheels:
        wheel.unlink()
    download.rmdir()
    return binary


@pytest.mark.server
def test_nvidias_perf_analyzer_runs_unchanged_against_serve(tmp_path, perf_analyzer):
    """perf_analyzer reads the statistics API at the start and end of each measurement: with no admin header
    it measures over HTTP and gRPC, and the key still guards the admin APIs it does not need."""
    repo = tmp_path / "repo"
    _write_model(repo, "echo")
    cli, printed = _serve(repo)
    try:
        for protocol, address in (("http", printed["HTTP"]), ("grpc", printed["gRPC"])):
            run = subprocess.run([str(perf_analyzer), "-m", "echo", "-i", protocol, "-u", address, "--shape", "IN:1",
                                  "--measurement-mode", "count_windows", "--measurement-request-count", "50",
                                  "--concurrency-range", "2", "--stability-percentage", "1000"], capture_output=True, text=True, timeout=300,
                                 env=dict(os.environ, LD_LIBRARY_PATH=str(perf_analyzer.parent)))
            assert run.returncode == 0, run.stdout + run.stderr
            assert "Throughput:" in run.stdout and "restricted" not in run.stdout + run.stderr
    finally:
        cli.send_signal(signal.SIGTERM)
        cli.communicate(timeout=60)


_STUCK_STUB = 'import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)'


@pytest.mark.server
def test_serve_interrupted_then_killed_leaves_no_stub_and_no_work_folder(tmp_path):
    """A supervisor's SIGINT then SIGKILL mid-stop: a stub that ignores SIGTERM and hangs on unload still
    goes (the guard SIGKILLs the group), and the work folder with it."""
    repo = tmp_path / "repo"
    _write_model(repo, "stuck", init=_STUCK_STUB, finalize="time.sleep(600)")
    cli, printed = _serve(repo)
    workdir = Path(printed["admin"].rsplit(" ", 1)[-1]).parent
    family = [p.pid for p in psutil.Process(cli.pid).children(recursive=True)]
    assert any("stub" in psutil.Process(p).name() for p in family)
    cli.send_signal(signal.SIGINT)
    for line in cli.stdout:  # stop has begun: now the supervisor loses patience
        if "stopping" in line:
            break
    cli.kill()
    cli.wait()
    deadline = time.monotonic() + 120
    while (_alive(family) or workdir.exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _alive(family) == []
    assert not workdir.exists()


@pytest.mark.server
def test_serve_stopped_while_starting_leaves_no_work_folder(tmp_path):
    """review8: SIGTERM (or Ctrl-C) while the models load left /tmp/tritongen-server-PID-* with the server log,
    kept as for a failed start although no message named it, and never removed (it holds no key)."""
    repo = tmp_path / "repo"
    _write_model(repo, "slow", init="time.sleep(600)")
    tritongen = Path(sys.executable).parent / "tritongen"
    cli = subprocess.Popen([str(tritongen), "serve", str(repo)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _stub_pids(cli.pid) and time.monotonic() < deadline:  # loading: the model's stub runs
            time.sleep(0.2)
        workdirs = list(Path(tempfile.gettempdir()).glob(f"tritongen-server-{cli.pid}-*"))
        assert _stub_pids(cli.pid) and workdirs
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130 and not [w for w in workdirs if w.exists()]


@pytest.mark.server
def test_ports_taken_after_the_check_are_named_as_the_cause(tmp_path, monkeypatch):
    """review8: two `serve` racing for the same ports: the one that lost was told to validate its repository.
    The race made certain: the port is held from the start and the check is told it was still free."""
    import socket

    import generator.serve.server as server_module

    repo = tmp_path / "repo"
    _write_model(repo, "echo")
    monkeypatch.setattr(server_module, "port_taken", lambda host, port: False)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        server = TritonServer(repo, http_port=free_port(), grpc_port=other.getsockname()[1], metrics_port=free_port(),
                              log_file=tmp_path / "triton.log")
        with pytest.raises(TritongenError) as info:
            server.start(timeout_s=60)
    assert "could not bind its ports" in info.value.message and "--grpc-port" in info.value.fix


def _stub_pids(pid: int) -> list[int]:
    """The stubs under ``pid`` now; a child that ends while the list is read (a starting server's short-lived helpers:
    a clean clone once lost one between the listing and its name) is not one."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if "stub" in child.name():
                found.append(child.pid)
    return found


def _loadtest_until_locust_runs(server: TritonServer, tokenizer: Path, out: Path) -> tuple[subprocess.Popen, list]:
    """`tritongen loadtest --url` (HF_TOKEN in its environment) against ``server``, once Locust runs (its own
    prompts: the 8-word tokenizer is too small to make up prompts from, and Locust would stop at once)."""
    tritongen = Path(sys.executable).parent / "tritongen"
    prompts = out.parent / "prompts.jsonl"
    prompts.write_text('{"text": "hello world"}\n{"text": "the triton model"}\n', encoding="utf-8")
    cli = subprocess.Popen([str(tritongen), "loadtest", "--url", server.http_url, "--admin-key", server.admin_key,
                            "--model", "echo", "--protocol", "http", "--tokenizer", str(tokenizer), "-u", "2",
                            "--prompts", str(prompts), "-t", "600", "-o", str(out)],
                           env=dict(os.environ, HF_TOKEN="hf_secret_of_the_user"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    locusts = []
    while not locusts and cli.poll() is None and time.monotonic() < deadline:
        locusts = [p for p in psutil.Process(cli.pid).children(recursive=True) if "locust" in " ".join(p.cmdline())]
        time.sleep(0.2)
    assert locusts, "Locust did not start"
    return cli, locusts


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def _until_a_request_is_recorded(folder: Path) -> None:
    """Wait until the run's hidden folder under ``folder`` holds a finished request (Locust writes its records
    every 0.2 s as it runs)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for name in _leftovers(folder):
            records = folder / name / "records.jsonl"
            if records.is_file() and '"kind":"request"' in records.read_text(errors="replace"):
                return
        time.sleep(0.2)
    raise AssertionError(f"no request recorded under {folder} within 120 s")


@pytest.mark.server
def test_loadtest_killed_or_terminated_leaves_no_locust_and_no_temporary_folder(tmp_path, tokenizer_weights_dir):
    """SIGKILL: the kernel and the guard end Locust; the hidden folder is removed by the next run.
    SIGTERM: the CLI stops Locust and removes its folder itself. Locust never sees HF_TOKEN."""
    repo = tmp_path / "repo"
    _write_model(repo, "echo")
    work = tmp_path / "work"
    work.mkdir()
    with TritonServer(repo) as server:
        cli, locusts = _loadtest_until_locust_runs(server, tokenizer_weights_dir, work / "out")
        _until_a_request_is_recorded(work)  # Locust is up and sending, not about to stop (-t 600)
        assert _alive([p.pid for p in locusts]) == [p.pid for p in locusts]
        assert all(b"hf_secret_of_the_user" not in Path(f"/proc/{p.pid}/environ").read_bytes() for p in locusts)
        cli.kill()
        cli.wait()
        deadline = time.monotonic() + 60
        while _alive([p.pid for p in locusts]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive([p.pid for p in locusts]) == []
        left = _leftovers(work)
        assert len(left) == 1  # SIGKILL allows no clean-up: the next run does it

        cli, locusts = _loadtest_until_locust_runs(server, tokenizer_weights_dir, work / "out")
        assert left[0] not in _leftovers(work)
        cli.send_signal(signal.SIGTERM)
        cli.wait(timeout=120)
        assert _alive([p.pid for p in locusts]) == []
        assert _leftovers(work) == [] and not (work / "out").exists()


# ---------------------------------------------------------------- the CPU repository under load

PROMPTS = ["The repair café meets", "Tea travelled a long way", "東京 and 京都", "Emoji began as 😊"]


@pytest.mark.server
@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_sixteen_concurrent_streams_get_the_sequential_answers(cpu_server, model):
    expected = {p: generate(cpu_server.http_url, "ensemble", {"text_input": p, "max_tokens": 12})["text_output"]
                for p in PROMPTS}

    def stream(i):
        prompt = PROMPTS[i % len(PROMPTS)]
        return prompt, grpc_stream(cpu_server.grpc_url, model, text_inputs(prompt, 12, stream=True), timeout=300)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(stream, range(16)))
    for prompt, result in results:
        assert result.error is None
        ok, how = same_text(result.text, expected[prompt])
        assert ok, f"{prompt!r}: {how}"


_STREAMING_CLIENT = """
import sys
import tempfile
from generator.serve.client import grpc_stream, text_inputs

def seen(n):
    print(n, flush=True)
    return True

grpc_stream(sys.argv[1], "ensemble", text_inputs("The bakery in the old quarter", 60, stream=True), on_response=seen)
"""


@pytest.mark.server
def test_killed_client_leaves_the_server_serving(cpu_server, trtllm_gauge):
    reference = generate(cpu_server.http_url, "ensemble", {"text_input": PROMPTS[0], "max_tokens": 8})["text_output"]
    client = subprocess.Popen([sys.executable, "-c", _STREAMING_CLIENT, cpu_server.grpc_url],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "1"  # the stream is running ...
        client.stdout.readline()
    finally:
        client.kill()  # ... and its client dies without closing anything
        client.wait()
    assert requests.get(f"http://{cpu_server.http_url}/v2/health/ready", timeout=5).status_code == 200
    again = generate(cpu_server.http_url, "ensemble", {"text_input": PROMPTS[0], "max_tokens": 8})["text_output"]
    assert again == reference
    deadline = time.monotonic() + 120  # the orphaned request ends (max tokens) and frees its KV blocks
    used = lambda: trtllm_gauge(cpu_server, "nv_trt_llm_kv_cache_block_metrics", "used")  # noqa: E731
    while used() > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    active = trtllm_gauge(cpu_server, "nv_trt_llm_request_metrics", "active")
    assert (used(), active) == (0, 0)
