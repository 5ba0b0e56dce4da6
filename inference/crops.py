"""Cut each model's inputs out of the frames exactly as it was trained: face crops along each track, and clips of
fixed-box crops; each distinct preprocessing is computed once and shared by the models that use it."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.tracks import Track
from inference.video import DecodedVideo, Timeline
from weights import InputSpec, ModelSpec
from weights.registry import ALIGNMENTS

INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC}

CropKey = tuple  # the InputSpec fields that pick, cut and resize faces: frame crops shared by models that agree
StackKey = tuple  # (*timeline, box, *CropKey): clip stacks shared likewise
PADS = {"zero": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


def crop_key(spec: InputSpec) -> CropKey:
    """Which face crops a model reads: models that pick, cut and resize alike share them."""
    own = spec.timeline if spec.every else None
    return (spec.margin, spec.margin_sides, spec.margin_of, spec.margin_cut, spec.shape, spec.resize,
            spec.resize_shape, spec.rounding, spec.pad, spec.interpolation, spec.precision, spec.align, own,
            spec.limit, spec.share, spec.flip)


def stack_key(spec: ModelSpec) -> StackKey:
    """Which clip stack a clip or sequence model reads: models of one timeline, box and preprocessing share one."""
    return (*spec.input.timeline, spec.input.box, *crop_key(spec.input))


# ---------------------------------------------------------------------------------------------- cut

def expand_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """The detector's margin: the box widened by `margin` of its size (half on each side), clamped:
    (left, top, right, bottom)."""
    x0, y0, x1, y1 = box[:4]
    pad_x, pad_y = (x1 - x0) * margin / 2, (y1 - y0) * margin / 2
    return (max(0, int(x0 - pad_x)), max(0, int(y0 - pad_y)),
            min(width, int(math.ceil(x1 + pad_x))), min(height, int(math.ceil(y1 + pad_y))))


def margin_box(box: np.ndarray, spec: InputSpec, height: int, width: int) -> tuple[int, int, int, int]:
    """A model's own margin (`spec.margin`, per side, of the box's side, height or width, cut to whole pixels as
    `spec.margin_cut` says), clamped to the frame: (left, top, right, bottom).

    `exact` works in float64 and `round` in float32, as the teams' code did (NTech's numpy 1.x turned float32 boxes
    times Python floats into float64; polimi's boxes stayed float32 tensors), so a corner near a whole pixel
    falls on their side of it."""
    if spec.margin_cut == "floor":
        x0, y0, x1, y1 = (int(v) for v in box[:4])
    else:
        x0, y0, x1, y1 = np.asarray(box[:4], np.float64 if spec.margin_cut == "exact" else np.float32)
    across, down = {"side": (x1 - x0, y1 - y0), "height": (y1 - y0,) * 2, "width": (x1 - x0,) * 2}[spec.margin_of]
    across, down = across * spec.margin, down * spec.margin
    if spec.margin_cut == "floor":  # +1e-9: a third of 3k pixels is k, not k - 1 by a rounding error
        across, down = math.floor(across + 1e-9), math.floor(down + 1e-9)
    elif spec.margin_cut == "round":
        across, down = np.round(across), np.round(down)
    left, top, right, bottom = spec.margin_sides
    return (max(0, int(x0 - across * left)), max(0, int(y0 - down * top)),
            min(width, int(x1 + across * right)), min(height, int(y1 + down * bottom)))


def crop(frame: np.ndarray, box: np.ndarray, spec: InputSpec, detector_margin: float) -> np.ndarray | None:
    """The face with the model's own margin (else the detector's total margin, half on each side), or None when
    the box leaves less than 2 x 2 pixels inside the frame; an aligning model's face warped onto its template."""
    if spec.align is not None:
        return align(frame, box, spec.align)
    if spec.margin is None:
        left, top, right, bottom = expand_box(box, detector_margin, *frame.shape[:2])
    else:
        left, top, right, bottom = margin_box(box, spec, *frame.shape[:2])
    return frame[top:bottom, left:right] if right - left >= 2 and bottom - top >= 2 else None


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform (rotation, one scale, shift) taking `source` points nearest `target` in least
    squares: Umeyama's solution, as scikit-image's SimilarityTransform estimates it."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / source_centred.var(axis=0).sum()
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def align(frame: np.ndarray, detection: np.ndarray, template: str) -> np.ndarray | None:
    r"""The face warped onto a template's square by the similarity transform of its five landmarks (cut to whole
    pixels first, as \WM/ did) onto the template's points (bilinear, black border); None without landmarks."""
    if len(detection) < 15:
        return None
    side, points = ALIGNMENTS[template]
    landmarks = np.asarray(detection[5:15], np.float64).reshape(5, 2).astype(np.int64).astype(np.float64)
    matrix = similarity(landmarks, np.asarray(points, np.float64))
    return cv2.warpAffine(frame, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


# ---------------------------------------------------------------------------------------------- resize

def resize(image: np.ndarray, shape: tuple[int, int], interpolation: tuple[str, str],
           precision: str = "uint8") -> np.ndarray:
    """Resize to (height, width) with the (shrinking, enlarging) filter: enlarging when the area grows. In float64
    precision the result is truncated back to uint8 (clipped first: cubic overshoots)."""
    height, width = shape
    if image.shape[:2] == (height, width):
        return image
    growing = height * width > image.shape[0] * image.shape[1]
    flag = INTERPOLATIONS[interpolation[growing]]
    if precision == "uint8":
        return cv2.resize(image, (width, height), interpolation=flag)
    resized = cv2.resize(image.astype(np.float64), (width, height), interpolation=flag)
    return np.clip(resized, 0, 255).astype(np.uint8)


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


def centre(image: np.ndarray, shape: tuple[int, int], pad: str = "zero") -> np.ndarray:
    """The image centred on (height, width): centre-cropped where larger, padded where smaller (with zeros, or
    reflected as OpenCV's BORDER_REFLECT_101)."""
    top, left = centre_offset(image.shape[0], shape[0]), centre_offset(image.shape[1], shape[1])
    if pad != "zero" and (top > 0 or left > 0):  # reflect the short sides out to the shape, then cut the long ones
        below, right = max(0, shape[0] - image.shape[0] - top), max(0, shape[1] - image.shape[1] - left)
        image = cv2.copyMakeBorder(image, max(0, top), below, max(0, left), right, PADS[pad])
        top, left = min(0, top), min(0, left)
    return place(image, shape, top, left)


def isotropic(image: np.ndarray, axis: int, target: int, spec: InputSpec) -> np.ndarray:
    """The image scaled so its side on `axis` (0: height, 1: width) is `target`, the other side by the same
    factor, cut to whole pixels by `spec.rounding` (at least 1)."""
    scale = target / image.shape[axis]
    other = image.shape[1 - axis] * scale
    other = max(1, int(other) if spec.rounding == "truncate" else round(other))
    return resize(image, (target, other) if axis == 0 else (other, target), spec.interpolation, spec.precision)


def fit(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A face crop turned into the model's input image, (height, width, 3) uint8, by the spec's resize mode."""
    shape, interpolation, precision = spec.shape, spec.interpolation, spec.precision
    height, width = image.shape[:2]
    if spec.resize == "letterbox":  # the side with the smaller scale sets it (the height on a tie)
        axis = 0 if shape[0] / height <= shape[1] / width else 1
        return centre(isotropic(image, axis, shape[axis], spec), shape, spec.pad)
    if spec.resize == "pad_bottom_right":
        side = max(height, width)
        square = place(image, (side, side), 0, 0)
        return centre(resize(square, spec.resize_shape or shape, interpolation, precision), shape)
    if spec.resize == "stretch":
        return centre(resize(image, spec.resize_shape or shape, interpolation, precision), shape)
    if spec.resize == "pad_stretch":
        padded = centre(image, (max(height, shape[0]), max(width, shape[1])), spec.pad)
        return resize(padded, shape, interpolation, precision)
    if spec.resize == "short_side_center_crop":
        axis = 0 if height <= width else 1
        return centre(isotropic(image, axis, min(spec.resize_shape), spec), shape, spec.pad)
    if spec.resize == "resize_center_crop":
        return centre(resize(image, spec.resize_shape, interpolation, precision), shape)
    raise ValueError(f"unknown resize mode {spec.resize!r}")


# ---------------------------------------------------------------------------------------------- per track

@dataclass
class TrackCrops:
    """Model inputs of one track, by crop key (frame models) or by stack key (clip and sequence models)."""

    faces: dict[CropKey, np.ndarray] = field(default_factory=dict)    # crop key -> (n, H, W, 3)
    clips: dict[StackKey, np.ndarray] = field(default_factory=dict)   # stack key -> (n, T, H, W, 3)


def track_crops(video: DecodedVideo, track: Track, specs: list[ModelSpec], detector_margin: float) -> TrackCrops:
    """Each model's inputs for one track (`detector_margin`: for models without their own): face crops of the
    track's detections on the model's frames for frame models, fixed-box clips for clip and sequence models."""
    inputs = TrackCrops()
    for spec in specs:
        if spec.kind == "frame":
            key = crop_key(spec.input)
            if key not in inputs.faces:
                faces = [(crop(video.frames[video.keys[position]], track.boxes[position], spec.input,
                               detector_margin), flip)
                         for position, flip in picked(model_positions(video, track, spec.input), spec.input)]
                faces = [flipped(fit(face, spec.input), flip) for face, flip in faces if face is not None]
                if faces:
                    inputs.faces[key] = np.stack(faces)
            continue
        key = stack_key(spec)
        if key in inputs.clips:
            continue
        stacks = []
        for run, flip in picked(track_windows(video, track, Timeline(*spec.input.timeline)), spec.input):
            # One box per clip: 3D models were trained on steady crops, not jittering ones.
            box = track.union() if spec.input.box == "track_union" else track.box_at(run[len(run) // 2], video.keys)
            frames = [crop(video.frames[i], box, spec.input, detector_margin) for i in run]
            if all(f is not None for f in frames):
                stacks.append(np.stack([flipped(fit(f, spec.input), flip) for f in frames]))
        if stacks:
            inputs.clips[key] = np.stack(stacks)
    return inputs


def model_positions(video: DecodedVideo, track: Track, spec: InputSpec) -> list[int]:
    """The track's detections (key positions, in time) on a frame model's frames: its own timeline's, else the
    base key frames."""
    if spec.every:
        frames = {run[0] for run in video.windows.get(Timeline(*spec.timeline), [])}
    else:
        frames = set(video.base)
    return [position for position in sorted(track.boxes) if video.keys[position] in frames]


def picked(items: list, spec: InputSpec) -> list[tuple]:
    """A track's inputs in time, each with whether to flip it: every other one flipped (`flip` alternate, the first
    included), then the spec's `share` of them kept, at most `limit`."""
    period, first, count = spec.share
    chosen = [(item, spec.flip == "alternate" and index % 2 == 0) for index, item in enumerate(items)
              if first <= index % period < first + count]
    return chosen[:spec.limit] if spec.limit else chosen


def flipped(image: np.ndarray, flip: bool) -> np.ndarray:
    """The image mirrored left-right when `flip`."""
    return np.ascontiguousarray(image[:, ::-1]) if flip else image


def track_windows(video: DecodedVideo, track: Track, timeline: Timeline) -> list[list[int]]:
    """The clip windows of a timeline within the track: on the model's own timeline, those wholly inside the track's
    span; centred on key frames, those centred inside it, else the one nearest its middle."""
    runs = video.windows.get(timeline, [])
    first, last = track.span(video.keys)
    if timeline.own:
        return [run for run in runs if first <= run[0] and run[-1] <= last]
    inside = [run for run in runs if first <= run[len(run) // 2] <= last]
    if inside or not runs:
        return inside
    middle = (first + last) / 2
    return [min(runs, key=lambda run: abs(run[len(run) // 2] - middle))]
