"""The load generator on a many-core GPU host, saturated: tritongen's Locust users and perf_analyzer side by
side, each pinned to one core; where the CPU of a saturated Locust process goes; how many processes one
Triton server needs (``--workers`` 1..N and ``auto``); what the client verdict says of each.

The server is bench_loadgen.py's trivial model (N one-token responses per request at once) with
``--instances`` model instances, pinned to every CPU but the last; the one-core clients run on the last
(``taskset``), the multi-process runs anywhere. Every tritongen run is ``run_loadtest`` (the records,
verdict and capacity a user gets); perf_analyzer takes the same prompts and concurrency (sidebyside.py's
command) as it starts by default, one worker thread per concurrent request (64 or 256): confined to one core
it spends that core fully but rarely finishes a measurement window, so it is stopped after 3.6 windows and
measured by the meter; once more with ``--max-threads 1`` (a quarter of its core left idle) for reference.

Per client core-second, the same yardstick for both clients (CoreMeter): the requests the server counts
(``nv_inference_request_success``) over the busy time of the client's core (/proc/stat), in the steady
part of the run (from 2 s after the first answered request to 0.5 s before the last); each tool's own
figures (tritongen's process records, perf_analyzer's export) are kept beside it.

    python bench/gpuhost_loadgen.py --perf-analyzer PA --out OUT [--users 64,256 --rounds 2 --seconds 8]

On a host without network, bench/gpuhost/lease.sh installs what this needs first and runs it. Writes
OUT/gpuhost.json (or --json) after every run and prints Markdown tables (recorded in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loadgen import trivial_repo  # noqa: E402
from profile_loadgen import categorize  # noqa: E402
from sidebyside import children_cpu_s, perf_analyzer_input  # noqa: E402

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip() if shutil.which("nvidia-smi") else "no GPU"
    return f"{os.cpu_count()} CPUs ({cpu}), {gpu}, Python {platform.python_version()}"


def tokenizer_dir(work: Path) -> Path:
    """The tiny test model's tokenizer only (no model training: the trivial model needs none)."""
    from generator.model.tinymodel import corpus_paragraphs, train_tokenizer

    out = work / "tiny"
    out.mkdir(parents=True, exist_ok=True)
    train_tokenizer(corpus_paragraphs()).save(str(out / "tokenizer.json"))
    return out


def repo(work: Path, tokenizer: Path, instances: int) -> Path:
    root = trivial_repo(work / "repo", tokenizer)
    config = root / "ensemble" / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("count: 1 kind: KIND_CPU", f"count: {instances} kind: KIND_CPU"), encoding="utf-8")
    return root


