"""Frame aggregation, weighted blend and clamping."""
import math

import pytest

from blending import aggregate_frames, blend_models, clamp_prediction, combine_tracks, video_score


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
    weights = [abs(p - 0.5) + 1e-4 for p in sharp]
    expected = (sharp[0] * weights[0] + sharp[1] * weights[1]) / sum(weights)
    assert aggregate_frames([0.7, 0.4], "sharpen") == pytest.approx(expected)
    assert aggregate_frames([1.0, 0.0], "sharpen") == pytest.approx(0.5)  # clamped to 0.99 and 0.01, equal weights
    assert aggregate_frames([0.5, 0.5], "sharpen") == pytest.approx(0.5)


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
