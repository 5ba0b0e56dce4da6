#!/usr/bin/env python
"""Deepfake Detection Challenge inference kernel: a folder of videos in, submission.csv out.

The pipeline, top to bottom: read N frames -> detect faces (BlazeFace on square tiles) -> crop ->
predict (every ensemble model, batched) -> blend and clip -> write. Every video gets a row: a video that
fails anywhere gets the manifest's fallback value, and the report says why.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import torch

KERNEL_DIR = Path(__file__).resolve().parent
KAGGLE_COMPETITION = Path("/kaggle/input/deepfake-detection-challenge")
KAGGLE_OUTPUT = Path("/kaggle/working/submission.csv")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
STAGES = ("read", "detect", "crop", "predict", "blend")
TILE_MIN_OVERLAP = 0.25  # neighbouring tiles share a quarter of their side, so a face on a seam is whole in one

log = logging.getLogger("kernel")


def _import_runtime():
    """Import the project's runtime packages, from beside this file or from an attached Kaggle dataset."""
    candidates = [KERNEL_DIR, *sorted(Path("/kaggle/input").glob("*"))]
    for folder in candidates:
        if (folder / "weights" / "__init__.py").is_file():
            sys.path.insert(0, str(folder))
            break
    import blending
    import weights
    from weights.archs.blazeface import BlazeFaceDetector, weighted_nms
    from weights.archs.mtcnn import MTCNNDetector
    return blending, weights, BlazeFaceDetector, MTCNNDetector, weighted_nms


blending, weights, BlazeFaceDetector, MTCNNDetector, weighted_nms = _import_runtime()


# ---------------------------------------------------------------------------------------------- devices

