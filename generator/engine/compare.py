"""THE comparison of a built engine (or a TensorRT-LLM checkpoint) with the spec.

``build`` runs it right after trtllm-build, ``render`` before it writes configs for an engine, ``validate``
on the engine a repository names and ``smoke`` reads the runtime limits the same facts give, so no two
stages can disagree about one engine. Each check says how it compares (equal, at least, or not compared
with the reason) and, when it fails, the fix. Pure.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from generator.engine.facts import KV_ALGOS, QUANT_ALGOS, TRTLLM_VERSION, EngineFacts, runtime_limits
from generator.errors import ArtifactCorrupt, TritongenError
from generator.fsutil import read_json_object
from generator.spec import Spec

REBUILD = "tritongen build SPEC --force"


class Relation(str, Enum):
    equal = "equal"
    at_least = "at least"
    not_compared = "not compared"


class Check(BaseModel):
    """One fact of the engine (or checkpoint) against the spec."""

    key: str
    """Where the engine records it (``build_config.max_batch_size``) or the runtime derives it."""
    relation: Relation
    engine: Any = None
    spec: Any = None
    """The spec's value; for ``equal`` with several allowed names, the first."""
    allowed: tuple[Any, ...] = ()
    ok: bool = True
    reason: str = ""
    """Why it is compared this way (the upstream rule) or, for ``not compared``, why not."""
    fix: str = ""

    @property
    def message(self) -> str:
        if self.relation is Relation.at_least:
            return f"{self.key} is {self.engine}, the spec wants at least {self.spec} ({self.reason})"
        want = " or ".join(map(repr, self.allowed)) if len(self.allowed) > 1 else repr(self.spec)
        return f"{self.key} is {self.engine!r}, the spec wants {want}"


def _equal(key: str, engine: Any, allowed: tuple[Any, ...], fix: str, reason: str = "") -> Check:
    return Check(key=key, relation=Relation.equal, engine=engine, spec=allowed[0], allowed=allowed,
                 ok=engine in allowed, reason=reason, fix=fix)


def _set_or_rebuild(field: str, engine_value: Any) -> str:
    return (f"rebuild the engine from this spec ({REBUILD}), or, if the engine is the one you want, "
            f"--set {field}={engine_value} and re-render")


def expected_max_num_tokens(spec: Spec) -> int:
    """The max_num_tokens trtllm-build 1.2.1 records for the plan's flags (rule "max_num_tokens":
    check_max_num_tokens with packed input, the spec's value clipped to max_seq_len x max_batch_size,
    then raised to tokens_per_block with context FMHA or to max_input_len without it)."""
    b = spec.build
    seq = b.resolved_max_seq_len
    tokens = min(b.max_num_tokens, seq * b.max_batch_size)
    if b.plugins.context_fmha is False:
        return max(tokens, min(b.max_input_len, seq))
    return max(tokens, b.tokens_per_block)


def _quant_checks(spec: Spec, quant_algo: Optional[str], kv_algo: Optional[str], prefix: str) -> list[Check]:
    q = spec.quantization
    back = {name: fmt.value for fmt, names in QUANT_ALGOS.items() for name in names}
    kv_back = {name: kv.value for kv, names in KV_ALGOS.items() for name in names}
    return [
        _equal(f"{prefix}quantization.quant_algo", quant_algo, QUANT_ALGOS[q.format],
               f"re-quantize from this spec ({REBUILD} converts the checkpoint again), or --set quantization.format="
               f"{back.get(quant_algo, '?')} if that is the format you want"),
        _equal(f"{prefix}quantization.kv_cache_quant_algo", kv_algo, KV_ALGOS[q.kv_cache],
               f"re-quantize from this spec ({REBUILD}), or --set quantization.kv_cache={kv_back.get(kv_algo, '?')}"),
    ]


def _mapping_checks(spec: Spec, tp: Any, pp: Any, world: Any, prefix: str) -> list[Check]:
    b = spec.build
    return [
        _equal(f"{prefix}mapping.tp_size", tp, (b.tp_size,), _set_or_rebuild("build.tp_size", tp)),
        _equal(f"{prefix}mapping.pp_size", pp, (b.pp_size,), _set_or_rebuild("build.pp_size", pp)),
        _equal(f"{prefix}mapping.world_size", world, (b.world_size,),
               f"the checkpoint was split for {world} ranks; {REBUILD} converts it for tp x pp = {b.world_size}"),
    ]


