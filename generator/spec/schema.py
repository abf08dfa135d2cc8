"""The typed spec: the single source of truth that every stage reads.

Every default lives here. Stages receive a ``Spec`` object; none of them re-reads YAML or invents
defaults. Field docstrings are the reference documentation (README and ``tritongen init`` are
generated from them).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

INT32_MAX = 2**31 - 1
"""Every integer of the spec ends up in an INT32 (Triton config fields, TensorRT-LLM limits, request
tensors): larger values would wrap or be refused downstream, so the spec refuses them."""


class _Section(BaseModel):
    """Base of every spec section: unknown keys are errors, docstrings become descriptions, integers fit INT32."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int32(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not -INT32_MAX - 1 <= value <= INT32_MAX:
            field = cls.model_fields[info.field_name]
            low = next((m.ge for m in field.metadata if hasattr(m, "ge")), -INT32_MAX - 1)
            raise ValueError(f"got {value}; allowed: {low} to {INT32_MAX} (it becomes an INT32 in the configs)")
        return value


class QuantFormat(str, Enum):
    nvfp4 = "nvfp4"
    fp8 = "fp8"
    int4_awq = "int4_awq"
    int8_sq = "int8_sq"
    none = "none"


class KVCacheFormat(str, Enum):
    fp8 = "fp8"
    int8 = "int8"
    none = "none"


class EngineTarget(str, Enum):
    auto = "auto"
    tensorrtllm = "tensorrtllm"
    cpu_reference = "cpu-reference"
    llmapi = "llmapi"


REFERENCE_MODEL = "Qwen/Qwen3-8B"
"""The default model; the plan ships its config.json so a plan works offline on a clean clone."""


class ModelSpec(_Section):
    source: str = REFERENCE_MODEL
    """Hugging Face repo id (``org/name``) or a local folder with config.json, tokenizer and safetensors."""

    revision: Optional[str] = None
    """Branch, tag or commit of the Hugging Face repo; ignored for a local folder. None means the default branch."""

    trust_remote_code: bool = False
    """Allow the model repo's own Python code to run when loading it (tokenizer and model)."""


class CalibrationSpec(_Section):
    size: int = Field(512, ge=1)
    """Number of calibration samples fed through the model during post-training quantization."""

    max_seq_len: int = Field(2048, ge=8)
    """Tokens per calibration sample (longer texts are truncated)."""

    dataset: str = "cnn_dailymail"
    """Calibration text: a local .txt (one sample per blank-line-separated paragraph) or .jsonl
    (a ``text`` field per line) file, or a Hugging Face data set name (needs the network and the
    ``datasets`` package, which tritongen does not install; cnn_dailymail reads abisee/cnn_dailymail 3.0.0)."""

    batch_size: int = Field(1, ge=1)
    """Samples per calibration forward pass; 1 keeps an 8B model within a 24 GB card."""

    seed: int = 0
    """Seed for sample selection, so two calibrations of the same data give the same checkpoint."""


class QuantizationSpec(_Section):
    format: QuantFormat = QuantFormat.nvfp4
    """Weight format: nvfp4 (4-bit E2M1, FP8 scale per 16 values; Blackwell only), fp8 (E4M3, SM89+),
    int4_awq (4-bit AWQ, block 128), int8_sq (INT8 SmoothQuant), or none (keep BF16/FP16 weights)."""

    kv_cache: KVCacheFormat = KVCacheFormat.fp8
    """KV-cache format: fp8 (E4M3, halves KV memory), int8, or none (the build dtype)."""

    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    """Calibration data and size for post-training quantization."""

    exclude_modules: list[str] = Field(default_factory=lambda: ["lm_head"])
    """Module name patterns (fnmatch) kept unquantized. lm_head stays in full precision by default."""

    awq_block_size: int = Field(128, ge=16)
    """Group size of int4_awq weights (ignored by other formats; NVFP4's block is fixed at 16)."""

    quality_tokens: int = Field(2048, ge=0)
    """Held-out tokens (bundled English text) on which the exported checkpoint is compared with the
    original model after quantization: perplexity, top-1 agreement, KL divergence. 0 skips the check."""

    @property
    def quantizes_anything(self) -> bool:
        return self.format is not QuantFormat.none or self.kv_cache is not KVCacheFormat.none


