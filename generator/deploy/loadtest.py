"""The in-cluster load test: Locust master and workers running tritongen's own load-test package.

The package (loadtest/ plus the few generator modules it imports) travels as a ConfigMap; the
settings are the spec's loadtest section as a locust.conf, made by the same function as
``tritongen loadtest`` (generator.measure.locustconf.locust_options). Workers stream their records to the
master, which writes the one records.jsonl onto the artifacts volume, the same raw records a local
run writes. Values here, layout in templates/deploy/kubernetes-loadtest.yaml.j2.
"""

from __future__ import annotations

import functools
import shlex
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from generator.deploy.kubernetes import (
    CONTAINER_SECURITY, PORTS, artifacts_mount, kube_int, kube_literal, loadtest_secret, pod_security,
)
from generator.resources import loadtest_dir
from generator.spec import Spec

LOADTEST_MANIFESTS = "kubernetes-loadtest.yaml"
LOADTEST_DOCKERFILE = "loadtest.Dockerfile"
LOCUST_IMAGE = "locustio/locust:2.47.0"
"""Locust's official image at the version tritongen's load test runs with (pyproject: locust>=2.47,<3)."""
MASTER_PORT = 5557
MOUNT = "/loadtest"
REQUIREMENTS = {"tritonclient[grpc,http]": "tritonclient", "numpy": "numpy", "pydantic": "pydantic",
                "pyyaml": "pyyaml", "tokenizers": "tokenizers"}
"""What loadtest/ imports beside Locust: requirement -> distribution, pinned to the version installed here."""
FALLBACK_PINS = {"tritonclient": ">=2.51", "numpy": "<2", "pydantic": ">=2.7", "pyyaml": ">=6", "tokenizers": ">=0.22"}
"""pyproject's ranges, for a distribution not installed where the manifests are rendered."""
LOCUST_CPU = "1"
"""A Locust process uses one core (gevent): requested and limited per pod."""
LOCUST_MEMORY = "2Gi"
"""A Locust process with its prompts and tokenizer, and the master's record writer: an allowance."""

def _generator_imports(source: Path) -> set[str]:
    """``generator.*`` modules a file imports at its top level (lazy imports inside functions stay out)."""
    import ast

    names = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "generator" and not node.level:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "generator")
    return names


def package_files() -> dict[str, Path]:
    """Relative path in the pod → source file: loadtest/*.py at the top, and under generator/ the modules
    they import, followed through their own imports (with each package's __init__.py)."""
    return dict(_package_files())


@functools.lru_cache(maxsize=1)
def _package_files() -> dict[str, Path]:
    """package_files, worked out once per process (the sources do not change while it runs)."""
    root = Path(__file__).resolve().parents[1].parent
    files = {p.name: p for p in sorted(loadtest_dir().glob("*.py"))}
    todo = set().union(*(_generator_imports(p) for p in files.values()))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and every package above it
            module = ".".join(parts[:i])
            if module in seen:
                continue
            seen.add(module)
            base = root.joinpath(*parts[:i])
            path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if path.is_file():
                files[path.relative_to(root).as_posix()] = path
                todo |= _generator_imports(path) - seen
    return files


def _key(rel: str) -> str:
    """A ConfigMap key for a relative path (keys cannot hold '/')."""
    return rel.replace("/", "__")


def requirements() -> list[str]:
    """The load-test packages pinned to the versions tritongen runs with here (ranges where not installed)."""
    pins = []
    for requirement, dist in REQUIREMENTS.items():
        try:
            pins.append(f"{requirement}=={version(dist)}")
        except PackageNotFoundError:
            pins.append(f"{requirement}{FALLBACK_PINS[dist]}")
    return pins


def loadtest_image(spec: Spec) -> str:
    """kubernetes.loadtest_image, else the tag the rendered Dockerfile's build is named."""
    if spec.kubernetes.loadtest_image:
        return spec.kubernetes.loadtest_image
    try:
        own = version("tritongen")
    except PackageNotFoundError:
        own = "0"
    return f"{spec.kubernetes.name}-loadtest:{own}"


def render_loadtest_dockerfile(spec: Spec) -> str:
    from generator.deploy.templates import render

    return render(f"{LOADTEST_DOCKERFILE}.j2", base=LOCUST_IMAGE, requirements=requirements(),
                  image=loadtest_image(spec), dockerfile=LOADTEST_DOCKERFILE)


def loadtest_values(spec: Spec) -> dict:
    from generator.measure.locustconf import locust_conf_text, locust_options
    from generator.serve.endpoints import Endpoints

    k = spec.kubernetes
    service = f"{k.name}.{k.namespace}.svc"
    endpoints = Endpoints(f"http://{service}:{PORTS['http']}", f"{service}:{PORTS['grpc']}",
                          f"http://{service}:{PORTS['metrics']}/metrics")
    records = artifacts_mount(spec) / "loadtest" / "records.jsonl"
    options = locust_options(spec.resolved_loadtest(workers=k.locust_workers), endpoints, records,
                             Path(MOUNT) / "locustfile.py")
    files = {_key(rel): path.read_text(encoding="utf-8") for rel, path in package_files().items()}
    files["locust.conf"] = locust_conf_text(options)
    items = [{"key": _key(rel), "path": rel} for rel in package_files()] + [{"key": "locust.conf", "path": "locust.conf"}]
    master = f"{k.name}-locust-master"
    token_secret = loadtest_secret(spec)
    token_env = [{"name": "TRITONGEN_RUN_TOKEN", "valueFrom": {"secretKeyRef": {"name": token_secret, "key": "token"}}}]
    # the Job ends even if the run hangs: the run, its last requests, and 10 minutes for the pods to start
    lt = spec.loadtest
    deadline_s = kube_int(lt.duration_s + lt.users / lt.spawn_rate + lt.request_timeout_s + 600)
    conf, locustfile = shlex.quote(f"{MOUNT}/locust.conf"), shlex.quote(f"{MOUNT}/locustfile.py")
    return {
        "token_secret": token_secret, "token_env": token_env, "deadline_s": deadline_s,
        "name": k.name, "namespace": k.namespace, "image": loadtest_image(spec), "files": files, "items": items,
        "mount": MOUNT, "workers": k.locust_workers, "master": master, "master_port": MASTER_PORT,
        "artifacts": str(artifacts_mount(spec)), "volume_claim": k.volume_claim, "records": str(records),
        "records_dir": str(records.parent), "records_subpath": records.parent.name,
        "pod_security": pod_security(spec), "container_security": CONTAINER_SECURITY,
        "resources": {"cpu": LOCUST_CPU, "memory": LOCUST_MEMORY}, "dockerfile": LOADTEST_DOCKERFILE,
        # The values are quoted shell words, and $ is doubled against Kubernetes' own $(VAR) expansion.
        "master_command": ["/bin/sh", "-c", kube_literal(
            f"rm -f {shlex.quote(str(records))} && cd {MOUNT} && exec locust --config {conf} --master "
            f"--master-bind-port {MASTER_PORT} --expect-workers {k.locust_workers}")],
        "worker_command": ["/bin/sh", "-c", kube_literal(
            f"cd {MOUNT} && exec locust -f {locustfile} --worker --master-host {master} --master-port {MASTER_PORT}")],
    }


def render_loadtest_manifests(spec: Spec) -> str:
    from generator.deploy.templates import render

    return render("kubernetes-loadtest.yaml.j2", **loadtest_values(spec))
