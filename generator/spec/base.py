"""What every spec section shares: unknown keys are errors, field docstrings are the documentation, and
every integer fits the INT32 it becomes downstream."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

INT32_MAX = 2**31 - 1
"""Every integer of the spec ends up in an INT32 (Triton config fields, TensorRT-LLM limits, request
tensors): larger values would wrap or be refused downstream, so the spec refuses them."""


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, docstrings become descriptions, integers fit INT32."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int32(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and not -INT32_MAX - 1 <= value <= INT32_MAX:
            field = cls.model_fields[info.field_name]
            low = next((m.ge for m in field.metadata if hasattr(m, "ge")), -INT32_MAX - 1)
            raise ValueError(f"got {value}; allowed: {low} to {INT32_MAX} (it becomes an INT32 in the configs)")
        return value
