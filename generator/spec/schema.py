"""The typed spec: the single source of truth that every stage reads.

Every default lives in the section modules (``build``, ``serving``, ``loadtest``) and here (artifacts and
the whole spec with its cross-section rules). Stages receive a ``Spec`` object; none of them re-reads YAML or invents
defaults. Field docstrings are the reference documentation (README and ``tritongen init`` are
generated from them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field, model_validator

from generator.errors import SpecError
from generator.spec.base import INT32_MAX, Section
from generator.spec.build import (
    REFERENCE_MODEL, BuildSpec, CalibrationSpec, EngineTarget, KVCacheFormat, ModelSpec, PluginOverrides, QuantFormat,
    QuantizationSpec,
)
from generator.spec.loadtest import GateSpec, LoadTestSpec, ResolvedLoadTest
from generator.spec.serving import KubernetesSpec, ServingSpec, TopologySpec, bls_instances_for
from generator.spec.tune import TuneSpec

__all__ = [
    "REFERENCE_MODEL", "ArtifactsSpec", "BuildSpec", "CalibrationSpec", "EngineTarget", "KVCacheFormat",
    "GateSpec", "KubernetesSpec", "LoadTestSpec", "ModelSpec", "PluginOverrides", "QuantFormat", "QuantizationSpec",
    "ServingSpec", "Spec", "TopologySpec", "TuneSpec",
]


class ArtifactsSpec(Section):
    dir: Path = Path("tritongen-out")
    """Working folder for fetched models, checkpoints, engines and reports (relative to the spec file)."""

    model_dir: Optional[Path] = None
    """Downloaded or local Hugging Face model. None means the local model.source folder if it is one, else DIR/model."""

    checkpoint_dir: Optional[Path] = None
    """Quantized (ModelOpt) checkpoint with tokenizer files. None means DIR/checkpoint."""

    engine_dir: Optional[Path] = None
    """TensorRT-LLM engine built by trtllm-build. None means DIR/engine."""


class Spec(Section):
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

    tune: TuneSpec = Field(default_factory=TuneSpec)
    """How ``tritongen tune`` searches each setting's goodput under loadtest.slo."""

    gate: GateSpec = Field(default_factory=GateSpec)
    """Release gate: the baseline a load test is compared with and the largest change allowed."""

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

    @property
    def bls_instance_count(self) -> int:
        """tensorrt_llm_bls instances: serving.bls_instances, or by default enough to fill the engine's batch."""
        return self.serving.bls_instances or bls_instances_for(self.build.max_batch_size)

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
        for section, name in (("loadtest", "prompts"), ("loadtest", "tokenizer"), ("loadtest", "trace"),
                              ("gate", "baseline")):
            value = getattr(getattr(self, section), name)
            if value is not None:
                named[f"{section}.{name}"] = self.path(value)
        return {f"the spec's {name}": path for name, path in named.items() if name not in except_}

    @property
    def loadtest_model(self) -> Optional[str]:
        """The model load tests call (see loadtest.model); None: an OpenAI server's first listed model."""
        if self.loadtest.model is not None or self.loadtest.openai:
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

    def resolved_loadtest(self, *, workers: Optional[int] = None, served_model: Optional[str] = None,
                          served_tokenizer: Optional[Path] = None) -> ResolvedLoadTest:
        """The load test as it runs. ``workers``: the processes that ran or will run, when something other than
        a number in ``loadtest.workers`` decides it (records of a run, the in-cluster manifest, or ``auto``,
        which only measure/ceiling.resolve_workers sizes: from the recorded ceiling and this machine's cores).
        ``served_model`` / ``served_tokenizer``: what a running server says, used where the spec leaves the
        field unset (the model before the spec's target, the tokenizer after it)."""
        lt = self.loadtest
        if workers is None and lt.workers == "auto":
            raise SpecError("loadtest.workers is auto, and nothing here sized it", where="loadtest.workers",
                            fix="give a number (--workers N), or run the load test, which sizes auto")
        return ResolvedLoadTest.model_validate(dict(
            lt.model_dump(),
            workers=lt.workers if workers is None else workers,
            model=lt.model or served_model or self.loadtest_model,
            tokenizer=self.loadtest_tokenizer or served_tokenizer,
            prompts=self.path(lt.prompts) if lt.prompts is not None else None,
            trace=self.path(lt.trace) if lt.trace is not None else None,
        ))

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"base_dir"})
