"""The spec's sections for serving: the Triton models, the topology (GPUs, nodes, instances) and Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from generator.spec.base import Section
from generator.spec.build import EngineTarget


BLS_ENGINE_CALLS = 24
"""The most requests one tensorrt_llm_bls instance has in the engine at once: model_repo/_shared/model_common.py
``ENGINE_CALLS``, which must be the same number (Triton 2.51's Python backend serves a model's engine calls on 32
threads, and more calls than that held back every answer)."""


def bls_instances_for(engine_batch: int) -> int:
    """The tensorrt_llm_bls instances that can fill an engine batch of ``engine_batch`` requests."""
    return -(-engine_batch // BLS_ENGINE_CALLS)


class ServingSpec(Section):
    engine: EngineTarget = EngineTarget.auto
    """Engine behind the tensorrt_llm model: tensorrtllm (a trtllm-build engine on a GPU), llmapi
    (TensorRT-LLM's LLM-API Python backend, no engine build), cpu-reference (the CPU reference engine),
    or auto (tensorrtllm when a CUDA GPU is visible, else cpu-reference)."""

    max_batch_size: Optional[int] = Field(None, ge=1)
    """Triton max_batch_size of every model. None means build.max_batch_size (the engine's limit,
    or the built engine's config.json when one exists); it must not exceed it."""

    decoupled: bool = True
    """Decoupled (streaming) transaction policy for tensorrt_llm, BLS and hence the ensemble."""

    batching_strategy: Literal["inflight_fused_batching", "inflight_batching"] = "inflight_fused_batching"
    """gpt_model_type of the tensorrt_llm model."""

    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = "guaranteed_no_evict"
    """Scheduler: guaranteed_no_evict reserves KV for the whole request; max_utilization packs more and may pause requests."""

    max_queue_delay_microseconds: int = Field(0, ge=0)
    """Dynamic-batcher wait for more requests before running a batch (pre/postprocessing)."""

    max_queue_size: int = Field(64, ge=0)
    """Requests that may wait before new ones are refused as "server busy" (HTTP 503): in each model's
    dynamic-batching queue but postprocessing's (unbounded: Triton 2.51 hangs an ensemble request whose
    mid-stream step is refused), and in the CPU reference engine's own queue of requests waiting for a
    batch slot (where streaming requests wait). 0 means no limit, which lets a burst of requests hold
    memory without bound."""

    kv_cache_free_gpu_mem_fraction: float = Field(0.9, gt=0.0, le=1.0)
    """Fraction of GPU memory left after loading the weights that goes to the KV cache."""

    max_tokens_in_paged_kv_cache: Optional[int] = Field(None, ge=1)
    """Hard cap on KV-cache tokens; the smaller of this and the fraction wins. None means no cap."""

    enable_kv_cache_reuse: bool = False
    """Reuse KV blocks of shared prompt prefixes across requests."""

    enable_chunked_context: bool = False
    """Split long prompts over several engine steps (lets max_num_tokens be below max_input_len)."""

    exclude_input_in_output: bool = True
    """Return only generated tokens, not the prompt, in output_ids / text_output."""

    preprocessing_instances: int = Field(1, ge=1)
    """Instances (processes) of the preprocessing model."""

    postprocessing_instances: int = Field(1, ge=1)
    """Instances (processes) of the postprocessing model."""

    bls: bool = True
    """Also render tensorrt_llm_bls, the Python alternative to the ensemble."""

    bls_instances: Optional[int] = Field(None, ge=1)
    """Instances of tensorrt_llm_bls. Each puts at most 24 requests into the engine at once (Triton 2.51's Python
    backend serves a model's engine calls on 32 threads; more calls held back every answer): filling an engine batch
    above 24 through the BLS takes build.max_batch_size / 24 instances, rounded up. None means exactly that many
    (1 up to a batch of 24, 2 for the reference's 32); validate warns about fewer."""

    accumulate_tokens: bool = False
    """BLS streaming: send the whole text so far in each response instead of the new piece."""

    apply_chat_template: bool = False
    """Preprocessing wraps each prompt in the tokenizer's chat template as one user message."""

    skip_special_tokens: bool = True
    """Postprocessing drops special tokens (end of text, chat markers) when turning token ids into text."""

    cpu_kv_cache_mib: int = Field(256, ge=1)
    """CPU reference engine only: the memory (MiB) that stands for free GPU memory, of which
    kv_cache_free_gpu_mem_fraction becomes the KV cache."""

    cpu_dtype: Literal["float32", "bfloat16"] = "float32"
    """CPU reference engine only: compute dtype. float32 keeps batched greedy output equal to
    ``generate`` (bfloat16 rounds differently per batch) and is faster on CPUs without BF16 instructions."""

    cpu_threads: Optional[int] = Field(None, ge=1)
    """CPU reference engine only: torch threads. None means torch's default."""

    cpu_max_batch_tokens: int = Field(512, ge=1)
    """CPU reference engine only: most tokens in one forward pass (the smaller of this and
    build.max_num_tokens). transformers' continuous batching holds a dense attention mask of
    batch tokens x (KV-cache tokens + batch tokens) values, 4 GB at 8192 tokens and the default
    cache; longer prompts are prefilled over several passes, with the same output."""

    def resolved_engine(self, gpu_visible: bool) -> EngineTarget:
        """``auto`` becomes tensorrtllm with a GPU and cpu-reference without one."""
        if self.engine is not EngineTarget.auto:
            return self.engine
        return EngineTarget.tensorrtllm if gpu_visible else EngineTarget.cpu_reference


class TopologySpec(Section):
    """Where the model runs: GPUs per node, nodes, data-parallel copies. Tensor and pipeline parallel
    sizes are build.tp_size and build.pp_size (one model instance spans tp_size x pp_size GPUs)."""

    gpus_per_node: Optional[int] = Field(None, ge=1, le=16)
    """GPUs on each node (one pod per node). An instance of tp_size x pp_size GPUs either fits in one
    node or spans whole nodes (tp_size x pp_size a multiple of gpus_per_node). None: exactly what one
    node's instances need, tp_size x pp_size x instances_per_node."""

    nodes: int = Field(1, ge=1, le=64)
    """Nodes the deployment uses. Instances that fit in a node: one independent server per node.
    Instances that span nodes: a multiple of the nodes one instance needs."""

    instances_per_node: int = Field(1, ge=1, le=16)
    """Data-parallel copies of the model in one server on each node (Triton instance_group count of
    the engine model), each on its own GPUs. Only for instances that fit in one node."""

    mode: Literal["auto", "leader", "orchestrator"] = "auto"
    """Engine path: how the tensorrt_llm backend runs its ranks. leader: one MPI world of tp x pp
    tritonserver processes (mpirun); orchestrator: one tritonserver that spawns the ranks of each
    instance (TRTLLM_ORCHESTRATOR=1), needed for several instances. auto: orchestrator when
    instances_per_node > 1, else leader."""

    spawn_processes: bool = True
    """Orchestrator mode only: the backend spawns each instance's ranks (world size 1). false runs them
    under mpirun as 1 + instances x tp x pp ranks, rank 0 the orchestrator, with participant_ids."""


IMAGE_REFERENCE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$"
"""The characters of a container image reference (registry[:port]/path[:tag][@digest]): nothing a shell or YAML
reads, since the rendered files print the image in the docker build command they tell the user to run."""


class KubernetesSpec(Section):
    """The Kubernetes manifests rendered beside GPU repositories (kubernetes.yaml)."""

    name: str = Field("tritongen", pattern=r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
    """Name of every object (Deployment or LeaderWorkerSet, Service, ...): a DNS-1035 label."""

    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """Namespace of every object."""

    image: Optional[str] = Field(None, pattern=IMAGE_REFERENCE)
    """Server image (a container image reference: letters, digits and . _ - / : @). None means NVIDIA's Triton
    container for the engine's TensorRT-LLM version (validate refuses an image made for another version)."""

    volume_claim: str = Field("tritongen-artifacts", pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
    """PersistentVolumeClaim that holds the engine, checkpoint, tokenizer and the rendered repository;
    every pod mounts it at the deepest folder holding all of them (usually artifacts.dir), so the
    paths in the repository are the same in the pod."""

    repository_path: Optional[Path] = None
    """Where the rendered repository lies on that volume. None means artifacts.dir/repository."""

    load_gib_per_s: float = Field(0.5, gt=0, le=100)
    """Assumed speed of loading weights or engines from the volume (GiB/s), which sizes the startup
    probe's budget: 180 s plus the planned bytes per GPU at this speed, doubled."""

    hpa_max_replicas: int = Field(4, ge=1, le=1000)
    """Most replicas the HorizontalPodAutoscaler may start (engine path only)."""

    hpa_waiting_requests: int = Field(4, ge=1)
    """Engine path: the autoscaler adds replicas when the average requests waiting for the in-flight
    batcher (nv_trt_llm_request_metrics{request_type="waiting"}) per server exceed this."""

    locust_workers: int = Field(2, ge=1, le=256)
    """Worker pods of the in-cluster Locust load test (kubernetes-loadtest.yaml)."""

    run_as_user: int = Field(1000, ge=1)
    """The non-root user (uid and gid) every pod runs as (Pod Security "restricted"): 1000 is the
    triton-server user of NVIDIA's Triton containers and the locust user of Locust's image."""

    loadtest_image: Optional[str] = Field(None, pattern=IMAGE_REFERENCE)
    """Image of the in-cluster load test (an image reference, as kubernetes.image): Locust with tritongen's
    load-test packages installed, so nothing is fetched when a pod starts. None means the image built from the
    rendered loadtest.Dockerfile (pinned versions), tagged <kubernetes.name>-loadtest:<tritongen version>."""
