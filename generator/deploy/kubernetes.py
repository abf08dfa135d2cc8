"""Kubernetes manifests for a GPU repository: values decided here, layout in templates/deploy/.

One node per instance: a Deployment. An instance spanning nodes: a LeaderWorkerSet
(``leaderworkerset.x-k8s.io/v1``) whose group is the instance's pods, the leader running mpirun over
them through kubessh as LWS's TensorRT-LLM example does. Around them: a Service (HTTP, gRPC, metrics),
a PodMonitor for ``/metrics``, and on the engine path a HorizontalPodAutoscaler on the in-flight
batcher's waiting requests. Every size comes from the topology and the memory plan; the reasons are
written into the YAML as comments.
"""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from generator.deploy.launch import KUBESSH, LAUNCH_SCRIPT
from generator.deploy.topology import Topology
from generator.engine.memory import GIB
from generator.errors import PlanRefused
from generator.resources import data_json
from generator.serve.adminapi import admin_credential, restriction_flags
from generator.spec import EngineTarget, Spec
from generator.spec.base import INT32_MAX

MANIFESTS = "kubernetes.yaml"
DATA_FILE = "deploy.json"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
MIB = 1 << 20

PROBE_PERIOD_S = 10
STARTUP_BASE_S = 180
"""Server start, model configs, CUDA context and NCCL set-up before weights load: an assumption."""
SHM_PER_GPU_MIB = 256
"""NCCL's shared-memory transport between the GPUs of one pod: an allowance, not a measurement."""
SHM_MIN_MIB = 256
"""Never below this: Docker's 64 MiB default is the size users report the Python backend failing at."""

ADMIN_KEY_DIR = "/var/run/tritongen-admin"
"""Where the server pods mount the admin-key Secret (key ``key``)."""
CPU_PER_RANK = 2
"""Cores per GPU rank: the rank's own thread plus the in-flight batcher's and NCCL's (an allowance)."""
CPU_PER_PYTHON_INSTANCE = 1
"""Cores per Python-backend instance (tokenizing, the BLS): an allowance."""
MEMORY_BASE_GIB = 8
"""Host memory of a server beside the weights: tritonserver, Python stubs, tokenizers, CUDA (an allowance)."""
MEMORY_NO_PLAN_GIB = 64
"""Host memory allowed for the weights when no memory plan exists (no model config.json): an assumption."""

WAITING_METRIC = "nv_trt_llm_request_metrics"
HPA_REASON = (
    "Scales on nv_trt_llm_request_metrics{request_type=\"waiting\"}: requests the in-flight batcher could not "
    "schedule yet, the queue of a decoupled LLM model. Triton's queue/compute duration ratio (NVIDIA's tutorials) "
    "reads 0 for the decoupled tensorrt_llm model (tensorrtllm_backend #284, #49). Needs a custom-metrics adapter "
    "(e.g. prometheus-adapter) serving this Prometheus series as a pods metric."
)


def deploy_data() -> dict[str, Any]:
    return data_json(DATA_FILE)


class PodSizing(BaseModel):
    """What one pod needs, with the arithmetic spelled out for the comments and the checks."""

    model_config = ConfigDict(frozen=True)

    shm_mib: int
    shm_reason: str
    startup_budget_s: int
    startup_reason: str
    failure_threshold: int
    cpu: int
    """Cores requested and limited per pod."""
    cpu_reason: str
    memory_gib: int
    """Host memory requested and limited per pod (GiB)."""
    memory_reason: str


def python_instances(spec: Spec, target: EngineTarget) -> int:
    """Python-backend model instances in the serving process (each has a stub with its own shm region)."""
    s = spec.serving
    if target is EngineTarget.llmapi:
        return spec.topology.instances_per_node
    count = s.preprocessing_instances + s.postprocessing_instances + (spec.bls_instance_count if s.bls else 0)
    return count + (spec.topology.instances_per_node if target is EngineTarget.cpu_reference else 0)


