"""Local leaderboard: the kernel's own pipeline on a labelled set, scored like Kaggle (log loss) and more.

    python bench/local_lb.py --set dfdc|timit|ff [--root DIR] [--limit N] [--frames-per-video N]
                             [--ensemble PATH] [--json PATH] [--device cpu|cuda|auto]
    python bench/local_lb.py --history [--set S]

Frame scores are cached per video content, model (arch, weights hash, input, TTA), detector and tracking
settings and frame count, so a re-run computes nothing and a sweep computes only what is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import statistics
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import blending
from bench.datasets import LabelledVideo, default_root, load_set
from bench.history import append_run, leaderboard, load_runs
from bench.metrics import Scores, histogram_png, score, score_table
from inference.pipeline import STAGES, Pipeline
from weights import Ensemble, default_manifest, sha256_of
from weights.tools.sources import REPO_ROOT

log = logging.getLogger("local_lb")
LB_DIR = REPO_ROOT / "artifacts" / "lb"
BLEND = "blend"


class PredictionCache:
    """One JSON file per (video content, model, detector, tracking, frame count): the model's frame scores."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._video_hashes: dict[Path, str] = {}

    def key(self, video: Path, ensemble: Ensemble, model: str, frames_per_video: int) -> str:
        spec = next(m for m in ensemble.models if m.name == model)
        identity = {
            "video": self.video_hash(video),
            "model": {"arch": spec.arch, "arch_kwargs": spec.arch_kwargs, "kind": spec.kind,
                      "weights": [spec.sha256, spec.onnx_sha256, spec.runtime],
                      "input": dataclasses.asdict(spec.input), "tta": list(spec.tta), "positive": spec.positive_class},
            "detector": dataclasses.asdict(ensemble.detector),
            "tracks": dataclasses.asdict(ensemble.tracks),
            "frames_per_video": frames_per_video,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def video_hash(self, video: Path) -> str:
        """sha256 of the file, or of a frame folder's names and contents."""
        if video not in self._video_hashes:
            if video.is_dir():
                digest = hashlib.sha256()
                for frame in sorted(video.iterdir()):
                    digest.update(frame.name.encode() + bytes.fromhex(sha256_of(frame)))
                self._video_hashes[video] = digest.hexdigest()
            else:
                self._video_hashes[video] = sha256_of(video)
        return self._video_hashes[video]

    def get(self, key: str) -> dict | None:
        path = self.folder / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, entry: dict) -> None:
        path = self.folder / f"{key}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(entry))
        temporary.replace(path)


@dataclasses.dataclass
class Evaluation:
    """Per video: label, group, each model's frame scores per track, and the seconds spent computing them."""

    videos: list[LabelledVideo]
    frame_scores: list[dict[str, list[list[float]]]]
    errors: list[str | None]
    seconds: list[dict[str, float]]
    computed: int  # (video, model) pairs that were not in the cache


def evaluate(videos: list[LabelledVideo], runner: Pipeline, cache: PredictionCache) -> Evaluation:
    """Run the kernel on every video for the models the cache lacks; read the rest from the cache."""
    ensemble, count = runner.ensemble, runner.frames_per_video
    evaluation = Evaluation(videos, [], [], [], computed=0)
    for video in tqdm(videos, desc="videos", unit="video", disable=None):
        keys = {m.name: cache.key(video.path, ensemble, m.name, count) for m in ensemble.models}
        entries = {name: cache.get(key) for name, key in keys.items()}
        missing = {name for name, entry in entries.items() if entry is None}
        seconds: dict[str, float] = {}
        if missing:
            result = runner.process(video.path, models=missing)
            seconds = result.seconds
            for name in missing:
                entries[name] = {"frame_scores": result.frame_scores.get(name, []), "error": result.error,
                                 "seconds": result.seconds}
                cache.put(keys[name], entries[name])
            evaluation.computed += len(missing)
        evaluation.frame_scores.append({name: entry["frame_scores"] for name, entry in entries.items()})
        evaluation.errors.append(next((e["error"] for e in entries.values() if e["error"]), None))
        evaluation.seconds.append(seconds or next(iter(entries.values()))["seconds"])
    return evaluation


