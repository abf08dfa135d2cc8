"""Validate, models against each other: the ensemble's steps and tensors, one batch size everywhere, and
decoupled settings that agree with each other and with the spec's streaming protocol."""

from __future__ import annotations

from typing import Optional

from generator.engine.rules import bls_fills_batch
from generator.repo.problems import Severity, model_instances, type_name
from generator.repo.manifest import RepoManifest
from generator.repo.render import BLS, ENSEMBLE, POSTPROCESSING, PREPROCESSING, TENSORRT_LLM
from generator.repo.validate_models import Model, Report
from generator.spec import Spec

_STREAMING_PROTOCOLS = ("http-stream", "grpc-stream")


def _dims_compatible(a, b) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def check_ensemble(ens: Model, models: dict[str, Model], report: Report) -> None:
    ins, outs = ens.tensors("input"), ens.tensors("output")
    available: dict[str, tuple[int, list[int], str]] = {n: (t.data_type, list(t.dims), f"ensemble input {n!r}")
                                                          for n, t in ins.items()}
    produced: set[str] = set()
    for i, step in enumerate(ens.config.ensemble_scheduling.step):
        sline = ens.text.step(i)
        target = models.get(step.model_name)
        if target is None:
            report.add(ens.file, sline, f"step {i + 1} calls model {step.model_name!r}, which is not in the repository"
                       " (or its config does not parse)", f"add {step.model_name}/config.pbtxt or fix model_name")
            for tensor in step.output_map.values():  # unknown types: don't pile up follow-on problems
                available.setdefault(tensor, (None, None, f"output of missing {step.model_name}"))
                produced.add(tensor)
            continue
        t_in, t_out = target.tensors("input"), target.tensors("output")
        for key, src in step.input_map.items():
            line = ens.text.map_entry(sline, "input_map", key)
            if key not in t_in:
                report.add(ens.file, line, f"{step.model_name} has no input {key!r}",
                           f"use one of {step.model_name}'s inputs (see {target.file})")
                continue
            if src not in available:
                report.add(ens.file, line, f"tensor {src!r} fed to {step.model_name}.{key} is neither an ensemble "
                           "input nor produced by an earlier step", "map an existing tensor")
                continue
            dtype, dims, origin = available[src]
            if dtype is None:
                continue
            want = t_in[key]
            if dtype != want.data_type:
                report.add(ens.file, line, f"{origin} is {type_name(dtype)} but {step.model_name} input {key!r} is "
                           f"{type_name(want.data_type)}", "make the data types equal")
            elif not _dims_compatible(dims, list(want.dims)):
                report.add(ens.file, line, f"{origin} has dims {dims} but {step.model_name} input {key!r} has "
                           f"{list(want.dims)}", "make the dims compatible (-1 matches any size)")
        for key, t in t_in.items():
            if not t.optional and key not in step.input_map:
                report.add(ens.file, sline, f"required input {key!r} of {step.model_name} is not mapped in step {i + 1}",
                           f'add input_map {{ key: "{key}" value: ... }}')
        for key, dst in step.output_map.items():
            line = ens.text.map_entry(sline, "output_map", key)
            if key not in t_out:
                report.add(ens.file, line, f"{step.model_name} has no output {key!r}",
                           f"use one of {step.model_name}'s outputs (see {target.file})")
                continue
            t = t_out[key]
            available[dst] = (t.data_type, list(t.dims), f"{step.model_name} output {key!r}")
            produced.add(dst)
            if dst in outs:
                o = outs[dst]
                oline = ens.text.tensor("output", dst)
                if o.data_type != t.data_type:
                    report.add(ens.file, oline, f"ensemble output {dst!r} is {type_name(o.data_type)} but "
                               f"{step.model_name} produces {type_name(t.data_type)}", "make the data types equal")
                elif not _dims_compatible(list(o.dims), list(t.dims)):
                    report.add(ens.file, oline, f"ensemble output {dst!r} has dims {list(o.dims)} but "
                               f"{step.model_name} produces {list(t.dims)}", "make the dims compatible")
    for name in outs:
        if name not in produced:
            report.add(ens.file, ens.text.tensor("output", name), f"ensemble output {name!r} is produced by no step",
                       "map it in a step's output_map or remove it")


