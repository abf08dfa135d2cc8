"""Cross-artifact checks: repository, launch script, engine folder and manifests agree with one topology.

``check_deployment(repo, manifest, spec)`` recomputes the topology from the spec (the one in
tritongen.json, or the one given) and compares every artifact with it: the engine model's instance
count and GPU sets, the launch script's MPI world and shared-memory prefixes, the engine's rank files
and TensorRT-LLM version, and each Kubernetes object (schema first, then GPUs per pod, group size,
image, /dev/shm, probes, ports, selectors, autoscaling metric, volume paths). Each failure users
report becomes one problem with its fix. Reads files only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from generator.deploy.kubernetes import MANIFESTS, tritongen_secrets
from generator.deploy.launch import KUBESSH, LAUNCH_SCRIPT, launch_script
from generator.deploy.loadtest import LOADTEST_MANIFESTS
from generator.deploy.manifest_checks import Findings, check_manifests, security_review, valid_documents
from generator.deploy.topology import Topology
from generator.errors import TritongenError
from generator.fsutil import read_json_object, read_text_bounded
from generator.repo.manifest import MANIFEST, RepoManifest
from generator.repo.problems import Problem, count_value, model_instances, parse_config
from generator.spec import EngineTarget, Spec

ENGINE_MODEL = "tensorrt_llm"
CONFIGMAP_LIMIT = 1 << 20
"""Kubernetes stores a ConfigMap in etcd, which refuses objects over 1 MiB."""
CPU_ENGINE_MODEL = "tensorrt_llm_cpu"
def check_deployment(repo: Path, manifest: Optional[RepoManifest], spec: Optional[Spec]) -> list[Problem]:
    """Every disagreement between the rendered scale-out artifacts and the spec's topology."""
    out = Findings()
    if spec is None or manifest is None:
        return []
    target = manifest.target
    stand_in = manifest.cpu_stand_in
    gpu = not (stand_in if stand_in is not None else target is EngineTarget.cpu_reference)
    from generator.deploy.render import deploy_topology

    try:
        topo = deploy_topology(spec, target, gpu_visible=gpu)
    except TritongenError as exc:
        out.add(repo / MANIFEST, None, f"the spec's topology does not fit: {exc.message}", exc.fix or "fix the spec")
        return out.problems
    _check_engine_model(repo, topo, spec, out)
    _check_launch(repo, topo, out)
    if target is EngineTarget.tensorrtllm:
        _check_engine_files(spec, topo, manifest, out)
    manifests = repo / MANIFESTS
    if topo.gpu:
        if not manifests.is_file():
            out.add(manifests, None, "Kubernetes manifests are missing", "re-render with `tritongen render`")
        else:
            check_manifests(manifests, spec, topo, _version(spec, manifest, target), out)
        if (repo / LOADTEST_MANIFESTS).is_file():
            loadtest_docs = valid_documents(repo / LOADTEST_MANIFESTS, out)
            security_review(repo / LOADTEST_MANIFESTS, loadtest_docs, out, secrets=tritongen_secrets(spec))
            for doc, line in loadtest_docs:
                size = sum(len(str(v).encode()) for v in (doc.get("data") or {}).values())
                if doc.get("kind") == "ConfigMap" and size > CONFIGMAP_LIMIT:
                    out.add(repo / LOADTEST_MANIFESTS, line, f"ConfigMap data is {size:,} bytes; the API server "
                            f"refuses more than {CONFIGMAP_LIMIT:,}", "ship fewer files (re-render)")
    return out.problems


# ---------------------------------------------------------------- repository


