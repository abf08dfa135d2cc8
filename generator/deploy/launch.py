"""The launch script of a rendered repository: exactly the processes the topology needs.

Pure: ``rank_commands(topology)`` decides each process's tritonserver arguments (following
TensorRT-LLM's ``triton_backend/scripts/launch_triton_server.py``: one ``-n 1`` block per rank under
``mpirun``, each with its own Python-backend shared-memory prefix, ranks other than 0 loading only
``tensorrt_llm`` with their endpoints off); ``launch_script(topology)`` lays them out through
templates/deploy/launch.sh.j2. ``tritongen serve`` runs the same script, so what is served here is
what the script starts.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from generator.deploy.topology import Topology

LAUNCH_SCRIPT = "launch.sh"
KUBESSH = "kubessh"
ENGINE_MODEL = "tensorrt_llm"
SHM_PREFIX_DEFAULT = "prefix"
"""Upstream's prefix (prefix0_, prefix1_, ...); ``tritongen serve`` passes its own through SHM_PREFIX."""


class RankCommand(BaseModel):
    """One tritonserver process: the arguments after ``--model-repository`` and ``"$@"``."""

    model_config = ConfigDict(frozen=True)

    rank: int
    prefix: tuple[str, ...] = ()
    """Programs before tritonserver (trtllm-llmapi-launch)."""
    args: tuple[str, ...]


def rank_commands(topo: Topology) -> list[RankCommand]:
    """The tritonserver processes the script starts, rank 0 first."""
    prefix = ("trtllm-llmapi-launch",) if topo.llmapi_launch else ()
    common: list[str] = []
    if topo.gpu:
        common.append("--disable-auto-complete-config")
    if topo.mode == "orchestrator" and topo.spawn_processes:
        # launch_triton_server.py --multi-model: no pinned or CUDA pools in the orchestrator process.
        common += ["--pinned-memory-pool-byte-size=0", "--enable-peer-access=false"]
        common += [f"--cuda-memory-pool-byte-size={g}:0" for g in range(topo.gpus_per_pod)]
    ranks = topo.world_size if topo.launcher == "mpirun" else 1
    out = []
    for rank in range(ranks):
        args = list(common)
        if rank:
            args += ["--allow-http=false", "--allow-grpc=false", "--allow-metrics=false",
                     "--model-control-mode=explicit", f"--load-model={ENGINE_MODEL}"]
        out.append(RankCommand(rank=rank, prefix=prefix, args=tuple(args)))
    return out


def launch_env(topo: Topology) -> dict[str, str]:
    """Environment the script exports (orchestrator mode)."""
    return dict(topo.orchestrator_env)


def _describe(topo: Topology) -> str:
    where = (f"{topo.nodes_per_instance} nodes x {topo.gpus_per_node} GPUs" if topo.multi_node
             else f"{topo.gpus_per_pod} GPU(s)" if topo.gpu else "CPU")
    return (f"target {topo.target.value}, tp {topo.tp} x pp {topo.pp}, {topo.instances_per_node} instance(s) per "
            f"server, {where}, mode {topo.mode}, launcher {topo.launcher}, MPI world {topo.world_size}")


def launch_script(topo: Topology) -> str:
    from generator.deploy.templates import render

    return render("launch.sh.j2", topo=topo, description=_describe(topo), ranks=rank_commands(topo), env=launch_env(topo),
                  mpirun=topo.launcher == "mpirun", multi_node=topo.multi_node, kubessh=KUBESSH,
                  shm_default=SHM_PREFIX_DEFAULT)


def kubessh_script() -> str:
    from generator.deploy.templates import render

    return render("kubessh.j2")
