"""Frame aggregation, weighted blend and clamping; the teams' per-video rules against their stated examples and
against loops over their formulas (tests/team_reference.py) on thousands of random score lists."""
import math
import statistics

import numpy as np
import pytest

from blending import aggregate_frames, blend_models, clamp_prediction, combine_tracks, video_score
from tests import team_reference


def test_mean_of_frames_and_nan_without_frames():
    assert aggregate_frames([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert math.isnan(aggregate_frames([]))
    with pytest.raises(ValueError):
        aggregate_frames([0.1], method="median-of-nothing")


def test_weighted_blend_skips_models_without_a_score():
    weights = {"a": 1.0, "b": 3.0, "c": 1.0}
    assert blend_models({"a": 0.2, "b": 0.6, "c": 0.4}, weights) == pytest.approx((0.2 + 1.8 + 0.4) / 5)
    assert blend_models({"a": 0.2, "b": math.nan, "c": 0.4}, weights) == pytest.approx(0.3)
    assert math.isnan(blend_models({"a": math.nan}, weights))


def test_clamp_and_fallback():
    assert clamp_prediction(0.999, (0.01, 0.99), 0.5) == 0.99
    assert clamp_prediction(0.0, (0.01, 0.99), 0.5) == 0.01
    assert clamp_prediction(0.3, (0.01, 0.99), 0.5) == 0.3
    assert clamp_prediction(math.nan, (0.01, 0.99), 0.5) == 0.5


def test_confident_strategy_follows_the_first_place_rule():
    """The 1st place's code: more than 11 scores above 0.8, and more than n // 2.5 of them (ANCHOR_CHECKPOINTS.md)."""
    assert aggregate_frames([0.9] * 9 + [0.5] * 11, "confident") == pytest.approx(0.68)  # 9 confident: plain mean
    assert aggregate_frames([0.95] * 13 + [0.3] * 19, "confident") == pytest.approx(0.95)
    assert aggregate_frames([0.9] * 7 + [0.4] * 9, "confident") == pytest.approx(0.61875)
    assert aggregate_frames([0.9] * 11 + [0.5], "confident") == pytest.approx((9.9 + 0.5) / 12)  # 11 is not > 11
    assert aggregate_frames([0.9] * 12 + [0.5], "confident") == pytest.approx(0.9)  # 12 > 11 and > 13 // 2.5 = 5
    assert aggregate_frames([0.9] * 12 + [0.5] * 18, "confident") == pytest.approx((10.8 + 9) / 30)  # 12 = 30 // 2.5
    assert aggregate_frames([0.9] * 13 + [0.5] * 17, "confident") == pytest.approx(0.9)
    mostly_real = [0.1] * 19 + [0.9]          # 95% below 0.2
    assert aggregate_frames(mostly_real, "confident") == pytest.approx(0.1)
    assert aggregate_frames([0.1] * 9 + [0.9], "confident") == pytest.approx(0.18)  # 90% is not more than 90%
    mixed = [0.5, 0.6, 0.1, 0.9]
    assert aggregate_frames(mixed, "confident") == pytest.approx(0.525)


def test_median_and_ntech_sharpening():
    assert aggregate_frames([0.1, 0.9, 0.3, 0.35, 0.2], "median") == pytest.approx(0.3)
    sharp = [0.5 + 0.2 ** 0.65, 0.5 - 0.1 ** 0.65]  # 0.7 and 0.4, pushed away from 0.5 (0.851 and 0.276)
    weights = [0.2 + 1e-4, 0.1 + 1e-4]  # from the original scores' distance to 0.5, not the sharpened ones'
    expected = (sharp[0] * weights[0] + sharp[1] * weights[1]) / sum(weights)
    assert aggregate_frames([0.7, 0.4], "sharpen") == pytest.approx(expected, abs=1e-12)
    assert aggregate_frames([1.0, 0.0], "sharpen") == pytest.approx(0.5)  # clamped to 0.99 and 0.01, equal weights
    assert aggregate_frames([0.5, 0.5], "sharpen") == pytest.approx(0.5)
    # ANCHOR_CHECKPOINTS.md section 2's examples: 0.6084 was the old rule's, weighted by the sharpened scores
    assert aggregate_frames([0.6] * 10 + [0.2], "sharpen") == pytest.approx(0.5668, abs=5e-5)
    assert aggregate_frames([0.9, 0.5], "sharpen") == pytest.approx(0.989878, abs=5e-7)


def test_logit_mean_is_the_sigmoid_of_the_mean_logit():
    logits = np.array([2.0, -1.0, 0.5])
    scores = 1 / (1 + np.exp(-logits))
    assert aggregate_frames(scores, "logit_mean") == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-12)
    assert aggregate_frames(scores, "logit_mean") != pytest.approx(aggregate_frames(scores, "mean"), abs=1e-3)
    # a certain frame does not make the video certain: 0 and 1 count as logits of -36.7 and 36.7
    assert aggregate_frames([1.0] + [0.1] * 9, "logit_mean") == pytest.approx(
        1 / (1 + math.exp(-(36.7368005696771 - 9 * math.log(9)) / 10)), abs=1e-9)
    assert math.isfinite(aggregate_frames([0.0, 1.0, 1.0], "logit_mean"))


def random_score_lists(count: int, seed: int):
    """Score lists of 1 to 64 frames: uniform scores, some pinned to the rules' thresholds (0.2, 0.5, 0.8), some
    near 0 and 1."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, 65))
        scores = rng.uniform(0, 1, n)
        kind = rng.integers(0, 4)
        if kind == 1:
            scores[rng.random(n) < 0.3] = rng.choice([0.2, 0.5, 0.8])
        elif kind == 2:
            scores = np.where(rng.random(n) < 0.5, rng.uniform(0.8, 1, n), rng.uniform(0, 0.2, n))
        elif kind == 3:
            scores = np.clip(rng.beta(0.2, 0.2, n), 1e-9, 1 - 1e-9)
        yield scores.tolist()


@pytest.mark.parametrize("rule, reference", [("confident", team_reference.confident),
                                             ("sharpen", team_reference.sharpen),
                                             ("logit_mean", team_reference.logit_mean),
                                             ("median", statistics.median), ("mean", statistics.fmean)])
def test_each_rule_equals_its_formula_on_random_score_lists(rule, reference):
    worst = max(abs(aggregate_frames(scores, rule) - reference(scores)) for scores in random_score_lists(3000, 7))
    assert worst <= 1e-9


def test_the_old_sharpen_weights_differ_from_ntechs():
    """What issue 21 fixed: weights from the sharpened scores moved most videos."""
    def sharpened_weights(scores):
        sharp = [min(max(0.5 + math.copysign(abs(p - 0.5) ** 0.65, p - 0.5), 0.01), 0.99) for p in scores]
        weights = [abs(p - 0.5) + 1e-4 for p in sharp]
        return sum(p * w for p, w in zip(sharp, weights)) / sum(weights)

    lists = list(random_score_lists(500, 3))
    moved = sum(abs(sharpened_weights(s) - aggregate_frames(s, "sharpen")) > 1e-6 for s in lists)
    assert moved > 400


def test_pool_aggregates_every_face_of_every_track_at_once():
    tracks = [[0.9] * 6 + [0.5] * 2, [0.9] * 6]  # 12 confident fakes only when pooled
    assert video_score(tracks, "confident", "pool") == pytest.approx(0.9)
    assert video_score(tracks, "confident", "max") == pytest.approx(0.9)  # the second track's plain mean
    assert video_score(tracks, "confident", "mean") == pytest.approx((0.8 + 0.9) / 2)
    assert video_score([[0.2, 0.4], [0.9]], "mean", "pool") == pytest.approx(0.5)
    assert math.isnan(video_score([[], []], "mean", "pool"))


def test_confidence_weighted_mean_discounts_unsure_frames():
    assert aggregate_frames([0.9, 0.5, 0.5], "confidence_weighted") == pytest.approx(0.9)
    assert aggregate_frames([0.9, 0.2], "confidence_weighted") == pytest.approx((0.9 * 0.4 + 0.2 * 0.3) / 0.7)
    assert aggregate_frames([0.5, 0.5], "confidence_weighted") == 0.5


def test_tracks_combine_by_max_or_mean():
    assert combine_tracks([0.2, 0.8, math.nan]) == 0.8
    assert combine_tracks([0.2, 0.8], "mean") == pytest.approx(0.5)
    assert math.isnan(combine_tracks([]))
