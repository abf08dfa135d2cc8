"""Manifests against the schemas a cluster would apply, offline.

Core kinds (Deployment, Service, HorizontalPodAutoscaler, RBAC) are checked by the PyPI package
``kubernetes-validate`` against the OpenAPI schemas it ships for the Kubernetes version pinned in
generator/data/deploy.json, in its strict variant (unknown fields are errors, as with
``kubectl apply --validate=strict``). The CRDs (LeaderWorkerSet, PodMonitor) are checked against the
``openAPIV3Schema`` of their upstream CRD YAML at a recorded tag (generator/data/crd/), made strict the
same way. Reads files only.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from generator.resources import data_dir, data_json

DATA_FILE = "deploy.json"


def kubernetes_version() -> str:
    return data_json(DATA_FILE)["kubernetes_version"]


def _strict(node: Any) -> Any:
    """additionalProperties: false wherever an object lists its properties and keeps no unknown fields."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.lru_cache(maxsize=None)
def _crd_validator(kind: str):
    import json

    import jsonschema

    crd = data_json(DATA_FILE)["crds"][kind]
    schema = json.loads((data_dir() / crd["schema_file"]).read_text(encoding="utf-8"))
    schema = _strict(schema)
    # metadata is validated by the API server's ObjectMeta rules, not by the CRD schema: keep it open.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft202012Validator(schema)


def crd_kinds() -> dict[str, str]:
    """CRD kind → apiVersion tritongen renders."""
    return {kind: c["api_version"] for kind, c in data_json(DATA_FILE)["crds"].items()}


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """Why ``doc`` would be refused (``path: message`` each), empty when it validates."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api, str):
        return ["apiVersion and kind are required"]
    crds = crd_kinds()
    if kind in crds:
        if api != crds[kind]:
            return [f"{kind} is served as {crds[kind]} (the recorded CRD), not {api}"]
        errors = sorted(_crd_validator(kind).iter_errors(doc), key=lambda e: list(e.path))
        return [_format(list(e.path), e.message) for e in errors]
    return _core_errors(doc)


def _core_errors(doc: dict[str, Any]) -> list[str]:
    import jsonschema
    from kubernetes_validate.utils import SchemaNotFoundError, major_minor

    validator = _core_validator(doc["kind"], doc["apiVersion"])
    if validator is None:
        return [SchemaNotFoundError(kind=doc["kind"], version=major_minor(kubernetes_version()),
                                    api_version=doc["apiVersion"]).message]
    try:
        validator.validate(doc)
    except jsonschema.ValidationError as exc:
        return [_format(list(exc.path), exc.message)]
    return []


@functools.lru_cache(maxsize=None)
def _core_validator(kind: str, api_version: str):
    """The validator ``kubernetes_validate.validate(doc, kubernetes_version(), strict=True)`` builds for this kind,
    built once: the library re-reads its 1.6 MB definitions file and rebuilds the validator for every document
    (about 20 ms each, and validate checks several documents per repository). Same schema files, same choice of
    schema version (the newest one not newer than the pinned Kubernetes version); None when none exists."""
    import re

    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    wanted = utils.major_minor(kubernetes_version())
    version = [v for v in utils.all_versions() if utils.major_minor(v) <= wanted][-1]
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{api}.json", wanted)
    except FileNotFoundError:
        return None
    definitions = _core_definitions(folder, wanted)
    return jsonschema.Draft202012Validator(schema, registry=definitions @ (Resource.from_contents(schema) @ Registry()))


@functools.lru_cache(maxsize=None)
def _core_definitions(folder: str, version: str):
    from kubernetes_validate import utils
    from referencing import Resource

    return Resource.from_contents(utils.schema_contents(f"{folder}/_definitions.json", version))


def _format(path: list[Any], message: str) -> str:
    where = ".".join(str(p) for p in path) or "(document)"
    return f"{where}: {message}"


def document_name(doc: dict[str, Any]) -> str:
    meta: Optional[dict] = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else None
    return f"{doc.get('kind', '?')}/{(meta or {}).get('name', '?')}"
