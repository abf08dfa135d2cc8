"""`tritongen.json`, the repository's manifest: how a repository was made, written and read only here.

Render writes it; validate, the topology checks, smoke and the load test read it. They all get the same
typed `RepoManifest`, and the recorded spec's relative paths resolve in one place (`recorded_spec`):
against the folder of the spec file it was rendered from, as they did at render time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from generator.errors import ArtifactCorrupt
from generator.fsutil import read_json_object
from generator.spec import EngineTarget, Spec

MANIFEST = "tritongen.json"
MANIFEST_VERSION = 1
"""Raised when a field changes meaning; a manifest without the key was written before versioning (1)."""
RERENDER_FIX = "re-render the repository with this tritongen (`tritongen render SPEC -o DIR --force`)"


class RepoManifest(BaseModel):
    """What render recorded about a repository."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    manifest_version: int = MANIFEST_VERSION
    """Format of this file; a reader refuses another version instead of misreading it."""
    generator: str = "tritongen"
    tritongen_version: str
    """The tritongen that rendered the repository."""
    layout: str
    """inflight_batcher_llm or llmapi."""
    target: EngineTarget
    """The engine behind the tensorrt_llm model."""
    tensorrt_llm_version: str
    reference: str
    """Where NVIDIA's layout of this repository lives upstream."""
    models: list[str]
    max_batch_size: int
    """Triton's max_batch_size of every model (0 for the LLM-API model: see max_batch_size_source)."""
    max_batch_size_source: str
    max_input_len: int
    max_seq_len: int
    weights_dir: str
    engine_dir: Optional[str] = None
    cpu_stand_in: Optional[bool] = None
    """LLM-API layout only: the CPU stand-in was rendered instead of NVIDIA's model.py."""
    topology: Optional[dict[str, Any]] = None
    """The resolved topology (generator.deploy.topology.Topology, as JSON)."""
    spec: dict[str, Any]
    """The whole spec the repository was rendered from."""
    spec_base_dir: str
    """The folder relative spec paths resolved against at render time."""

    def recorded_spec(self, source: str, overrides: Optional[list[str]] = None) -> Spec:
        """The recorded spec (with ``--set`` overrides), paths resolved as at render time."""
        from generator.spec import apply_overrides, spec_from_dict

        data = apply_overrides(self.spec, overrides) if overrides else self.spec
        return spec_from_dict(data, base_dir=Path(self.spec_base_dir), source=source)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def read_manifest(repo: Path) -> Optional[RepoManifest]:
    """The repository's manifest, or None when it has none (a repository tritongen did not render).

    A file that is not a manifest of this version raises `ArtifactCorrupt` naming it, with the fix.
    """
    path = Path(repo) / MANIFEST
    if not path.is_file():
        return None
    data = read_json_object(path, fix=RERENDER_FIX, inside=repo)
    version = data.get("manifest_version", MANIFEST_VERSION)
    if version != MANIFEST_VERSION:
        raise ArtifactCorrupt(f"manifest version {version!r}; this tritongen reads version {MANIFEST_VERSION}",
                              where=str(path), fix=RERENDER_FIX)
    try:
        return RepoManifest.model_validate(data)
    except ValidationError as exc:
        wrong = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ArtifactCorrupt(f"not a tritongen manifest ({wrong})", where=str(path), fix=RERENDER_FIX) from None
