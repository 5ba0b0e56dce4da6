"""Local leaderboard: the kernel's own pipeline on a labelled set, scored like Kaggle (log loss) and more.

    python bench/local_lb.py --set dfdc|timit|ff [--root DIR] [--limit N] [--frames-per-video N]
                             [--ensemble PATH] [--json PATH] [--device cpu|cuda|auto]
                             [--engine local|ray] [--address ADDR] [--workers N] [--option SECTION.KEY=VALUE]
    python bench/local_lb.py --history [--set S]

Frame scores are cached per video content, model (arch, weights hash, input, TTA), detector and tracking
settings and frame count, so a re-run computes nothing and a sweep computes only what is missing.
`--engine ray` scores the videos on a Ray cluster (bench/ray_engine.py) with the same cache and the same numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

import blending
from bench.datasets import LabelledVideo, default_root, load_set
from bench.history import append_run, leaderboard, load_runs
from bench.lb_cache import Evaluation, PredictionCache, video_scores
from bench.manifests import with_options
from bench.metrics import Scores, histogram_png, score, score_table
from bench.ray_engine import EngineUnavailable  # ray itself is imported for --engine ray only
from inference.pipeline import STAGES, Pipeline
from weights import Ensemble, default_manifest, load_ensemble
from zootools.sources import REPO_ROOT

log = logging.getLogger("local_lb")
LB_DIR = REPO_ROOT / "artifacts" / "lb"
BLEND = "blend"


def evaluate(videos: list[LabelledVideo], runner: Pipeline, cache: PredictionCache, frames: int) -> Evaluation:
    """Run the kernel at `frames` per video on every video for the models the cache lacks; read the rest from the
    cache."""
    evaluation = Evaluation(videos, [], [], [], computed=0)
    for video in tqdm(videos, desc="videos", unit="video", disable=None):
        evaluation.add(video_scores(video.path, runner.ensemble, frames, cache,
                                    lambda missing: runner.process(video.path, frames, missing)))
    return evaluation


Scorer = Callable[[list[LabelledVideo], int], tuple[Evaluation, Ensemble]]


@contextlib.contextmanager
def open_engine(args: argparse.Namespace) -> Iterator[Scorer]:
    """`score(videos, frames_per_video)` -> (evaluation, ensemble) on the engine `args` choose: this process
    (`local`, one pipeline for every call) or a pool of Ray actors (`ray`, started once for every call).

    `--engine ray` connects first, so a missing or unreachable Ray fails before anything else
    (`EngineUnavailable`, one line)."""
    manifest = ensemble_path(args)
    cache = PredictionCache(args.cache)
    if args.engine == "local":
        runner = Pipeline(manifest, args.device, readers=0)
        try:
            yield lambda videos, frames_per_video: (evaluate(videos, runner, cache, frames_per_video), runner.ensemble)
        finally:
            runner.close()
        return
    from bench.ray_engine import RayEngine

    with RayEngine.connect(args.address, manifest, args.device, workers=args.workers,
                           cpus_per_actor=args.cpus_per_actor, retries=args.retries) as engine:
        ensemble = load_ensemble(manifest)
        yield lambda videos, frames_per_video: (engine.evaluate(videos, frames_per_video, cache, ensemble), ensemble)


def run_name(args: argparse.Namespace) -> str:
    """The name of a run's files (histogram, tune sweep, report): the set, its root's folder name and a short hash
    of the resolved root and the layout options, so two roots of one set never overwrite each other's files."""
    root = args.root or default_root(args.set)
    options = {k: str(v) for k, v in layout_options(args).items()}
    identity = json.dumps([str(Path(root).resolve()) if root else None, options, args.limit])
    label = Path(root).name if root else "none"
    return f"{args.set}-{label}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def run_file(args: argparse.Namespace, suffix: str) -> Path:
    """Where a run's file of one kind lives by default: LB_DIR/runs/<run name><suffix>."""
    return LB_DIR / "runs" / f"{run_name(args)}{suffix}"


def ensemble_path(args: argparse.Namespace) -> Path:
    """The manifest the run scores: --ensemble (else the default), with each --option applied to a copy."""
    return with_options(args.ensemble or default_manifest(), args.option, LB_DIR / "manifests")


