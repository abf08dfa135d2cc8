"""Kubernetes manifests against the topology: schema first, then what users report going wrong.

GPUs per pod, LeaderWorkerSet group size and MPI host slots, the image of the engine's TensorRT-LLM,
memory-backed /dev/shm of the planned size, probes on Triton's health endpoints with the startup budget,
ports, selectors of the Service and PodMonitor, the autoscaler's target and metric, the artifacts
volume. Called by generator.deploy.checks; reads files only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Collection, NamedTuple, Optional

import yaml

from generator.deploy.kubernetes import (
    PORTS, PROBE_PERIOD_S, WAITING_METRIC, artifacts_mount, deploy_data, expected_image, labels, pod_sizing, read_paths,
    repository_path, tritongen_secrets,
)
from generator.deploy.pod_security import pod_specs, review_pod, review_rbac
from generator.errors import TritongenError
from generator.fsutil import read_text_bounded
from generator.spec.load import safe_yaml_all
from generator.deploy.launch import LAUNCH_SCRIPT
from generator.deploy.schemas import document_name, kubernetes_version, schema_errors
from generator.deploy.topology import Topology
from generator.repo.problems import Problem, Severity
from generator.spec import EngineTarget, Spec

HEALTH = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}
LOAD_METRICS = {WAITING_METRIC: ("request_type", "waiting"),
                "nv_trt_llm_kv_cache_block_metrics": ("kv_cache_block_type", "fraction")}
ZERO_FOR_DECOUPLED = ("nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
                      "nv_inference_request_duration_us", "nv_inference_pending_request_count")


class Findings:
    """Problems collected by the deployment checks."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, file: Any, line: Optional[int], message: str, fix: str, severity: Severity = Severity.error) -> None:
        self.problems.append(Problem(str(file), line, message, fix, severity))


def documents(path: Path, out: Findings) -> list[tuple[dict[str, Any], int]]:
    """The mappings of a manifest with their first lines; a file that is not bounded, readable YAML inside its
    repository (the folder holding it) is one problem naming the place, never quoting the file (review21: a
    kubernetes.yaml linked to a YAML file elsewhere had its names, images and counts printed in warnings)."""
    try:
        docs = safe_yaml_all(read_text_bounded(path, fix="re-render", inside=path.parent), str(path))
    except TritongenError as exc:
        out.add(path, None, exc.message, exc.fix or "re-render")
        return []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        out.add(path, mark.line + 1 if mark else None,
                f"not valid YAML: {getattr(exc, 'problem', None) or type(exc).__name__}", "re-render")
        return []
    return [(d, line) for d, line in docs if isinstance(d, dict)]


def schema_problems(path: Path, doc: dict[str, Any], line: int, out: Findings) -> bool:
    errors = schema_errors(doc)
    for e in errors:
        out.add(path, line, f"{document_name(doc)} is not valid for Kubernetes {kubernetes_version()}: {e}",
                "fix the field named (re-render if it was edited)")
    return not errors


