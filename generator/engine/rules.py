"""The engine and Triton rules that more than one stage needs, each decided once.

`tritongen plan` refuses, `render` raises, `validate` reports and the topology refuses from these same
functions, so one input gets one verdict and one fix wherever it is checked (vLLM keeps its `verify_*`
rules on the config that owns them; here the owner is the engine, which the spec describes). Each rule
returns `Finding`s; the stage decides only how to surface them. Pure arithmetic on its arguments.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

from generator.engine.gpus import GpuSpec
from generator.engine.memory import GIB, MemoryPlan, kv_token_ceiling
from generator.engine.shape import ModelShape
from generator.spec.serving import BLS_ENGINE_CALLS, bls_instances_for

Severity = Literal["error", "warning", "note"]

# The commands a fix names, spelled once (tests/test_rules.py checks each against the CLI).
REBUILD = "tritongen build SPEC --force"
RERENDER = "tritongen render SPEC -o DIR --force"
PLAN = "tritongen plan SPEC"


class Finding(NamedTuple):
    """One rule's verdict on one input: which rule, the spec field at fault, what is wrong, the fix."""

    rule: str
    field: str
    message: str
    fix: str
    severity: Severity = "error"

    @property
    def text(self) -> str:
        """The one-line form plans and refusals print: what is wrong, then what to do."""
        return f"{self.message}: {self.fix}"


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and d <= 64]


def parallel_layout(tp: int, pp: int, shape: ModelShape) -> list[Finding]:
    """tp must divide the attention heads and divide or be a multiple of the KV heads; pp at most the layers.

    TensorRT-LLM splits attention heads evenly across tp ranks and splits or replicates KV heads; a pipeline
    stage needs at least one layer.
    """
    out: list[Finding] = []
    if shape.num_heads % tp:
        out.append(Finding("tp_heads", "build.tp_size",
                           f"build.tp_size {tp} does not divide the model's {shape.num_heads} attention heads",
                           f"use a tp_size among {_divisors(shape.num_heads)}"))
    if shape.num_kv_heads % tp and tp % shape.num_kv_heads:
        fits = sorted(set(_divisors(shape.num_kv_heads)) | {shape.num_kv_heads * k for k in (2, 4, 8)})
        out.append(Finding("tp_kv_heads", "build.tp_size",
                           f"build.tp_size {tp} and the model's {shape.num_kv_heads} KV heads: one must divide the "
                           "other (TensorRT-LLM splits KV heads across tp or replicates them)",
                           f"use a tp_size among {fits}"))
    elif tp > shape.num_kv_heads:
        out.append(Finding("tp_kv_heads", "build.tp_size",
                           f"tp_size {tp} > {shape.num_kv_heads} KV heads: each KV head is replicated on "
                           f"{tp // shape.num_kv_heads} GPUs", "nothing to change", "note"))
    if pp > shape.num_layers:
        out.append(Finding("pp_layers", "build.pp_size",
                           f"build.pp_size {pp} exceeds the model's {shape.num_layers} layers",
                           f"use at most {shape.num_layers}"))
    elif shape.num_layers % pp:
        out.append(Finding("pp_layers", "build.pp_size", f"pp_size {pp} splits {shape.num_layers} layers unevenly",
                           "nothing to change; a pp_size that divides the layers balances the stages", "note"))
    return out


