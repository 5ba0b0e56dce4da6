"""The ensemble manifest: a model is a name + arch + checkpoint + input spec, plus the blend the kernel applies.

The manifest is JSON; file paths are relative to the manifest's folder, so a manifest and its weights travel
together (into the offline Kaggle dataset, say). An entry's `kind` and any `input` field it leaves out come
from its architecture's registered defaults.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from weights.archs.retinaface import BIUBUG6_MEAN
from weights.checkpoint import WeightsError, check_file, load_checkpoint
from weights.onnx_runtime import LAYOUTS, OnnxModule
from weights.registry import MODEL_KINDS, ArchConfig, InputSpec, arch_config, create_model

FORMAT_VERSION = 2
ROOT = Path(__file__).resolve().parents[1]  # the repository, or the offline bundle's dataset folder
BUILD_DIR = ROOT / "artifacts" / "weights"  # where `python -m zootools build` writes the default ensemble
BUNDLED_ENSEMBLE = Path("ensemble") / "ensemble.json"  # where the packager puts the manifest in a bundle
FILE_FIELDS = (("checkpoint", "sha256"), ("onnx", "onnx_sha256"))  # (file key, its hash key) in any entry

AGGREGATIONS = ("mean", "median", "confident", "confidence_weighted", "sharpen", "logit_mean")
LOGIT_AGGREGATIONS = ("logit_mean",)  # rules that read the logit back from P(FAKE)
VIDEO_SCORES = ("max", "mean", "pool")
RUNTIMES = ("auto", "torch", "onnx")
LANDMARK_DETECTORS = ("retinaface_mobilenet", "retinaface_resnet50")  # their rows carry five landmarks (see align)
SAMPLINGS = ("reference", "exact")
CALIBRATIONS = ("none", "temperature", "platt", "power")  # the maps of blending.calibrate


def default_manifest() -> Path:
    """$DEEPFAKE_ENSEMBLE, else the locally built manifest, else the bundle's (ensemble/ensemble.json)."""
    if "DEEPFAKE_ENSEMBLE" in os.environ:
        return Path(os.environ["DEEPFAKE_ENSEMBLE"])
    built, bundled = BUILD_DIR / "ensemble.json", ROOT / BUNDLED_ENSEMBLE
    return bundled if not built.is_file() and bundled.is_file() else built


def uses_onnx(runtime: str, onnx: str | None, device_type: str) -> bool:
    """onnx: always onnxruntime; torch: always PyTorch; auto: onnxruntime on the CPU where an export exists
    (2-3.5x faster there for BlazeFace and MesoNet), PyTorch on a GPU (fp16, channels-last)."""
    return runtime == "onnx" or (runtime == "auto" and onnx is not None and device_type == "cpu")


@dataclass(frozen=True)
class ManifestFile:
    """A file the manifest names: which entry and key name it, its path (relative to the manifest) and sha256."""

    label: str
    path: str
    sha256: str | None


@dataclass(frozen=True)
class ModelSpec:
    """One classifier of the ensemble: name + arch (+ its kwargs) + checkpoint + input spec.

    Its logit is for `positive_class` (MesoNet predicts REAL); with two outputs, column 1 is that class.
    `runtime` "onnx" runs the exported `onnx` file with onnxruntime instead of the PyTorch checkpoint.
    """

    name: str
    arch: str
    checkpoint: str
    sha256: str
    input: InputSpec
    kind: str = "frame"
    arch_kwargs: dict = field(default_factory=dict)
    positive_class: str = "FAKE"
    weight: float = 1.0
    tta: tuple[str, ...] = ()
    aggregation: str = "mean"
    runtime: str = "auto"  # see uses_onnx
    onnx: str | None = None
    onnx_sha256: str | None = None
    onnx_layout: str = "nchwc"  # onnxruntime's CPU layout, one of LAYOUTS: the faster, measured by export-onnx
    optional: bool = False  # the kernel's time budget may drop it when the run falls behind
    video_score: str | None = None  # how its track scores make the video's (None: the manifest's tracks.video_score)

    def __post_init__(self):
        checks = [
            (self.kind in MODEL_KINDS, f"kind must be one of {MODEL_KINDS}, not {self.kind!r}"),
            (self.positive_class in ("FAKE", "REAL"),
             f"positive_class must be FAKE or REAL, not {self.positive_class!r}"),
            (self.weight >= 0, f"blend weight must be >= 0, not {self.weight}"),
            (set(self.tta) <= {"hflip"}, f"tta may only list 'hflip', not {list(self.tta)}"),
            (self.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}, not {self.aggregation!r}"),
            (self.runtime in RUNTIMES, f"runtime must be one of {RUNTIMES}, not {self.runtime!r}"),
            (self.runtime != "onnx" or (self.onnx and self.onnx_sha256), "runtime onnx needs onnx and onnx_sha256"),
            (self.onnx_layout in LAYOUTS, f"onnx_layout must be one of {LAYOUTS}, not {self.onnx_layout!r}"),
            ((self.kind == "frame") == (self.input.frames == 1),
             "frame models take 1 frame, clip and sequence models more"),
            (self.video_score in (None, *VIDEO_SCORES), f"video_score must be one of {VIDEO_SCORES}, not "
                                                          f"{self.video_score!r}"),
            *((False, problem) for problem in self.input.problems()),
        ]
        for ok, message in checks:
            if not ok:
                raise WeightsError(f"model {self.name}: {message}")

    def uses_onnx(self, device_type: str) -> bool:
        return uses_onnx(self.runtime, self.onnx, device_type)


