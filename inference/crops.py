"""Cut the models' inputs out of the frames: letterboxed face crops along each track, and fixed-box clips."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.tracks import Track
from inference.video import ClipGeometry, DecodedVideo
from weights import ModelSpec

StackKey = tuple[int, int, int, int]  # (frames, stride, clips, size): clip stacks shared by models that agree


def stack_key(spec: ModelSpec) -> StackKey:
    """Which clip stack a clip or sequence model reads: models of one geometry and size share one."""
    return (*spec.input.clip_geometry, spec.input.size)


def expand_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The box widened by `margin` of its size (half on each side), clamped: (left, top, right, bottom)."""
    x0, y0, x1, y1 = box[:4]
    pad_x, pad_y = (x1 - x0) * margin / 2, (y1 - y0) * margin / 2
    return (max(0, int(x0 - pad_x)), max(0, int(y0 - pad_y)),
            min(width, int(math.ceil(x1 + pad_x))), min(height, int(math.ceil(y1 + pad_y))))


def crop(frame: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray | None:
    """The face with its margin, or None when the box leaves less than 2 x 2 pixels inside the frame."""
    left, top, right, bottom = expand_box(box, margin, *frame.shape[:2])
    return frame[top:bottom, left:right] if right - left >= 2 and bottom - top >= 2 else None


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Isotropic resize so the long side is `size`, then zero-pad to a centred size x size square."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


@dataclass
class TrackCrops:
    """Model inputs of one track, by crop size (frame models) or by stack key (clip and sequence models)."""

    faces: dict[int, np.ndarray] = field(default_factory=dict)      # size -> (n, S, S, 3) letterboxed crops
    clips: dict[StackKey, np.ndarray] = field(default_factory=dict)  # stack key -> (n, T, S, S, 3)


def track_crops(video: DecodedVideo, track: Track, specs: list[ModelSpec], margin: float) -> TrackCrops:
    """Letterboxed face crops of the track's detections, and fixed-box clips for the clip and sequence models."""
    inputs = TrackCrops()
    crops = [c for c in (crop(video.frames[video.keys[pos]], box, margin) for pos, box in sorted(track.boxes.items()))
             if c is not None]
    for spec in specs:
        if spec.kind == "frame":
            if spec.input.size not in inputs.faces and crops:
                inputs.faces[spec.input.size] = np.stack([letterbox(c, spec.input.size) for c in crops])
            continue
        key = stack_key(spec)
        if key in inputs.clips:
            continue
        stacks = []
        for run in track_windows(video, track, spec.input.clip_geometry):
            # One box per clip, at its centre frame: 3D models were trained on steady crops, not jittering ones.
            box = track.box_at(run[len(run) // 2], video.keys)
            frames = [crop(video.frames[i], box, margin) for i in run]
            if all(f is not None for f in frames):
                stacks.append(np.stack([letterbox(f, spec.input.size) for f in frames]))
        if stacks:
            inputs.clips[key] = np.stack(stacks)
    return inputs


def track_windows(video: DecodedVideo, track: Track, geometry: ClipGeometry) -> list[list[int]]:
    """The clip windows centred inside the track's span, else the one nearest its middle."""
    runs = video.windows.get(geometry, [])
    first, last = track.span(video.keys)
    inside = [run for run in runs if first <= run[len(run) // 2] <= last]
    if inside or not runs:
        return inside
    middle = (first + last) / 2
    return [min(runs, key=lambda run: abs(run[len(run) // 2] - middle))]
