"""Error analysis of a local-LB run on arrays: per-video loss, the loss split by slices of the videos, calibration
error and each blend member's marginal value. `bench/report.py` lays the results out; nothing here runs a model."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.metrics import bootstrap_interval

FACE_SIDE_BINS = (64, 128, 256)  # pixels: DFDC faces run from ~40 px (far, 1080p) to ~500 px (close-ups)
DURATION_BINS = (5, 10, 20)  # seconds: DFDC clips are 10 s, FF++ sequences from 10 s to a minute
RESOLUTION_BINS = (480, 720, 1080)  # the frame's shorter side
RELIABILITY_BINS = 10


def binned(value: float | None, edges: tuple[float, ...], unit: str) -> str:
    """The name of the bin `value` falls in ("< 64 px", "64-128 px", ..., ">= 256 px"), or "unknown"."""
    if value is None or not math.isfinite(value):
        return "unknown"
    if value < edges[0]:
        return f"< {edges[0]:g} {unit}"
    for low, high in zip(edges, edges[1:]):
        if value < high:
            return f"{low:g}-{high:g} {unit}"
    return f">= {edges[-1]:g} {unit}"


def fallback_reason(error: str | None, facts: dict | None) -> str:
    """Why a video got the fallback value ("scored" when it did not): no face, unreadable, budget or no model
    score."""
    if error is None:
        return "scored"
    if facts and facts.get("skipped"):
        return "budget"
    if error == "no face found":
        return "no face"
    if error == "no model could score the faces":
        return "no model score"
    if not facts or not facts.get("width"):
        return "unreadable"
    return "failed after reading"


def slice_attributes(label: int, group: str, error: str | None, facts: dict | None, group_name: str,
                     extra: dict[str, str] | None = None) -> dict[str, str]:
    """The slices one video belongs to, by dimension: face size, tracks, fallback reason, resolution, duration, true
    class, the set's group (FF++ method, DFDC part, TIMIT quality) and any `extra` run-wide ones (FF++ compression)."""
    facts = facts or {}
    faces = facts.get("face_side")
    tracks = facts.get("tracks")
    shorter = min(facts.get("width") or 0, facts.get("height") or 0)
    return {
        "face size": "unknown" if not facts else "no face" if faces is None else binned(faces, FACE_SIDE_BINS, "px"),
        "tracks": "unknown" if tracks is None else ("3+" if tracks >= 3 else str(tracks)),
        "fallback": fallback_reason(error, facts or None),
        "resolution": binned(shorter or None, RESOLUTION_BINS, "p"),
        "duration": binned(facts.get("duration"), DURATION_BINS, "s"),
        "class": "FAKE" if label == 1 else "REAL",
        group_name: group,
        **(extra or {}),
    }


@dataclass(frozen=True)
class Slice:
    """The videos sharing one value of one dimension, and what they cost."""

    dimension: str
    value: str
    n: int
    log_loss: float
    log_loss_ci: tuple[float, float]
    share: float  # of the set's total loss
    excess: float  # total loss above what the set's mean loss would give these videos: what ranks slices


def slices(attributes: list[dict[str, str]], losses: np.ndarray, resamples: int = 1000) -> list[Slice]:
    """Every (dimension, value) slice with its n, log loss, interval and share of the loss, worst first: ranked
    by excess loss, so a bad slice outranks a big average one."""
    losses = np.asarray(losses, dtype=np.float64)
    total, mean = losses.sum(), losses.mean()
    found = []
    for dimension in dict.fromkeys(key for row in attributes for key in row):
        values = np.array([row.get(dimension, "unknown") for row in attributes])
        for value in dict.fromkeys(values.tolist()):
            inside = losses[values == value]
            found.append(Slice(dimension, value, int(inside.size), float(inside.mean()),
                               bootstrap_interval(inside, resamples), float(inside.sum() / total) if total else 0.0,
                               float(inside.sum() - inside.size * mean)))
    return sorted(found, key=lambda s: -s.excess)


def reliability(labels, predictions, bins: int = RELIABILITY_BINS) -> dict:
    """Reliability diagram data (equal-width bins: count, mean prediction, fake share) and the expected calibration
    error: the count-weighted mean gap between a bin's mean prediction and its fake share."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows, error = [], 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            confidence, observed = float(p[inside].mean()), float(y[inside].mean())
            rows.append({"low": b / bins, "high": (b + 1) / bins, "n": int(inside.sum()), "mean_prediction": confidence,
                         "fake_share": observed})
            error += inside.sum() / y.size * abs(confidence - observed)
    return {"bins": rows, "ece": float(error)}