@dataclass(frozen=True)
class TrackSpec:
    """How detections on the sampled frames are linked into per-person face tracks, and tracks into a score."""

    max_shift: float = 1.0     # a face may move this many face sizes between key frames and stay one track
    max_gap: int = 3           # sampled frames a track may miss before it ends
    min_detections: int = 3    # shorter tracks are false positives; if none is this long, the longest stay
    video_score: str = "max"   # of the track scores (usually only one face in a DFDC video is fake); see VIDEO_SCORES

    def __post_init__(self):
        if self.video_score not in VIDEO_SCORES:
            raise WeightsError(f"tracks.video_score must be one of {VIDEO_SCORES}, not {self.video_score!r}")


@dataclass(frozen=True)
class DecodeSpec:
    """Which frames the reader decodes, and how.

    `sampling` "reference": each evenly spaced frame is replaced by the nearest reference frame (where the
    container's H.264 says which those are), so the frames no other frame depends on are never decoded, except
    inside clip windows; "exact": the evenly spaced frames themselves, every frame before them decoded.
    `deblocking` False skips H.264's in-loop deblocking filter: a quarter less decoding CPU, but the pixels
    differ from the encoder's (see docs/benchmarks.md for what it costs in log loss).
    """

    sampling: str = "reference"
    deblocking: bool = True

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise WeightsError(f"decode.sampling must be one of {SAMPLINGS}, not {self.sampling!r}")


@dataclass(frozen=True)
class DetectorSpec:
    """The face detector and how it is applied to frames."""

    arch: str
    checkpoint: str
    sha256: str
    min_score: float
    scales: tuple[float, ...] = (1.0, 0.5)  # BlazeFace: a square of this x the short side fills its input
    downscale: float = 0.5  # MTCNN, RetinaFace: detect on the frame resized by this (MTCNN: PIL bicubic, as the 1st
    # place did; RetinaFace: area averaging)
    bgr_mean: tuple[float, float, float] = BIUBUG6_MEAN  # RetinaFace: subtracted from the BGR 0-255 pixels
    thresholds: tuple[float, float, float] | None = None  # MTCNN's three stages; None: (0.6, 0.7, min_score)
    margin: float = 0.2  # crop margin of models without their own: this fraction of the box in all, half each side
    max_faces_per_frame: int = 4
    every: int = 4  # whole-frame passes on every k-th sampled frame (and where faces change); windows between
    runtime: str = "auto"  # see uses_onnx (BlazeFace only)
    onnx: str | None = None
    onnx_sha256: str | None = None
    onnx_layout: str = "nchwc"  # as for models

    def __post_init__(self):
        if self.runtime not in RUNTIMES or (self.runtime == "onnx" and not (self.onnx and self.onnx_sha256)):
            raise WeightsError(f"detector runtime must be one of {RUNTIMES} (onnx needs onnx and onnx_sha256)")
        if self.onnx_layout not in LAYOUTS:
            raise WeightsError(f"detector onnx_layout must be one of {LAYOUTS}, not {self.onnx_layout!r}")
        if not isinstance(self.every, int) or self.every < 1:
            raise WeightsError(f"detector.every must be a whole number >= 1, not {self.every!r}")

    def uses_onnx(self, device_type: str) -> bool:
        return uses_onnx(self.runtime, self.onnx, device_type)


@dataclass(frozen=True)
class PoolSpec:
    """Several models scored as one: the frame scores of all their tracks pooled before one per-video rule (NTech's
    sharpen pooled its three models' votes), blended with `weight` in place of the models' own weights."""

    name: str
    models: tuple[str, ...]
    aggregation: str = "mean"
    video_score: str = "pool"
    weight: float = 1.0

    def __post_init__(self):
        checks = [
            (len(self.models) >= 2, "pools at least two models"),
            (self.aggregation in AGGREGATIONS, f"aggregation must be one of {AGGREGATIONS}, not {self.aggregation!r}"),
            (self.video_score in VIDEO_SCORES, f"video_score must be one of {VIDEO_SCORES}, not {self.video_score!r}"),
            (self.weight >= 0, f"blend weight must be >= 0, not {self.weight}"),
        ]
        for ok, message in checks:
            if not ok:
                raise WeightsError(f"blend pool {self.name}: {message}")


