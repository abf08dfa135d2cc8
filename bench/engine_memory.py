"""Resident memory of each Python stub of a served repository, idle and after 16 concurrent requests.

Made for the CPU reference engine at the spec's default limits (issue 14, finding 9): render the tiny
model's repository from the defaults, then serve and measure it:

    tritongen tiny-model tiny && tritongen render -o repo-defaults --set model.source=tiny \\
        --set serving.engine=cpu-reference
    .venv/bin/python bench/engine_memory.py repo-defaults

Prints model name -> RSS in MiB (psutil), at idle after loading and after the requests.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from soak import stub_memory  # noqa: E402

from generator.serve.server import TritonServer  # noqa: E402


def main(repo: Path) -> None:
    with TritonServer(repo) as server:
        print("idle", {k: v[1] for k, v in stub_memory(server.pid).items()})
        url = f"http://{server.http_url}/v2/models/ensemble/generate"

        def one(i: int) -> None:
            requests.post(url, json={"text_input": "Hello there " * (i + 1), "max_tokens": 32}, timeout=300)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("after 16 requests", {k: v[1] for k, v in stub_memory(server.pid).items()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("repo", type=Path, help="a rendered CPU repository (see above)")
    main(parser.parse_args().repo)
