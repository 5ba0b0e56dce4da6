"""Deepfake Detection Challenge inference: a folder of videos in, submission.csv out.

read N frames -> detect faces (BlazeFace on whole frames) -> link tracks -> crop -> predict (every ensemble
model, batched across videos) -> blend and clamp -> write. Every video gets a row: a video that fails anywhere
gets the manifest's fallback value, and the report says why.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from inference.budget import KAGGLE_SAFETY_MARGIN, KAGGLE_TIME_LIMIT, TimeBudget
from inference.journal import Journal
from inference.pipeline import STAGES, Pipeline
from inference.submission import submission_order, write_submission
from inference.video import find_videos
from weights import default_manifest, sha256_of

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))  # overridable so the bundle can be verified
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
KAGGLE_COMPETITION = KAGGLE_INPUT / "deepfake-detection-challenge"
KAGGLE_OUTPUT = KAGGLE_WORKING / "submission.csv"

log = logging.getLogger("inference")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; on Kaggle (the competition's test videos attached) its folders are the defaults."""
    on_kaggle = (KAGGLE_COMPETITION / "test_videos").is_dir()
    parser = argparse.ArgumentParser(prog="kernel.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=KAGGLE_COMPETITION / "test_videos" if on_kaggle else None,
                        required=not on_kaggle, help="folder searched recursively for videos")
    parser.add_argument("--out", type=Path, default=KAGGLE_OUTPUT if on_kaggle else Path("submission.csv"))
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--ensemble", type=Path, default=None,
                        help="ensemble manifest (default: $DEEPFAKE_ENSEMBLE, else artifacts/weights/ensemble.json, "
                             "else the bundle's ensemble/ensemble.json)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per detector or model batch (default 4 on the CPU, 64 on a GPU: "
                             "larger CPU batches fall out of cache and run slower)")
    parser.add_argument("--readers", type=int, default=2, help="threads decoding videos ahead of inference")
    parser.add_argument("--time-budget", type=float,
                        default=KAGGLE_TIME_LIMIT - KAGGLE_SAFETY_MARGIN if on_kaggle else None,
                        help="seconds the whole run may take (default on Kaggle: 9 h less 30 min; else none)")
    parser.add_argument("--journal", type=Path, default=None,
                        help="progress journal for resuming a killed run (default: OUT.progress.jsonl)")
    parser.add_argument("--report", type=Path, default=None, help="write one JSON line per video here")
    parser.add_argument("--sample-submission", type=Path,
                        default=KAGGLE_COMPETITION / "sample_submission.csv" if on_kaggle else None,
                        help="order rows as in this CSV (its videos always get a row)")
    args = parser.parse_args(argv)
    if min(args.frames_per_video, args.readers, args.batch_size or 1) < 1:
        parser.error("--frames-per-video, --readers and --batch-size must be at least 1")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error("--time-budget must be positive")
    return args


def print_timings(outcomes: list[dict]) -> None:
    """Median seconds per video by stage, and the total."""
    per_stage = defaultdict(list)
    for outcome in outcomes:
        seconds = outcome.get("seconds") or {}
        for stage in STAGES:
            per_stage[stage].append(seconds.get(stage, 0.0))
        per_stage["total"].append(sum(seconds.values()))
    if outcomes:
        cells = "  ".join(f"{stage} {statistics.median(values):.3f}" for stage, values in per_stage.items())
        print(f"median seconds per video ({len(outcomes)} videos): {cells}")


def main(argv: list[str] | None = None, clock: Callable[[], float] = time.perf_counter,
         packages: dict[str, str] | None = None) -> int:
    """Score every video under --videos and write the submission; `clock` times the budget. `packages`
    ({distribution: version} as kernel.py settled the pins) goes into the log and the report's first line."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    started = clock()
    if packages:
        log.info("packages: %s", ", ".join(f"{name} {version}" for name, version in packages.items()))
    ensemble_path = args.ensemble or default_manifest()
    pipeline = Pipeline(ensemble_path, args.frames_per_video, args.device, args.batch_size, args.readers)
    log.info("loaded %d models on %s in %.1f s", len(pipeline.classifiers), pipeline.accelerator.device,
             clock() - started)

    videos, ignored = find_videos(args.videos)
    log.info("%d videos under %s%s", len(videos), args.videos,
             f"; ignoring {len(ignored)} other files" if ignored else "")
    fingerprint = {"manifest": sha256_of(ensemble_path), "frames": args.frames_per_video,
                   "videos": str(args.videos.resolve())}
    journal = Journal(args.journal or args.out.with_name(args.out.name + ".progress.jsonl"), fingerprint)
    finished = journal.resume()
    if finished:
        log.info("resuming: %d videos already done in %s", len(finished), journal.path)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
    report = open(args.report, "w") if args.report else None
    if report and packages:  # which versions computed these predictions
        report.write(json.dumps({"packages": packages}) + "\n")
    labels: dict[str, float] = {}
    outcomes: list[dict] = []  # small per-video summaries for the timing and fallback lines

    def record(entry: dict) -> None:
        labels[entry["filename"]] = entry["label"]
        outcomes.append({key: entry.get(key) for key in ("fallback", "error", "seconds")})
        if report:
            report.write(json.dumps(entry) + "\n")
            report.flush()

    todo, names = [], set()
    for path in videos:
        if path.name in names:
            log.warning("%s: duplicate file name, keeping the first (%s)", path, path.name)
            continue
        names.add(path.name)
        if path.name in finished:
            record(finished[path.name])
        else:
            todo.append(path)
    for path in ignored:
        if report:
            report.write(json.dumps({"filename": path.name, "path": str(path), "ignored": "not a video file"}) + "\n")
    optional = [m.name for m in pipeline.ensemble.models if m.optional]
    budget = TimeBudget(args.time_budget, started, len(todo), args.frames_per_video,
                        [m.name for m in pipeline.ensemble.models], optional, clock)
    completed = 0
    try:
        # Planned lazily, each job when a reader is free for it, so the plan follows the latest rate.
        for batch in pipeline.run(budget.plan(path) for path in todo):
            for result in batch:
                entry = {**result.__dict__, "path": str(todo[completed])}
                completed += 1
                journal.append(entry)
                record(entry)
                log.info("[%d/%d] %s -> %.4f%s", len(labels), len(videos), result.filename, result.label,
                         f" (fallback: {result.error})" if result.fallback else "")
            budget.record(batch)
    except Exception:  # never: but if the loop itself breaks, the videos left still get their rows below
        log.exception("the run stopped after %d of %d videos; the rest get the fallback", len(labels), len(videos))
    finally:
        if report:
            report.close()

    fallback = pipeline.fallback
    order = submission_order(sorted(names), args.sample_submission)
    rows = [(name, labels.get(name, fallback)) for name in order]
    write_submission(args.out, rows)
    # kept when videos are missing: a rerun retries them
    journal.close(finished=len(labels) == len(names))
    print_timings(outcomes)
    fallbacks = Counter(outcome["error"] for outcome in outcomes if outcome["fallback"])
    if fallbacks:  # a systematic failure shows up here as one reason repeated, not as a quiet column of 0.5
        print("fallbacks: " + "; ".join(f"{count} x {reason}" for reason, count in fallbacks.most_common()))
    print(f"wrote {len(rows)} rows to {args.out} in {clock() - started:.1f} s")
    return 0
