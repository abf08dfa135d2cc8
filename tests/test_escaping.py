"""Hostile text in every string field of the spec never changes the structure of what tritongen writes.

A corpus of strings (newlines, quotes, backticks, ``$()``, NUL, unicode line separators, YAML indicators,
``#``, ``---``, very long) goes into every string and path field of the spec. The spec refuses a value with
a control character, naming the field; every other value is rendered into every artifact (config.pbtxt,
model.yaml, launch.sh, kubessh, kubernetes*.yaml with their container scripts and the ConfigMap's
locust.conf, loadtest.Dockerfile with the command its comment gives, tritongen.json), and each artifact parses
to the same shape, line count and shell words as a render of plain values, with the value read back intact
where it lands.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import typing
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format, text_format
from pydantic import BaseModel
from tritonclient.grpc import model_config_pb2

from generator.errors import SpecError, TritongenError
from generator.repo.render import plan_repository
from generator.spec import Spec, spec_from_dict
from generator.templating import stub_launch_problem

CONTROL = ["a\nb", "a\r\nkind: Pod", "nul\x00byte", "line\u2028sep", "para\u2029sep", "nel\x85x", "tab\tx",
           "esc\x1b[31m", "del\x7f", "bom\ufeff"]
"""Refused by the spec: no path, name or image holds one."""
PRINTABLE = ["two words", "it's", 'say "hi"', "back`id`tick", "$(id)", "${HOME}", "$$(POD_NAME)", "#not a comment",
             "--- ", "key: value", "- item", "{a: [b, c]}", "&anchor *alias !tag", "| >", "%YAML 1.2", "@at",
             "back\\slash", ";touch /tmp/pwned;", "a && b || c", "* ? [x]", "ünï©ødé ☃ 😀", "x" * 5000,
             "'; exec sh; '", '"$(id)"', "\\n not a newline"]
"""Accepted by the spec (when the field's own rules allow it): every artifact must quote them."""

# (overrides, gpu): the renders that together write every artifact kind.
TARGETS = [
    (["serving.engine=llmapi", "build.gpu=b200", "topology.gpus_per_node=2", "topology.nodes=2", "build.tp_size=4"], True),
    (["serving.engine=llmapi", "build.gpu=b200", "topology.gpus_per_node=2", "topology.instances_per_node=2"], True),
    (["serving.engine=cpu-reference"], False),
]


def string_fields(model: type[BaseModel] = Spec, prefix: str = "") -> dict[str, type]:
    """Dotted name -> str, Path or list of every text field of the spec."""
    out: dict[str, type] = {}
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        args = typing.get_args(field.annotation) or (field.annotation,)
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            out.update(string_fields(sub, f"{prefix}{name}."))
        elif any(a in (str, pathlib.Path) for a in args):
            out[prefix + name] = pathlib.Path if pathlib.Path in args else str
        elif typing.get_origin(field.annotation) is list and typing.get_args(field.annotation) == (str,):
            out[prefix + name] = list
    return out


FIELDS = string_fields()
SERVED_PATHS = ("artifacts.dir", "kubernetes.repository_path")
"""Where the pods' tritonserver finds the repository: a path Triton's Python backend would split or run as
commands is refused at render (tests/test_manifest_security.py), so only the other texts reach the manifests."""
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def value_for(kind: type, text: str):
    if kind is pathlib.Path:
        return f"/srv/{text}/d"
    return [text] if kind is list else text


def with_field(data: dict, dotted: str, value) -> dict:
    data = json.loads(json.dumps(data))
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


def base_data(overrides: list[str]) -> dict:
    data: dict = {}
    for item in overrides:
        key, value = item.split("=", 1)
        data = with_field(data, key, int(value) if value.isdigit() else value)
    return data


def test_every_text_field_is_covered():
    assert {"artifacts.dir", "kubernetes.repository_path", "loadtest.model", "kubernetes.image", "model.source",
            "loadtest.prompts", "kubernetes.loadtest_image", "quantization.exclude_modules"} <= set(FIELDS)


@pytest.mark.parametrize("text", CONTROL)
def test_spec_refuses_control_characters_naming_the_field(text):
    for field, kind in FIELDS.items():
        with pytest.raises(SpecError) as err:
            spec_from_dict(with_field({}, field, value_for(kind, text)))
        assert field in err.value.message, (field, err.value.message)


# ---------------------------------------------------------------- the shape of each artifact


def _shape(node):
    if isinstance(node, dict):
        return {k: _shape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return type(node).__name__


def _sh_words(script: str) -> list[int]:
    """Words per line of a shell script (shlex reads quotes as sh does; an unbalanced one raises)."""
    return [len(shlex.split(line, comments=True)) for line in script.replace("\\\n", " ").splitlines()]


def _container_scripts(docs: list[dict]) -> list[str]:
    scripts = []

    def walk(node):
        if isinstance(node, dict):
            cmd = node.get("command")
            if isinstance(cmd, list) and cmd[:2] == ["/bin/sh", "-c"]:
                scripts.append(cmd[2].replace("$$", "$"))  # Kubernetes reads $$ as $
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(docs)
    return scripts


_SEEN: dict[tuple[str, str], object] = {}


def structure(files: dict[str, str]) -> dict[str, object]:
    """What must not change with the values: per artifact its parsed shape and its line count."""
    out: dict[str, object] = {}
    for rel, text in files.items():
        if (rel, text) in _SEEN:  # the same text has the same structure (most configs hold no spec text)
            out[rel] = _SEEN[rel, text]
            continue
        lines = text.count("\n")
        if rel.endswith(".pbtxt"):
            config = text_format.Parse(text, model_config_pb2.ModelConfig())
            out[rel] = (lines, _shape(json_format.MessageToDict(config)))
        elif rel.endswith(".yaml"):
            docs = [d for d in yaml.load_all(text, Loader=LOADER) if d is not None]
            conf = [d["data"]["locust.conf"] for d in docs if d.get("kind") == "ConfigMap"]
            confkeys = [[line.split(" = ")[0] for line in c.splitlines()] for c in conf]
            scripts = [_sh_words(s) for s in _container_scripts(docs)]
            out[rel] = (lines, _shape(docs), confkeys, scripts)
        elif rel.endswith(".json"):
            out[rel] = (lines, _shape(json.loads(text)))
        elif text.startswith("#!"):
            out[rel] = (lines, _sh_words(text))
        else:  # loadtest.Dockerfile, and the docker build command its comment tells the user to run
            out[rel] = (lines, [line.split(" ")[0] for line in text.splitlines()],
                        [_sh_words(line[1:]) for line in text.splitlines() if line.startswith("#   ")])
        _SEEN[rel, text] = out[rel]
    return out


def _render(data: dict, gpu: bool) -> dict[str, str]:
    return plan_repository(spec_from_dict(data), gpu_visible=gpu).files


@pytest.mark.parametrize("overrides, gpu", TARGETS, ids=["llmapi-2-nodes", "llmapi-2-instances", "cpu-reference"])
def test_hostile_text_in_every_field_keeps_every_artifact_s_structure(overrides, gpu):
    base = base_data(overrides)
    plain = {field: value_for(kind, "plain") for field, kind in FIELDS.items()}
    accepted_plain = {}
    baseline_data = base
    for field, value in plain.items():  # every field that can hold text together with the others
        try:
            _render(with_field(baseline_data, field, value), gpu)
        except TritongenError:
            continue  # its own rules (a known GPU, a DNS name) or one that excludes another (trace vs prompts)
        accepted_plain[field] = value
        baseline_data = with_field(baseline_data, field, value)
    baseline = structure(_render(baseline_data, gpu))
    for text in PRINTABLE:
        data, used = baseline_data, []
        for field, kind in FIELDS.items():
            if field not in accepted_plain:
                continue
            value = value_for(kind, text)
            try:
                spec_from_dict(with_field(baseline_data, field, value))
                if gpu and field in SERVED_PATHS:  # the pods' repository path also meets Triton's stub launcher
                    _render(with_field(baseline_data, field, value), gpu)
            except SpecError as err:
                assert field in err.message or err.where == field, (field, err.where, err.message)
                value = accepted_plain.get(field)
                if value is None:
                    continue
            else:
                used.append(field)
            data = with_field(data, field, value)
        files = _render(data, gpu)
        assert structure(files) == baseline, text
        assert "model.source" in used  # loadtest.model refuses any of them, naming itself (a URL and config name)
        if len(text) > 255:  # a name no file system holds: the path fields refuse it (naming the field)
            assert "artifacts.dir" not in used
            continue
        if gpu and stub_launch_problem(value_for(pathlib.Path, text)):  # refused for the pods, naming the field;
            assert "kubernetes.repository_path" not in used and "artifacts.dir" in used  # set, it stands for artifacts.dir
            continue
        assert "artifacts.dir" in used and "kubernetes.repository_path" in used
        if gpu:
            docs = [d for d in yaml.load_all(files["kubernetes.yaml"], Loader=LOADER) if d]
            workload = next(d for d in docs if d["kind"] in ("Deployment", "LeaderWorkerSet"))
            mounts = [m["mountPath"] for m in json.loads(json.dumps(workload))["spec"].get("template", workload["spec"])
                      .get("spec", {}).get("containers", [{}])[0].get("volumeMounts", [])] if "template" in workload["spec"] \
                else [m["mountPath"] for m in workload["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]
                      ["containers"][0]["volumeMounts"]]
            assert f"/srv/{text}" in {str(Path(m).parent) for m in mounts} | set(mounts)  # the path arrives intact
            script = _container_scripts(docs)[0]
            assert f"/srv/{text}/d/launch.sh" in shlex.split(script)


def test_launch_script_runs_with_a_hostile_repository_path(tmp_path):
    """The quoted launch script really runs from a folder named like a payload (sh, not only sh -n)."""
    data = base_data(TARGETS[2][0])
    files = _render(data, False)
    folder = tmp_path / "$(touch pwned) `touch pwned2` it's"
    folder.mkdir()
    (folder / "launch.sh").write_text(files["launch.sh"])
    fake = tmp_path / "fake-tritonserver"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    subprocess.run(["sh", "-n", str(folder / "launch.sh")], check=True)
    run = subprocess.run(["sh", str(folder / "launch.sh"), "--http-port=1"], capture_output=True, text=True,
                         env={"TRITONSERVER": str(fake), "PATH": "/usr/bin:/bin"}, cwd=tmp_path, check=True)
    assert f"--model-repository={folder}" in run.stdout.splitlines()
    assert not list(tmp_path.glob("pwned*"))


# ---------------------------------------------------------------- numbers at the edges (review 11)


def float_fields(model: type[BaseModel] = Spec, prefix: str = "") -> list[str]:
    """Dotted name of every number field of the spec that takes fractions."""
    out = []
    for name, field in model.model_fields.items():
        args = typing.get_args(field.annotation) or (field.annotation,)
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            out += float_fields(sub, f"{prefix}{name}.")
        elif float in args:
            out.append(prefix + name)
    return out


def _integers(node) -> list[int]:
    if isinstance(node, dict):
        return [i for v in node.values() for i in _integers(v)]
    if isinstance(node, list):
        return [i for v in node for i in _integers(v)]
    return [node] if isinstance(node, int) and not isinstance(node, bool) else []


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_spec_refuses_numbers_that_are_not_finite_naming_the_field(value):
    fields = float_fields()
    assert {"loadtest.duration_s", "loadtest.spawn_rate", "kubernetes.load_gib_per_s"} <= set(fields)
    for field in fields:
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            spec_from_dict(with_field({}, field, float(value)))


def test_tiny_rates_and_huge_durations_keep_every_manifest_integer_in_kubernetes_range():
    """Derived counts (probe thresholds, the load test's deadline) were infinity (a traceback) or past int64."""
    edges = {"loadtest.spawn_rate": 5e-324, "kubernetes.load_gib_per_s": 5e-324, "loadtest.duration_s": 1e300,
             "loadtest.request_timeout_s": 1e300}
    data = base_data(TARGETS[0][0])
    for field, value in edges.items():
        data = with_field(data, field, value)
    files = _render(data, True)
    docs = [d for rel in ("kubernetes.yaml", "kubernetes-loadtest.yaml") for d in yaml.load_all(files[rel], Loader=LOADER)]
    numbers = _integers(docs)
    assert numbers and max(numbers) <= 2**31 - 1
    assert max(numbers) == 2**31 - 1  # the capped ones are there
