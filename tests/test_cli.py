"""The kernel end to end (inference.cli): synthetic and real DFDC videos, bad files, a broken run loop, and its
command line (Kaggle defaults; kernel.py run as a script from another folder)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import inference.cli
import kernel
from bench.samples import DEFAULT_SAMPLES
from inference.cli import parse_args
from inference.journal import Journal
from inference.pipeline import STAGES
from tests.helpers import make_small_videos, read_report, read_rows, run_kernel


@pytest.fixture(scope="module")
def sample_run(sample_videos, ensemble_path, tmp_path_factory):
    videos = next(iter(sample_videos.values())).parent
    return run_kernel(videos, tmp_path_factory.mktemp("run"), ensemble_path, "--frames-per-video", "8")


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    return make_small_videos(tmp_path_factory.mktemp("small"))


@pytest.mark.slow
def test_every_synthetic_video_gets_a_clamped_row(sample_run, sample_videos):
    rows, report = sample_run
    assert set(rows) == set(sample_videos)
    assert all(0.01 <= label <= 0.99 for label in rows.values())
    assert set(report) == set(rows)


@pytest.mark.slow
def test_faces_found_in_synthetic_videos(sample_run):
    _, report = sample_run
    for name in ("face_1080p.mp4", "face_portrait.mp4"):
        entry = report[name]
        assert entry["key_frames"] == 8
        assert sum(n >= 1 for n in entry["faces_per_frame"]) >= 0.9 * entry["key_frames"], entry
        assert not entry["fallback"] and set(entry["model_scores"]) == {
            "meso4_df", "meso4_f2f", "mesoinception4_df", "mesoinception4_f2f"}
        assert set(entry["seconds"]) == set(STAGES)
        # the report says what the error analysis slices by: frame size, length, face size
        spec = next(spec for spec in DEFAULT_SAMPLES if spec.name == name)
        assert (entry["width"], entry["height"]) == (spec.width, spec.height)
        assert entry["duration"] == pytest.approx(2.0, abs=0.1)  # the session's samples last 2 s
        assert 110 <= entry["face_side"] <= 450, entry["face_side"]  # the head is about 130 x 360 px


@pytest.mark.slow
def test_video_without_face_gets_the_fallback(sample_run):
    rows, report = sample_run
    assert rows["no_face_1080p.mp4"] == 0.5
    assert report["no_face_1080p.mp4"]["fallback"] and report["no_face_1080p.mp4"]["error"] == "no face found"


@pytest.mark.slow
def test_real_dfdc_clips_faces_in_90_percent_of_frames(shared, ensemble_path, tmp_path):
    videos = shared / "data" / "dfdc_sample"
    rows, report = run_kernel(videos, tmp_path, ensemble_path, "--frames-per-video", "32")
    names = {p.name for p in videos.rglob("*.mp4")}
    assert set(rows) == names and len(names) == 4
    for name in names:
        entry = report[name]
        assert entry["key_frames"] == 32 and entry["reader"] == "pyav"
        found = sum(n >= 1 for n in entry["faces_per_frame"])
        assert found >= 0.9 * 32, f"{name}: faces in only {found}/32 frames"
        assert len(entry["track_lengths"]) == 1, entry["track_lengths"]  # one person per clip: one track
        assert 0.01 <= rows[name] <= 0.99 and not entry["fallback"]


def test_broken_video_gets_fallback_row(ensemble_path, sample_videos, tmp_path):
    videos = tmp_path / "videos"
    (videos / "nested").mkdir(parents=True)
    shutil.copy(sample_videos["face_1080p.mp4"], videos / "nested" / "good.mp4")
    (videos / "broken.mp4").write_bytes(b"\x00" * 1000)
    (videos / "notes.txt").write_text("not a video")
    rows, report = run_kernel(videos, tmp_path, ensemble_path, "--frames-per-video", "4")
    assert set(rows) == {"good.mp4", "broken.mp4"}
    assert rows["broken.mp4"] == 0.5 and "cannot decode" in report["broken.mp4"]["error"]
    assert not report["good.mp4"]["fallback"]


def test_non_video_files_are_ignored_and_reported(small_videos, ensemble_path, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.mp4").symlink_to(small_videos / "clip_00.mp4")
    (folder / "notes.txt").write_text("not a video")
    (folder / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    rows, report = run_kernel(folder, tmp_path, ensemble_path, "--frames-per-video", "8")
    assert set(rows) == set(report) == {"a.mp4", "dangling.mp4"}
    assert report["dangling.mp4"]["fallback"] and report["dangling.mp4"]["error"]
    ignored = read_report(tmp_path / "report.jsonl", ignored=True)
    assert ignored.keys() == {"notes.txt"} and ignored["notes.txt"]["ignored"] and "label" not in ignored["notes.txt"]


def test_a_broken_run_loop_still_writes_every_row(small_videos, ensemble_path, tmp_path, monkeypatch):
    """Even an error outside any one video (here: the journal's disk fills up) leaves a complete submission."""
    real_append, appended = Journal.append, []

    def append(self, record):
        if len(appended) == 3:
            raise OSError(28, "No space left on device")
        appended.append(record["filename"])
        real_append(self, record)

    monkeypatch.setattr(Journal, "append", append)
    rows, _ = run_kernel(small_videos, tmp_path, ensemble_path, "--frames-per-video", "8")
    assert len(rows) == 10 and all(rows[name] == 0.5 for name in rows if name not in appended)
    assert (tmp_path / "submission.csv.progress.jsonl").is_file()  # kept: a rerun picks up the 3 done


# ---------------------------------------------------------------------------------------------- command line

def test_kaggle_defaults(tmp_path):
    competition = tmp_path / "deepfake-detection-challenge"
    (competition / "test_videos").mkdir(parents=True)
    (competition / "sample_submission.csv").write_text("filename,label\n")
    args = parse_args([], kaggle_input=tmp_path)  # kernel.py's KAGGLE_INPUT
    assert args.videos == competition / "test_videos"
    assert args.out == inference.cli.KAGGLE_OUTPUT == Path("/kaggle/working/submission.csv")
    assert args.sample_submission == competition / "sample_submission.csv"
    assert args.frames_per_video == 32 and args.device == "auto"


def test_videos_are_required_off_kaggle(tmp_path):
    with pytest.raises(SystemExit):
        parse_args([], kaggle_input=tmp_path / "absent")
    with pytest.raises(SystemExit):
        parse_args([])


@pytest.mark.slow
def test_script_runs_from_another_folder(sample_videos, ensemble_path, tmp_path):
    """`python /path/to/kernel.py` from any working directory finds its runtime packages."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(sample_videos["face_portrait.mp4"], videos / "clip with spaces.mp4")
    completed = subprocess.run(
        [sys.executable, str(Path(kernel.__file__)), "--videos", "videos", "--out", "out/submission.csv",
         "--ensemble", str(ensemble_path), "--frames-per-video", "4", "--device", "cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "median seconds per video (1 videos): read" in completed.stdout
    rows = read_rows(tmp_path / "out" / "submission.csv")
    assert list(rows) == ["clip with spaces.mp4"] and 0.01 <= rows["clip with spaces.mp4"] <= 0.99
