"""Turn per-frame P(FAKE) scores into one clipped prediction per video."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def aggregate_frames(frame_scores: Sequence[float], method: str = "mean") -> float:
    """One video score from its frame scores; NaN when there are none."""
    scores = np.asarray(frame_scores, dtype=np.float64)
    if scores.size == 0:
        return math.nan
    if method == "mean":
        return float(scores.mean())
    raise ValueError(f"unknown frame aggregation {method!r}")


def blend_models(video_scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of the models' video scores, renormalised over the models that produced a score."""
    total = weighted = 0.0
    for name, score in video_scores.items():
        weight = weights[name]
        if math.isfinite(score) and weight > 0:
            total += weight
            weighted += weight * score
    return weighted / total if total > 0 else math.nan


def clip_prediction(score: float, clip: tuple[float, float], fallback: float) -> float:
    """Clip to [lo, hi]; a missing (NaN) score becomes the fallback value."""
    if not math.isfinite(score):
        return fallback
    lo, hi = clip
    return min(max(score, lo), hi)
