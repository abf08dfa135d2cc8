"""The load generator's own CPU per request at saturation, versions side by side: one Locust process (pinned to a
CPU with ``--cpu``) whose gRPC stream is answered in memory at once (bench/inmemory_locustfile.py), so it runs
flat out on its own Python work with no system call and no server sharing the CPU. Client CPU microseconds
per request = the process record's CPU seconds / requests; versions alternate round by round.

    .venv/bin/python bench/loadgen_inmemory.py --revs BEFORE,AFTER [--users 64,256 --seconds 5 --rounds 2]

What it leaves out, and a real server does not: the socket's system calls, epoll, and answers that arrive
spread out (here every request's 16 responses come in the same read). ``--server-cpu N`` puts the socket back: each
revision's own locustfile against bench/fake_stream_server.py pinned to CPU N over a real socket (the stand-in
answers a request's 16 responses at once, so reads still carry many). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revs", required=True, help="git revisions whose loadtest/ to compare, e.g. main,HEAD")
    parser.add_argument("--users", default="64,256")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpu", default="1", help="taskset -c for the Locust process")
    parser.add_argument("--profile", type=Path, default=None, help="write cpu_sampler.py profiles to this folder")
    parser.add_argument("--server-cpu", default=None,
                        help="over a real socket: bench/fake_stream_server.py pinned to this CPU (taskset -c)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from generator.measure.records import read_records
    from generator.model.tinymodel import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="tritongen-inmemory-"))
    try:
        measure(args, work, make_tiny_model(work / "tiny"), read_records)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path, tokenizer: Path, read_records) -> None:
    """Every revision's loadtest/ extracted under ``work``, run round by round; the table printed."""
    revs = args.revs.split(",")
    for rev in revs:
        (work / rev).mkdir()
        archive = subprocess.run(["git", "archive", rev, "loadtest"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(work / rev)], input=archive, check=True)
    host, server = "grpc://127.0.0.1:1", None
    if args.server_cpu is not None:
        with socket.socket() as probe:  # a free port for the stand-in
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        host = f"grpc://127.0.0.1:{port}"
        server = subprocess.Popen(["taskset", "-c", args.server_cpu, sys.executable,
                                   str(ROOT / "bench/fake_stream_server.py"), str(port), str(tokenizer)],
                                  stdout=subprocess.DEVNULL)
    try:
        if server is not None:
            _wait_for_port(port)
        rows = _rounds(args, work, tokenizer, read_records, revs, host)
    finally:
        if server is not None:
            server.kill()
            server.wait()
    _table(args.users, revs, rows)


def _wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _rounds(args: argparse.Namespace, work: Path, tokenizer: Path, read_records, revs: list[str],
            host: str) -> list[dict]:
    """One run per round, stream count and revision (the revisions' order alternating); a row for each."""
    rows = []
    for rnd in range(args.rounds):
        for users in (int(u) for u in args.users.split(",")):
            for rev in revs if rnd % 2 == 0 else revs[::-1]:
                records = work / "records.jsonl"
                records.unlink(missing_ok=True)
                cmd = ["taskset", "-c", args.cpu, sys.executable]
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    cmd += [str(ROOT / "bench/cpu_sampler.py"), str(args.profile / f"{rev}-u{users}-r{rnd}.txt"),
                            sys.executable]
                locustfile = work / rev / "loadtest/locustfile.py" if args.server_cpu is not None else \
                    ROOT / "bench/inmemory_locustfile.py"
                cmd += ["-m", "locust", "-f", str(locustfile), "--headless",
                        "--only-summary", "-H", host, "--protocol", "grpc-stream",
                        "--tokenizer", str(tokenizer), "-u", str(users), "-r", str(users), "--duration",
                        str(args.seconds), "-t", f"{int(args.seconds) + 60}s", "--records", str(records),
                        "--output-tokens-mean", "16", "--input-tokens-mean", "16", "--num-prompts", "16"]
                env = dict(os.environ, TRITONGEN_LOADTEST=str(work / rev / "loadtest"),
                           TRITONGEN_TOKENIZER=str(tokenizer))
                with open(work / "locust.log", "w") as log:  # exit status 1: failed requests, counted below
                    if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                      timeout=args.seconds + 120).returncode not in (0, 1):
                        sys.exit((work / "locust.log").read_text()[-3000:])
                requests, processes, _ = read_records(records)
                errors = sum(r["error"] is not None or len(r["resp_text"]) != 16 for r in requests)
                if errors:
                    print(f"{errors} failed or incomplete, e.g. {next(r['error'] for r in requests if r['error'])}",
                          file=sys.stderr)
                rows.append({"rev": rev, "users": users, "round": rnd, "requests": len(requests), "errors": errors,
                             "us": processes[0]["cpu_s"] * 1e6 / len(requests), "load": os.getloadavg()[0]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _table(users_list: str, revs: list[str], rows: list[dict]) -> None:
    print(f"| streams | {' | '.join(revs)} |\n|---:|{'---:|' * len(revs)}")
    for users in (int(u) for u in users_list.split(",")):
        cells = []
        for rev in revs:
            us = [r["us"] for r in rows if r["users"] == users and r["rev"] == rev]
            cells.append(f"{statistics.median(us):.1f} ({', '.join(f'{u:.1f}' for u in us)})")
        print(f"| {users} | {' | '.join(cells)} |")
    bad = sum(r["errors"] for r in rows)
    print(f"client CPU µs per request, median (each round); {bad} requests failed or incomplete; load average "
          f"{min(r['load'] for r in rows):.1f}-{max(r['load'] for r in rows):.1f}")


if __name__ == "__main__":
    main()
