"""inference.tracks: faces linked into per-person tracks across key frames, boxes interpolated between them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from inference.faces import face_shift
from inference.tracks import Track, link_tracks
from weights import TrackSpec


def test_face_shift_is_measured_in_face_sizes():
    a = np.array([0, 0, 100, 100, 1.0])
    assert face_shift(a, a + [60, 80, 60, 80, 0]) == pytest.approx(1.0)
    assert face_shift(a, np.array([0, 0, 180, 180, 1.0])) < 1  # a turned face's box shrinks or grows
    assert face_shift(a, np.array([0, 0, 250, 250, 1.0])) == math.inf  # 2.5x the side: another face


def test_link_tracks_follows_people_across_gaps_and_drops_flickers():
    person_a = np.array([100, 100, 200, 200, 0.9], np.float32)
    person_b = np.array([800, 100, 900, 200, 0.9], np.float32)
    flicker = np.array([500, 600, 540, 640, 0.7], np.float32)
    moved = person_a + np.array([10, 0, 10, 0, 0], np.float32)
    frames = [np.stack([person_a, person_b]), np.stack([moved]), np.stack([flicker]),
              np.stack([person_b, moved + [10, 0, 10, 0, 0]]), np.stack([person_a, person_b])]
    tracks = link_tracks(frames, TrackSpec(max_gap=2, min_detections=3))
    assert sorted(sorted(t.boxes) for t in tracks) == [[0, 1, 3, 4], [0, 3, 4]]
    short = link_tracks(frames, TrackSpec(max_gap=0, min_detections=3))
    # without gap tolerance both people break up and nothing reaches 3 detections: the longest pieces stay
    assert sorted(sorted(t.boxes) for t in short) == [[0, 1], [3, 4], [3, 4]]


def test_track_box_is_interpolated_between_detections():
    track = Track({0: np.array([0, 0, 10, 10, 1.0]), 2: np.array([20, 0, 30, 10, 1.0])})
    np.testing.assert_allclose(track.box_at(15, keys=[0, 10, 20]), [15, 0, 25, 10, 1.0])
    np.testing.assert_allclose(track.box_at(40, keys=[0, 10, 20]), [20, 0, 30, 10, 1.0])