class PluginOverrides(_Section):
    """Force a ``trtllm-build`` choice that the plan would otherwise make from the GPU and format.

    None (the default) means: let the plan decide and explain why (``tritongen plan``). true passes
    ``--X enable`` (or the value), false passes ``--X disable``.
    """

    context_fmha: Optional[bool] = None
    """--context_fmha (fused multi-head attention in the context phase). Plan: not passed, so trtllm-build's
    default (enable) applies; on SM120 never forced on (field reports). false also turns FP8 and paged context
    FMHA off, which chunked context and KV-cache reuse need."""

    use_fp8_context_fmha: Optional[bool] = None
    """--use_fp8_context_fmha (FP8 context attention). Plan: not passed (trtllm-build default enable; the builder
    keeps it only for FP8/NVFP4 checkpoints on SM89+ and forces it on with FP8 KV + paged context FMHA); on SM120
    never forced on (field reports)."""

    fuse_fp4_quant: Optional[bool] = None
    """--fuse_fp4_quant (fuse NVFP4 activation quantization into attention). Plan: not passed (default disable);
    field reports of missing kernels on SM120."""

    use_fused_mlp: Optional[bool] = None
    """--use_fused_mlp (fuse gate and up projections). Plan: enable; accepted but without effect unless the
    weights are FP8 or unquantized."""

    norm_quant_fusion: Optional[bool] = None
    """--norm_quant_fusion (fuse RMSNorm with activation quantization). Plan: enable for NVFP4; the builder
    keeps it only for LlamaForCausalLM NVFP4 checkpoints."""

    use_paged_context_fmha: Optional[bool] = None
    """--use_paged_context_fmha (needed for chunked context and KV-cache reuse)."""

    gemm_plugin: Optional[str] = None
    """--gemm_plugin value (auto, nvfp4, fp8, bfloat16, float16, disable). Plan: from the format."""


class BuildSpec(_Section):
    gpu: str = "rtx-5090"
    """Target GPU by name (rtx-5090, h100-sxm, b200, ...) or by compute capability (sm120, sm90)."""

    dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """Activation and unquantized-weight dtype of the engine."""

    max_input_len: int = Field(4096, ge=1)
    """Longest prompt in tokens the engine accepts."""

    max_output_len: int = Field(512, ge=1)
    """Most tokens generated per request (not a trtllm-build flag since 2024; it sets max_seq_len)."""

    max_seq_len: Optional[int] = Field(None, ge=2)
    """Prompt plus output tokens per sequence. None means max_input_len + max_output_len."""

    max_batch_size: int = Field(32, ge=1)
    """Most sequences the engine runs at once (the engine's limit; Triton's batch size may be lower)."""

    max_num_tokens: int = Field(8192, ge=1)
    """Most tokens (prompt and generated, all sequences) processed in one engine step."""

    max_beam_width: int = Field(1, ge=1)
    """Beam width the engine supports; 1 means greedy/sampling only."""

    kv_cache_type: Literal["paged", "continuous"] = "paged"
    """KV-cache layout. In-flight batching needs paged."""

    tokens_per_block: int = Field(64, ge=1)
    """Tokens per KV-cache block (page). A power of two."""

    tp_size: int = Field(1, ge=1)
    """Tensor-parallel size (GPUs per pipeline stage)."""

    pp_size: int = Field(1, ge=1)
    """Pipeline-parallel size."""

    multiple_profiles: bool = True
    """Build several TensorRT optimization profiles (faster at small batches, longer build)."""

    workers: int = Field(1, ge=1)
    """Parallel engine builds (one per rank) in trtllm-build."""

    plugins: PluginOverrides = Field(default_factory=PluginOverrides)
    """Overrides of the plan's plugin and fusion choices."""

    @property
    def resolved_max_seq_len(self) -> int:
        return self.max_seq_len if self.max_seq_len is not None else self.max_input_len + self.max_output_len

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size


class ServingSpec(_Section):
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
    dynamic-batching queue, and in the CPU reference engine's own queue of requests waiting for a
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

    bls_instances: int = Field(1, ge=1)
    """Instances of tensorrt_llm_bls."""

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


class TopologySpec(_Section):
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


