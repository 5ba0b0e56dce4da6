"""Fit the blend on a local-LB set: model weights and the clamp range, by log loss on labelled videos.

    python bench/blend_fit.py --set dfdc|timit|ff [--folds 5] [--dry-run] [local-LB options, --engine local|ray]

fits non-negative weights summing to 1, compares them with equal weights (on the fitting data and out of fold)
and writes them into the manifest. It runs the kernel's pipeline through the local leaderboard (cached), so the
weights are fitted on exactly the scores the kernel produces.

The fitting functions work on arrays (labels: 1 = FAKE; predictions: P(FAKE), one row per video, one column per
model). The kernel never imports this module; fitted values reach it through the manifest (`write_blend`).
A video whose blend is missing (NaN) is scored at `fallback`, the value the kernel writes for it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import minimize

from bench.local_lb import (
    EngineUnavailable,
    add_set_arguments,
    engine_failure,
    labelled_videos,
    model_scores,
    open_engine,
)
from bench.metrics import video_losses
from weights import CalibrationSpec, WeightsError, default_manifest, load_ensemble

log = logging.getLogger(__name__)

CLAMP_CANDIDATES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def log_loss(labels, predictions) -> float:
    """Binary log loss of P(FAKE) against labels (1 = FAKE), predictions clipped as Kaggle does."""
    return float(np.mean(video_losses(labels, predictions)))


def blend(predictions: np.ndarray, weights) -> np.ndarray:
    """Per-row weighted mean over the models with a finite score and positive weight (as `blend_models`); else NaN."""
    predictions = np.asarray(predictions, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if predictions.ndim != 2 or weights.shape != (predictions.shape[1],):
        raise ValueError(f"need (videos, models) predictions and one weight per model, got {predictions.shape} "
                         f"and {weights.shape}")
    if np.any(weights < 0):
        raise ValueError(f"blend weights must be >= 0, got {weights}")
    used = np.isfinite(predictions) & (weights > 0)
    total = np.where(used, weights, 0.0).sum(axis=1)
    weighted = (np.where(used, predictions, 0.0) * weights).sum(axis=1)
    return np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)


def fit_weights(labels, predictions, fallback: float = 0.5) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the blend's log loss (SLSQP from equal weights).

    Never worse than equal weights on the data it is fitted on; equal weights if the optimiser fails.
    """
    labels, predictions = _check_inputs(labels, predictions)
    n_models = predictions.shape[1]
    equal = np.full(n_models, 1.0 / n_models)
    if n_models == 1:
        return equal

    def blend_loss(weights: np.ndarray) -> float:
        # finite-difference steps may poke just below the [0, 1] bounds
        return log_loss(labels, _with_fallback(blend(predictions, np.clip(weights, 0.0, None)), fallback))

    result = minimize(
        blend_loss, equal, method="SLSQP", bounds=[(0.0, 1.0)] * n_models,
        constraints=[{"type": "eq", "fun": lambda weights: weights.sum() - 1.0}],
    )
    if not result.success:
        log.warning("blend weight fit failed (%s): using equal weights", result.message)
        return equal
    weights = np.clip(result.x, 0.0, None)
    weights /= weights.sum()
    # SLSQP's stopping point is not guaranteed to beat its start; the fit must never lose to equal weights
    return weights if blend_loss(weights) <= blend_loss(equal) else equal


def cross_validate_weights(labels, predictions, folds: int = 5, seed: int = 0, fallback: float = 0.5) -> dict:
    """Out-of-fold log loss of weights fitted per fold vs equal weights, with each fold's fitted weights."""
    labels, predictions = _check_inputs(labels, predictions)
    equal = np.full(predictions.shape[1], 1.0 / predictions.shape[1])
    fitted_out_of_fold = np.empty(len(labels))
    equal_out_of_fold = np.empty(len(labels))
    fold_weights = []
    for train, test in _folds(labels, folds, seed):
        weights = fit_weights(labels[train], predictions[train], fallback)
        fold_weights.append([float(w) for w in weights])
        fitted_out_of_fold[test] = _with_fallback(blend(predictions[test], weights), fallback)
        equal_out_of_fold[test] = _with_fallback(blend(predictions[test], equal), fallback)
    return {
        "fitted": log_loss(labels, fitted_out_of_fold),
        "equal": log_loss(labels, equal_out_of_fold),
        "fold_weights": fold_weights,
    }