def _check_engine_model(repo: Path, topo: Topology, spec: Spec, out: Findings) -> None:
    name = CPU_ENGINE_MODEL if topo.target is EngineTarget.llmapi and not topo.gpu else ENGINE_MODEL
    path = repo / name / "config.pbtxt"
    if not path.is_file():
        return  # reported by the repository checks
    parsed = parse_config(path, inside=repo)[0]
    if parsed is None:
        return
    text, cfg = parsed
    count = model_instances(cfg)  # count 0 is Triton's default, 1
    line = text.field("instance_group")
    if count != topo.instance_count:
        out.add(path, line, f"{name} runs {count} instance(s) but the topology has topology.instances_per_node "
                f"{topo.instance_count}", f"set instance_group count to {topo.instance_count} (re-render)")
    if cfg.backend == "tensorrtllm" and any(g.kind == 1 for g in cfg.instance_group):  # KIND_GPU
        out.add(path, line, "instance_group KIND_GPU: the tensorrtllm backend does not support it (it places ranks "
                "itself)", "use kind: KIND_CPU with the gpu_device_ids parameter (re-render)")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    _check_id_sets(path, text, "gpu_device_ids", params.get("gpu_device_ids"), topo.gpu_device_ids, topo,
                   range(topo.gpus_per_node) if topo.gpu else range(0), out)
    _check_id_sets(path, text, "participant_ids", params.get("participant_ids"), topo.participant_ids, topo,
                   range(1, topo.world_size), out)
    nodes = params.get("num_nodes")
    want_nodes = str(topo.nodes_per_instance) if topo.multi_node else None
    if cfg.backend == "tensorrtllm" and nodes != want_nodes:
        out.add(path, text.parameter("num_nodes") or text.field("parameters"),
                f"num_nodes is {nodes!r}; one instance of {topo.ranks_per_instance} ranks spans "
                f"{topo.nodes_per_instance} node(s)", f"set num_nodes to {want_nodes}" if want_nodes else "remove num_nodes")
    kv = params.get("max_tokens_in_paged_kv_cache")
    if topo.mode == "orchestrator" and topo.instance_count > 1 and not kv:
        out.add(path, text.field("parameters"), f"{topo.instance_count} instances without max_tokens_in_paged_kv_cache: "
                "each takes kv_cache_free_gpu_mem_fraction of what is free when it loads, so their KV caches differ",
                f"set max_tokens_in_paged_kv_cache to {topo.kv_tokens_per_instance} (re-render)")
    elif (tokens := count_value(kv)) is not None and topo.kv_tokens_per_instance and tokens > topo.kv_tokens_per_instance:
        out.add(path, text.parameter("max_tokens_in_paged_kv_cache"), f"max_tokens_in_paged_kv_cache {kv} exceeds the "
                f"{topo.kv_tokens_per_instance} tokens the memory plan leaves per instance",
                f"lower it to {topo.kv_tokens_per_instance} or use more GPUs per instance")


def _check_id_sets(path: Path, text: Any, key: str, got: Optional[str], want: Optional[str], topo: Topology,
                   allowed: range, out: Findings) -> None:
    line = text.parameter(key) or text.field("parameters")
    if got == want:
        return
    if want is None:
        out.add(path, line, f"{key} is {got!r} but this topology has no {key}", f"remove {key} (re-render)")
        return
    if not got:
        out.add(path, line, f"{key} is missing; {topo.instance_count} instances need one set each ({want!r})",
                f"set {key} to {want!r}")
        return
    sets = [[s.strip() for s in part.split(",") if s.strip()] for part in got.split(";")]
    ids = [n for s in sets for i in s if (n := count_value(i)) is not None]
    why = []
    if len(sets) != topo.instance_count:
        why.append(f"{len(sets)} set(s) for {topo.instance_count} instance(s)")
    if any(len(s) != topo.ranks_per_instance for s in sets):
        why.append(f"set sizes {[len(s) for s in sets]} but each instance has tp x pp = {topo.ranks_per_instance} ranks")
    if len(set(ids)) != len(ids):
        why.append("an id appears in two sets (instances would share a GPU)")
    if any(i not in allowed for i in ids):
        why.append(f"ids outside {allowed.start}..{allowed.stop - 1}")
    out.add(path, line, f"{key} is {got!r}" + (f": {'; '.join(why)}" if why else f", the topology gives {want!r}"),
            f"set {key} to {want!r} (re-render)")


