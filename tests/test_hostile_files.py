"""Hostile repositories: validate, import and diff read only bounded regular files inside the repository,
never print what they find elsewhere, report every file they could not read, and import never lets the
repository's text become spec keys or turn on trust_remote_code and foreign folders by itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.errors import ArtifactCorrupt, SpecError
from generator.measure.records import MAX_LINE_BYTES, read_records, records_header
from generator.repo.importer import import_repository
from generator.repo.meaning import diff_meanings, read_meaning
from generator.repo.problems import MAX_CONFIG_BYTES
from generator.repo.render import render_repository
from generator.repo.validate import validate_repository
from generator.repo.validate_artifacts import tokenizer_load_error
from generator.spec import load_spec

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
"""About 600 bytes that expand to 9**9 values."""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {engine: render_repository(load_spec(None, [f"serving.engine={engine}", f"artifacts.dir={root / 'art'}"]),
                                      root / engine)
            for engine in ("llmapi", "cpu-reference")}


@pytest.fixture
def llmapi(rendered, tmp_path) -> Path:
    return Path(shutil.copytree(rendered["llmapi"], tmp_path / "llmapi", symlinks=True))


@pytest.fixture
def cpu(rendered, tmp_path) -> Path:
    return Path(shutil.copytree(rendered["cpu-reference"], tmp_path / "cpu", symlinks=True))


def messages(repo: Path) -> str:
    return "\n".join(f"{p.file}: {p.message}" for p in validate_repository(repo))


def test_alias_bomb_model_yaml_is_one_problem_not_a_hang(llmapi, rendered):
    (llmapi / "tensorrt_llm" / "1" / "model.yaml").write_text(ALIAS_BOMB)
    assert "alias bomb" in messages(llmapi)
    assert "model.yaml" in " ".join(read_meaning(llmapi).unreadable)
    differences = diff_meanings(read_meaning(rendered["llmapi"]), read_meaning(llmapi))
    assert any(d.where.endswith("model.yaml") and d.b == "does not parse" for d in differences)


@pytest.mark.parametrize("kind", ["dev-zero", "sparse-2GiB", "binary", "deep", "past-its-bound"])
def test_model_yaml_that_is_no_text_file_is_one_problem(llmapi, kind):
    """past-its-bound (review20): a model.yaml of valid keys past MAX_CONFIG_BYTES is not parsed (PyYAML took 5 s of
    CPU a MiB, twice in validate and once per side in import and diff, up to the 64 MiB any file may have)."""
    path = llmapi / "tensorrt_llm" / "1" / "model.yaml"
    text = path.read_text()
    path.unlink()
    if kind == "past-its-bound":
        path.write_text(text + "".join(f"k{i:07d}: {i}\n" for i in range(MAX_CONFIG_BYTES // 10)))
        assert str(path) in read_meaning(llmapi).unreadable
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "sparse-2GiB":
        with open(path, "wb") as f:
            f.truncate(2 << 30)
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00model: x\n")
    else:
        path.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    text = messages(llmapi)
    assert {"dev-zero": "resolves outside", "sparse-2GiB": "more than", "binary": "not UTF-8",
            "deep": "nested deeper", "past-its-bound": f"more than the {MAX_CONFIG_BYTES:,}"}[kind] in text


def test_fifo_config_does_not_block_validate_import_or_diff(cpu, rendered, tmp_path):
    """A FIFO as a model's config.pbtxt: every command finishes (in a subprocess, so a regression cannot hang
    the suite) and names the file."""
    evil = cpu / "evil"
    evil.mkdir()
    os.mkfifo(evil / "config.pbtxt")
    for args, code in ((["validate", str(cpu)], 0), (["diff", str(rendered["cpu-reference"]), str(cpu)], 1),
                       (["import", str(cpu), "-o", str(tmp_path / "spec.yaml")], 0)):
        run = subprocess.run([sys.executable, "-c", "from generator.cli import main; main()", *args],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
        assert run.returncode == code, (args, run.stdout, run.stderr)
        if args[0] != "validate":  # validate checks the models a repository of this layout has
            assert "evil" in run.stdout + run.stderr


def test_diff_never_reads_or_prints_files_outside_the_repositories(cpu, tmp_path):
    """gpt_model_path naming a folder outside the repository (here one holding registry credentials as
    config.json) is not read: diff says so, and neither secret appears."""
    repos = []
    for name in ("a", "b"):
        secret = tmp_path / f"docker-{name}"
        secret.mkdir()
        (secret / "config.json").write_text(json.dumps({"auths": {"registry.example": {"auth": f"SECRET-{name}"}}}))
        repo = tmp_path / f"repo-{name}"
        (repo / "tensorrt_llm").mkdir(parents=True)
        (repo / "tensorrt_llm" / "config.pbtxt").write_text(
            'name: "tensorrt_llm"\nbackend: "tensorrtllm"\nmax_batch_size: 1\n'
            f'parameters {{ key: "gpt_model_path" value {{ string_value: "{secret}" }} }}\n')
        repos.append(repo)
    result = CliRunner().invoke(app, ["diff", str(repos[0]), str(repos[1])], env={"COLUMNS": "300"})
    assert "SECRET" not in result.output
    assert "not compared" in result.output and "outside" in result.output


@pytest.mark.parametrize("layout, link", [("cpu", "tensorrt_llm/config.pbtxt"), ("cpu", "postprocessing"),
                                          ("llmapi", "tensorrt_llm/config.pbtxt")])
def test_validate_never_quotes_a_config_pbtxt_that_resolves_outside_the_repository(request, tmp_path, layout, link):
    """review19: a config.pbtxt (or a whole model folder) linked to a one-line token file elsewhere, such as
    ~/.cache/huggingface/token: validate parsed it and its protobuf error quoted the token ("has no field named
    hf_…"), into the CI log of whoever validated a foreign repository. Import and diff already refused it."""
    repo = request.getfixturevalue(layout)
    token = tmp_path / "home" / "token"
    token.parent.mkdir()
    token.write_text("hf_SECRETqwertyuiop\n")
    (token.parent / "config.pbtxt").symlink_to(token)
    target = repo / link
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.symlink_to(token.parent if link == "postprocessing" else token)
    found = messages(repo)
    assert "SECRET" not in found and re.search(r"config\.pbtxt: resolves outside", found), found


@pytest.mark.parametrize("swapped", ["file", "folder"])
def test_a_config_pbtxt_swapped_for_a_link_after_its_check_is_not_read(cpu, tmp_path, monkeypatch, swapped):
    """review20: whoever can write into the repository while validate runs swaps postprocessing's config.pbtxt (or
    its whole folder) for a link to a token file elsewhere between the check that it resolves inside and its
    open: the token was read and quoted in the parse error (a race hit 400 times in 10 s). Here the swap
    happens exactly then, inside the open."""
    token = tmp_path / "home" / "token"
    token.parent.mkdir()
    token.write_text("hf_SECRETqwertyuiop\n")
    (token.parent / "config.pbtxt").symlink_to(token)
    target = cpu / "postprocessing" / "config.pbtxt"
    real_open, swaps = os.open, []

    def swap_then_open(path, *args, **kwargs):
        if str(path) == str(target) and not swaps:
            swaps.append(path)
            if swapped == "file":
                target.unlink()
                target.symlink_to(token)
            else:
                target.parent.rename(cpu / "moved-away")
                target.parent.symlink_to(token.parent)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    found = messages(cpu)
    assert swaps and "SECRET" not in found, found
    assert re.search(r"postprocessing/config\.pbtxt: (cannot be opened|changed while it was read)", found), found


@pytest.fixture(scope="module")
def engine_layout(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine-layout")
    return render_repository(load_spec(None, ["serving.engine=tensorrtllm", f"artifacts.dir={root / 'art'}"]),
                             root / "repo")


def test_validate_never_quotes_manifests_or_a_launch_script_that_resolve_outside_the_repository(engine_layout, tmp_path):
    """review21: kubernetes.yaml and kubernetes-loadtest.yaml of a foreign repository linked to a Deployment
    elsewhere: validate read it and its warnings named that Deployment, its image and its replicas."""
    repo = Path(shutil.copytree(engine_layout, tmp_path / "repo", symlinks=True))
    elsewhere = tmp_path / "home" / "deploy.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: SECRET-name}\nspec:\n"
                         "  replicas: SECRET-replicas\n  template: {spec: {containers: [{name: c, image: SECRET-image}]}}\n")
    for name in ("kubernetes.yaml", "kubernetes-loadtest.yaml", "launch.sh"):
        (repo / name).unlink()
        (repo / name).symlink_to(elsewhere)
    found = messages(repo)
    assert "SECRET" not in found, found
    for name in ("kubernetes.yaml", "kubernetes-loadtest.yaml", "launch.sh"):
        assert re.search(rf"{re.escape(name)}: resolves outside", found), found


def test_manifests_of_many_values_or_problems_are_checked_and_printed_within_bounds(engine_layout, tmp_path):
    """review22: each YAML document was bounded alone: 600,000 documents ``--- {}`` (4 MiB) took validate 8 minutes
    and printed 1.2 million lines, a Deployment of 5,000 containers (0.5 MiB) 40,000 problems in 43 s. A manifest's
    documents are bounded together, and the table shows at most ROWS_PER_FILE problems of a file."""
    from generator.cli.repo_cmds import ROWS_PER_FILE

    repo = Path(shutil.copytree(engine_layout, tmp_path / "repo", symlinks=True))
    with open(repo / "kubernetes.yaml", "a") as f:
        f.write(("--- [" + "0, " * 60_000 + "]\n") * 2)
    with open(repo / "kubernetes-loadtest.yaml", "a") as f:
        f.write("--- {}\n" * (ROWS_PER_FILE + 20))
    result = CliRunner().invoke(app, ["validate", str(repo)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and re.search(r"kubernetes\.yaml\s*│ its \d+ YAML documents hold more than", result.output)
    more = re.search(r"kubernetes-loadtest\.yaml\s*│\s*(\d+) more problem\(s\) in this file", result.output)
    assert more and int(more.group(1)) >= 20, result.output
    assert result.output.count("kubernetes-loadtest.yaml:") == ROWS_PER_FILE


@pytest.mark.parametrize("manifest, document", [
    ("kubernetes-loadtest.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: [1, 2]\n"),
    ("kubernetes.yaml", "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\nrules: [7]\n"),
    ("kubernetes.yaml", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
                        "spec: {template: {spec: {securityContext: [1], containers: [{name: c}]}}}\n"),
], ids=["configmap-data-list", "role-rules-number", "pod-security-context-list"])
def test_a_manifest_field_of_the_wrong_type_is_a_problem_not_a_traceback(engine_layout, tmp_path, manifest, document):
    """review22 (Low): a list or text where a manifest has a mapping (92 of 192 spellings tried) ended validate in an
    AttributeError or TypeError traceback: the rules and the security review read only documents the schema accepts."""
    repo = Path(shutil.copytree(engine_layout, tmp_path / "repo", symlinks=True))
    with open(repo / manifest, "a") as f:
        f.write("---\n" + document)
    kind = re.search(r"kind: (\w+)", document).group(1)
    assert re.search(rf"{re.escape(manifest)}: {kind}/\w+ is not valid for Kubernetes", messages(repo)), messages(repo)


def test_an_engine_instance_group_of_count_0_is_the_one_instance_triton_starts(engine_layout, tmp_path):
    """review21 (Low): ``count: 0`` is Triton's default count, 1; validate's topology check read 0 instances."""
    repo = Path(shutil.copytree(engine_layout, tmp_path / "repo", symlinks=True))
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    assert "count: 1 kind: KIND_CPU" in cfg.read_text()
    cfg.write_text(cfg.read_text().replace("count: 1 kind: KIND_CPU", "count: 0 kind: KIND_CPU"))
    assert "instance(s)" not in messages(repo)
    cfg.write_text(cfg.read_text().replace("count: 0 kind: KIND_CPU", "count: 2 kind: KIND_CPU"))
    assert "runs 2 instance(s)" in messages(repo)


def test_validate_and_import_never_print_a_value_of_a_config_json_a_repository_names(tmp_path):
    """Second review: gpt_model_path naming a folder outside the repository whose config.json holds text
    where an engine has a number: validate and import name the key and the type found, never the text
    (they printed ``pretrained_config.mapping.tp_size is 'SECRET-…'``)."""
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "config.json").write_text(json.dumps({"version": "1.2.1", "pretrained_config": {
        "dtype": "SECRET-dtype", "mapping": {"tp_size": "SECRET-tp", "pp_size": 1, "world_size": 1}}}))
    repo = render_repository(load_spec(None, ["serving.engine=tensorrtllm", f"artifacts.dir={tmp_path / 'art'}"]),
                             tmp_path / "repo")
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    cfg.write_text(re.sub(r'(key: "gpt_model_path" value \{ string_value: )"[^"]*"', rf"\1{json.dumps(str(secret))}",
                          cfg.read_text()))
    runner = CliRunner()
    for args in (["validate", str(repo)], ["import", str(repo), "-o", str(tmp_path / "spec.yaml")]):
        result = runner.invoke(app, args, env={"COLUMNS": "300"})
        assert "tp_size" in result.output and "SECRET" not in result.output, result.output
    assert "SECRET" not in (tmp_path / "spec.yaml").read_text()


UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize("value", ["x\\e[2A\\e[1G\\e[J", "\\x9b2J\\a", "\\u202eedoc_etomer"],
                         ids=["csi-erase", "c1-csi-bell", "bidi-override"])
def test_no_repository_text_reaches_the_terminal_as_a_control_character(llmapi, rendered, value):
    """A value of a foreign model.yaml that moved the cursor up and erased the screen hid diff's rows (the
    trust_remote_code one among them); every user value the CLI prints goes through one escape."""
    yml = llmapi / "tensorrt_llm" / "1" / "model.yaml"
    yml.write_text(yml.read_text() + f'zz_note: "{value}"\n')
    result = CliRunner().invoke(app, ["diff", str(llmapi), str(rendered["llmapi"])], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "zz_note" in result.output
    assert not UNPRINTABLE.search(result.output)
    text = yaml.safe_load(yml.read_text())["zz_note"]
    assert "".join(f"\\x{ord(c):02x}" if UNPRINTABLE.match(c) and ord(c) < 0x100 else
                   f"\\u{ord(c):04x}" if UNPRINTABLE.match(c) else c for c in text) in result.output


def test_a_tokenizer_folder_never_reaches_the_terminal_through_transformers_own_log(tmp_path, capfd):
    """review21: a tokenizer_dir whose config.json had an ESC sequence as its model_type: transformers' own warning
    ("You are using a model of type ...") wrote it raw to the terminal during validate, past the CLI's escape."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "\x1b[2J\x1b[8mhidden"}))
    assert tokenizer_load_error(str(tmp_path))  # the folder holds no tokenizer: a problem validate reports
    captured = capfd.readouterr()
    assert "\x1b" not in captured.err + captured.out and "hidden" not in captured.err, captured


def test_a_tokenizer_folder_with_its_own_code_is_never_run_or_offered_to_run(tmp_path, monkeypatch):
    """review22: a tokenizer_dir with an auto_map (and no model type transformers knows): AutoTokenizer asked on the
    terminal "Do you wish to run the custom code? [y/N]", and the answer "y" ran the folder's Python inside validate."""
    ran = tmp_path / "ran"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["mine.Mine", None]},
                                                                "tokenizer_class": "Mine"}))
    (tmp_path / "mine.py").write_text(f"open({str(ran)!r}, 'w').close()\n"
                                      "from transformers import PreTrainedTokenizerFast as Mine\n")
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "y")  # a user who says yes
    assert tokenizer_load_error(str(tmp_path))  # the folder does not load: a problem validate reports
    assert asked == [] and not ran.exists()


