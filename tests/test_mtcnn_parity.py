"""MTCNN against facenet-pytorch 2.6.0 itself on frames of the shared clips: the same faces, boxes within 0.01 px.

Two settings: facenet's defaults on full frames, and the 1st DFDC solution's call (selimsef/dfdc_deepfake_challenge,
kernel_utils.py): a PIL frame resized to half size with `Image.resize`'s default filter, `MTCNN(margin=0,
thresholds=[0.7, 0.8, 0.8])`, boxes times 2; the port does that with `downscale=0.5`.
facenet-pytorch is installed without its dependencies (requirements-sources.txt: it pins an old torch) and loads
its own copy of the weights; the port loads the ones converted from its wheel, as the kit does.
"""
from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from weights.archs.mtcnn import MTCNNDetector
from weights.registry import create_model
from zootools.convert_torch import MTCNN_NETS, convert_mtcnn
from zootools.sources import read_mtcnn_state

facenet_pytorch = pytest.importorskip("facenet_pytorch")

FIRST_PLACE_THRESHOLDS = (0.7, 0.8, 0.8)
BOX_TOLERANCE = 0.01  # pixels, boxes and landmarks (measured: 0.00012 here, 0.00018 on 66 frames)
SCORE_TOLERANCE = 1e-5  # measured: 9e-7
FRAMES_PER_CLIP = 1


@pytest.fixture(scope="module")
def nets(facenet_wheel) -> dict[str, torch.nn.Module]:
    loaded = {}
    for net in MTCNN_NETS:
        model = create_model(f"mtcnn_{net}")
        model.load_state_dict(convert_mtcnn(read_mtcnn_state(facenet_wheel, net), net), strict=True)
        loaded[net] = model.eval()
    return loaded


@pytest.fixture(scope="module")
def frames(shared) -> list[np.ndarray]:
    """One RGB frame of each shared clip (DFDC: 1080p landscape and portrait, 720p; FaceForensics++: 480p to
    1080p), read with OpenCV as the teams read them, at different points of the clips."""
    clips = sorted((shared / "data" / "dfdc_sample").glob("*/*.mp4"))
    clips += sorted((shared / "data" / "ff_sample").rglob("*.mp4"))
    assert len(clips) >= 8, clips
    found = []
    for number, clip in enumerate(clips):
        found.extend(_read_frames(clip, FRAMES_PER_CLIP, offset=(number % 5 + 1) / 7))
    return found


def _read_frames(path: Path, count: int, offset: float) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    length = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for index in np.linspace(offset * (length - 1), length - 1, count, endpoint=False).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        assert ok, (path, index)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def _facenet(**kwargs):
    return facenet_pytorch.MTCNN(device="cpu", **kwargs)


def _as_found(boxes, probs, points, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """facenet's `detect` output for one image (None when nothing was found) -> (k x 5 boxes, k x 5 x 2 points)."""
    if boxes is None:
        return np.zeros((0, 5)), np.zeros((0, 5, 2))
    return (np.concatenate([boxes * scale, np.asarray(probs, np.float64)[:, None]], axis=1),
            np.asarray(points) * scale)


def _assert_same_faces(mine: list[tuple[np.ndarray, np.ndarray]], theirs: list[tuple[np.ndarray, np.ndarray]],
                       with_points: bool = True) -> tuple[int, float, float]:
    """Same count per frame, and each of my boxes has its own facenet box within the tolerances (facenet orders them
    by area, the port by score); returns (faces, largest box difference, largest score difference)."""
    faces, box_error, score_error = 0, 0.0, 0.0
    for frame, ((boxes, points), (their_boxes, their_points)) in enumerate(zip(mine, theirs)):
        assert len(boxes) == len(their_boxes), (frame, boxes, their_boxes)
        assert np.all(np.diff(boxes[:, 4]) <= 0), boxes  # best first
        unmatched = list(range(len(their_boxes)))
        for box, point in zip(boxes, points):
            distances = [np.abs(box[:4] - their_boxes[j, :4]).max() for j in unmatched]
            j = unmatched.pop(int(np.argmin(distances)))
            box_error = max(box_error, min(distances))
            score_error = max(score_error, abs(box[4] - their_boxes[j, 4]))
            if with_points:
                box_error = max(box_error, np.abs(point - their_points[j]).max())
        faces += len(boxes)
    assert box_error <= BOX_TOLERANCE and score_error <= SCORE_TOLERANCE, (box_error, score_error)
    return faces, box_error, score_error


def test_facenet_is_the_reference_version_with_the_same_weights(nets):
    assert version("facenet-pytorch") == "2.6.0"  # the port follows this version's detect_face step for step
    reference = _facenet()
    for net in MTCNN_NETS:
        theirs = getattr(reference, net).state_dict()
        assert all(torch.equal(tensor, theirs[key]) for key, tensor in nets[net].state_dict().items()), net


@pytest.mark.slow
def test_default_thresholds_on_full_frames_equal_facenet(nets, frames):
    reference = _facenet()
    theirs = [_as_found(*reference.detect(frame, landmarks=True)) for frame in frames]
    detector = MTCNNDetector(nets["pnet"], nets["rnet"], nets["onet"])
    assert detector.thresholds == tuple(reference.thresholds) and detector.factor == reference.factor
    mine = detector.detect_with_landmarks(frames)  # frames of one size share calls
    faces, _, _ = _assert_same_faces(mine, theirs)
    assert faces >= len(frames)  # measured: 15 faces on 11 frames


@pytest.mark.slow
def test_first_place_half_size_call_equals_facenet(nets, frames):
    """The 1st place's face extraction, line for line, against `downscale=0.5` with their thresholds."""
    reference = _facenet(margin=0, thresholds=list(FIRST_PLACE_THRESHOLDS))
    theirs = []
    for frame in frames:
        image = Image.fromarray(frame.astype(np.uint8))
        image = image.resize(size=[s // 2 for s in image.size])
        theirs.append(_as_found(*reference.detect(image, landmarks=True), scale=2.0))
    detector = MTCNNDetector(nets["pnet"], nets["rnet"], nets["onet"], thresholds=FIRST_PLACE_THRESHOLDS,
                             downscale=0.5)
    mine = detector.detect_with_landmarks(frames)
    faces, _, _ = _assert_same_faces(mine, theirs)
    assert faces >= len(frames) - 1  # measured: 12 faces on 11 frames
    # one frame at a time (the kernel's batches vary) gives the same boxes
    for frame, (boxes, _) in zip(frames[:3], mine[:3]):
        np.testing.assert_allclose(detector.detect([frame])[0], boxes, atol=BOX_TOLERANCE, rtol=0)
