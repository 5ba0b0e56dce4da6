"""Tune what the kernel does after the blend: the value written for videos without a blend, and a calibration map.

Arrays in, numbers out (labels: 1 = FAKE; blended: each video's uncalibrated blend, NaN where it has none). Each
choice is made by cross-validation, and its gain is measured on held-out folds for the WHOLE procedure (selection
and fit on the training folds only): repeated seeded stratified k-fold, each video's log loss without the tuned
value minus its held-out log loss with it, averaged over repeats; the gain is the mean of those paired
differences, its 95% interval a seeded bootstrap over videos. A change is worth writing only when that interval
is clear of 0. Every loss is of what the kernel writes (`blending.final_prediction`): calibrated, then clamped,
the fallback where the blend is missing (calibration never touches those videos; the fallback's losses are of
the clamped blend, as only the no-blend videos differ).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
from scipy.optimize import minimize, minimize_scalar

import blending
from bench.blend_fit import _check_labels, _folds, log_loss
from bench.metrics import bootstrap_interval, video_losses
from weights import BlendSpec, CalibrationSpec
from weights.manifest import CALIBRATIONS

TEMPERATURE_SCALES = (0.02, 50.0)  # 1/T: from flattening 50x to sharpening 50x
PLATT_BOUNDS = ((-50.0, 50.0), (-20.0, 20.0))  # (scale, shift) on the logit
POWER_EXPONENTS = (0.05, 5.0)
SCALE_TOLERANCE = 1e-3  # of the one-parameter fits: far below what a held-out log loss can tell apart
FALLBACK_SHRINKAGE = 10  # pseudo-videos at the set's prior: a few no-blend videos cannot pull the fallback far
BOOTSTRAP = 2000

# A tuner fits on the training rows and returns every video's prediction as the kernel would write it.
Tuner = Callable[[np.ndarray], np.ndarray]


def fit_calibration(method: str, labels, blended, spec: BlendSpec = BlendSpec()) -> CalibrationSpec:
    """The `method` map minimising the log loss of what `spec` (its clamp and fallback) then writes."""
    labels, blended = _check_labels(labels), np.asarray(blended, dtype=np.float64)
    scored = np.isfinite(blended)  # the others are written at the fallback whatever the map
    if method == "none" or not scored.any():
        return CalibrationSpec()
    labels, blended = labels[scored], blended[scored]

    def loss(calibration: CalibrationSpec) -> float:
        return log_loss(labels, blending.final_prediction(blended, replace(spec, calibration=calibration)))

    if method == "temperature":
        # on log(scale), where flattening and sharpening are symmetric
        best = minimize_scalar(lambda s: loss(CalibrationSpec(method, float(np.exp(s)))), method="bounded",
                               bounds=np.log(TEMPERATURE_SCALES), options={"xatol": SCALE_TOLERANCE})
        return CalibrationSpec(method, float(np.exp(best.x)))
    if method == "power":
        best = minimize_scalar(lambda s: loss(CalibrationSpec(method, float(s))), method="bounded",
                               bounds=POWER_EXPONENTS, options={"xatol": SCALE_TOLERANCE})
        return CalibrationSpec(method, float(best.x))
    if method == "platt":
        best = minimize(lambda x: loss(CalibrationSpec(method, float(x[0]), float(x[1]))), np.array([1.0, 0.0]),
                        method="L-BFGS-B", bounds=PLATT_BOUNDS)
        return CalibrationSpec(method, float(best.x[0]), float(best.x[1]))
    raise ValueError(f"unknown calibration {method!r}; one of {CALIBRATIONS}")


def select_calibration(labels, blended, spec: BlendSpec, folds: int, seed: int) -> str:
    """The method (of CALIBRATIONS, "none" included) with the lowest cross-validated log loss; ties go to the
    earlier, simpler one, and too few videos to cross-validate choose "none"."""
    labels, blended = _check_labels(labels), np.asarray(blended, dtype=np.float64)
    folds = min(folds, len(labels))
    if folds < 2:
        return "none"
    out_of_fold = {method: np.empty(len(labels)) for method in CALIBRATIONS}
    for train, test in _folds(labels, folds, seed):
        for method in CALIBRATIONS:
            calibration = fit_calibration(method, labels[train], blended[train], spec)
            out_of_fold[method][test] = blending.final_prediction(blended[test], replace(spec, calibration=calibration))
    losses = [log_loss(labels, out_of_fold[method]) for method in CALIBRATIONS]
    return CALIBRATIONS[int(np.argmin(losses))]


def held_out_gain(labels, before: np.ndarray, tuner: Tuner, folds: int, repeats: int, seed: int) -> dict:
    """How much `tuner` (fitted on training folds only) lowers each held-out video's log loss against `before`
    (what is written without it): the losses before and after, their mean difference (gain) and its 95% interval."""
    labels = _check_labels(labels)
    after = np.zeros(len(labels))
    for repeat in range(repeats):
        for train, test in _folds(labels, folds, seed + repeat):
            after[test] += video_losses(labels[test], tuner(train)[test]) / repeats
    differences = video_losses(labels, before) - after
    low, high = bootstrap_interval(differences, BOOTSTRAP, seed)
    return {"log_loss_before": log_loss(labels, before), "log_loss_after": float(after.mean()),
            "gain": float(differences.mean()), "interval": [low, high], "clear": low > 0}


def choose_calibration(labels, blended, folds: int = 5, repeats: int = 4, seed: int = 0,
                       spec: BlendSpec = BlendSpec()) -> dict:
    """The calibration map for the blend, selected by cross-validation and fitted on all videos, with the held-out
    gain of that whole procedure over no map (see `held_out_gain`); `spec` gives the clamp and fallback."""
    labels, blended = _check_labels(labels), np.asarray(blended, dtype=np.float64)
    plain = replace(spec, calibration=CalibrationSpec())

    def tuner(train: np.ndarray) -> np.ndarray:
        method = select_calibration(labels[train], blended[train], plain, folds, seed)
        calibration = fit_calibration(method, labels[train], blended[train], plain)
        return blending.final_prediction(blended, replace(spec, calibration=calibration))

    calibration = fit_calibration(select_calibration(labels, blended, plain, folds, seed), labels, blended, plain)
    gain = held_out_gain(labels, blending.final_prediction(blended, plain), tuner, folds, repeats, seed)
    return {**asdict(calibration), **gain}


def fallback_estimate(labels, no_blend: np.ndarray, clamp: tuple[float, float]) -> float:
    """The fakes' share among the no-blend videos, shrunk towards the set's prior (FALLBACK_SHRINKAGE pseudo-videos;
    the prior alone without any such video), inside the clamp."""
    prior = float(np.mean(labels))
    value = (labels[no_blend].sum() + FALLBACK_SHRINKAGE * prior) / (no_blend.sum() + FALLBACK_SHRINKAGE)
    return float(np.clip(value, *clamp))


def choose_fallback(labels, blended, clamp: tuple[float, float] = (0.01, 0.99), folds: int = 5, repeats: int = 4,
                    seed: int = 0, current: float = 0.5) -> dict:
    """The value written for videos without a blend, estimated on all videos, with the held-out gain over `current`
    (see `held_out_gain`: only the no-blend videos differ); None when every video has a blend."""
    labels, blended = _check_labels(labels), np.asarray(blended, dtype=np.float64)
    no_blend = ~np.isfinite(blended)
    if not no_blend.any():
        return {"value": None, "no_blend": 0}

    def tuner(train: np.ndarray) -> np.ndarray:
        value = fallback_estimate(labels[train], no_blend[train], clamp)
        return blending.clamp_prediction(blended, clamp, value)

    gain = held_out_gain(labels, blending.clamp_prediction(blended, clamp, current), tuner, folds, repeats, seed)
    return {"value": fallback_estimate(labels, no_blend, clamp), "no_blend": int(no_blend.sum()), **gain}
