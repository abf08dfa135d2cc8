"""Soak and fuzz run of a served repository: saturating honest load mixed with hostile requests.

Honest clients (``--workers`` threads, closed loop) send greedy requests whose answers are known from
a first pass, over every entry point (HTTP generate and SSE streaming, gRPC streaming; ensemble and
BLS), and check every answer. One hostile thread sends malformed and abusive requests at the same
time: random JSON bodies over the documented inputs, huge and non-finite numbers, non-UTF-8 text,
out-of-vocabulary ids, direct engine calls, clients that disconnect mid-stream, duplicate request
ids (bench/soak_hostile.py). At the end the run waits for the server to settle and checks that every
model is still ready and answering, that no honest request failed, and that the engine's active
requests and KV blocks and the Python stubs' memory are back at their idle level; then it stops the
server and reads the kernel log (``dmesg``): a segfault of one of the server's processes fails the run, and segfaults of
other processes on the machine are listed.

Two targets: the ensemble repository (ensemble and BLS, the default) and the LLM-API repository
(``--target llmapi``: the ``tensorrt_llm`` model speaking the LLM-API tensors, with perf metrics,
finish reasons, ``stop`` cancellations and direct engine calls among the hostile requests).

    .venv/bin/python bench/soak.py --duration 600 --hostile 600           # the full run (demo repository)
    .venv/bin/python bench/soak.py --target llmapi --duration 600 --hostile 600
    .venv/bin/python bench/soak.py --repo REPO --duration 60 --hostile 100
    .venv/bin/python bench/soak.py --repo REPO --duration 30 --hostile 30 --cycles 5   # 5 start/load/stop cycles

Without ``--repo`` the demo's tiny model is made, quantized and rendered first (as ``tritongen demo``
does). Loopback only. Prints a JSON summary; exit status 1 when a check failed. The test suite runs a
short version of the same run (tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generator.measure.tritonstats import parse_metrics  # noqa: E402
from generator.serve.client import llmapi_inputs  # noqa: E402
from generator.serve.smoke import grpc_stream, text_inputs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_hostile import LLMAPI_MODEL, MODELS, PROMPTS, HostileClient, request_body  # noqa: E402

SEGFAULT = re.compile(r"\b(\S+)\[(\d+)\]: segfault at")


@dataclass
class SoakResult:
    duration_s: float
    honest_requests: int = 0
    honest_failures: int = 0
    honest_failure_examples: list[str] = field(default_factory=list)
    honest_hung: int = 0
    """Honest requests that got no final response (nor an error) before their 300-s timeout."""
    hostile_requests: int = 0
    hostile_outcomes: dict[str, int] = field(default_factory=dict)
    hostile_hung: int = 0
    models_ready_after: bool = False
    answer_after_ok: bool = False
    active_requests_after: float = -1
    kv_blocks_used_after: float = -1
    rss_mib_idle: dict[str, int] = field(default_factory=dict)
    rss_mib_after: dict[str, int] = field(default_factory=dict)
    shm_pool_mib_idle: dict[str, int] = field(default_factory=dict)
    shm_pool_mib_after: dict[str, int] = field(default_factory=dict)
    """Each stub's shared-memory pool: it grows when a BLS stream is left unread (model_common ``bls_stream``)."""
    stubs_restarted: list[str] = field(default_factory=list)
    segfaults_ours: list[str] = field(default_factory=list)
    """New kernel-log segfault lines of this server's processes (stubs and their threads)."""
    segfaults_others: list[str] = field(default_factory=list)
    """New segfault lines of other processes on the machine (shared: other users' servers)."""
    kernel_log_read: bool = False
    stopped_cleanly: bool = False
    """No stub of the server tore itself down under its own threads (``Non-graceful termination detected``
    in the server log: its parent was gone before it); ``TritonServer.stop`` raises if a process is left."""
    exit_timeout_expired: bool = False
    """The server exited on ``--exit-timeout-secs`` before all models unloaded (tritongen then ends the stubs)."""
    error: str = ""
    """Why the run could not finish (the server went away mid-run: its log says why)."""
    python_env: str = ""
    """The server's Python-backend folder under /tmp (empty when it could not be told apart from another's)."""
    python_env_left: bool = False
    """That folder was still there after the stop."""
    cores: list[str] = field(default_factory=list)
    """Core files of crashed server processes kept by ``--cores`` (read them with gdb and the stub binary)."""

    @property
    def ok(self) -> bool:
        return (not self.error and self.honest_failures == 0 and self.honest_hung == 0 and self.hostile_hung == 0 and self.models_ready_after
                and self.answer_after_ok and self.active_requests_after == 0 and self.kv_blocks_used_after == 0
                and not self.stubs_restarted and self.memory_settled and not self.segfaults_ours
                and self.stopped_cleanly and not self.python_env_left)

    @property
    def memory_settled(self) -> bool:
        """Each stub's RSS back near idle: allocators keep some freed pages, a leak grows with the run."""
        return all(self.rss_mib_after.get(k, 0) <= 1.25 * v + 64 for k, v in self.rss_mib_idle.items())


