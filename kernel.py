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
    return blending, weights, BlazeFaceDetector, weighted_nms


blending, weights, BlazeFaceDetector, weighted_nms = _import_runtime()


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

    def __call__(self, module: torch.nn.Module, batch: torch.Tensor):
        """module(batch) on the current device, returned on the CPU; falls back to the CPU once if the device fails."""
        try:
            return self._forward(module, batch)
        except Exception as error:
            if self.device.type == "cpu" or not is_device_error(error):
                raise
            self.fall_back_to_cpu(error)
            return self._forward(module, batch)

    def fall_back_to_cpu(self, error: BaseException) -> None:
        """Move every module to the CPU; the rest of the run stays there."""
        self.fallback_reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        log.warning("device %s failed (%s); continuing on the CPU", self.device, self.fallback_reason)
        self.device = torch.device("cpu")
        for module in self._placed:
            module.to(self.device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _forward(self, module: torch.nn.Module, batch: torch.Tensor):
        if module not in self._placed:
            # channels-last suits the convolutions on CPU and GPU alike (about 1.5-2x on CPU); the
            # HWC crops arrive in that layout already.
            module.to(self.device, memory_format=torch.channels_last)
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
    """The frames sampled from one video (RGB, upright) and where they came from."""

    frames: list[np.ndarray]
    indices: list[int]
    reader: str


def sample_indices(total: int, count: int) -> list[int]:
    """`count` evenly spaced frame indices in [0, total)."""
    if total <= 0:
        return []
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame upright: rotate it by `rotation` degrees counter-clockwise (PyAV's display matrix)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=quarter_turns)) if quarter_turns else frame


def read_frames(path: Path, count: int) -> Clip:
    """Decode `count` evenly spaced frames: PyAV with threaded decoding first, OpenCV grab/retrieve as fallback."""
    try:
        return _read_pyav(path, count)
    except Exception as pyav_error:
        log.info("%s: PyAV failed (%s); trying OpenCV", path.name, pyav_error)
        try:
            return _read_opencv(path, count)
        except Exception as opencv_error:
            raise ValueError(f"cannot decode: PyAV: {pyav_error}; OpenCV: {opencv_error}") from None


def _read_pyav(path: Path, count: int) -> Clip:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if not stream.frames:
            container.seek(0)
        wanted = sample_indices(total, count)
        frames, indices = [], []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames.append(upright(frame.to_ndarray(format="rgb24"), frame.rotation))
                indices.append(index)
                if len(indices) == len(wanted):
                    break
    if not frames:
        raise ValueError("no frame decoded")
    return Clip(frames, indices, "pyav")


def _read_opencv(path: Path, count: int) -> Clip:
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError("OpenCV cannot open the file")
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        wanted = sample_indices(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), count)
        frames, indices = [], []
        for index in range(wanted[-1] + 1 if wanted else 0):
            if not capture.grab():  # grab() skips decoding to RGB: only retrieve() pays for the frames we keep
                break
            if index in wanted:
                ok, bgr = capture.retrieve()
                if ok:
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    indices.append(index)
    finally:
        capture.release()
    if not frames:
        raise ValueError("no frame decoded")
    return Clip(frames, indices, "opencv")


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


# ---------------------------------------------------------------------------------------------- crop

@dataclass
class Face:
    """One detected face: which sampled frame it is in, its box in pixels and the crop with margin."""

    frame: int
    box: np.ndarray
    crop: np.ndarray


def crop_faces(frames: list[np.ndarray], boxes: list[np.ndarray], margin: float) -> list[Face]:
    """Cut each box, widened by `margin` of its size (half on each side), clamped to the frame."""
    faces = []
    for frame_index, (frame, frame_boxes) in enumerate(zip(frames, boxes)):
        height, width = frame.shape[:2]
        for box in frame_boxes:
            x0, y0, x1, y1 = box[:4]
            pad_x, pad_y = (x1 - x0) * margin / 2, (y1 - y0) * margin / 2
            left, top = max(0, int(x0 - pad_x)), max(0, int(y0 - pad_y))
            right, bottom = min(width, int(math.ceil(x1 + pad_x))), min(height, int(math.ceil(y1 + pad_y)))
            if right - left >= 2 and bottom - top >= 2:
                faces.append(Face(frame_index, box, frame[top:bottom, left:right]))
    return faces


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


# ---------------------------------------------------------------------------------------------- predict

class Classifier:
    """One ensemble model with its input spec, turning face crops into P(FAKE)."""

    def __init__(self, spec, module: torch.nn.Module):
        self.spec = spec
        self.module = module
        self.mean = torch.tensor(spec.input.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.input.std).view(1, 3, 1, 1)

    def predict(self, crops: np.ndarray, accelerator: Accelerator, batch_size: int) -> np.ndarray:
        """P(FAKE) for a stack of letterboxed uint8 crops (N, S, S, 3)."""
        scores = []
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[start:start + batch_size]).permute(0, 3, 1, 2).float().div_(255)
            logits = accelerator(self.module, (batch - self.mean) / self.std).reshape(-1)
            if self.spec.positive_class == "REAL":
                logits = -logits
            scores.append(torch.sigmoid(logits).numpy())
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def predict_faces(faces: list[Face], classifiers: list[Classifier], accelerator: Accelerator,
                  batch_size: int) -> dict[str, np.ndarray]:
    """Every model's P(FAKE) for every face; crops are letterboxed once per input size."""
    letterboxed: dict[int, np.ndarray] = {}
    scores = {}
    for classifier in classifiers:
        size = classifier.spec.input.size
        if size not in letterboxed:
            letterboxed[size] = np.stack([letterbox(face.crop, size) for face in faces])
        scores[classifier.spec.name] = classifier.predict(letterboxed[size], accelerator, batch_size)
    return scores