def engine_failure(program: str, error: Exception) -> int:
    """The one line a failed engine start prints; the exit status."""
    print(f"{program}: --engine ray: {error}", file=sys.stderr)
    return 2


def predictions(evaluation: Evaluation, ensemble: Ensemble) -> dict[str, np.ndarray]:
    """What the kernel would write: each blend member alone (a model, or a pool; clamped, fallback where it has no
    score) and the blend (calibrated as the manifest says, then clamped)."""
    blend = ensemble.blend
    weights = {m.name: m.weight for m in ensemble.members()}
    names = [m.name for m in ensemble.members()]
    rows: dict[str, list[float]] = {name: [] for name in [*names, BLEND]}
    for row in model_scores(evaluation, ensemble):
        scores = dict(zip(names, row.tolist()))
        for name, value in scores.items():
            rows[name].append(blending.clamp_prediction(value, blend.clamp, blend.fallback))
        rows[BLEND].append(blending.final_prediction(blending.blend_models(scores, weights), blend))
    return {name: np.asarray(values) for name, values in rows.items()}


def model_scores(evaluation: Evaluation, ensemble: Ensemble) -> np.ndarray:
    """(videos, members) matrix of each blend member's unclipped video score (see `Ensemble.members`), NaN where it
    has none: what a blend fits."""
    return np.array([[blending.member_score(frame_scores, m.models, m.aggregation, m.video_score)
                      for m in ensemble.members()]
                     for frame_scores in evaluation.frame_scores])


def score_rows(videos: list[LabelledVideo], predicted: dict[str, np.ndarray], per_method: bool) -> dict[str, Scores]:
    """Scores per model and blend; with per_method (ff), the blend per method, each with all the REAL videos."""
    labels = np.array([v.label for v in videos])
    rows = {name: score(labels, values) for name, values in predicted.items()}
    if per_method:
        fake_groups = sorted({v.group for v in videos if v.label == 1})
        for group in fake_groups:
            keep = np.array([v.label == 0 or v.group == group for v in videos])
            rows[f"{BLEND} / {group}"] = score(labels[keep], predicted[BLEND][keep])
    return rows


def stage_medians(evaluation: Evaluation) -> dict[str, float]:
    """Median seconds per video of each kernel stage (from the cache where nothing was recomputed)."""
    return {stage: statistics.median(s.get(stage, 0.0) for s in evaluation.seconds) for stage in STAGES}


def run(args: argparse.Namespace) -> tuple[dict, dict[str, Scores]]:
    """The whole local-LB run; returns what --json writes and the score rows."""
    root = args.root or default_root(args.set)
    manifest = ensemble_path(args)
    with open_engine(args) as score_videos:
        videos, options = labelled_videos(args)
        evaluation, ensemble = score_videos(videos, args.frames_per_video)
    predicted = predictions(evaluation, ensemble)
    rows = score_rows(videos, predicted, per_method=args.set == "ff")
    plot = histogram_png(np.array([v.label for v in videos]), predicted[BLEND],
                         args.plot or run_file(args, "_hist.png"), f"{args.set}: blend, n={len(videos)}")
    config = {"root": str(root), "ensemble": str(manifest), "frames_per_video": args.frames_per_video,
              "models": [m.name for m in ensemble.models], **{k: str(v) for k, v in options.items()},
              **({"options": " ".join(args.option)} if args.option else {})}
    append_run(args.history_file, args.set, config, rows)
    report = {
        "set": args.set, "n": len(videos), "config": config, "computed": evaluation.computed,
        "engine": args.engine, "nodes": evaluation.nodes, "failed": evaluation.failed,
        "scores": {name: dataclasses.asdict(s) for name, s in rows.items()},
        "seconds_per_video": stage_medians(evaluation), "histogram": str(plot),
        "videos": [{"path": str(v.path), "label": v.label, "group": v.group, "error": error,
                    **{name: float(values[i]) for name, values in predicted.items()}}
                   for i, (v, error) in enumerate(zip(videos, evaluation.errors))],
    }
    return report, rows