@pytest.mark.parametrize("model_type, modelopt", [("mine", False), ("resnet", True)], ids=["plain", "modelopt"])
def test_a_model_folder_with_its_own_code_is_never_run_or_offered_to_run_by_the_cpu_engine(tmp_path, monkeypatch,
                                                                                           model_type, modelopt):
    """review23: the CPU engine's load_causal_lm read a plain model folder (what it serves for quantization none) with
    transformers' default trust_remote_code; a config.json with an auto_map and an unknown model_type asked on stdin
    (a terminal under launch.sh) "Do you wish to run the custom code? [y/N]", and "y" ran the folder's Python.
    review24: so did a ModelOpt checkpoint (hf_quant_config.json) whose config is of a known type that is no causal LM
    (resnet), built with from_config; its name_or_path led transformers to the folder's module."""
    from generator.model.quality import checkpoint_loader

    ran = tmp_path / "ran"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "name_or_path": str(tmp_path), "auto_map": {
        "AutoConfig": "mine.Config", "AutoModelForCausalLM": "mine.Model"}}))
    (tmp_path / "mine.py").write_text(f"open({str(ran)!r}, 'w').close()\n"
                                      "from transformers import LlamaConfig as Config, LlamaForCausalLM as Model\n")
    if modelopt:
        import torch
        from safetensors.torch import save_file

        (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": None}}))
        save_file({"w": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt="": asked.append(prompt) or "y")  # a user who says yes
    with pytest.raises(ValueError, match="custom code"):
        checkpoint_loader().load_causal_lm(tmp_path)
    assert asked == [] and not ran.exists()


def test_serve_and_smoke_never_write_their_log_or_report_over_the_repository(rendered, tmp_path):
    """review23: ``serve REPO --log-file REPO/F`` opened F for writing (truncated) before the server read the
    repository, and ``smoke REPO --json REPO/F`` replaced F after its checks: both now refuse before anything starts."""
    repo = shutil.copytree(rendered["cpu-reference"], tmp_path / "repo")
    kept = (repo / "tritongen.json").read_bytes()
    runs = [CliRunner().invoke(app, [command, str(repo), option, str(repo / "tritongen.json")])
            for command, option in (("serve", "--log-file"), ("smoke", "--json"))]
    assert [type(r.exception).__name__ for r in runs] == ["OutputExists"] * 2, [r.output for r in runs]
    assert all("the repository" in str(r.exception) for r in runs)
    assert (repo / "tritongen.json").read_bytes() == kept


def test_the_cli_prints_through_its_own_escape_only():
    """rich's escape handles markup only: a module importing it would print control characters again."""
    import ast

    cli = Path(__file__).resolve().parents[1] / "generator" / "cli"
    direct = [f.name for f in cli.glob("*.py") for node in ast.walk(ast.parse(f.read_text()))
              if isinstance(node, ast.ImportFrom) and node.module == "rich.markup" and f.name != "_app.py"]
    assert direct == []


def test_diff_does_not_call_a_repository_with_an_unparseable_model_equal(cpu, rendered):
    cfg = cpu / "preprocessing" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "\nthis is not protobuf {\n")
    result = CliRunner().invoke(app, ["diff", str(rendered["cpu-reference"]), str(cpu)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "preprocessing/config.pbtxt" in result.output


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00", b"[" * 200_000])
def test_binary_or_deep_tritongen_json_is_a_problem_not_a_traceback(cpu, content):
    (cpu / "tritongen.json").write_bytes(content)
    text = messages(cpu)
    assert "tritongen.json" in text and ("not UTF-8" in text or "nested deeper" in text)


def test_binary_launch_script_is_a_problem_not_a_traceback(cpu):
    (cpu / "launch.sh").write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    assert "launch.sh: not UTF-8" in messages(cpu)


@pytest.mark.parametrize("content", [b"\xff\xfe{}\n", b"[" * 200_000 + b"\n", b"[1, 2]\n"])
def test_records_that_are_no_records_are_an_error_naming_the_line(tmp_path, content):
    path = tmp_path / "records.jsonl"
    path.write_bytes(json.dumps(records_header()).encode() + b"\n" + content)
    with pytest.raises(ArtifactCorrupt) as err:
        read_records(path)
    assert "line 2" in err.value.message and err.value.where == str(path)


def test_a_records_line_is_read_bounded(tmp_path):
    """A run folder from someone else: a sparse records.jsonl without newlines (no disk used) is refused after
    at most one bounded line, not read whole into memory first (6 GiB held 12.8 GB before)."""
    import tracemalloc

    path = tmp_path / "records.jsonl"
    path.write_bytes(json.dumps(records_header()).encode() + b"\n")
    os.truncate(path, 4 * MAX_LINE_BYTES)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactCorrupt) as err:
            read_records(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "line 2" in err.value.message and peak < 3 * MAX_LINE_BYTES  # one line and its copy, not the file


def _set_engine_path(repo: Path, value: str) -> None:
    """Make the CPU repository an engine one whose gpt_model_path is ``value`` (pbtxt-escaped text)."""
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    text = cfg.read_text().replace('backend: "python"', 'backend: "tensorrtllm"', 1)
    cfg.write_text(text + f'\nparameters {{ key: "gpt_model_path" value {{ string_value: "{value}" }} }}\n')


def test_import_keeps_repository_text_in_its_comments(cpu, tmp_path):
    """Finding 5: a newline in gpt_model_path used to end the `# not inferred:` comment and add spec keys."""
    _set_engine_path(cpu, "/e\\nmodel:\\n  trust_remote_code: true\\nkubernetes:\\n  image: evil\\n#")
    out = tmp_path / "spec.yaml"
    result = CliRunner().invoke(app, ["import", str(cpu), "-o", str(out)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(out.read_text())
    assert "kubernetes" not in written and "trust_remote_code" not in written.get("model", {})
    assert all(line.startswith("#") for line in out.read_text().splitlines()[:3])
    assert load_spec(out).model.trust_remote_code is False
    kept = CliRunner().invoke(app, ["import", str(cpu), "-o", str(tmp_path / "kept.yaml"), "--keep-paths"])
    assert isinstance(kept.exception, SpecError) and "artifacts.engine_dir" in kept.exception.message
    assert not (tmp_path / "kept.yaml").exists()


@pytest.mark.parametrize("value", ["²", "9" * 5000])
def test_a_count_that_is_no_integer_is_not_imported(cpu, value):
    """review19: preprocessing's max_input_len "²" (a digit to str.isdigit, not to int) or 5,000 digits (past int's
    limit) was a ValueError traceback from import."""
    cfg = cpu / "preprocessing" / "config.pbtxt"
    _set_parameter_text(cfg, "max_input_len", value)
    assert import_repository(cpu).spec["build"]["max_input_len"] != value


def test_a_config_past_its_bound_is_one_problem_and_a_huge_count_no_traceback(cpu):
    """review19: 2.8 MB of parameters in tensorrt_llm/config.pbtxt held validate 65 s and diff 37 s of CPU (protobuf's
    pure-Python parser and a did-you-mean per unknown key; 64 MiB would have been over ten minutes each); a
    max_beam_width of 5,000 digits was a ValueError traceback from validate's integer check."""
    _set_parameter_text(cpu / "tensorrt_llm" / "config.pbtxt", "max_beam_width", "9" * 5000)
    assert re.search(r"max_beam_width' must be a non-negative integer", messages(cpu))
    cfg = cpu / "preprocessing" / "config.pbtxt"
    cfg.write_text(cfg.read_text() + "#" * (300 << 10) + "\n")  # a comment: a config some 15 times NVIDIA's largest
    assert re.search(r"preprocessing/config\.pbtxt: [\d,]+ bytes, more than the", messages(cpu))
    assert str(cfg) in read_meaning(cpu).unreadable


@pytest.mark.parametrize("repo_kind, file, text", [
    ("llmapi", "tensorrt_llm/1/model.yaml", "model: [unclosed\n"),
    ("llmapi", "tensorrt_llm/1/model.yaml", "- model: /weights\n"),
    ("cpu", "tensorrt_llm/config.pbtxt", 'name: "tensorrt_llm"\nmax_batch_size: 8\nmax_batch_size: 16\n'),
])
def test_import_names_the_file_it_cannot_read_not_a_guess(request, tmp_path, repo_kind, file, text):
    """review30: a model.yaml that is no YAML mapping was read as no model.yaml, so import took the LLM-API repository
    for a CPU-engine one and failed on "serving.max_batch_size: got 0"; a tensorrt_llm/config.pbtxt that does not parse
    said "no tensorrt_llm model (inflight_batcher_llm layout expected)". Both pointed at a wrong cause."""
    repo = request.getfixturevalue(repo_kind)
    (repo / file).write_text(text)
    with pytest.raises(ArtifactCorrupt, match="does not parse") as caught:
        import_repository(repo)
    assert caught.value.where == str(repo / file)
    result = CliRunner().invoke(app, ["import", str(repo), "-o", str(tmp_path / "s.yaml")])
    assert isinstance(result.exception, ArtifactCorrupt) and not (tmp_path / "s.yaml").exists()


def _set_parameter_text(cfg: Path, key: str, value: str) -> None:
    text = cfg.read_text()
    start = text.index('string_value: "', text.index(f'"{key}"')) + len('string_value: "')
    cfg.write_text(text[:start] + value + text[text.index('"', start):])


def test_import_refuses_a_nul_path_naming_the_field(cpu, tmp_path):
    _set_engine_path(cpu, "/engine\\000/x")
    assert "artifacts.engine_dir" in " ".join(import_repository(cpu).held_back)  # not carried by default
    kept = CliRunner().invoke(app, ["import", str(cpu), "-o", str(tmp_path / "s.yaml"), "--keep-paths"])
    assert isinstance(kept.exception, SpecError) and "artifacts.engine_dir" in kept.exception.message


def test_import_holds_back_trust_remote_code_and_foreign_folders(llmapi, tmp_path):
    """Finding 6: model.yaml's trust_remote_code and model folder are reported, carried only when asked."""
    path = llmapi / "tensorrt_llm" / "1" / "model.yaml"
    doc = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**doc, "model": "/foreign/model", "trust_remote_code": True}))
    result = CliRunner().invoke(app, ["import", str(llmapi), "-o", str(tmp_path / "a.yaml")], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "held back" in result.output
    spec = load_spec(tmp_path / "a.yaml")
    assert spec.model.trust_remote_code is False and str(spec.model.source) != "/foreign/model"
    CliRunner().invoke(app, ["import", str(llmapi), "-o", str(tmp_path / "b.yaml"), "--trust-remote-code",
                             "--keep-paths"])
    spec = load_spec(tmp_path / "b.yaml")
    assert spec.model.trust_remote_code is True and spec.model.source == "/foreign/model"


def test_unk_only_tokenizer_fails_the_check(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(tmp_path)
    assert "<unk> only" in (tokenizer_load_error(str(tmp_path)) or "")


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"])
def test_a_tokenizer_folder_with_a_huge_file_is_a_problem_not_read(cpu, tmp_path, name):
    """Second review: a repository's tokenizer_dir names a folder whose tokenizer file is a huge sparse file
    (1 GiB took validate 14 s and 3.5 GB of memory; a larger one is out of memory). validate names the
    file and its size without reading it, as it does for the repository's own files."""
    tok = tmp_path / "tok"
    tok.mkdir()
    with open(tok / name, "wb") as f:
        f.truncate(100 << 20)  # sparse, over the 64 MiB bound: no disk used; transformers would read all of it
    for cfg in cpu.glob("*/config.pbtxt"):
        text = cfg.read_text()
        cfg.write_text(re.sub(r'(key: "tokenizer_dir" value \{ string_value: )"[^"]*"', rf"\1{json.dumps(str(tok))}", text))
    problems = [m for m in messages(cpu).splitlines() if "tokenizer" in m and str(tok) in m]
    assert problems and all(name in m and "bytes" in m for m in problems), problems


@pytest.mark.parametrize("where", ["repository", "model folder"])
def test_serve_refuses_a_path_tritons_stub_launcher_would_run(cpu, tmp_path, where):
    """Second review: Triton 2.51's Python backend starts each stub with ``bash -c`` and the model's path
    unquoted, so serving a repository in a folder named ``x$(touch PWNED)`` ran the touch (and a space or a
    quote there kept every model from loading). tritongen refuses such a path before anything starts."""
    from generator.serve.server import TritonServer

    if where == "repository":
        (tmp_path / "x$(touch PWNED)`touch PWNED2`").mkdir()
        repo = Path(shutil.move(str(cpu), str(tmp_path / "x$(touch PWNED)`touch PWNED2`" / "repo")))
    else:
        repo = cpu
        (repo / "postprocessing").rename(repo / "post$(touch PWNED)")
    with pytest.raises(SpecError) as err:
        TritonServer(repo, log_file=tmp_path / "triton.log").start(timeout_s=60)
    assert "$" in err.value.message and "bash" in err.value.message, err.value.message
    assert not (tmp_path / "triton.log").exists()  # no server started, so no stub command ran


def test_serve_on_busy_ports_fails_before_starting(cpu, tmp_path):
    """Finding 14: with its ports held by another listener, serve starts nothing, claims no start, and names
    the ports (another server's readiness answer used to pass for its own)."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", str(cpu), "--http-port", str(port), "--timeout", "30"],
                                    env={"COLUMNS": "300"})
    assert result.exit_code != 0 and "✓" not in result.output
    assert f"HTTP {port}" in str(result.exception) and "already in use" in str(result.exception)


def test_full_disk_names_the_file_written_and_leaves_no_temporary_file(tmp_path):
    """Low item: a copy that fills the disk is reported at the file written, not its source; and the spec
    import writes through atomic_write_text, which leaves no temporary file."""
    import errno

    from generator.cli import os_error_line

    src = tmp_path / "source.bin"
    src.write_bytes(b"x")
    # What shutil.copyfile raises when the disk fills during its sendfile copy: source first, destination second.
    full = OSError(errno.ENOSPC, "No space left on device", str(src), None, "/out/engine/rank0.engine")
    assert os_error_line(full) == "/out/engine/rank0.engine: No space left on device"
    for code in (errno.EDQUOT, errno.EFBIG):  # a quota or a file-size limit: the file written too (review 11)
        assert os_error_line(OSError(code, "x", str(src), None, "/out/a")).startswith("/out/a: ")

    # A real limit on file size (Python ignores SIGXFSZ, so the write fails as on a full disk): the buffered text
    # fails at the flush and again at the close, which left the temporary file (review 11).
    write = ("import resource, sys; from pathlib import Path; from generator.fsutil import atomic_write_text; "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY)); "
             "atomic_write_text(Path(sys.argv[1]), 'model: {}\\n' * 300)")  # under io's 8 KiB buffer
    run = subprocess.run([sys.executable, "-c", write, str(tmp_path / "spec.yaml")], capture_output=True, text=True)
    assert run.returncode != 0 and "File too large" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.bin"]


def test_a_server_that_dies_keeps_the_log_its_error_names(tmp_path):
    """Finding 14: a server that exits on its own keeps its log after stop (the error that follows names it)."""
    import signal

    from generator.serve.server import TritonServer

    model = tmp_path / "repo" / "m"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "m"\nbackend: "python"\nmax_batch_size: 0\n'
                                        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
                                        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n')
    (model / "1" / "model.py").write_text("class TritonPythonModel:\n    def execute(self, requests):\n        return []\n")
    server = TritonServer(tmp_path / "repo").start(timeout_s=300)
    log = server.log_file
    try:
        os.kill(server.pid, signal.SIGKILL)
        server.process.wait(timeout=60)
    finally:
        server.stop()
    assert log.is_file() and "Started HTTPService" in log.read_text(errors="replace")
    shutil.rmtree(log.parent)


@pytest.mark.parametrize("count", [100, 5000])
def test_parameter_lines_are_found_in_one_pass_whatever_their_number(count, monkeypatch):
    """review5: validate looked each parameter's line up with a search from the top, so a config.pbtxt of
    40,000 parameters (2 MB) took more than two minutes. Every key's line is still right, and the lines are
    scanned once, not once per key (the scans counted are the same for 100 parameters and for 5,000)."""
    from generator.repo.problems import ConfigText

    head = 'name: "tensorrt_llm"\nbackend: "python"\n# key: "k0" in a comment\n'
    text = head + "".join(f'parameters {{ key: "k{i}" value {{ string_value: "v" }} }}\n' for i in range(count))
    scans = []
    original = ConfigText.find
    monkeypatch.setattr(ConfigText, "find", lambda self, *a, **kw: scans.append(a) or original(self, *a, **kw))
    config = ConfigText(Path("config.pbtxt"), text)
    assert [config.parameter(f"k{i}") for i in range(count)] == [4 + i for i in range(count)]
    assert config.parameter("missing") is None and len(scans) == 1
