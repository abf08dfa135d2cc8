"""What a load test of a running server calls: the model it serves and that model's tokenizer, asked of the
server before Locust starts, so a wrong model or a missing tokenizer fails with its own message, not with
Locust's last lines.

The model: ``loadtest.model``, else (``--url``) the entry model the server serves, as smoke finds it, else the
spec's target. The tokenizer: ``loadtest.tokenizer``, else the spec's (the LLM-API checkpoint its model.yaml
names), else the ``tokenizer_dir`` parameter of the model, of its preprocessing model, or of the engine model
the CPU LLM-API stand-in names (``engine_model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from generator.errors import SpecError
from generator.measure.ceiling import resolve_workers
from generator.serve.client import ServerRequestError, model_config
from generator.serve.dialect import config_param
from generator.spec import Spec
from generator.spec.loadtest import ResolvedLoadTest

TOKENIZER_FIX = ("pass --tokenizer DIR, a folder with the served model's tokenizer.json (for the LLM-API model, "
                 "the checkpoint folder its model.yaml names)")


def _config(http_url: str, model: str) -> Optional[dict[str, Any]]:
    try:
        return model_config(http_url, model)
    except (ServerRequestError, OSError, ValueError):
        return None


def served_tokenizer(http_url: str, config: dict[str, Any]) -> Optional[tuple[Path, str]]:
    """(folder, which model's parameter named it) from the served configs, or None when none names one."""
    for name, cfg in ((config.get("name", "the model"), config), ("preprocessing", None),
                      (config_param(config, "engine_model"), None)):
        if cfg is None and name:
            cfg = _config(http_url, name)
        found = config_param(cfg, "tokenizer_dir") if cfg else None
        if found:
            return Path(found), name
    return None


def resolve_served(spec: Spec, http_url: str, *, cores: int, ask_model: bool,
                   admin_key: Optional[str] = None) -> ResolvedLoadTest:
    """The load test against the server at ``http_url``; ``ask_model``: the spec does not say what the server
    serves (``--url``), so an unset ``loadtest.model`` is the server's entry model."""
    from generator.serve.smoke_run import entry_model

    workers = resolve_workers(spec.loadtest, cores)
    if spec.loadtest.openai:  # no Triton configs to ask: the users take the server's first model unless told
        return spec.resolved_loadtest(workers=workers)
    given = spec.loadtest.model
    served_model = entry_model(http_url, None, admin_key) if ask_model and given is None else None
    lt = spec.resolved_loadtest(workers=workers, served_model=served_model)
    try:
        config = model_config(http_url, lt.model)
    except (ServerRequestError, OSError, ValueError) as exc:
        raise SpecError(f"model {lt.model!r} is not served by {http_url} ({exc})",
                        where="--model" if given else None,
                        fix="pass --model with a model the server serves and has ready "
                            "(tritongen smoke --url URL names its entry model)") from None
    source = "--tokenizer" if spec.loadtest.tokenizer is not None else "the spec's checkpoint"
    if lt.tokenizer is None:
        found = served_tokenizer(http_url, config)
        if found is None:
            raise SpecError(f"model {lt.model!r} at {http_url} names no tokenizer: no tokenizer_dir parameter in "
                            "its config, its preprocessing model's or its engine model's", where="--tokenizer",
                            fix=TOKENIZER_FIX)
        folder, named_by = found
        lt = spec.resolved_loadtest(workers=workers, served_model=served_model, served_tokenizer=folder)
        source = f"the tokenizer_dir parameter of model {named_by!r}"
    if not (lt.tokenizer / "tokenizer.json").is_file():
        raise SpecError(f"no tokenizer.json in {lt.tokenizer} ({source}; is the server on another machine?)",
                        where="--tokenizer", fix=TOKENIZER_FIX)
    return lt
