"""Every benchmark script in bench/ runs from a clean checkout: it answers ``--help``, and every module it imports,
also inside its functions (where a moved module shows only when the benchmark runs), imports with the paths
the script sets up itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

_CHECK = """
import ast, importlib, runpy, sys
script = sys.argv[1]
sys.argv = [script, "--help"]
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exc:
    assert exc.code in (0, None), f"--help exited with {exc.code}"
else:
    raise AssertionError("--help did not stop the script")
names = set()
for node in ast.walk(ast.parse(open(script, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
        names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names.add(node.module)
for name in sorted(names):
    importlib.import_module(name)
"""


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_bench_script_answers_help_and_its_imports_resolve(script):
    run = subprocess.run([sys.executable, "-c", _CHECK, str(BENCH / script)], capture_output=True, text=True,
                         timeout=300, cwd=BENCH.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "usage:" in run.stdout, run.stdout[-2000:]