def compare_engine(spec: Spec, facts: EngineFacts) -> list[Check]:
    """Every fact of ``facts`` against ``spec``; failing checks have ``ok`` False and a fix."""
    b, s = spec.build, spec.serving
    seq = b.resolved_max_seq_len
    checks = [
        _equal("version", facts.version, (TRTLLM_VERSION,),
               f"rebuild with TensorRT-LLM {TRTLLM_VERSION} (the container `tritongen plan` names): {REBUILD}",
               "the server's TensorRT-LLM must be the one that built the engine (rule \"version\")"),
        *_mapping_checks(spec, facts.tp_size, facts.pp_size, facts.world_size, "pretrained_config."),
        _equal("rank*.engine files", len(facts.rank_files), (facts.world_size,),
               f"the engine folder is incomplete (one rank<N>.engine per rank): {REBUILD}",
               "one engine per rank (rule \"layout\")"),
        *_quant_checks(spec, facts.quant_algo, facts.kv_cache_quant_algo, "pretrained_config."),
        _equal("pretrained_config.dtype", facts.dtype, (b.dtype,), _set_or_rebuild("build.dtype", facts.dtype)),
        _equal("build_config.max_batch_size", facts.max_batch_size, (b.max_batch_size,),
               _set_or_rebuild("build.max_batch_size", facts.max_batch_size)),
        _equal("build_config.max_beam_width", facts.max_beam_width, (b.max_beam_width,),
               _set_or_rebuild("build.max_beam_width", facts.max_beam_width)),
        _equal("build_config.max_seq_len", facts.max_seq_len, (seq,),
               _set_or_rebuild("build.max_seq_len", facts.max_seq_len)),
        _equal("build_config.max_num_tokens", facts.max_num_tokens, (expected_max_num_tokens(spec),),
               _set_or_rebuild("build.max_num_tokens", facts.max_num_tokens),
               "trtllm-build clips and raises it (rule \"max_num_tokens\")"),
        _equal("build_config.kv_cache_type", facts.kv_cache_type, (b.kv_cache_type.upper(),),
               _set_or_rebuild("build.kv_cache_type", facts.kv_cache_type.lower())),
        _equal("build_config.plugin_config.tokens_per_block", facts.tokens_per_block, (b.tokens_per_block,),
               _set_or_rebuild("build.tokens_per_block", facts.tokens_per_block)),
        _equal("build_config.plugin_config.remove_input_padding", facts.remove_input_padding, (True,),
               f"in-flight batching packs sequences; {REBUILD} (the plan enables it)"),
    ]
    limits = runtime_limits(facts, chunked_context=s.enable_chunked_context)
    checks.append(Check(
        key="runtime max_input_len", relation=Relation.at_least, engine=limits.max_input_len, spec=b.max_input_len,
        ok=limits.max_input_len >= b.max_input_len,
        reason=f"the runtime derives {limits.max_input_len_rule} (rule \"runtime_max_input_len\")",
        fix=(f"rebuild with build.max_num_tokens of at least {b.max_input_len} ({REBUILD}), or --set "
             "serving.enable_chunked_context=true and re-render" if facts.context_fmha and facts.remove_input_padding
             else f"rebuild from this spec ({REBUILD})"),
    ))
    if facts.context_fmha and facts.remove_input_padding:
        checks.append(Check(key="build_config.max_input_len", relation=Relation.not_compared,
                            engine=facts.max_input_len, spec=b.max_input_len,
                            reason="with context FMHA and packed input trtllm-build ignores --max_input_len and records "
                                   "its default; the runtime limit above is what counts (rule \"max_seq_len\")"))
    if b.plugins.context_fmha is None:
        checks.append(Check(key="build_config.plugin_config.context_fmha", relation=Relation.not_compared,
                            engine=facts.context_fmha, reason="the spec leaves it to trtllm-build's default"))
    else:
        checks.append(_equal("build_config.plugin_config.context_fmha", facts.context_fmha, (b.plugins.context_fmha,),
                             _set_or_rebuild("build.plugins.context_fmha", str(facts.context_fmha).lower())))
    needs = [n for n, on in (("serving.enable_chunked_context", s.enable_chunked_context),
                             ("serving.enable_kv_cache_reuse", s.enable_kv_cache_reuse)) if on]
    if needs:
        checks.append(_equal("build_config.plugin_config.use_paged_context_fmha", facts.use_paged_context_fmha, (True,),
                             f"{' and '.join(needs)} need paged context FMHA, which this engine lacks (an INT8 KV "
                             f"cache or context_fmha=false turn it off): "
                             + " ".join(f"--set {n}=false" for n in needs) + f" and re-render, or rebuild ({REBUILD})",
                             "rule \"plugin_overrides\""))
    return checks


def engine_mismatches(spec: Spec, facts: EngineFacts) -> list[Check]:
    """The failing checks of :func:`compare_engine` (empty: the engine is what the spec describes)."""
    return [c for c in compare_engine(spec, facts) if not c.ok]


def compare_checkpoint(spec: Spec, config: dict[str, Any]) -> list[Check]:
    """A TensorRT-LLM checkpoint's config.json (mapping, quantization) against the spec."""
    mapping = config.get("mapping") if isinstance(config.get("mapping"), dict) else {}
    quant = config.get("quantization") if isinstance(config.get("quantization"), dict) else {}
    return (_mapping_checks(spec, mapping.get("tp_size"), mapping.get("pp_size"), mapping.get("world_size"), "")
            + _quant_checks(spec, quant.get("quant_algo"), quant.get("kv_cache_quant_algo"), ""))


def checkpoint_mismatches(spec: Spec, config_path: Path, *, fix: str) -> list[Check]:
    """The failing checks of :func:`compare_checkpoint` for the checkpoint config.json at ``config_path``
    (``fix`` says how to make it again when it is not a JSON object)."""
    return [c for c in compare_checkpoint(spec, read_json_object(config_path, fix=fix)) if not c.ok]


def mismatch_error(what: str, checks: list[Check], where: str, fix: str = "",
                   kind: type[TritongenError] = ArtifactCorrupt) -> TritongenError:
    """One error listing failing checks; the fix is the check's own when there is one, else ``fix``."""
    listed = "\n  ".join(c.message for c in checks)
    own = checks[0].fix if len(checks) == 1 else ""
    return kind(f"{what} does not match the spec:\n  {listed}", where=where,
                fix=own or fix or f"rebuild from this spec ({REBUILD}), or change the spec fields named above")
