"""The ensemble manifest: a model is a name + arch + checkpoint + input spec, plus the blend the kernel applies.

The manifest is JSON; checkpoint paths are relative to the manifest's folder, so a manifest and its weights
travel together (into the offline Kaggle dataset, say).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from weights.checkpoint import WeightsError, load_checkpoint
from weights.registry import create_model

FORMAT_VERSION = 1


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its face crop: square side, and per-channel normalisation of RGB in [0, 1]."""

    size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    """One classifier of the ensemble; its logit is for `positive_class` (MesoNet predicts REAL)."""

    name: str
    arch: str
    checkpoint: str
    sha256: str
    input: InputSpec
    positive_class: str = "FAKE"
    weight: float = 1.0

    def __post_init__(self):
        if self.positive_class not in ("FAKE", "REAL"):
            raise WeightsError(f"model {self.name}: positive_class must be FAKE or REAL, not {self.positive_class!r}")
        if self.weight < 0:
            raise WeightsError(f"model {self.name}: blend weight must be >= 0, not {self.weight}")


@dataclass(frozen=True)
class DetectorSpec:
    """The face detector and how it is applied to frames."""

    arch: str
    checkpoint: str
    sha256: str
    min_score: float
    tile_scales: tuple[float, ...] = (1.0, 0.5)  # tile side / frame short side, coarse to fine
    margin: float = 0.2
    max_faces_per_frame: int = 4


@dataclass(frozen=True)
class BlendSpec:
    """Clip range and the value written for a video with no face or any failure."""

    clip: tuple[float, float] = (0.01, 0.99)
    fallback: float = 0.5

    def __post_init__(self):
        lo, hi = self.clip
        if not 0.0 <= lo < hi <= 1.0:
            raise WeightsError(f"blend clip must satisfy 0 <= lo < hi <= 1, got {self.clip}")
        if not lo <= self.fallback <= hi:
            raise WeightsError(f"blend fallback {self.fallback} lies outside the clip range {self.clip}")


@dataclass(frozen=True)
class Ensemble:
    """A parsed manifest; `root` is the folder its checkpoint paths are relative to."""

    root: Path
    detector: DetectorSpec
    models: tuple[ModelSpec, ...]
    blend: BlendSpec = field(default_factory=BlendSpec)

    def __post_init__(self):
        if not self.models:
            raise WeightsError("the ensemble lists no models")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise WeightsError(f"model names must be unique: {names}")
        if sum(m.weight for m in self.models) <= 0:
            raise WeightsError("the blend weights sum to zero")

    def build_detector(self) -> nn.Module:
        """The detector network with its weights loaded strictly, in eval mode."""
        return _build(self.detector.arch, self.root / self.detector.checkpoint, self.detector.sha256)

    def build_model(self, spec: ModelSpec) -> nn.Module:
        """One classifier with its weights loaded strictly, in eval mode."""
        return _build(spec.arch, self.root / spec.checkpoint, spec.sha256)

    def to_json(self) -> dict:
        """The manifest as written to disk (without `root`)."""
        return {
            "format": FORMAT_VERSION,
            "detector": asdict(self.detector),
            "models": [asdict(m) for m in self.models],
            "blend": asdict(self.blend),
        }

    def save(self, path: Path) -> None:
        """Write the manifest as indented JSON."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _build(arch: str, checkpoint: Path, sha256: str) -> nn.Module:
    return load_checkpoint(create_model(arch), checkpoint, sha256)


def load_ensemble(path: Path) -> Ensemble:
    """Parse and validate a manifest file; every problem is a WeightsError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"ensemble manifest not found: {path} (run `python -m weights build`)") from None
    except json.JSONDecodeError as error:
        raise WeightsError(f"ensemble manifest {path} is not valid JSON: {error}") from None
    if data.get("format") != FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported manifest format {data.get('format')!r}, expected {FORMAT_VERSION}")
    try:
        detector = data["detector"]
        detector = DetectorSpec(**{**detector, "tile_scales": tuple(detector.get("tile_scales", (1.0, 0.5)))})
        models = tuple(
            ModelSpec(**{**m, "input": InputSpec(**{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in m["input"].items()})})
            for m in data["models"]
        )
        blend = data.get("blend", {})
        blend = BlendSpec(**{**blend, "clip": tuple(blend.get("clip", (0.01, 0.99)))})
    except (KeyError, TypeError) as error:
        raise WeightsError(f"{path}: malformed manifest entry: {error}") from None
    return Ensemble(root=path.parent, detector=detector, models=models, blend=blend)
