"""The Jinja2 environment of templates/deploy/: layout only, every value decided in Python."""

from __future__ import annotations

import functools
import json
from typing import Any

from generator.resources import templates_dir


@functools.lru_cache(maxsize=None)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "deploy")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    # JSON is YAML: every scalar, list and mapping goes in through this filter, so quoting is never by hand.
    env.filters["j"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def render(template: str, **values: Any) -> str:
    return _environment().get_template(template).render(**values)
