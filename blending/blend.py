"""Turn per-frame P(FAKE) scores into one clamped prediction per video: aggregate frames, combine tracks, blend
the models, calibrate, clamp."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

SHARPEN_POWER = 0.65  # NTech (3rd place): p -> 0.5 + sign(p - 0.5) |p - 0.5|^0.65, pushed away from 0.5
SHARPEN_LIMITS = (0.01, 0.99)
# logit_mean reads each logit back from its P(FAKE), which inference.classify keeps in float64 for such a model;
# held 2^-53 (float64's last step below 1) away from 0 and 1, none is infinite. A logit l comes back within about
# e^|l| x 1e-16: 5e-8 at 20, 1e-3 at 30; beyond 36.7 it reads as 36.7.
LOGIT_EDGE = 2.0 ** -53


def aggregate_frames(frame_scores: Sequence[float], method: str = "mean") -> float:
    """One score from many frame (or clip) scores; NaN when there are none.

    mean, median: as named. confident: the 1st-place DFDC rule, as their code ran it: with more than 11 scores
    above 0.8 that are also more than n // 2.5 of the n, their mean; else if more than 90% score below 0.2, their
    mean; else the mean. confidence_weighted: each score weighted by its distance from 0.5, so unsure frames count
    less. sharpen: NTech's rule, each score sharpened (SHARPEN_POWER) and clamped to SHARPEN_LIMITS, weighted by
    the distance of the original score from 0.5 (+ 1e-4). logit_mean: the sigmoid of the mean logit (polimi).
    """
    scores = np.asarray(frame_scores, dtype=np.float64)
    if scores.size == 0:
        return math.nan
    if method == "mean":
        return float(scores.mean())
    if method == "median":
        return float(np.median(scores))
    if method == "confident":
        fake, real = scores[scores > 0.8], scores[scores < 0.2]
        if fake.size > 11 and fake.size > scores.size // 2.5:
            return float(fake.mean())
        if real.size > 0.9 * scores.size:
            return float(real.mean())
        return float(scores.mean())
    if method == "confidence_weighted":
        confidence = np.abs(scores - 0.5)
        if confidence.sum() == 0:
            return float(scores.mean())
        return float((scores * confidence).sum() / confidence.sum())
    if method == "sharpen":
        sharp = np.clip(power_map(scores, SHARPEN_POWER), *SHARPEN_LIMITS)
        return float(np.average(sharp, weights=np.abs(scores - 0.5) + 1e-4))
    if method == "logit_mean":
        return float(1 / (1 + np.exp(-logit(scores).mean())))
    raise ValueError(f"unknown frame aggregation {method!r}")


def logit(scores: np.ndarray) -> np.ndarray:
    """The logit of each P(FAKE), held LOGIT_EDGE away from 0 and 1 so none is infinite."""
    held = np.clip(scores, LOGIT_EDGE, 1 - LOGIT_EDGE)
    return np.log(held) - np.log1p(-held)


def power_map(scores: np.ndarray, power: float) -> np.ndarray:
    """NTech's transform: 0.5 + sign(p - 0.5) |p - 0.5|^power (below 1 it pushes scores away from 0.5), unclipped."""
    distance = scores - 0.5
    return 0.5 + np.sign(distance) * np.abs(distance) ** power


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
    """One model's video score: each track's frame (or clip) scores aggregated, then the tracks combined by `max`
    or `mean`; or with `pool`, every face of every track aggregated at once (as the 1st and 3rd places did)."""
    if combine == "pool":
        pooled = [score for scores in track_frame_scores for score in scores]
        return aggregate_frames(pooled, aggregation)
    return combine_tracks([aggregate_frames(scores, aggregation) for scores in track_frame_scores], combine)


def member_score(frame_scores: Mapping[str, Sequence[Sequence[float]]], models: Sequence[str], aggregation: str,
                 combine: str) -> float:
    """One blend member's video score: a model's, or a pool's, whose models' tracks are scored as one model's (with
    `pool`, every face of every model aggregated at once, as NTech's sharpen did)."""
    return video_score([track for name in models for track in frame_scores.get(name, [])], aggregation, combine)


def blend_models(video_scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of the models' video scores, renormalised over the models that produced a score."""
    total = weighted = 0.0
    for name, score in video_scores.items():
        weight = weights[name]
        if math.isfinite(score) and weight > 0:
            total += weight
            weighted += weight * score
    return weighted / total if total > 0 else math.nan


def clamp_prediction(score, clamp: tuple[float, float], fallback: float):
    """Clamp a score (or an array of them) to [lo, hi]; a missing (NaN) score becomes the fallback value."""
    score = np.asarray(score, dtype=np.float64)
    clamped = np.where(np.isfinite(score), np.clip(score, *clamp), fallback)
    return float(clamped) if clamped.ndim == 0 else clamped


def calibrate(score, method: str = "none", scale: float = 1.0, shift: float = 0.0):
    """A blend P(FAKE) (or an array) mapped: none p; temperature sigmoid(scale logit p); platt sigmoid(scale logit p +
    shift); power 0.5 + sign(p - 0.5) |p - 0.5|^scale, in [0, 1]. NaN stays NaN."""
    missing = np.isnan(np.asarray(score, dtype=np.float64))
    p = np.where(missing, 0.5, score)  # NaN mapped as any score would raise floating-point warnings
    if method == "none":
        mapped = p
    elif method in ("temperature", "platt"):
        line = scale * logit(p) + (shift if method == "platt" else 0.0)
        mapped = np.exp(-np.logaddexp(0.0, -line))  # the sigmoid, without overflow at either end
    elif method == "power":
        mapped = np.clip(power_map(p, scale), 0.0, 1.0)
    else:
        raise ValueError(f"unknown calibration {method!r}")
    mapped = np.where(missing, np.nan, mapped)
    return float(mapped) if mapped.ndim == 0 else mapped


def final_prediction(blended, spec):
    """What the kernel writes for a video's blend (or an array of them) under a manifest's `BlendSpec`: calibrated,
    then clamped; the fallback where the blend is missing (NaN)."""
    calibration = spec.calibration
    return clamp_prediction(calibrate(blended, calibration.method, calibration.scale, calibration.shift),
                            spec.clamp, spec.fallback)