def check_batch_and_decoupling(models: dict[str, Model], manifest: Optional[RepoManifest], spec: Optional[Spec],
                                report: Report) -> None:
    ref = models.get(ENSEMBLE) or next(iter(models.values()))
    mbs = ref.config.max_batch_size
    for m in models.values():
        if m.config.max_batch_size != mbs:
            report.add(m.file, m.text.field("max_batch_size"),
                       f"max_batch_size {m.config.max_batch_size} differs from {ref.name}'s {mbs}",
                       "use one batch size in every model (re-render: it comes from the engine or the spec)")
    if spec is not None and spec.triton_max_batch_size != mbs:
        report.add(ref.file, ref.text.field("max_batch_size"),
                   f"max_batch_size {mbs} differs from the spec's {spec.triton_max_batch_size} "
                   f"({'serving' if spec.serving.max_batch_size else 'build'}.max_batch_size)",
                   "re-render from the spec instead of editing, or change the spec")
    elif spec is None and manifest is not None and manifest.max_batch_size != mbs:
        report.add(ref.file, ref.text.field("max_batch_size"),
                   f"max_batch_size {mbs} differs from the {manifest.max_batch_size} this repository was rendered "
                   f"with ({manifest.max_batch_size_source})", "re-render instead of editing")

    trt, bls = models.get(TENSORRT_LLM), models.get(BLS)
    for name in (PREPROCESSING, POSTPROCESSING):
        m = models.get(name)
        if m is not None and m.decoupled:
            report.add(m.file, m.text.field("model_transaction_policy"),
                       f"{name} is decoupled; the ensemble needs exactly one response from it per request",
                       "remove model_transaction_policy (or set decoupled: false)")
    if trt is not None and bls is not None and trt.decoupled != bls.decoupled:
        report.add(bls.file, bls.text.field("model_transaction_policy") or bls.text.field("name"),
                   f"tensorrt_llm_bls decoupled={str(bls.decoupled).lower()} but tensorrt_llm "
                   f"decoupled={str(trt.decoupled).lower()}; BLS streams what tensorrt_llm sends",
                   "use the same decoupled setting in both (spec: serving.decoupled)")
    if trt is not None and spec is not None:
        line = trt.text.field("model_transaction_policy") or trt.text.field("name")
        if trt.decoupled != spec.serving.decoupled:
            report.add(trt.file, line, f"tensorrt_llm decoupled={str(trt.decoupled).lower()} but the spec says "
                       f"serving.decoupled={str(spec.serving.decoupled).lower()}", "re-render from the spec")
        elif not trt.decoupled and spec.loadtest.protocol in _STREAMING_PROTOCOLS:
            report.add(trt.file, line, f"tensorrt_llm is not decoupled, so streaming ({spec.loadtest.protocol}, "
                       "the ensemble's `stream` input) cannot work",
                       "--set serving.decoupled=true, or --set loadtest.protocol=http")


def check_bls_reach(models: dict[str, Model], spec: Optional[Spec], report: Report) -> None:
    """tensorrt_llm_bls's instances can fill the engine's batch (rule "bls_fills_batch"): the batch is the spec's
    build.max_batch_size, or without a spec tensorrt_llm's max_batch_size."""
    bls, trt = models.get(BLS), models.get(TENSORRT_LLM)
    if bls is None or (spec is None and trt is None):
        return
    batch = spec.build.max_batch_size if spec is not None else trt.config.max_batch_size
    for f in bls_fills_batch(batch, model_instances(bls.config)):
        report.add(bls.file, bls.text.field("instance_group") or bls.text.field("name"), f.message, f.fix,
                   Severity(f.severity))
