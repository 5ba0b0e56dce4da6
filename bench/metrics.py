"""Scoring predictions against labels the way the DFDC leaderboard did: binary log loss on P(FAKE), label 1 = FAKE.

Besides the log loss (with a seeded bootstrap 95% interval), `score` reports AUC, accuracy and the mean
prediction per true class; `score_table` lays several scores side by side and `histogram_png` plots them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

CLIP = 1e-15  # Kaggle clipped submissions to [1e-15, 1 - 1e-15] before taking logs
THRESHOLD = 0.5  # predictions at or above it count as FAKE for accuracy


@dataclass(frozen=True)
class Scores:
    """Metrics of one set of predictions; NaN marks a metric the labels cannot support (one class only)."""

    n: int
    n_real: int
    n_fake: int
    log_loss: float
    log_loss_ci: tuple[float, float]
    auc: float
    accuracy: float
    mean_real: float
    mean_fake: float


def _as_arrays(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
    """Validated 1-D arrays: integer labels in {0, 1} and float predictions without NaN."""
    y = np.asarray(labels).ravel()
    p = np.asarray(predictions, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    if y.size == 0:
        raise ValueError("nothing to score: no labels")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (REAL) or 1 (FAKE), got {sorted(set(np.unique(y).tolist()) - {0, 1})}")
    missing = int(np.isnan(p).sum())
    if missing:
        raise ValueError(f"{missing} of {p.size} predictions are NaN")
    return y.astype(np.int64), p


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def video_losses(labels, predictions) -> np.ndarray:
    """Each video's term of the log loss (their mean is `log_loss`)."""
    labels, predictions = np.asarray(labels, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    if labels.shape != predictions.shape or labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"need equal-length 1-D labels and predictions, got {labels.shape} and {predictions.shape}")
    if not np.all(np.isfinite(predictions)):
        raise ValueError("predictions contain NaN or inf: replace missing ones by the fallback first")
    probabilities = np.clip(predictions, CLIP, 1 - CLIP)
    return -(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))


def bootstrap_interval(values, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile interval of the mean of `values` (one per video) over `resamples` seeded resamples."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, values.size, size=values.size)].mean() for _ in range(resamples)]
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def score(labels, predictions, bootstrap: int = 1000, seed: int = 0) -> Scores:
    """Score P(FAKE) predictions against 0/1 labels; the log-loss interval comes from `bootstrap` seeded resamples."""
    if bootstrap < 1:
        raise ValueError(f"bootstrap needs at least one resample, got {bootstrap}")
    y, p = _as_arrays(labels, predictions)
    p = np.clip(p, CLIP, 1 - CLIP)
    # labels=[0, 1] lets sklearn score a set holding only one class
    point = float(log_loss(y, p, labels=[0, 1]))
    # log loss is a mean of per-sample losses, so each resample's loss is the mean over resampled indices
    low, high = bootstrap_interval(video_losses(y, p), bootstrap, seed)
    both_classes = 0 < y.sum() < y.size
    return Scores(
        n=int(y.size),
        n_real=int((y == 0).sum()),
        n_fake=int((y == 1).sum()),
        log_loss=point,
        log_loss_ci=(low, high),
        auc=float(roc_auc_score(y, p)) if both_classes else math.nan,
        accuracy=float(((p >= THRESHOLD) == (y == 1)).mean()),
        mean_real=_mean_or_nan(p[y == 0]),
        mean_fake=_mean_or_nan(p[y == 1]),
    )


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """Plain text table, columns two spaces apart; `align` has one 'l' or 'r' per column (default: 'l' then all 'r')."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    align = align or "l" + "r" * (len(header) - 1)

    def line(cells: Sequence[str]) -> str:
        parts = [str(cell).ljust(width) if side == "l" else str(cell).rjust(width)
                 for cell, width, side in zip(cells, widths, align)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def format_metric(value: float | None, digits: int = 4) -> str:
    """A metric with fixed decimals, or '-' when it is missing (NaN, or null once read back from JSON)."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def score_table(rows: dict[str, Scores]) -> str:
    """One aligned line per named score (models, blend, per-method rows)."""
    header = ["name", "n", "log loss [95% CI]", "AUC", "acc", "mean REAL", "mean FAKE"]
    body = [
        [
            name,
            str(s.n),
            f"{s.log_loss:.4f} [{s.log_loss_ci[0]:.4f}, {s.log_loss_ci[1]:.4f}]",
            format_metric(s.auc),
            format_metric(s.accuracy, 3),
            format_metric(s.mean_real, 3),
            format_metric(s.mean_fake, 3),
        ]
        for name, s in rows.items()
    ]
    return format_table(header, body)


def histogram_png(labels, predictions, path: Path, title: str) -> Path:
    """Write a PNG histogram of predictions split by true class (20 bins over [0, 1]); return its path."""
    # Figure without pyplot renders through Agg and leaves no global figure state behind
    from matplotlib.figure import Figure

    y, p = _as_arrays(labels, predictions)
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    bins = np.linspace(0.0, 1.0, 21)
    for label, name, color in ((0, "REAL", "tab:blue"), (1, "FAKE", "tab:red")):
        axes.hist(p[y == label], bins=bins, alpha=0.6, color=color, label=f"{name} (n={int((y == label).sum())})")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("P(FAKE)")
    axes.set_ylabel("videos")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path
