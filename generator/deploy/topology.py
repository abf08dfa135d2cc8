"""Topology: how many processes, GPUs, instances, pods and nodes one spec asks for, and whether it fits.

Pure: ``resolve_topology(spec, target, model_config)`` reads only its arguments (and the GPU table)
and returns a ``Topology`` that the repository, the launch script, the manifests and the checks all
read, so none of them re-derives a rank count. Every refusal names the numbers that clash.

Upstream rules (TensorRT-LLM ``triton_backend``, read at the commits in generator/data/deploy.json):
- leader mode: the MPI world is exactly tp x pp tritonserver processes, one instance per world;
- orchestrator mode: one tritonserver that spawns each instance's ranks (world size 1), or, without
  spawning, 1 + instances x tp x pp MPI ranks with rank 0 the orchestrator and ``participant_ids``;
- ``gpu_device_ids`` lists one comma-separated GPU set per instance, ``;`` between instances;
- the LLM-API model runs several instances without MPI (``--no-mpi``) with ``gpu_device_ids``.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict

from generator.engine.rules import errors, memory_fits, parallel_layout
from generator.errors import PlanRefused
from generator.spec import EngineTarget, Spec


Launcher = Literal["tritonserver", "mpirun"]
EngineMode = Literal["leader", "orchestrator", "none"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InstancePlacement(_Frozen):
    """One model instance: its GPUs on the node and, without spawning, its MPI ranks."""

    index: int
    device_ids: tuple[int, ...]
    participant_ids: tuple[int, ...] = ()


class Topology(_Frozen):
    """Everything about processes and placement that the other artifacts must agree on."""

    target: EngineTarget
    tp: int
    pp: int
    gpus_per_node: int
    nodes: int
    instances_per_node: int
    ranks_per_instance: int
    """tp x pp: GPUs (and engine rank files) of one instance."""
    nodes_per_instance: int
    """1 when an instance fits in a node; else the whole nodes it spans (pods of one LeaderWorkerSet group)."""
    replicas: int
    """Independent servers: one per node, or one per group of nodes_per_instance nodes."""
    gpus_per_pod: int
    """GPUs one pod requests (nvidia.com/gpu): the ranks that run on its node."""
    mode: EngineMode
    """Engine path: leader or orchestrator; none for the LLM-API and CPU targets."""
    spawn_processes: bool
    launcher: Launcher
    world_size: int
    """Processes in the MPI world the launch script starts (1 without mpirun)."""
    llmapi_launch: bool
    """Each rank runs under trtllm-llmapi-launch (LLM-API across nodes)."""
    instances: tuple[InstancePlacement, ...]
    gpu: bool
    weights_per_gpu_bytes: Optional[int] = None
    kv_tokens_per_instance: Optional[int] = None
    gpu_memory_bytes: Optional[int] = None
    notes: tuple[str, ...] = ()

    @property
    def instance_count(self) -> int:
        """Triton instance_group count of the engine model."""
        return self.instances_per_node

    @property
    def gpu_device_ids(self) -> Optional[str]:
        """The tensorrt_llm parameter: ``0,1;2,3`` (None when one instance owns every visible GPU)."""
        if not self.gpu or self.instances_per_node == 1:
            return None
        return ";".join(",".join(str(d) for d in inst.device_ids) for inst in self.instances)

    @property
    def participant_ids(self) -> Optional[str]:
        if not any(inst.participant_ids for inst in self.instances):
            return None
        return ";".join(",".join(str(r) for r in inst.participant_ids) for inst in self.instances)

    @property
    def multi_node(self) -> bool:
        return self.nodes_per_instance > 1

    @property
    def orchestrator_env(self) -> dict[str, str]:
        if self.mode != "orchestrator":
            return {}
        return {"TRTLLM_ORCHESTRATOR": "1", "TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES": "1" if self.spawn_processes else "0"}


def topology_refusals(spec: Spec, target: EngineTarget, shape: Any = None, gpu: Any = None) -> list[str]:
    """Every reason this topology cannot run, each naming the numbers (empty when it fits)."""
    b, t = spec.build, spec.topology
    tp, pp = b.tp_size, b.pp_size
    ranks = tp * pp
    gpn = gpus_per_node(spec)
    out: list[str] = []
    gpu_target = target is EngineTarget.tensorrtllm or target is EngineTarget.llmapi and gpu is not None
    if target is EngineTarget.cpu_reference or (target is EngineTarget.llmapi and gpu is None):
        if ranks > 1:
            out.append(f"build.tp_size {tp} x build.pp_size {pp} = {ranks} ranks, but the CPU reference engine runs "
                       "one process per instance: keep tp_size=1 and pp_size=1, or render for a GPU target")
        if t.nodes > 1:
            out.append(f"topology.nodes is {t.nodes}; the CPU reference repository runs on one machine: set topology.nodes=1")
    if t.mode != "auto" and target is not EngineTarget.tensorrtllm:
        out.append(f"topology.mode={t.mode} applies to the engine path (serving.engine=tensorrtllm) only: set it to auto")
    if not t.spawn_processes and (target is not EngineTarget.tensorrtllm or _mode(spec, target) != "orchestrator"):
        out.append("topology.spawn_processes=false applies to orchestrator mode of the engine path only: set it to true")
    if gpu_target:
        if ranks <= gpn:
            need = ranks * t.instances_per_node
            if need > gpn:
                out.append(f"build.tp_size {tp} x build.pp_size {pp} x topology.instances_per_node {t.instances_per_node} "
                           f"= {need} GPUs, but topology.gpus_per_node is {gpn}: lower instances_per_node to "
                           f"{gpn // ranks} or raise gpus_per_node to {need}")
        else:
            if ranks % gpn:
                out.append(f"build.tp_size {tp} x build.pp_size {pp} = {ranks} ranks spans nodes but is not a multiple of "
                           f"topology.gpus_per_node {gpn}: every node of an instance must run the same "
                           f"number of ranks (use gpus_per_node {_divisor_hint(ranks, gpn)})")
            else:
                span = ranks // gpn
                if t.instances_per_node > 1:
                    out.append(f"topology.instances_per_node is {t.instances_per_node}, but one instance of {ranks} ranks "
                               f"spans {span} nodes of {gpn} GPUs: set instances_per_node=1")
                if t.nodes % span:
                    out.append(f"topology.nodes {t.nodes} is not a multiple of the {span} nodes one instance of {ranks} "
                               f"ranks needs ({gpn} GPUs per node): set topology.nodes to {span * max(1, t.nodes // span)}")
        if target is EngineTarget.tensorrtllm:
            mode = _mode(spec, target)
            if mode == "leader" and t.instances_per_node > 1:
                out.append(f"topology.mode=leader runs one instance per MPI world, but instances_per_node is "
                           f"{t.instances_per_node}: use topology.mode=orchestrator (or auto)")
            if mode == "orchestrator" and ranks > gpn:
                out.append(f"topology.mode=orchestrator spawns ranks on one node, but an instance of {ranks} ranks spans "
                           f"{math.ceil(ranks / gpn)} nodes: use topology.mode=leader (or auto)")
    if shape is not None:
        out += [f.text for f in errors(parallel_layout(tp, pp, shape))]
    return out


def _mode(spec: Spec, target: EngineTarget) -> EngineMode:
    if target is not EngineTarget.tensorrtllm:
        return "none"
    if spec.topology.mode != "auto":
        return spec.topology.mode
    return "orchestrator" if spec.topology.instances_per_node > 1 else "leader"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and d <= 64]


def _divisor_hint(ranks: int, gpus: int) -> str:
    fits = [d for d in _divisors(ranks) if d <= gpus]
    return str(max(fits)) if fits else "1"


def resolve_topology(spec: Spec, target: EngineTarget, *, model_config: Optional[dict[str, Any]] = None,
                     gpu_visible: bool = True) -> Topology:
    """The topology of ``spec`` for ``target``; raises with every refusal at once.

    ``model_config`` (the model's config.json) enables the head and per-GPU memory checks; without it
    they are skipped and a note says so. ``gpu_visible`` matters for the LLM-API target only (without a
    GPU it renders the CPU stand-in).
    """
    from generator.engine.gpus import lookup_gpu

    b = spec.build
    gpu_target = target is EngineTarget.tensorrtllm or (target is EngineTarget.llmapi and gpu_visible)
    gpu = lookup_gpu(b.gpu) if gpu_target else None
    shape = None
    notes: list[str] = []
    if model_config is not None:
        from generator.engine.shape import model_shape

        shape = model_shape(model_config)
    elif gpu_target:
        notes.append("no model config.json: attention-head and per-GPU memory checks skipped")
    refusals = topology_refusals(spec, target, shape, gpu)
    memory = None
    if shape is not None and gpu is not None and not refusals:
        from generator.engine.memory import memory_plan

        memory = memory_plan(spec, shape, gpu)
        refusals += [f.text for f in errors(memory_fits(memory, gpu, b.tp_size, b.pp_size, b.max_batch_size))]
    if refusals:
        raise PlanRefused("the topology does not fit:\n  " + "\n  ".join(refusals), where="topology",
                             fix="change the fields named above (tritongen plan SPEC shows the memory per GPU)")
    return _placement(spec, target, gpu_target, memory, notes)


def gpus_per_node(spec: Spec) -> int:
    """topology.gpus_per_node, or by default exactly the GPUs one node's instances need."""
    t, b = spec.topology, spec.build
    return t.gpus_per_node or b.tp_size * b.pp_size * t.instances_per_node


def _placement(spec: Spec, target: EngineTarget, gpu_target: bool, memory: Any, notes: list[str]) -> Topology:
    b, t = spec.build, spec.topology
    ranks = b.tp_size * b.pp_size
    gpn = gpus_per_node(spec)
    mode = _mode(spec, target)
    span = max(1, ranks // gpn) if gpu_target and ranks > gpn else 1
    instances = []
    for i in range(t.instances_per_node):
        devices = tuple(range(i * ranks, (i + 1) * ranks)) if gpu_target and span == 1 else ()
        participants = tuple(range(1 + i * ranks, 1 + (i + 1) * ranks)) \
            if mode == "orchestrator" and not t.spawn_processes else ()
        instances.append(InstancePlacement(index=i, device_ids=devices, participant_ids=participants))
    llmapi_gpu = target is EngineTarget.llmapi and gpu_target
    if mode == "leader" and ranks > 1:
        launcher, world = "mpirun", ranks
    elif mode == "orchestrator" and not t.spawn_processes:
        launcher, world = "mpirun", 1 + t.instances_per_node * ranks
    elif llmapi_gpu and span > 1:
        launcher, world = "mpirun", ranks
    elif llmapi_gpu and t.instances_per_node == 1:
        # launch_triton_server.py's default: the LLM spawns its tp x pp workers from an MPI world of 1.
        launcher, world = "mpirun", 1
    else:
        launcher, world = "tritonserver", 1
    if mode == "orchestrator":
        notes.append("orchestrator mode: each instance takes kv_cache_free_gpu_mem_fraction of what is free when it "
                     "loads, so max_tokens_in_paged_kv_cache sizes each instance's KV cache instead")
    kv_tokens = None
    if memory is not None:
        kv_tokens = memory.kv_tokens
        if spec.serving.max_tokens_in_paged_kv_cache is not None:
            kv_tokens = min(kv_tokens, spec.serving.max_tokens_in_paged_kv_cache)
    return Topology(
        target=target, tp=b.tp_size, pp=b.pp_size, gpus_per_node=gpn, nodes=t.nodes,
        instances_per_node=t.instances_per_node, ranks_per_instance=ranks, nodes_per_instance=span,
        replicas=t.nodes // span, gpus_per_pod=(gpn if span > 1 else ranks * t.instances_per_node)
        if gpu_target else 0,
        mode=mode, spawn_processes=t.spawn_processes, launcher=launcher, world_size=world,
        llmapi_launch=llmapi_gpu and span > 1, instances=tuple(instances), gpu=gpu_target,
        weights_per_gpu_bytes=memory.weights_per_gpu_bytes if memory else None, kv_tokens_per_instance=kv_tokens,
        gpu_memory_bytes=memory.gpu_bytes if memory else None, notes=tuple(notes),
    )
