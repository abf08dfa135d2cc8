"""The dependency rules of docs/architecture.md, checked on the imports themselves (ast), lazy ones included.

- model_repo/ runs inside Triton's Python backend and never imports generator;
- loadtest/ runs in Locust's process and generator never imports it;
- only generator/cli imports typer;
- the pure deciders start no process and touch no network, not even through what they import;
- generator's parts depend downwards only (cli → demo → measure → serve → repo → engine → model → spec → errors);
- generator's modules import each other without a cycle.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Modules that decide from data and files: spec in, plan / files / problems / figures out.
PURE = (
    "generator.errors", "generator.fsutil", "generator.resources", "generator.templating",
    "generator.spec", "generator.spec.*",
    "generator.engine.gpus", "generator.engine.plan*", "generator.engine.shape", "generator.engine.memory",
    "generator.engine.flags", "generator.engine.facts", "generator.engine.compare", "generator.engine.calibration",
    "generator.engine.rules",
    "generator.repo.render", "generator.repo.validate*", "generator.repo.llmapi", "generator.repo.problems",
    "generator.repo.enginecheck", "generator.model.manifest",
    "generator.serve.dialect", "generator.serve.adminapi", "generator.serve.startlog", "generator.deploy.pod_security", "generator.serve.endpoints", "generator.measure.locustconf", "generator.measure.records", "generator.measure.request_figures", "generator.measure.results", "generator.measure.statistics",
    "generator.measure.verdict", "generator.measure.slo", "generator.measure.intervals", "generator.measure.metrics",
    "generator.measure.identity", "generator.measure.evidence", "generator.measure.compare", "generator.measure.gate",
    "generator.measure.ci",
    "generator.measure.attainment", "generator.measure.goodput", "generator.measure.predict",
    "generator.measure.tune_results",
)
PROCESS_OR_NETWORK = ("subprocess", "socket", "requests", "urllib.request", "urllib.error", "http.client", "tritonclient", "huggingface_hub",
                      "multiprocessing", "asyncio.subprocess", "grpc", "locust", "gevent")


def is_pure(module: str) -> bool:
    return any(_matches(module, pattern) for pattern in PURE)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports_of(path: Path) -> frozenset[str]:
    """Every module ``path`` imports anywhere (top level, in functions, under TYPE_CHECKING), with the
    ``from X import y`` form also giving ``X.y`` (it may be a submodule)."""
    module = module_name(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, path.name == "__init__.py")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


@lru_cache(maxsize=None)
def generator_graph() -> dict[str, set[str]]:
    """generator module → the generator modules it imports (a package's own submodules excluded: importing
    ``generator.spec.schema`` runs ``generator/spec/__init__.py`` but that is not an edge back)."""
    modules = {module_name(p): p for p in files("generator")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in imports_of(path) if t in modules and t != name}
        graph[name] = {t for t in targets if not (path.name == "__init__.py" and t.startswith(name + "."))}
    return graph


def _matches(module: str, pattern: str) -> bool:
    return module.startswith(pattern[:-1]) if pattern.endswith("*") else module == pattern


def _is(module: str, banned: str) -> bool:
    return module == banned or module.startswith(banned + ".")


def test_model_repo_never_imports_generator():
    bad = [(p.relative_to(ROOT), t) for p in files("model_repo") for t in imports_of(p) if _is(t, "generator")]
    assert not bad, f"model_repo/ must stand alone inside a rendered repository: {bad}"


def test_generator_never_imports_loadtest():
    bad = [(p.relative_to(ROOT), t) for p in files("generator") for t in imports_of(p) if _is(t, "loadtest")]
    assert not bad, f"loadtest/ runs in Locust's process only: {bad}"


def test_only_the_cli_imports_typer():
    bad = [p.relative_to(ROOT) for p in files("generator")
           if not module_name(p).startswith("generator.cli") and any(_is(t, "typer") for t in imports_of(p))]
    assert not bad, f"typer outside generator/cli: {bad}"


def test_pure_deciders_reach_no_process_or_network_module():
    graph = generator_graph()
    modules = {module_name(p): p for p in files("generator")}
    pure = sorted(m for m in graph if is_pure(m))
    assert {"generator.spec.schema", "generator.engine.plan", "generator.repo.render", "generator.repo.validate"} <= set(pure)
    problems = []
    for start in pure:
        seen, todo, via = {start}, [start], {start: start}
        while todo:
            current = todo.pop()
            for banned in PROCESS_OR_NETWORK:
                hits = [t for t in imports_of(modules[current]) if _is(t, banned)]
                if hits:
                    problems.append(f"{start} → {via[current]}: imports {hits[0]}")
            for nxt in graph[current]:
                if nxt not in seen:
                    seen.add(nxt)
                    via[nxt] = f"{via[current]} → {nxt}" if current != start else nxt
                    todo.append(nxt)
    assert not problems, "pure deciders must start no process and touch no network:\n" + "\n".join(problems)


# generator's parts from the top (the command line) down. A module imports from its own layer or below; above
# it, only pure modules (shared vocabulary such as the endpoint rule or the Locust configuration), never an edge.
# The repository and its deployment files (Kubernetes, launch script) are one layer: render writes both.
LAYERS = ("cli", "demo", "measure", "serve", ("repo", "deploy"), "engine", "model", "spec",
          ("procs", "_guard", "fsutil", "resources", "templating"), "errors")


def layer(module: str) -> int:
    part = module.split(".")[1]
    return next(i for i, entry in enumerate(LAYERS) if part == entry or part in entry)


def test_stages_depend_downwards_only():
    graph = generator_graph()
    parts = {m.split(".")[1] for m in graph if m != "generator"}
    known = {p for entry in LAYERS for p in ((entry,) if isinstance(entry, str) else entry)}
    assert parts <= known, f"a new part of generator/ needs its place in LAYERS: {parts - known}"
    upward = [f"{a} → {b}" for a, targets in graph.items() if a != "generator" for b in targets
              if layer(b) < layer(a) and not is_pure(b)]
    assert not upward, "imports against the pipeline's direction:\n" + "\n".join(sorted(upward))


def test_generator_modules_import_without_a_cycle():
    graph = generator_graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The rules above would pass vacuously if the parser missed imports inside functions."""
    path = ROOT / "generator" / "demo.py"
    assert "generator.serve.server" in imports_of(path)  # imported inside a stage function
    assert "generator.measure.runner" in generator_graph()["generator.demo"]


def test_no_function_in_generator_is_longer_than_80_lines():
    """Long deciders hide their rules: split them into named steps (issue 24)."""
    long = []
    for file in sorted((ROOT / "generator").rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
