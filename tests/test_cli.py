"""The command line as a user meets it: exit codes per error class, no traceback for anything the user can
cause, user text never read as markup, options made from the spec, one URL rule for every command."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator import errors
from generator.cli._app import EXIT_CODES, exit_code, spec_overrides
from generator.errors import ArtifactCorrupt, OutputExists, SpecError, TritongenError
from generator.serve.endpoints import Endpoints
from generator.serve.ports import free_port

TRITONGEN = str(Path(sys.executable).with_name("tritongen"))
ROOT = Path(__file__).resolve().parents[1]


def tritongen(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([TRITONGEN, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "COLUMNS": "200", **env})


def assert_user_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr and "fix:" in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_every_error_class_needs_a_fix_and_has_its_own_exit_code():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, TritongenError)]
    with pytest.raises(TypeError):
        SpecError("no fix given")  # type: ignore[call-arg]
    for cls in classes:
        if cls is not TritongenError:
            assert exit_code(cls("m", fix="f")) in EXIT_CODES.values(), cls
    assert exit_code(OutputExists("m", fix="f")) == exit_code(SpecError("m", fix="f")) == 2
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert 0 not in EXIT_CODES.values() and 3 not in EXIT_CODES.values()  # success; inconclusive SLO


def test_every_error_is_a_subclass_given_its_fix():
    """Statically, so a raise site no test reaches cannot end in a TypeError instead of the message."""
    classes = {name for name, c in vars(errors).items() if isinstance(c, type) and issubclass(c, TritongenError)}
    for path in (ROOT / "generator").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}  # e.g. smoke's private one
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes - own:
                assert node.func.id != "TritongenError", f"{path}:{node.lineno}: raise a subclass of TritongenError"
                keywords = {k.arg for k in node.keywords}
                assert "fix" in keywords or None in keywords, f"{path}:{node.lineno}: {node.func.id} without fix="


def test_a_spec_that_is_not_utf8_is_a_spec_error(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"model:\n  source: \"\xff\xfe\"\n")
    assert_user_error(tritongen("plan", "bad.yaml", cwd=tmp_path), 2, "bad.yaml", "not UTF-8", "byte 18")


@pytest.mark.parametrize("value", ["\udcff", '"\\ud800"'])
def test_a_lone_surrogate_is_a_spec_error(tmp_path, value):
    proc = tritongen("plan", "--set", f"model.source={value}", cwd=tmp_path)
    assert_user_error(proc, 2, "model.source: not valid text")


@pytest.mark.parametrize("content, needle", [(b"{", "not valid JSON"), (b"[1]", "not a JSON object"),
                                             (b"\xff{}", "not UTF-8")])
def test_a_corrupt_model_config_names_the_file(tmp_path, content, needle):
    (tmp_path / "config.json").write_bytes(content)
    proc = tritongen("plan", "--model-config", "config.json", cwd=tmp_path)
    assert_user_error(proc, EXIT_CODES[ArtifactCorrupt], "config.json", needle)


def test_a_corrupt_engine_config_is_an_artifact_error(tmp_path, tokenizer_weights_dir):
    sets = ["--set", f"artifacts.checkpoint_dir={tokenizer_weights_dir}", "--set", "serving.engine=tensorrtllm",
            "--set", f"artifacts.engine_dir={tmp_path / 'engine'}"]
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "config.json").write_text('{"build_config": ', encoding="utf-8")
    proc = tritongen("render", "-o", "repo", *sets, cwd=tmp_path)
    assert_user_error(proc, EXIT_CODES[ArtifactCorrupt], "engine/config.json", "not valid JSON", "tritongen build")


def test_user_text_is_never_markup(tmp_path):
    # a path with markup-like text: printed as given, no MarkupError
    (tmp_path / "x[").mkdir()
    proc = tritongen("init", "x[/]y.yaml", cwd=tmp_path)
    assert proc.returncode == 0 and "x[/]y.yaml" in proc.stderr, proc.stderr
    again = tritongen("init", "x[/]y.yaml", cwd=tmp_path)
    assert_user_error(again, 2, "x[/]y.yaml: file exists")
    # a value that looks like a style tag reaches the message unaltered
    proc = tritongen("plan", "--set", "model.source=[red]16", cwd=tmp_path)
    assert_user_error(proc, 5, "model [red]16")


def test_loadtest_and_smoke_against_a_closed_port(tmp_path):
    port = free_port()
    for command in ("loadtest", "smoke"):
        proc = tritongen(command, "--url", f"127.0.0.1:{port}", cwd=tmp_path)
        assert_user_error(proc, 10, f"no Triton server answers at http://127.0.0.1:{port}")


def test_one_url_rule_for_every_command():
    ep = Endpoints.from_urls("127.0.0.1:8000")
    assert (ep.http_url, ep.grpc_url, ep.metrics_url) == ("http://127.0.0.1:8000", "127.0.0.1:8001",
                                                          "http://127.0.0.1:8002/metrics")
    assert ep.http_hostport == "127.0.0.1:8000"
    given = Endpoints.from_urls("http://h:80", "g:9", "http://m:7/metrics")
    assert (given.grpc_url, given.metrics_url) == ("g:9", "http://m:7/metrics")
    for bad in ("127.0.0.1:99999", "localhost", "h:port"):
        with pytest.raises(SpecError):
            Endpoints.from_urls(bad)
    with pytest.raises(SpecError):
        Endpoints.from_urls("h:8000", "g:0")
    for command in ("loadtest", "smoke"):
        from generator.cli import app
        from typer.testing import CliRunner

        help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert "--grpc-url" in help_text and "port + 1" in help_text


def test_spec_options_take_choices_and_help_from_the_spec():
    from typer.testing import CliRunner

    from generator.cli import app
    from generator.cli.load_cmds import loadtest

    runner = CliRunner()
    help_text = runner.invoke(app, ["loadtest", "--help"], env={"COLUMNS": "250"}).output
    assert "constant|poisson" in help_text and "http-stream|grpc-stream|http" in help_text
    assert "Arrival process in open-loop mode" in help_text and "(spec: loadtest.arrival)" in help_text
    bad = runner.invoke(app, ["loadtest", "--url", "h:1", "--arrival", "gamma"])
    assert bad.exit_code == 2 and "gamma" in bad.output
    values = {name: None for name in inspect.signature(loadtest).parameters}
    values.update(users=4, arrival="constant", prompts=Path("p.jsonl"))
    assert spec_overrides(loadtest, values) == [
        "loadtest.users=4", 'loadtest.arrival="constant"', f'loadtest.prompts="{Path("p.jsonl").resolve()}"']


def test_output_and_force_are_spelled_the_same_everywhere():
    from typer.main import get_command

    from generator.cli import app

    group = get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if "--force" in param.opts:
                assert param.opts == ["--force"], name
            if "-o" in param.opts or "--output" in param.opts or "--out" in param.opts:
                assert sorted(param.opts) == ["--output", "-o"], (name, param.opts)
            if "--set" in param.opts:
                assert param.multiple, name
            assert "--dir" not in param.opts and not (param.param_type_name == "argument" and param.name in ("dir", "out_dir")), name


@pytest.mark.parametrize("status, needle", [(403, "--admin-key"), (404, "--model"), (400, "ready"), (503, "log")])
def test_an_http_error_from_the_server_gets_the_fix_of_its_status(monkeypatch, capsys, status, needle):
    """urllib's HTTPError is an OSError, but a refused request is not a full disk: the fix follows the status."""
    import signal
    import urllib.error

    import generator.cli as cli

    def refused() -> None:
        raise urllib.error.HTTPError("http://127.0.0.1:1/v2/models/stats", status, "refused", {}, None)

    monkeypatch.setattr(cli, "app", refused)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # main's handlers belong to the CLI, not pytest
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == EXIT_CODES[errors.ServerError]
    printed = capsys.readouterr().err
    assert f"HTTP {status}" in printed and needle in printed.split("fix:")[1]
    assert "free space" not in printed


