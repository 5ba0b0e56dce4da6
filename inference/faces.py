"""Find faces in decoded frames with the manifest's detector: whole-frame BlazeFace at a few scales, or MTCNN.

The model zoo's detectors (`BlazeFaceDetector`, `MTCNNDetector`) run a network on images; a finder here applies
one to video frames of any size and returns at most `max_faces_per_frame` boxes per frame, best first.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from inference.device import Accelerator
from weights import DetectorSpec, Ensemble
from weights.archs.blazeface import BlazeFaceDetector
from weights.archs.mtcnn import MTCNNDetector

MAX_DETECTOR_SIDE = 4096  # a frame of absurd aspect ratio is scaled down further rather than fill memory


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
                    found[index] = self.in_frame_pixels(detections, size / scanned[index][1])
        return found

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


def make_face_finder(ensemble: Ensemble, accelerator: Accelerator, batch_size: int,
                     threads: int | None = None) -> BlazeFaceFinder | MTCNNFinder:
    """The manifest's detector: whole-frame BlazeFace (on onnxruntime on the CPU where exported, `threads` per
    call), or MTCNN."""
    spec = ensemble.detector
    network = ensemble.build_detector()
    if spec.arch == "mtcnn":
        thresholds = tuple(spec.thresholds) if spec.thresholds is not None else (0.6, 0.7, spec.min_score)
        mtcnn = MTCNNDetector.from_model(network, thresholds=thresholds, downscale=spec.downscale)
        return MTCNNFinder(mtcnn, spec, accelerator)
    blazeface = BlazeFaceDetector(network, min_score=spec.min_score,
                                  network=ensemble.build_detector_onnx(accelerator.device.type, threads))
    return BlazeFaceFinder(blazeface, spec, accelerator, batch_size)