@dataclass(frozen=True)
class Member:
    """One term of the blend: a model alone, or a pool of models, with how its frame scores make its video score."""

    name: str
    models: tuple[str, ...]
    aggregation: str
    video_score: str
    weight: float


@dataclass(frozen=True)
class CalibrationSpec:
    """The map applied to the blend before the clamp (`blending.calibrate`): none, temperature (`scale` = 1/T),
    platt (`scale`, `shift` on the logit) or power (NTech's, exponent `scale`)."""

    method: str = "none"
    scale: float = 1.0
    shift: float = 0.0

    def __post_init__(self):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      for v in (self.scale, self.shift))
        checks = [
            (self.method in CALIBRATIONS, f"method must be one of {CALIBRATIONS}, not {self.method!r}"),
            (numbers, f"scale and shift must be finite numbers, not {self.scale!r} and {self.shift!r}"),
            (not numbers or self.method not in ("temperature", "power") or self.scale > 0,
             f"{self.method} needs scale > 0, not {self.scale}"),
            (not numbers or self.method == "platt" or self.shift == 0, f"only platt has a shift, not {self.method}"),
        ]
        for ok, message in checks:
            if not ok:
                raise WeightsError(f"blend calibration: {message}")


@dataclass(frozen=True)
class BlendSpec:
    """The range predictions are clamped to, the value written for a video with no face or any failure, the
    pools of models blended as one and the calibration of the blend (applied before the clamp)."""

    clamp: tuple[float, float] = (0.01, 0.99)
    fallback: float = 0.5
    pools: tuple[PoolSpec, ...] = ()
    calibration: CalibrationSpec = CalibrationSpec()

    def __post_init__(self):
        object.__setattr__(self, "pools", tuple(p if isinstance(p, PoolSpec) else PoolSpec(**as_tuples(p))
                                                for p in self.pools))
        if not isinstance(self.calibration, CalibrationSpec):
            object.__setattr__(self, "calibration", CalibrationSpec(**self.calibration))
        lo, hi = self.clamp
        if not 0.0 <= lo < hi <= 1.0:
            raise WeightsError(f"blend clamp must satisfy 0 <= lo < hi <= 1, got {self.clamp}")
        if not lo <= self.fallback <= hi:
            raise WeightsError(f"blend fallback {self.fallback} lies outside the clamp range {self.clamp}")


