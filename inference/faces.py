"""Find faces in decoded frames with the manifest's detector: whole-frame BlazeFace at a few scales, MTCNN, or
RetinaFace (boxes with 5 landmarks).

The model zoo's detectors (`BlazeFaceDetector`, `MTCNNDetector`, `RetinaFaceDetector`) run a network on images; a
finder here applies one to video frames of any size and returns at most `max_faces_per_frame` boxes per frame, best
first: rows [x0, y0, x1, y1, score], RetinaFace's followed by its landmarks [lx0, ly0, ..., lx4, ly4].
`find_sparse` runs a finder's whole-frame pass on every k-th key frame only, and window passes near the faces
between.
"""
from __future__ import annotations

import math
from typing import Protocol

import cv2
import numpy as np
import torch

from inference.device import Accelerator
from weights import DetectorSpec, Ensemble
from weights.archs.blazeface import BlazeFaceDetector, weighted_nms
from weights.archs.mtcnn import MTCNNDetector
from weights.archs.retinaface import RetinaFaceDetector

MAX_DETECTOR_SIDE = 4096  # a frame of absurd aspect ratio is scaled down further rather than fill memory
# Sparse detection looks only near the interpolated boxes between two whole-frame passes whose faces each moved less
# than this many face sizes: a face that moved further may have turned or left, so the frames between get whole-frame
# passes too.
STEADY_SHIFT = 0.5
WINDOW_FACES = 3  # a window around a guessed face spans this many face sizes: the context its anchors see


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


