"""bench/speed.py on two tiny clips: every line of its report is there, and the pipelined run equals the sequential."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import speed
from bench.small_faces import found, make_finder, scenes_with_face
from inference.pipeline import STAGES


@pytest.mark.slow
def test_speed_report_has_every_line(ensemble_path, tmp_path):
    out = tmp_path / "speed.json"
    report = speed.main(["--count", "2", "--seconds", "1", "--frames-per-video", "8", "--clips", str(tmp_path),
                         "--ensemble", str(ensemble_path), "--json", str(out), "--repeat", "3"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for key in ("decode_floor", "reader_floor", "kernel"):  # three rounds, the median one reported
        walls = [run["seconds_per_video"] for run in report[key]["runs"]]
        assert len(walls) == 3 and report[key]["seconds_per_video"] == sorted(walls)[1]
    ratios = [k["seconds_per_video"] / f["seconds_per_video"]
              for k, f in zip(report["kernel"]["runs"], report["decode_floor"]["runs"])]
    assert report["kernel_over_floor_runs"] == pytest.approx(ratios)
    assert report["kernel_over_floor"] == pytest.approx(sorted(ratios)[1])
    clips = sorted(tmp_path.glob("dfdc_like_*.mp4"))
    assert len(clips) == 2 and report["videos"] == 2
    for floor in ("decode_floor", "reader_floor"):  # full decoding, and the manifest's own
        assert set(report[floor]["setups"]) == {"pyav, one video at a time", "pyav, 2 reader threads"}
    assert report["decode"] == {"sampling": "reference", "deblocking": True} and report["detect_every"] == 4
    assert report["kernel_over_reader_floor"] > report["kernel_over_floor"] > 0
    for key in ("sequential_baseline", "sequential_kernel", "kernel"):
        row = report[key]
        assert row["seconds_per_video"] > 0 and row["cpu_seconds_per_video"] > 0
        assert set(row["stages"]) == set(STAGES) and row["fallbacks"] == 0
    assert report["max_label_difference_pipelined_vs_sequential"] <= 1e-6
    assert report["baseline_over_kernel"] > 0 and report["kernel_over_floor"] > 0 and report["peak_rss_mib"] > 100


@pytest.mark.slow
def test_generated_clips_are_dfdc_like(tmp_path):
    import av

    (clip,) = speed.dfdc_like_clips(tmp_path, 1, seconds=3.0)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.codec_context.name) == (1920, 1080, "h264")
        assert stream.frames == 90
    megabits_per_second = clip.stat().st_size * 8 / 1e6 / 3
    assert 1.5 < megabits_per_second < 6  # about DFDC's 3 Mbit/s, film grain and all
    assert speed.dfdc_like_clips(tmp_path, 1, seconds=3.0) == [clip]  # made once, then reused


@pytest.mark.slow
def test_options_reach_the_kernel_and_the_baseline_stays_the_public_kernels(ensemble_path, tmp_path):
    report = speed.main(["--count", "1", "--seconds", "1", "--frames-per-video", "4", "--clips", str(tmp_path),
                         "--ensemble", str(ensemble_path), "--option", "decode.deblocking=false",
                         "--option", "detector.every=1"])
    assert report["decode"]["deblocking"] is False and report["detect_every"] == 1
    assert report["kernel"]["fallbacks"] == 0
    baseline = json.loads(speed.as_public_kernels(ensemble_path, tmp_path).read_text())
    assert baseline["decode"] == {"sampling": "exact", "deblocking": True} and baseline["detector"]["every"] == 1
    assert {entry["runtime"] for entry in [baseline["detector"], *baseline["models"]]} == {"torch"}


@pytest.mark.slow
def test_heavy_ensemble_adds_two_timm_frame_models_and_a_3d_cnn(ensemble_path, tmp_path):
    report = speed.main(["--count", "1", "--seconds", "1", "--frames-per-video", "4", "--clips", str(tmp_path),
                         "--ensemble", str(ensemble_path), "--heavy"])
    assert report["models"][-3:] == list(speed.HEAVY)
    assert report["kernel"]["fallbacks"] == 0
    assert report["max_label_difference_pipelined_vs_sequential"] <= 1e-6


@pytest.mark.parametrize("height,width", [(1080, 1920), (1920, 1080), (720, 1280), (256, 256), (100, 1000)])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_baseline_tiles_cover_the_frame(height, width, scale):
    tiles = speed.TiledFinder.tiles(height, width, scale)
    covered = np.zeros((height, width), bool)
    for top, left, side in tiles:
        assert 0 <= top and top + side <= height and 0 <= left and left + side <= width
        covered[top:top + side, left:left + side] = True
    assert covered.all()
    if (height, width, scale) == (1080, 1920, 1.0):
        assert len(tiles) == 3  # as the public BlazeFace kernel tiled a 1080p frame


def test_baseline_tiled_detector_finds_the_faces_the_kernel_finds(ensemble_path):
    whole = make_finder(ensemble_path.parent, "back", 0.65, (1.0, 0.5))
    tiled = speed.TiledFinder(whole.detector, whole.spec, whole.accelerator, 16)
    frames, truths = zip(*scenes_with_face(face_width=120, count=3))
    for boxes in (whole.find(list(frames)), tiled.find(list(frames))):
        assert all(found(b, t) for b, t in zip(boxes, truths))
