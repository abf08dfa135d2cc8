"""The typed spec every stage reads (``schema``, its sections in ``build``, ``serving``, ``loadtest``), how it is
loaded (``load``) and documented (``doc``)."""

from generator.spec.loadtest import ResolvedLoadTest
from generator.spec.load import apply_overrides, load_spec, parse_override, spec_from_dict, with_overrides
from generator.spec.schema import (
    REFERENCE_MODEL,
    ArtifactsSpec,
    BuildSpec,
    CalibrationSpec,
    EngineTarget,
    GateSpec,
    KVCacheFormat,
    KubernetesSpec,
    LoadTestSpec,
    ModelSpec,
    PluginOverrides,
    QuantFormat,
    QuantizationSpec,
    ServingSpec,
    Spec,
    TopologySpec,
    TuneSpec,
)

__all__ = [
    "REFERENCE_MODEL", "ArtifactsSpec", "BuildSpec", "CalibrationSpec", "EngineTarget", "KVCacheFormat", "GateSpec",
    "KubernetesSpec", "LoadTestSpec", "ModelSpec", "PluginOverrides", "QuantFormat", "QuantizationSpec", "ResolvedLoadTest",
    "ServingSpec", "Spec", "TopologySpec", "TuneSpec",
    "apply_overrides", "load_spec", "parse_override", "spec_from_dict", "with_overrides",
]
