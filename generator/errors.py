"""Errors the user can fix, one class per kind of failure, each carrying the fix.

Callers that must tell failures apart (the CLI's exit codes, the sweep's point statuses) catch a
subclass; everything else catches ``TritongenError``. The fix is required: an error a user sees
without knowing what to do next is a bug.
"""

from __future__ import annotations


class TritongenError(Exception):
    """An error the CLI prints without a traceback.

    ``where`` names the file or spec field at fault; ``fix`` is the command or change that mends it.
    Raise a subclass; this base is what callers catch.
    """

    def __init__(self, message: str, *, fix: str, where: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class CheckFailed(TritongenError):
    """A check tritongen ran found problems: validate errors, failed smoke checks, no successful request."""


class SpecError(TritongenError):
    """The spec, a ``--set`` override or a command-line option is wrong (the user's input)."""


class OutputExists(SpecError):
    """An output folder or file exists and ``--force`` was not given."""


class PlanRefused(TritongenError):
    """The spec is valid but the target cannot do what it asks (GPU, format, limits, engine target)."""


class ArtifactMissing(TritongenError):
    """A file or folder an earlier stage makes is not there (model, checkpoint, engine, repository)."""


class ArtifactCorrupt(TritongenError):
    """A file or folder exists but cannot be read, or does not match the spec it claims to follow."""


class ToolMissing(TritongenError):
    """Software tritongen drives is not installed here (tritonserver, TensorRT-LLM, ``datasets``)."""


class StepFailed(TritongenError):
    """An external step tritongen ran failed (TensorRT-LLM's quantize.py, trtllm-build)."""


class HubError(TritongenError):
    """The Hugging Face Hub refused or could not be reached (gated, unknown id, token, offline)."""


class ServerError(TritongenError):
    """tritonserver did not start or stopped answering, or a server given by URL cannot be reached."""


class ServerNotReady(ServerError):
    """tritonserver kept loading past the start timeout with no model failed: slow, not refused."""


class LoadTestError(TritongenError):
    """The load generator (Locust) failed or recorded nothing."""


class TritongenWarning(UserWarning):
    """Something works, less safely or less well than it should, and the user can mend it: the CLI prints
    it as a ``warning:`` line (without Python's file and line). Carry the fix in the message."""
