"""The Jinja2 environment of templates/deploy/: layout only, every value decided in Python and escaped for
its context (YAML, comment, shell) by generator.templating's filters; strict, so none can be forgotten."""

from __future__ import annotations

from typing import Any

from generator.templating import environment


def render(template: str, **values: Any) -> str:
    return environment("deploy", strict=True).get_template(template).render(**values)
