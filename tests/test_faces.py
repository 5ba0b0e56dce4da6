"""inference.faces: whole frames scaled for the detector; on 1080p frames a finer scale finds small faces, and
runs only where needed."""
from __future__ import annotations

import numpy as np
import pytest

from bench.small_faces import found, make_finder, scenes_with_face
from inference.faces import MAX_DETECTOR_SIDE, face_shift, find_sparse, interpolate, scan_image, steady_pairs


@pytest.mark.parametrize("height,width", [(1080, 1920), (1920, 1080), (720, 1280), (256, 256), (100, 700), (16, 16)])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_scan_image_scales_the_short_side_and_pads_to_the_grid(height, width, scale):
    frame = np.full((height, width, 3), 200, np.uint8)
    image, factor = scan_image(frame, scale, 256, 32)
    content_h, content_w = round(height * factor), round(width * factor)
    assert min(content_h, content_w) == round(256 / scale)  # a square of scale x the short side spans 256 pixels
    assert image.shape[0] % 32 == 0 and image.shape[1] % 32 == 0
    assert image.shape[0] - content_h < 32 and image.shape[1] - content_w < 32
    assert (image[:content_h, :content_w] == 200).all() and image[content_h:].sum() == image[:, content_w:].sum() == 0


def test_scan_image_bounds_a_frame_of_absurd_aspect_ratio():
    image, factor = scan_image(np.zeros((10, 20_000, 3), np.uint8), 1.0, 256, 32)
    assert image.shape == (32, MAX_DETECTOR_SIDE, 3) and factor == MAX_DETECTOR_SIDE / 20_000


def test_small_faces_need_the_finer_scale(ensemble_path):
    frames, truths = zip(*scenes_with_face(face_width=40, count=4))
    coarse = make_finder(ensemble_path.parent, "back", 0.65, (1.0,)).find(list(frames))
    tiled = make_finder(ensemble_path.parent, "back", 0.65, (1.0, 0.5)).find(list(frames))
    assert sum(found(b, t) for b, t in zip(coarse, truths)) <= 1
    assert all(found(b, t) for b, t in zip(tiled, truths))


def test_finer_scale_runs_only_on_frames_without_a_face(ensemble_path):
    finder = make_finder(ensemble_path.parent, "back", 0.65, (1.0, 0.5))
    frames, truths = zip(*scenes_with_face(face_width=120, count=3))
    empty = np.zeros_like(frames[0])
    images_seen = []
    real_detect = finder.detector.detect

    def counting_detect(batch, forward=None):
        images_seen.extend([tuple(batch.shape[1:3])] * len(batch))
        return real_detect(batch, forward=forward)

    finder.detector.detect = counting_detect
    boxes = finder.find([*frames, empty])
    # 1080 -> 256 and 1920 -> 455 (padded to 480); the finer scale sees the one empty frame at twice that.
    assert sorted(images_seen) == [(256, 480)] * 4 + [(512, 928)]
    assert all(found(b, t) for b, t in zip(boxes, truths)) and len(boxes[-1]) == 0


def test_boxes_are_in_frame_pixels(ensemble_path):
    finder = make_finder(ensemble_path.parent, "back", 0.65, (1.0,))
    frames, truths = zip(*scenes_with_face(face_width=200, count=2))
    for (box,), truth in zip((b[:1] for b in finder.find(list(frames))), truths):
        assert abs((box[2] - box[0]) - (truth[2] - truth[0])) < 0.3 * (truth[2] - truth[0])
        assert found(box[None], truth) and box[4] >= 0.65


class ScriptedFinder:
    """A finder that returns scripted boxes per frame (frames are their own indices) and records what it was asked:
    whole-frame passes in `seen`, window passes in `near` with their guesses."""

    def __init__(self, script):
        self.script = script
        self.seen: list[int] = []
        self.near: dict[int, np.ndarray] = {}

    def find(self, frames):
        self.seen.extend(frames)
        return [self.script(frame) for frame in frames]

    def find_near(self, frames, guesses):
        self.near.update(zip(frames, guesses))
        return [self.script(frame) for frame in frames]


def face_at(x: float, y: float, side: float = 100.0, score: float = 0.9) -> np.ndarray:
    return np.array([x, y, x + side, y + side, score], np.float32)


def test_sparse_detection_looks_near_a_steady_face_between_every_kth_frame():
    finder = ScriptedFinder(lambda frame: face_at(500 + frame, 300)[None])  # 0.4 face sizes per 40 frames
    indices = [round(i * 9.6) for i in range(32)]  # the key frames of a 300-frame video
    boxes, detected = find_sparse(finder, indices, indices, every=4)
    assert detected == [0, 4, 8, 12, 16, 20, 24, 28, 31] and finder.seen == [indices[p] for p in detected]
    assert sorted(finder.near) == [indices[p] for p in range(32) if p not in detected]
    for frame, guess in finder.near.items():  # each window is placed on the box interpolated by frame index
        np.testing.assert_allclose(guess[0, :4], face_at(500 + frame, 300)[:4], atol=1e-3)
    assert all(np.array_equal(found, face_at(500 + frame, 300)[None]) for found, frame in zip(boxes, indices))


