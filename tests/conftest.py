"""Session fixtures shared by the whole suite: one tiny model, one checkpoint, one repository, one server.

Everything is made locally through the same code paths users run; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from generator.fsutil import CACHE_VAR

DATA = Path(__file__).parent / "data"

# One torch (OpenMP) thread in every process of the run, the servers' engines and the commands' included (they
# inherit it): the test workers, their servers and Locust share the two cores, and a second OpenMP thread in each
# spins waiting for a core (test_quantize.py alone beside other work: 55-65 s of CPU with two threads, 35-37 s with
# one, and no slower). A thread count the caller set is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# tritongen's cache (the tiny model, the NVFP4 checkpoint, the argvkey library) of this test run alone, made afresh:
# what the run's session fixtures build once is reused by the commands the tests run (the demo's tiny model) and, under
# pytest-xdist, by the other workers (the workers inherit the folder the controller made), never what an earlier run left.
_SHARED_CACHE = "TRITONGEN_TEST_CACHE_OF_RUN"
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(_SHARED_CACHE):
    _CACHE, _OWN_CACHE = os.environ[_SHARED_CACHE], False
else:
    _CACHE, _OWN_CACHE = tempfile.mkdtemp(prefix="tritongen-test-cache-"), True
    os.environ[_SHARED_CACHE] = _CACHE
os.environ[CACHE_VAR] = _CACHE


@contextlib.contextmanager
def _one_worker_at_a_time(name: str):
    """Under pytest-xdist, the second worker to want the tiny model or the checkpoint waits for the first to keep
    it in the shared cache, then copies it, instead of training and quantizing it again beside it."""
    import fcntl

    with open(Path(_CACHE) / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield

if os.environ.get("PYTEST_XDIST_WORKER"):
    # A pytest-xdist worker starts with COLUMNS=80 in its environment: the CLI's module-level Rich consoles would
    # keep that width for good and ignore the COLUMNS a test gives its command, as they do in a serial run.
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)


@pytest.fixture(scope="session")
def qwen3_8b_config() -> Path:
    """Qwen/Qwen3-8B's config.json (architecture figures only), for plans that need a real shape."""
    return DATA / "qwen3-8b-config.json"


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tritongen")


@pytest.fixture(scope="session")
def tiny_model_dir(work_dir) -> Path:
    from generator.model.tinymodel import make_tiny_model

    with _one_worker_at_a_time("tiny-model"):
        return make_tiny_model(work_dir / "tiny-qwen3", seed=0)


@pytest.fixture(scope="session")
def cpu_spec(tiny_model_dir, work_dir):
    """The demo's spec: the tiny model on the CPU reference engine with small limits."""
    from generator.demo import demo_overrides
    from generator.spec import load_spec

    return load_spec(None, demo_overrides(tiny_model_dir, work_dir / "artifacts"))


@pytest.fixture(scope="session")
def nvfp4_checkpoint_dir(cpu_spec) -> Path:
    from generator.model.quantize import quantize

    with _one_worker_at_a_time("quantize"):
        quantize(cpu_spec)
    return cpu_spec.checkpoint_dir


@pytest.fixture(scope="session")
def cpu_repo_dir(cpu_spec, nvfp4_checkpoint_dir, work_dir) -> Path:
    from generator.repo.render import render_repository

    return render_repository(cpu_spec, work_dir / "repo-cpu")


@pytest.fixture(scope="session")
def cpu_server(cpu_repo_dir, work_dir):
    from generator.serve.server import TritonServer

    with TritonServer(cpu_repo_dir, log_file=work_dir / "triton-cpu.log") as server:
        yield server


@pytest.fixture(scope="session")
def llmapi_spec(cpu_spec):
    """The demo's spec on the LLM-API target (same checkpoint; the CPU stand-in serves it here)."""
    from generator.spec import with_overrides

    return with_overrides(cpu_spec, ["serving.engine=llmapi"])


