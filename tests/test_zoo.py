"""The model zoo in the kernel: a mixed 2D + 3D + temporal ensemble end to end, face tracks, and ONNX entries."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import kernel
from bench.samples import SampleSpec, render_frames, write_video
from bench.zoo_cost import IMAGENET, KINETICS, with_untrained_models
from weights import InputSpec, ModelSpec, TrackSpec, load_ensemble, sha256_of
from weights.export_onnx import export_onnx
from tests.helpers import run_kernel

# Untrained extra models (weights seeded): a 3D CNN on 8-frame clips, a temporal 2D model, a timm frame model.
EXTRA_MODELS = {
    "r3d": dict(arch="r3d_18", kind="clip", input=InputSpec(112, frames=8, stride=2, clips=2, **KINETICS)),
    "gru": dict(arch="cnn_rnn", kind="sequence", arch_kwargs={"backbone": "mobilenetv3_small_050", "rnn": "gru",
                                                              "hidden_size": 32, "spp_levels": [1, 3]},
                input=InputSpec(96, frames=4, stride=3, clips=2, **IMAGENET), aggregation="confidence_weighted"),
    "mnv3": dict(arch="timm/mobilenetv3_small_050", kind="frame", input=InputSpec(112, **IMAGENET),
                 tta=("hflip",), aggregation="confident"),
}


@pytest.fixture(scope="module")
def mixed_ensemble(ensemble_path, tmp_path_factory) -> Path:
    folder = shutil.copytree(ensemble_path.parent, tmp_path_factory.mktemp("zoo") / "weights")
    return with_untrained_models(folder / "ensemble.json", EXTRA_MODELS)


@pytest.mark.parametrize("videos", ["dfdc_sample", "dfdc_facecrops"])
def test_mixed_ensemble_runs_end_to_end(shared, mixed_ensemble, tmp_path, videos):
    folder = shared / "data" / videos
    rows, report = run_kernel(folder, tmp_path, mixed_ensemble, "--frames-per-video", "8")
    names = {p.name for p in folder.rglob("*.mp4")}
    assert set(rows) == names
    models = {m.name for m in load_ensemble(mixed_ensemble).models}
    for name, entry in report.items():
        assert not entry["fallback"], (name, entry["error"])
        assert set(entry["model_scores"]) == models and None not in entry["model_scores"].values(), entry
        assert entry["frames_decoded"] > entry["frames_read"]  # the clip windows were decoded too
        assert 0.01 <= rows[name] <= 0.99


def test_two_people_make_two_tracks(ensemble_path, tmp_path):
    spec = SampleSpec("two_people.mp4", 1920, 1080, 2)
    path = write_video(tmp_path / "videos" / spec.name, render_frames(spec, 120), 1920, 1080)  # 4 s
    _, report = run_kernel(path.parent, tmp_path, ensemble_path, "--frames-per-video", "10")
    entry = report["two_people.mp4"]
    assert entry["faces_per_frame"] == [2] * 10
    assert entry["track_lengths"] == [10, 10]
    for name, per_track in entry["frame_scores"].items():
        assert [len(frames) for frames in per_track] == [10, 10]
        worst_track = max(float(np.mean(frames)) for frames in per_track)
        assert entry["model_scores"][name] == pytest.approx(worst_track)  # mean over frames, max over tracks


def test_face_shift_is_measured_in_face_sizes():
    a = np.array([0, 0, 100, 100, 1.0])
    assert kernel.face_shift(a, a + [60, 80, 60, 80, 0]) == pytest.approx(1.0)
    assert kernel.face_shift(a, np.array([0, 0, 180, 180, 1.0])) < 1  # a turned face's box shrinks or grows
    assert kernel.face_shift(a, np.array([0, 0, 250, 250, 1.0])) == math.inf  # 2.5x the side: another face


def test_link_tracks_follows_people_across_gaps_and_drops_flickers():
    person_a = np.array([100, 100, 200, 200, 0.9], np.float32)
    person_b = np.array([800, 100, 900, 200, 0.9], np.float32)
    flicker = np.array([500, 600, 540, 640, 0.7], np.float32)
    moved = person_a + np.array([10, 0, 10, 0, 0], np.float32)
    frames = [np.stack([person_a, person_b]), np.stack([moved]), np.stack([flicker]),
              np.stack([person_b, moved + [10, 0, 10, 0, 0]]), np.stack([person_a, person_b])]
    tracks = kernel.link_tracks(frames, TrackSpec(max_gap=2, min_detections=3))
    assert sorted(sorted(t.boxes) for t in tracks) == [[0, 1, 3, 4], [0, 3, 4]]
    short = kernel.link_tracks(frames, TrackSpec(max_gap=0, min_detections=3))
    # without gap tolerance both people break up and nothing reaches 3 detections: the longest pieces stay
    assert sorted(sorted(t.boxes) for t in short) == [[0, 1], [3, 4], [3, 4]]


def test_track_box_is_interpolated_between_detections():
    track = kernel.Track({0: np.array([0, 0, 10, 10, 1.0]), 2: np.array([20, 0, 30, 10, 1.0])})
    np.testing.assert_allclose(track.box_at(15, keys=[0, 10, 20]), [15, 0, 25, 10])
    np.testing.assert_allclose(track.box_at(40, keys=[0, 10, 20]), [20, 0, 30, 10])


def test_hflip_tta_averages_the_two_views():
    class LeftRightDetector(torch.nn.Module):
        def forward(self, x):
            return x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3)) - x[..., x.shape[-1] // 2:].mean(dim=(1, 2, 3))

    crops = np.zeros((1, 8, 8, 3), np.uint8)
    crops[:, :, :4] = 255  # bright left half
    spec = ModelSpec(name="lr", arch="none", checkpoint="", sha256="", input=InputSpec(8))
    plain = kernel.Classifier(spec, LeftRightDetector())
    flipped = kernel.Classifier(dataclasses.replace(spec, tta=("hflip",)), LeftRightDetector())
    accelerator = kernel.Accelerator("cpu")
    assert plain.predict(crops, accelerator, 4)[0] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert flipped.predict(crops, accelerator, 4)[0] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["meso4_df", "r3d", "gru"])
def test_onnx_export_matches_torch_and_runs_in_the_kernel(mixed_ensemble, sample_videos, tmp_path, name):
    folder = shutil.copytree(mixed_ensemble.parent, tmp_path / "weights")
    manifest = folder / "ensemble.json"
    only_this = [{**m, "runtime": "torch", "onnx": None, "onnx_sha256": None}
                 for m in json.loads(manifest.read_text())["models"] if m["name"] == name]
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "models": only_this}))
    torch_rows, _ = run_kernel(sample_videos["face_1080p.mp4"].parent, tmp_path, manifest, "--frames-per-video", "8")

    path, difference = export_onnx(manifest, name)
    assert path.is_file() and difference < 1e-4
    (entry,) = load_ensemble(manifest).models
    assert entry.runtime == "auto" and entry.onnx == path.name and entry.uses_onnx("cpu")
    assert not entry.uses_onnx("cuda")  # a GPU runs the PyTorch model in fp16
    assert type(load_ensemble(manifest).build_model(entry)).__name__ == "OnnxModule"
    (tmp_path / "onnx").mkdir()
    onnx_rows, report = run_kernel(sample_videos["face_1080p.mp4"].parent, tmp_path / "onnx", manifest,
                                   "--frames-per-video", "8")
    assert onnx_rows.keys() == torch_rows.keys()
    for video, label in torch_rows.items():
        assert onnx_rows[video] == pytest.approx(label, abs=1e-4)


def test_mtcnn_detector_option_runs_the_kernel(shared, ensemble_path, tmp_path):
    folder = shutil.copytree(ensemble_path.parent, tmp_path / "weights")
    manifest = folder / "ensemble.json"
    data = json.loads(manifest.read_text())
    data["detector"].update(arch="mtcnn", checkpoint="mtcnn.safetensors", min_score=0.7,
                            sha256=sha256_of(folder / "mtcnn.safetensors"))
    manifest.write_text(json.dumps(data))
    assert isinstance(kernel.Kernel(manifest, 8, "cpu").detector, kernel.MTCNNFaceDetector)
    rows, report = run_kernel(shared / "data" / "dfdc_sample", tmp_path, manifest, "--frames-per-video", "8")
    assert len(rows) == 4
    for name, entry in report.items():
        assert sum(n >= 1 for n in entry["faces_per_frame"]) >= 0.9 * 8, (name, entry["faces_per_frame"])
        assert not entry["fallback"] and 0.01 <= rows[name] <= 0.99
