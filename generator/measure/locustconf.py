"""The Locust configuration of a load test, from the spec: config-file keys, the file's text, the command lines.

Pure, so the local run (generator/measure/runner.py) and the in-cluster manifests (generator/deploy/loadtest.py)
write the same configuration without the deployment files depending on the runner's processes.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import configargparse

from generator.errors import SpecError
from generator.serve.endpoints import Endpoints
from generator.spec import ResolvedLoadTest


def locust_options(lt: ResolvedLoadTest, endpoints: Endpoints, records: Path, locustfile: Path) -> dict[str, Any]:
    """Everything the Locust processes need, as Locust config-file keys (custom ones from loadtest/)."""
    processes = lt.processes
    opts: dict[str, Any] = {
        "locustfile": str(locustfile),
        "headless": True,
        "only-summary": True,
        "exit-code-on-error": 0,
        "host": endpoints.locust_host(lt.protocol),
        # open loop: one dispatching user per process; closed loop: the users.
        "users": processes if lt.open_loop else lt.users,
        "spawn-rate": lt.spawn_rate if not lt.open_loop else float(processes),
        "duration": lt.duration_s,
        "records": str(records),
    }
    for name in ("protocol", "model", "max_requests", "request_rate", "arrival", "prompts", "num_prompts",
                 "input_tokens_mean", "input_tokens_stddev", "output_tokens_mean", "output_tokens_stddev",
                 "tokenizer", "seed", "warmup_requests", "request_timeout_s", "openai_body", "trace", "time_scale",
                 "trace_block_tokens", "shared_prefix_tokens", "prefix_groups", "turns", "grpc_streams"):
        value = getattr(lt, name)
        if value is not None:
            opts[name.replace("_", "-")] = json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else value
    return opts


_CONF_FIELDS = {"host": "--url", "records": "the output folder (-o)", "locustfile": "the loadtest/ folder"}
"""Where a config-file value that is not a ``loadtest.*`` field comes from, for the refusal."""


def locust_conf_text(options: dict[str, Any]) -> str:
    """The config file's text. Its format (``key = value`` lines) has no escapes: a value that Locust
    would read back differently (a line break adds options; ``[``, quotes, `` #``, edge spaces change
    the value) is refused, naming the spec field, rather than written."""
    lines = ["# Written by tritongen loadtest; rerun with: python -m locust --config locust.conf"]
    for key, value in options.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        line = f"{key} = {text}"
        read = configargparse.DefaultConfigFileParser().parse(io.StringIO(line, newline=None))  # as open() reads
        if len(line.splitlines()) != 1 or read != {key: text}:
            field = _CONF_FIELDS.get(key, "loadtest." + key.replace("-", "_"))
            raise SpecError(f"{field} is {text!r}, which Locust's config file cannot hold as one value "
                            "(line breaks, leading [ or quotes, ' #' or ' ;', spaces at either end)",
                            where=field, fix=f"choose a {field} without those characters")
        lines.append(line)
    return "\n".join(lines) + "\n"


WORKERS_CONNECT_S = 120
"""How long a local master waits for all its workers to connect (they start beside it, in seconds on a loaded
machine). Locust's default waits for ever: a worker that died before it connected held the run until its
whole timeout (about 12 minutes with the defaults), with an empty records file."""


def locust_commands(
    conf: Path, locustfile: Path, workers: int, master_port: int, *, python: str = sys.executable,
    prefix: Sequence[str] = (),
) -> list[list[str]]:
    """The master (or the only process) first, then the workers."""
    base = [*prefix, python, "-m", "locust"]
    if workers <= 0:
        return [[*base, "--config", str(conf)]]
    master = [*base, "--config", str(conf), "--master", "--master-bind-host", "127.0.0.1",
              "--master-bind-port", str(master_port), "--expect-workers", str(workers),
              "--expect-workers-max-wait", str(WORKERS_CONNECT_S)]
    worker = [*base, "-f", str(locustfile), "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)]
    return [master] + [list(worker) for _ in range(workers)]
