"""inference.crops: face crops with their margin (the detector's or the model's own), resized each model's way,
computed once per distinct preprocessing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.crops import crop, crop_key, fit, margin_box, track_crops
from inference.tracks import Track
from inference.video import DecodedVideo
from weights import InputSpec, ModelSpec


def test_letterbox_keeps_aspect_and_centres():
    image = np.full((50, 100, 3), 200, np.uint8)
    boxed = fit(image, InputSpec(256))  # the default: letterbox
    assert boxed.shape == (256, 256, 3)
    rows = np.where(boxed[:, 128, 0] > 0)[0]
    assert rows.min() == 64 and rows.max() == 191  # 128 rows of image, centred


def test_crop_adds_margin_and_clamps():
    frame = np.zeros((100, 200, 3), np.uint8)
    detector_only = InputSpec(64)
    assert crop(frame, np.array([10, 10, 60, 60, 0.9]), detector_only, 0.2).shape[:2] == (60, 60)
    assert crop(frame, np.array([180, 80, 220, 120, 0.8]), detector_only, 0.2).shape[:2] == (24, 24)
    assert crop(frame, np.array([300, 10, 340, 60, 0.8]), detector_only, 0.2) is None  # outside the frame


# ---------------------------------------------------------------------------------------------- per-model preprocessing

def coded(height: int = 6, width: int = 4) -> np.ndarray:
    """A small image whose pixels say where they are: (row, col) -> [10 row + col, row, col]."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([10 * rows + cols, rows, cols], axis=-1).astype(np.uint8)


def spec(**fields) -> InputSpec:
    return InputSpec(**{"interpolation": "nearest", **fields})


def test_letterbox_centres_and_pads_with_zeros():
    image = coded()
    out = fit(image, spec(size=6))  # 6 x 4 already fits: unchanged, one black column each side
    assert out.shape == (6, 6, 3)
    assert np.array_equal(out[:, 1:5], image) and not out[:, [0, 5]].any()
    out = fit(image, spec(size=12))  # doubled (each pixel 2 x 2), two black columns each side
    assert np.array_equal(out[:, 2:10], image.repeat(2, axis=0).repeat(2, axis=1)) and not out[:, [0, 1, 10, 11]].any()


def test_pad_bottom_right_keeps_the_face_at_the_top_left():
    image = coded()
    out = fit(image, spec(size=6, resize="pad_bottom_right"))
    assert np.array_equal(out[:, :4], image) and not out[:, 4:].any()
    out = fit(image, spec(size=3, resize="pad_bottom_right", resize_to=6))  # the 6 x 6 square, centre crop 3 x 3
    assert np.array_equal(out, np.pad(image, ((0, 0), (0, 2), (0, 0)))[1:4, 1:4])


def test_stretch_ignores_the_aspect():
    out = fit(coded(), spec(size=[3, 2], resize="stretch"))  # every other row and column (nearest)
    assert np.array_equal(out, coded()[::2, ::2])
    assert fit(coded(), spec(size=8, resize="stretch")).shape == (8, 8, 3)


def test_short_side_center_crop_scales_the_short_side_then_pads_or_crops():
    image = coded()  # 6 x 4: the short side is the width
    out = fit(image, spec(size=[4, 2], resize="short_side_center_crop", resize_to=2))  # 3 x 2, one black row below
    assert np.array_equal(out[:3], image[::2, ::2]) and not out[3].any()
    out = fit(image, spec(size=[2, 2], resize="short_side_center_crop", resize_to=2))  # 3 x 2, the top 2 rows
    assert np.array_equal(out, image[::2, ::2][:2])
    out = fit(image, spec(size=[4, 4], resize="short_side_center_crop", resize_to=4))  # unchanged, rows 1-4
    assert np.array_equal(out, image[1:5])


def test_resize_center_crop():
    out = fit(coded(), spec(size=2, resize="resize_center_crop", resize_to=[6, 4]))
    assert np.array_equal(out, coded()[2:4, 1:3])
    out = fit(coded(), spec(size=[3, 2], resize="resize_center_crop", resize_to=[6, 4]))  # odd pixel: one more below
    assert np.array_equal(out, coded()[1:4, 1:3])


def test_shrinking_and_enlarging_use_their_own_filter():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    both = InputSpec(size=[10, 15], resize="stretch", interpolation=["area", "cubic"])
    assert np.array_equal(fit(image, both), cv2.resize(image, (15, 10), interpolation=cv2.INTER_AREA))
    larger = InputSpec(size=[40, 60], resize="stretch", interpolation=["area", "cubic"])
    assert np.array_equal(fit(image, larger), cv2.resize(image, (60, 40), interpolation=cv2.INTER_CUBIC))
    default = InputSpec(size=[40, 60], resize="stretch")  # the kernel's own: area, then linear
    assert np.array_equal(fit(image, default), cv2.resize(image, (60, 40), interpolation=cv2.INTER_LINEAR))


