"""Scale-out: topology refusals, the rendered launch script and manifests, offline validation of all of
them together (no false alarm over many topologies, every corpus mutation caught with its fix)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.deploy.checks import check_deployment
from generator.repo.manifest import read_manifest
from generator.deploy.loadtest import LOADTEST_MANIFESTS, package_files
from generator.deploy.topology import resolve_topology
from generator.errors import SpecError, TritongenError
from generator.repo.problems import failing
from generator.repo.render import render_repository
from generator.repo.validate import validate_repository
from generator.spec import EngineTarget, load_spec

QWEN3 = json.loads((Path(__file__).parent / "data" / "qwen3-8b-config.json").read_text())

# (gpus_per_node, nodes, instances_per_node, tp, pp, extra overrides)
TOPOLOGIES = [
    (1, 1, 1, 1, 1, ()), (2, 1, 2, 1, 1, ()), (2, 1, 1, 2, 1, ()), (4, 1, 2, 2, 1, ()), (4, 1, 4, 1, 1, ()),
    (8, 1, 1, 8, 1, ()), (8, 1, 2, 2, 2, ()), (8, 2, 1, 8, 2, ()), (4, 2, 1, 4, 2, ()), (8, 4, 1, 4, 1, ()),
    (4, 4, 1, 8, 2, ()), (1, 2, 1, 2, 1, ()), (8, 1, 4, 2, 1, ()), (2, 3, 1, 2, 1, ()), (8, 1, 1, 4, 2, ()),
    (4, 1, 2, 2, 1, ("topology.spawn_processes=false",)), (2, 1, 1, 2, 1, ("topology.mode=orchestrator",)),
]
LLMAPI_TOPOLOGIES = [(1, 1, 1, 1, 1), (4, 1, 2, 2, 1), (8, 2, 1, 8, 2), (4, 1, 4, 1, 1), (2, 2, 1, 2, 1),
                     (4, 4, 1, 4, 4)]


def topo_overrides(gpus, nodes, instances, tp, pp, *extra):
    return [f"topology.gpus_per_node={gpus}", f"topology.nodes={nodes}", f"topology.instances_per_node={instances}",
            f"build.tp_size={tp}", f"build.pp_size={pp}", *extra]


@pytest.fixture(scope="module")
def weights(tmp_path_factory, tokenizer_weights_dir) -> Path:
    """A served-weights folder: the small tokenizer plus an NVFP4 + FP8 KV quantization record."""
    out = tmp_path_factory.mktemp("art") / "checkpoint"
    shutil.copytree(tokenizer_weights_dir, out)
    (out / "hf_quant_config.json").write_text(json.dumps(
        {"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}}), encoding="utf-8")
    return out


def gpu_spec(weights: Path, engine: str, *overrides: str):
    """Qwen3-8B (its shipped config.json) on B200s, everything under one artifacts folder."""
    return load_spec(None, [f"artifacts.dir={weights.parent}", f"artifacts.checkpoint_dir={weights}",
                            f"serving.engine={engine}", "build.gpu=b200", *overrides])


def render_gpu(spec, out: Path, build_engine) -> Path:
    """Render for a GPU host with the engine a build would leave (test double) and NVIDIA's model.py copied in."""
    if spec.serving.engine is EngineTarget.tensorrtllm:
        shutil.rmtree(spec.engine_dir, ignore_errors=True)
        build_engine(spec)
    repo = render_repository(spec, out, gpu_visible=True, force=True)
    if spec.serving.engine is EngineTarget.llmapi:
        (repo / "tensorrt_llm" / "1" / "model.py").write_text("# NVIDIA's model.py, copied by the user\n")
    return repo


# ---------------------------------------------------------------- topology


