"""The fallback and the calibration after the blend: the maps (blending.calibrate), the manifest's
blend.calibration, their tuning by cross-validation (bench/calibration.py, bench/tune.py) and the kernel applying
them."""
from __future__ import annotations

import contextlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import blending
from bench import local_lb, tune
from bench.blend_fit import log_loss
from bench.calibration import choose_calibration, choose_fallback, fit_calibration
from blending.blend import logit
from tests.helpers import run_kernel, small_manifest
from weights import BlendSpec, CalibrationSpec, WeightsError, load_ensemble


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def labelled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from known P(FAKE): (labels, the true probabilities)."""
    rng = np.random.default_rng(seed)
    truth = sigmoid(rng.normal(0.0, 1.5, n))
    return (rng.uniform(size=n) < truth).astype(int), truth


def overconfident(truth: np.ndarray) -> np.ndarray:
    """Predictions three times too sure on the logit scale."""
    return sigmoid(3 * np.log(truth / (1 - truth)))


def with_no_blend(n: int, missing: int, fakes: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A set with `fakes` of its videos fake overall and among the `missing` ones without a blend (NaN)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.r_[np.ones(round(fakes * n)), np.zeros(n - round(fakes * n))]).astype(int)
    blended = np.where(labels == 1, rng.uniform(0.4, 0.9, n), rng.uniform(0.1, 0.6, n))
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:count]
              for label, count in ((1, round(fakes * missing)), (0, missing - round(fakes * missing)))]
    blended[np.concatenate(chosen)] = np.nan
    return labels, blended


# the maps


@pytest.mark.parametrize("method, scale, shift, score, expected", [
    ("none", 1.0, 0.0, 0.8, 0.8),
    ("temperature", 2.0, 0.0, 0.8, 16 / 17),  # odds 4 -> 16
    ("temperature", 0.5, 0.0, 0.8, 2 / 3),  # odds 4 -> 2
    ("platt", 1.0, math.log(2), 0.8, 8 / 9),  # odds 4 x 2
    ("platt", -1.0, 0.0, 0.8, 0.2),
    ("power", 0.5, 0.0, 0.51, 0.6),  # 0.5 + 0.01^0.5
    ("power", 0.5, 0.0, 0.49, 0.4),
    ("power", 2.0, 0.0, 0.9, 0.66),
    ("power", 0.5, 0.0, 0.9, 1.0),  # 0.5 + 0.4^0.5 > 1: clipped
])
def test_calibrate_gives_each_maps_known_value(method, scale, shift, score, expected):
    assert blending.calibrate(score, method, scale, shift) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("method, scale, shift", [("none", 1.0, 0.0), ("temperature", 0.3, 0.0),
                                                  ("platt", 2.0, -0.5), ("power", 0.65, 0.0)])
def test_calibrate_is_monotonic_keeps_nan_and_takes_the_edges(method, scale, shift):
    scores = np.linspace(0.0, 1.0, 201)
    mapped = blending.calibrate(scores, method, scale, shift)
    assert np.all(np.diff(mapped) >= 0) and np.all((mapped >= 0) & (mapped <= 1))
    assert math.isnan(blending.calibrate(math.nan, method, scale, shift))
    assert np.isnan(blending.calibrate(np.array([0.3, np.nan]), method, scale, shift)[1])


def test_identity_maps_and_unknown_method():
    scores = np.linspace(0.01, 0.99, 50)
    for method, scale in (("none", 3.0), ("temperature", 1.0), ("platt", 1.0), ("power", 1.0)):
        assert blending.calibrate(scores, method, scale) == pytest.approx(scores)
    with pytest.raises(ValueError, match="unknown calibration"):
        blending.calibrate(0.5, "isotonic")


def test_final_prediction_calibrates_before_the_clamp_and_falls_back_on_nan():
    spec = BlendSpec(clamp=(0.1, 0.9), fallback=0.3, calibration=CalibrationSpec("temperature", 2.0))
    assert blending.final_prediction(0.8, spec) == 0.9  # 16/17 clamped; clamping first would give 16/17 of 0.8
    assert blending.final_prediction(0.6, spec) == pytest.approx(9 / 13)  # odds 1.5 -> 2.25
    assert blending.final_prediction(math.nan, spec) == 0.3
    assert blending.final_prediction(np.array([0.8, np.nan]), spec).tolist() == [0.9, 0.3]


# the manifest


@pytest.mark.parametrize("fields, message", [
    ({"method": "isotonic"}, "method must be one of"),
    ({"method": "temperature", "scale": 0.0}, "temperature needs scale > 0"),
    ({"method": "power", "scale": -1.0}, "power needs scale > 0"),
    ({"method": "platt", "scale": math.inf}, "finite numbers"),
    ({"method": "platt", "shift": "1"}, "finite numbers"),
    ({"method": "temperature", "shift": 0.5}, "only platt has a shift"),
])
def test_calibration_spec_rejects_bad_fields(fields, message):
    with pytest.raises(WeightsError, match=f"blend calibration: .*{message}"):
        CalibrationSpec(**fields)


def test_manifest_calibration_round_trips_and_old_manifests_load_as_none(tmp_path):
    path = small_manifest(tmp_path)
    data = json.loads(path.read_text())
    del data["blend"]["calibration"]  # a manifest written before calibration existed
    path.write_text(json.dumps(data))
    assert load_ensemble(path).blend.calibration == CalibrationSpec("none", 1.0, 0.0)
    data["blend"]["calibration"] = {"method": "platt", "scale": 0.4, "shift": -0.1}
    path.write_text(json.dumps(data))
    ensemble = load_ensemble(path)
    assert ensemble.blend.calibration == CalibrationSpec("platt", 0.4, -0.1)
    ensemble.save(path)
    assert json.loads(path.read_text())["blend"]["calibration"] == {"method": "platt", "scale": 0.4, "shift": -0.1}
    data["blend"]["calibration"] = {"method": "power", "scale": 0.0}
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="power needs scale > 0"):
        load_ensemble(path)


# tuning on synthetic sets whose answer is known


@pytest.mark.parametrize("method", ["temperature", "platt", "power"])
def test_each_fit_lowers_the_loss_of_an_overconfident_set(method):
    labels, truth = labelled(400, seed=1)
    blended = overconfident(truth)
    fitted = fit_calibration(method, labels, blended)
    assert fitted.method == method
    before = log_loss(labels, blending.final_prediction(blended, BlendSpec()))
    after = log_loss(labels, blending.final_prediction(blended, BlendSpec(calibration=fitted)))
    assert after < before - 0.05
    if method == "temperature":
        assert fitted.scale == pytest.approx(1 / 3, rel=0.25)  # the logit was tripled


def test_a_miscalibrated_set_gets_a_map_with_a_clear_held_out_gain():
    labels, truth = labelled(400, seed=0)
    result = choose_calibration(labels, overconfident(truth), folds=5, repeats=2)
    assert result["method"] != "none"
    assert result["log_loss_after"] < result["log_loss_before"] - 0.05
    assert result["gain"] == pytest.approx(result["log_loss_before"] - result["log_loss_after"])
    assert result["interval"][0] > 0 and result["clear"]


def test_a_calibrated_set_gets_no_map():
    labels, truth = labelled(400, seed=0)
    result = choose_calibration(labels, truth, folds=5, repeats=2)
    assert result["method"] == "none" and (result["scale"], result["shift"]) == (1.0, 0.0)
    assert not result["clear"] and result["interval"][0] <= 0


def test_calibration_leaves_no_blend_videos_at_the_fallback():
    labels, truth = labelled(300, seed=2)
    blended = overconfident(truth)
    blended[:40] = np.nan
    spec = BlendSpec(fallback=0.4)
    fitted = fit_calibration("platt", labels, blended, spec)
    assert np.all(blending.final_prediction(blended, BlendSpec(fallback=0.4, calibration=fitted))[:40] == 0.4)
    assert fitted == fit_calibration("platt", labels[40:], blended[40:], spec)  # fitted on scored videos only


def test_the_fallback_moves_to_the_share_of_fakes_without_a_blend():
    labels, blended = with_no_blend(600, missing=200, fakes=0.3, seed=0)
    result = choose_fallback(labels, blended, folds=5, repeats=2, current=0.5)
    assert result["no_blend"] == 200 and abs(result["value"] - 0.3) < 0.1
    assert result["interval"][0] > 0 and result["clear"]
    # 60 no-blend videos: the value moves as far, but the gain is too small to tell from noise
    labels, blended = with_no_blend(200, missing=60, fakes=0.3, seed=0)
    assert abs(choose_fallback(labels, blended, folds=5, repeats=2)["value"] - 0.3) < 0.1


def test_the_fallback_stays_in_the_clamp_and_has_nothing_to_tune_without_no_blend_videos():
    labels, blended = with_no_blend(200, missing=60, fakes=0.0, seed=1)
    assert choose_fallback(labels, blended, clamp=(0.05, 0.95))["value"] == 0.05
    labels, truth = labelled(100, seed=3)
    assert choose_fallback(labels, truth)["value"] is None


# bench/tune.py end to end, its scoring replaced by synthetic blends


def run_tune(monkeypatch, manifest: Path, labels: np.ndarray, blended: np.ndarray, tmp_path: Path, *extra: str):
    """tune.main at one frame count on a one-model manifest whose blend is `blended`; its JSON run."""
    ensemble = load_ensemble(manifest)

    @contextlib.contextmanager
    def engine(args):
        yield lambda videos, frames: (None, ensemble)

    monkeypatch.setattr(tune, "open_engine", engine)
    monkeypatch.setattr(tune, "labelled_videos", lambda args: ([SimpleNamespace(label=int(y)) for y in labels], {}))
    monkeypatch.setattr(tune, "model_scores", lambda evaluation, ensemble: blended[:, None])
    out = tmp_path / "tune.json"
    assert tune.main(["--set", "dfdc", "--ensemble", str(manifest), "--frames", "8", "--png",
                      str(tmp_path / "frames.png"), "--json", str(out), "--repeats", "1", *extra]) == 0
    return json.loads(out.read_text())


def test_tune_writes_only_gains_clear_of_noise(monkeypatch, tmp_path, capsys):
    manifest = small_manifest(tmp_path, names=("alpha",))
    labels, truth = labelled(400, seed=0)
    original = manifest.read_text()
    run_tune(monkeypatch, manifest, labels, truth, tmp_path)  # calibrated, every video blended
    out = capsys.readouterr().out
    assert "fallback: nothing to tune" in out and "not written: gain within noise" in out
    assert manifest.read_text() == original

    blended = overconfident(truth)
    blended[np.random.default_rng(0).permutation(400)[:40]] = np.nan
    run = run_tune(monkeypatch, manifest, labels, blended, tmp_path, "--dry-run")
    assert "not written (--dry-run)" in capsys.readouterr().out and manifest.read_text() == original
    assert run["calibration"]["clear"] and run["best_frames"] == 8 and list(run["frames_per_video"]) == ["8"]

    run = run_tune(monkeypatch, manifest, labels, blended, tmp_path)
    assert f"written into {manifest}" in capsys.readouterr().out
    blend = load_ensemble(manifest).blend
    assert blend.calibration == CalibrationSpec(**{k: run["calibration"][k] for k in ("method", "scale", "shift")})
    assert blend.calibration.method != "none"
    assert blend.fallback == (run["fallback"]["value"] if run["fallback"]["clear"] else 0.5)
    assert set(run) == {"set", "n", "frames_per_video", "best_frames", "clamp", "fallback", "calibration"}


# the kernel, and the local LB's copy of what it writes


def test_the_local_lb_blend_row_is_calibrated_and_the_member_rows_are_not(monkeypatch, tmp_path):
    manifest = small_manifest(tmp_path)
    data = json.loads(manifest.read_text())
    data["blend"]["calibration"] = {"method": "temperature", "scale": 2.0, "shift": 0.0}
    manifest.write_text(json.dumps(data))
    scores = np.array([[0.6, 0.8], [0.7, np.nan], [np.nan, np.nan]])
    monkeypatch.setattr(local_lb, "model_scores", lambda evaluation, ensemble: scores)
    rows = local_lb.predictions(None, load_ensemble(manifest))
    assert rows["alpha"].tolist() == pytest.approx([0.6, 0.7, 0.5]) and rows["beta"][0] == pytest.approx(0.8)
    assert rows[local_lb.BLEND].tolist() == pytest.approx([0.49 / (0.49 + 0.09), 0.49 / (0.49 + 0.09), 0.5])


@pytest.mark.slow
def test_the_kernel_writes_the_manifests_calibration(shared, ensemble_path, tmp_path):
    videos = shared / "data" / "dfdc_sample"
    plain_rows, plain = run_kernel(videos, tmp_path, ensemble_path, "--frames-per-video", "4")
    folder = shutil.copytree(ensemble_path.parent, tmp_path / "weights")
    data = json.loads((folder / "ensemble.json").read_text())
    data["blend"]["calibration"] = {"method": "platt", "scale": 0.5, "shift": 0.3}
    (folder / "ensemble.json").write_text(json.dumps(data))
    rows, report = run_kernel(videos, tmp_path, folder / "ensemble.json", "--frames-per-video", "4")
    assert set(rows) == set(plain_rows) and len(rows) == 4
    spec = load_ensemble(folder / "ensemble.json").blend
    for name, label in rows.items():
        blended = report[name]["blended"]
        assert blended == plain[name]["blended"]  # the report keeps the uncalibrated blend
        assert plain_rows[name] == pytest.approx(min(max(blended, 0.01), 0.99), abs=1e-6)  # as before
        assert label == pytest.approx(blending.clamp_prediction(sigmoid(0.5 * np.log(blended / (1 - blended)) + 0.3),
                                                                spec.clamp, spec.fallback), abs=1e-6)
        assert label != pytest.approx(plain_rows[name], abs=1e-3)


def test_platt_is_scikit_learns_logistic_regression_on_the_logit():
    """Without a clamp, the Platt fit is an unpenalised logistic regression on logit(p): scikit-learn's agrees."""
    from sklearn.linear_model import LogisticRegression

    labels, truth = labelled(400, seed=4)
    blended = overconfident(truth)
    fitted = fit_calibration("platt", labels, blended, BlendSpec(clamp=(0.0, 1.0)))
    reference = LogisticRegression(C=np.inf).fit(logit(blended)[:, None], labels)
    assert fitted.scale == pytest.approx(reference.coef_[0, 0], abs=2e-3)
    assert fitted.shift == pytest.approx(reference.intercept_[0], abs=2e-3)