class FaceFinder(Protocol):
    """What `find_sparse` runs: a whole-frame pass, and a cheaper look near guessed boxes."""

    def find(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, an array (k, 5) of [x0, y0, x1, y1, score] in frame pixels, best first; (k, 15) with the
        landmarks after the score where the detector gives them."""

    def find_near(self, frames: list[np.ndarray], guesses: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, the faces found near its guessed boxes, as `find` gives them."""


class BlazeFaceFinder:
    """BlazeFace over whole frames, each scaled so that a square of `scale` x its short side fills the network's
    input: a face is seen at the size it would have in such a square tile, with no seams and no tile overlap.

    Scales run coarse to fine: a finer scale (a larger image, so smaller faces) runs only on the frames where the
    coarser ones found no face, so close-up videos pay for one pass and distant faces are still found.
    """

    def __init__(self, detector: BlazeFaceDetector, spec: DetectorSpec, accelerator: Accelerator, batch_size: int):
        self.detector = detector
        self.spec = spec
        self.accelerator = accelerator
        self.batch_size = batch_size

    def find(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, an array (k, 5) of [x0, y0, x1, y1, score] in frame pixels, best first."""
        boxes = [np.zeros((0, 5), np.float32) for _ in frames]
        pending = list(range(len(frames)))
        for scale in self.spec.scales:
            for frame_index, found in zip(pending, self.find_at_scale([frames[i] for i in pending], scale)):
                boxes[frame_index] = found
            pending = [i for i in pending if not len(boxes[i])]
            if not pending:
                break
        return boxes

    def find_at_scale(self, frames: list[np.ndarray], scale: float) -> list[np.ndarray]:
        """Per frame, its best boxes with the frame seen at one scale (frames of one shape batched together)."""
        size = self.detector.input_size
        scanned = [scan_image(frame, scale, size, self.detector.alignment) for frame in frames]
        detections = self.detect_images([image for image, _ in scanned])
        return [self.in_frame_pixels(found, size / factor) for found, (_, factor) in zip(detections, scanned)]

    def find_near(self, frames: list[np.ndarray], guesses: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, its best boxes found in windows of the scaled frame around the guessed boxes only, scales
        coarse to fine as in `find`. A window is cut from the whole scaled frame on the network's grid, so the face's
        anchors see the pixels a whole-frame pass sees: the boxes are the detector's, at a fraction of its cost."""
        size = self.detector.input_size
        boxes = [np.zeros((0, 5), np.float32) for _ in frames]
        pending = [i for i, guessed in enumerate(guesses) if len(guessed)]
        for scale in self.spec.scales:
            windows, owners = [], []
            for frame_index in pending:
                image, factor = scan_image(frames[frame_index], scale, size, self.detector.alignment)
                for guess in guesses[frame_index]:
                    top, left, height, width = self.window(image.shape[:2], guess[:4] * factor)
                    windows.append(image[top:top + height, left:left + width])
                    owners.append((frame_index, top, left, factor))
            found: dict[int, list[np.ndarray]] = {}
            for (frame_index, top, left, factor), detections in zip(owners, self.detect_images(windows)):
                if len(detections):
                    detections = detections.copy()
                    detections[:, [0, 2]] = (detections[:, [0, 2]] * size + top) / factor  # ymin, ymax
                    detections[:, [1, 3]] = (detections[:, [1, 3]] * size + left) / factor  # xmin, xmax
                    found.setdefault(frame_index, []).append(detections)
            for frame_index, parts in found.items():  # windows of two close faces overlap: one box per face
                boxes[frame_index] = self.in_frame_pixels(weighted_nms(np.concatenate(parts)), 1.0)
            pending = [i for i in pending if not len(boxes[i])]
            if not pending:
                break
        return boxes

    def window(self, shape: tuple[int, int], box: np.ndarray) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a window on the network's grid around a box (scaled-frame pixels):
        WINDOW_FACES face sizes wide, at least 4 grid cells, inside the scaled frame."""
        grid = self.detector.alignment
        side = max(4 * grid, grid * math.ceil(WINDOW_FACES * max(box[2] - box[0], box[3] - box[1]) / grid))

        def span(centre: float, length: int) -> tuple[int, int]:
            extent = min(side, length)
            return min(max(0, grid * math.floor((centre - extent / 2) / grid)), length - extent), extent

        (top, height), (left, width) = span((box[1] + box[3]) / 2, shape[0]), span((box[0] + box[2]) / 2, shape[1])
        return top, left, height, width

    def detect_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The detector's raw detections per image (units of its input size), images of one shape batched."""
        size = self.detector.input_size
        detections: list[np.ndarray] = [np.zeros((0, 17), np.float32) for _ in images]
        by_shape: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(index)
        for (height, width, _), members in by_shape.items():
            # batch_size counts S x S images, and bounds the count of smaller ones: small batches stay in cache
            per_batch = max(1, min(self.batch_size, self.batch_size * size * size // (height * width)))
            for start in range(0, len(members), per_batch):
                chunk = members[start:start + per_batch]
                batch = torch.from_numpy(np.stack([images[i] for i in chunk]))
                for index, found in zip(chunk, self.detector.detect(batch, forward=self.accelerator)):
                    detections[index] = found
        return detections

    def in_frame_pixels(self, detections: np.ndarray, pixels_per_unit: float) -> np.ndarray:
        """[ymin, xmin, ymax, xmax, ..., score] in units of the input size -> the best [x0, y0, x1, y1, score]."""
        boxes = np.concatenate([detections[:, [1, 0, 3, 2]] * pixels_per_unit, detections[:, -1:]], axis=1)
        return boxes[np.argsort(-boxes[:, 4], kind="stable")][: self.spec.max_faces_per_frame].astype(np.float32)


class MTCNNFinder:
    """MTCNN (facenet-pytorch's algorithm) over whole frames, a few frames per call to bound memory; with the
    manifest's `downscale` 0.5 and thresholds (0.7, 0.8, 0.8) it detects as the 1st DFDC solution did, on half-size
    frames (see `MTCNNDetector`)."""

    frames_per_call = 16

    def __init__(self, detector: MTCNNDetector, spec: DetectorSpec, accelerator: Accelerator):
        self.detector = detector
        self.spec = spec
        self.accelerator = accelerator

    def find(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, an array (k, 5) of [x0, y0, x1, y1, score] in frame pixels, best first."""
        found = []
        for start in range(0, len(frames), self.frames_per_call):
            found.extend(self.detector.detect(frames[start:start + self.frames_per_call], forward=self.accelerator))
        return [boxes[: self.spec.max_faces_per_frame] for boxes in found]

    def find_near(self, frames: list[np.ndarray], guesses: list[np.ndarray]) -> list[np.ndarray]:
        """The guessed boxes themselves: MTCNN's pyramid has no cheap local pass, so sparse detection interpolates."""
        return guesses


class RetinaFaceFinder:
    """RetinaFace (biubug6's detect.py) over whole frames resized by the manifest's `downscale`: boxes with RetinaFace's
    5 landmarks, (k, 15) per frame."""

    def __init__(self, detector: RetinaFaceDetector, spec: DetectorSpec, accelerator: Accelerator):
        self.detector = detector
        self.spec = spec
        self.accelerator = accelerator

    def find(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame, an array (k, 15) of [x0, y0, x1, y1, score, lx0, ly0, ..., lx4, ly4] in frame pixels, best
        first."""
        return [found[: self.spec.max_faces_per_frame] for found in self.detector.detect(frames, self.accelerator)]

    def find_near(self, frames: list[np.ndarray], guesses: list[np.ndarray]) -> list[np.ndarray]:
        """The guessed boxes and landmarks themselves, as for MTCNN: a window of 3 face sizes around a DFDC close-up
        is about as large as the downscaled frame, so a window pass would cost what a whole-frame pass costs."""
        return guesses


def make_face_finder(ensemble: Ensemble, accelerator: Accelerator, batch_size: int,
                     threads: int | None = None) -> FaceFinder:
    """The manifest's detector: whole-frame BlazeFace (on onnxruntime on the CPU where exported, `threads` per
    call), MTCNN or RetinaFace."""
    spec = ensemble.detector
    network = ensemble.build_detector()
    if spec.arch.startswith("retinaface_"):
        retinaface = RetinaFaceDetector(network, spec.min_score, spec.bgr_mean, spec.downscale)
        return RetinaFaceFinder(retinaface, spec, accelerator)
    if spec.arch == "mtcnn":
        thresholds = tuple(spec.thresholds) if spec.thresholds is not None else (0.6, 0.7, spec.min_score)
        mtcnn = MTCNNDetector.from_model(network, thresholds=thresholds, downscale=spec.downscale)
        return MTCNNFinder(mtcnn, spec, accelerator)
    blazeface = BlazeFaceDetector(network, min_score=spec.min_score,
                                  network=ensemble.build_detector_onnx(accelerator.device.type, threads))
    return BlazeFaceFinder(blazeface, spec, accelerator, batch_size)


def find_sparse(finder: FaceFinder, frames: list[np.ndarray], indices: list[int],
                every: int) -> tuple[list[np.ndarray], list[int]]:
    """Boxes per frame, running the whole-frame detector only on every `every`-th frame and the last. Between two
    of those whose faces pair up steadily, each face is looked for only near its box interpolated by frame index
    (`indices`; `finder.find_near`); elsewhere the frames between get whole-frame passes too, as does a frame
    where a face was not found near its guess. Also returns the positions of the frames that got a whole-frame
    pass."""
    if every <= 1 or len(frames) <= 2:
        return finder.find(frames), list(range(len(frames)))
    anchors = sorted({*range(0, len(frames), every), len(frames) - 1})
    boxes = dict(zip(anchors, finder.find([frames[i] for i in anchors])))
    unsure, guessed = [], {}
    for first, last in zip(anchors, anchors[1:]):
        pairs = steady_pairs(boxes[first], boxes[last])
        for position in range(first + 1, last):
            if pairs is None:
                unsure.append(position)
            else:
                weight = (indices[position] - indices[first]) / (indices[last] - indices[first])
                guessed[position] = interpolate(pairs, weight)
    boxes.update(zip(guessed, finder.find_near([frames[i] for i in guessed], list(guessed.values()))))
    unsure += [i for i in guessed if len(boxes[i]) < len(guessed[i])]  # a face lost near its guess: look everywhere
    boxes.update(zip(unsure, finder.find([frames[i] for i in unsure])))
    return [boxes[i] for i in range(len(frames))], sorted(anchors + unsure)


def steady_pairs(first: np.ndarray, last: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The faces of two frames paired nearest first, or None unless both have the same faces (at least one), each
    within STEADY_SHIFT face sizes of its pair: a face lost, or a new one, means the frames between must be seen."""
    if len(first) != len(last) or not len(first):
        return None
    pairs = pair_nearest(first, last, STEADY_SHIFT)
    return [(first[i], last[j]) for i, j in pairs] if len(pairs) == len(first) else None


def pair_nearest(firsts, lasts, max_shift: float) -> list[tuple[int, int]]:
    """Greedy pairing of two lists of face boxes, nearest (`face_shift`) first, each box in one pair at most and no
    pair more than `max_shift` face sizes apart: (index in firsts, index in lasts) in the order they were paired."""
    candidates = sorted((face_shift(a, b), i, j) for i, a in enumerate(firsts) for j, b in enumerate(lasts))
    pairs, taken_first, taken_last = [], set(), set()
    for shift, i, j in candidates:
        if shift > max_shift:
            break
        if i not in taken_first and j not in taken_last:
            pairs.append((i, j))
            taken_first.add(i)
            taken_last.add(j)
    return pairs


def interpolate(pairs: list[tuple[np.ndarray, np.ndarray]], weight: float) -> np.ndarray:
    """Boxes (and landmarks, where the rows have them) `weight` of the way from each pair's first row to its last,
    scored by the lower of the two, best first."""
    boxes = np.array([(1 - weight) * a + weight * b for a, b in pairs], np.float32).reshape(len(pairs), -1)
    boxes[:, 4] = [min(a[4], b[4]) for a, b in pairs]
    return boxes[np.argsort(-boxes[:, 4], kind="stable")]


def face_shift(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two face boxes are, in face sizes (sqrt of area); inf when one is over twice the other's side.

    BlazeFace's box of one face shrinks by up to half on turned or half-hidden faces (seen on DFDC videos).
    """
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    if min(area_a, area_b) <= 0 or max(area_a, area_b) > 4 * min(area_a, area_b):
        return math.inf
    distance = math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return distance / ((math.sqrt(area_a) + math.sqrt(area_b)) / 2)
