"""Tune frames per video, the clamp bounds, the fallback and the blend's calibration on a local-LB set.

    python bench/tune.py --set dfdc --frames 17,32,48,64 [--root DIR] [--ensemble PATH] [--png PATH]
                         [--folds 5] [--repeats 4] [--dry-run] [--json PATH]
                         [--engine local|ray] [--address ADDR] [--workers N]

Prints the log loss of what the kernel writes against frames per video (and writes a PNG), then, at the best
frame count: the clamp [lo, hi] chosen by cross-validation over videos, with the log loss with and without
clamping; the fallback for videos without a blend and the calibration map after the blend (bench/calibration.py),
each with its held-out log loss before -> after and the gain's 95% interval. Only a fallback or a map whose
interval is clear of 0 is written into the manifest (--ensemble, else the default); --dry-run writes nothing.
The whole run goes to --json (default: the run's `_tune.json` beside the local LB's other run files).
Every frame count goes through the local-LB cache, so a repeated sweep computes only new counts. With
`--engine ray` one pool of Ray actors scores every frame count.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import blending
from bench.blend_fit import choose_clamp, log_loss, write_blend
from bench.calibration import choose_calibration, choose_fallback
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
from weights import BlendSpec, CalibrationSpec, default_manifest


def unclamped_blend(scores: np.ndarray, ensemble) -> np.ndarray:
    """The blend of each video before calibration and clamping (NaN where no model scored)."""
    weights = {m.name: m.weight for m in ensemble.members()}
    names = [m.name for m in ensemble.members()]
    return np.array([blending.blend_models(dict(zip(names, row.tolist())), weights) for row in scores])


def gain_text(result: dict) -> str:
    """The held-out log loss before -> after and the gain with its 95% interval: of the whole procedure (choosing and
    fitting on the training folds), which on small sets may choose otherwise than the choice on every video."""
    low, high = result["interval"]
    return (f"chosen and fitted on training folds, held out: log loss {result['log_loss_before']:.4f} -> "
            f"{result['log_loss_after']:.4f}, "
            f"gain {result['gain']:.4f} [{low:.4f}, {high:.4f}]")


def verdict(result: dict, manifest: Path, dry_run: bool) -> str:
    """Whether a tuned value goes into the manifest: only when its gain's interval is clear of 0."""
    if not result["clear"]:
        return "not written: gain within noise"
    return "clear of noise, not written (--dry-run)" if dry_run else f"written into {manifest}"


def tune_after_blend(labels: np.ndarray, blended: np.ndarray, spec: BlendSpec, manifest: Path, folds: int,
                     repeats: int, dry_run: bool) -> tuple[dict, dict]:
    """Choose the fallback, then the calibration (scored with the fallback the manifest will hold), print both and
    write into `manifest` those whose held-out gain is clear of 0 (none under `dry_run`)."""
    fallback = choose_fallback(labels, blended, spec.clamp, folds, repeats, current=spec.fallback)
    if fallback["value"] is None:
        print("fallback: nothing to tune (every video has a blend)")
    else:
        fallback["value"] = round(fallback["value"], 4)
        print(f"fallback for the {fallback['no_blend']} videos without a blend: {spec.fallback} -> "
              f"{fallback['value']}; {gain_text(fallback)}; {verdict(fallback, manifest, dry_run)}")
        if fallback["clear"]:
            spec = dataclasses.replace(spec, fallback=fallback["value"])
    calibration = choose_calibration(labels, blended, folds, repeats, spec=spec)
    chosen = CalibrationSpec(calibration["method"], round(calibration["scale"], 6), round(calibration["shift"], 6))
    calibration.update(dataclasses.asdict(chosen))
    print(f"calibration after the blend: {chosen.method} (scale {chosen.scale}, shift {chosen.shift}); "
          f"{gain_text(calibration)}; {verdict(calibration, manifest, dry_run)}")
    if not dry_run and (fallback.get("clear") or calibration["clear"]):
        write_blend(manifest, fallback=fallback["value"] if fallback.get("clear") else None,
                    calibration=chosen if calibration["clear"] else None)
    return fallback, calibration


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--frames", default="17,32,48,64")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4,
                        help="seeded k-fold splits the held-out gains of the fallback and calibration average over")
    parser.add_argument("--dry-run", action="store_true", help="report, but leave the manifest as it is")
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="the whole run (default: the run's _tune.json)")
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
                losses[count] = log_loss(labels, blending.final_prediction(blends[count], ensemble.blend))
    except EngineUnavailable as error:
        return engine_failure("tune", error)
    print(f"{args.set}: {len(videos)} videos, log loss of what the kernel writes (manifest clamp "
          f"{ensemble.blend.clamp}) by frames per video")
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
    report = {"set": args.set, "n": len(videos), "frames_per_video": losses, "best_frames": best,
              "clamp": None, "fallback": None, "calibration": None}
    folds = min(args.folds, len(videos))
    if folds >= 2:
        clamp = choose_clamp(labels, blends[best], folds=folds, fallback=ensemble.blend.fallback)
        print(f"clamp at {best} frames, chosen by {folds}-fold cross-validation over videos: "
              f"[{clamp['lo']}, {clamp['hi']}]; log loss unclamped {clamp['log_loss_unclamped']:.4f}, "
              f"clamped {clamp['log_loss_clamped']:.4f}, cross-validated clamped {clamp['cv_log_loss_clamped']:.4f}")
        report["clamp"] = clamp
        report["fallback"], report["calibration"] = tune_after_blend(
            labels, blends[best], ensemble.blend, args.ensemble or default_manifest(), folds, args.repeats,
            args.dry_run)
    out = args.json or run_file(args, "_tune.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"run: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
