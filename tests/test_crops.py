"""inference.crops: face crops with their margin (the detector's or the model's own), resized each model's way,
computed once per distinct preprocessing."""
from __future__ import annotations

import cv2
import numpy as np

from inference.crops import crop, crop_key, fit, pad_box, track_crops
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
    assert crop(frame, np.array([10, 10, 60, 60, 0.9]), margin=0.2).shape[:2] == (60, 60)
    assert crop(frame, np.array([180, 80, 220, 120, 0.8]), margin=0.2).shape[:2] == (24, 24)
    assert crop(frame, np.array([300, 10, 340, 60, 0.8]), margin=0.2) is None  # outside the frame


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


def test_a_models_own_margin_pads_whole_pixels_per_side_as_the_first_place():
    frame = coded(200, 300)
    box = np.array([10.7, 20.2, 40.9, 80.5, 0.9])  # cut to (10, 20, 40, 80): 30 wide, 60 high
    assert pad_box(box, 1 / 3, 200, 300) == (0, 0, 50, 100)  # 30 // 3 = 10 left and right, 60 // 3 = 20 up and down
    assert pad_box(np.array([0, 0, 30, 81]), 1 / 3, 200, 45) == (0, 0, 40, 108)  # 81 // 3 = 27, not 26
    assert pad_box(np.array([30, 30, 40, 40]), 1 / 3, 200, 45) == (27, 27, 43, 43)
    assert pad_box(np.array([100, 100, 140, 140]), 0.25, 200, 300) == (90, 90, 150, 150)  # NTech: box x 1.5
    assert pad_box(np.array([100, 100, 140, 140]), 0.25, 120, 145) == (90, 90, 145, 120)  # clamped at the far side
    face = crop(frame, box, margin=0.2, own_margin=1 / 3)
    assert np.array_equal(face, frame[0:100, 0:50])
    assert np.array_equal(crop(frame, box, margin=0.2), frame[14:87, 7:44])  # the detector's: 10% a side, rounded out


def test_crops_are_computed_once_per_preprocessing_and_clips_can_take_the_track_union():
    frames = {index: coded(120, 160) for index in range(0, 40)}
    video = DecodedVideo(frames, [0, 13, 26, 39], {(4, 1, 1): [[24, 25, 26, 27]]}, "test")
    track = Track({0: np.array([10, 10, 50, 60, 0.9]), 1: np.array([20, 20, 60, 70, 0.9]),
                   2: np.array([30, 30, 70, 80, 0.9]), 3: np.array([40, 40, 80, 90, 0.9])})
    models = [ModelSpec("a", "meso4", "a", "0", InputSpec(64)), ModelSpec("b", "meso4", "b", "0", InputSpec(64)),
              ModelSpec("c", "meso4", "c", "0", InputSpec(64, margin=0.25)),
              ModelSpec("d", "r3d_18", "d", "0", InputSpec(32, frames=4, clips=1, box="track_union", margin=0.0,
                                                           resize="stretch", interpolation="nearest"), kind="clip")]
    crops = track_crops(video, track, models, margin=0.2)
    assert len(crops.faces) == 2 and len(crops.clips) == 1  # a and b share their crops
    assert crops.faces[crop_key(models[0].input)].shape == (4, 64, 64, 3)
    (clips,) = crops.clips.values()
    union = frames[24][10:90, 10:80]  # the union (10, 10, 80, 90) in every frame of the clip
    expected = cv2.resize(union, (32, 32), interpolation=cv2.INTER_NEAREST)
    assert clips.shape == (1, 4, 32, 32, 3) and all(np.array_equal(frame, expected) for frame in clips[0])
    assert np.array_equal(track.union(), [10, 10, 80, 90])
