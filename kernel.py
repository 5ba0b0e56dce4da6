#!/usr/bin/env python
"""Deepfake Detection Challenge inference kernel: a folder of videos in, submission.csv out.

The pipeline, top to bottom: read N frames -> detect faces (BlazeFace on whole frames) -> crop ->
predict (every ensemble model, batched) -> blend and clip -> write. Every video gets a row: a video that
fails anywhere gets the manifest's fallback value, and the report says why.
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import logging
import math
import os
import re
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))  # overridable so the bundle can be verified
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
KAGGLE_COMPETITION = KAGGLE_INPUT / "deepfake-detection-challenge"
KAGGLE_OUTPUT = KAGGLE_WORKING / "submission.csv"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}
STAGES = ("read", "detect", "crop", "predict", "blend")
MAX_DETECTOR_SIDE = 4096  # a frame of absurd aspect ratio is scaled down further rather than fill memory

log = logging.getLogger("kernel")


# A distribution the image may have under another name, owning the same import package: installing ours beside
# it would mix two copies in one folder.
SAME_PACKAGE = {"onnxruntime-gpu": ("onnxruntime",), "onnxruntime": ("onnxruntime-gpu",),
                "opencv-python-headless": ("opencv-python", "opencv-contrib-python",
                                           "opencv-contrib-python-headless")}


def find_bundle() -> Path | None:
    """The folder holding the runtime packages: beside this file, else an attached Kaggle dataset (up to three
    levels down, however Kaggle mounts it)."""
    candidates = [KERNEL_DIR] + sorted(p.parents[1] for depth in ("*", "*/*", "*/*/*")
                                       for p in KAGGLE_INPUT.glob(f"{depth}/weights/__init__.py"))
    return next((folder for folder in candidates if (folder / "weights" / "__init__.py").is_file()), None)


def _installed(name: str) -> bool:
    for candidate in (name, *SAME_PACKAGE.get(name, ())):
        try:
            importlib.metadata.version(candidate)
            return True
        except importlib.metadata.PackageNotFoundError:
            pass
    return False


def install_bundled_wheels(bundle: Path) -> None:
    """pip-install, offline from the bundle's wheels/, each pinned requirement whose package is not installed.

    A package the image already has is kept at its version: reinstalling torch on Kaggle costs minutes.
    """
    requirements, wheels = bundle / "requirements.txt", bundle / "wheels"
    if not (requirements.is_file() and wheels.is_dir()):
        return
    missing = []
    for line in requirements.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if not requirement:
            continue
        if not _installed(re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]):
            missing.append(requirement)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    built_for = _bundle_python(bundle)
    if missing and built_for not in (None, running):  # pip would only say "no matching distribution"
        sys.exit(f"the bundle's wheels are for Python {built_for}, this is Python {running}: "
                 f"rebuild it with `python -m packager build --python-version {running}`")
    if missing:
        print(f"installing {len(missing)} packages offline from {wheels}: {' '.join(missing)}", flush=True)
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
                   "--disable-pip-version-check", *missing]
        if subprocess.run(command).returncode != 0:
            sys.exit(f"offline install from {wheels} failed (see pip's message above): {' '.join(missing)}")
        importlib.invalidate_caches()


def _bundle_python(bundle: Path) -> str | None:
    """The Python version the bundle's wheels were built for, from its bundle-manifest.json."""
    try:
        return json.loads((bundle / "bundle-manifest.json").read_text()).get("python_version")
    except (OSError, ValueError, AttributeError):
        return None


def _import_runtime(bundle: Path | None):
    """Import the project's runtime packages from the bundle folder."""
    if bundle is not None:
        sys.path.insert(0, str(bundle))
    import blending
    import weights
    from weights.archs.blazeface import BlazeFaceDetector
    from weights.archs.mtcnn import MTCNNDetector
    return blending, weights, BlazeFaceDetector, MTCNNDetector


