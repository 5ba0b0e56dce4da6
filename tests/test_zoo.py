"""The model zoo in the kernel: a mixed 2D + 3D + temporal ensemble end to end, two people, ONNX entries, MTCNN."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.samples import SampleSpec, render_frames, write_video
from bench.zoo_cost import with_untrained_models
from inference.faces import MTCNNFinder
from inference.pipeline import Pipeline
from tests.helpers import run_kernel
from weights import InputSpec, load_ensemble, sha256_of
from weights.onnx_runtime import LAYOUTS
from weights.registry import IMAGENET, KINETICS
from zootools.export_onnx import export_onnx

pytestmark = pytest.mark.slow  # each test runs the kernel on real or synthetic videos, some with 3D models

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
        assert entry["frames_decoded"] > entry["key_frames"]  # the clip windows were decoded too
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
    assert entry.onnx_layout in LAYOUTS  # measured: the kernel runs with whichever was faster
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
    assert isinstance(Pipeline(manifest, "cpu").finder, MTCNNFinder)
    rows, report = run_kernel(shared / "data" / "dfdc_sample", tmp_path, manifest, "--frames-per-video", "8")
    assert len(rows) == 4
    for name, entry in report.items():
        assert sum(n >= 1 for n in entry["faces_per_frame"]) >= 0.9 * 8, (name, entry["faces_per_frame"])
        assert not entry["fallback"] and 0.01 <= rows[name] <= 0.99