def choose_clamp(labels, predictions, candidates: Sequence[float] = CLAMP_CANDIDATES, folds: int = 5, seed: int = 0,
                fallback: float = 0.5) -> dict:
    """The symmetric clamp [lo, 1 - lo] minimising log loss of the final (blended) predictions, checked out of fold.

    Each fold picks its lo on the training folds and is scored on the held-out one; ties go to the smallest lo.
    """
    labels = _check_labels(labels)
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.shape != labels.shape:
        raise ValueError(f"need one blended prediction per video, got {predictions.shape} for {labels.shape} labels")
    candidates = np.array(sorted(candidates), dtype=np.float64)
    if candidates.size == 0 or candidates[0] < 0 or candidates[-1] >= 0.5:
        raise ValueError(f"clamp candidates must lie in [0, 0.5), got {candidates.tolist()}")

    def clamped_loss(rows, lo: float) -> float:
        return log_loss(labels[rows], _clamp(predictions[rows], lo, fallback))

    def best_lo(rows) -> float:
        return float(candidates[np.argmin([clamped_loss(rows, lo) for lo in candidates])])

    out_of_fold = np.empty(len(labels))
    for train, test in _folds(labels, folds, seed):
        out_of_fold[test] = _clamp(predictions[test], best_lo(train), fallback)
    everything = np.arange(len(labels))
    lo = best_lo(everything)
    return {
        "lo": lo,
        "hi": 1.0 - lo,
        "cv_log_loss_clamped": log_loss(labels, out_of_fold),
        "log_loss_unclamped": log_loss(labels, _with_fallback(predictions, fallback)),
        "log_loss_clamped": clamped_loss(everything, lo),
    }


def write_blend(manifest: Path, weights: dict[str, float] | None = None, clamp: tuple[float, float] | None = None,
                fallback: float | None = None, calibration: CalibrationSpec | None = None) -> None:
    """Rewrite the manifest's blend weights (one per member: a model alone or a pool, by name), its clamp range, its
    fallback (which must lie inside the clamp) and/or its calibration; only those given change."""
    ensemble = load_ensemble(manifest)
    changes = {"clamp": None if clamp is None else (float(clamp[0]), float(clamp[1])),
               "fallback": None if fallback is None else float(fallback), "calibration": calibration}
    try:
        if weights is not None:
            ensemble = ensemble.with_weights(weights)
        blend_spec = dataclasses.replace(ensemble.blend, **{k: v for k, v in changes.items() if v is not None})
    except WeightsError as error:
        raise ValueError(str(error)) from None
    dataclasses.replace(ensemble, blend=blend_spec).save(manifest)


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be a non-empty 1-D array of 0 (REAL) and 1 (FAKE)")
    return labels.astype(np.int64)


def _check_inputs(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
    labels = _check_labels(labels)
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.ndim != 2 or predictions.shape[0] != len(labels) or predictions.shape[1] == 0:
        raise ValueError(f"need (videos, models) predictions for {len(labels)} videos, got {predictions.shape}")
    return labels, predictions


def _with_fallback(predictions: np.ndarray, fallback: float) -> np.ndarray:
    return np.where(np.isfinite(predictions), predictions, fallback)


def _clamp(predictions: np.ndarray, lo: float, fallback: float) -> np.ndarray:
    """What the kernel writes (`clamp_prediction`): clamped scores, the unclamped fallback for missing ones."""
    return _with_fallback(np.clip(predictions, lo, 1.0 - lo), fallback)


def _folds(labels: np.ndarray, folds: int, seed: int):
    """(train, test) index arrays of a seeded k-fold split, stratified when each class fills every fold."""
    if not 2 <= folds <= len(labels):
        raise ValueError(f"need 2 <= folds <= videos ({len(labels)}), got {folds}")
    rng = np.random.default_rng(seed)
    if np.bincount(labels, minlength=2).min() >= folds:
        # dealing each class in turn round-robin spreads both classes evenly and keeps folds equal in size
        order = np.concatenate([rng.permutation(np.flatnonzero(labels == label)) for label in (0, 1)])
    else:
        order = rng.permutation(len(labels))
    fold_of = np.empty(len(labels), dtype=np.int64)
    fold_of[order] = np.arange(len(labels)) % folds
    for fold in range(folds):
        yield np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="report, but leave the manifest as it is")
    args = parser.parse_args(argv)
    if args.set is None:
        parser.error("--set is required")
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")

    manifest = args.ensemble or default_manifest()
    try:
        with open_engine(args) as score_videos:
            videos, _ = labelled_videos(args)
            evaluation, ensemble = score_videos(videos, args.frames_per_video)
    except EngineUnavailable as error:
        return engine_failure("blend_fit", error)
    labels = np.array([v.label for v in videos])
    scores = model_scores(evaluation, ensemble)
    names = [m.name for m in ensemble.members()]
    fallback = ensemble.blend.fallback

    weights = fit_weights(labels, scores, fallback=fallback)
    equal = np.full(len(names), 1 / len(names))
    fitted_loss = log_loss(labels, np.nan_to_num(blend(scores, weights), nan=fallback))
    equal_loss = log_loss(labels, np.nan_to_num(blend(scores, equal), nan=fallback))
    print(f"{args.set}: {len(videos)} videos, {len(names)} models")
    print("fitted weights: " + ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)))
    print(f"log loss on the fitting data: fitted {fitted_loss:.4f}, equal weights {equal_loss:.4f}")
    if len(videos) >= args.folds >= 2:
        cv = cross_validate_weights(labels, scores, folds=args.folds, fallback=fallback)
        print(f"{args.folds}-fold cross-validated log loss: fitted {cv['fitted']:.4f}, equal {cv['equal']:.4f}")
    if not args.dry_run:
        write_blend(manifest, weights=dict(zip(names, np.round(weights, 6).tolist())))
        print(f"wrote the weights into {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