@dataclass(frozen=True)
class Ensemble:
    """A parsed manifest; `root` is the folder its checkpoint paths are relative to."""

    root: Path
    detector: DetectorSpec
    models: tuple[ModelSpec, ...]
    blend: BlendSpec = field(default_factory=BlendSpec)
    tracks: TrackSpec = field(default_factory=TrackSpec)
    decode: DecodeSpec = field(default_factory=DecodeSpec)

    def __post_init__(self):
        if not self.models:
            raise WeightsError("the ensemble lists no models")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise WeightsError(f"model names must be unique: {names}")
        aligned = [m.name for m in self.models if m.input.align is not None]
        if aligned and self.detector.arch not in LANDMARK_DETECTORS:
            raise WeightsError(f"models {aligned} align faces on five landmarks, which the detector "
                               f"{self.detector.arch} does not give: use one of {LANDMARK_DETECTORS} "
                               "(`python -m zootools build --detector-preset wm`)")
        pooled = [name for pool in self.blend.pools for name in pool.models]
        if set(pooled) - set(names):
            raise WeightsError(f"blend pools name unknown models: {sorted(set(pooled) - set(names))}")
        if len(set(pooled)) != len(pooled):
            twice = sorted({name for name in pooled if pooled.count(name) > 1})
            raise WeightsError(f"a model may join one blend pool only: {twice}")
        if {pool.name for pool in self.blend.pools} & set(names):
            raise WeightsError("blend pool names must differ from model names")
        if sum(m.weight for m in self.members()) <= 0:
            raise WeightsError("the blend weights sum to zero")

    def build_detector(self) -> nn.Module:
        """The detector network with its weights loaded strictly, in eval mode."""
        return _build(self.detector.arch, self.root / self.detector.checkpoint, self.detector.sha256)

    def build_detector_onnx(self, device_type: str = "cpu", threads: int | None = None) -> OnnxModule | None:
        """The detector's exported network (pixels in, raw outputs out) where the runtime choice says so;
        `threads`: onnxruntime's threads per call (default: torch's)."""
        if not self.detector.uses_onnx(device_type):
            return None
        return OnnxModule(self.root / self.detector.onnx, self.detector.onnx_sha256, threads,
                          self.detector.onnx_layout)

    def build_model(self, spec: ModelSpec, device_type: str = "cpu", threads: int | None = None) -> nn.Module:
        """One classifier with its weights loaded strictly (or its hash-checked ONNX session, `threads` per call,
        default torch's), in eval mode."""
        if spec.uses_onnx(device_type):
            # The checkpoint is what a GPU run loads: a wrong or missing one must fail here too, not on Kaggle.
            check_file(self.root / spec.checkpoint, spec.sha256)
            return OnnxModule(self.root / spec.onnx, spec.onnx_sha256, threads, spec.onnx_layout)
        return load_checkpoint(create_model(spec.arch, **spec.arch_kwargs), self.root / spec.checkpoint, spec.sha256)

    def combine_for(self, spec: ModelSpec) -> str:
        """How a model's track scores make its video score: its own `video_score`, else the manifest's."""
        return spec.video_score or self.tracks.video_score

    def members(self) -> list[Member]:
        """The terms of the blend: each model not in a pool, in manifest order, then each pool."""
        pooled = {name for pool in self.blend.pools for name in pool.models}
        alone = [Member(m.name, (m.name,), m.aggregation, self.combine_for(m), m.weight)
                 for m in self.models if m.name not in pooled]
        return alone + [Member(p.name, p.models, p.aggregation, p.video_score, p.weight) for p in self.blend.pools]

    def with_weights(self, weights: Mapping[str, float]) -> Ensemble:
        """The ensemble with new blend weights, one per member (a model alone, or a pool) by name."""
        names = {member.name for member in self.members()}
        if set(weights) != names:
            raise WeightsError(f"need a weight for exactly the blend's members {sorted(names)}, got {sorted(weights)}")
        models = tuple(replace(m, weight=float(weights[m.name])) if m.name in weights else m for m in self.models)
        pools = tuple(replace(p, weight=float(weights[p.name])) for p in self.blend.pools)
        return replace(self, models=models, blend=replace(self.blend, pools=pools))

    def files(self) -> list[ManifestFile]:
        """Every file the manifest names, detector first, with the sha256 it gives for it."""
        entries = [("detector", self.detector)]
        entries += [(f"models[{index}] ({spec.name})", spec) for index, spec in enumerate(self.models)]
        return [ManifestFile(f"{label}.{key}", getattr(entry, key), getattr(entry, hash_key))
                for label, entry in entries for key, hash_key in FILE_FIELDS if getattr(entry, key) is not None]

    def to_json(self) -> dict:
        """The manifest as written to disk (without `root`)."""
        return {
            "format": FORMAT_VERSION,
            "detector": asdict(self.detector),
            "models": [asdict(m) for m in self.models],
            "blend": asdict(self.blend),
            "tracks": asdict(self.tracks),
            "decode": asdict(self.decode),
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
        raise WeightsError(f"ensemble manifest not found: {path} (run `python -m zootools build`)") from None
    except json.JSONDecodeError as error:
        raise WeightsError(f"ensemble manifest {path} is not valid JSON: {error}") from None
    if data.get("format") != FORMAT_VERSION:
        raise WeightsError(f"{path}: unsupported manifest format {data.get('format')!r}, expected {FORMAT_VERSION}")
    try:
        detector = _parse(DetectorSpec, data["detector"])
        models = tuple(_model_spec(entry) for entry in data["models"])
        blend = _parse(BlendSpec, data.get("blend", {}))
        tracks = _parse(TrackSpec, data.get("tracks", {}))
        decode = _parse(DecodeSpec, data.get("decode", {}))
    except (KeyError, TypeError) as error:
        raise WeightsError(f"{path}: malformed manifest entry: {error}") from None
    return Ensemble(root=path.parent, detector=detector, models=models, blend=blend, tracks=tracks, decode=decode)


def _model_spec(entry: dict) -> ModelSpec:
    """A model entry, its kind and missing input fields taken from its architecture's registered defaults."""
    try:
        config = arch_config(entry["arch"])
    except KeyError:
        if "arch" not in entry:
            raise
        config = ArchConfig()  # an unknown arch is named when the model is built
    defaults = asdict(config.input) if config.input else {}
    spec_input = _parse(InputSpec, {**defaults, **entry.get("input", {})})
    return _parse(ModelSpec, {"kind": config.kind, **entry, "input": spec_input})


def as_tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    """A spec's fields from JSON: its lists become the tuples the specs hold."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


def _parse(spec_class, entry: dict):
    """A spec from its JSON object."""
    return spec_class(**as_tuples(entry))