@pytest.mark.parametrize("overrides, words", [
    (topo_overrides(4, 1, 3, 2, 1), "2 x build.pp_size 1 x topology.instances_per_node 3 = 6 GPUs, but topology.gpus_per_node is 4"),
    (topo_overrides(8, 1, 1, 3, 1), "build.tp_size 3 does not divide the model's 32 attention heads"),
    (topo_overrides(8, 1, 1, 12, 1), "12 ranks spans nodes but is not a multiple of topology.gpus_per_node 8"),
    (topo_overrides(8, 1, 1, 16, 1), "topology.nodes 1 is not a multiple of the 2 nodes"),
    (topo_overrides(8, 3, 1, 8, 2), "topology.nodes 3 is not a multiple of the 2 nodes"),
    (topo_overrides(4, 2, 2, 8, 1), "instances_per_node is 2, but one instance of 8 ranks spans 2 nodes"),
    (topo_overrides(4, 1, 2, 2, 1, "topology.mode=leader"), "leader runs one instance per MPI world"),
    (topo_overrides(1, 1, 1, 1, 1, "build.gpu=rtx-4090", "quantization.format=none", "quantization.kv_cache=none",
                    "build.max_input_len=200000"), "less than one sequence of max_seq_len 200512"),
])
def test_topology_refusals_name_the_numbers(overrides, words):
    spec = load_spec(None, ["serving.engine=tensorrtllm", "build.gpu=b200", *overrides])
    with pytest.raises(TritongenError) as err:
        resolve_topology(spec, EngineTarget.tensorrtllm, model_config=QWEN3)
    assert words in err.value.message and err.value.fix


def test_cpu_reference_refuses_parallel_ranks():
    spec = load_spec(None, ["build.tp_size=2", "topology.nodes=2"])
    with pytest.raises(TritongenError) as err:
        resolve_topology(spec, EngineTarget.cpu_reference)
    assert "2 ranks, but the CPU reference engine runs one process" in err.value.message
    assert "topology.nodes is 2" in err.value.message


def test_two_instances_of_tp2_on_one_node():
    spec = load_spec(None, ["build.gpu=b200", *topo_overrides(4, 1, 2, 2, 1)])
    t = resolve_topology(spec, EngineTarget.tensorrtllm, model_config=QWEN3)
    assert (t.mode, t.launcher, t.world_size, t.gpus_per_pod, t.replicas) == ("orchestrator", "tritonserver", 1, 4, 1)
    assert t.gpu_device_ids == "0,1;2,3" and t.participant_ids is None
    assert t.kv_tokens_per_instance and t.kv_tokens_per_instance % spec.build.tokens_per_block == 0
    nospawn = resolve_topology(load_spec(None, ["build.gpu=b200", *topo_overrides(4, 1, 2, 2, 1),
                                                "topology.spawn_processes=false"]), EngineTarget.tensorrtllm)
    assert (nospawn.launcher, nospawn.world_size, nospawn.participant_ids) == ("mpirun", 5, "1,2;3,4")


def test_tp8_pp2_over_two_nodes():
    spec = load_spec(None, ["build.gpu=b200", *topo_overrides(8, 2, 1, 8, 2)])
    t = resolve_topology(spec, EngineTarget.tensorrtllm, model_config=QWEN3)
    assert (t.mode, t.launcher, t.world_size, t.nodes_per_instance, t.gpus_per_pod) == ("leader", "mpirun", 16, 2, 8)
    assert t.weights_per_gpu_bytes * 16 >= 6.3e9 and t.gpu_device_ids is None


# ---------------------------------------------------------------- the two topologies of the issue, end to end


