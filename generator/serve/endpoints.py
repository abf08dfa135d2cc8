"""Where a running Triton server listens, from the URLs a user gives: one rule for every command.

``--url`` is the HTTP address; gRPC and metrics default to Triton's own layout (HTTP port + 1 and + 2)
unless ``--grpc-url`` / ``--metrics-url`` say otherwise. Pure: whether a server answers there is
generator/serve/client.py's ``check_reachable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from generator.errors import SpecError

URL_FIX = "e.g. --url http://127.0.0.1:8000 (gRPC then defaults to port 8001, metrics to 8002)"


def _host_port(url: str, option: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``; a bare HOST:PORT means http."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise SpecError(f"URL {url!r} needs a host and a port (1-65535)", where=option, fix=URL_FIX)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, host, port


@dataclass(frozen=True)
class Endpoints:
    """HTTP (with scheme), gRPC (HOST:PORT) and metrics URLs of one server."""

    http_url: str
    grpc_url: str
    metrics_url: Optional[str]
    admin_key: Optional[str] = None
    """Key a server tritongen started wants for its admin APIs (statistics); ``tritongen serve`` prints where it is."""

    @classmethod
    def from_urls(cls, url: str, grpc_url: Optional[str] = None, metrics_url: Optional[str] = None,
                  admin_key: Optional[str] = None) -> "Endpoints":
        scheme, host, port = _host_port(url, "--url")
        if port + 2 > 65535 and not (grpc_url and metrics_url):
            raise SpecError(f"HTTP port {port} leaves no room for gRPC and metrics at + 1 and + 2", where="--url",
                            fix="pass --grpc-url and --metrics-url too")
        if grpc_url:
            _, ghost, gport = _host_port(grpc_url, "--grpc-url")
            grpc_url = f"{ghost}:{gport}"
        if metrics_url:
            _host_port(metrics_url, "--metrics-url")
        return cls(
            http_url=f"{scheme}://{host}:{port}",
            grpc_url=grpc_url or f"{host}:{port + 1}",
            metrics_url=metrics_url or f"http://{host}:{port + 2}/metrics",
            admin_key=admin_key,
        )

    @property
    def http_hostport(self) -> str:
        """HOST:PORT of the HTTP endpoint, for clients that take no scheme (tritonclient)."""
        return self.http_url.split("://", 1)[-1]

    def locust_host(self, protocol: str) -> str:
        return f"grpc://{self.grpc_url}" if protocol == "grpc-stream" else self.http_url


def http_status_fix(status: int) -> str:
    """The fix for an HTTP error status a Triton server answered with (Triton answers 400 for an unknown or
    unready model as well as for a bad input, 403 for an API closed by a restriction header)."""
    if status in (401, 403):
        return ("this API is closed by the server's admin key: pass --admin-key KEY (or set TRITONGEN_ADMIN_KEY; "
                "`tritongen serve` prints the file that holds it)")
    if status == 404:
        return "the server has no such path or model: check --url and --model against what it serves (tritongen smoke --url URL)"
    if status == 400:
        return ("the server refused the request: its message says which model or input; check that the model is "
                "served and ready (GET /v2/models/NAME/ready) and that --model names it")
    if status >= 500:
        return "the server failed while answering: read its log (the model's traceback is there)"
    return f"the server answered HTTP {status}: check --url and the server's log"
