"""inference.video: which frames a run reads, and reading them with PyAV, OpenCV or from a folder of images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import inference.video
from bench.samples import SampleSpec, render_frames, set_display_rotation, write_video
from inference.video import read_opencv, read_pyav, read_video, sample_indices


def test_sample_indices_are_evenly_spaced_and_bounded():
    assert sample_indices(300, 4) == [0, 100, 199, 299]
    assert sample_indices(5, 32) == [0, 1, 2, 3, 4]
    assert sample_indices(0, 32) == []


@pytest.mark.slow
def test_pyav_and_opencv_read_the_same_frames(sample_videos):
    path = sample_videos["face_1080p.mp4"]
    geometry = (4, 2, 2)  # 2 clip windows of 4 frames, 2 apart
    pyav = read_pyav(path, 5, [geometry])
    opencv = read_opencv(path, 5, [geometry])
    assert pyav.keys == opencv.keys == [0, 15, 30, 44, 59]
    assert pyav.windows == opencv.windows == {geometry: [[12, 14, 16, 18], [41, 43, 45, 47]]}
    assert sorted(pyav.frames) == sorted(opencv.frames) == [0, 12, 14, 15, 16, 18, 30, 41, 43, 44, 45, 47, 59]
    for index in pyav.frames:
        a, b = pyav.frames[index], opencv.frames[index]
        assert a.shape == b.shape == (1080, 1920, 3)
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 3  # colour conversion differs by rounding only


def test_a_folder_of_frames_is_read_as_a_video(tmp_path):
    folder = tmp_path / "vidtimit" / "fadg0" / "video" / "sa1"
    folder.mkdir(parents=True)
    for index in range(1, 13):  # VidTIMIT names: 001, 002, ... without an extension
        frame = np.full((48, 64, 3), index * 20, np.uint8)
        (folder / f"{index:03d}").write_bytes(cv2.imencode(".jpg", frame)[1].tobytes())
    video = read_video(folder, 4, [(3, 1, 1)])
    assert video.reader == "frames" and video.keys == [0, 4, 7, 11]
    assert video.windows == {(3, 1, 1): [[6, 7, 8]]}
    assert [int(video.frames[k][0, 0, 0]) for k in video.keys] == pytest.approx([20, 100, 160, 240], abs=3)


@pytest.mark.slow
def test_opencv_fallback_when_pyav_fails(sample_videos, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("injected PyAV failure")

    monkeypatch.setattr(inference.video.av, "open", broken)
    video = read_video(sample_videos["face_1080p.mp4"], 4)
    assert video.reader == "opencv" and len(video.keys) == len(video.frames) == 4


def test_rotation_metadata_is_respected(tmp_path):
    spec = SampleSpec("rotated.mp4", 320, 180, 1)
    frames = list(render_frames(spec, 3, face_scale=0.3))
    path = set_display_rotation(write_video(tmp_path / spec.name, frames, 320, 180), 90)
    pyav = read_pyav(path, 3, ())
    opencv = read_opencv(path, 3, ())
    upright = cv2.rotate(frames[0], cv2.ROTATE_90_CLOCKWISE)
    assert pyav.frames[0].shape == opencv.frames[0].shape == (320, 180, 3)
    assert np.abs(pyav.frames[0].astype(int) - upright.astype(int)).mean() < 6
    assert np.abs(pyav.frames[0].astype(int) - opencv.frames[0].astype(int)).mean() < 3
