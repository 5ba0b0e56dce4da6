"""Face detection on 1080p frames: a finer scale finds small faces, and runs only where needed."""
from __future__ import annotations

import numpy as np

import kernel
from bench.small_faces import found, make_detector, scenes_with_face


def test_small_faces_need_the_finer_scale(ensemble_path):
    frames, truths = zip(*scenes_with_face(face_width=40, count=4))
    coarse = make_detector(ensemble_path.parent, "back", 0.65, (1.0,)).detect(list(frames))
    tiled = make_detector(ensemble_path.parent, "back", 0.65, (1.0, 0.5)).detect(list(frames))
    assert sum(found(b, t) for b, t in zip(coarse, truths)) <= 1
    assert all(found(b, t) for b, t in zip(tiled, truths))


def test_finer_scale_runs_only_on_frames_without_a_face(ensemble_path):
    detector = make_detector(ensemble_path.parent, "back", 0.65, (1.0, 0.5))
    frames, truths = zip(*scenes_with_face(face_width=120, count=3))
    empty = np.zeros_like(frames[0])
    images_seen = []
    real_detect = detector.detector.detect

    def counting_detect(batch, forward=None):
        images_seen.extend([tuple(batch.shape[1:3])] * len(batch))
        return real_detect(batch, forward=forward)

    detector.detector.detect = counting_detect
    boxes = detector.detect([*frames, empty])
    # 1080 -> 256 and 1920 -> 455 (padded to 480); the finer scale sees the one empty frame at twice that.
    assert sorted(images_seen) == [(256, 480)] * 4 + [(512, 928)]
    assert all(found(b, t) for b, t in zip(boxes, truths)) and len(boxes[-1]) == 0


def test_boxes_are_in_frame_pixels(ensemble_path):
    detector = make_detector(ensemble_path.parent, "back", 0.65, (1.0,))
    frames, truths = zip(*scenes_with_face(face_width=200, count=2))
    for (box,), truth in zip((b[:1] for b in detector.detect(list(frames))), truths):
        assert abs((box[2] - box[0]) - (truth[2] - truth[0])) < 0.3 * (truth[2] - truth[0])
        assert found(box[None], truth) and box[4] >= 0.65
