"""The Jinja2 environment of templates/deploy/: layout only, every value decided in Python."""

from __future__ import annotations

import json
from typing import Any

from generator.templating import environment


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render(template: str, **values: Any) -> str:
    # JSON is YAML: every scalar, list and mapping goes in through this filter, so quoting is never by hand.
    return environment("deploy", (("j", _json),)).get_template(template).render(**values)
