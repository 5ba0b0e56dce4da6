"""Offline blend fitting (bench/blend_fit.py): log loss, NaN-aware blend, weight fit, cross-validation, clamp
choice, manifest rewrite."""
import math

import numpy as np
import pytest
from scipy.optimize import OptimizeResult

from bench import blend_fit
from bench.blend_fit import blend, choose_clamp, cross_validate_weights, fit_weights, log_loss, write_blend
from blending import blend_models
from tests.helpers import small_manifest
from weights.manifest import load_ensemble


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture
def three_models():
    """400 videos scored by a strong model, a weak one and pure noise (labels, predictions)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    sign = 2 * labels - 1
    predictions = np.column_stack([
        sigmoid(2.0 * sign + rng.normal(0, 1, labels.size)),
        sigmoid(0.5 * sign + rng.normal(0, 1, labels.size)),
        rng.uniform(0, 1, labels.size),
    ])
    return labels, predictions


def test_log_loss_matches_the_formula_and_clips_like_kaggle():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))
    with pytest.raises(ValueError, match="NaN"):
        log_loss([1, 0], [0.5, math.nan])


def test_blend_renormalises_over_present_models_like_the_kernel():
    weights = np.array([1.0, 3.0, 1.0])
    predictions = np.array([
        [0.2, 0.6, 0.4],
        [0.2, math.nan, 0.4],
        [math.nan, math.nan, math.nan],
    ])
    blended = blend(predictions, weights)
    assert blended[:2] == pytest.approx([(0.2 + 1.8 + 0.4) / 5, 0.3])
    assert math.isnan(blended[2])
    kernel = blend_models({"a": 0.2, "b": math.nan, "c": 0.4}, dict(zip("abc", weights)))
    assert blended[1] == pytest.approx(kernel)
    assert math.isnan(blend(np.array([[math.nan, 0.7]]), [1.0, 0.0])[0])  # the only score has weight 0


def test_fitted_weights_are_a_distribution_that_beats_equal_weights(three_models):
    labels, predictions = three_models
    weights = fit_weights(labels, predictions)
    assert weights.shape == (3,) and np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)
    assert np.argmax(weights) == 0
    equal = np.full(3, 1 / 3)
    assert log_loss(labels, blend(predictions, weights)) <= log_loss(labels, blend(predictions, equal))
    assert np.array_equal(weights, fit_weights(labels, predictions))  # deterministic


def test_failed_optimiser_falls_back_to_equal_weights(three_models, monkeypatch, caplog):
    labels, predictions = three_models
    failure = OptimizeResult(success=False, message="synthetic failure", x=np.array([1.0, 0.0, 0.0]))
    monkeypatch.setattr(blend_fit, "minimize", lambda *args, **kwargs: failure)
    assert fit_weights(labels, predictions) == pytest.approx(np.full(3, 1 / 3))
    assert "synthetic failure" in caplog.text


def test_fit_scores_videos_without_any_score_at_the_fallback(three_models):
    labels, predictions = three_models
    predictions = predictions.copy()
    predictions[:20] = math.nan
    predictions[20:40, 0] = math.nan
    weights = fit_weights(labels, predictions)
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0) and np.argmax(weights) == 0


def test_cross_validation_reports_out_of_fold_losses_and_fold_weights(three_models):
    labels, predictions = three_models
    result = cross_validate_weights(labels, predictions, folds=4, seed=1)
    assert len(result["fold_weights"]) == 4
    assert all(len(w) == 3 and sum(w) == pytest.approx(1.0) for w in result["fold_weights"])
    assert 0 < result["fitted"] < result["equal"] < math.log(2) + 0.1
    # one class too small to stratify: plain k-fold still works
    few_fakes = np.zeros(30, dtype=int)
    few_fakes[:2] = 1
    result = cross_validate_weights(few_fakes, predictions[:30], folds=5)
    assert len(result["fold_weights"]) == 5 and math.isfinite(result["fitted"])


def test_clamp_stays_off_for_calibrated_predictions():
    rng = np.random.default_rng(2)
    truth = rng.uniform(0, 1, 2000)
    labels = (rng.uniform(size=truth.size) < truth).astype(int)
    result = choose_clamp(labels, truth)
    assert result["lo"] == 0.0 and result["hi"] == 1.0
    assert result["log_loss_clamped"] == pytest.approx(result["log_loss_unclamped"])


def test_clamp_tightens_for_overconfident_predictions():
    rng = np.random.default_rng(3)
    truth = rng.uniform(0.05, 0.95, 2000)
    labels = (rng.uniform(size=truth.size) < truth).astype(int)
    overconfident = sigmoid(6 * np.log(truth / (1 - truth)))
    result = choose_clamp(labels, overconfident)
    assert result["lo"] >= 0.05 and result["hi"] == pytest.approx(1 - result["lo"])
    assert result["log_loss_clamped"] < result["log_loss_unclamped"]
    assert result["cv_log_loss_clamped"] < result["log_loss_unclamped"]


def test_write_blend_round_trips_weights_and_clamp(tmp_path):
    path = small_manifest(tmp_path)
    write_blend(path, weights={"alpha": 0.75, "beta": np.float64(0.25)})
    write_blend(path, clamp=(0.02, 0.98))
    ensemble = load_ensemble(path)
    assert [(m.name, m.weight) for m in ensemble.models] == [("alpha", 0.75), ("beta", 0.25)]
    assert ensemble.blend.clamp == (0.02, 0.98) and ensemble.blend.fallback == 0.5
    assert ensemble.models[0].checkpoint == "alpha.pt" and ensemble.detector.arch == "blazeface"


def test_write_blend_rejects_a_clamp_excluding_the_fallback_and_unknown_models(tmp_path):
    path = small_manifest(tmp_path)
    before = path.read_text()
    with pytest.raises(ValueError, match="fallback"):
        write_blend(path, clamp=(0.6, 0.99))
    with pytest.raises(ValueError, match="exactly"):
        write_blend(path, weights={"alpha": 1.0, "gamma": 0.0})
    assert path.read_text() == before
