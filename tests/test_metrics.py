"""Local-leaderboard scoring (bench.metrics) and run history (bench.history) on small synthetic predictions."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.history import append_run, leaderboard, load_runs
from bench.metrics import Scores, histogram_png, score, score_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def noisy_predictions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced-ish labels with informative but imperfect predictions."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    predictions = np.clip(0.25 + 0.5 * labels + rng.normal(0.0, 0.2, size=n), 0.0, 1.0)
    return labels, predictions


def test_log_loss_matches_hand_computation():
    labels, predictions = [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.5]
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.5)) / 4
    scores = score(labels, predictions, bootstrap=50)
    assert scores.log_loss == pytest.approx(expected, rel=1e-12)
    assert (scores.n, scores.n_real, scores.n_fake) == (4, 2, 2)
    assert scores.accuracy == pytest.approx(0.75)  # 0.5 counts as FAKE, so the REAL video at 0.5 is a miss
    assert scores.mean_real == pytest.approx(0.35)
    assert scores.mean_fake == pytest.approx(0.75)


def test_extreme_predictions_are_clipped_like_kaggle():
    scores = score([1, 0], [0.0, 1.0], bootstrap=10)
    # 1 - 1e-15 is not exact in float64, hence the loose tolerance
    assert scores.log_loss == pytest.approx(-math.log(1e-15), rel=1e-4)


def test_perfect_predictions_give_auc_one():
    scores = score([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], bootstrap=10)
    assert scores.auc == 1.0
    assert scores.accuracy == 1.0


def test_single_class_gives_nan_auc_and_finite_log_loss():
    scores = score([1, 1, 1], [0.7, 0.8, 0.9], bootstrap=10)
    assert math.isnan(scores.auc)
    assert math.isnan(scores.mean_real)
    assert math.isfinite(scores.log_loss)
    assert scores.n_real == 0 and scores.n_fake == 3


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_samples():
    small = score(*noisy_predictions(50), bootstrap=300)
    large = score(*noisy_predictions(2000), bootstrap=300)
    for scores in (small, large):
        low, high = scores.log_loss_ci
        assert low <= scores.log_loss <= high
    assert large.log_loss_ci[1] - large.log_loss_ci[0] < small.log_loss_ci[1] - small.log_loss_ci[0]


def test_bootstrap_is_seeded():
    labels, predictions = noisy_predictions(200)
    assert score(labels, predictions, seed=3) == score(labels, predictions, seed=3)


def test_nan_prediction_raises_with_count():
    with pytest.raises(ValueError, match="2 of 4 predictions are NaN"):
        score([0, 1, 0, 1], [0.1, float("nan"), 0.3, float("nan")])


def test_score_table_has_one_row_per_name():
    labels, predictions = noisy_predictions(100)
    table = score_table({"model_a": score(labels, predictions, bootstrap=50),
                         "blend": score(labels, predictions * 0.9, bootstrap=50)})
    lines = table.splitlines()
    assert "log loss [95% CI]" in lines[0] and "AUC" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["model_a", "blend"]


def test_histogram_png_is_written(tmp_path):
    labels, predictions = noisy_predictions(200)
    path = histogram_png(labels, predictions, tmp_path / "plots" / "blend.png", "blend")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5_000


def scores_with_log_loss(loss: float) -> Scores:
    return Scores(n=10, n_real=5, n_fake=5, log_loss=loss, log_loss_ci=(loss - 0.1, loss + 0.1),
                  auc=float("nan"), accuracy=0.5, mean_real=0.4, mean_fake=0.6)


def test_history_round_trip_ranks_by_log_loss_and_filters_by_set(tmp_path):
    history = tmp_path / "lb" / "history.jsonl"
    append_run(history, "dev", {"models": "worse"}, {"blend": scores_with_log_loss(0.5)})
    record = append_run(history, "dev", {"models": "better"}, {"blend": scores_with_log_loss(0.2)})
    append_run(history, "test", {"models": "other set"}, {"blend": scores_with_log_loss(0.1)})
    append_run(history, "dev", {"models": "no blend"}, {"model_a": scores_with_log_loss(0.05)})

    runs = load_runs(history)
    assert len(runs) == 4
    assert runs[1] == json.loads(json.dumps(record))
    assert runs[1]["scores"]["blend"]["auc"] is None  # NaN is stored as null
    assert {"time", "set", "n", "config", "commit", "scores"} <= set(runs[0])

    ranked = leaderboard(runs, set_name="dev").splitlines()[2:]
    assert len(ranked) == 2 and "better" in ranked[0] and "worse" in ranked[1]
    everything = leaderboard(runs).splitlines()[2:]
    assert "other set" in everything[0] and len(everything) == 3
    assert "no runs" in leaderboard(runs, set_name="missing")


def test_corrupt_history_line_is_skipped_with_warning(tmp_path):
    history = tmp_path / "history.jsonl"
    append_run(history, "dev", {}, {"blend": scores_with_log_loss(0.3)})
    with open(history, "a") as f:
        f.write('{"time": "truncated\n')
    append_run(history, "dev", {}, {"blend": scores_with_log_loss(0.4)})
    with pytest.warns(UserWarning, match="history.jsonl:2"):
        runs = load_runs(history)
    assert [run["scores"]["blend"]["log_loss"] for run in runs] == [0.3, 0.4]


def test_commit_is_null_outside_a_git_checkout(tmp_path):
    record = append_run(tmp_path / "history.jsonl", "dev", {}, {"blend": scores_with_log_loss(0.3)}, repo=tmp_path)
    assert record["commit"] is None