class KubernetesSpec(_Section):
    """The Kubernetes manifests rendered beside GPU repositories (kubernetes.yaml)."""

    name: str = Field("tritongen", pattern=r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$")
    """Name of every object (Deployment or LeaderWorkerSet, Service, ...): a DNS-1035 label."""

    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    """Namespace of every object."""

    image: Optional[str] = None
    """Server image. None means NVIDIA's Triton container for the engine's TensorRT-LLM version
    (validate refuses an image made for another version)."""

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


class LoadTestSpec(_Section):
    """Defaults of ``tritongen loadtest`` and ``tritongen sweep``."""

    protocol: Literal["http-stream", "grpc-stream", "http"] = "grpc-stream"
    """Client protocol: HTTP generate_stream (SSE), gRPC decoupled streaming, or non-streaming HTTP generate."""

    model: Optional[str] = None
    """Model the users call. None means the repository's entry model: ensemble, or tensorrt_llm (the
    LLM-API model) for serving.engine=llmapi; tensorrt_llm_bls is the other choice on the engine path."""

    users: int = Field(16, ge=1)
    """Concurrent users (closed loop), when request_rate is not set."""

    spawn_rate: float = Field(16.0, gt=0)
    """Users started per second."""

    duration_s: float = Field(30.0, gt=0)
    """Run time in seconds after spawning."""

    max_requests: Optional[int] = Field(None, ge=1)
    """Stop after this many requests (None: run for duration_s)."""

    request_rate: Optional[float] = Field(None, gt=0)
    """Open-loop mode: requests per second on a schedule; latency counts from the scheduled send."""

    arrival: Literal["constant", "poisson"] = "poisson"
    """Arrival process in open-loop mode."""

    prompts: Optional[Path] = None
    """JSONL file with a ``text`` (and optional ``max_tokens``) per line. None means synthetic prompts."""

    input_tokens_mean: int = Field(128, ge=1)
    """Synthetic prompts: mean input length in tokens."""

    input_tokens_stddev: int = Field(0, ge=0)
    """Synthetic prompts: standard deviation of input length."""

    output_tokens_mean: int = Field(64, ge=1)
    """Requested output tokens per request (mean)."""

    output_tokens_stddev: int = Field(0, ge=0)
    """Standard deviation of requested output tokens."""

    num_prompts: int = Field(100, ge=1)
    """Synthetic prompts: how many distinct prompts are made; requests cycle through them in order."""

    tokenizer: Optional[Path] = None
    """Folder with tokenizer.json for counting tokens and making prompts. None means the served
    repository's ``tokenizer_dir`` parameter (read from the server's model config)."""

    seed: int = 0
    """Seed for prompts, lengths and arrivals, so runs are repeatable."""

    warmup_requests: int = Field(4, ge=0)
    """Requests sent and discarded before measuring."""

    workers: Union[Annotated[int, Field(ge=0)], Literal["auto"]] = 0
    """Distributed Locust: worker processes under one master (0 runs a single process); ``auto``: one per
    core this process may run on (os.sched_getaffinity), a single process when that is one core. A Locust
    process uses at most one core: its measured ceiling is in docs/benchmarks.md."""

    request_timeout_s: float = Field(300.0, gt=0)
    """A request with no response for this long counts as an error; also the most a run waits at its
    end for requests still in flight (they finish and count, instead of being cut off)."""

    reference_checks: int = Field(100, ge=0)
    """Distinct prompts of the run re-asked once without streaming after the run; every streamed answer
    to them is compared with the server's one-piece detokenization of the same tokens. 0: no comparison."""

    slo: Optional[str] = None
    """SLO gate, e.g. ``ttft_p95<500ms,itl_p95<50ms,error_rate<0.1%``; a violation exits non-zero."""


class ArtifactsSpec(_Section):
    dir: Path = Path("tritongen-out")
    """Working folder for fetched models, checkpoints, engines and reports (relative to the spec file)."""

    model_dir: Optional[Path] = None
    """Downloaded or local Hugging Face model. None means the local model.source folder if it is one, else DIR/model."""

    checkpoint_dir: Optional[Path] = None
    """Quantized (ModelOpt) checkpoint with tokenizer files. None means DIR/checkpoint."""

    engine_dir: Optional[Path] = None
    """TensorRT-LLM engine built by trtllm-build. None means DIR/engine."""


class Spec(_Section):
    """A whole tritongen deployment: model, quantization, engine build, serving and load test."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    """Which model to deploy."""

    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    """ModelOpt post-training quantization."""

    build: BuildSpec = Field(default_factory=BuildSpec)
    """trtllm-build limits and target GPU."""

    serving: ServingSpec = Field(default_factory=ServingSpec)
    """Triton model repository settings."""

    topology: TopologySpec = Field(default_factory=TopologySpec)
    """GPUs, nodes and model instances (tensor/pipeline parallel sizes are in build)."""

    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    """Kubernetes manifests for GPU repositories."""

    loadtest: LoadTestSpec = Field(default_factory=LoadTestSpec)
    """Load-test defaults."""

    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec)
    """Where stage outputs go."""

    base_dir: Path = Field(default=Path("."), exclude=True)
    """Folder relative paths are resolved against (the spec file's folder); not written to YAML."""

    @model_validator(mode="after")
    def _cross_field(self) -> "Spec":
        b = self.build
        if b.max_seq_len is not None and b.max_input_len >= b.max_seq_len:
            raise ValueError(
                f"build.max_input_len ({b.max_input_len}) must be below build.max_seq_len ({b.max_seq_len}); "
                "leave max_seq_len unset to use max_input_len + max_output_len"
            )
        if b.resolved_max_seq_len > INT32_MAX:
            raise ValueError(f"build.max_input_len + build.max_output_len ({b.resolved_max_seq_len}) must be at most "
                             f"{INT32_MAX} (max_seq_len is an INT32)")
        if self.serving.max_batch_size is not None and self.serving.max_batch_size > b.max_batch_size:
            raise ValueError(
                f"serving.max_batch_size ({self.serving.max_batch_size}) exceeds build.max_batch_size "
                f"({b.max_batch_size}), the engine's limit; lower it or raise build.max_batch_size"
            )
        model = self.loadtest.model
        if self.serving.engine is EngineTarget.llmapi and model in ("ensemble", "tensorrt_llm_bls"):
            raise ValueError(
                f"loadtest.model is {model!r} but serving.engine=llmapi serves one model, tensorrt_llm; "
                "remove loadtest.model (unset, it follows the engine) or set it to tensorrt_llm"
            )
        return self

    # Derived values: computed in one place so stages never re-derive them.

    @property
    def triton_max_batch_size(self) -> int:
        """Batch size written into every Triton config (one place, never typed twice)."""
        return self.serving.max_batch_size or self.build.max_batch_size

    def path(self, p: Path) -> Path:
        """Resolve a spec path against the spec file's folder."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def model_is_local(self) -> bool:
        return self.path(Path(self.model.source)).is_dir()

    @property
    def model_dir(self) -> Path:
        if self.artifacts.model_dir is not None:
            return self.path(self.artifacts.model_dir)
        if self.model_is_local:
            return self.path(Path(self.model.source))
        return self.path(self.artifacts.dir) / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path(self.artifacts.checkpoint_dir or self.artifacts.dir / "checkpoint")

    @property
    def engine_dir(self) -> Path:
        return self.path(self.artifacts.engine_dir or self.artifacts.dir / "engine")

    @property
    def trtllm_checkpoint_dir(self) -> Path:
        """TensorRT-LLM checkpoint (config.json with mapping + rank<N>.safetensors) that trtllm-build reads;
        trtllm-build 1.2.1 cannot read the ModelOpt Hugging Face export in checkpoint_dir."""
        return self.path(self.artifacts.dir / "trtllm-checkpoint")

    @property
    def logs_dir(self) -> Path:
        """Logs of long-running GPU-host steps (checkpoint conversion, trtllm-build)."""
        return self.path(self.artifacts.dir / "logs")

    @property
    def serving_weights_dir(self) -> Path:
        """What the served model loads: the quantized checkpoint, or the original model for format none."""
        if self.quantization.quantizes_anything:
            return self.checkpoint_dir
        return self.model_dir

    def named_paths(self, *, except_: tuple[str, ...] = ()) -> dict[str, Path]:
        """What this spec names (name -> path), which no output folder may replace; ``except_``
        drops the names of what the calling stage writes itself (quantize: checkpoint_dir)."""
        named = {
            "model_dir": self.model_dir,
            "checkpoint_dir": self.checkpoint_dir,
            "engine_dir": self.engine_dir,
            "trtllm_checkpoint_dir": self.trtllm_checkpoint_dir,
            "folder": self.base_dir,
        }
        for name in ("prompts", "tokenizer"):
            value = getattr(self.loadtest, name)
            if value is not None:
                named[f"loadtest.{name}"] = self.path(value)
        return {f"the spec's {name}": path for name, path in named.items() if name not in except_}

    @property
    def loadtest_model(self) -> str:
        """The model load tests call (see loadtest.model)."""
        if self.loadtest.model is not None:
            return self.loadtest.model
        return "tensorrt_llm" if self.serving.engine is EngineTarget.llmapi else "ensemble"

    @property
    def loadtest_tokenizer(self) -> Optional[Path]:
        """The tokenizer load tests count with: loadtest.tokenizer, else the served model's own. The LLM-API
        model names no tokenizer_dir; it loads the checkpoint (model.yaml's ``model``), tokenizer included."""
        if self.loadtest.tokenizer is not None:
            return self.path(self.loadtest.tokenizer)
        if self.serving.engine is EngineTarget.llmapi:
            return self.serving_weights_dir
        return None

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"base_dir"})

