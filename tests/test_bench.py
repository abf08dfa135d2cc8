"""Every benchmark script in bench/ runs from a clean checkout: it answers ``--help``, and every module it imports,
also inside its functions (where a moved module shows only when the benchmark runs), imports with the paths
the script sets up itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))

# One interpreter checks every script (torch, transformers and ModelOpt imported once, not once per script: 33 s of
# CPU before); each script's --help runs with its own sys.path and sys.argv, and what it printed is kept apart. The
# standard library is patched by gevent first, as importing Locust does, which must come before ssl is imported.
_CHECK = """
from gevent import monkey; monkey.patch_all()
import ast, contextlib, importlib, io, json, runpy, sys, traceback
results = {}
for script in sys.argv[1:]:
    out, path = io.StringIO(), list(sys.path)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
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
        results[script] = {"error": None, "stdout": out.getvalue()}
    except BaseException:
        results[script] = {"error": traceback.format_exc(), "stdout": out.getvalue()}
    finally:
        sys.path[:] = path
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def checked() -> dict[str, dict]:
    run = subprocess.run([sys.executable, "-c", _CHECK, *(str(BENCH / s) for s in SCRIPTS)], capture_output=True,
                         text=True, timeout=600, cwd=BENCH.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    return {Path(k).name: v for k, v in json.loads(run.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_answers_help_and_its_imports_resolve(checked, script):
    assert checked[script]["error"] is None, checked[script]["error"][-3000:]
    assert "usage:" in checked[script]["stdout"], checked[script]["stdout"][-2000:]