def pod_sizing(spec: Spec, topo: Topology) -> PodSizing:
    """/dev/shm size and the startup probe's budget for one pod."""
    b = spec.build
    per_instance = 1 * MIB + 16 * spec.triton_max_batch_size * b.resolved_max_seq_len
    py = python_instances(spec, topo.target)
    need = py * per_instance + topo.gpus_per_pod * SHM_PER_GPU_MIB * MIB + 64 * MIB
    shm = max(SHM_MIN_MIB, math.ceil(need / (64 * MIB)) * 64)
    shm_reason = (f"{py} Python-backend instance(s) x (1 MiB region + 16 B x max_batch_size "
                  f"{spec.triton_max_batch_size} x max_seq_len {b.resolved_max_seq_len} of token tensors) + "
                  f"{SHM_PER_GPU_MIB} MiB x {topo.gpus_per_pod} GPU(s) for NCCL + 64 MiB, in 64 MiB steps, "
                  f"at least {SHM_MIN_MIB} MiB")
    if topo.weights_per_gpu_bytes is not None:
        gib = topo.weights_per_gpu_bytes / GIB
        load_s = gib / spec.kubernetes.load_gib_per_s
        budget = 2 * (STARTUP_BASE_S + load_s)
        startup_reason = (f"2 x ({STARTUP_BASE_S} s start-up + {gib:.2f} GiB planned per GPU at "
                          f"kubernetes.load_gib_per_s {spec.kubernetes.load_gib_per_s:g} GiB/s = {load_s:.0f} s)")
    else:
        budget = 2 * (STARTUP_BASE_S + 600)
        startup_reason = f"no memory plan (no model config.json): 2 x ({STARTUP_BASE_S} s + 600 s)"
    threshold = kube_int(budget / PROBE_PERIOD_S)
    cpu = topo.gpus_per_pod * CPU_PER_RANK + py * CPU_PER_PYTHON_INSTANCE
    cpu_reason = (f"{CPU_PER_RANK} x {topo.gpus_per_pod} GPU rank(s) + {CPU_PER_PYTHON_INSTANCE} x {py} "
                  "Python-backend instance(s)")
    if topo.weights_per_gpu_bytes is not None:
        weights = math.ceil(topo.weights_per_gpu_bytes * topo.gpus_per_pod / GIB)
        weights_reason = f"{weights} GiB of planned weights for the pod's {topo.gpus_per_pod} GPU(s) (staged in host memory while loading)"
    else:
        weights, weights_reason = MEMORY_NO_PLAN_GIB, f"{MEMORY_NO_PLAN_GIB} GiB for weights (no memory plan)"
    memory = MEMORY_BASE_GIB + weights + math.ceil(shm / 1024)
    memory_reason = f"{MEMORY_BASE_GIB} GiB server + {weights_reason} + /dev/shm {shm} MiB (counted as memory)"
    return PodSizing(shm_mib=shm, shm_reason=shm_reason, startup_budget_s=threshold * PROBE_PERIOD_S,
                     startup_reason=startup_reason, failure_threshold=threshold, cpu=cpu, cpu_reason=cpu_reason,
                     memory_gib=memory, memory_reason=memory_reason)


def expected_image(version: str) -> Optional[str]:
    """NVIDIA's Triton container for a TensorRT-LLM version (None when the table does not know it)."""
    return deploy_data()["triton_images"].get(version)


def server_image(spec: Spec, trtllm_version: str) -> str:
    if spec.kubernetes.image:
        return spec.kubernetes.image
    image = expected_image(trtllm_version)
    if image is None:
        raise PlanRefused(f"no known Triton container for TensorRT-LLM {trtllm_version}", where="kubernetes.image",
                             fix="set kubernetes.image to the NGC tritonserver <yy.mm>-trtllm-python-py3 tag of that version")
    return image


def repository_path(spec: Spec) -> Path:
    """Where the pods find the rendered repository (on the artifacts volume)."""
    if spec.kubernetes.repository_path is not None:
        return spec.path(spec.kubernetes.repository_path)
    return spec.path(spec.artifacts.dir) / "repository"


def read_paths(spec: Spec) -> list[Path]:
    """Every folder the served repository reads: engine, weights and tokenizer, the repository itself."""
    return [spec.path(spec.artifacts.dir), spec.engine_dir, spec.serving_weights_dir, repository_path(spec)]


def artifacts_mount(spec: Spec) -> Path:
    """Where every pod mounts the artifacts volume: the deepest folder holding all of read_paths, so the
    absolute paths written into the repository are the same in the pod."""
    return Path(os.path.commonpath([str(p) for p in read_paths(spec)]))


def labels(spec: Spec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.kubernetes.name, "app.kubernetes.io/component": "triton"}


def admin_secret(spec: Spec) -> str:
    """The Secret holding the server's admin key (created by the user, never rendered)."""
    return f"{spec.kubernetes.name}-admin-key"


def tritongen_secrets(spec: Spec) -> tuple[str, str]:
    """Every Secret the rendered pods read: validate refuses a pod that reads another."""
    return admin_secret(spec), loadtest_secret(spec)


def loadtest_secret(spec: Spec) -> str:
    """The Secret holding the in-cluster load test's run token (created by the user, never rendered)."""
    return f"{spec.kubernetes.name}-loadtest-token"


def kube_int(value: float) -> int:
    """A count of seconds or probes for a manifest, rounded up and at most INT32_MAX (Kubernetes' int32 fields;
    about 68 years): tiny rates or huge durations made values the API server refuses, or infinity."""
    return math.ceil(min(value, INT32_MAX))