@pytest.fixture(scope="session")
def llmapi_repo_dir(llmapi_spec, nvfp4_checkpoint_dir, work_dir) -> Path:
    from generator.repo.render import render_repository

    return render_repository(llmapi_spec, work_dir / "repo-llmapi")


@pytest.fixture(scope="session")
def llmapi_server(llmapi_repo_dir, work_dir):
    from generator.serve.server import TritonServer

    with TritonServer(llmapi_repo_dir, log_file=work_dir / "triton-llmapi.log") as server:
        yield server


@pytest.fixture(scope="session")
def smoke_cli(work_dir):
    """``smoke_cli(server)``: ``tritongen smoke --url ... --json`` against a running server, run once per server
    per test run (the smoke tests and the scenarios read the same run): (finished command, JSON report)."""
    import json
    import subprocess
    import sys

    runs: dict[str, tuple] = {}

    def smoke(server):
        if server.http_url not in runs:
            report = work_dir / f"smoke-{len(runs)}.json"
            proc = subprocess.run([str(Path(sys.executable).with_name("tritongen")), "smoke", "--url", server.http_url,
                                   "--grpc-url", server.grpc_url, "--admin-key", server.admin_key, "--json", str(report)],
                                  capture_output=True, text=True, timeout=600)
            runs[server.http_url] = (proc, json.loads(report.read_text()) if report.is_file() else None)
        return runs[server.http_url]

    return smoke


