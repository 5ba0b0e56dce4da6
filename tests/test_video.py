"""inference.video: which frames a run reads, and reading them with PyAV, OpenCV or from a folder of images."""
from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

import inference.video
from bench.samples import SampleSpec, render_frames, set_display_rotation, write_video
from inference.video import (
    Timeline,
    h264_references,
    needed_packets,
    read_opencv,
    read_pyav,
    read_video,
    sample_indices,
    slice_reference,
)
from weights import DecodeSpec

EXACT = DecodeSpec(sampling="exact")


def test_sample_indices_are_evenly_spaced_and_bounded():
    assert sample_indices(300, 4) == [0, 100, 199, 299]
    assert sample_indices(5, 32) == [0, 1, 2, 3, 4]
    assert sample_indices(0, 32) == []


def test_sample_indices_move_to_the_nearest_cheap_frame_within_half_the_spacing():
    assert sample_indices(10, 3, cheap=[0, 2, 4, 6, 8]) == [0, 4, 8]
    assert sample_indices(9, 3, cheap=[0, 3, 5, 8]) == [0, 3, 8]  # 4 sits between 3 and 5: the earlier wins
    assert sample_indices(10, 4, cheap=[0, 9]) == [0, 3, 6, 9]  # 3 and 6 have no cheap frame within reach
    assert sample_indices(300, 32, cheap=list(range(0, 300, 2)))[:4] == [0, 10, 18, 28]
    assert sample_indices(5, 32, cheap=[0, 2]) == [0, 1, 2, 3, 4]  # asked for more than there are: all of them
    assert len(sample_indices(300, 32, cheap=[150])) == 32  # frame counts stay what was asked


def test_slice_reference_reads_nal_ref_idc_of_length_prefixed_and_annex_b_packets():
    idr = bytes([0, 0, 0, 2, 0x65, 0x88])  # nal_ref_idc 3, type 5 (IDR slice)
    b_frame = bytes([0, 0, 0, 2, 0x01, 0x9E])  # nal_ref_idc 0, type 1: nothing refers to it
    sei_then_p = bytes([0, 0, 0, 2, 0x06, 0x05, 0, 0, 0, 2, 0x41, 0x9A])  # SEI, then a reference slice
    assert slice_reference(memoryview(idr), 4) is True
    assert slice_reference(memoryview(b_frame), 4) is False
    assert slice_reference(memoryview(sei_then_p), 4) is True
    assert slice_reference(memoryview(bytes([0, 0, 0, 2, 0x06, 0x05])), 4) is None  # no slice at all
    annex_b = b"\x00\x00\x00\x01\x09\xf0\x00\x00\x01\x01\x9e"  # access unit delimiter, non-reference slice
    assert slice_reference(memoryview(annex_b), None) is False
    assert h264_references([idr, b_frame], bytes([1, 0x64, 0, 0x28, 0xFF])) == [True, False]
    assert h264_references([idr, bytes([0, 0, 0, 2, 0x06, 0x05])], bytes([1, 0x64, 0, 0x28, 0xFF])) is None


def test_needed_packets_skip_what_no_wanted_frame_depends_on():
    shown = [0, 3, 1, 2, 6, 4, 5]  # display index of each packet, in decode order (I P B B P B B)
    references = [True, True, False, False, True, False, False]
    assert needed_packets(shown, references, {0, 3}) == [0, 1]
    assert needed_packets(shown, references, {0, 2, 6}) == [0, 1, 3, 4]
    assert needed_packets(shown, references, {5}) == [0, 1, 4, 6]


def b_frame_clip(path, frames=90, **options):
    """A small noisy H.264 clip with B-frames (x264's defaults: B-pyramid, so some B-frames are references)."""
    rng = np.random.default_rng(0)
    spec = SampleSpec(path.name, 320, 176, 1)
    noisy = (np.clip(f.astype(int) + rng.integers(-12, 13, f.shape), 0, 255).astype(np.uint8)
             for f in render_frames(spec, frames, face_scale=0.3))
    return write_video(path, noisy, 320, 176, **options)


