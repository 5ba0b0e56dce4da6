"""`python -m blending fit --set S`: fit blend weights on a local-LB set and write them into the manifest.

Offline tooling: it runs the kernel through the local leaderboard (cached), so the weights are fitted on
exactly the scores the kernel produces.
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

import kernel
from bench.local_lb import Evaluation, PredictionCache, add_set_arguments, evaluate, labelled_videos, model_scores
from blending.fit import blend, cross_validate_weights, fit_weights, log_loss, write_blend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blending", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="fit non-negative blend weights summing to 1 that minimise log loss")
    add_set_arguments(fit)
    fit.add_argument("--folds", type=int, default=5)
    fit.add_argument("--dry-run", action="store_true", help="report, but leave the manifest as it is")
    args = parser.parse_args(argv)
    if args.set is None:
        parser.error("--set is required")
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")

    manifest = args.ensemble or kernel.default_ensemble()
    runner = kernel.Kernel(manifest, args.frames_per_video, args.device, readers=0)
    videos, _ = labelled_videos(args)
    evaluation: Evaluation = evaluate(videos, runner, PredictionCache(args.cache))
    labels = np.array([v.label for v in videos])
    scores = model_scores(evaluation, runner.ensemble)
    names = [m.name for m in runner.ensemble.models]
    fallback = runner.ensemble.blend.fallback

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