@pytest.fixture(scope="session")
def tokenizer_weights_dir(tmp_path_factory) -> Path:
    """A weights folder with just a small word-level tokenizer and a config.json.

    Render and validate read these files but never run the model, so they need no weights; building
    this takes milliseconds, where the tiny model needs the tiny-model code and seconds.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("weights")
    words = ["<unk>", "<eos>", "hello", "world", "the", "a", "triton", "model"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(out)
    (out / "config.json").write_text('{"model_type": "qwen3", "vocab_size": 8}\n', encoding="utf-8")
    return out


FAKE_BIN = Path(__file__).parent / "fake_bin"


@pytest.fixture(scope="session")
def host_python(tmp_path_factory) -> Path:
    """A folder whose ``python3`` is this interpreter's own binary, for the stand-ins (``#!/usr/bin/env python3``,
    and the python3 that build runs quantize.py with): the stand-ins need only the standard library, and the
    python3 a PATH names may be a launcher script (pyenv's shim costs 0.1 s a start, ~200 starts a test run)."""
    folder = tmp_path_factory.mktemp("host-python")
    (folder / "python3").symlink_to(os.path.realpath(sys.executable))
    return folder


@pytest.fixture
def gpu_host(monkeypatch, host_python):
    """This machine as a GPU host: the trtllm-build and quantize.py stand-ins (tests/fake_bin) on PATH, run by
    ``host_python``. ``sm`` is the build GPU's compute capability, which the stand-in cannot ask CUDA for."""

    def use(sm: int = 90, **env: str) -> None:
        monkeypatch.setenv("PATH", os.pathsep.join((str(FAKE_BIN), str(host_python), os.environ["PATH"])))
        monkeypatch.setenv("TRTLLM_EXAMPLES_DIR", str(FAKE_BIN / "examples"))
        monkeypatch.setenv("FAKE_TRTLLM_SM", str(sm))
        for key in ("FAKE_TRTLLM_VERSION", "FAKE_TRTLLM_OVERRIDES", "FAKE_TRTLLM_EXIT"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return use


@pytest.fixture
def build_engine(gpu_host, qwen3_8b_config):
    """Build ``spec``'s engine with the stand-ins, as `tritongen build` does (the model folder gets Qwen3-8B's
    config.json when it has none); returns the engine's config.json. ``env`` imitates another build host."""
    import json
    import shutil

    from generator.engine.build import run_build
    from generator.engine.gpus import lookup_gpu
    from generator.engine.plan import make_plan

    def build(spec, **env: str) -> Path:
        gpu_host(lookup_gpu(spec.build.gpu).sm, **env)
        if not (spec.model_dir / "config.json").is_file():
            spec.model_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(qwen3_8b_config, spec.model_dir / "config.json")
        plan = make_plan(spec, json.loads((spec.model_dir / "config.json").read_text()))
        run_build(spec, plan, force=True, on_line=lambda _: None)
        return spec.engine_dir / "config.json"

    return build


@pytest.fixture(scope="session")
def cpu_loadtest(cpu_spec, cpu_server, work_dir):
    """A short closed-loop gRPC-streaming load test against cpu_server: its folder and results."""
    from generator.measure.runner import run_loadtest
    from generator.spec import with_overrides

    out = work_dir / "loadtest-grpc"
    out.mkdir()
    spec = with_overrides(cpu_spec, [
        "loadtest.users=4", "loadtest.duration_s=2", "loadtest.input_tokens_mean=32", "loadtest.output_tokens_mean=16",
        "loadtest.warmup_requests=2", "loadtest.num_prompts=8", "loadtest.reference_checks=8",
        "loadtest.request_timeout_s=120",
        "loadtest.slo=ttft_p99<120s,error_rate<50%",
    ])
    return run_loadtest(spec, out, url=f"http://{cpu_server.http_url}", grpc_url=cpu_server.grpc_url,
                        metrics_url=cpu_server.metrics_url, title="test load", admin_key=cpu_server.admin_key)


@pytest.fixture(scope="session")
def llmapi_loadtest(llmapi_spec, llmapi_server, work_dir):
    """A short gRPC-streaming load test against llmapi_server (loadtest.model and loadtest.tokenizer left to resolve
    to the LLM-API model and its checkpoint): its folder and results, read by the LLM-API load-test test and the
    LLM-API scenario."""
    from helpers import LLMAPI_SHORT_LOAD

    from generator.measure.runner import run_loadtest
    from generator.spec import with_overrides

    out = work_dir / "loadtest-llmapi-grpc"
    out.mkdir()
    spec = with_overrides(llmapi_spec, LLMAPI_SHORT_LOAD)
    return run_loadtest(spec, out, url=f"http://{llmapi_server.http_url}", grpc_url=llmapi_server.grpc_url,
                        metrics_url=llmapi_server.metrics_url, admin_key=llmapi_server.admin_key)


@pytest.fixture(scope="session")
def trtllm_gauge():
    """Read one of the engine's nv_trt_llm_* gauges from a running server, e.g.
    ``trtllm_gauge(server, "nv_trt_llm_kv_cache_block_metrics", "used")``."""
    import requests

    from generator.measure.tritonstats import parse_metrics

    def read(server, family: str, label: str) -> float:
        samples = parse_metrics(requests.get(server.metrics_url, timeout=10).text)
        values = [value for _, name, labels, value in samples if name == family and label in labels.values()]
        assert values, f"the server publishes no {family} gauge labelled {label!r}"
        return values[0]

    return read



@pytest.fixture(scope="session")
def engine_settled(trtllm_gauge):
    """``with engine_settled(server): <a request its client leaves early>``: after the block, wait (up to 120 s) until
    the engine's gauges have counted the request's context blocks and then show no request active and no block used.
    Waiting only for idle gauges ended at once on a busy machine, where the client left before the engine published
    again and the gauges from before the request read idle. They are published one by one each period, the request
    family first: a scrape may catch the engine mid-way, so each reading is taken anew."""
    import time

    @contextlib.contextmanager
    def settled(server):
        kv = lambda label: trtllm_gauge(server, "nv_trt_llm_kv_cache_block_metrics", label)  # noqa: E731
        allocated = kv("alloc_total")
        yield
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
                kv("alloc_total") > allocated and not trtllm_gauge(server, "nv_trt_llm_request_metrics", "active")
                and not kv("used")):
            time.sleep(0.2)

    return settled


# pytest-xdist workers (`make test`: `-n 3 --dist loadscope`: a module's tests stay on one worker, so its
# module-scoped fixtures, a server or the demo's run, are made once). A test marked `alone` runs while the
# other workers run no test (a measurement another test's load would blur); where only a part of a test must not be
# disturbed (a measurement, or a server's start that finds the one Python-backend folder under /tmp that appeared
# meanwhile), that part runs in `with alone():` (the fixture below), the rest beside the other workers.

SESSION_SERVERS = {"cpu_server", "llmapi_server"}
"""Session fixtures that start a server: each worker running a module that uses one starts it again."""
SERVER_SCOPES = {
    "cpu server": ("argvkey", "bls", "cpu_engine", "gate_server", "hardening", "loadgen", "loadtest_server",
                   "report", "smoke", "soak", "sweep"),
    "both servers": ("bls_streams", "llmapi_server", "runtime_security", "scenarios", "server"),
}
"""The modules using SESSION_SERVERS (checked after each test), in two scopes of the scheduler, each run by one
worker: the CPU server starts twice and the LLM-API server and the session load tests once, not on every worker.
Two scopes, not one: one would hold about half the suite's time, more than a worker's share."""
_SCOPE_OF = {f"tests/test_{m}.py": scope for scope, modules in SERVER_SCOPES.items() for m in modules}


def pytest_xdist_make_scheduler(config, log):
    """loadscope (a module's tests on one worker, in file order) with the SERVER_SCOPES' modules together; another
    --dist is left as asked."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ServersTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return _SCOPE_OF.get(module, module)

    return ServersTogether(config, log)


@pytest.fixture(autouse=True)
def _session_servers_stay_in_their_scopes(request):
    """A test that used a session server (as an argument or by ``request.getfixturevalue``, as the scenarios do)
    from a module in none of SERVER_SCOPES would start it on yet another worker: an error naming the module."""
    yield
    module = request.node.nodeid.split("::", 1)[0]
    used = sorted(SESSION_SERVERS & set(request.fixturenames))
    if used and module not in _SCOPE_OF:
        pytest.fail(f"{module} uses {', '.join(used)}: add it to SERVER_SCOPES in tests/conftest.py", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under xdist each test holds the workers' lock (setup, call, teardown): shared, or exclusive when marked
    `alone`."""
    if _LOCKS is None:
        yield
        return
    import fcntl

    _take_lock(exclusive=bool(item.get_closest_marker("alone")))
    try:
        yield
    finally:
        fcntl.flock(_LOCKS[1], fcntl.LOCK_UN)


def _take_lock(*, exclusive: bool) -> None:
    """The workers' lock, through the turnstile: an exclusive wait ends at the other workers' current tests."""
    import fcntl

    turnstile, lock = _LOCKS
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    finally:
        fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def alone():
    """``with alone():`` runs a part of a test (its measurement, not its server's start) as an `alone` test runs:
    the other workers finish their current tests and start no other until the part ends. The test's shared lock is
    given up first, so two workers asking at once wait for each other's test to end, never deadlock."""
    @contextlib.contextmanager
    def part():
        if _LOCKS is None:
            yield
            return
        import fcntl

        fcntl.flock(_LOCKS[1], fcntl.LOCK_UN)
        _take_lock(exclusive=True)
        try:
            yield
        finally:
            fcntl.flock(_LOCKS[1], fcntl.LOCK_UN)
            _take_lock(exclusive=False)

    return part


def _worker_locks():
    """(turnstile, lock): files of this test run, shared by its workers (None in a serial run)."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not os.environ.get("PYTEST_XDIST_WORKER") or not run:
        return None
    import tempfile

    base = Path(tempfile.gettempdir()) / f"tritongen-tests-{run}"
    return tuple(open(f"{base}.{name}", "a") for name in ("turnstile", "lock"))


_LOCKS = _worker_locks()


def pytest_unconfigure(config):
    for file in _LOCKS or ():
        file.close()
        Path(file.name).unlink(missing_ok=True)  # the other workers keep their open copies until they end
    if _OWN_CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)
