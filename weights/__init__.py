"""The model zoo: registered architectures, strict checkpoint loading and the ensemble manifest.

Runtime modules only are imported here; conversion tooling (`weights.build`, `weights.convert_*`) is not.
"""
from weights.checkpoint import WeightsError, load_checkpoint, sha256_of
from weights.manifest import BlendSpec, DetectorSpec, Ensemble, InputSpec, ModelSpec, TrackSpec, load_ensemble
from weights.registry import create_model, list_archs, register_arch

__all__ = [
    "BlendSpec", "DetectorSpec", "Ensemble", "InputSpec", "ModelSpec", "TrackSpec", "WeightsError",
    "create_model", "list_archs", "load_checkpoint", "load_ensemble", "register_arch", "sha256_of",
]