def predictions(evaluation: Evaluation, ensemble: Ensemble) -> dict[str, np.ndarray]:
    """What the kernel would write: each model alone (clamped, fallback where it has no score) and the blend."""
    blend = ensemble.blend
    weights = {m.name: m.weight for m in ensemble.models}
    names = [m.name for m in ensemble.models]
    rows: dict[str, list[float]] = {name: [] for name in [*names, BLEND]}
    for video_scores in model_scores(evaluation, ensemble):
        scores = dict(zip(names, video_scores.tolist()))
        for name, value in scores.items():
            rows[name].append(blending.clamp_prediction(value, blend.clamp, blend.fallback))
        rows[BLEND].append(blending.clamp_prediction(blending.blend_models(scores, weights), blend.clamp,
                                                     blend.fallback))
    return {name: np.asarray(values) for name, values in rows.items()}


def model_scores(evaluation: Evaluation, ensemble: Ensemble) -> np.ndarray:
    """(videos, models) matrix of each model's unclipped video score, NaN where it has none: what a blend fits."""
    return np.array([[blending.video_score(frame_scores[m.name], m.aggregation, ensemble.combine_for(m))
                      for m in ensemble.models]
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
    videos, options = labelled_videos(args)
    root = args.root or default_root(args.set)
    manifest = args.ensemble or default_manifest()
    runner = Pipeline(manifest, args.frames_per_video, args.device, readers=0)
    evaluation = evaluate(videos, runner, PredictionCache(args.cache))
    predicted = predictions(evaluation, runner.ensemble)
    rows = score_rows(videos, predicted, per_method=args.set == "ff")
    plot = histogram_png(np.array([v.label for v in videos]), predicted[BLEND],
                         args.plot or LB_DIR / f"{args.set}_hist.png", f"{args.set}: blend, n={len(videos)}")
    config = {"root": str(root), "ensemble": str(manifest), "frames_per_video": args.frames_per_video,
              "models": [m.name for m in runner.ensemble.models], **{k: str(v) for k, v in options.items()}}
    append_run(args.history_file, args.set, config, rows)
    report = {
        "set": args.set, "n": len(videos), "config": config, "computed": evaluation.computed,
        "scores": {name: dataclasses.asdict(s) for name, s in rows.items()},
        "seconds_per_video": stage_medians(evaluation), "histogram": str(plot),
        "videos": [{"path": str(v.path), "label": v.label, "group": v.group, "error": error,
                    **{name: float(values[i]) for name, values in predicted.items()}}
                   for i, (v, error) in enumerate(zip(videos, evaluation.errors))],
    }
    return report, rows


def labelled_videos(args: argparse.Namespace) -> tuple[list[LabelledVideo], dict]:
    """The set's videos (the first --limit of them) and the layout options that chose them."""
    options = {k: v for k, v in {"compression": args.compression, "methods": args.methods, "split": args.split,
                                 "quality": args.quality, "labels": args.labels}.items() if v is not None}
    return load_set(args.set, args.root or default_root(args.set), **options)[: args.limit], options


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a labelled set and how the kernel runs on it (shared by tune and blend fit)."""
    parser.add_argument("--set", choices=("dfdc", "timit", "ff"))
    parser.add_argument("--root", type=Path, help="the set's folder (dfdc: also a labels CSV)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N videos (sorted by path)")
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--ensemble", type=Path, default=None)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--cache", type=Path, default=LB_DIR / "cache")
    parser.add_argument("--compression", help="ff: c0, c23 (default) or c40")
    parser.add_argument("--methods", nargs="+", help="ff: manipulation methods to include")
    parser.add_argument("--split", type=Path, help="ff: official split JSON (train/val/test)")
    parser.add_argument("--quality", choices=("hq", "lq", "both"), help="timit: DeepfakeTIMIT quality")
    parser.add_argument("--labels", type=Path, help="dfdc: labels CSV for folders without metadata.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--json", type=Path, default=None, help="write every figure and prediction here")
    parser.add_argument("--plot", type=Path, default=None, help=f"histogram PNG (default {LB_DIR}/SET_hist.png)")
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
    report, rows = run(args)
    print(f"local LB: {args.set}, {report['n']} videos, {args.frames_per_video} frames per video, "
          f"{report['computed']} (video, model) pairs computed, the rest cached")
    print(score_table(rows))
    print("median seconds per video: " + "  ".join(f"{k} {v:.3f}" for k, v in report["seconds_per_video"].items()))
    print(f"histogram: {report['histogram']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_without_nan(report), indent=2))
    return 0


def _without_nan(value):
    """JSON has no NaN: an undefined figure (AUC of a one-class set) is written as null."""
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


if __name__ == "__main__":
    sys.exit(main())