# ---------------------------------------------------------------------------------------------- blend

def video_scores(faces: list[Face], face_scores: dict[str, np.ndarray]) -> dict[str, float]:
    """Per model: a frame scores its most suspicious face, the video the mean of its frames."""
    result = {}
    for name, scores in face_scores.items():
        per_frame: dict[int, float] = {}
        for face, score in zip(faces, scores):
            per_frame[face.frame] = max(per_frame.get(face.frame, 0.0), float(score))
        result[name] = blending.aggregate_frames(list(per_frame.values()))
    return result


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
    frames_read: int = 0
    reader: str | None = None
    faces_per_frame: list[int] = field(default_factory=list)
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
        spec = self.ensemble.detector
        detector = BlazeFaceDetector(self.ensemble.build_detector(), min_score=spec.min_score)
        self.detector = FaceDetector(detector, spec, self.accelerator, self.batch_size)
        self.classifiers = [Classifier(m, self.ensemble.build_model(m)) for m in self.ensemble.models]
        self.blend_weights = {m.name: m.weight for m in self.ensemble.models}

    def process(self, path: Path) -> VideoResult:
        """Score one video; any failure yields the fallback value and the error in the result."""
        blend = self.ensemble.blend
        result = VideoResult(filename=path.name, label=blend.fallback)
        try:
            with timed(result.seconds, "read"):
                clip = read_frames(path, self.frames_per_video)
            result.frames_read, result.reader = len(clip.frames), clip.reader
            with timed(result.seconds, "detect"):
                boxes = self.detector.detect(clip.frames)
            result.faces_per_frame = [len(b) for b in boxes]
            with timed(result.seconds, "crop"):
                faces = crop_faces(clip.frames, boxes, self.ensemble.detector.margin)
            if not faces:
                result.fallback, result.error = True, "no face found"
                return result
            with timed(result.seconds, "predict"):
                face_scores = predict_faces(faces, self.classifiers, self.accelerator, self.batch_size)
            with timed(result.seconds, "blend"):
                scores = video_scores(faces, face_scores)
                result.model_scores = {k: (v if math.isfinite(v) else None) for k, v in scores.items()}
                blended = blending.blend_models(scores, self.blend_weights)
                result.blended = blended if math.isfinite(blended) else None
                result.label = blending.clip_prediction(blended, blend.clip, blend.fallback)
                result.fallback = result.blended is None
        except Exception as error:  # one bad video must never cost the submission
            log.warning("%s: %s: %s; writing the fallback %.2f", path.name, type(error).__name__, error,
                        blend.fallback)
            result.label, result.fallback = blend.fallback, True
            result.error = f"{type(error).__name__}: {error}"
        finally:
            result.device = str(self.accelerator.device)
        return result


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