def memory_fits(memory: MemoryPlan, gpu: GpuSpec, tp: int, pp: int, max_batch_size: int) -> list[Finding]:
    """The weights fit one GPU; the KV cache holds one whole sequence; (warning) a full batch of them.

    Below one sequence the runtime shortens the attention window to what fits, so long requests silently
    lose context: a refusal, not a warning.
    """
    if memory.weights_per_gpu_bytes > memory.gpu_bytes:
        return [Finding("weights_fit", "build.tp_size",
                        f"the weights need {memory.weights_per_gpu_bytes / GIB:.2f} GiB per GPU (checkpoint "
                        f"{memory.checkpoint_bytes / GIB:.2f} GiB / tp {tp} x pp {pp}) but {gpu.name} has "
                        f"{gpu.memory_gib:g} GiB",
                        "raise build.tp_size or build.pp_size, use a smaller quantization.format or a larger build.gpu")]
    if memory.kv_tokens < memory.max_seq_len:
        return [Finding("kv_one_sequence", "build.max_seq_len",
                        f"after {memory.weights_per_gpu_bytes / GIB:.2f} GiB of weights per GPU the KV cache holds "
                        f"{memory.kv_tokens} tokens ({memory.kv_bytes_per_token_per_gpu} B per token per GPU), less "
                        f"than one sequence of max_seq_len {memory.max_seq_len}",
                        "lower build.max_input_len/max_output_len, raise serving.max_tokens_in_paged_kv_cache, "
                        "raise tp/pp, or use a larger GPU or KV format")]
    if not memory.fits_batch:
        return [Finding("kv_full_batch", "build.max_batch_size",
                        f"max_batch_size {max_batch_size} sequences of max_seq_len {memory.max_seq_len} need "
                        f"{memory.demand_tokens} KV tokens; the cache holds about {memory.kv_tokens} "
                        f"({memory.full_sequences} full sequences)",
                        "requests will wait for KV blocks; lower build.max_batch_size or max_seq_len if that matters",
                        "warning")]
    return []


def kv_cap_fits(cap: Optional[int], memory: MemoryPlan, gpu_name: str) -> list[Finding]:
    """serving.max_tokens_in_paged_kv_cache can be allocated: at most all of a GPU's memory after the weights."""
    ceiling = kv_token_ceiling(memory)
    if cap is None or cap <= ceiling:
        return []
    return [Finding("kv_capacity", "serving.max_tokens_in_paged_kv_cache",
                    f"serving.max_tokens_in_paged_kv_cache={cap} is more KV cache than one {gpu_name} holds after the "
                    f"weights (at most {ceiling} tokens of {memory.kv_bytes_per_token_per_gpu} B per GPU); the runtime "
                    "silently uses less",
                    f"--set serving.max_tokens_in_paged_kv_cache={memory.kv_tokens} (the memory plan's estimate) or "
                    "leave it unset (kv_cache_free_gpu_mem_fraction decides), then re-render")]


def batch_fits_engine(wanted: int, engine_max_batch_size: int, engine_config: str) -> list[Finding]:
    """Triton's max_batch_size may not exceed the engine's: the backend refuses to load (rule "runtime_batch_and_beam")."""
    if wanted <= engine_max_batch_size:
        return []
    return [Finding("batch_fits_engine", "serving.max_batch_size",
                    f"max_batch_size {wanted} exceeds the engine's {engine_max_batch_size} "
                    f"({engine_config})",
                    f"--set build.max_batch_size={engine_max_batch_size} (the engine's; or a serving.max_batch_size at "
                    f"most that) and re-render ({RERENDER}), or rebuild the engine with max_batch_size {wanted} "
                    f"({REBUILD})")]


def bls_fills_batch(engine_batch: int, bls_instances: int) -> list[Finding]:
    """tensorrt_llm_bls puts at most BLS_ENGINE_CALLS requests per instance into the engine: with fewer instances than
    the engine's batch needs, requests through the BLS wait while batch slots stay empty (the ensemble still fills it)."""
    reach = BLS_ENGINE_CALLS * bls_instances
    if engine_batch <= reach:
        return []
    need = bls_instances_for(engine_batch)
    return [Finding("bls_fills_batch", "serving.bls_instances",
                    f"tensorrt_llm_bls: {bls_instances} instance(s) put at most {reach} requests into the engine at once "
                    f"({BLS_ENGINE_CALLS} each), fewer than its batch of {engine_batch} (build.max_batch_size): requests "
                    "through the BLS never fill the batch",
                    f"--set serving.bls_instances={need} (or leave it unset: as many as the batch needs) and re-render "
                    f"({RERENDER}), or lower build.max_batch_size to {reach}", "warning")]
