"""Tune frames per video and the clamp bounds on a local-LB set.

    python bench/tune.py --set dfdc --frames 17,32,48,64 [--root DIR] [--ensemble PATH] [--png PATH]
                         [--engine local|ray] [--address ADDR] [--workers N]

Prints blend log loss against frames per video (and writes a PNG), then the clamp [lo, hi] chosen by
cross-validation over videos at the best frame count, with the log loss with and without clamping.
Every frame count goes through the local-LB cache, so a repeated sweep computes only new counts. With
`--engine ray` one pool of Ray actors scores every frame count.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import blending
from bench.blend_fit import choose_clamp, log_loss
from bench.local_lb import (
    EngineUnavailable,
    add_set_arguments,
    engine_failure,
    labelled_videos,
    model_scores,
    open_engine,
    run_file,
)
from bench.metrics import format_table


def unclamped_blend(scores: np.ndarray, ensemble) -> np.ndarray:
    """The blend of each video before clamping (NaN where no model scored)."""
    weights = {m.name: m.weight for m in ensemble.members()}
    names = [m.name for m in ensemble.members()]
    return np.array([blending.blend_models(dict(zip(names, row.tolist())), weights) for row in scores])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--frames", default="17,32,48,64")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.set is None:
        parser.error("--set is required")
    losses, blends = {}, {}
    try:
        with open_engine(args) as score_videos:
            videos, _ = labelled_videos(args)
            labels = np.array([v.label for v in videos])
            for count in (int(f) for f in args.frames.split(",")):
                evaluation, ensemble = score_videos(videos, count)
                blends[count] = unclamped_blend(model_scores(evaluation, ensemble), ensemble)
                clamped = [blending.clamp_prediction(p, ensemble.blend.clamp, ensemble.blend.fallback)
                           for p in blends[count]]
                losses[count] = log_loss(labels, clamped)
    except EngineUnavailable as error:
        return engine_failure("tune", error)
    print(f"{args.set}: {len(videos)} videos, blend log loss (manifest clamp {ensemble.blend.clamp}) "
          "by frames per video")
    print(format_table(["frames", "log loss"], [[str(c), f"{loss:.4f}"] for c, loss in losses.items()]))
    png = args.png or run_file(args, "_frames.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    axes.plot(list(losses), list(losses.values()), marker="o")
    axes.set(xlabel="frames per video", ylabel="log loss", title=f"{args.set}: blend, n={len(videos)}")
    figure.savefig(png, dpi=100, bbox_inches="tight")
    print(f"plot: {png}")

    best = min(losses, key=losses.get)
    folds = min(args.folds, len(videos))
    if folds >= 2:
        clamp = choose_clamp(labels, blends[best], folds=folds, fallback=ensemble.blend.fallback)
        print(f"clamp at {best} frames, chosen by {folds}-fold cross-validation over videos: "
              f"[{clamp['lo']}, {clamp['hi']}]; log loss unclamped {clamp['log_loss_unclamped']:.4f}, "
              f"clamped {clamp['log_loss_clamped']:.4f}, cross-validated clamped {clamp['cv_log_loss_clamped']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
