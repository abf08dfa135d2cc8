"""Validate, models against what they load: tokenizer folders, the built engine (or the CPU engine's weights)
and the checkpoint's quantization against the spec."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import warnings
from pathlib import Path
from typing import Optional

from generator.errors import ArtifactCorrupt
from generator.fsutil import read_json_object, unreadable_file
from generator.repo.enginecheck import engine_problems
from generator.repo.problems import checkpoint_quant_problems, not_built, weights_command
from generator.repo.render import tensorrt_llm_parameters
from generator.repo.validate_models import Model, Report
from generator.spec import EngineTarget, Spec

_PROBE_TEXT = "Hello, world"
_TOKENIZER_SUFFIXES = {".json", ".txt", ".model", ".jinja", ".tiktoken"}
"""The files of a folder transformers may read to load a tokenizer (tokenizer.json, tokenizer_config.json,
vocab.json, merges.txt, tokenizer.model, chat_template.jinja, config.json, ...); weights are not read."""


@contextlib.contextmanager
def _transformers_silent():
    """transformers writes nothing to the terminal itself: its log lines and warnings quote the folder's files raw,
    past the CLI's escape (review21: a config.json a repository names, with an ESC sequence as its model_type,
    erased the screen during validate); what fails is the problem validate reports."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.CRITICAL + 1)  # above every level it logs at
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


@functools.lru_cache(maxsize=16)
def tokenizer_load_error(path: str) -> Optional[str]:
    """None when the folder holds a tokenizer that transformers loads offline and that turns text into
    tokens with an end id inside its vocabulary, else why not. transformers "loads" a folder without
    tokenizer files as an empty tokenizer that encodes every prompt to nothing, so loading is not enough."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(path)  # a folder a repository names: transformers would read whatever it holds, whole
    bad = next((why for f in sorted(folder.iterdir()) if f.suffix in _TOKENIZER_SUFFIXES and (why := unreadable_file(f))),
               None)
    if bad:
        return bad
    # trust_remote_code=False, never transformers' default (None): for a folder with an auto_map and no known model
    # type, None asks "Do you wish to run the custom code? [y/N]" on the terminal (15 s), and a user's "y" ran the
    # folder's Python inside validate (review22); False refuses such a folder, which validate then reports
    with _transformers_silent():
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except Exception as first:  # noqa: BLE001 - any failure means "does not load"; report its text
            try:
                tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            except Exception:  # noqa: BLE001
                return f"{type(first).__name__}: {first}".splitlines()[0][:300]
        ids = tok(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if not ids:
        return (f"it is empty: {_PROBE_TEXT!r} encodes to no tokens (no tokenizer.json, tokenizer.model or "
                "vocab.json there, so every request would read as an empty prompt)")
    if tok.unk_token_id is not None and all(i == tok.unk_token_id for i in ids):
        return (f"it knows no word: {_PROBE_TEXT!r} encodes to {tok.unk_token or 'the unknown token'} only, so every "
                "prompt would reach the model as unknown tokens (a vocabulary without the model's words)")
    vocab, of = len(tok), "its vocabulary"
    try:  # the model beside the tokenizer (a checkpoint) can only produce ids below its vocab_size
        model_vocab = read_json_object(Path(path) / "config.json", fix="").get("vocab_size")
    except ArtifactCorrupt:
        model_vocab = None
    if isinstance(model_vocab, int) and model_vocab < vocab:
        vocab, of = model_vocab, "the model's vocab_size in config.json"
    end_id = tok.eos_token_id
    if end_id is not None and not 0 <= end_id < vocab:
        return (f"its end token id {end_id} (the END_ID preprocessing sends) is outside {of} ({vocab} tokens), "
                "so generation never stops on it")
    return None



def check_tokenizers(models: dict[str, Model], spec: Optional[Spec], report: Report) -> None:
    """Each tokenizer_dir loads; a folder that does not exist yet is one warning, however many models name it."""
    missing: dict[str, list[Model]] = {}
    for m in models.values():
        path = m.params.get("tokenizer_dir")
        if not path or "${" in path:
            continue
        line = m.text.parameter("tokenizer_dir")
        if not Path(path).is_dir():
            missing.setdefault(path, []).append(m)
            continue
        err = tokenizer_load_error(str(Path(path).resolve()))
        if err:
            report.add(m.file, line, f"tokenizer in {path!r} cannot be used: {err}",
                       "copy the model's tokenizer files (tokenizer.json, tokenizer_config.json) there")
    for path, users in missing.items():
        others = f" (also named by {', '.join(u.name for u in users[1:])})" if users[1:] else ""
        report.extend([not_built(users[0].file, users[0].text.parameter("tokenizer_dir"),
                                 f"tokenizer_dir {path!r} does not exist{others}; the checkpoint holds the tokenizer",
                                 weights_command(spec))])


def check_engine(trt: Model, spec: Optional[Spec], report: Report) -> None:
    """A built engine (trtllm-build's config.json at gpt_model_path) must agree with the configs and spec."""
    if trt.config.backend == "python":
        check_cpu_engine(trt, spec, report)
        return
    rendered = dict(tensorrt_llm_parameters(spec, EngineTarget.tensorrtllm)) if spec is not None else {}
    report.extend(engine_problems(trt.file, trt.text, trt.params, trt.config.max_batch_size, spec, rendered))


def check_cpu_engine(trt: Model, spec: Optional[Spec], report: Report) -> None:
    """The CPU reference engine reads its limits from parameters and its weights from gpt_model_path."""
    p = trt.params
    ints = {k: int(p[k]) for k in ("max_input_len", "max_seq_len", "max_num_tokens", "tokens_per_block")
            if re.fullmatch(r"\d+", p.get(k, ""))}
    if "max_input_len" in ints and "max_seq_len" in ints and ints["max_input_len"] >= ints["max_seq_len"]:
        report.add(trt.file, trt.text.parameter("max_input_len"),
                   f"max_input_len {ints['max_input_len']} is not below max_seq_len {ints['max_seq_len']}",
                   "raise build.max_seq_len or lower build.max_input_len")
    tpb = ints.get("tokens_per_block")
    if tpb is not None and (tpb < 1 or tpb & (tpb - 1)):
        report.add(trt.file, trt.text.parameter("tokens_per_block"), f"tokens_per_block {tpb} is not a power of two",
                   "use 16, 32, 64 or 128")
    if spec is not None:
        for key, want in (("max_input_len", spec.build.max_input_len), ("max_seq_len", spec.build.resolved_max_seq_len),
                          ("max_num_tokens", spec.build.max_num_tokens)):
            if key in ints and ints[key] != want:
                report.add(trt.file, trt.text.parameter(key), f"{key} {ints[key]} but the spec gives {want}",
                           "re-render from the spec")
    weights = Path(p.get("gpt_model_path", ""))
    line = trt.text.parameter("gpt_model_path")
    if not p.get("gpt_model_path"):
        report.add(trt.file, trt.text.field("parameters"), f"{trt.name} has no gpt_model_path parameter",
                   "re-render; it names the weights folder")
    elif not weights.exists():
        if p.get("tokenizer_dir") != p["gpt_model_path"]:  # else check_tokenizers already warned about the folder
            report.extend([not_built(trt.file, line, f"weights folder {str(weights)!r} does not exist",
                                     weights_command(spec))])
    elif not (weights / "config.json").is_file():
        report.add(trt.file, line, f"no model config.json in {str(weights)!r}",
                   f"re-run `{weights_command(spec)} (again)` so complete weights are there, or fix the path")
    elif spec is not None:
        report.extend(checkpoint_quant_problems(weights, spec, required=False))
