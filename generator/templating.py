"""The one Jinja2 environment factory and the one escaping filter per output context.

Templates hold layout, so every layout gets the same strict rules: ``StrictUndefined`` makes a value
Python forgot to pass an error, not an empty string, and every value that reaches a file goes through the
filter of the context it lands in (a value from a spec, a repository or a user may hold newlines,
quotes, ``$()``, ``#`` or ``---``):

``j``   a YAML (JSON) scalar, list or mapping;  ``c``   the text of a ``#`` comment (YAML, shell, pbtxt);
``sh``  one shell word;                         ``q``   a protobuf text-format string; ``tf`` a pbtxt bool;
``nested`` the output of a macro of the same template (already filtered inside).

Layouts that emit YAML or shell are ``strict``: a string reaching their output unfiltered is an error at
render time, so a template cannot forget the filter.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from typing import Any, Callable, Optional

from generator.errors import SpecError
from generator.resources import templates_dir

_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
"""Characters a JSON string may hold raw that YAML 1.1 reads as line breaks (NEL, LS, PS: folded into a space
inside a quoted scalar) or refuses (C1 controls, surrogates, BOM, non-characters)."""


class Escaped(str):
    """Text a context filter made safe for where it goes."""


def yaml_value(value: Any) -> Escaped:
    """JSON is YAML: a scalar, list or mapping whose every string is double-quoted with escapes, so quoting
    is never by hand; characters YAML reads as line breaks or refuses are escaped too."""
    text = json.dumps(value, ensure_ascii=False)
    return Escaped(_YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def comment_text(value: Any) -> Escaped:
    """One line of comment text: every character that is not printable (newline, NUL, unicode line and
    paragraph separators, other control characters) written as its Python escape, so a value cannot end the
    comment and start new content."""
    return Escaped("".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(value)))


def shell_word(value: Any) -> Escaped:
    """One word for a POSIX shell, whatever it holds (spaces, quotes, backticks, ``$()``)."""
    text = str(value)
    if "\0" in text:
        raise SpecError(f"value {text!r} holds a NUL character, which no command line can carry",
                        fix="remove the NUL from the path or value")
    return Escaped(shlex.quote(text))


_PBTXT_ESCAPES = {"\\": "\\\\", '"': '\\"', "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


_STUB_SHELL = re.compile(r"""[\s'"`$\\;|&<>()*?\[\]{}]""")


def stub_launch_problem(path: Any) -> Optional[str]:
    """Why Triton would misread ``path`` (a model repository, or a model folder in one) when it starts a Python
    model, or None.

    Triton 2.51's Python backend starts each model instance's stub with ``bash -c`` and the model's path in
    that command line unquoted (python_backend r24.10): a space splits it (the stub gets too few arguments and
    the model does not load), quotes vanish, and ``$(…)`` or backticks run as commands (measured: serving a
    repository in a folder named ``x$(touch F)`` made F). No quoting of tritongen's reaches that command line,
    so such a path is refused, naming its characters."""
    bad = sorted(set(_STUB_SHELL.findall(str(path))))
    if not bad:
        return None
    return (f"{str(path)!r} holds {' '.join(repr(c) for c in bad)}: Triton's Python backend puts a model's path "
            "unquoted into the bash command that starts its stub, where these split the path or run as commands")


def pbtxt_string(value: Any) -> Escaped:
    """A protobuf text-format string literal: quotes, backslashes and every control character escaped
    (other control characters as octal, as protobuf writes them), so Triton reads back exactly ``value``."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(f"value {text!r} is not valid Unicode text (a lone surrogate)",
                        fix="use a path or value made of real characters") from None
    escaped = "".join(_PBTXT_ESCAPES.get(c) or (f"\\{ord(c):03o}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                      for c in text)
    return Escaped(f'"{escaped}"')


def pbtxt_bool(value: bool) -> Escaped:
    return Escaped("true" if value else "false")


def nested(text: str) -> Escaped:
    """The output of a macro of the same template: its values went through their filters inside it."""
    return Escaped(text)


FILTERS: dict[str, Callable[[Any], str]] = {"j": yaml_value, "c": comment_text, "sh": shell_word,
                                             "q": pbtxt_string, "tf": pbtxt_bool, "nested": nested}


def _only_escaped(value: Any) -> Any:
    """``finalize`` of strict layouts: numbers pass, text only once a context filter escaped it."""
    if isinstance(value, str) and not isinstance(value, Escaped) and value:
        raise TypeError(f"unescaped text {value[:60]!r} reached a template: pass it through j, c, sh or q")
    return value


@functools.lru_cache(maxsize=None)
def environment(layout: str, strict: bool = False):
    """The environment of ``templates/<layout>`` with every context filter (cached per layout).
    ``strict``: text must come through a filter (see ``_only_escaped``)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / layout)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        finalize=_only_escaped if strict else None,
    )
    env.filters.update(FILTERS)
    return env