def layout_options(args: argparse.Namespace) -> dict:
    """The layout options that choose a set's videos (those given)."""
    return {k: v for k, v in {"compression": args.compression, "methods": args.methods, "split": args.split,
                              "quality": args.quality, "labels": args.labels}.items() if v is not None}


def labelled_videos(args: argparse.Namespace) -> tuple[list[LabelledVideo], dict]:
    """The set's videos (the first --limit of them) and the layout options that chose them."""
    options = layout_options(args)
    return load_set(args.set, args.root or default_root(args.set), **options)[: args.limit], options


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a labelled set and how the kernel runs on it (shared by tune and blend fit)."""
    parser.add_argument("--set", choices=("dfdc", "timit", "ff"))
    parser.add_argument("--option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change one manifest setting for this run, e.g. decode.deblocking=false or "
                             "detector.every=1 (repeatable; the cache keys on the result)")
    parser.add_argument("--root", type=Path, help="the set's folder (dfdc: also a labels CSV)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N videos (sorted by path)")
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--ensemble", type=Path, default=None)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--cache", type=Path, default=LB_DIR / "cache",
                        help="prediction cache folder (--engine ray: a path every node sees, e.g. shared storage)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process (default); ray: a pool of Ray actors on a cluster")
    parser.add_argument("--address", default=None,
                        help="ray: the cluster's address (HOST:PORT, auto); default $RAY_ADDRESS, else a local "
                             "Ray instance started for this run")
    parser.add_argument("--workers", type=int, default=None,
                        help="ray: at most N actors (default: as many as the cluster has room for)")
    parser.add_argument("--cpus-per-actor", type=int, default=None,
                        help="ray: CPUs (inference and decoder threads) per actor (default: one GPU and that GPU's "
                             "share of the node's CPUs where the cluster has GPUs, else 2, more under --workers)")
    parser.add_argument("--retries", type=int, default=2,
                        help="ray: how often a video lost with its actor or node is tried again before it is "
                             "recorded as failed")
    parser.add_argument("--compression", help="ff: c0, c23 (default) or c40")
    parser.add_argument("--methods", nargs="+", help="ff: manipulation methods to include")
    parser.add_argument("--split", type=Path, help="ff: official split JSON (train/val/test)")
    parser.add_argument("--quality", choices=("hq", "lq", "both"), help="timit: DeepfakeTIMIT quality")
    parser.add_argument("--labels", type=Path, help="dfdc: labels CSV for folders without metadata.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--json", type=Path, default=None, help="write every figure and prediction here")
    parser.add_argument("--plot", type=Path, default=None,
                        help=f"histogram PNG (default {LB_DIR}/runs/RUN_hist.png, RUN named by the set, its root "
                             "and layout options)")
    parser.add_argument("--history-file", type=Path, default=LB_DIR / "history.jsonl")
    parser.add_argument("--history", action="store_true", help="print the leaderboard of past runs and exit")
    args = parser.parse_args(argv)
    if not args.history and args.set is None:
        parser.error("--set is required (or --history)")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.history:
        print(leaderboard(load_runs(args.history_file), set_name=args.set))
        return 0
    try:
        report, rows = run(args)
    except KeyboardInterrupt:
        print(f"local_lb: interrupted; every video scored so far is in the cache ({args.cache})", file=sys.stderr)
        return 130
    except EngineUnavailable as error:
        return engine_failure("local_lb", error)
    print(f"local LB: {args.set}, {report['n']} videos, {args.frames_per_video} frames per video, "
          f"{report['computed']} (video, model) pairs computed, the rest cached")
    if report["nodes"]:
        print("per node (engine ray): " + ", ".join(f"{node} {count} videos" for node, count in report["nodes"].items())
              + (f"; {report['failed']} videos failed on the cluster (see their errors)" if report["failed"] else ""))
    print(score_table(rows))
    print("median seconds per video: " + "  ".join(f"{k} {v:.3f}" for k, v in report["seconds_per_video"].items()))
    print(f"histogram: {report['histogram']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json_safe(report), indent=2))
    return 0


def json_safe(value):
    """JSON has no NaN: an undefined figure (AUC of a one-class set) is written as null."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


if __name__ == "__main__":
    sys.exit(main())