def own(margin: float, **fields) -> InputSpec:
    return InputSpec(64, margin=margin, **fields)


def test_a_models_own_margin_floors_whole_pixels_per_side_as_the_first_place():
    frame = coded(200, 300)
    box = np.array([10.7, 20.2, 40.9, 80.5, 0.9])  # cut to (10, 20, 40, 80): 30 wide, 60 high
    third = own(1 / 3)  # the default cut: floor
    assert margin_box(box, third, 200, 300) == (0, 0, 50, 100)  # 30 // 3 = 10 left and right, 60 // 3 = 20 up and down
    assert margin_box(np.array([0, 0, 30, 81]), third, 200, 45) == (0, 0, 40, 108)  # 81 // 3 = 27, not 26
    assert margin_box(np.array([30, 30, 40, 40]), third, 200, 45) == (27, 27, 43, 43)
    assert margin_box(np.array([100, 100, 140, 140]), own(0.25), 120, 145) == (90, 90, 145, 120)  # clamped far side
    assert np.array_equal(crop(frame, box, third, 0.2), frame[0:100, 0:50])
    assert np.array_equal(crop(frame, box, InputSpec(64), 0.2), frame[14:87, 7:44])  # the detector's, rounded out


def test_an_exact_margin_widens_the_box_before_its_corners_are_cut():
    box = np.array([100.6, 100.2, 140.3, 140.9])  # NTech: x1.5 about the centre, then int()
    width, height = 140.3 - 100.6, 140.9 - 100.2
    expected = (int(100.6 - width / 4), int(100.2 - height / 4), int(140.3 + width / 4), int(140.9 + height / 4))
    assert margin_box(box, own(0.25, margin_cut="exact"), 1000, 1000) == expected == (90, 90, 150, 151)
    assert margin_box(box, own(0.25), 1000, 1000) == (90, 90, 150, 150)  # floor: the box cut first, 40 // 4 = 10


def test_an_exact_margin_cuts_where_ntechs_float64_arithmetic_cut():
    from tests.team_reference import ntech_crop

    frame = coded(480, 640)
    spec = own(0.25, margin_cut="exact")
    rng = np.random.default_rng(1)
    for _ in range(2000):  # boxes reaching into the frame (their slicing wraps a corner left of 0 around)
        x0, y0 = rng.uniform(-20, 600), rng.uniform(-20, 440)
        box = np.array([x0, y0, x0 + rng.uniform(30, 300), y0 + rng.uniform(30, 300)], np.float32)
        assert np.array_equal(crop(frame, box, spec, 0.2), ntech_crop(frame, box)), box


def test_a_rounded_margin_of_the_height_per_side_multiple_as_polimi():
    from tests.team_reference import polimi_corners

    spec = own(0.2, margin_sides=(1, 2, 1, 1), margin_of="height", margin_cut="round")
    box = np.array([100.0, 50.0, 160.0, 112.5], np.float32)  # 62.5 high: 0.2 x 62.5 = 12.5 rounds to 12 (even)
    assert margin_box(box, spec, 480, 640) == (88, 26, 172, 124) == polimi_corners(box, 480, 640)
    rng = np.random.default_rng(0)
    for _ in range(2000):  # boxes of any size and place, clamped anywhere; float32 arithmetic whatever the box's type
        x0, y0 = rng.uniform(-20, 600, 2)
        box = np.array([x0, y0, x0 + rng.uniform(2, 300), y0 + rng.uniform(2, 300)], np.float32)
        assert margin_box(box, spec, 480, 640) == polimi_corners(box, 480, 640), box
        assert margin_box(box.astype(np.float64), spec, 480, 640) == polimi_corners(box, 480, 640), box


def test_truncated_sides_as_the_first_place_resized():
    image = np.random.default_rng(0).integers(0, 256, (432, 391, 3), dtype=np.uint8)
    truncated = fit(image, InputSpec(380, rounding="truncate"))  # 391 x 380 / 432 = 343.9: 343 wide
    rounded = fit(image, InputSpec(380))  # 344 wide
    filled = np.flatnonzero(truncated.any(axis=(0, 2)))  # 343 columns from (380 - 343) // 2 = 18
    assert filled.min() == 18 and filled.max() == 360
    filled = np.flatnonzero(rounded.any(axis=(0, 2)))  # 344 columns, also from 18: one pixel more shifts the rest
    assert filled.min() == 18 and filled.max() == 361
    resized = cv2.resize(image, (343, 380), interpolation=cv2.INTER_AREA)
    assert np.array_equal(truncated[:, 18:361], resized)


