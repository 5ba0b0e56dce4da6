"""kernel.py end to end on synthetic and real DFDC videos, and its pieces: reading, tiling, writing, fallback."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import kernel
from bench.samples import SampleSpec, render_frames, set_display_rotation, write_video
from tests.helpers import read_rows, run_kernel


@pytest.fixture(scope="module")
def sample_run(sample_videos, ensemble_path, tmp_path_factory):
    videos = next(iter(sample_videos.values())).parent
    return run_kernel(videos, tmp_path_factory.mktemp("run"), ensemble_path, "--frames-per-video", "8")


def test_every_synthetic_video_gets_a_clipped_row(sample_run, sample_videos):
    rows, report = sample_run
    assert set(rows) == set(sample_videos)
    assert all(0.01 <= label <= 0.99 for label in rows.values())
    assert set(report) == set(rows)


def test_faces_found_in_synthetic_videos(sample_run):
    _, report = sample_run
    for name in ("face_1080p.mp4", "face_portrait.mp4"):
        entry = report[name]
        assert entry["frames_read"] == 8
        assert sum(n >= 1 for n in entry["faces_per_frame"]) >= 0.9 * entry["frames_read"], entry
        assert not entry["fallback"] and set(entry["model_scores"]) == {
            "meso4_df", "meso4_f2f", "mesoinception4_df", "mesoinception4_f2f"}
        assert set(entry["seconds"]) == set(kernel.STAGES)


def test_video_without_face_gets_the_fallback(sample_run):
    rows, report = sample_run
    assert rows["no_face_1080p.mp4"] == 0.5
    assert report["no_face_1080p.mp4"]["fallback"] and report["no_face_1080p.mp4"]["error"] == "no face found"


def test_real_dfdc_clips_faces_in_90_percent_of_frames(shared, ensemble_path, tmp_path):
    videos = shared / "data" / "dfdc_sample"
    rows, report = run_kernel(videos, tmp_path, ensemble_path, "--frames-per-video", "32")
    names = {p.name for p in videos.rglob("*.mp4")}
    assert set(rows) == names and len(names) == 4
    for name in names:
        entry = report[name]
        assert entry["frames_read"] == 32 and entry["reader"] == "pyav"
        found = sum(n >= 1 for n in entry["faces_per_frame"])
        assert found >= 0.9 * 32, f"{name}: faces in only {found}/32 frames"
        assert len(entry["track_lengths"]) == 1, entry["track_lengths"]  # one person per clip: one track
        assert 0.01 <= rows[name] <= 0.99 and not entry["fallback"]


def test_device_failure_mid_run_falls_back_to_cpu(sample_videos, ensemble_path, tmp_path, monkeypatch):
    """A simulated GPU works for a few batches, then runs out of memory: the rest runs on the CPU, no row lost."""
    videos = next(iter(sample_videos.values())).parent
    expected, _ = run_kernel(videos, tmp_path / "cpu", ensemble_path, "--device", "cpu", "--frames-per-video", "8")

    real_forward = kernel.Accelerator._forward
    gpu_calls = []

    def flaky_gpu(self, module, batch, memory_format):
        if self.device.type == "cuda":
            gpu_calls.append(threading.current_thread().name)
            if len(gpu_calls) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            with torch.inference_mode():  # the simulated GPU computes on the CPU, leaving the accelerator as it is
                return kernel._to_cpu(module(batch))
        return real_forward(self, module, batch, memory_format)

    monkeypatch.setattr(kernel.Accelerator, "_forward", flaky_gpu)
    (tmp_path / "gpu").mkdir()
    rows, report = run_kernel(videos, tmp_path / "gpu", ensemble_path, "--device", "cuda", "--frames-per-video", "8")
    # The detector (reader threads) and the classifiers (main thread) share the device: calls already under way
    # when the first one fails fail too, then the whole run stays on the CPU.
    assert 4 <= len(gpu_calls) <= 4 + 2
    assert rows.keys() == expected.keys()
    for name, label in expected.items():  # the CPU run uses onnxruntime, the "GPU" PyTorch: equal within 1e-4
        assert rows[name] == pytest.approx(label, abs=1e-4)
    assert all(entry["error"] is None or entry["error"] == "no face found" for entry in report.values())
    assert {entry["device"] for entry in report.values()} <= {"cpu", "cuda"}
    assert report[sorted(report)[-1]]["device"] == "cpu"


def test_accelerator_without_a_gpu_retries_on_cpu():
    """Asking for CUDA where the device fails (no driver here, or an injected OOM there) still gives the answer."""

    class FailsOffCpu(torch.nn.Module):
        def forward(self, x):
            if x.device.type != "cpu":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return x * 2

    accelerator = kernel.Accelerator("cuda")
    out = accelerator(FailsOffCpu(), torch.ones(2, 3))
    assert torch.equal(out, torch.full((2, 3), 2.0))
    assert accelerator.device.type == "cpu" and accelerator.fallback_reason


def test_a_thread_whose_device_failed_after_another_fell_back_retries_on_cpu(caplog):
    """Readers and the main thread share the accelerator: whoever fails second must retry, not raise, and the
    modules move (and the warning is logged) once."""
    accelerator = kernel.Accelerator("cuda")
    real_forward = accelerator._forward

    def failing_after_another_thread_fell_back(module, batch, memory_format):
        if accelerator.device.type == "cuda":
            accelerator.fall_back_to_cpu(RuntimeError("CUDA error: injected in another thread"))
            raise RuntimeError("CUDA error: this thread's call failed too")
        return real_forward(module, batch, memory_format)

    accelerator._forward = failing_after_another_thread_fell_back
    with caplog.at_level("WARNING", logger="kernel"):
        out = accelerator(torch.nn.Identity(), torch.ones(2))
        accelerator.fall_back_to_cpu(RuntimeError("CUDA error: a third report"))
    assert torch.equal(out, torch.ones(2))
    assert "another thread" in accelerator.fallback_reason
    assert sum("continuing on the CPU" in record.message for record in caplog.records) == 1


def test_non_device_errors_are_not_swallowed_by_the_fallback():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("bad input shape")

    with pytest.raises(ValueError):
        kernel.Accelerator("cpu")(Broken(), torch.ones(1))


# ---------------------------------------------------------------------------------------------- reading

def test_sample_indices_are_evenly_spaced_and_bounded():
    assert kernel.sample_indices(300, 4) == [0, 100, 199, 299]
    assert kernel.sample_indices(5, 32) == [0, 1, 2, 3, 4]
    assert kernel.sample_indices(0, 32) == []


def test_pyav_and_opencv_read_the_same_frames(sample_videos):
    path = sample_videos["face_1080p.mp4"]
    geometry = (4, 2, 2)  # 2 clip windows of 4 frames, 2 apart
    pyav = kernel._read_pyav(path, 5, [geometry])
    opencv = kernel._read_opencv(path, 5, [geometry])
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
    clip = kernel.read_frames(folder, 4, [(3, 1, 1)])
    assert clip.reader == "frames" and clip.keys == [0, 4, 7, 11]
    assert clip.windows == {(3, 1, 1): [[6, 7, 8]]}
    assert [int(clip.frames[k][0, 0, 0]) for k in clip.keys] == pytest.approx([20, 100, 160, 240], abs=3)


def test_opencv_fallback_when_pyav_fails(sample_videos, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("injected PyAV failure")

    monkeypatch.setattr(kernel.av, "open", broken)
    clip = kernel.read_frames(sample_videos["face_1080p.mp4"], 4)
    assert clip.reader == "opencv" and len(clip.keys) == len(clip.frames) == 4


def test_rotation_metadata_is_respected(tmp_path):
    spec = SampleSpec("rotated.mp4", 320, 180, 1)
    frames = list(render_frames(spec, 3, face_scale=0.3))
    path = set_display_rotation(write_video(tmp_path / spec.name, frames, 320, 180), 90)
    pyav = kernel._read_pyav(path, 3, ())
    opencv = kernel._read_opencv(path, 3, ())
    upright = cv2.rotate(frames[0], cv2.ROTATE_90_CLOCKWISE)
    assert pyav.frames[0].shape == opencv.frames[0].shape == (320, 180, 3)
    assert np.abs(pyav.frames[0].astype(int) - upright.astype(int)).mean() < 6
    assert np.abs(pyav.frames[0].astype(int) - opencv.frames[0].astype(int)).mean() < 3


# ---------------------------------------------------------------------------------------------- tiles, crops

@pytest.mark.parametrize("height,width", [(1080, 1920), (1920, 1080), (720, 1280), (256, 256), (100, 700), (16, 16)])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_scan_image_scales_the_short_side_and_pads_to_the_grid(height, width, scale):
    frame = np.full((height, width, 3), 200, np.uint8)
    image, factor = kernel.scan_image(frame, scale, 256, 32)
    content_h, content_w = round(height * factor), round(width * factor)
    assert min(content_h, content_w) == round(256 / scale)  # a square of scale x the short side spans 256 pixels
    assert image.shape[0] % 32 == 0 and image.shape[1] % 32 == 0
    assert image.shape[0] - content_h < 32 and image.shape[1] - content_w < 32
    assert (image[:content_h, :content_w] == 200).all() and image[content_h:].sum() == image[:, content_w:].sum() == 0


def test_scan_image_bounds_a_frame_of_absurd_aspect_ratio():
    image, factor = kernel.scan_image(np.zeros((10, 20_000, 3), np.uint8), 1.0, 256, 32)
    assert image.shape == (32, kernel.MAX_DETECTOR_SIDE, 3) and factor == kernel.MAX_DETECTOR_SIDE / 20_000


def test_letterbox_keeps_aspect_and_centres():
    image = np.full((50, 100, 3), 200, np.uint8)
    boxed = kernel.letterbox(image, 256)
    assert boxed.shape == (256, 256, 3)
    rows = np.where(boxed[:, 128, 0] > 0)[0]
    assert rows.min() == 64 and rows.max() == 191  # 128 rows of image, centred


def test_crop_adds_margin_and_clamps():
    frame = np.zeros((100, 200, 3), np.uint8)
    assert kernel.crop(frame, np.array([10, 10, 60, 60, 0.9]), margin=0.2).shape[:2] == (60, 60)
    assert kernel.crop(frame, np.array([180, 80, 220, 120, 0.8]), margin=0.2).shape[:2] == (24, 24)
    assert kernel.crop(frame, np.array([300, 10, 340, 60, 0.8]), margin=0.2) is None  # outside the frame


# ---------------------------------------------------------------------------------------------- writing

def test_rows_follow_the_sample_submission_and_keep_its_videos(tmp_path):
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("filename,label\nb.mp4,0.5\nmissing.mp4,0.5\na.mp4,0.5\n")
    assert kernel.submission_order(["a.mp4", "b.mp4", "c.mp4"], sample) == ["b.mp4", "missing.mp4", "a.mp4", "c.mp4"]


def test_submission_is_replaced_atomically(tmp_path):
    out = tmp_path / "submission.csv"
    kernel.write_submission(out, [("a.mp4", 0.25)])
    with pytest.raises(ValueError):
        kernel.write_submission(out, [("a.mp4", 0.75), ("b.mp4", "not a number")])
    assert read_rows(out) == {"a.mp4": 0.25}  # the old file is untouched by the failed write
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


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


# ---------------------------------------------------------------------------------------------- command line

def test_kaggle_defaults(tmp_path, monkeypatch):
    competition = tmp_path / "deepfake-detection-challenge"
    (competition / "test_videos").mkdir(parents=True)
    (competition / "sample_submission.csv").write_text("filename,label\n")
    monkeypatch.setattr(kernel, "KAGGLE_COMPETITION", competition)
    args = kernel.parse_args([])
    assert args.videos == competition / "test_videos"
    assert args.out == kernel.KAGGLE_OUTPUT == Path("/kaggle/working/submission.csv")
    assert args.sample_submission == competition / "sample_submission.csv"
    assert args.frames_per_video == 32 and args.device == "auto"


def test_videos_are_required_off_kaggle(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel, "KAGGLE_COMPETITION", tmp_path / "absent")
    with pytest.raises(SystemExit):
        kernel.parse_args([])


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


# ---------------------------------------------------------------------------------------------- offline bootstrap

def fake_bundle(folder: Path, requirements: str, python_version: str) -> Path:
    (folder / "wheels").mkdir(parents=True)
    (folder / "requirements.txt").write_text(requirements)
    (folder / "bundle-manifest.json").write_text(f'{{"python_version": "{python_version}"}}')
    return folder


def test_bootstrap_installs_only_what_is_missing(tmp_path, monkeypatch):
    """Installed under its own or an equivalent name (CPU onnxruntime for onnxruntime-gpu, opencv-python for
    the headless build) counts as present: two copies in one import folder would break both."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    bundle = fake_bundle(tmp_path, "# pins\nonnxruntime-gpu==1.31.1\nopencv-python-headless==4.14.0.94\n"
                                   "no-such-package==1.0  # comment\n", running)
    calls = []
    monkeypatch.setattr(kernel.subprocess, "run", lambda command: calls.append(command) or
                        subprocess.CompletedProcess(command, 0))
    kernel.install_bundled_wheels(bundle)
    (command,) = calls
    assert command[-1] == "no-such-package==1.0" and "onnxruntime-gpu==1.31.1" not in command
    assert command[command.index("--find-links") + 1] == str(bundle / "wheels") and "--no-index" in command


def test_bootstrap_names_a_python_mismatch(tmp_path, monkeypatch):
    bundle = fake_bundle(tmp_path, "no-such-package==1.0\n", "2.7")
    monkeypatch.setattr(kernel.subprocess, "run", lambda command: pytest.fail("pip must not run"))
    with pytest.raises(SystemExit, match="wheels are for Python 2.7"):
        kernel.install_bundled_wheels(bundle)


def test_bundle_is_found_below_the_input_folder(tmp_path, monkeypatch):
    bundle = tmp_path / "input" / "owner" / "my-bundle"
    (bundle / "weights").mkdir(parents=True)
    (bundle / "weights" / "__init__.py").write_text("")
    monkeypatch.setattr(kernel, "KAGGLE_INPUT", tmp_path / "input")
    monkeypatch.setattr(kernel, "KERNEL_DIR", tmp_path / "elsewhere")
    assert kernel.find_bundle() == bundle