def kube_literal(text: str) -> str:
    """``text`` as a container command argument: Kubernetes expands ``$(VAR)`` there and reads ``$$`` as ``$``."""
    return text.replace("$", "$$")


def pod_security(spec: Spec) -> dict[str, Any]:
    """The pod securityContext of Pod Security "restricted": non-root, the runtime's seccomp profile."""
    uid = spec.kubernetes.run_as_user
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}
"""The container securityContext of Pod Security "restricted"."""


def worker_pod_names(spec: Spec, topo: Topology) -> list[str]:
    """LeaderWorkerSet's worker pods (<name>-<group>-<index>) of every group the autoscaler may start: the only
    pods the leader may exec into."""
    groups = max(spec.kubernetes.hpa_max_replicas, topo.replicas)
    return [f"{spec.kubernetes.name}-{g}-{i}" for g in range(groups) for i in range(1, topo.nodes_per_instance)]


def server_shell(spec: Spec, topo: Topology, startup_budget_s: int) -> str:
    """The server container's shell: read the admin key from the mounted Secret, wait for the group's
    workers (several nodes), then run the launch script with the admin APIs restricted. Every value is a
    quoted shell word; the key reaches tritonserver's arguments inside the pod only (Triton 2.51 takes it
    nowhere else)."""
    launch = [str(repository_path(spec) / LAUNCH_SCRIPT)] + [f"--{name}-port={port}" for name, port in PORTS.items()]
    flags = " ".join(f'"{flag}"' for flag in restriction_flags(admin_credential("$key")))
    script = f'key="$(cat {ADMIN_KEY_DIR}/key)" && '
    if topo.multi_node:
        workers = " ".join(f'"pod/$POD_NAME-{i}"' for i in range(1, topo.nodes_per_instance))
        script += f"kubectl wait --for=condition=Ready {workers} --timeout={startup_budget_s}s && "
    return kube_literal(script + f"exec /bin/sh {shlex.join(launch)} {flags}")


def manifest_values(spec: Spec, topo: Topology, trtllm_version: str) -> dict[str, Any]:
    """Every value of kubernetes.yaml."""
    k = spec.kubernetes
    sizing = pod_sizing(spec, topo)
    repo = repository_path(spec)
    pod_labels = labels(spec)
    leader_labels = {**pod_labels, "role": "leader"} if topo.multi_node else pod_labels
    # $(POD_NAME) in an env value is expanded by Kubernetes from the container's env.
    hosts = ",".join(["$(POD_NAME):%d" % topo.gpus_per_node] +
                     [f"$(POD_NAME)-{i}:{topo.gpus_per_node}" for i in range(1, topo.nodes_per_instance)])
    command = ["/bin/sh", "-c", server_shell(spec, topo, sizing.startup_budget_s)]
    return {
        "name": k.name, "namespace": k.namespace, "labels": pod_labels, "leader_labels": leader_labels,
        "image": server_image(spec, trtllm_version), "trtllm_version": trtllm_version,
        "topo": topo, "multi_node": topo.multi_node, "replicas": topo.replicas, "group_size": topo.nodes_per_instance,
        "gpus": topo.gpus_per_pod, "command": command, "mpi_hosts": hosts,
        "worker_command": ["/bin/sh", "-c", "echo " + shlex.quote("rank host: mpirun on the leader starts this pod's "
                                                                 "ranks via kubectl exec") + "; exec sleep infinity"],
        "ports": PORTS, "sizing": sizing, "probe_period": PROBE_PERIOD_S,
        "volume_claim": k.volume_claim, "artifacts": str(artifacts_mount(spec)), "repository": str(repo),
        "hpa": topo.target is EngineTarget.tensorrtllm, "hpa_reason": HPA_REASON, "hpa_metric": WAITING_METRIC,
        "hpa_min": topo.replicas, "hpa_max": max(k.hpa_max_replicas, topo.replicas),
        "hpa_target": str(k.hpa_waiting_requests),
        "workload_api": "leaderworkerset.x-k8s.io/v1" if topo.multi_node else "apps/v1",
        "workload_kind": "LeaderWorkerSet" if topo.multi_node else "Deployment",
        "kubessh": KUBESSH,
        "pod_security": pod_security(spec), "container_security": CONTAINER_SECURITY,
        "cpu": str(sizing.cpu), "memory": f"{sizing.memory_gib}Gi",
        "admin_secret": admin_secret(spec), "admin_key_dir": ADMIN_KEY_DIR,
        "worker_pods": worker_pod_names(spec, topo) if topo.multi_node else [],
    }


def render_manifests(spec: Spec, topo: Topology, trtllm_version: str) -> str:
    from generator.deploy.templates import render

    return render("kubernetes.yaml.j2", **manifest_values(spec, topo, trtllm_version))
