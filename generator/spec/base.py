"""What every spec section shares: unknown keys are errors, field docstrings are the documentation, and
every integer fits the INT32 it becomes downstream."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

NAME_MAX = 255
"""Bytes in one path component (Linux NAME_MAX): a longer one fails every file call."""
PATH_MAX = 4096
"""Bytes in a whole path (Linux PATH_MAX)."""
INT32_MAX = 2**31 - 1
"""Every integer of the spec ends up in an INT32 (Triton config fields, TensorRT-LLM limits, request
tensors): larger values would wrap or be refused downstream, so the spec refuses them."""


def control_character(value: Any) -> str | None:
    """The first character of ``value`` (a string, path, or a list of them) that is not printable text: a
    newline, NUL, tab, unicode line separator or other control character, written as its escape. A mapping is
    free-form JSON (e.g. a request body), written escaped wherever it goes, so it is not looked into."""
    if isinstance(value, (str, PurePath)):
        return next((ascii(c)[1:-1] for c in str(value) if not c.isprintable() and c != " "), None)
    if isinstance(value, (list, tuple)):
        return next((bad for v in value if (bad := control_character(v))), None)
    return None


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, docstrings become descriptions, integers fit INT32,
    numbers are finite, and no text holds a control character."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              allow_inf_nan=False)  # inf/nan durations and rates overflowed every derived integer

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int32(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not -INT32_MAX - 1 <= value <= INT32_MAX:
            field = cls.model_fields[info.field_name]
            low = next((m.ge for m in field.metadata if hasattr(m, "ge")), -INT32_MAX - 1)
            raise ValueError(f"got {value}; allowed: {low} to {INT32_MAX} (it becomes an INT32 in the configs)")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        """Spec text reaches YAML, shell commands, config files and comments: a newline or NUL there would
        change their structure, and no path, name or image needs one."""
        bad = control_character(value)
        if bad is not None:
            raise ValueError(f"holds the control character {bad}; paths, names and images are one line of "
                             "printable text")
        if isinstance(value, PurePath):
            longest = max((len(part.encode("utf-8", "surrogateescape")) for part in value.parts), default=0)
            if longest > NAME_MAX or len(str(value).encode("utf-8", "surrogateescape")) > PATH_MAX:
                raise ValueError(f"a folder or file name of {longest} bytes (at most {NAME_MAX}; the whole path at "
                                 f"most {PATH_MAX}): no file system holds it")
        return value