@pytest.mark.parametrize("overrides, kinds", [
    (topo_overrides(4, 1, 2, 2, 1), ["Deployment", "NetworkPolicy", "Service", "PodMonitor", "HorizontalPodAutoscaler"]),
    (topo_overrides(8, 2, 1, 8, 2), ["ServiceAccount", "Role", "RoleBinding", "LeaderWorkerSet", "NetworkPolicy", "Service",
                                     "PodMonitor", "HorizontalPodAutoscaler"]),
])
def test_render_then_validate_strict(weights, tmp_path, build_engine, overrides, kinds):
    spec = gpu_spec(weights, "tensorrtllm", *overrides)
    build_engine(spec)
    args = [f"--set={o}" for o in [f"artifacts.dir={weights.parent}", f"artifacts.checkpoint_dir={weights}",
                                   "serving.engine=tensorrtllm", "build.gpu=b200", *overrides]]
    runner = CliRunner()
    out = tmp_path / "repo"
    rendered = runner.invoke(app, ["render", "-o", str(out), "--gpu", "--strict", *args], env={"COLUMNS": "200"})
    assert rendered.exit_code == 0, rendered.output
    docs = [d for d in yaml.safe_load_all((out / "kubernetes.yaml").read_text()) if d]
    assert [d["kind"] for d in docs] == kinds
    strict = runner.invoke(app, ["validate", str(out), "--strict"], env={"COLUMNS": "200"})
    assert strict.exit_code == 0, strict.output
    config = (out / "tensorrt_llm" / "config.pbtxt").read_text()
    if "instances_per_node=2" in " ".join(overrides):
        assert 'key: "gpu_device_ids" value { string_value: "0,1;2,3" }' in config
        assert "count: 2 kind: KIND_CPU" in config and "max_tokens_in_paged_kv_cache" in config
    else:
        assert 'key: "num_nodes" value { string_value: "2" }' in config
        assert (out / "launch.sh").read_text().count(" -n 1 ") == 16 and (out / "kubessh").is_file()


# ---------------------------------------------------------------- no false alarms


@pytest.mark.parametrize("gpus, nodes, instances, tp, pp, extra", TOPOLOGIES)
def test_engine_topologies_validate_clean(weights, tmp_path, build_engine, gpus, nodes, instances, tp, pp, extra):
    spec = gpu_spec(weights, "tensorrtllm", *topo_overrides(gpus, nodes, instances, tp, pp, *extra))
    repo = render_gpu(spec, tmp_path / "repo", build_engine)
    assert failing(validate_repository(repo), strict=True) == []


@pytest.mark.parametrize("gpus, nodes, instances, tp, pp", LLMAPI_TOPOLOGIES)
def test_llmapi_topologies_validate_clean(weights, tmp_path, build_engine, gpus, nodes, instances, tp, pp):
    spec = gpu_spec(weights, "llmapi", *topo_overrides(gpus, nodes, instances, tp, pp))
    repo = render_gpu(spec, tmp_path / "repo", build_engine)
    assert failing(validate_repository(repo), strict=True) == []
    launch = (repo / "launch.sh").read_text()
    if nodes > 1 and tp * pp > gpus:
        assert launch.count("trtllm-llmapi-launch") == tp * pp
    elif instances > 1:
        assert "mpirun" not in launch  # --no-mpi: each instance spawns its own workers
        assert '"gpu_device_ids"' in (repo / "tensorrt_llm" / "config.pbtxt").read_text()


