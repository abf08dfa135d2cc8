"""Triton's admin APIs and the header that unlocks them: one definition for ``serve``'s command line and the
Kubernetes server pods. Pure."""

from __future__ import annotations

ADMIN_APIS = ("model-repository", "logging", "trace", "shared-memory")
"""Triton APIs that change the server's state or list its repository: restricted to requests carrying the key.
Statistics stay open: NVIDIA's perf_analyzer (and genai-perf, Model Analyzer on top of it) reads them around
every measurement, and the same per-model figures are public on the metrics port anyway."""
ADMIN_HEADER = "tritongen-admin-key"
KEY_PLACEHOLDER = "@TRITONGEN_ADMIN_KEY@"
"""Stands for ``admin_credential(key)`` on the command line of a server whose key ``serve/argvkey.c`` fills in
(in memory, so no other user reads it). Having no ``=``, it is no valid restriction: a server it was not
replaced in refuses to start rather than take the placeholder for its key."""


def admin_credential(key: str) -> str:
    """The header and value the restricted APIs require, as Triton's restriction flags spell them."""
    return f"{ADMIN_HEADER}={key}"


def restriction_flags(credential: str) -> list[str]:
    """tritonserver's flags restricting every admin API, over HTTP and gRPC, to requests carrying ``credential``
    (``admin_credential(key)`` or ``KEY_PLACEHOLDER``)."""
    restriction = f"{','.join(ADMIN_APIS)}:{credential}"
    return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
