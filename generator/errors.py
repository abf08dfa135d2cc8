"""One error type for everything the user can fix: a message, the file or field, and the fix."""

from __future__ import annotations


class TritongenError(Exception):
    """An error the CLI prints without a traceback.

    ``where`` names the file or spec field at fault; ``fix`` is the command or change that mends it.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class PlanRefused(TritongenError):
    """The spec is valid but the target cannot do what it asks (GPU, format, limits, engine target)."""


class ArtifactCorrupt(TritongenError):
    """A file or folder exists but cannot be read, or does not match the spec it claims to follow."""