def test_reflected_pad_is_opencvs_reflect_101():
    image = coded(6, 8)  # short side 6 -> 4: 4 x 5 (5.33 rounded), padded to 8 x 4 by reflection, cropped to width 4
    spec = InputSpec([8, 4], resize="short_side_center_crop", resize_to=4, interpolation="nearest", pad="reflect")
    small = cv2.resize(image, (5, 4), interpolation=cv2.INTER_NEAREST)
    expected = cv2.copyMakeBorder(small, 2, 2, 0, 0, cv2.BORDER_REFLECT_101)[:, 0:4]
    assert np.array_equal(fit(image, spec), expected)
    zero = fit(image, InputSpec([8, 4], resize="short_side_center_crop", resize_to=4, interpolation="nearest"))
    assert np.array_equal(zero[2:6], expected[2:6]) and not zero[[0, 1, 6, 7]].any()


def test_pad_stretch_pads_only_a_short_side_then_stretches():
    image = coded(3, 10)  # height 3 < 6: padded to 6 x 10 (1 row above, 2 below), then stretched to 6 x 6
    padded = np.pad(image, ((1, 2), (0, 0), (0, 0)))
    expected = cv2.resize(padded, (6, 6), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(fit(image, spec(size=6, resize="pad_stretch")), expected)
    tall = coded(12, 8)  # both sides long enough: a plain stretch
    assert np.array_equal(fit(tall, spec(size=6, resize="pad_stretch")),
                          cv2.resize(tall, (6, 6), interpolation=cv2.INTER_NEAREST))


def test_float64_precision_resizes_in_float_and_truncates():
    image = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    spec64 = InputSpec(32, resize="stretch", interpolation="linear", precision="float64")
    expected = cv2.resize(image.astype(np.float64), (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    assert np.array_equal(fit(image, spec64), expected)
    eight_bit = fit(image, InputSpec(32, resize="stretch", interpolation="linear"))
    assert (eight_bit.astype(int) - expected).max() == 1  # OpenCV's 8-bit path rounds; the float path truncates


@pytest.mark.parametrize("field, value", [("margin_sides", (1, 2, 1, 1)), ("margin_of", "height"),
                                          ("margin_cut", "exact"), ("rounding", "truncate"), ("pad", "reflect"),
                                          ("precision", "float64")])
def test_each_preprocessing_field_keys_its_own_crops(field, value):
    assert crop_key(InputSpec(64, margin=0.2)) != crop_key(InputSpec(64, margin=0.2, **{field: value}))


def test_crops_are_computed_once_per_preprocessing_and_clips_can_take_the_track_union():
    frames = {index: coded(120, 160) for index in range(0, 40)}
    video = DecodedVideo(frames, [0, 13, 26, 39], {(4, 1, 1, 0.0, 0, 0): [[24, 25, 26, 27]]}, "test")
    track = Track({0: np.array([10, 10, 50, 60, 0.9]), 1: np.array([20, 20, 60, 70, 0.9]),
                   2: np.array([30, 30, 70, 80, 0.9]), 3: np.array([40, 40, 80, 90, 0.9])})
    models = [ModelSpec("a", "meso4", "a", "0", InputSpec(64)), ModelSpec("b", "meso4", "b", "0", InputSpec(64)),
              ModelSpec("c", "meso4", "c", "0", InputSpec(64, margin=0.25)),
              ModelSpec("d", "r3d_18", "d", "0", InputSpec(32, frames=4, clips=1, box="track_union", margin=0.0,
                                                           resize="stretch", interpolation="nearest"), kind="clip")]
    crops = track_crops(video, track, models, detector_margin=0.2)
    assert len(crops.faces) == 2 and len(crops.clips) == 1  # a and b share their crops
    assert crops.faces[crop_key(models[0].input)].shape == (4, 64, 64, 3)
    (clips,) = crops.clips.values()
    union = frames[24][10:90, 10:80]  # the union (10, 10, 80, 90) in every frame of the clip
    expected = cv2.resize(union, (32, 32), interpolation=cv2.INTER_NEAREST)
    assert clips.shape == (1, 4, 32, 32, 3) and all(np.array_equal(frame, expected) for frame in clips[0])
    assert np.array_equal(track.union(), [10, 10, 80, 90])


@pytest.mark.parametrize("field, value, message", [
    ("margin_sides", (1, 2, 1), "margin_sides must be four numbers"),
    ("margin_sides", (1, -2, 1, 1), "margin_sides must be"),
    ("margin_of", "diagonal", "margin_of must be one of"), ("margin_cut", "ceil", "margin_cut must be one of"),
    ("rounding", "up", "rounding must be one of"), ("pad", "edge", "pad must be one of"),
    ("precision", "float16", "precision must be one of"), ("resize", "squash", "resize must be one of")])
def test_a_bad_preprocessing_value_is_named(field, value, message):
    from weights import WeightsError

    with pytest.raises(WeightsError, match=f"model m: input {message}"):
        ModelSpec("m", "meso4", "m", "0", InputSpec(64, **{field: value}))