BUNDLE = find_bundle()
if BUNDLE is not None:
    install_bundled_wheels(BUNDLE)

import av  # noqa: E402  (third-party imports wait for the offline install above)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

blending, weights, BlazeFaceDetector, MTCNNDetector = _import_runtime(BUNDLE)


# ---------------------------------------------------------------------------------------------- devices

def is_device_error(error: BaseException) -> bool:
    """Whether an exception comes from the accelerator (CUDA error, out of memory, no driver)."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, torch.AcceleratorError)):
        return True
    message = str(error)
    return isinstance(error, (RuntimeError, AssertionError)) and any(
        word in message for word in ("CUDA", "cuda", "NVIDIA", "cuDNN", "CUBLAS", "out of memory"))


class Accelerator:
    """Runs modules on one device; on any device failure it moves every module to the CPU and retries there.

    Reader threads (the detector) and the main thread (the classifiers) call it at once: placing modules and
    falling back happen under a lock, and only once.
    """

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.fallback_reason: str | None = None
        self._placed: list[torch.nn.Module] = []
        self._lock = threading.Lock()

    def __call__(self, module: torch.nn.Module, batch: torch.Tensor, memory_format=torch.channels_last):
        """module(batch) on the current device, returned on the CPU; falls back to the CPU once if the device fails.

        The module is placed on first use in `memory_format`: channels-last suits 2D convolutions on CPU and GPU
        alike (about 1.5-2x on this CPU), channels_last_3d the 3D ones; HWC crops arrive in that layout already.
        """
        device = self.device
        try:
            return self._forward(module, batch, memory_format)
        except Exception as error:
            if device.type == "cpu" or not is_device_error(error):
                raise
            self.fall_back_to_cpu(error)
            return self._forward(module, batch, memory_format)

    def fall_back_to_cpu(self, error: BaseException) -> None:
        """Move every module to the CPU; the rest of the run stays there."""
        with self._lock:
            if self.device.type == "cpu":  # another thread fell back first
                return
            self.fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            log.warning("device %s failed (%s); continuing on the CPU", self.device, self.fallback_reason)
            self.device = torch.device("cpu")
            for module in self._placed:
                module.to(self.device)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def _fp16(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_available()

    def _forward(self, module: torch.nn.Module, batch: torch.Tensor, memory_format):
        with self._lock:
            if module not in self._placed:
                module.to(self.device, memory_format=memory_format)
                self._placed.append(module)
        # fp16 on a GPU: twice the throughput of fp32 on tensor cores, and far below log-loss precision
        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=self._fp16):
            output = module(batch.to(self.device, non_blocking=True))
        return _to_cpu(output)


def _to_cpu(output):
    if isinstance(output, torch.Tensor):
        return output.float().cpu()
    return type(output)(_to_cpu(item) for item in output)


def usable_cpus() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    if not stat.S_ISREG(path.stat().st_mode):  # a named pipe or a device would block the reader for ever
        raise ValueError("not a regular file")
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
        if not container.streams.video:
            raise ValueError("no video stream")
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

def scan_image(frame: np.ndarray, scale: float, size: int, alignment: int) -> tuple[np.ndarray, float]:
    """The whole frame resized so that a square of `scale` x its short side spans `size` pixels (the face sizes
    the detector was trained on), zero-padded right and bottom to multiples of `alignment`; and the factor."""
    height, width = frame.shape[:2]
    factor = min(size / (scale * min(height, width)), MAX_DETECTOR_SIDE / max(height, width))
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    image = np.zeros((-(-new_h // alignment) * alignment, -(-new_w // alignment) * alignment, 3), np.uint8)
    image[:new_h, :new_w] = downsize(frame, new_h, new_w)
    return image, factor


def downsize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to height x width: area averaging by the whole factor first (OpenCV's fast path, 2.7x quicker than
    a fractional one on 1080p), then linear for the remaining fraction; cubic when enlarging."""
    whole = min(image.shape[0] // height, image.shape[1] // width)
    if whole >= 2:
        image = cv2.resize(image, (image.shape[1] // whole, image.shape[0] // whole), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR if whole >= 1 else cv2.INTER_CUBIC)


class FaceDetector:
    """BlazeFace over whole frames, each scaled so that a square of `scale` x its short side fills the network's
    input: a face is seen at the size it would have in such a square tile, with no seams and no tile overlap.

    Scales run coarse to fine: a finer scale (a larger image, so smaller faces) runs only on the frames where the
    coarser ones found no face, so close-up videos pay for one pass and distant faces are still found.
    """

    def __init__(self, detector: BlazeFaceDetector, spec, accelerator: Accelerator, batch_size: int):
        self.detector = detector
        self.spec = spec
        self.accelerator = accelerator
        self.batch_size = batch_size

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
        scanned = [scan_image(frame, scale, size, self.detector.alignment) for frame in frames]
        found: list[np.ndarray] = [np.zeros((0, 5), np.float32) for _ in frames]
        by_shape: dict[tuple, list[int]] = {}
        for index, (image, _) in enumerate(scanned):
            by_shape.setdefault(image.shape, []).append(index)
        for (height, width, _), members in by_shape.items():
            per_batch = max(1, self.batch_size * size * size // (height * width))  # batch_size counts S x S images
            for start in range(0, len(members), per_batch):
                chunk = members[start:start + per_batch]
                batch = torch.from_numpy(np.stack([scanned[i][0] for i in chunk]))
                for index, detections in zip(chunk, self.detector.detect(batch, forward=self.accelerator)):
                    found[index] = self._in_frame_pixels(detections, size / scanned[index][1])
        return found

    def _in_frame_pixels(self, detections: np.ndarray, pixels_per_unit: float) -> np.ndarray:
        """[ymin, xmin, ymax, xmax, ..., score] in units of the input size -> the best [x0, y0, x1, y1, score]."""
        boxes = np.concatenate([detections[:, [1, 0, 3, 2]] * pixels_per_unit, detections[:, -1:]], axis=1)
        return boxes[np.argsort(-boxes[:, 4], kind="stable")][: self.spec.max_faces_per_frame].astype(np.float32)


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


def make_face_detector(ensemble, accelerator: Accelerator, batch_size: int, threads: int | None = None):
    """The manifest's detector: whole-frame BlazeFace (on onnxruntime on the CPU where exported, `threads` per
    call), or MTCNN."""
    spec = ensemble.detector
    network = ensemble.build_detector()
    if spec.arch == "mtcnn":
        mtcnn = MTCNNDetector.from_model(network, thresholds=(0.6, 0.7, spec.min_score), downscale=spec.downscale)
        return MTCNNFaceDetector(mtcnn, spec, accelerator)
    blazeface = BlazeFaceDetector(network, min_score=spec.min_score,
                                  network=ensemble.build_detector_onnx(accelerator.device.type, threads))
    return FaceDetector(blazeface, spec, accelerator, batch_size)


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
    frames_requested: int = 0      # what the time budget allowed this video
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
    skipped: bool = False          # not even read: the time budget ran out
    budget_level: int = 0          # 0 = as configured; see TimeBudget
    device: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """One video to score, with what the time budget allows it: `skip` says why it must not even be read."""

    path: Path
    frames: int
    models: frozenset[str] | None = None  # None: every model
    budget_level: int = 0
    skip: str | None = None


@dataclass
class Decoded:
    """A job after its reader thread: the clip, or the error that stopped it."""

    job: Job
    clip: Clip | None
    error: BaseException | None
    seconds: float


@dataclass
class Prepared:
    """A video after detect and crop: its result so far and, when it has faces, its models' inputs."""

    result: VideoResult
    classifiers: list[Classifier]
    inputs: list[TrackInputs]


class Kernel:
    """Everything loaded once (detector, models, device), then applied to a stream of videos.

    `process` scores one video start to finish (the sequential path); `run` scores many: reader threads
    decode, detect and crop ahead while the main thread runs each model over the crops of several videos.
    """

    def __init__(self, ensemble_path: Path, frames_per_video: int, device: str, batch_size: int | None = None,
                 readers: int = 2):
        """`readers`: the reader threads of `run`; 0 for a kernel used only through `process`, whose inference
        then has every core to itself."""
        self.ensemble = weights.load_ensemble(ensemble_path)
        self.frames_per_video = frames_per_video
        self.accelerator = Accelerator(resolve_device(device))
        self.batch_size = batch_size or (16 if self.accelerator.device.type == "cpu" else 64)
        # The readers and the main thread infer at once: onnxruntime sessions share the cores among them rather
        # than each spread over all of them (on 2 cores that oversubscription cost 0.6 CPU-s per video).
        threads = max(1, usable_cpus() // (readers + 1))
        self.detector = make_face_detector(self.ensemble, self.accelerator, self.batch_size, threads)
        self.classifiers = [Classifier(m, self.ensemble.build_model(m, self.accelerator.device.type, threads))
                            for m in self.ensemble.models]
        self.blend_weights = {m.name: m.weight for m in self.ensemble.models}
        self.readers = readers
        # Enough videos per batch for two full batches of crops: a GPU batch of 64 at 32 frames takes 4 videos.
        self.videos_per_batch = max(1, math.ceil(2 * self.batch_size / frames_per_video))

    @property
    def fallback(self) -> float:
        return self.ensemble.blend.fallback

    def job(self, path: Path, models: set[str] | None = None) -> Job:
        """A job at the configured frame count."""
        return Job(path, self.frames_per_video, frozenset(models) if models is not None else None)

    def process(self, path: Path, models: set[str] | None = None) -> VideoResult:
        """Score one video with every model (or only those named); any failure yields the fallback value."""
        return self.score([self.read_and_prepare(self.job(path, models))])[0]

    def run(self, jobs: Iterator[Job]) -> Iterator[list[VideoResult]]:
        """Results in job order, a batch of videos at a time; readers (decode, detect, crop) run ahead by a
        bounded number of videos, so memory stays flat.

        `jobs` is consumed lazily, one job per free reader slot, so a time budget can plan each job late.
        """
        if self.readers < 1:
            raise ValueError("run() needs at least one reader thread; this kernel was built with readers=0")
        prefetch = self.readers + self.videos_per_batch
        with ThreadPoolExecutor(self.readers, thread_name_prefix="reader") as pool:
            pending: deque[Future] = deque()
            group: list[Prepared] = []

            def top_up():
                while len(pending) < prefetch:
                    job = next(jobs, None)
                    if job is None:
                        return
                    pending.append(pool.submit(self.read_and_prepare, job))

            top_up()
            while pending:
                group.append(pending.popleft().result())
                top_up()
                if len(group) >= self.videos_per_batch or not pending or not pending[0].done():
                    yield self.score(group)
                    group = []

    def read_and_prepare(self, job: Job) -> Prepared:
        """A reader thread's work: decode, then detect and crop."""
        return self.prepare(self.read(job))

    def read(self, job: Job) -> Decoded:
        """Decode the job's frames; an error is handed on, not raised."""
        start = time.perf_counter()
        if job.skip:
            return Decoded(job, None, None, 0.0)
        try:
            clip = read_frames(job.path, job.frames, self._geometries(job.models))
            return Decoded(job, clip, None, time.perf_counter() - start)
        except Exception as error:
            return Decoded(job, None, error, time.perf_counter() - start)

    def prepare(self, decoded: Decoded) -> Prepared:
        """Detect, track and crop one decoded video; without faces its result is already final."""
        job = decoded.job
        result = VideoResult(filename=job.path.name, label=self.fallback, frames_requested=job.frames,
                             budget_level=job.budget_level, seconds={"read": decoded.seconds})
        classifiers = self._classifiers(job.models)
        prepared = Prepared(result, classifiers, [])
        try:
            if job.skip:
                result.skipped = True
                raise TimeoutError(job.skip)
            if decoded.error is not None:
                raise decoded.error
            clip = decoded.clip
            result.frames_read, result.frames_decoded, result.reader = len(clip.keys), len(clip.frames), clip.reader
            with timed(result.seconds, "detect"):
                boxes = self.detector.detect([clip.frames[k] for k in clip.keys])
                tracks = link_tracks(boxes, self.ensemble.tracks)
            result.faces_per_frame = [len(b) for b in boxes]
            result.track_lengths = [len(t.boxes) for t in tracks]
            if not tracks:
                result.fallback, result.error = True, "no face found"
                return prepared
            with timed(result.seconds, "crop"):
                prepared.inputs = [track_inputs(clip, t, classifiers, self.ensemble.detector.margin) for t in tracks]
        except Exception as error:  # one bad video must never cost the submission
            self._fail(result, error)
        return prepared

    def score(self, group: list[Prepared]) -> list[VideoResult]:
        """Run each model once over the crops of every video in the group, then blend each video."""
        scorable = [p for p in group if p.inputs]
        try:
            started = time.perf_counter()
            scores = self._predict(scorable)
            share = (time.perf_counter() - started) / max(1, len(scorable))
            for prepared, frame_scores in zip(scorable, scores):
                prepared.result.seconds["predict"] = share
                with timed(prepared.result.seconds, "blend"):
                    self._blend(prepared.result, frame_scores)
        except Exception as error:
            if len(scorable) > 1:  # find the one video that breaks the batch: the others keep their scores
                return [self.score([prepared])[0] for prepared in group]
            for prepared in scorable:
                self._fail(prepared.result, error)
        for prepared in group:
            prepared.result.device = str(self.accelerator.device)
        return [prepared.result for prepared in group]

    def _predict(self, group: list[Prepared]) -> list[dict[str, list[np.ndarray]]]:
        """Per video, per model, per track: the frame (or clip) scores; one batched run per model."""
        per_video: list[dict[str, list[np.ndarray]]] = [{} for _ in group]
        for classifier in self.classifiers:
            users = [i for i, p in enumerate(group) if classifier in p.classifiers]
            if not users:
                continue
            inputs = [track for i in users for track in group[i].inputs]
            flat = score_tracks(inputs, [classifier], self.accelerator, self.batch_size)[classifier.spec.name]
            offsets = np.cumsum([0] + [len(group[i].inputs) for i in users])
            for i, start, stop in zip(users, offsets[:-1], offsets[1:]):
                per_video[i][classifier.spec.name] = flat[start:stop]
        return per_video

    def _blend(self, result: VideoResult, frame_scores: dict[str, list[np.ndarray]]) -> None:
        """Aggregate frames, combine tracks, blend the models and clip: the video's label."""
        specs = {c.spec.name: c.spec for c in self.classifiers}
        scores = {name: video_score(tracks, specs[name].aggregation, self.ensemble.tracks)
                  for name, tracks in frame_scores.items()}
        result.frame_scores = {k: [track.tolist() for track in v] for k, v in frame_scores.items()}
        result.model_scores = {k: _finite_or_none(v) for k, v in scores.items()}
        result.blended = _finite_or_none(blending.blend_models(scores, self.blend_weights))
        blend = self.ensemble.blend
        result.label = blending.clip_prediction(result.blended if result.blended is not None else math.nan,
                                                blend.clip, blend.fallback)
        result.fallback = result.blended is None
        if result.fallback:
            result.error = "no model could score the faces"

    def _fail(self, result: VideoResult, error: BaseException) -> None:
        log.warning("%s: %s: %s; writing the fallback %.2f", result.filename, type(error).__name__, error,
                    self.fallback)
        result.label, result.fallback = self.fallback, True
        result.error = f"{type(error).__name__}: {error}"

    def _classifiers(self, models: frozenset[str] | None) -> list[Classifier]:
        return [c for c in self.classifiers if models is None or c.spec.name in models]

    def _geometries(self, models: frozenset[str] | None) -> list[tuple[int, int, int]]:
        return sorted({c.geometry for c in self._classifiers(models) if c.spec.kind != "frame"})


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- budget

KAGGLE_TIME_LIMIT = 9 * 3600
KAGGLE_SAFETY_MARGIN = 30 * 60  # start-up, the offline install and writing the file come out of the same 9 hours


class TimeBudget:
    """Keeps the run inside `seconds` (from `started`) by projecting its finish from the measured rate.

    When the projection overshoots it steps down one level, in this order, and never back up: half the frames,
    a quarter of the frames (at least 8), then also without the models the manifest marks optional. A video
    whose turn comes when the videos in flight plus it would not finish in time gets the fallback unread.
    """

    def __init__(self, seconds: float | None, started: float, total: int, frames: int, models: list[str],
                 optional: list[str]):
        self.seconds, self.started, self.total = seconds, started, total
        self.models = frozenset(models)
        self.levels = budget_levels(frames, frozenset(optional))
        self.level = 0
        self.planned = self.done = 0
        self.rate: float | None = None  # seconds per video at the current level, between completions
        self.first_rate: float | None = None  # a pessimistic stand-in (warm-up included) until `rate` is known
        self._level_marks: list[tuple[float, int]] = []  # (time, videos) per finished batch

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def plan(self, path: Path) -> Job:
        """The job for the next video at the current level, or a skipped job past the point of no return."""
        frames, dropped = self.levels[self.level]
        job = Job(path, frames, self.models - dropped if dropped else None, budget_level=self.level)
        in_flight = self.planned - self.done
        self.planned += 1
        rate = self.rate or self.first_rate
        if self.seconds is not None and rate is not None:
            if time.perf_counter() + (in_flight + 1) * rate > self.deadline:
                job.skip = f"time budget of {self.seconds:.0f} s exhausted"
        return job

    def record(self, results: list[VideoResult]) -> None:
        """A batch of videos finished: update the rate and step down a level when the finish would be late.

        The rate is the time between batches over the videos they held, counting only videos planned at the
        current level; the first such batch only starts the clock (it holds the warm-up, or the switch).
        """
        now = time.perf_counter()
        self.done += len(results)
        measured = sum(r.budget_level == self.level and not r.skipped for r in results)
        if not measured:
            return
        self._level_marks.append((now, measured))
        if len(self._level_marks) < 2:
            if self.rate is None:  # until measured, the first batch's time with its warm-up bounds the rate
                self.first_rate = (now - self.started) / measured
            return
        start = self._level_marks[0][0]
        self.rate = (now - start) / sum(count for _, count in self._level_marks[1:])
        if self.seconds is None or self.level + 1 >= len(self.levels):
            return
        projected = now + (self.total - self.done) * self.rate
        if projected > self.deadline:
            self.level += 1
            frames, dropped = self.levels[self.level]
            log.warning("projected finish %.0f s after the start is past the budget of %.0f s: now %d frames%s",
                        projected - self.started, self.seconds, frames,
                        f" without {', '.join(sorted(dropped))}" if dropped else "")
            self._level_marks = []


def budget_levels(frames: int, optional: frozenset[str]) -> list[tuple[int, frozenset[str]]]:
    """(frames, models dropped) per level, from the configured run to the cheapest allowed."""
    levels = [(frames, frozenset())]
    for fewer in (frames // 2, frames // 4):
        fewer = max(fewer, min(frames, 8))
        if fewer < levels[-1][0]:
            levels.append((fewer, frozenset()))
    if optional:
        levels.append((levels[-1][0], optional))
    return levels


# ---------------------------------------------------------------------------------------------- journal

class Journal:
    """Append-only record of finished videos, so a killed run resumes without redoing or duplicating any.

    The first line fingerprints the run (manifest, frames, videos); a journal of another run is discarded.
    """

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.fingerprint = fingerprint
        self.file = None

    def resume(self) -> dict[str, dict]:
        """Finished records by file name; a line torn by a kill is dropped, and the file rewritten without it."""
        records: dict[str, dict] = {}
        if self.path.is_file():
            lines = self.path.read_text(errors="replace").splitlines()
            header = _json_or_none(lines[0]) if lines else None
            if header == {"fingerprint": self.fingerprint}:
                for line in lines[1:]:
                    record = _json_or_none(line)
                    if isinstance(record, dict) and "filename" in record and "label" in record:
                        records[record["filename"]] = record
            else:
                log.warning("%s belongs to another run (manifest, frames or videos differ); starting afresh", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w") as f:
            f.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
            f.writelines(json.dumps(record) + "\n" for record in records.values())
        os.replace(temporary, self.path)
        self.file = open(self.path, "a")
        return records

    def append(self, record: dict) -> None:
        """Record one finished video durably before it counts as done."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self, finished: bool) -> None:
        """Close; a finished run's journal is removed (its rows are in the submission)."""
        if self.file:
            self.file.close()
        if finished:
            self.path.unlink(missing_ok=True)


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------------------------- write

def find_videos(folder: Path) -> tuple[list[Path], list[Path]]:
    """Videos anywhere below `folder` (sorted by name then path), and the other files, which are ignored.

    A video is any entry with a video suffix, even one that cannot be opened (a dangling link, a folder):
    it still gets its row.
    """
    videos, ignored = [], []
    for path in folder.rglob("*"):
        if any(parent.suffix.lower() in VIDEO_SUFFIXES for parent in path.relative_to(folder).parents):
            continue  # inside a folder that is itself read as a video
        if path.suffix.lower() in VIDEO_SUFFIXES:
            videos.append(path)
        elif path.is_file():
            ignored.append(path)
    return sorted(videos, key=lambda p: (p.name, str(p))), sorted(ignored)


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
    # surrogateescape writes a file name that is not valid UTF-8 back as the bytes it has on disk
    with tempfile.NamedTemporaryFile("w", newline="", dir=path.parent, prefix=".submission-", suffix=".csv",
                                     delete=False, errors="surrogateescape") as f:
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


def print_timings(outcomes: list[dict]) -> None:
    """Median seconds per video by stage, and the total."""
    per_stage = defaultdict(list)
    for outcome in outcomes:
        seconds = outcome.get("seconds") or {}
        for stage in STAGES:
            per_stage[stage].append(seconds.get(stage, 0.0))
        per_stage["total"].append(sum(seconds.values()))
    if outcomes:
        cells = "  ".join(f"{stage} {statistics.median(values):.3f}" for stage, values in per_stage.items())
        print(f"median seconds per video ({len(outcomes)} videos): {cells}")


# ---------------------------------------------------------------------------------------------- main

def default_ensemble() -> Path:
    """$DEEPFAKE_ENSEMBLE, else the locally built manifest, else the bundle's (ensemble/ensemble.json)."""
    if "DEEPFAKE_ENSEMBLE" in os.environ:
        return Path(os.environ["DEEPFAKE_ENSEMBLE"])
    local = KERNEL_DIR / "artifacts" / "weights" / "ensemble.json"
    if local.is_file() or BUNDLE is None:
        return local
    return BUNDLE / "ensemble" / "ensemble.json"


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
    parser.add_argument("--readers", type=int, default=2, help="threads decoding videos ahead of inference")
    parser.add_argument("--time-budget", type=float,
                        default=KAGGLE_TIME_LIMIT - KAGGLE_SAFETY_MARGIN if on_kaggle else None,
                        help="seconds the whole run may take (default on Kaggle: 9 h less 30 min; else none)")
    parser.add_argument("--journal", type=Path, default=None,
                        help="progress journal for resuming a killed run (default: OUT.progress.jsonl)")
    parser.add_argument("--report", type=Path, default=None, help="write one JSON line per video here")
    parser.add_argument("--sample-submission", type=Path,
                        default=KAGGLE_COMPETITION / "sample_submission.csv" if on_kaggle else None,
                        help="order rows as in this CSV (its videos always get a row)")
    args = parser.parse_args(argv)
    if min(args.frames_per_video, args.readers, args.batch_size or 1) < 1:
        parser.error("--frames-per-video, --readers and --batch-size must be at least 1")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error("--time-budget must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    started = time.perf_counter()
    ensemble_path = args.ensemble or default_ensemble()
    kernel = Kernel(ensemble_path, args.frames_per_video, args.device, args.batch_size, args.readers)
    log.info("loaded %d models on %s in %.1f s", len(kernel.classifiers), kernel.accelerator.device,
             time.perf_counter() - started)

    videos, ignored = find_videos(args.videos)
    log.info("%d videos under %s%s", len(videos), args.videos, f"; ignoring {len(ignored)} other files" if ignored else "")
    fingerprint = {"manifest": weights.sha256_of(ensemble_path), "frames": args.frames_per_video,
                   "videos": str(args.videos.resolve())}
    journal = Journal(args.journal or args.out.with_name(args.out.name + ".progress.jsonl"), fingerprint)
    finished = journal.resume()
    if finished:
        log.info("resuming: %d videos already done in %s", len(finished), journal.path)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
    report = open(args.report, "w") if args.report else None
    labels: dict[str, float] = {}
    outcomes: list[dict] = []  # small per-video summaries for the timing and fallback lines

    def record(entry: dict) -> None:
        labels[entry["filename"]] = entry["label"]
        outcomes.append({key: entry.get(key) for key in ("fallback", "error", "seconds")})
        if report:
            report.write(json.dumps(entry) + "\n")
            report.flush()

    todo, names = [], set()
    for path in videos:
        if path.name in names:
            log.warning("%s: duplicate file name, keeping the first (%s)", path, path.name)
            continue
        names.add(path.name)
        if path.name in finished:
            record(finished[path.name])
        else:
            todo.append(path)
    for path in ignored:
        if report:
            report.write(json.dumps({"filename": path.name, "path": str(path), "ignored": "not a video file"}) + "\n")
    optional = [m.name for m in kernel.ensemble.models if m.optional]
    budget = TimeBudget(args.time_budget, started, len(todo), args.frames_per_video,
                        [m.name for m in kernel.ensemble.models], optional)
    completed = 0
    try:
        # Planned lazily, each job when a reader is free for it, so the plan follows the latest rate.
        for batch in kernel.run(budget.plan(path) for path in todo):
            for result in batch:
                entry = {**result.__dict__, "path": str(todo[completed])}
                completed += 1
                journal.append(entry)
                record(entry)
                log.info("[%d/%d] %s -> %.4f%s", len(labels), len(videos), result.filename, result.label,
                         f" (fallback: {result.error})" if result.fallback else "")
            budget.record(batch)
    except Exception:  # never: but if the loop itself breaks, the videos left still get their rows below
        log.exception("the run stopped after %d of %d videos; the rest get the fallback", len(labels), len(videos))
    finally:
        if report:
            report.close()

    fallback = kernel.fallback
    order = submission_order(sorted(names), args.sample_submission)
    rows = [(name, labels.get(name, fallback)) for name in order]
    write_submission(args.out, rows)
    # kept when videos are missing: a rerun retries them
    journal.close(finished=len(labels) == len(names))
    print_timings(outcomes)
    fallbacks = Counter(outcome["error"] for outcome in outcomes if outcome["fallback"])
    if fallbacks:  # a systematic failure shows up here as one reason repeated, not as a quiet column of 0.5
        print("fallbacks: " + "; ".join(f"{count} x {reason}" for reason, count in fallbacks.most_common()))
    print(f"wrote {len(rows)} rows to {args.out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
