"""inference.faces: whole frames scaled for the detector; on 1080p frames a finer scale finds small faces, and
runs only where needed."""
from __future__ import annotations

import numpy as np
import pytest

from bench.small_faces import found, make_finder, scenes_with_face
from inference.faces import MAX_DETECTOR_SIDE, scan_image


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
