"""Frame aggregation, weighted blend and clamping."""
import math

import pytest

from blending import aggregate_frames, blend_models, clamp_prediction, combine_tracks


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
    mostly_fake = [0.9] * 9 + [0.3] * 11      # 20 frames, 9 > 20 / 2.5 above 0.8
    assert aggregate_frames(mostly_fake, "confident") == pytest.approx(0.9)
    few_frames = [0.9] * 8 + [0.3] * 3        # only 11 frames: not enough for the fake rule
    assert aggregate_frames(few_frames, "confident") == pytest.approx((7.2 + 0.9) / 11)
    mostly_real = [0.1] * 19 + [0.9]          # 95% below 0.2
    assert aggregate_frames(mostly_real, "confident") == pytest.approx(0.1)
    mixed = [0.5, 0.6, 0.1, 0.9]
    assert aggregate_frames(mixed, "confident") == pytest.approx(0.525)


def test_confidence_weighted_mean_discounts_unsure_frames():
    assert aggregate_frames([0.9, 0.5, 0.5], "confidence_weighted") == pytest.approx(0.9)
    assert aggregate_frames([0.9, 0.2], "confidence_weighted") == pytest.approx((0.9 * 0.4 + 0.2 * 0.3) / 0.7)
    assert aggregate_frames([0.5, 0.5], "confidence_weighted") == 0.5


def test_tracks_combine_by_max_or_mean():
    assert combine_tracks([0.2, 0.8, math.nan]) == 0.8
    assert combine_tracks([0.2, 0.8], "mean") == pytest.approx(0.5)
    assert math.isnan(combine_tracks([]))
