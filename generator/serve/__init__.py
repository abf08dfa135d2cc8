"""Serve stage: start tritonserver on a rendered repository and smoke-test it over HTTP and gRPC."""
