"""Frame aggregation, weighted blend and clipping."""
import math

import pytest

from blending import aggregate_frames, blend_models, clip_prediction


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


def test_clip_and_fallback():
    assert clip_prediction(0.999, (0.01, 0.99), 0.5) == 0.99
    assert clip_prediction(0.0, (0.01, 0.99), 0.5) == 0.01
    assert clip_prediction(0.3, (0.01, 0.99), 0.5) == 0.3
    assert clip_prediction(math.nan, (0.01, 0.99), 0.5) == 0.5