def test_sparse_detection_runs_whole_frames_between_frames_whose_faces_differ():
    def script(frame):  # a second face enters at frame 6; the first jumps at frame 20
        faces = [face_at(100 if frame < 20 else 900, 100)]
        return np.stack(faces + ([face_at(600, 500, score=0.8)] if frame >= 6 else []))

    finder = ScriptedFinder(script)
    boxes, detected = find_sparse(finder, list(range(32)), list(range(32)), every=4)
    assert detected == [0, 4, 5, 6, 7, 8, 12, 16, 17, 18, 19, 20, 24, 28, 31] == sorted(finder.seen)
    assert sorted(finder.near) == [p for p in range(32) if p not in detected]
    assert [len(b) for b in boxes] == [1] * 6 + [2] * 26


def test_a_face_not_found_near_its_guess_gets_a_whole_frame_pass():
    class MissesNearFrame6(ScriptedFinder):
        def find_near(self, frames, guesses):
            found = super().find_near(frames, guesses)
            return [np.zeros((0, 5), np.float32) if frame == 6 else boxes for frame, boxes in zip(frames, found)]

    finder = MissesNearFrame6(lambda frame: face_at(100, 100)[None])
    boxes, detected = find_sparse(finder, list(range(9)), list(range(9)), every=4)
    assert detected == [0, 4, 6, 8] and finder.seen == [0, 4, 8, 6] and [len(b) for b in boxes] == [1] * 9


def test_no_face_at_either_end_means_every_frame_between_is_seen():
    finder = ScriptedFinder(lambda frame: face_at(50, 50)[None] if frame == 2 else np.zeros((0, 5), np.float32))
    boxes, detected = find_sparse(finder, list(range(9)), list(range(9)), every=4)
    assert detected == list(range(9)) and not finder.near and [len(b) for b in boxes] == [0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_every_one_detects_every_frame():
    finder = ScriptedFinder(lambda frame: face_at(frame, 0)[None])
    _, detected = find_sparse(finder, list(range(5)), list(range(5)), every=1)
    assert detected == finder.seen == list(range(5)) and not finder.near


def test_steady_pairs_match_faces_nearest_first_and_refuse_a_jump():
    left, right = face_at(0, 0), face_at(1000, 0)
    pairs = steady_pairs(np.stack([left, right]), np.stack([right + [20, 0, 20, 0, 0], left + [10, 0, 10, 0, 0]]))
    assert [(a[0], b[0]) for a, b in pairs] == [(0, 10), (1000, 1020)]
    assert steady_pairs(left[None], face_at(60, 0)[None]) is None  # moved 0.6 face sizes: look in between
    assert steady_pairs(left[None], np.stack([left, right])) is None
    midway = interpolate([(face_at(0, 0, score=0.9), face_at(40, 20, score=0.7))], 0.25)
    np.testing.assert_allclose(midway, [[10, 5, 110, 105, 0.7]])


@pytest.mark.parametrize("box", [(200, 100, 229, 129), (0, 0, 30, 30), (440, 230, 455, 256), (100, 50, 250, 200)])
def test_windows_lie_on_the_grid_inside_the_scaled_frame(ensemble_path, box):
    finder = make_finder(ensemble_path.parent, "back", 0.65, (1.0,))
    top, left, height, width = finder.window((256, 480), np.array(box, float))
    grid = finder.detector.alignment
    assert top % grid == left % grid == height % grid == width % grid == 0
    assert 0 <= top and top + height <= 256 and 0 <= left and left + width <= 480
    assert min(height, width) >= min(4 * grid, 256)
    assert top <= box[1] and box[3] <= top + height and left <= box[0] and box[2] <= left + width


def test_a_window_pass_finds_the_boxes_a_whole_frame_pass_finds(ensemble_path):
    finder = make_finder(ensemble_path.parent, "back", 0.65, (1.0, 0.5))
    for width in (40, 120):  # found at the finer scale, and at the coarse one
        frames, truths = zip(*scenes_with_face(face_width=width, count=4, drift=True))
        whole = finder.find(list(frames))
        near = finder.find_near(list(frames), whole)
        for a, b in zip(whole, near):
            assert len(a) == len(b) == 1 and face_shift(a[0], b[0]) < 0.03 and abs(a[0, 4] - b[0, 4]) < 0.1


def test_sparse_detection_finds_a_drifting_face_as_often_as_every_frame(ensemble_path):
    finder = make_finder(ensemble_path.parent, "back", 0.65, (1.0, 0.5))
    frames, truths = zip(*scenes_with_face(face_width=80, count=32, drift=True))  # 32 key frames, as the kernel
    sparse, detected = find_sparse(finder, list(frames), list(range(32)), every=4)
    assert len(detected) < 16
    assert all(found(b, t) for b, t in zip(sparse, truths))


def test_mtcnn_keeps_the_interpolated_boxes_between_whole_frame_passes():
    from inference.faces import MTCNNFinder

    guesses = [face_at(10, 10)[None], face_at(12, 10)[None]]
    assert MTCNNFinder(None, None, None).find_near([None, None], guesses) is guesses
