"""The scale-out files of a rendered repository, decided from the spec and its topology.

``deploy_topology`` resolves the topology once for render; ``deploy_files`` returns the launch script
(always), ``kubessh`` (instances spanning nodes) and, for GPU targets, ``kubernetes.yaml`` and
``kubernetes-loadtest.yaml``. They are files at the repository's top level: Triton treats every
folder there as a model, and ignores files.
"""

from __future__ import annotations

from typing import Any, Optional

from generator.deploy.kubernetes import MANIFESTS, render_manifests, repository_path
from generator.deploy.launch import KUBESSH, LAUNCH_SCRIPT, kubessh_script, launch_script
from generator.deploy.loadtest import (
    LOADTEST_DOCKERFILE, LOADTEST_MANIFESTS, render_loadtest_dockerfile, render_loadtest_manifests,
)
from generator.deploy.topology import Topology, resolve_topology
from generator.errors import SpecError, TritongenError
from generator.spec import EngineTarget, Spec
from generator.templating import stub_launch_problem


def model_config_or_none(spec: Spec) -> Optional[dict[str, Any]]:
    """The model's config.json when one can be read (local, downloaded, or the shipped Qwen3-8B one)."""
    from generator.engine.shape import read_model_config

    try:
        return read_model_config(spec)[0]
    except TritongenError:
        return None


def deploy_topology(spec: Spec, target: EngineTarget, gpu_visible: bool) -> Topology:
    return resolve_topology(spec, target, model_config=model_config_or_none(spec), gpu_visible=gpu_visible)


def deploy_files(spec: Spec, topo: Topology, trtllm_version: str) -> dict[str, str]:
    files = {LAUNCH_SCRIPT: launch_script(topo)}
    if topo.multi_node:
        files[KUBESSH] = kubessh_script()
    if topo.gpu:
        _check_served_path(spec)
        files[MANIFESTS] = render_manifests(spec, topo, trtllm_version)
        files[LOADTEST_MANIFESTS] = render_loadtest_manifests(spec)
        files[LOADTEST_DOCKERFILE] = render_loadtest_dockerfile(spec)
    return files


def _check_served_path(spec: Spec) -> None:
    """The pods' tritonserver serves the repository at repository_path: refuse a path Triton's Python backend
    would split or run as commands (generator.templating.stub_launch_problem), naming the field it comes from."""
    unsafe = stub_launch_problem(repository_path(spec))
    if unsafe:
        field = "kubernetes.repository_path" if spec.kubernetes.repository_path is not None else "artifacts.dir"
        raise SpecError(f"the pods' repository path {unsafe}", where=field,
                        fix=f"set {field} to a path without these characters")


def engine_parameters(topo: Topology, spec: Spec) -> list[tuple[str, Any]]:
    """tensorrt_llm parameters that follow from the topology (None: not set)."""
    kv = spec.serving.max_tokens_in_paged_kv_cache
    if kv is None and topo.mode == "orchestrator":
        kv = topo.kv_tokens_per_instance
    return [
        ("gpu_device_ids", topo.gpu_device_ids),
        ("participant_ids", topo.participant_ids),
        ("num_nodes", topo.nodes_per_instance if topo.multi_node else None),
        ("max_tokens_in_paged_kv_cache", kv),
    ]
