"""The one Jinja2 environment factory: templates hold layout, so every layout gets the same strict rules.

``StrictUndefined`` makes a value Python forgot to pass an error, not an empty string; each layout adds
only the filters its format needs (pbtxt quoting, JSON-as-YAML scalars).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from generator.resources import templates_dir


@functools.lru_cache(maxsize=None)
def environment(layout: str, filters: tuple[tuple[str, Callable[[Any], str]], ...] = ()):
    """The environment of ``templates/<layout>`` with ``filters`` registered (cached per layout and filters)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / layout)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(dict(filters))
    return env
