"""Triton's admin APIs and the header that unlocks them: one definition for ``serve``'s command line and the
Kubernetes server pods. Pure."""

from __future__ import annotations

ADMIN_APIS = ("model-repository", "logging", "trace", "shared-memory", "statistics")
"""Triton APIs that change or reveal the server's state: restricted to requests carrying the key."""
ADMIN_HEADER = "tritongen-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
"""The same key as gRPC metadata: Triton prefixes restricted-protocol headers on gRPC (perf_analyzer: ``-H``)."""


def restriction_flags(key: str) -> list[str]:
    """tritonserver's flags restricting every admin API, over HTTP and gRPC, to requests carrying ``key``."""
    restriction = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
