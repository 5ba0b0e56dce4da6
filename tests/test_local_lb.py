"""The local leaderboard, tuning and blend fitting on the real shared sets and a generated TIMIT layout."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench import blend_fit, local_lb, tune
from bench.samples import SampleSpec, render_frames, write_video
from tests.helpers import run_kernel


@pytest.fixture(scope="module")
def lb_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lb")
    return {"cache": root / "cache", "history": root / "history.jsonl", "root": root}


def lb(set_name: str, ensemble: Path, dirs: dict, *extra: str) -> dict:
    out = dirs["root"] / f"{set_name}-{len(list(dirs['root'].glob('*.json')))}.json"
    assert local_lb.main(["--set", set_name, "--ensemble", str(ensemble), "--frames-per-video", "8",
                          "--cache", str(dirs["cache"]), "--history-file", str(dirs["history"]),
                          "--plot", str(dirs["root"] / f"{set_name}.png"), "--json", str(out), *extra]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_dfdc_sample_scores_like_the_kernel_and_reruns_from_cache(shared, ensemble_path, lb_dirs, tmp_path):
    first = lb("dfdc", ensemble_path, lb_dirs)
    assert first["n"] == 4 and first["computed"] == 4 * 4  # 4 videos x 4 models
    assert {"meso4_df", "mesoinception4_df", "blend"} <= set(first["scores"])
    assert 0 < first["scores"]["blend"]["log_loss"] < 2 and Path(first["histogram"]).stat().st_size > 5000
    rows, _ = run_kernel(shared / "data" / "dfdc_sample", tmp_path, ensemble_path, "--frames-per-video", "8")
    for video in first["videos"]:
        assert video["blend"] == pytest.approx(rows[Path(video["path"]).name], abs=1e-6)  # same pipeline
    again = lb("dfdc", ensemble_path, lb_dirs)
    assert again["computed"] == 0
    assert again["scores"] == first["scores"]


@pytest.mark.slow
def test_an_option_scores_an_edited_manifest_cached_apart(shared, ensemble_path, lb_dirs):
    options = ["--option", "decode.sampling=exact", "--option", "detector.every=1"]
    edited = lb("dfdc", ensemble_path, lb_dirs, *options)
    assert edited["computed"] == 4 * 4 and edited["config"]["options"] == "decode.sampling=exact detector.every=1"
    manifest = json.loads(Path(edited["config"]["ensemble"]).read_text())
    assert manifest["decode"]["sampling"] == "exact" and manifest["detector"]["every"] == 1
    assert lb("dfdc", ensemble_path, lb_dirs, *options)["computed"] == 0


def test_options_edit_sections_and_every_model():
    from bench.manifests import apply_options

    data = {"detector": {"every": 4}, "models": [{"name": "a"}, {"name": "b"}], "blend": {}}
    apply_options(data, ["detector.every=1", "decode.deblocking=false", "models.aggregation=median",
                         "decode.sampling=exact"])
    assert data["detector"]["every"] == 1 and data["decode"] == {"deblocking": False, "sampling": "exact"}
    assert [m["aggregation"] for m in data["models"]] == ["median", "median"]
    for bad in ("every=1", "detector.every", "nowhere.every=1"):
        with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
            apply_options(data, [bad])


@pytest.mark.slow
def test_ff_sample_has_a_row_per_method(ensemble_path, lb_dirs):
    report = lb("ff", ensemble_path, lb_dirs)
    assert report["n"] == 7
    methods = {"Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"}
    assert {f"blend / {m}" for m in methods} <= set(report["scores"])
    assert all(report["scores"][f"blend / {m}"]["n"] == 4 for m in methods)  # 3 originals + 1 fake


def test_history_lists_past_runs(ensemble_path, lb_dirs, capsys):
    lb("dfdc", ensemble_path, lb_dirs)
    capsys.readouterr()
    assert local_lb.main(["--history", "--set", "dfdc", "--history-file", str(lb_dirs["history"])]) == 0
    board = capsys.readouterr().out
    assert board.count(" dfdc ") >= 2 and "log loss" in board


def test_timit_layout_with_vidtimit_frame_folders(ensemble_path, lb_dirs, tmp_path):
    root = tmp_path / "timit"
    frames = list(render_frames(SampleSpec("x", 384, 288, 1), 20, face_scale=0.6))
    write_video(root / "DeepfakeTIMIT" / "higher_quality" / "fadg0" / "sa1-video-fram1.mp4", frames, 384, 288)
    fake = root / "DeepfakeTIMIT" / "higher_quality" / "fadg0" / "sa1-video-fram1.avi"
    fake.with_suffix(".mp4").rename(fake)  # the container is sniffed, not named: the kernel reads it all the same
    real = root / "VidTIMIT" / "fadg0" / "video" / "sa1"
    real.mkdir(parents=True)
    for index, frame in enumerate(frames, 1):
        (real / f"{index:03d}").write_bytes(cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes())
    report = lb("timit", ensemble_path, lb_dirs, "--root", str(root), "--quality", "hq")
    assert report["n"] == 2
    assert {v["group"] for v in report["videos"]} == {"higher_quality", "vidtimit"}
    assert all(v["error"] is None for v in report["videos"]), report["videos"]


def test_fitted_blend_beats_or_equals_equal_weights(shared, ensemble_path, lb_dirs, tmp_path, capsys):
    folder = shutil.copytree(ensemble_path.parent, tmp_path / "weights")
    assert blend_fit.main(["--set", "dfdc", "--ensemble", str(folder / "ensemble.json"),
                           "--frames-per-video", "8", "--cache", str(lb_dirs["cache"]), "--folds", "4"]) == 0
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if text.startswith("log loss on the fitting data"))
    fitted, equal = (float(part.split()[-1]) for part in line.split(":")[1].split(","))
    assert fitted <= equal
    weights = [m["weight"] for m in json.loads((folder / "ensemble.json").read_text())["models"]]
    assert sum(weights) == pytest.approx(1, abs=1e-5) and min(weights) >= 0
    assert weights != [1.0] * 4


@pytest.mark.slow
def test_tune_sweeps_frames_and_chooses_a_clamp(ensemble_path, lb_dirs, tmp_path, capsys, monkeypatch):
    built = []
    real_pipeline = local_lb.Pipeline

    def pipeline(*args, **kwargs):  # one pipeline, its models loaded once, serves every frame count of the sweep
        built.append(args)
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(local_lb, "Pipeline", pipeline)
    png = tmp_path / "frames.png"
    run = tmp_path / "tune.json"
    assert tune.main(["--set", "dfdc", "--ensemble", str(ensemble_path), "--frames", "4,6,8", "--dry-run",
                      "--cache", str(tmp_path / "cache"), "--png", str(png), "--folds", "4", "--json", str(run)]) == 0
    assert len(built) == 1
    out = capsys.readouterr().out
    assert "frames  log loss" in out and "cross-validation over videos" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite(float(out.split("clamped ")[-1].split()[0]))
    assert "calibration after the blend" in out and "written into" not in out
    report = json.loads(run.read_text())
    assert set(report["frames_per_video"]) == {"4", "6", "8"} and report["n"] == 4
    assert report["best_frames"] in (4, 6, 8) and report["calibration"]["method"] in ("none", "temperature",
                                                                                     "platt", "power")


def test_run_files_are_named_by_set_root_and_layout(tmp_path):
    def name(*argv: str) -> str:
        return local_lb.run_name(local_lb.parse_args(["--set", "ff", *argv]))

    first, second = tmp_path / "a" / "ff", tmp_path / "b" / "ff"  # one folder name, two roots
    assert name("--root", str(first)) == name("--root", str(first)) != name("--root", str(second))
    assert name("--root", str(first)).startswith("ff-ff-")
    assert name("--root", str(first), "--compression", "c40") != name("--root", str(first))
    assert name("--root", str(first), "--limit", "3") != name("--root", str(first))
    args = local_lb.parse_args(["--set", "ff", "--root", str(first)])
    assert local_lb.run_file(args, "_hist.png") == local_lb.LB_DIR / "runs" / f"{name('--root', str(first))}_hist.png"
