"""Triton's admin APIs and the header that unlocks them: one definition for ``serve``'s command line and the
Kubernetes server pods. Pure."""

from __future__ import annotations

ADMIN_APIS = ("model-repository", "logging", "trace", "shared-memory")
"""Triton APIs that change the server's state or list its repository: restricted to requests carrying the key.
Statistics stay open: NVIDIA's perf_analyzer (and genai-perf, Model Analyzer on top of it) reads them around
every measurement, and the same per-model figures are public on the metrics port anyway."""
ADMIN_HEADER = "tritongen-admin-key"


def restriction_flags(key: str) -> list[str]:
    """tritonserver's flags restricting every admin API, over HTTP and gRPC, to requests carrying ``key``."""
    restriction = f"{','.join(ADMIN_APIS)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]