def _check_launch(repo: Path, topo: Topology, out: Findings) -> None:
    path = repo / LAUNCH_SCRIPT
    if not path.is_file():
        out.add(path, None, "no launch script", "re-render with `tritongen render` (tritongen serve runs it)")
        return
    try:
        text = read_text_bounded(path, fix="re-render with `tritongen render`", limit=1 << 20, inside=repo)
    except TritongenError as exc:
        out.add(path, None, exc.message, exc.fix or "re-render")
        return
    prefixes = re.findall(r'shm-region-prefix-name="\$\{SHM_PREFIX\}(\d+)_"', text)
    ranks = len(prefixes)
    mpi = bool(re.search(r"^\s*exec mpirun\b", text, re.M))
    want_mpi = topo.launcher == "mpirun"
    before = len(out.problems)
    if ranks != topo.world_size:
        out.add(path, _line(text, "-n 1") or _line(text, "exec "), f"the script starts {ranks} tritonserver process(es) "
                f"but the MPI world must be {topo.world_size} ({_world_reason(topo)})", "re-render the launch script")
    if len(set(prefixes)) != len(prefixes):
        out.add(path, _line(text, "shm-region-prefix-name"), "two ranks share a Python-backend shared-memory prefix "
                "(their stubs would collide in /dev/shm)", "give every rank its own prefix (re-render)")
    if mpi != want_mpi:
        out.add(path, _line(text, "exec "), f"the script {'runs' if mpi else 'does not run'} mpirun but this topology "
                f"{'needs it' if want_mpi else 'starts one tritonserver'}", "re-render the launch script")
    explicit = text.count(f"--load-model={ENGINE_MODEL}")
    if mpi and explicit != max(ranks - 1, 0):
        out.add(path, _line(text, "--load-model"), f"{explicit} rank(s) load only {ENGINE_MODEL} but ranks 1..{ranks - 1} "
                "must (only rank 0 serves the other models and the endpoints)", "re-render the launch script")
    orchestrator = "TRTLLM_ORCHESTRATOR=1" in text
    if orchestrator != (topo.mode == "orchestrator"):
        out.add(path, _line(text, "TRTLLM_ORCHESTRATOR") or 1, f"TRTLLM_ORCHESTRATOR is {'set' if orchestrator else 'not set'}"
                f" but the engine runs in {topo.mode} mode", "re-render the launch script")
    if topo.multi_node and not (repo / KUBESSH).is_file():
        out.add(repo / KUBESSH, None, "mpirun's remote agent kubessh is missing", "re-render")
    if len(out.problems) == before and text != launch_script(topo):
        ours = launch_script(topo).splitlines()
        first = next((i for i, (a, b) in enumerate(zip(text.splitlines(), ours)) if a != b), min(len(ours), len(text.splitlines())))
        out.add(path, first + 1, "the launch script differs from the one this spec renders", "re-render instead of editing")


def _world_reason(topo: Topology) -> str:
    if topo.mode == "leader":
        return f"leader mode: tp {topo.tp} x pp {topo.pp}"
    if topo.mode == "orchestrator":
        return ("orchestrator mode spawns the ranks: world size 1" if topo.spawn_processes else
                f"orchestrator without spawning: 1 + {topo.instance_count} x {topo.ranks_per_instance}")
    return "one tritonserver" if topo.world_size == 1 else f"tp {topo.tp} x pp {topo.pp} under trtllm-llmapi-launch"


def _line(text: str, needle: str) -> Optional[int]:
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    return None


# ---------------------------------------------------------------- engine folder


def _version(spec: Spec, manifest: RepoManifest, target: EngineTarget) -> str:
    if target is EngineTarget.tensorrtllm:
        cfg = spec.engine_dir / "config.json"
        try:
            version = read_json_object(cfg, fix="").get("version")
        except TritongenError:
            version = None
        if isinstance(version, str):
            return version
    return manifest.tensorrt_llm_version


def _check_engine_files(spec: Spec, topo: Topology, manifest: RepoManifest, out: Findings) -> None:
    engine = spec.engine_dir
    if not (engine / "config.json").is_file():
        return  # "not built yet" is the repository check's warning
    have = sorted(int(m.group(1)) for p in engine.glob("rank*.engine") if (m := re.fullmatch(r"rank(\d+)\.engine", p.name)))
    want = list(range(topo.ranks_per_instance))
    if have != want:
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        out.add(engine, None, f"engine folder has rank files {have or 'none'} but tp {topo.tp} x pp {topo.pp} needs "
                f"rank0..rank{topo.ranks_per_instance - 1}.engine" + (f" (missing {missing})" if missing else "")
                + (f" (extra {extra})" if extra else ""),
                f"rebuild with build.tp_size={topo.tp} build.pp_size={topo.pp}: `tritongen build SPEC --force`")
    version = _version(spec, manifest, EngineTarget.tensorrtllm)
    rendered = manifest.tensorrt_llm_version
    if version != rendered:
        out.add(engine / "config.json", None, f"engine built with TensorRT-LLM {version}, repository rendered for "
                f"{rendered}", f"rebuild the engine with TensorRT-LLM {rendered}, or render for {version}")
