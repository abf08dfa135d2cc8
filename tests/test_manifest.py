"""tritongen.json is written and read only through `RepoManifest` (generator/repo/manifest.py): it round-trips,
another version or a mangled file is refused with the fix, every reader resolves the recorded spec's paths the
same way, and no other module parses it (checked on the source, like tests/test_architecture.py)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from generator.cli.load_cmds import loadtest_spec
from generator.errors import ArtifactCorrupt
from generator.repo.manifest import MANIFEST, MANIFEST_VERSION, RepoManifest, read_manifest
from generator.repo.render import render_repository
from generator.repo.validate import validate_repository
from generator.spec import EngineTarget
from helpers import small_spec

ROOT = Path(__file__).resolve().parents[1]
OWNERS = {MANIFEST: "generator/repo/manifest.py"}
"""Each file format and the one module that may parse it."""
PARSERS = {"loads", "load", "read_json_object", "safe_load", "read_text"}


@pytest.fixture
def repo(tokenizer_weights_dir, tmp_path):
    spec = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.max_batch_size=2")
    return render_repository(spec, tmp_path / "repo"), spec


def test_render_writes_a_manifest_that_round_trips(repo):
    path, spec = repo
    manifest = read_manifest(path)
    assert isinstance(manifest, RepoManifest) and manifest.manifest_version == MANIFEST_VERSION
    assert (manifest.target, manifest.max_batch_size) == (EngineTarget.cpu_reference, 2)
    assert RepoManifest.model_validate_json(manifest.to_json()) == manifest
    assert manifest.recorded_spec(source="t").model_dump() == spec.model_dump()


def test_every_reader_resolves_the_recorded_spec_alike(repo, tmp_path):
    path, spec = repo
    moved = tmp_path / "elsewhere"
    path.rename(moved)  # a repository copied away from where it was rendered
    from_loadtest = loadtest_spec(None, moved, [])
    from_manifest = read_manifest(moved).recorded_spec(source="t")
    assert from_loadtest.model_dump() == from_manifest.model_dump()
    assert from_loadtest.serving_weights_dir == spec.serving_weights_dir
    assert loadtest_spec(None, moved, ["loadtest.users=3"]).loadtest.users == 3


@pytest.mark.parametrize("mangle, says", [
    (lambda d: {**d, "manifest_version": MANIFEST_VERSION + 1}, "manifest version"),
    (lambda d: {k: v for k, v in d.items() if k != "models"}, "not a tritongen manifest (models"),
    (lambda d: {**d, "max_batch_size": "many"}, "max_batch_size"),
])
def test_another_version_or_a_mangled_manifest_is_refused_with_the_fix(repo, mangle, says):
    path, _ = repo
    data = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps(mangle(data)))
    with pytest.raises(ArtifactCorrupt) as err:
        read_manifest(path)
    assert says in err.value.message and "tritongen render" in err.value.fix
    problems = [p for p in validate_repository(path) if p.file.endswith(MANIFEST)]
    assert problems and says in problems[0].message


def test_validate_compares_the_batch_size_with_a_spec_given_on_the_command_line(repo, tokenizer_weights_dir, tmp_path):
    path, _ = repo
    other = small_spec(tokenizer_weights_dir, tmp_path / "art", "serving.max_batch_size=4")
    assert not any("differs from the spec's" in p.message for p in validate_repository(path))
    hits = [p for p in validate_repository(path, other) if "differs from the spec's 4" in p.message]
    assert hits and hits[0].file.endswith("config.pbtxt")


def _parses_manifest(fn: ast.AST) -> bool:
    names = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute)}
    strings = {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    calls = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
             for c in ast.walk(fn) if isinstance(c, ast.Call)}
    mentions = "MANIFEST" in names or any(s == MANIFEST or s.endswith("/" + MANIFEST) for s in strings)
    return mentions and bool(calls & PARSERS)


def test_the_manifest_is_parsed_only_in_its_module():
    offenders = []
    for folder in ("generator", "loadtest", "bench", "model_repo"):
        for file in sorted((ROOT / folder).rglob("*.py")):
            rel = file.relative_to(ROOT).as_posix()
            if rel in OWNERS.values():
                continue
            tree = ast.parse(file.read_text(encoding="utf-8"))
            offenders += [f"{rel}:{fn.lineno} {fn.name}" for fn in ast.walk(tree)
                          if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _parses_manifest(fn)]
    assert not offenders, "tritongen.json read outside generator/repo/manifest.py:\n" + "\n".join(offenders)
