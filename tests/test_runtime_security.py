"""Issue 23, the runtime side: what reaches Locust's config file, the distributed Locust master's
authentication and a lost worker, ``stop`` scoped to its own client, prompt length before tokenizing,
and the LLM-API stand-in's errors.

Locust's config file is read by Locust's own parser in a subprocess (importing Locust here would
monkey-patch this process); the server tests use the session's servers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from generator.errors import SpecError
from generator.measure.locustconf import locust_conf_text, locust_options
from generator.serve.endpoints import Endpoints
from generator.spec import LoadTestSpec
from generator.spec.load import spec_from_dict

HOSTILE = [
    "ensemble\nlocustfile = /tmp/evil.py", "m\rhost = http://evil:1", "m\u2028x", "[a, b]", '"quoted"',
    "a # comment", "a ; comment", " padded ", "m\x00n", "tab\there", "ok-name.v2", "path/with spaces/x",
]
"""Line breaks (\\n, \\r, Unicode's), list and quote syntax, inline comments, edge spaces, NUL; and two
harmless values that must pass unchanged."""

_LOCUST_READS = """
import json, sys
from locust.argument_parser import LocustConfigParser
out = []
for path in json.loads(sys.argv[1]):
    with open(path, encoding="utf-8") as f:
        out.append({k: str(v) for k, v in LocustConfigParser().parse(f).items()})
print(json.dumps(out))
"""


def test_hostile_values_never_change_what_locust_reads_from_its_config(tmp_path):
    """Finding 7: a value either reaches Locust exactly as given (Locust's own parser reads every key
    back unchanged, no key added or replaced) or is refused naming the field it came from."""
    base = locust_options(LoadTestSpec(), Endpoints.from_urls("127.0.0.1:8000"), tmp_path / "records.jsonl",
                          tmp_path / "locustfile.py")
    written, refused = [], 0
    for key in ("model", "prompts", "tokenizer", "records", "host"):
        for value in HOSTILE:
            options = {**base, key: value}
            try:
                text = locust_conf_text(options)
            except SpecError as exc:
                assert exc.where == {"host": "--url", "records": "the output folder (-o)"}.get(key, f"loadtest.{key}")
                refused += 1
                continue
            path = tmp_path / f"{len(written)}.conf"
            path.write_text(text, encoding="utf-8")
            written.append((path, options))
    assert refused and len(written) >= 2 * 5  # the harmless values pass
    out = subprocess.run([sys.executable, "-c", _LOCUST_READS, json.dumps([str(p) for p, _ in written])],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    for (_, options), read in zip(written, json.loads(out)):
        assert read == {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}


def test_a_model_name_with_a_line_break_is_refused_by_the_spec():
    with pytest.raises(SpecError, match="loadtest.model"):
        spec_from_dict({"loadtest": {"model": "ensemble\nlocustfile = /tmp/evil.py"}})