def security_review(path: Path, docs: list[tuple[dict[str, Any], int]], out: Findings,
                    server_labels: Optional[dict[str, str]] = None, secrets: Optional[Collection[str]] = None) -> None:
    """The cluster admin's review (generator.deploy.pod_security) of every pod and role, as warnings (--strict fails);
    with ``server_labels``, the server pods also need the admin-API restriction and a NetworkPolicy; with
    ``secrets``, pods read no other Secret."""
    roles = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d, _ in docs}
    for doc, line in docs:
        for problem, fix in review_rbac(doc, roles):
            out.add(path, line, problem, fix, Severity.warning)
        for role, pod, metadata in pod_specs(doc):
            leader = "leaderTemplate" in role
            server = server_labels is not None and (leader or doc.get("kind") == "Deployment")
            for problem, fix in review_pod(role, pod, metadata, needs_token=leader, server=server, secrets=secrets):
                out.add(path, line, problem, fix, Severity.warning)
    if server_labels and not any(doc.get("kind") == "NetworkPolicy" and _selects(
            ((doc.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}, server_labels)
            for doc, _ in docs):
        out.add(path, None, "no NetworkPolicy selects the server pods: anything in the cluster reaches every port",
                "re-render the manifests (tritongen writes one)", Severity.warning)


def valid_documents(path: Path, out: Findings) -> list[tuple[dict[str, Any], int]]:
    """The documents of a manifest the schema accepts, its problems for the others: the rules and the review read
    fields of the types the schema gives (review22: a list or text where a mapping belongs, in 92 of 192 spellings
    tried, ended validate in a traceback)."""
    return [(doc, line) for doc, line in documents(path, out) if schema_problems(path, doc, line, out)]


def check_manifests(path: Path, spec: Spec, topo: Topology, version: str, out: Findings) -> None:
    docs = valid_documents(path, out)
    security_review(path, docs, out, labels(spec), tritongen_secrets(spec))
    by_kind: dict[str, tuple[dict[str, Any], int]] = {}
    for doc, line in docs:
        by_kind.setdefault(str(doc.get("kind")), (doc, line))
    want_kind = "LeaderWorkerSet" if topo.multi_node else "Deployment"
    wrong_kind = "Deployment" if topo.multi_node else "LeaderWorkerSet"
    if want_kind not in by_kind:
        line = by_kind.get(wrong_kind, ({}, None))[1]
        why = (f"one instance of {topo.ranks_per_instance} ranks spans {topo.nodes_per_instance} nodes and needs a "
               "LeaderWorkerSet (gang-scheduled group)" if topo.multi_node else "each server fits in one node: a Deployment")
        out.add(path, line, f"no {want_kind}: {why}", "re-render the manifests")
        return
    workload, wline = by_kind[want_kind]
    s = workload.get("spec") or {}
    if topo.multi_node:
        lwt = s.get("leaderWorkerTemplate") or {}
        if lwt.get("size") != topo.nodes_per_instance:
            out.add(path, wline, f"leaderWorkerTemplate.size is {lwt.get('size')} but one instance of "
                    f"{topo.ranks_per_instance} ranks needs {topo.nodes_per_instance} pods of {topo.gpus_per_node} GPUs",
                    f"set size: {topo.nodes_per_instance}")
        pods = [("leader", (lwt.get("leaderTemplate") or {}), True), ("worker", (lwt.get("workerTemplate") or {}), False)]
    else:
        pods = [("pod", s.get("template") or {}, True)]
    if s.get("replicas") != topo.replicas:
        out.add(path, wline, f"{want_kind} replicas is {s.get('replicas')} but topology.nodes {topo.nodes} gives "
                f"{topo.replicas} server(s)", f"set replicas: {topo.replicas}")
    sizing = pod_sizing(spec, topo)
    image = expected_image(version)
    server_labels: dict[str, str] = {}
    for role, template, server in pods:
        pod = template.get("spec") or {}
        if server:
            server_labels = (template.get("metadata") or {}).get("labels") or {}
        _check_pod(_Pod(path, wline, role, spec, topo, sizing, out), pod, server, image, version)
    _check_service_side(path, by_kind, server_labels, topo, workload, out)


class _Pod(NamedTuple):
    """One pod template under review and what it is checked against."""

    path: Path
    line: int
    role: str
    spec: Spec
    topo: Topology
    sizing: Any
    out: Findings

    def add(self, message: str, fix: str, severity: Severity = Severity.error) -> None:
        self.out.add(self.path, self.line, message, fix, severity)


def _check_pod(k: _Pod, pod: dict[str, Any], server: bool, image: Optional[str], version: str) -> None:
    c = (pod.get("containers") or [{}])[0]
    _check_gpus(k, c)
    _check_image(k, c, image, version)
    _check_volumes(k, pod, c)
    if server:
        _check_server(k, pod, c)


def _check_gpus(k: _Pod, c: dict[str, Any]) -> None:
    """GPUs requested equal the ranks the pod runs; extended resources need requests equal to limits."""
    role, topo = k.role, k.topo
    limits = ((c.get("resources") or {}).get("limits") or {})
    gpus = limits.get("nvidia.com/gpu")
    if str(gpus) != str(topo.gpus_per_pod):
        k.add(f"{role} requests nvidia.com/gpu {gpus} but runs {topo.gpus_per_pod} rank(s) "
              f"({_pod_ranks(topo)})", f"set nvidia.com/gpu: {topo.gpus_per_pod} in limits (and requests)")
    requests = ((c.get("resources") or {}).get("requests") or {}).get("nvidia.com/gpu")
    if requests is not None and str(requests) != str(gpus):
        k.add(f"{role} nvidia.com/gpu requests {requests} differ from limits {gpus}",
              "extended resources need requests equal to limits")


def _check_image(k: _Pod, c: dict[str, Any], image: Optional[str], version: str) -> None:
    """The Triton container of the TensorRT-LLM that built the engine (or the one kubernetes.image names)."""
    role, spec = k.role, k.spec
    got_image = c.get("image")
    own = spec.kubernetes.image
    known = {tag: v for v, tag in deploy_data()["triton_images"].items()}
    if own is None and image and got_image != image:
        k.add(f"{role} image {got_image!r} is not the Triton container of TensorRT-LLM {version} "
              f"({image}); an engine only runs on the TensorRT-LLM that built it",
              f"use image {image} (leave kubernetes.image unset)")
    elif own is not None and got_image != own:
        k.add(f"{role} image {got_image!r} differs from kubernetes.image {own!r}", "re-render the manifests")
    elif got_image in known and known[got_image] != version:
        k.add(f"{role} image {got_image!r} is the Triton container of TensorRT-LLM {known[got_image]}, "
              f"but the engine is TensorRT-LLM {version}", f"use an image of TensorRT-LLM {version}"
              + (f" ({image})" if image else ""))
    elif own is None and not image:
        k.add(f"no known Triton container for TensorRT-LLM {version!r}; cannot check image {got_image!r}",
              "set kubernetes.image to the NGC tag of that version", Severity.warning)


def _check_volumes(k: _Pod, pod: dict[str, Any], c: dict[str, Any]) -> None:
    """A memory-backed /dev/shm large enough for the Python backend; the artifacts PVC where the repository looks."""
    role, spec, sizing = k.role, k.spec, k.sizing
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
    shm = vols.get(mounts.get("/dev/shm"), {}).get("emptyDir") if mounts.get("/dev/shm") else None
    if shm is None or shm.get("medium") != "Memory":
        k.add(f"{role} has no memory-backed /dev/shm; the container default (64 MiB) is too small for "
              "the Python backend's shared memory", f"mount an emptyDir {{medium: Memory, sizeLimit: {sizing.shm_mib}Mi}} "
              "at /dev/shm")
    elif _mib(shm.get("sizeLimit")) is not None and _mib(shm.get("sizeLimit")) < sizing.shm_mib:
        k.add(f"{role} /dev/shm sizeLimit {shm.get('sizeLimit')} is below the {sizing.shm_mib} MiB needed "
              f"({sizing.shm_reason})", f"set sizeLimit: {sizing.shm_mib}Mi")
    artifacts = str(artifacts_mount(spec))
    claim = vols.get(mounts.get(artifacts), {}).get("persistentVolumeClaim", {}).get("claimName") if mounts.get(artifacts) else None
    if claim != spec.kubernetes.volume_claim:
        k.add(f"{role} does not mount PVC {spec.kubernetes.volume_claim} at {artifacts}, the folder "
              f"holding {', '.join(str(p) for p in read_paths(spec))} (the paths the repository names)",
              f"mount it at {artifacts} (re-render)")
    if artifacts == "/":
        k.add("the engine, weights and repository share no folder but /, where no volume can be mounted",
              "keep artifacts.engine_dir, checkpoint_dir and kubernetes.repository_path under artifacts.dir")


def _check_server(k: _Pod, pod: dict[str, Any], c: dict[str, Any]) -> None:
    """The server container: launch script, ports, MPI hosts (multi-node), probes sized for loading."""
    role, spec, topo, sizing = k.role, k.spec, k.topo, k.sizing
    cmd = " ".join(c.get("command") or []) + " " + " ".join(c.get("args") or [])
    script = str(repository_path(spec) / LAUNCH_SCRIPT)
    if script not in cmd:
        k.add(f"{role} does not start {script} (the launch script the topology needs)",
              f"command: [/bin/sh, {script}, ...] (re-render)")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    for name, port in PORTS.items():
        if ports.get(name) != port or f"--{name}-port={port}" not in cmd:
            k.add(f"{role} {name} port: containerPort {ports.get(name)} and the launch argument "
                  f"--{name}-port must both be {port}", f"containerPort: {port} and --{name}-port={port} (re-render)")
    if topo.multi_node:
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        hosts = [h for h in str(env.get("MPI_HOSTS") or "").split(",") if h]
        slots = [int(h.rsplit(":", 1)[1]) for h in hosts if re.fullmatch(r".+:\d+", h)]
        if len(hosts) != topo.nodes_per_instance or sum(slots) != topo.world_size:
            k.add(f"MPI_HOSTS {env.get('MPI_HOSTS')!r} gives {len(hosts)} host(s) and {sum(slots)} slot(s); "
                  f"the MPI world is {topo.world_size} ranks on {topo.nodes_per_instance} pods",
                  f"list the {topo.nodes_per_instance} pods as host:{topo.gpus_per_node} (re-render)")
        if not pod.get("serviceAccountName"):
            k.add("the leader has no serviceAccountName: kubessh (kubectl exec) would be refused",
                  "use the rendered ServiceAccount and Role")
    for probe, health in HEALTH.items():
        pr = c.get(probe)
        get = (pr or {}).get("httpGet") or {}
        if pr is None or get.get("path") != health or get.get("port") not in ("http", PORTS["http"]):
            k.add(f"{role} {probe} must GET {health} on the HTTP port", f"set {probe}.httpGet to "
                  f"{{path: {health}, port: http}}")
    sp = c.get("startupProbe") or {}
    budget = (sp.get("initialDelaySeconds") or 0) + (sp.get("periodSeconds") or 10) * (sp.get("failureThreshold") or 3)
    if budget < sizing.startup_budget_s:
        k.add(f"{role} startupProbe allows {budget} s, less than the {sizing.startup_budget_s} s planned "
              f"for loading ({sizing.startup_reason}): the kubelet would kill a server still loading its engine",
              f"set failureThreshold to {sizing.failure_threshold} with periodSeconds {PROBE_PERIOD_S}")


def _pod_ranks(topo: Topology) -> str:
    if topo.multi_node:
        return f"tp {topo.tp} x pp {topo.pp} over {topo.nodes_per_instance} pods"
    return f"{topo.instance_count} instance(s) x tp {topo.tp} x pp {topo.pp}"


def _mib(size: Any) -> Optional[float]:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?", str(size or ""))
    if not m:
        return None
    scale = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1 << 20, None: 1 / (1 << 20)}[m.group(2)]
    return float(m.group(1)) * scale


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _check_service_side(path: Path, by_kind: dict[str, Any], labels: dict[str, str], topo: Topology,
                        workload: dict[str, Any], out: Findings) -> None:
    svc, sline = by_kind.get("Service", (None, None))
    if svc is None:
        out.add(path, None, "no Service", "re-render the manifests")
    else:
        spec = svc.get("spec") or {}
        if not _selects(spec.get("selector") or {}, labels):
            out.add(path, sline, f"Service selector {spec.get('selector')} does not select the server pods ({labels})",
                    "use the server pods' labels (the leader's for a LeaderWorkerSet)")
        names = {p.get("name"): p.get("targetPort") for p in spec.get("ports") or []}
        for name in PORTS:
            if names.get(name) not in (name, PORTS[name]):
                out.add(path, sline, f"Service has no {name} port targeting the container's {name} port",
                        f"add {{name: {name}, port: {PORTS[name]}, targetPort: {name}}}")
    pm, pline = by_kind.get("PodMonitor", (None, None))
    if pm is None:
        out.add(path, None, "no PodMonitor: Prometheus would not scrape /metrics", "re-render the manifests")
    else:
        spec = pm.get("spec") or {}
        if not _selects((spec.get("selector") or {}).get("matchLabels") or {}, labels):
            out.add(path, pline, "PodMonitor selector does not select the server pods", "use the server pods' labels")
        eps = spec.get("podMetricsEndpoints") or []
        if not any(e.get("port") == "metrics" and e.get("path", "/metrics") == "/metrics" for e in eps):
            out.add(path, pline, "PodMonitor does not scrape port metrics at /metrics", "podMetricsEndpoints: "
                    "[{port: metrics, path: /metrics}]")
    hpa, hline = by_kind.get("HorizontalPodAutoscaler", (None, None))
    if hpa is None:
        if topo.target is EngineTarget.tensorrtllm:
            out.add(path, None, "no HorizontalPodAutoscaler", "re-render the manifests", Severity.warning)
        return
    spec = hpa.get("spec") or {}
    ref = spec.get("scaleTargetRef") or {}
    wmeta = workload.get("metadata") or {}
    if ref.get("kind") != workload.get("kind") or ref.get("name") != wmeta.get("name"):
        out.add(path, hline, f"HorizontalPodAutoscaler scales {ref.get('kind')}/{ref.get('name')}, not "
                f"{workload.get('kind')}/{wmeta.get('name')}", "point scaleTargetRef at the rendered workload")
    for m in spec.get("metrics") or []:
        kind = str(m.get("type", ""))
        ident = (m.get(kind[:1].lower() + kind[1:]) or {}).get("metric") or {}
        name = ident.get("name") or (m.get("resource") or {}).get("name")
        if name in LOAD_METRICS:
            key, value = LOAD_METRICS[name]
            if ((ident.get("selector") or {}).get("matchLabels") or {}).get(key) != value:
                out.add(path, hline, f"HPA metric {name} without selector {key}={value} sums every series of it",
                        f"add selector: {{matchLabels: {{{key}: {value}}}}}")
            continue
        why = ("reads 0 for the decoupled tensorrt_llm model (tensorrtllm_backend #284, #49)" if name in ZERO_FOR_DECOUPLED
               else "does not measure an LLM server's load (GPU-bound, decoupled requests)")
        out.add(path, hline, f"HPA metric {name!r} {why}", f"scale on {WAITING_METRIC} with selector request_type=waiting "
                "(or nv_trt_llm_kv_cache_block_metrics kv_cache_block_type=fraction)")
