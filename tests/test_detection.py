"""Face detection on 1080p frames: tiling finds small faces, and finer tiles run only where needed."""
from __future__ import annotations

import numpy as np

import kernel
from bench.small_faces import found, make_detector, scenes_with_face


def test_small_faces_need_the_finer_tiles(ensemble_path):
    frames, truths = zip(*scenes_with_face(face_width=40, count=4))
    coarse = make_detector(ensemble_path.parent, "back", 0.65, (1.0,)).detect(list(frames))
    tiled = make_detector(ensemble_path.parent, "back", 0.65, (1.0, 0.5)).detect(list(frames))
    assert sum(found(b, t) for b, t in zip(coarse, truths)) <= 1
    assert all(found(b, t) for b, t in zip(tiled, truths))


def test_finer_tiles_run_only_on_frames_without_a_face(ensemble_path):
    detector = make_detector(ensemble_path.parent, "back", 0.65, (1.0, 0.5))
    frames, truths = zip(*scenes_with_face(face_width=120, count=3))
    empty = np.zeros_like(frames[0])
    images_seen = []
    real_detect = detector.detector.detect

    def counting_detect(batch, forward=None):
        images_seen.append(len(batch))
        return real_detect(batch, forward=forward)

    detector.detector.detect = counting_detect
    boxes = detector.detect([*frames, empty])
    coarse_tiles, fine_tiles = (len(kernel.square_tiles(1080, 1920, (scale,))) for scale in (1.0, 0.5))
    assert (coarse_tiles, fine_tiles) == (3, 15)  # overlapping 1080 tiles; 3 rows x 5 columns of 540 tiles
    assert sum(images_seen) == 4 * coarse_tiles + 1 * fine_tiles
    assert all(found(b, t) for b, t in zip(boxes, truths)) and len(boxes[-1]) == 0
