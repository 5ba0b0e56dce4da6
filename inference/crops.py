"""Cut each model's inputs out of the frames exactly as it was trained: face crops along each track, and clips of
fixed-box crops; each distinct preprocessing is computed once and shared by the models that use it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.tracks import Track
from inference.video import ClipGeometry, DecodedVideo
from weights import InputSpec, ModelSpec

INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC}

CropKey = tuple  # (margin, shape, resize, resize_to, interpolation): frame crops shared by models that agree
StackKey = tuple  # (frames, stride, clips, box, *CropKey): clip stacks shared likewise


def crop_key(spec: InputSpec) -> CropKey:
    """Which face crops a model reads: models that cut and resize alike share them."""
    return spec.margin, spec.shape, spec.resize, spec.resize_shape, spec.interpolation


def stack_key(spec: ModelSpec) -> StackKey:
    """Which clip stack a clip or sequence model reads: models of one geometry, box and preprocessing share one."""
    return (*spec.input.clip_geometry, spec.input.box, *crop_key(spec.input))


# ---------------------------------------------------------------------------------------------- cut

def expand_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The detector's margin: the box widened by `margin` of its size (half on each side), clamped:
    (left, top, right, bottom)."""
    x0, y0, x1, y1 = box[:4]
    pad_x, pad_y = (x1 - x0) * margin / 2, (y1 - y0) * margin / 2
    return (max(0, int(x0 - pad_x)), max(0, int(y0 - pad_y)),
            min(width, int(math.ceil(x1 + pad_x))), min(height, int(math.ceil(y1 + pad_y))))


def pad_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """A model's own margin, as the 1st place cut faces: the box cut to whole pixels, then floor(margin x its
    height) added above and below and floor(margin x its width) left and right, clamped: (left, top, right, bottom)."""
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    pad_x, pad_y = math.floor((x1 - x0) * margin + 1e-9), math.floor((y1 - y0) * margin + 1e-9)
    return max(0, x0 - pad_x), max(0, y0 - pad_y), min(width, x1 + pad_x), min(height, y1 + pad_y)


def crop(frame: np.ndarray, box: np.ndarray, margin: float, own_margin: float | None = None) -> np.ndarray | None:
    """The face with its margin (the model's own, else the detector's), or None when the box leaves less than
    2 x 2 pixels inside the frame."""
    if own_margin is None:
        left, top, right, bottom = expand_box(box, margin, *frame.shape[:2])
    else:
        left, top, right, bottom = pad_box(box, own_margin, *frame.shape[:2])
    return frame[top:bottom, left:right] if right - left >= 2 and bottom - top >= 2 else None


# ---------------------------------------------------------------------------------------------- resize

def resize(image: np.ndarray, shape: tuple[int, int], interpolation: tuple[str, str]) -> np.ndarray:
    """Resize to (height, width) with the (shrinking, enlarging) filter: enlarging when the area grows."""
    height, width = shape
    if image.shape[:2] == (height, width):
        return image
    growing = height * width > image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=INTERPOLATIONS[interpolation[growing]])


def place(image: np.ndarray, shape: tuple[int, int], top: int, left: int) -> np.ndarray:
    """The image on a black canvas of (height, width) with its corner at (top, left) (negative: cut there), cut
    where it does not fit."""
    canvas = np.zeros((*shape, 3), np.uint8)
    source_top, source_left, top, left = max(0, -top), max(0, -left), max(0, top), max(0, left)
    height = min(image.shape[0] - source_top, shape[0] - top)
    width = min(image.shape[1] - source_left, shape[1] - left)
    if height > 0 and width > 0:
        canvas[top:top + height, left:left + width] = image[source_top:source_top + height,
                                                            source_left:source_left + width]
    return canvas


def centre_offset(inner: int, outer: int) -> int:
    """Where an inner side starts on an outer one to be centred: the odd pixel of a pad goes after, of a crop too."""
    return (outer - inner) // 2 if inner <= outer else -((inner - outer) // 2)


def centre(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The image centred on (height, width): centre-cropped where larger, zero-padded where smaller."""
    return place(image, shape, centre_offset(image.shape[0], shape[0]), centre_offset(image.shape[1], shape[1]))


def isotropic(image: np.ndarray, scale: float, interpolation: tuple[str, str]) -> np.ndarray:
    """The image scaled by `scale` on both axes (at least 1 pixel)."""
    height, width = image.shape[:2]
    return resize(image, (max(1, round(height * scale)), max(1, round(width * scale))), interpolation)


def fit(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A face crop turned into the model's input image, (height, width, 3) uint8, by the spec's resize mode."""
    shape, interpolation = spec.shape, spec.interpolation
    if spec.resize == "letterbox":
        scale = min(shape[0] / image.shape[0], shape[1] / image.shape[1])
        return centre(isotropic(image, scale, interpolation), shape)
    if spec.resize == "pad_bottom_right":
        side = max(image.shape[:2])
        square = place(image, (side, side), 0, 0)
        return centre(resize(square, spec.resize_shape or shape, interpolation), shape)
    if spec.resize == "stretch":
        return centre(resize(image, spec.resize_shape or shape, interpolation), shape)
    if spec.resize == "short_side_center_crop":
        scale = min(spec.resize_shape) / min(image.shape[:2])
        return centre(isotropic(image, scale, interpolation), shape)
    if spec.resize == "resize_center_crop":
        return centre(resize(image, spec.resize_shape, interpolation), shape)
    raise ValueError(f"unknown resize mode {spec.resize!r}")


# ---------------------------------------------------------------------------------------------- per track

@dataclass
class TrackCrops:
    """Model inputs of one track, by crop key (frame models) or by stack key (clip and sequence models)."""

    faces: dict[CropKey, np.ndarray] = field(default_factory=dict)    # crop key -> (n, H, W, 3)
    clips: dict[StackKey, np.ndarray] = field(default_factory=dict)   # stack key -> (n, T, H, W, 3)


def track_crops(video: DecodedVideo, track: Track, specs: list[ModelSpec], margin: float) -> TrackCrops:
    """Each model's inputs for one track (`margin`: the detector's): face crops of the track's detections for frame
    models, fixed-box clips for clip and sequence models."""
    inputs = TrackCrops()
    for spec in specs:
        if spec.kind == "frame":
            key = crop_key(spec.input)
            if key not in inputs.faces:
                faces = [c for c in (crop(video.frames[video.keys[pos]], box, margin, spec.input.margin)
                                     for pos, box in sorted(track.boxes.items())) if c is not None]
                if faces:
                    inputs.faces[key] = np.stack([fit(face, spec.input) for face in faces])
            continue
        key = stack_key(spec)
        if key in inputs.clips:
            continue
        stacks = []
        for run in track_windows(video, track, spec.input.clip_geometry):
            # One box per clip: 3D models were trained on steady crops, not jittering ones.
            box = track.union() if spec.input.box == "track_union" else track.box_at(run[len(run) // 2], video.keys)
            frames = [crop(video.frames[i], box, margin, spec.input.margin) for i in run]
            if all(f is not None for f in frames):
                stacks.append(np.stack([fit(f, spec.input) for f in frames]))
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
