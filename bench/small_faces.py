"""How small a face the detector still finds in a 1080p frame, per BlazeFace model and scales.

`python -m bench.small_faces [--weights artifacts/weights] [--every K]` pastes the astronaut's face at several
widths into 1920x1080 scenes and prints, per (model, scales), the share of frames whose face was found and
the detector's seconds per frame. With `--every K` the face drifts across one scene, as in a video, and each
setting is measured twice: detecting every frame, and sparsely (whole-frame passes on every K-th frame, windows
near the interpolated boxes between; see `inference.faces.find_sparse`).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.samples import background, face_patch
from inference.device import Accelerator
from inference.faces import BlazeFaceFinder, find_sparse
from weights import create_model, load_checkpoint, load_ensemble
from weights.archs.blazeface import BlazeFaceDetector
from weights.manifest import BUILD_DIR

FACE_BOX_AT_SCALE_1 = (70, 55, 180, 195)  # x0, y0, x1, y1 of the face inside the unscaled head-and-shoulders patch
FACE_WIDTH_AT_SCALE_1 = FACE_BOX_AT_SCALE_1[2] - FACE_BOX_AT_SCALE_1[0]
SETTINGS = {  # name: (model variant, min score, scales coarse to fine)
    "back, scale 1": ("back", 0.65, (1.0,)),
    "back, scale 1 then 0.5 (default)": ("back", 0.65, (1.0, 0.5)),
    "front, scale 1": ("front", 0.75, (1.0,)),
    "front, scale 1 then 0.5": ("front", 0.75, (1.0, 0.5)),
}


def scenes_with_face(face_width: int, count: int, seed: int = 0, drift: bool = False):
    """`count` 1080p frames with the face at `face_width` pixels: at a random place in each frame, or (`drift`)
    drifting in a straight line by two face widths over one scene, as a speaker moves; yields (frame, box)."""
    rng = np.random.default_rng(seed)
    scale = face_width / FACE_WIDTH_AT_SCALE_1
    patch = face_patch(scale)
    ph, pw = patch.shape[:2]
    limit = np.array([1920 - pw, 1080 - ph])
    start = np.array([rng.integers(0, limit[0]), rng.integers(0, limit[1])])
    angle = rng.uniform(0, 2 * np.pi)
    end = np.clip(start + 2 * face_width * np.array([np.cos(angle), np.sin(angle)]), 0, limit)
    for index in range(count):
        frame = background(1920, 1080, seed=0 if drift else index % 4).copy()
        if drift:
            left, top = (int(v) for v in np.round(start + (end - start) * index / max(1, count - 1)))
        else:
            left, top = int(rng.integers(0, 1920 - pw)), int(rng.integers(0, 1080 - ph))
        frame[top:top + ph, left:left + pw] = patch
        x0, y0, x1, y1 = (round(v * scale) for v in FACE_BOX_AT_SCALE_1)
        yield frame, (left + x0, top + y0, left + x1, top + y1)


def found(boxes: np.ndarray, truth: tuple[int, int, int, int]) -> bool:
    """Whether a detection's centre lies inside the true face box."""
    x0, y0, x1, y1 = truth
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    return bool(np.any((centres[:, 0] >= x0) & (centres[:, 0] <= x1) & (centres[:, 1] >= y0) & (centres[:, 1] <= y1)))


def make_finder(weights_dir: Path, variant: str, min_score: float, scales) -> BlazeFaceFinder:
    """The kernel's face finder on the CPU (PyTorch) for one BlazeFace variant and its scales."""
    model = load_checkpoint(create_model(f"blazeface_{variant}"), weights_dir / f"blazeface_{variant}.safetensors")
    spec = replace(load_ensemble(weights_dir / "ensemble.json").detector, scales=tuple(scales))
    return BlazeFaceFinder(BlazeFaceDetector(model, min_score=min_score), spec, Accelerator("cpu"), 16)


def measure(finder: BlazeFaceFinder, face_width: int, count: int, every: int | None = None) -> tuple[float, float]:
    """(share of frames where the face is found, detector seconds per frame); `every`: on a drifting face, detect
    every `every`-th frame (see find_sparse)."""
    frames, truths = zip(*scenes_with_face(face_width, count, drift=every is not None))
    start = time.perf_counter()
    boxes, _ = find_sparse(finder, list(frames), list(range(count)), every or 1)
    seconds = (time.perf_counter() - start) / count
    return sum(found(b, t) for b, t in zip(boxes, truths)) / count, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=BUILD_DIR)
    parser.add_argument("--widths", default="30,40,50,60,80,120,200")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--every", type=int, default=None,
                        help="a drifting face, detected on every frame and on every K-th frame (sparse detection)")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    print("share of frames whose face is found (detector seconds per frame), by face width in a 1080p frame")
    print(f"{'setting':44s}" + "".join(f"{w:>14d}px" for w in widths))
    schedules = [(None, "")] if args.every is None else [(1, ", drifting"), (args.every, f", every {args.every}")]
    for name, (variant, min_score, scales) in SETTINGS.items():
        finder = make_finder(args.weights, variant, min_score, scales)
        for every, label in schedules:
            cells = "".join(f"{rate:>8.0%} ({seconds:.2f})" for rate, seconds in
                            (measure(finder, width, args.frames, every) for width in widths))
            print(f"{name + label:44s}{cells}")


if __name__ == "__main__":
    main()