def test_cpu_repository_with_instances_validates_clean(weights, tmp_path):
    spec = load_spec(None, [f"artifacts.dir={weights.parent}", f"artifacts.checkpoint_dir={weights}",
                            "serving.engine=cpu-reference", "topology.instances_per_node=3"])
    repo = render_repository(spec, tmp_path / "repo")
    assert not (repo / "kubernetes.yaml").exists()  # manifests are for GPU targets
    assert "count: 3 kind: KIND_CPU" in (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    assert [p for p in validate_repository(repo) if p.severity == "error"] == []


# ---------------------------------------------------------------- the corpus: failures users report


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def _regex(path: Path, pattern: str, new: str) -> None:
    text = path.read_text()
    changed, n = re.subn(pattern, new, text, count=1)
    assert n, f"{pattern!r} not in {path}"
    path.write_text(changed)


TP2X2 = topo_overrides(4, 1, 2, 2, 1)
TP8PP2 = topo_overrides(8, 2, 1, 8, 2)
LEADER_TP2 = topo_overrides(2, 1, 1, 2, 1)

# (name, topology, mutation(repo, spec), words in the problem, words in the fix)
CORPUS = [
    ("MPI world smaller than tp x pp", TP8PP2,
     lambda r, s: _regex(r / "launch.sh", r'  -n 1 "\$TRITONSERVER"[^\n]*SHM_PREFIX\}15_[^\n]*\n', ""),
     "MPI world must be 16", "re-render"),
    ("two ranks share a shm prefix", LEADER_TP2,
     lambda r, s: _edit(r / "launch.sh", '${SHM_PREFIX}1_', '${SHM_PREFIX}0_'), "share a Python-backend shared-memory", "own prefix"),
    ("leader tp2 started without mpirun", LEADER_TP2,
     lambda r, s: _regex(r / "launch.sh", r"exec mpirun[^\n]*\\\n", "exec \\\n"), "does not run mpirun", "re-render"),
    ("orchestrator env missing for two instances", TP2X2,
     lambda r, s: _edit(r / "launch.sh", "export TRTLLM_ORCHESTRATOR=1\n", ""), "TRTLLM_ORCHESTRATOR is not set", "re-render"),
    ("gpu_device_ids one set for two instances", TP2X2,
     lambda r, s: _edit(r / "tensorrt_llm/config.pbtxt", '"0,1;2,3"', '"0,1,2,3"'), "1 set(s) for 2 instance(s)", "0,1;2,3"),
    ("gpu_device_ids sets overlap", TP2X2,
     lambda r, s: _edit(r / "tensorrt_llm/config.pbtxt", '"0,1;2,3"', '"0,1;1,2"'), "share a GPU", "0,1;2,3"),
    ("gpu_device_ids beyond the node", TP2X2,
     lambda r, s: _edit(r / "tensorrt_llm/config.pbtxt", '"0,1;2,3"', '"0,1;4,5"'), "ids outside 0..3", "0,1;2,3"),
    ("instance count differs from gpu_device_ids", TP2X2,
     lambda r, s: _edit(r / "tensorrt_llm/config.pbtxt", "count: 2 kind: KIND_CPU", "count: 1 kind: KIND_CPU"),
     "runs 1 instance(s)", "instance_group count to 2"),
    ("KIND_GPU instance group on the tensorrtllm backend", TP2X2,
     lambda r, s: _edit(r / "tensorrt_llm/config.pbtxt", "count: 2 kind: KIND_CPU", "count: 2 kind: KIND_GPU"),
     "KIND_GPU", "KIND_CPU"),
    ("instances split the free-memory fraction", TP2X2,
     lambda r, s: _regex(r / "tensorrt_llm/config.pbtxt", r'parameters \{ key: "max_tokens_in_paged_kv_cache"[^\n]*\n', ""),
     "without max_tokens_in_paged_kv_cache", "max_tokens_in_paged_kv_cache"),
    ("per-instance KV cap beyond the memory plan", TP2X2,
     lambda r, s: _regex(r / "tensorrt_llm/config.pbtxt", r'(key: "max_tokens_in_paged_kv_cache" value \{ string_value: ")\d+',
                         r"\g<1>999999999"), "exceeds the", "lower it"),
    ("engine built with fewer ranks", TP8PP2,
     lambda r, s: (s.engine_dir / "rank15.engine").unlink(), "missing [15]", "build.tp_size=8"),
    ("engine from another TensorRT-LLM", TP2X2,
     lambda r, s: _edit(s.engine_dir / "config.json", '"version": "1.2.1"', '"version": "1.2.0"'),
     "not the Triton container of TensorRT-LLM 1.2.0", "26.03"),
    ("image of another TensorRT-LLM", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", "26.04-trtllm", "25.12-trtllm"), "not the Triton container", "26.04"),
    ("own image of another TensorRT-LLM", TP2X2 + ["kubernetes.image=nvcr.io/nvidia/tritonserver:26.03-trtllm-python-py3"],
     lambda r, s: None, "is the Triton container of TensorRT-LLM 1.2.0", "26.04"),
    ("GPU request does not match ranks per pod", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", '"nvidia.com/gpu": 4,', '"nvidia.com/gpu": 2,', 2),
     "requests nvidia.com/gpu 2 but runs 4", "nvidia.com/gpu: 4"),
    ("worker pod GPUs differ", TP8PP2,
     lambda r, s: _regex(r / "kubernetes.yaml", r'(rank-host"[\s\S]*?limits: \{"nvidia.com/gpu": )8', r"\g<1>4"),
     "worker requests nvidia.com/gpu 4", "nvidia.com/gpu: 8"),
    ("LeaderWorkerSet group size", TP8PP2,
     lambda r, s: _edit(r / "kubernetes.yaml", "size: 2", "size: 1"), "leaderWorkerTemplate.size is 1", "size: 2"),
    ("MPI hosts slots", TP8PP2,
     lambda r, s: _edit(r / "kubernetes.yaml", '$(POD_NAME)-1:8', '$(POD_NAME)-1:4'), "the MPI world is 16 ranks", "host:8"),
    ("leader without service account for kubectl exec", TP8PP2,
     lambda r, s: _regex(r / "kubernetes.yaml", r'        serviceAccountName: "tritongen"\n', ""), "serviceAccountName", "Role"),
    ("/dev/shm not memory-backed", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", "{medium: Memory, ", "{"), "no memory-backed /dev/shm", "medium: Memory"),
    ("/dev/shm too small", TP2X2,
     lambda r, s: _regex(r / "kubernetes.yaml", r'sizeLimit: "\d+Mi"', 'sizeLimit: "64Mi"'), "sizeLimit 64Mi is below", "sizeLimit"),
    ("startup probe that kills a loading server", TP2X2,
     lambda r, s: _regex(r / "kubernetes.yaml", r"failureThreshold: \d{2,}", "failureThreshold: 3"), "allows 30 s", "failureThreshold"),
    ("readiness probe on the wrong endpoint", TP2X2,
     lambda r, s: _regex(r / "kubernetes.yaml", r"(readinessProbe:\n\s+httpGet: \{path: )/v2/health/ready", r"\g<1>/v2/health/live"),
     "readinessProbe must GET /v2/health/ready", "readinessProbe.httpGet"),
    ("HPA on a metric that reads 0 for decoupled models", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", 'name: "nv_trt_llm_request_metrics"', 'name: "nv_inference_queue_duration_us"'),
     "reads 0 for the decoupled", "request_type=waiting"),
    ("HPA waiting metric without its label", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", "selector: {matchLabels: {request_type: waiting}}", "selector: {}"),
     "without selector request_type=waiting", "matchLabels"),
    ("HPA scales a Deployment that does not exist", TP8PP2,
     lambda r, s: _edit(r / "kubernetes.yaml", 'scaleTargetRef: {apiVersion: "leaderworkerset.x-k8s.io/v1", kind: "LeaderWorkerSet"',
                        'scaleTargetRef: {apiVersion: "apps/v1", kind: "Deployment"'), "not LeaderWorkerSet/tritongen", "scaleTargetRef"),
    ("Service selects no pod", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", 'selector: {"app.kubernetes.io/name": "tritongen", "app.kubernetes.io/component": "triton"}',
                        'selector: {"app": "triton"}'), "does not select the server pods", "labels"),
    ("PodMonitor scrapes a port that does not exist", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", "{port: metrics, path: /metrics", "{port: prometheus, path: /metrics"),
     "does not scrape port metrics", "podMetricsEndpoints"),
    ("container port and launch port disagree", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", "containerPort: 8000", "containerPort: 9000"), "http port", "8000"),
    ("misspelled Kubernetes field", TP2X2,
     lambda r, s: _edit(r / "kubernetes.yaml", "terminationGracePeriodSeconds", "terminationGracePeriod"),
     "is not valid for Kubernetes 1.33", "field"),
    ("misspelled LeaderWorkerSet field", TP8PP2,
     lambda r, s: _edit(r / "kubernetes.yaml", "leaderWorkerTemplate:", "leaderWorkerTemplates:"),
     "LeaderWorkerSet/tritongen is not valid", "field"),
    ("volume mounted elsewhere than the paths the repository names", TP2X2,
     lambda r, s: _regex(r / "kubernetes.yaml", r'\{name: artifacts, mountPath: "[^"]+"\}', '{name: artifacts, mountPath: "/models"}'),
     "does not mount PVC tritongen-artifacts", "mount it at"),
]


@pytest.mark.parametrize("name, overrides, mutate, words, fix", CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_mutation_is_caught_with_its_fix(weights, tmp_path, build_engine, name, overrides, mutate, words, fix):
    spec = gpu_spec(weights, "tensorrtllm", *overrides)
    repo = render_gpu(spec, tmp_path / "repo", build_engine)
    if spec.kubernetes.image is None:
        assert failing(validate_repository(repo), strict=True) == []
    mutate(repo, spec)
    hits = [p for p in validate_repository(repo) if words in p.message and p.severity == "error"]
    assert hits, f"{name}: nothing mentions {words!r}:\n" + "\n".join(map(str, validate_repository(repo)))
    assert any(fix in p.fix for p in hits), [p.fix for p in hits]


def test_own_image_built_from_the_right_container_passes(weights, tmp_path, build_engine):
    """Multi-node leaders need kubectl, so users build their own image FROM NVIDIA's: it is theirs to name."""
    spec = gpu_spec(weights, "tensorrtllm", *TP8PP2, "kubernetes.image=registry.example/triton-kubectl:26.04")
    repo = render_gpu(spec, tmp_path / "repo", build_engine)
    assert failing(validate_repository(repo), strict=True) == []


def test_spec_whose_topology_no_longer_fits_is_refused(weights, tmp_path, build_engine):
    spec = gpu_spec(weights, "tensorrtllm", *TP2X2)
    repo = render_gpu(spec, tmp_path / "repo", build_engine)
    spec.topology.instances_per_node = 3
    problems = check_deployment(repo, read_manifest(repo), spec)
    assert any("= 6 GPUs, but topology.gpus_per_node is 4" in p.message for p in problems)


def test_corpus_size():
    assert len(CORPUS) >= 20 and len(TOPOLOGIES) + len(LLMAPI_TOPOLOGIES) >= 16


# ---------------------------------------------------------------- in-cluster load test package


def test_loadtest_configmap_package_imports_on_its_own(weights, tmp_path, build_engine):
    """The ConfigMap holds everything loadtest/tritonllm.py imports from tritongen: unpacked alone, it imports."""
    spec = gpu_spec(weights, "tensorrtllm", *TP2X2)
    repo = render_gpu(spec, tmp_path / "repo", build_engine)
    docs = list(yaml.safe_load_all((repo / LOADTEST_MANIFESTS).read_text()))
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "Job")
    items = job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]
    root = tmp_path / "pod"
    for item in items:
        path = root / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(configmap["data"][item["key"]])
    assert set(package_files()) <= {i["path"] for i in items}
    assert "--expect-workers 2" in job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    code = "import generator, tritonllm; print(generator.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(root / "generator" / "__init__.py")
    conf = configmap["data"]["locust.conf"]
    assert "host = grpc://tritongen.default.svc:8001" in conf and f"records = {weights.parent}/loadtest/records.jsonl" in conf


def test_in_cluster_load_test_is_resolved_as_the_local_one(weights):
    """The manifest's locust.conf gets the load test resolved like a local run: the LLM-API model by name and the
    checkpoint's tokenizer (the model names no tokenizer_dir), the manifest's worker count for ``auto``."""
    from generator.deploy.loadtest import loadtest_values

    spec = gpu_spec(weights, "llmapi", "loadtest.workers=auto", "kubernetes.locust_workers=3")
    conf = loadtest_values(spec)["files"]["locust.conf"]
    assert "model = tensorrt_llm\n" in conf and f"tokenizer = {weights}\n" in conf
    assert "users = 16\n" in conf and "auto" not in conf
    assert spec.resolved_loadtest(workers=3).workers == 3
    with pytest.raises(SpecError, match="auto"):  # auto is sized in one place: measure/ceiling.resolve_workers
        spec.resolved_loadtest()


# ---------------------------------------------------------------- for real: several CPU instances, distributed load


@pytest.mark.server
@pytest.mark.slow
def test_cpu_instances_serve_through_launch_script_and_load_test_distributed(cpu_spec, nvfp4_checkpoint_dir, tmp_path):
    """Two instances of the CPU engine behind one ensemble, started by the rendered launch script, both
    doing work under a Locust master with two workers whose records all reach the one records file."""
    import psutil

    from generator.measure.records import read_records
    from generator.measure.runner import run_loadtest
    from generator.serve.server import TritonServer
    from generator.spec import with_overrides

    # 4 s: with the other test worker busy on the same two cores, a 2-s run once measured nothing past its two warm-up
    # requests (the users spawned while the window ran out).
    spec = with_overrides(cpu_spec, ["topology.instances_per_node=2", "serving.cpu_threads=1", "loadtest.workers=2",
                                     "loadtest.users=4", "loadtest.spawn_rate=4", "loadtest.duration_s=4",
                                     "loadtest.output_tokens_mean=8", "loadtest.reference_checks=4"])
    repo = render_repository(spec, tmp_path / "repo")
    assert [p for p in validate_repository(repo) if p.severity == "error"] == []
    out = tmp_path / "load"
    out.mkdir()
    with TritonServer(repo, log_file=tmp_path / "triton.log") as server:
        assert server.launch_script == repo / "launch.sh"
        proc = psutil.Process(server.pid)
        assert Path(proc.cmdline()[0]).name == "tritonserver"  # the script exec'd the server itself
        assert f"--backend-config=python,shm-region-prefix-name={server.shm_prefix}0_" in proc.cmdline()
        stubs = {c.cmdline()[-2]: c for c in proc.children(recursive=True)
                 if c.cmdline() and c.cmdline()[0].endswith("triton_python_backend_stub")}
        engines = {name: p for name, p in stubs.items() if re.fullmatch(r"tensorrt_llm_\d+_\d+", name)}
        assert len(engines) == 2, sorted(stubs)
        cpu = lambda p: sum(p.cpu_times()[:2])  # noqa: E731
        before = {name: cpu(p) for name, p in engines.items()}
        result = run_loadtest(spec, out, url=f"http://{server.http_url}", grpc_url=server.grpc_url,
                              metrics_url=server.metrics_url, admin_key=server.admin_key).results
        after = {name: cpu(p) for name, p in engines.items()}
    requests, processes, _ = read_records(out / "records.jsonl")
    served = result.server.stages["ensemble"]
    assert result.counts.errors == 0 and result.counts.ok > 0
    assert len(requests) == served.requests + served.failures  # every request recorded once, none lost
    assert len({(r["proc"], r["seq"]) for r in requests}) == len(requests)
    assert {r["proc"] for r in requests} == {p["proc"] for p in processes} and len(processes) == 2
    assert all(after[name] > before[name] for name in engines), (before, after)  # both instances did work
    # The in-cluster run's records become the same report through --records (no server needed).
    report = CliRunner().invoke(app, ["loadtest", "--records", str(out / "records.jsonl"), "-o", str(tmp_path / "rep"),
                                      "--spec", str(_spec_file(spec, tmp_path)), "--workers", "auto"],
                                env={"COLUMNS": "200"})
    assert report.exit_code == 0, report.output
    again = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert again["counts"] == result.counts.model_dump() and (tmp_path / "rep" / "report.html").is_file()
    assert again["run"]["loadtest"]["workers"] == 2  # the processes that ran, whatever auto means here


def _spec_file(spec, tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.to_yaml_dict()), encoding="utf-8")
    return path


def test_plan_shows_the_topology_and_refuses_what_does_not_fit():
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", "--set", "build.gpu=b200", "--set", "build.tp_size=8", "--set", "build.pp_size=2",
                             "--set", "topology.gpus_per_node=8", "--set", "topology.nodes=2"], env={"COLUMNS": "200"})
    assert ok.exit_code == 0, ok.output
    assert "tp 8 x pp 2 = 16" in ok.output and "leader / mpirun / 16" in ok.output
    refused = runner.invoke(app, ["plan", "--set", "build.gpu=b200", "--set", "build.tp_size=2", "--set",
                                  "topology.gpus_per_node=4", "--set", "topology.instances_per_node=3"],
                            env={"COLUMNS": "200"})
    assert refused.exit_code == 4 and "= 6 GPUs, but topology.gpus_per_node is 4" in refused.output