def is_device_error(error: BaseException) -> bool:
    """Whether an exception comes from the accelerator (CUDA error, out of memory, no driver)."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, torch.AcceleratorError)):
        return True
    message = str(error)
    return isinstance(error, (RuntimeError, AssertionError)) and any(
        word in message for word in ("CUDA", "cuda", "NVIDIA", "cuDNN", "CUBLAS", "out of memory"))


class Accelerator:
    """Runs modules on one device; on any device failure it moves every module to the CPU and retries there."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.fallback_reason: str | None = None
        self._placed: list[torch.nn.Module] = []

    def __call__(self, module: torch.nn.Module, batch: torch.Tensor, memory_format=torch.channels_last):
        """module(batch) on the current device, returned on the CPU; falls back to the CPU once if the device fails.

        The module is placed on first use in `memory_format`: channels-last suits 2D convolutions on CPU and GPU
        alike (about 1.5-2x on this CPU), channels_last_3d the 3D ones; HWC crops arrive in that layout already.
        """
        try:
            return self._forward(module, batch, memory_format)
        except Exception as error:
            if self.device.type == "cpu" or not is_device_error(error):
                raise
            self.fall_back_to_cpu(error)
            return self._forward(module, batch, memory_format)

    def fall_back_to_cpu(self, error: BaseException) -> None:
        """Move every module to the CPU; the rest of the run stays there."""
        self.fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        log.warning("device %s failed (%s); continuing on the CPU", self.device, self.fallback_reason)
        self.device = torch.device("cpu")
        for module in self._placed:
            module.to(self.device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _forward(self, module: torch.nn.Module, batch: torch.Tensor, memory_format):
        if module not in self._placed:
            module.to(self.device, memory_format=memory_format)
            self._placed.append(module)
        with torch.inference_mode():
            output = module(batch.to(self.device, non_blocking=True))
        return _to_cpu(output)


def _to_cpu(output):
    if isinstance(output, torch.Tensor):
        return output.float().cpu()
    return type(output)(_to_cpu(item) for item in output)


def resolve_device(name: str) -> str:
    """'auto' means CUDA when torch sees a GPU, else the CPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# ---------------------------------------------------------------------------------------------- read

@dataclass
class Clip:
    """The decoded frames of one video (RGB, upright) by frame index.

    `keys` are the evenly spaced frames that detection and frame models see; `windows` holds, per clip
    geometry (frames, stride, clips), the runs of frames that clip and sequence models see.
    """

    frames: dict[int, np.ndarray]
    keys: list[int]
    windows: dict[tuple[int, int, int], list[list[int]]]
    reader: str


def sample_indices(total: int, count: int) -> list[int]:
    """`count` evenly spaced frame indices in [0, total)."""
    if total <= 0:
        return []
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


def clip_windows(total: int, keys: list[int], geometry: tuple[int, int, int]) -> list[list[int]]:
    """`clips` runs of `frames` indices `stride` apart, centred on key frames in the middle of equal parts of
    the video (not on its first and last frames, often fades), inside the video."""
    frames, stride, clips = geometry
    span = (frames - 1) * stride
    centres = sorted({keys[int((part + 0.5) * len(keys) / clips)] for part in range(clips)}) if keys else []
    windows = []
    for centre in centres:
        start = min(max(0, centre - span // 2), max(0, total - 1 - span))
        windows.append([min(start + step * stride, total - 1) for step in range(frames)])
    return windows


def plan_frames(total: int, count: int, geometries) -> tuple[list[int], dict, set[int]]:
    """Key frames, clip windows per geometry, and every frame index that must be decoded."""
    keys = sample_indices(total, count)
    windows = {geometry: clip_windows(total, keys, geometry) for geometry in geometries}
    wanted = set(keys).union(*(index for runs in windows.values() for index in runs))
    return keys, windows, wanted


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame upright: rotate it by `rotation` degrees counter-clockwise (PyAV's display matrix)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=quarter_turns)) if quarter_turns else frame


def read_frames(path: Path, count: int, geometries=()) -> Clip:
    """Decode the planned frames: PyAV with threaded decoding first, OpenCV grab/retrieve as the fallback.

    A folder is read as a video of its image files in name order (VidTIMIT keeps its videos that way).
    """
    if path.is_dir():
        return _read_frame_folder(path, count, geometries)
    try:
        return _read_pyav(path, count, geometries)
    except Exception as pyav_error:
        log.info("%s: PyAV failed (%s); trying OpenCV", path.name, pyav_error)
        try:
            return _read_opencv(path, count, geometries)
        except Exception as opencv_error:
            raise ValueError(f"cannot decode: PyAV: {pyav_error}; OpenCV: {opencv_error}") from None


def _decoded_clip(frames: dict[int, np.ndarray], keys, windows, reader: str) -> Clip:
    """Keep what was really decoded: containers sometimes promise more frames than they hold."""
    if not frames:
        raise ValueError("no frame decoded")
    complete = {geometry: [run for run in runs if all(i in frames for i in run)] for geometry, runs in windows.items()}
    return Clip(frames, [k for k in keys if k in frames], complete, reader)


def _read_pyav(path: Path, count: int, geometries) -> Clip:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if not stream.frames:
            container.seek(0)
        keys, windows, wanted = plan_frames(total, count, geometries)
        last, frames = max(wanted, default=-1), {}
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
            if index >= last:
                break
    return _decoded_clip(frames, keys, windows, "pyav")


def _read_frame_folder(folder: Path, count: int, geometries) -> Clip:
    # VidTIMIT names its JPEG frames 001, 002, ... without an extension: OpenCV reads them by content.
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (len(p.stem), p.name))
    keys, windows, wanted = plan_frames(len(files), count, geometries)
    frames = {}
    for index in sorted(wanted):
        bgr = cv2.imread(str(files[index]))
        if bgr is not None:
            frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _decoded_clip(frames, keys, windows, "frames")


def _read_opencv(path: Path, count: int, geometries) -> Clip:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError("OpenCV cannot open the file")
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        keys, windows, wanted = plan_frames(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), count, geometries)
        frames = {}
        for index in range(max(wanted, default=-1) + 1):
            if not capture.grab():  # grab() skips decoding to RGB: only retrieve() pays for the frames we keep
                break
            if index in wanted:
                ok, bgr = capture.retrieve()
                if ok:
                    frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    return _decoded_clip(frames, keys, windows, "opencv")


# ---------------------------------------------------------------------------------------------- detect

def square_tiles(height: int, width: int, scales: tuple[float, ...]) -> list[tuple[int, int, int]]:
    """Overlapping square tiles (top, left, side) covering the frame at each scale of its short side."""
    tiles = []
    for scale in scales:
        side = max(1, round(min(height, width) * scale))
        rows = _tile_offsets(height, side)
        cols = _tile_offsets(width, side)
        tiles.extend((top, left, side) for top in rows for left in cols)
    return tiles


def _tile_offsets(length: int, side: int) -> list[int]:
    if length <= side:
        return [0]
    count = math.ceil((length - side) / (side * (1 - TILE_MIN_OVERLAP))) + 1
    return np.linspace(0, length - side, count).round().astype(int).tolist()


class FaceDetector:
    """BlazeFace over square tiles of each frame, detections merged per frame by weighted NMS in pixels.

    Tile scales run coarse to fine: a finer scale (smaller tiles, so smaller faces) runs only on the frames
    where the coarser ones found no face, so close-up videos pay for one pass and distant faces are still found.
    """

    def __init__(self, detector: BlazeFaceDetector, spec, accelerator: Accelerator, batch_size: int):
        self.detector = detector
        self.spec = spec
        self.accelerator = accelerator
        self.batch_size = batch_size
        self._tiles: dict[tuple[int, int, float], list[tuple[int, int, int]]] = {}

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, an array (k, 5) of [x0, y0, x1, y1, score] in frame pixels, best first."""
        boxes = [np.zeros((0, 5), np.float32) for _ in frames]
        pending = list(range(len(frames)))
        for scale in self.spec.tile_scales:
            for frame_index, found in zip(pending, self._detect_at_scale([frames[i] for i in pending], scale)):
                boxes[frame_index] = found
            pending = [i for i in pending if not len(boxes[i])]
            if not pending:
                break
        return boxes

    def _detect_at_scale(self, frames: list[np.ndarray], scale: float) -> list[np.ndarray]:
        size = self.detector.input_size
        inputs, owners = [], []
        for frame_index, frame in enumerate(frames):
            for top, left, side in self._tiles_for(frame.shape[:2], scale):
                tile = frame[top:top + side, left:left + side]
                inputs.append(cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA))
                owners.append((frame_index, top, left, side))
        found: list[list[np.ndarray]] = [[] for _ in frames]
        for start in range(0, len(inputs), self.batch_size):
            batch = torch.from_numpy(np.stack(inputs[start:start + self.batch_size]))
            detections = self.detector.detect(batch, forward=self.accelerator)
            for (frame_index, top, left, side), dets in zip(owners[start:start + self.batch_size], detections):
                if len(dets):
                    dets = dets.copy()
                    dets[:, [0, 2]] = dets[:, [0, 2]] * side + top   # ymin, ymax
                    dets[:, [1, 3]] = dets[:, [1, 3]] * side + left  # xmin, xmax
                    found[frame_index].append(dets)
        return [self._merge(parts) for parts in found]

    def _tiles_for(self, shape: tuple[int, int], scale: float) -> list[tuple[int, int, int]]:
        key = (*shape, scale)
        if key not in self._tiles:
            self._tiles[key] = square_tiles(*shape, (scale,))
        return self._tiles[key]

    def _merge(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.zeros((0, 5), np.float32)
        merged = weighted_nms(np.concatenate(parts), iou_threshold=0.3)
        boxes = merged[:, [1, 0, 3, 2, -1]]  # -> x0, y0, x1, y1, score
        return boxes[np.argsort(-boxes[:, 4])][: self.spec.max_faces_per_frame]


class MTCNNFaceDetector:
    """MTCNN's own image pyramid over whole frames (no tiles), a few frames per call to bound memory."""

    frames_per_call = 16

    def __init__(self, detector: MTCNNDetector, spec, accelerator: Accelerator):
        self.detector = detector
        self.spec = spec
        self.accelerator = accelerator

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, an array (k, 5) of [x0, y0, x1, y1, score] in frame pixels, best first."""
        found = []
        for start in range(0, len(frames), self.frames_per_call):
            found.extend(self.detector.detect(frames[start:start + self.frames_per_call], forward=self.accelerator))
        return [boxes[: self.spec.max_faces_per_frame] for boxes in found]


def make_face_detector(ensemble, accelerator: Accelerator, batch_size: int):
    """The manifest's detector: tiled BlazeFace, or MTCNN."""
    spec = ensemble.detector
    network = ensemble.build_detector()
    if spec.arch == "mtcnn":
        mtcnn = MTCNNDetector.from_model(network, thresholds=(0.6, 0.7, spec.min_score), downscale=spec.downscale)
        return MTCNNFaceDetector(mtcnn, spec, accelerator)
    return FaceDetector(BlazeFaceDetector(network, min_score=spec.min_score), spec, accelerator, batch_size)


# ---------------------------------------------------------------------------------------------- track

def face_shift(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two face boxes are, in face sizes (sqrt of area); inf when one is over twice the other's side.

    BlazeFace's box of one face shrinks by up to half on turned or half-hidden faces (seen on DFDC clips).
    """
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    if min(area_a, area_b) <= 0 or max(area_a, area_b) > 4 * min(area_a, area_b):
        return math.inf
    distance = math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return distance / ((math.sqrt(area_a) + math.sqrt(area_b)) / 2)


@dataclass
class Track:
    """One person's face across the key frames: key position -> box [x0, y0, x1, y1, score]."""

    boxes: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return max(self.boxes)

    def box_at(self, frame: int, keys: list[int]) -> np.ndarray:
        """The box at any frame index, linearly interpolated between the nearest detections."""
        frames = np.array([keys[pos] for pos in sorted(self.boxes)], np.float64)
        boxes = np.stack([self.boxes[pos][:4] for pos in sorted(self.boxes)])
        return np.array([np.interp(frame, frames, boxes[:, i]) for i in range(4)], np.float32)

    def span(self, keys: list[int]) -> tuple[int, int]:
        """First and last frame index where the face was detected."""
        return keys[min(self.boxes)], keys[self.last]


def link_tracks(boxes_per_key: list[np.ndarray], spec) -> list[Track]:
    """Greedy linking across key frames, nearest faces first; a track may skip up to `max_gap` key frames.

    Distance in face sizes rather than IoU: between key frames a third of a second apart a face often moves
    further than its IoU tolerates, while two people's faces are rarely within one face size of each other.
    """
    tracks: list[Track] = []
    for pos, boxes in enumerate(boxes_per_key):
        open_tracks = [t for t in tracks if pos - t.last <= spec.max_gap + 1]
        pairs = sorted((face_shift(t.boxes[t.last], box), ti, bi) for ti, t in enumerate(open_tracks)
                       for bi, box in enumerate(boxes))
        taken_tracks, taken_boxes = set(), set()
        for shift, ti, bi in pairs:
            if shift > spec.max_shift:
                break
            if ti not in taken_tracks and bi not in taken_boxes:
                open_tracks[ti].boxes[pos] = boxes[bi]
                taken_tracks.add(ti)
                taken_boxes.add(bi)
        tracks.extend(Track({pos: box}) for bi, box in enumerate(boxes) if bi not in taken_boxes)
    confirmed = [t for t in tracks if len(t.boxes) >= spec.min_detections]
    longest = max((len(t.boxes) for t in tracks), default=0)
    return confirmed or [t for t in tracks if len(t.boxes) == longest]


# ---------------------------------------------------------------------------------------------- crop

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
class TrackInputs:
    """Model inputs of one track, by crop size (frame models) or by clip geometry and size (the others)."""

    faces: dict[int, np.ndarray] = field(default_factory=dict)    # size -> (n, S, S, 3) letterboxed crops
    clips: dict[tuple, np.ndarray] = field(default_factory=dict)  # (T, stride, clips, S) -> (n, T, S, S, 3)


def track_inputs(clip: Clip, track: Track, classifiers: list[Classifier], margin: float) -> TrackInputs:
    """Letterboxed face crops of the track's detections, and fixed-box clips for the clip/sequence models."""
    inputs = TrackInputs()
    crops = [c for c in (crop(clip.frames[clip.keys[pos]], box, margin) for pos, box in sorted(track.boxes.items()))
             if c is not None]
    for classifier in classifiers:
        spec = classifier.spec
        if spec.kind == "frame":
            if spec.input.size not in inputs.faces and crops:
                inputs.faces[spec.input.size] = np.stack([letterbox(c, spec.input.size) for c in crops])
            continue
        if classifier.clip_key in inputs.clips:
            continue
        runs = track_windows(clip, track, classifier.geometry)
        stacks = []
        for run in runs:
            # One box per clip, at its centre frame: 3D models were trained on steady crops, not jittering ones.
            box = track.box_at(run[len(run) // 2], clip.keys)
            frames = [crop(clip.frames[i], box, margin) for i in run]
            if all(f is not None for f in frames):
                stacks.append(np.stack([letterbox(f, spec.input.size) for f in frames]))
        if stacks:
            inputs.clips[classifier.clip_key] = np.stack(stacks)
    return inputs


def track_windows(clip: Clip, track: Track, geometry: tuple[int, int, int]) -> list[list[int]]:
    """The clip windows centred inside the track's span, else the one nearest its middle."""
    runs = clip.windows.get(geometry, [])
    first, last = track.span(clip.keys)
    inside = [run for run in runs if first <= run[len(run) // 2] <= last]
    if inside or not runs:
        return inside
    middle = (first + last) / 2
    return [min(runs, key=lambda run: abs(run[len(run) // 2] - middle))]


# ---------------------------------------------------------------------------------------------- predict

class Classifier:
    """One ensemble model with its input spec, turning uint8 crops (or stacks of them) into P(FAKE)."""

    def __init__(self, spec, module: torch.nn.Module):
        self.spec = spec
        self.module = module
        self.mean = torch.tensor(spec.input.mean, dtype=torch.float32)
        self.std = torch.tensor(spec.input.std, dtype=torch.float32)
        self.geometry = (spec.input.frames, spec.input.stride, spec.input.clips)
        self.clip_key = (*self.geometry, spec.input.size)
        self.memory_format = {"frame": torch.channels_last, "clip": torch.channels_last_3d,
                              "sequence": torch.contiguous_format}[spec.kind]

    def predict(self, crops: np.ndarray, accelerator: Accelerator, batch_size: int) -> np.ndarray:
        """P(FAKE) for (N, S, S, 3) face crops or (N, T, S, S, 3) clips, averaged over the TTA views."""
        views = [crops] + [np.flip(crops, axis=-2) for name in self.spec.tta if name == "hflip"]
        return np.mean([self._predict_view(np.ascontiguousarray(v), accelerator, batch_size) for v in views], axis=0)

    def _predict_view(self, crops: np.ndarray, accelerator: Accelerator, batch_size: int) -> np.ndarray:
        scores = []
        for start in range(0, len(crops), batch_size):
            pixels = torch.from_numpy(crops[start:start + batch_size]).float().div_(255)
            batch = self._layout((pixels - self.mean) / self.std)
            scores.append(torch.sigmoid(self._logit(accelerator(self.module, batch, self.memory_format))).numpy())
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def _layout(self, batch: torch.Tensor) -> torch.Tensor:
        """Channels-last pixels -> the model's layout (as strided views: no copy)."""
        if self.spec.kind == "frame":
            return batch.permute(0, 3, 1, 2)          # N, 3, S, S
        if self.spec.kind == "clip":
            return batch.permute(0, 4, 1, 2, 3)       # N, 3, T, S, S
        return batch.permute(0, 1, 4, 2, 3)           # N, T, 3, S, S

    def _logit(self, output: torch.Tensor) -> torch.Tensor:
        """The logit of FAKE from an output of shape (N,), (N, 1) or (N, 2) (column 1 = positive_class)."""
        if output.dim() == 2 and output.shape[1] == 2:
            logit = output[:, 1] - output[:, 0]
        elif output.dim() == 2 and output.shape[1] == 1 or output.dim() == 1:
            logit = output.reshape(-1)
        else:
            raise ValueError(f"model {self.spec.name} returned shape {tuple(output.shape)}; expected N, N x 1 or N x 2")
        return -logit if self.spec.positive_class == "REAL" else logit


def score_tracks(inputs: list[TrackInputs], classifiers: list[Classifier], accelerator: Accelerator,
                 batch_size: int) -> dict[str, list[np.ndarray]]:
    """Per model, per track, the P(FAKE) of each of its frames (or clips); empty where the track has no input."""
    scores: dict[str, list[np.ndarray]] = {}
    for classifier in classifiers:
        spec = classifier.spec
        stacks = [t.faces.get(spec.input.size) if spec.kind == "frame" else t.clips.get(classifier.clip_key)
                  for t in inputs]
        present = [i for i, stack in enumerate(stacks) if stack is not None]
        per_track = [np.zeros(0, np.float32) for _ in stacks]
        if present:  # one batched run over all tracks of the video, split back per track
            flat = classifier.predict(np.concatenate([stacks[i] for i in present]), accelerator, batch_size)
            for i, part in zip(present, np.split(flat, np.cumsum([len(stacks[i]) for i in present])[:-1])):
                per_track[i] = part
        scores[spec.name] = per_track
    return scores


# ---------------------------------------------------------------------------------------------- blend

def video_score(track_frame_scores: list[np.ndarray], aggregation: str, tracks) -> float:
    """Aggregate each track's frame (or clip) scores, then combine the tracks (max by default)."""
    per_track = [blending.aggregate_frames(scores, aggregation) for scores in track_frame_scores]
    return blending.combine_tracks(per_track, tracks.video_score)


# ---------------------------------------------------------------------------------------------- run

@contextmanager
def timed(seconds: dict[str, float], stage: str):
    """Add the wall time of the block to seconds[stage]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class VideoResult:
    """Everything the report says about one video."""

    filename: str
    label: float
    frames_read: int = 0           # key frames, evenly spaced: what detection and frame models see
    frames_decoded: int = 0        # key frames plus the clip windows of clip and sequence models
    reader: str | None = None
    faces_per_frame: list[int] = field(default_factory=list)
    track_lengths: list[int] = field(default_factory=list)
    frame_scores: dict[str, list[list[float]]] = field(default_factory=dict)  # model -> track -> frame (or clip)
    model_scores: dict[str, float | None] = field(default_factory=dict)
    blended: float | None = None
    fallback: bool = False
    error: str | None = None
    device: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class Kernel:
    """Everything loaded once (detector, models, device), then applied to one video at a time."""

    def __init__(self, ensemble_path: Path, frames_per_video: int, device: str, batch_size: int | None = None):
        self.ensemble = weights.load_ensemble(ensemble_path)
        self.frames_per_video = frames_per_video
        self.accelerator = Accelerator(resolve_device(device))
        self.batch_size = batch_size or (16 if self.accelerator.device.type == "cpu" else 64)
        self.detector = make_face_detector(self.ensemble, self.accelerator, self.batch_size)
        self.classifiers = [Classifier(m, self.ensemble.build_model(m)) for m in self.ensemble.models]
        self.blend_weights = {m.name: m.weight for m in self.ensemble.models}

    def process(self, path: Path, models: set[str] | None = None) -> VideoResult:
        """Score one video with every model (or only those named); any failure yields the fallback value."""
        blend = self.ensemble.blend
        result = VideoResult(filename=path.name, label=blend.fallback)
        classifiers = [c for c in self.classifiers if models is None or c.spec.name in models]
        geometries = sorted({c.geometry for c in classifiers if c.spec.kind != "frame"})
        try:
            with timed(result.seconds, "read"):
                clip = read_frames(path, self.frames_per_video, geometries)
            result.frames_read, result.frames_decoded, result.reader = len(clip.keys), len(clip.frames), clip.reader
            with timed(result.seconds, "detect"):
                boxes = self.detector.detect([clip.frames[k] for k in clip.keys])
                tracks = link_tracks(boxes, self.ensemble.tracks)
            result.faces_per_frame = [len(b) for b in boxes]
            result.track_lengths = [len(t.boxes) for t in tracks]
            if not tracks:
                result.fallback, result.error = True, "no face found"
                return result
            with timed(result.seconds, "crop"):
                inputs = [track_inputs(clip, t, classifiers, self.ensemble.detector.margin) for t in tracks]
            del clip  # the decoded frames are the bulk of a video's memory
            with timed(result.seconds, "predict"):
                frame_scores = score_tracks(inputs, classifiers, self.accelerator, self.batch_size)
            with timed(result.seconds, "blend"):
                scores = {c.spec.name: video_score(frame_scores[c.spec.name], c.spec.aggregation, self.ensemble.tracks)
                          for c in classifiers}
                result.frame_scores = {k: [track.tolist() for track in v] for k, v in frame_scores.items()}
                result.model_scores = {k: _finite_or_none(v) for k, v in scores.items()}
                result.blended = _finite_or_none(blending.blend_models(scores, self.blend_weights))
                result.label = blending.clip_prediction(result.blended if result.blended is not None else math.nan,
                                                        blend.clip, blend.fallback)
                result.fallback = result.blended is None
                if result.fallback:
                    result.error = "no model could score the faces"
        except Exception as error:  # one bad video must never cost the submission
            log.warning("%s: %s: %s; writing the fallback %.2f", path.name, type(error).__name__, error,
                        blend.fallback)
            result.label, result.fallback = blend.fallback, True
            result.error = f"{type(error).__name__}: {error}"
        finally:
            result.device = str(self.accelerator.device)
        return result


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- write

def find_videos(folder: Path) -> list[Path]:
    """Video files anywhere below `folder`, sorted by name then path."""
    videos = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    return sorted(videos, key=lambda p: (p.name, str(p)))


def submission_order(filenames: list[str], sample_submission: Path | None) -> list[str]:
    """The sample submission's order (its videos first, even missing ones), then any other videos."""
    if sample_submission is None or not sample_submission.is_file():
        return filenames
    with open(sample_submission, newline="") as f:
        listed = [row["filename"] for row in csv.DictReader(f)]
    listed_set = set(listed)
    return listed + [name for name in filenames if name not in listed_set]


def write_submission(path: Path, rows: list[tuple[str, float]]) -> None:
    """Write filename,label atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", newline="", dir=path.parent, prefix=".submission-", suffix=".csv",
                                     delete=False) as f:
        try:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows((name, f"{label:.6f}") for name, label in rows)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def print_timings(results: list[VideoResult]) -> None:
    """Median seconds per video by stage, and the total."""
    per_stage = defaultdict(list)
    for result in results:
        for stage in STAGES:
            per_stage[stage].append(result.seconds.get(stage, 0.0))
        per_stage["total"].append(sum(result.seconds.values()))
    if results:
        cells = "  ".join(f"{stage} {statistics.median(values):.3f}" for stage, values in per_stage.items())
        print(f"median seconds per video ({len(results)} videos): {cells}")


# ---------------------------------------------------------------------------------------------- main

def default_ensemble() -> Path:
    """$DEEPFAKE_ENSEMBLE, else the locally built manifest, else one in an attached Kaggle dataset."""
    if "DEEPFAKE_ENSEMBLE" in os.environ:
        return Path(os.environ["DEEPFAKE_ENSEMBLE"])
    local = KERNEL_DIR / "artifacts" / "weights" / "ensemble.json"
    if local.is_file():
        return local
    return next(iter(sorted(Path("/kaggle/input").glob("*/ensemble.json"))), local)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    on_kaggle = (KAGGLE_COMPETITION / "test_videos").is_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=KAGGLE_COMPETITION / "test_videos" if on_kaggle else None,
                        required=not on_kaggle, help="folder searched recursively for videos")
    parser.add_argument("--out", type=Path, default=KAGGLE_OUTPUT if on_kaggle else Path("submission.csv"))
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--ensemble", type=Path, default=None, help="ensemble manifest (ensemble.json)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per detector or model batch (default 16 on the CPU, 64 on a GPU: "
                             "larger CPU batches fall out of cache and run slower)")
    parser.add_argument("--report", type=Path, default=None, help="write one JSON line per video here")
    parser.add_argument("--sample-submission", type=Path,
                        default=KAGGLE_COMPETITION / "sample_submission.csv" if on_kaggle else None,
                        help="order rows as in this CSV (its videos always get a row)")
    args = parser.parse_args(argv)
    if args.frames_per_video < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--frames-per-video and --batch-size must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    started = time.perf_counter()
    kernel = Kernel(args.ensemble or default_ensemble(), args.frames_per_video, args.device, args.batch_size)
    log.info("loaded %d models on %s in %.1f s", len(kernel.classifiers), kernel.accelerator.device,
             time.perf_counter() - started)

    videos = find_videos(args.videos)
    log.info("%d videos under %s", len(videos), args.videos)
    results: dict[str, VideoResult] = {}
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
    report = open(args.report, "w") if args.report else None
    try:
        for number, path in enumerate(videos, 1):
            if path.name in results:
                log.warning("%s: duplicate file name, keeping the first (%s)", path, path.name)
                continue
            result = kernel.process(path)
            results[path.name] = result
            log.info("[%d/%d] %s -> %.4f%s", number, len(videos), path.name, result.label,
                     f" (fallback: {result.error})" if result.fallback else "")
            if report:
                report.write(json.dumps({**result.__dict__, "path": str(path)}) + "\n")
                report.flush()
    finally:
        if report:
            report.close()

    fallback = kernel.ensemble.blend.fallback
    order = submission_order(sorted(results), args.sample_submission)
    rows = [(name, results[name].label if name in results else fallback) for name in order]
    write_submission(args.out, rows)
    print_timings(list(results.values()))
    fallbacks = Counter(result.error for result in results.values() if result.fallback)
    if fallbacks:  # a systematic failure shows up here as one reason repeated, not as a quiet column of 0.5
        print("fallbacks: " + "; ".join(f"{count} x {reason}" for reason, count in fallbacks.most_common()))
    print(f"wrote {len(rows)} rows to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