def stub_memory(server_pid: int) -> dict[str, tuple[int, int, int]]:
    """model name -> (pid, RSS MiB, shared-memory pool MiB) of each Python backend stub of the server (the
    stub's second argument names its pool in /dev/shm; -1 when it cannot be read)."""
    import psutil

    out = {}
    for proc in psutil.Process(server_pid).children(recursive=True):
        try:
            cmd = proc.cmdline()
            if cmd and "triton_python_backend_stub" in cmd[0] and len(cmd) > 2:
                pool = Path("/dev/shm") / cmd[2]
                pool_mib = pool.stat().st_size // 2**20 if pool.is_file() else -1
                out[Path(cmd[1]).parts[-3]] = (proc.pid, proc.memory_info().rss // 2**20, pool_mib)
        except psutil.Error:
            continue
    return out


def kernel_segfaults() -> list[str] | None:
    """The kernel log's segfault lines (``dmesg``; None when it cannot be read here)."""
    try:
        text = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line for line in text.splitlines() if SEGFAULT.search(line)]


class TaskWatch:
    """Every process and thread id of the server's process tree seen while it runs: the kernel names a
    crashing thread by its own id, and a request thread of a stub may be gone by the time anyone looks."""

    def __init__(self, server_pid: int | None, period_s: float = 1.0):
        self.ids: set[int] = set()
        self.server_pid, self.period_s = server_pid, period_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        if server_pid:
            self.thread.start()

    def sample(self) -> None:
        import psutil

        try:
            procs = [psutil.Process(self.server_pid), *psutil.Process(self.server_pid).children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            self.ids.add(proc.pid)
            try:
                self.ids.update(int(t.name) for t in (Path("/proc") / str(proc.pid) / "task").iterdir() if t.name.isdigit())
            except OSError:
                continue

    def _loop(self) -> None:
        while not self.stopping.wait(self.period_s):
            self.sample()

    def stop(self) -> None:
        self.sample()
        self.stopping.set()


def sort_segfaults(before: list[str] | None, after: list[str] | None, ours: set[int]) -> tuple[list[str], list[str]]:
    """New segfault lines, split into this server's (by process or thread id) and the machine's others."""
    if before is None or after is None:
        return [], []
    seen = set(before)
    new = [line for line in after if line not in seen]
    mine = [line for line in new if int(SEGFAULT.search(line).group(2)) in ours]
    return mine, [line for line in new if line not in mine]


def gauge(metrics_url: str, family: str, label: str) -> float:
    samples = parse_metrics(requests.get(metrics_url, timeout=10).text)
    return next(v for _, n, labels, v in samples if n == family and label in labels.values())


class Soak:
    def __init__(self, http: str, grpc: str, metrics_url: str, *, max_tokens: int = 24, seed: int = 0,
                 target: str = "ensemble"):
        self.http, self.grpc, self.metrics_url = http, grpc, metrics_url
        self.llmapi = target == "llmapi"
        self.models = (LLMAPI_MODEL,) if self.llmapi else MODELS
        self.max_tokens = max_tokens
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.expected: dict[str, str] = {}
        self.honest = Counter()
        self.failures: list[str] = []
        self.honest_hung = 0
        self.hostile = HostileClient(http, grpc, llmapi=self.llmapi)

    # ---------------------------------------------------------------- honest clients

    def _body(self, prompt: str, stream: bool | None = None, **extra) -> dict:
        return request_body(prompt, llmapi=self.llmapi, max_tokens=self.max_tokens, stream=stream, **extra)

    def _generate(self, model: str, prompt: str, timeout: float = 300, **extra) -> requests.Response:
        return requests.post(f"http://{self.http}/v2/models/{model}/generate", json=self._body(prompt, **extra),
                             timeout=timeout)

    def references(self) -> None:
        for prompt in PROMPTS:
            r = self._generate(self.models[0], prompt)
            r.raise_for_status()
            self.expected[prompt] = r.json()["text_output"]

    def _extras(self, rng: random.Random) -> dict:
        """Optional outputs an honest LLM-API client asks for (perf metrics, reasons), some of the time."""
        if not self.llmapi:
            return {}
        names = ("sampling_param_return_perf_metrics", "return_finish_reason", "return_stop_reason")
        return {name: True for name in names if rng.random() < 0.5}

    def _honest_once(self, rng: random.Random) -> str | None:
        """One honest request on a random entry point; None when its answer is right, else why not."""
        prompt, model = rng.choice(PROMPTS), rng.choice(self.models)
        want = self.expected[prompt]
        path = rng.choice(("generate", "sse", "grpc"))
        extra = self._extras(rng)
        if path == "generate":
            r = self._generate(model, prompt, **extra)
            got = r.json().get("text_output") if r.status_code == 200 else f"HTTP {r.status_code} {r.text[:200]}"
        elif path == "sse":
            with requests.post(f"http://{self.http}/v2/models/{model}/generate_stream", stream=True, timeout=300,
                               json=self._body(prompt, stream=True, **extra)) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith(b"data: ")]
            errors = [e["error"] for e in events if "error" in e]
            texts = [e.get("text_output", "") for e in events]
            got = f"error {errors[0]}" if errors else (texts[-1] if self.llmapi and texts else "".join(texts))
        else:
            if self.llmapi:
                inputs = llmapi_inputs(prompt, {k: v for k, v in self._body(prompt, stream=True, **extra).items()
                                                if k != "text_input"})
            else:
                inputs = text_inputs(prompt, self.max_tokens, stream=True)
            result = grpc_stream(self.grpc, model, inputs, timeout=300, cumulative=self.llmapi)
            got = f"error {result.error}" if result.error else result.text
        return None if got == want else f"{path} {model} {prompt!r}: {str(got)[:160]!r} != {want[:80]!r}"

    def honest_worker(self, deadline: float, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            try:
                problem = self._honest_once(rng)
            except Exception as exc:  # noqa: BLE001 - a failed honest request is what this run counts
                problem = f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.honest["requests"] += 1
                if problem:
                    self.honest["failures"] += 1
                    self.failures.append(problem)
                    self.honest_hung += "no final response within" in problem or problem.startswith(
                        ("ReadTimeout", "Timeout"))

    # ---------------------------------------------------------------- the run

    def settle(self, timeout_s: float = 120) -> tuple[float, float]:
        deadline = time.monotonic() + timeout_s
        while True:
            active = gauge(self.metrics_url, "nv_trt_llm_request_metrics", "active")
            used = gauge(self.metrics_url, "nv_trt_llm_kv_cache_block_metrics", "used")
            if (active == 0 and used == 0) or time.monotonic() > deadline:
                return active, used
            time.sleep(0.5)

    def partial(self, duration_s: float, error: str) -> SoakResult:
        """What a run that could not finish counted until then."""
        return SoakResult(duration_s=duration_s, error=error, honest_requests=self.honest["requests"],
                          honest_failures=self.honest["failures"], honest_failure_examples=self.failures[:5],
                          honest_hung=self.honest_hung, hostile_requests=sum(self.hostile.outcomes.values()),
                          hostile_outcomes=dict(sorted(self.hostile.outcomes.items())), hostile_hung=self.hostile.hung)

    def run(self, duration_s: float, hostile: int, workers: int, server_pid: int | None) -> SoakResult:
        """The load, then the checks on a still running server (the kernel log is read by ``soak``)."""
        self.references()
        idle = stub_memory(server_pid) if server_pid else {}
        started = time.monotonic()
        deadline = started + duration_s
        threads = [threading.Thread(target=self.honest_worker, args=(deadline, i), daemon=True) for i in range(workers)]
        threads.append(threading.Thread(target=self.hostile.worker, args=(deadline, hostile, 10_000), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        result = SoakResult(duration_s=round(time.monotonic() - started, 1))
        result.active_requests_after, result.kv_blocks_used_after = self.settle()
        ready = requests.get(f"http://{self.http}/v2/health/ready", timeout=10).status_code == 200
        result.models_ready_after = ready and all(
            requests.get(f"http://{self.http}/v2/models/{m}/ready", timeout=10).status_code == 200
            for m in ((LLMAPI_MODEL, "tensorrt_llm_cpu") if self.llmapi
                      else (*MODELS, "preprocessing", "postprocessing", "tensorrt_llm")))
        r = self._generate(self.models[0], PROMPTS[0])
        result.answer_after_ok = r.status_code == 200 and r.json()["text_output"] == self.expected[PROMPTS[0]]
        if server_pid:
            after = stub_memory(server_pid)
            result.rss_mib_idle = {k: v[1] for k, v in idle.items()}
            result.rss_mib_after = {k: v[1] for k, v in after.items()}
            result.shm_pool_mib_idle = {k: v[2] for k, v in idle.items()}
            result.shm_pool_mib_after = {k: v[2] for k, v in after.items()}
            result.stubs_restarted = sorted(k for k in idle if after.get(k, (None,))[0] != idle[k][0])
        result.honest_requests, result.honest_failures = self.honest["requests"], self.honest["failures"]
        result.honest_failure_examples = self.failures[:5]
        result.honest_hung = self.honest_hung
        result.hostile_requests = sum(self.hostile.outcomes.values())
        result.hostile_outcomes = dict(sorted(self.hostile.outcomes.items()))
        result.hostile_hung = self.hostile.hung
        return result


def _demo_repo(work: Path, target: str) -> Path:
    """The demo's repository: tiny Qwen3, NVFP4 checkpoint, cpu-reference layout (or the LLM-API one)."""
    from generator.demo import demo_overrides
    from generator.model.quantize import quantize
    from generator.model.tinymodel import make_tiny_model
    from generator.repo.render import render_repository
    from generator.spec import load_spec, with_overrides

    tiny = make_tiny_model(work / "tiny-qwen3", seed=0)
    spec = load_spec(None, demo_overrides(tiny, work / "artifacts"))
    quantize(spec)
    if target == "llmapi":
        spec = with_overrides(spec, ["serving.engine=llmapi"])
    return render_repository(spec, work / "repo")


def keep_cores(folder: Path, cores_dir: Path) -> list[str]:
    """Move the core files a crash left in ``folder`` (the server's working folder, where the kernel writes
    them under the default ``core_pattern``) to ``cores_dir``, before the server's stop removes the folder."""
    kept = []
    for core in sorted(folder.glob("core*")):
        cores_dir.mkdir(parents=True, exist_ok=True)
        kept.append(str(shutil.move(str(core), cores_dir / core.name)))
    return kept


def soak(repo: Path, log_file: Path, *, target: str, duration_s: float, hostile: int, workers: int,
         max_tokens: int, cores_dir: Path | None = None) -> SoakResult:
    """Serve ``repo``, run the soak, stop the server, then read what the kernel logged meanwhile."""
    from generator.serve.server import TritonServer

    if cores_dir is not None:  # the server and its stubs inherit the limit
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
    before = kernel_segfaults()
    cores: list[str] = []
    with TritonServer(repo, log_file=log_file) as server:
        python_env = server.python_env
        watch = TaskWatch(server.pid)
        load = Soak(server.http_url, server.grpc_url, server.metrics_url, max_tokens=max_tokens, target=target)
        try:
            result = load.run(duration_s, hostile, workers, server.pid)
        except requests.RequestException as exc:
            result = load.partial(duration_s, f"{type(exc).__name__}: {exc}")
        finally:
            watch.stop()
            if cores_dir is not None:
                cores = keep_cores(server._workdir, cores_dir)
    result.cores = cores
    result.python_env = str(python_env or "")
    result.python_env_left = python_env is not None and python_env.exists()
    time.sleep(1.0)  # the kernel logs a crash of the stopping stubs a moment after it happens
    after = kernel_segfaults()
    result.kernel_log_read = before is not None and after is not None
    result.segfaults_ours, result.segfaults_others = sort_segfaults(before, after, watch.ids)
    log = log_file.read_text(encoding="utf-8", errors="replace")
    result.exit_timeout_expired = "Exit timeout expired" in log
    result.stopped_cleanly = "Non-graceful termination" not in log
    return result


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, help="rendered repository (default: the demo's, made here)")
    parser.add_argument("--target", choices=("ensemble", "llmapi"), default=None,
                        help="what the repository serves (default: read from its tritongen.json; ensemble)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--hostile", type=int, default=500, help="at least this many hostile requests")
    parser.add_argument("--workers", type=int, default=16, help="honest clients (the demo's max_batch_size)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, help="also write the JSON summary here (and the server log beside it)")
    parser.add_argument("--cycles", type=int, default=1,
                        help="start, load and stop the server this many times in a row; ok only if every cycle is")
    parser.add_argument("--cores", type=Path, help="keep core files of crashed server processes in this folder")
    args = parser.parse_args()
    from generator.repo.manifest import read_manifest

    target = args.target
    manifest = read_manifest(args.repo) if target is None and args.repo else None
    if manifest is not None:
        target = manifest.target.value
    target = "llmapi" if target == "llmapi" else "ensemble"
    cycles = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        repo = args.repo or _demo_repo(Path(tmp), target)
        for cycle in range(1, args.cycles + 1):
            name = f"{cycle}.triton.log" if args.cycles > 1 else "triton.log"
            log = args.out.with_suffix(f".{name}") if args.out else Path(tmp) / name
            result = soak(repo, log, target=target, duration_s=args.duration, hostile=args.hostile,
                          workers=args.workers, max_tokens=args.max_tokens, cores_dir=args.cores)
            cycles.append({"ok": result.ok, "memory_settled": result.memory_settled, **asdict(result)})
            print(f"cycle {cycle}/{args.cycles}: {'ok' if result.ok else 'FAILED'}", file=sys.stderr, flush=True)
    summary = {"ok": all(c["ok"] for c in cycles), "target": target,
               **(cycles[0] if len(cycles) == 1 else {"cycles": cycles}),
               "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
               "command": " ".join(sys.argv)}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
