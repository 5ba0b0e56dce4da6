"""Turn per-frame P(FAKE) scores into one clamped prediction per video: aggregate frames, combine tracks, blend
the models, clamp."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def aggregate_frames(frame_scores: Sequence[float], method: str = "mean") -> float:
    """One score from many frame (or clip) scores; NaN when there are none.

    mean: the plain mean. confident: the 1st-place DFDC rule: with more than 11 frames of which more than
    n / 2.5 score above 0.8, their mean; else if more than 90% score below 0.2, their mean; else the mean.
    confidence_weighted: each score weighted by its distance from 0.5, so unsure frames count less.
    """
    scores = np.asarray(frame_scores, dtype=np.float64)
    if scores.size == 0:
        return math.nan
    if method == "mean":
        return float(scores.mean())
    if method == "confident":
        fake, real = scores[scores > 0.8], scores[scores < 0.2]
        if scores.size > 11 and fake.size > scores.size / 2.5:
            return float(fake.mean())
        if real.size > 0.9 * scores.size:
            return float(real.mean())
        return float(scores.mean())
    if method == "confidence_weighted":
        confidence = np.abs(scores - 0.5)
        if confidence.sum() == 0:
            return float(scores.mean())
        return float((scores * confidence).sum() / confidence.sum())
    raise ValueError(f"unknown frame aggregation {method!r}")


def combine_tracks(track_scores: Sequence[float], method: str = "max") -> float:
    """A video score from its face tracks' scores (max: one fake face makes a fake video); NaN without any."""
    scores = [score for score in track_scores if math.isfinite(score)]
    if not scores:
        return math.nan
    if method == "max":
        return max(scores)
    if method == "mean":
        return sum(scores) / len(scores)
    raise ValueError(f"unknown track combination {method!r}")


def video_score(track_frame_scores: Sequence[Sequence[float]], aggregation: str = "mean",
                combine: str = "max") -> float:
    """One model's video score: each track's frame (or clip) scores aggregated, then the tracks combined."""
    return combine_tracks([aggregate_frames(scores, aggregation) for scores in track_frame_scores], combine)


def blend_models(video_scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of the models' video scores, renormalised over the models that produced a score."""
    total = weighted = 0.0
    for name, score in video_scores.items():
        weight = weights[name]
        if math.isfinite(score) and weight > 0:
            total += weight
            weighted += weight * score
    return weighted / total if total > 0 else math.nan


def clamp_prediction(score: float, clamp: tuple[float, float], fallback: float) -> float:
    """Clamp to [lo, hi]; a missing (NaN) score becomes the fallback value."""
    if not math.isfinite(score):
        return fallback
    lo, hi = clamp
    return min(max(score, lo), hi)
