"""The model zoo: registered architectures, strict checkpoint loading and the ensemble manifest.

Importing the package registers every architecture (as timm's `models/__init__` does). Runtime modules only
are imported here; the conversion tooling (`zootools`) is not.
"""
from weights import archs  # noqa: F401  (registers the architectures)
from weights.checkpoint import WeightsError, load_checkpoint, sha256_of
from weights.manifest import (
                              BlendSpec,
                              CalibrationSpec,
                              DecodeSpec,
                              DetectorSpec,
                              Ensemble,
                              InputSpec,
                              ManifestFile,
                              ModelSpec,
                              TrackSpec,
                              default_manifest,
                              load_ensemble,
)
from weights.registry import arch_config, create_model, list_archs, register_arch

__all__ = [
    "BlendSpec", "CalibrationSpec", "DecodeSpec", "DetectorSpec", "Ensemble", "InputSpec", "ManifestFile", "ModelSpec",
    "TrackSpec",
    "WeightsError",
    "arch_config", "create_model", "default_manifest", "list_archs", "load_checkpoint", "load_ensemble",
    "register_arch", "sha256_of",
]
