"""inference.crops: face crops with their margin, letterboxed to the models' square inputs."""
from __future__ import annotations

import numpy as np

from inference.crops import crop, letterbox


def test_letterbox_keeps_aspect_and_centres():
    image = np.full((50, 100, 3), 200, np.uint8)
    boxed = letterbox(image, 256)
    assert boxed.shape == (256, 256, 3)
    rows = np.where(boxed[:, 128, 0] > 0)[0]
    assert rows.min() == 64 and rows.max() == 191  # 128 rows of image, centred


def test_crop_adds_margin_and_clamps():
    frame = np.zeros((100, 200, 3), np.uint8)
    assert crop(frame, np.array([10, 10, 60, 60, 0.9]), margin=0.2).shape[:2] == (60, 60)
    assert crop(frame, np.array([180, 80, 220, 120, 0.8]), margin=0.2).shape[:2] == (24, 24)
    assert crop(frame, np.array([300, 10, 340, 60, 0.8]), margin=0.2) is None  # outside the frame