def test_a_server_that_fails_to_start_keeps_the_log_its_error_names(tmp_path, monkeypatch):
    """review26: `tritongen loadtest REPO` whose server failed to start (a model that fails to load) quoted "last lines
    of the server log (OUT/.out.tmp-*/triton.log)", a log deleted with the output; now the log is kept in OUT as a
    failed load test's are, and the error names it there."""
    from typer.testing import CliRunner

    from generator.cli import app
    from generator.errors import ServerError
    from generator.serve.server import TritonServer

    def fails(self):  # as TritonServer.start's error for a model that failed to load
        self.log_file.write_text("E model 'broken': boom\n", encoding="utf-8")
        raise ServerError(f"failed to load all models\nlast lines of the server log ({self.log_file}):\nE boom",
                          where=str(self.repo_dir), fix="tritongen validate REPO")

    monkeypatch.setattr(TritonServer, "__enter__", fails)
    (tmp_path / "repo").mkdir()
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["loadtest", str(tmp_path / "repo"), "-o", str(out)])
    assert isinstance(run.exception, ServerError), run.output
    log = out.resolve() / "triton.log"
    assert f"({log})" in run.exception.message and "boom" in log.read_text(encoding="utf-8")
    assert f"the logs are kept in {out}" in run.exception.fix