class CoreMeter:
    """Every 0.25 s: the busy seconds of one CPU (/proc/stat: user, nice, system, irq, softirq; steal is
    time the vCPU did not run) and the requests the server has completed. A client pinned alone to that
    CPU is measured the same way whatever it is; ``steady()`` reads the run's steady part."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, cpu: int, metrics_url: str, model: str = "ensemble") -> None:
        self.cpu, self.metrics_url = f"cpu{cpu} ", metrics_url
        self.key = f'nv_inference_request_success{{model="{model}"'
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _busy_s(self) -> float:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                if line.startswith(self.cpu):
                    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in line.split()[1:8])
                    return (user + nice + system + irq + softirq) / self.TICK
        raise RuntimeError(f"no {self.cpu.strip()} in /proc/stat")

    def _requests(self) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:  # noqa: S310 (our server)
            text = resp.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(self.key))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self._busy_s(), self._requests()))
            self._stop.wait(0.25)

    def __enter__(self) -> "CoreMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def steady(self, lead_s: float = 2.0, tail_s: float = 0.5) -> dict:
        s = self.samples
        rising = [i for i in range(1, len(s)) if s[i][2] > s[i - 1][2]]
        if len(rising) < 2:
            return {"meter": "no requests counted"}
        t_first, t_last = s[rising[0] - 1][0], s[rising[-1]][0]
        inside = [x for x in s if t_first + lead_s <= x[0] <= t_last - tail_s]
        if len(inside) < 4:  # a short run: its whole active span
            inside = [x for x in s if t_first <= x[0] <= t_last]
        (t0, b0, r0), (t1, b1, r1) = inside[0], inside[-1]
        busy = b1 - b0
        return {"meter_s": round(t1 - t0, 2), "meter_requests": r1 - r0, "meter_requests_per_s": (r1 - r0) / (t1 - t0),
                "meter_core_busy": busy / (t1 - t0), "meter_per_core": (r1 - r0) / busy if busy else None}



class Bench:
    def __init__(self, args, server, tokenizer: Path, result: dict, client_core: int) -> None:
        self.args, self.server, self.tokenizer, self.result = args, server, tokenizer, result
        self.client_core = client_core
        self.rows: list[dict] = result.setdefault("rows", [])
        self.pa_input = args.out / "pa-input.json"
        self.t0 = time.time()

    def left_s(self) -> float:
        """Seconds left of --budget-s (infinite without one): later runs are skipped, not cut off."""
        return self.args.budget_s - (time.time() - self.t0) if self.args.budget_s else float("inf")

    def add(self, row: dict) -> dict:
        """Kept and written at once, so that a lease that ends early still returns what ran."""
        self.rows.append(row)
        self.result["seconds"] = time.time() - self.t0
        self.args.json.write_text(json.dumps(self.result, indent=1), encoding="utf-8")
        print(json.dumps(row), flush=True)
        return row

    def metered(self, pinned: bool):
        return CoreMeter(self.client_core, self.server.metrics_url) if pinned else contextlib.nullcontext()

    def spec(self, users: int, workers):
        from generator.spec import load_spec

        return load_spec(None, [
            "loadtest.protocol=grpc-stream", f"loadtest.users={users}", f"loadtest.spawn_rate={users}",
            f"loadtest.duration_s={self.args.seconds}", f"loadtest.workers={workers}",
            f"loadtest.output_tokens_mean={self.args.tokens}", "loadtest.input_tokens_mean=16",
            "loadtest.num_prompts=16", "loadtest.reference_checks=0", "loadtest.request_timeout_s=30",
            f"loadtest.tokenizer={self.tokenizer}",
            *([f"loadtest.grpc_streams={self.args.grpc_streams}"] if self.args.grpc_streams else []),
        ])

    def tritongen(self, tag: str, users: int, workers, prefix: tuple = ()) -> dict:
        from generator.measure.records import read_records
        from generator.measure.runner import run_loadtest

        out = (self.args.out / "runs" / f"{tag}-u{users}-w{workers}").resolve()
        out.mkdir(parents=True, exist_ok=True)
        (out / "records.jsonl").unlink(missing_ok=True)
        s = self.server
        t0 = time.time()
        with self.metered(bool(prefix)) as meter:
            res = run_loadtest(self.spec(users, workers), out, url=f"http://{s.http_url}", grpc_url=s.grpc_url,
                               metrics_url=s.metrics_url, admin_key=s.admin_key, locust_prefix=prefix,
                               title=out.name).results
        requests, processes, _ = read_records(out / "records.jsonl")
        if not self.pa_input.is_file():
            from generator.measure.runner import model_inputs

            perf_analyzer_input(out / "records.jsonl", model_inputs(f"http://{s.http_url}", "ensemble"),
                                self.args.tokens, self.pa_input)
        (out / "records.jsonl").unlink()
        cpu = sum(p["cpu_s"] for p in processes)
        c = res.client
        row = {"client": "tritongen", "phase": tag, "users": users, "workers": workers,
               "processes": len(c.processes), "requests": len(requests), "cpu_s": cpu,
               "per_core": len(requests) / cpu, "requests_per_s": res.throughput.requests_per_s,
               "errors": res.counts.errors, "client_limited": c.client_limited, "reasons": c.reasons,
               "busiest_demand": max(p.demand for p in c.processes), "busiest_cpu": max(p.cpu for p in c.processes),
               "demand": [round(p.demand, 2) for p in c.processes], "wait": [p.wait for p in c.processes],
               "lag_p99_ms": [round(p.lag_p99_ms, 1) for p in c.processes],
               "processes_needed": c.capacity.processes_needed if c.capacity else None,
               "checks_failed": res.checks.failed_requests, "wall_s": time.time() - t0}
        if meter is not None:
            row.update(meter.steady())
        return self.add(row)

    def perf_analyzer(self, tag: str, users: int, prefix: tuple = (), threads: Optional[int] = 1,
                      timeout_s: Optional[float] = None) -> dict:
        """perf_analyzer on the same prompts and concurrency; ``threads``: its --max-threads (None: its default,
        one worker thread per concurrent request); stopped after ``timeout_s`` (default --pa-timeout-s)."""
        pa = self.args.perf_analyzer.resolve()
        export = self.args.out / f"pa-{tag}-{users}.json"
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(
            [str(pa.parent)] + [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]))
        cmd = [*prefix, str(pa), "-m", "ensemble", "-u", self.server.grpc_url, "-i", "grpc", "--streaming",
               "--input-data", str(self.pa_input), "--concurrency-range", str(users),
               *(("--max-threads", str(threads)) if threads else ()),
               "--measurement-mode", "time_windows", "--measurement-interval", str(self.args.pa_window_ms),
               "--stability-percentage", "999", "--max-trials", "3", "--profile-export-file", str(export)]
        log = self.args.out / f"pa-{tag}-{users}.log"
        before = children_cpu_s()
        t0 = time.time()
        with self.metered(bool(prefix)) as meter, open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                rc = proc.wait(timeout=timeout_s or self.args.pa_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = "timeout"
        cpu = children_cpu_s() - before
        row = {"client": "perf_analyzer", "phase": tag, "users": users, "max_threads": threads, "rc": rc,
               "cpu_s": cpu, "wall_s": time.time() - t0,
               "command": " ".join(Path(c).name if c == str(pa) else c for c in cmd)}
        if rc == 0:
            data = json.loads(export.read_text(encoding="utf-8"))
            reqs = [r for e in data["experiments"] for r in e["requests"]]
            first = min(r["timestamp"] for r in reqs)
            last = max(r["response_timestamps"][-1] for r in reqs if r["response_timestamps"])
            row.update(requests=len(reqs), per_core=len(reqs) / cpu, requests_per_s=len(reqs) / ((last - first) / 1e9),
                       responses=sum(len(r["response_timestamps"]) for r in reqs))
            export.unlink()
        else:
            row["log"] = log.read_text(encoding="utf-8", errors="replace")[-1500:]
        if meter is not None:
            row.update(meter.steady())
        return self.add(row)

    def profile(self, users: int, prefix: tuple) -> dict:
        """One saturated one-core run under cpu_sampler.py: where the CPU of the Locust process goes."""
        from cpu_sampler import INTERVAL_S

        raw = (self.args.out / f"profile-u{users}.txt").resolve()
        row = self.tritongen("profile", users, 0, (*prefix, sys.executable, str(HERE / "cpu_sampler.py"), str(raw)))
        parts, samples = categorize(raw)
        responses = row["requests"] * self.args.tokens
        table = {name: n * INTERVAL_S * 1e6 / responses for name, n in parts.items()}
        prof = {"users": users, "cpu_s": row["cpu_s"], "requests": row["requests"],
                "us_per_request": row["cpu_s"] * 1e6 / row["requests"], "sampled_s": samples * INTERVAL_S,
                "us_per_response_by_part": table}
        self.result.setdefault("profiles", {})[str(users)] = prof
        print(json.dumps(prof), flush=True)
        return prof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--perf-analyzer", type=Path, required=True)
    parser.add_argument("--users", default="64,256")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--grpc-streams", type=int, default=None,
                        help="loadtest.grpc_streams: gRPC streams per process (default: the spec's)")
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--pa-window-ms", type=int, default=2000)
    parser.add_argument("--pa-timeout-s", type=float, default=20.0,
                        help="a perf_analyzer run still going after this is stopped (the meter has measured it)")
    parser.add_argument("--onecore-only", action="store_true", help="only the one-core side-by-side runs")
    parser.add_argument("--workers", default="0,2,3,4,auto", help="multi-process runs at the largest --users")
    parser.add_argument("--idle-workers", type=int, default=8,
                        help="a run with this many workers at the smallest --users: workers well below a core")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="seconds after the server is up; runs that would start later are skipped (0: none)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/gpuhost"))
    parser.add_argument("--json", type=Path, default=None, help="where the results go (default OUT/gpuhost.json)")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.json = (args.json or args.out / "gpuhost.json").resolve()
    from generator.measure import report_loadtest
    from generator.serve.server import TritonServer

    # The figures come from the results; the pages (matplotlib, seconds per run) are left out.
    report_loadtest.write_loadtest_report = lambda out_dir, results: None
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    client_core, server_cpus = cpus[-1], cpus[:-1]
    pin = ("taskset", "-c", str(client_core))
    users = [int(u) for u in args.users.split(",")]
    result: dict = {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "server_cpus": len(server_cpus), "client_core": client_core}
    t0 = time.time()
    tok = tokenizer_dir(work)
    os.sched_setaffinity(0, server_cpus)  # the server (and this process's own work) off the client core
    with TritonServer(repo(work, tok, args.instances), log_file=work / "triton.log") as server:
        bench = Bench(args, server, tok, result, client_core)
        print(f"server ready after {time.time() - t0:.0f} s", flush=True)
        bench.tritongen("warm", min(users), 0, pin)  # also writes perf_analyzer's prompts
        bench.perf_analyzer("check", 4)
        for r in range(args.rounds):  # alternate, so that drifts hit both alike
            for u in users:
                bench.tritongen(f"onecore{r}", u, 0, pin)
                # perf_analyzer as it starts by default (a thread per stream, its core spent fully): the
                # comparison of issue 28; with one thread (a quarter of its core idle) once, for reference
                bench.perf_analyzer(f"onecore{r}", u, pin, threads=None, timeout_s=args.pa_window_ms * 3.6 / 1000 + 3)
                if r == 0:
                    bench.perf_analyzer("onecore-1-thread", u, pin)
        if not args.onecore_only:
            rest(args, bench, users, pin, cpus)
    report(result)


def rest(args, bench: Bench, users: list[int], pin: tuple, cpus: list[int]) -> None:
    """The profile at saturation (what to change next), the multi-process runs, many idle workers, a run
    starved by a CPU hog on its core; each skipped when --budget-s would be overrun."""
    run_s = args.seconds + 12  # start, drain and the analysis of the records

    def fits() -> bool:
        if bench.left_s() > run_s:
            return True
        print(f"budget: {bench.left_s():.0f} s left, the remaining runs skipped", flush=True)
        return False

    os.sched_setaffinity(0, cpus[:-1])
    for u in sorted(users, reverse=True):
        if fits():
            bench.profile(u, pin)
    os.sched_setaffinity(0, cpus)
    for w in args.workers.split(","):
        if fits():
            bench.tritongen("multi", max(users), w)
    if fits():
        bench.perf_analyzer("multi", max(users), threads=None)
    if fits():
        bench.tritongen("idle", min(users), args.idle_workers)
    os.sched_setaffinity(0, cpus[:-1])
    if fits():
        hog = subprocess.Popen([*pin, sys.executable, "-c", "while True: pass"])
        try:
            bench.tritongen("starved", min(users), 0, pin)
        finally:
            hog.kill()
            hog.wait()


def report(result: dict) -> None:
    rows = result["rows"]
    print(f"\n{result['machine']}; server on {result['server_cpus']} CPUs, one-core clients on CPU {result['client_core']}")
    print("| client | phase | users | workers / threads | requests/s | core busy | requests per client core-second "
          "(meter) | own figure | busiest loop wanted | client-limited | errors |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        print(f"| {r['client']} | {r['phase']} | {r['users']} | {r.get('workers', r.get('max_threads'))} | "
              f"{r.get('meter_requests_per_s', r.get('requests_per_s', 0)):,.0f} | {r.get('meter_core_busy', 0):.2f} | "
              f"{r.get('meter_per_core') or 0:,.0f} | {r.get('per_core', 0):,.0f} | {r.get('busiest_demand', 0):.2f} | "
              f"{r.get('client_limited', '')} | {r.get('errors', r.get('rc'))} |")
    for u in sorted({r["users"] for r in rows if r["phase"].startswith("onecore")}):
        def median(client: str, phase=lambda p: p[7:].isdigit()) -> float:
            return float(np.median([r["meter_per_core"] for r in rows if phase(r["phase"]) and r["users"] == u
                                    and r["client"] == client and r.get("meter_per_core")] or [0]))

        ours, theirs = median("tritongen"), median("perf_analyzer")
        one = median("perf_analyzer", lambda p: p == "onecore-1-thread")
        print(f"{u} streams, one core each, median of the rounds: tritongen {ours:,.0f}, perf_analyzer {theirs:,.0f} "
              f"requests per client core-second: {ours / max(theirs, 1):.2f}x (perf_analyzer --max-threads 1: "
              f"{one:,.0f}, {ours / max(one, 1):.2f}x)")


if __name__ == "__main__":
    main()