def all_frames(path):
    with av.open(str(path)) as container:
        return {index: frame.to_ndarray(format="rgb24") for index, frame in enumerate(container.decode(video=0))}


@pytest.mark.parametrize("name", ["clip.mp4", "clip.ts"])  # avcC length prefixes; Annex B start codes
def test_reference_sampling_decodes_exactly_the_frames_full_decoding_gives(tmp_path, name):
    path = b_frame_clip(tmp_path / name)
    geometry = Timeline(5, 1, 1)
    video = read_pyav(path, 8, [geometry])
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [packet for packet in container.demux(stream) if packet.size]
        references = h264_references(packets, stream.codec_context.extradata)
        shown = inference.video.display_indices(packets)
    reference_frames = {index for index, reference in zip(shown, references) if reference}
    assert video.sampling == "reference" and 0 < len(reference_frames) < len(packets)
    assert len(video.keys) == 8 and set(video.keys) <= reference_frames
    for key, target in zip(video.keys, sample_indices(len(packets), 8)):
        assert abs(key - target) <= (len(packets) - 1) / 7 / 2
    (window,) = video.windows[geometry]
    assert set(window) - reference_frames  # a clip model's window holds frames nothing depends on: decoded too
    full = all_frames(path)
    assert set(video.frames) == set(video.keys) | set(window)
    for index, frame in video.frames.items():
        assert np.array_equal(frame, full[index]), index


def test_exact_sampling_reads_the_evenly_spaced_frames(tmp_path):
    path = b_frame_clip(tmp_path / "clip.mp4")
    video = read_pyav(path, 8, (), EXACT)
    assert video.sampling == "exact" and video.keys == sample_indices(90, 8)
    full = all_frames(path)
    assert all(np.array_equal(video.frames[k], full[k]) for k in video.keys)


def test_a_stream_whose_references_are_unknown_is_sampled_exactly(tmp_path):
    path = tmp_path / "mpeg4.mp4"
    with av.open(str(path), "w") as container:  # MPEG-4 Part 2: the reader cannot tell its references
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for frame in render_frames(SampleSpec("mpeg4.mp4", 160, 96, 1), 40, face_scale=0.3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    video = read_pyav(path, 5, ())
    assert video.sampling == "exact" and video.keys == sample_indices(40, 5)


def test_skipping_deblocking_changes_the_pixels_a_little(tmp_path):
    path = b_frame_clip(tmp_path / "clip.mp4", bitrate=150_000)  # a low bitrate: blocks the filter would smooth
    filtered = read_pyav(path, 8, ())
    unfiltered = read_pyav(path, 8, (), DecodeSpec(deblocking=False))
    assert unfiltered.keys == filtered.keys
    differences = [np.abs(unfiltered.frames[k].astype(int) - filtered.frames[k].astype(int)).mean()
                   for k in filtered.keys[1:]]
    assert 0 < np.mean(differences) < 8


@pytest.mark.slow
def test_pyav_and_opencv_read_the_same_frames(sample_videos):
    path = sample_videos["face_1080p.mp4"]
    geometry = Timeline(4, 2, 2)  # 2 clip windows of 4 frames, 2 apart
    pyav = read_pyav(path, 5, [geometry], EXACT)
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
    video = read_video(folder, 4, [Timeline(3, 1, 1)])
    assert video.reader == "frames" and video.keys == [0, 4, 7, 11]
    assert video.windows == {Timeline(3, 1, 1): [[6, 7, 8]]}
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
    pyav = read_pyav(path, 3, (), EXACT)
    opencv = read_opencv(path, 3, ())
    upright = cv2.rotate(frames[0], cv2.ROTATE_90_CLOCKWISE)
    assert pyav.frames[0].shape == opencv.frames[0].shape == (320, 180, 3)
    assert np.abs(pyav.frames[0].astype(int) - upright.astype(int)).mean() < 6
    assert np.abs(pyav.frames[0].astype(int) - opencv.frames[0].astype(int)).mean() < 3
