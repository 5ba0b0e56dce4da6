"""Deepfake Detection Challenge inference: a folder of videos in, submission.csv out.

read N frames -> detect faces (BlazeFace on whole frames, or MTCNN) -> link tracks -> crop -> predict (every ensemble
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from inference.budget import KAGGLE_SAFETY_MARGIN, KAGGLE_TIME_LIMIT, TimeBudget
from inference.journal import Journal
from inference.pipeline import STAGES, Pipeline
from inference.submission import submission_order, write_submission
from inference.video import find_videos
from weights import default_manifest, sha256_of

KAGGLE_WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
KAGGLE_OUTPUT = KAGGLE_WORKING / "submission.csv"
COMPETITION = "deepfake-detection-challenge"

log = logging.getLogger("inference")


def parse_args(argv: list[str] | None, kaggle_input: Path | None = None) -> argparse.Namespace:
    """The command line; on Kaggle (the competition's test videos attached under `kaggle_input`, which kernel.py
    gives) its folders are the defaults."""
    competition = kaggle_input / COMPETITION if kaggle_input is not None else None
    on_kaggle = competition is not None and (competition / "test_videos").is_dir()
    parser = argparse.ArgumentParser(prog="kernel.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=competition / "test_videos" if on_kaggle else None,
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
    parser.add_argument("--readers", type=int, default=2,
                        help="threads that decode videos, find their faces and crop them ahead of inference")
    parser.add_argument("--time-budget", type=float,
                        default=KAGGLE_TIME_LIMIT - KAGGLE_SAFETY_MARGIN if on_kaggle else None,
                        help="seconds the whole run may take, from the process's start when kernel.py runs it "
                             "(default on Kaggle: 9 h less 30 min; else none)")
    parser.add_argument("--journal", type=Path, default=None,
                        help="progress journal for resuming a killed run (default: OUT.progress.jsonl)")
    parser.add_argument("--report", type=Path, default=None, help="write one JSON line per video here")
    parser.add_argument("--sample-submission", type=Path,
                        default=competition / "sample_submission.csv" if on_kaggle else None,
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


class Recorder:
    """Each video's label for the submission, its summary for the closing lines, its entry in the report."""

    def __init__(self, report: TextIO | None):
        self.report = report
        self.labels: dict[str, float] = {}
        self.outcomes: list[dict] = []  # small per-video summaries for the timing and fallback lines

    def record(self, entry: dict) -> None:
        self.labels[entry["filename"]] = entry["label"]
        self.outcomes.append({key: entry.get(key) for key in ("fallback", "error", "seconds")})
        self.write(entry)

    def write(self, entry: dict) -> None:
        if self.report:
            self.report.write(json.dumps(entry) + "\n")
            self.report.flush()


@contextmanager
def open_report(path: Path | None, packages: dict[str, str] | None) -> Iterator[TextIO | None]:
    """The report file (none without --report), its first line the package versions the predictions came from."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as report:
        if packages:
            report.write(json.dumps({"packages": packages}) + "\n")
        yield report


def plan_videos(videos: list[Path], finished: dict[str, dict], recorder: Recorder) -> tuple[list[Path], set[str]]:
    """(the videos still to score, every file name): a duplicate name keeps its first file, a video the journal
    has finished is recorded as it was."""
    todo, names = [], set()
    for path in videos:
        if path.name in names:
            log.warning("%s: duplicate file name, keeping the first (%s)", path, path.name)
            continue
        names.add(path.name)
        if path.name in finished:
            recorder.record(finished[path.name])
        else:
            todo.append(path)
    return todo, names


def score_videos(pipeline: Pipeline, budget: TimeBudget, todo: list[Path], journal: Journal, recorder: Recorder,
                 total: int) -> None:
    """Score `todo` through the pipeline, each job planned by the budget when a reader is free for it (so the plan
    follows the latest rate), each result journalled before it is recorded."""
    completed = 0
    try:
        for batch in pipeline.run(budget.plan(path) for path in todo):
            for result in batch:
                entry = {**result.__dict__, "path": str(todo[completed])}
                completed += 1
                journal.append(entry)
                recorder.record(entry)
                log.info("[%d/%d] %s -> %.4f%s", len(recorder.labels), total, result.filename, result.label,
                         f" (fallback: {result.error})" if result.fallback else "")
            budget.record(batch)
    except Exception:  # never: but if the loop itself breaks, the videos left still get their rows after it
        log.exception("the run stopped after %d of %d videos; the rest get the fallback", len(recorder.labels), total)


def summarise(outcomes: list[dict]) -> None:
    """Median seconds per video by stage, and the reasons for fallbacks: a systematic failure shows up as one reason
    repeated, not as a quiet column of 0.5."""
    print_timings(outcomes)
    fallbacks = Counter(outcome["error"] for outcome in outcomes if outcome["fallback"])
    if fallbacks:
        print("fallbacks: " + "; ".join(f"{count} x {reason}" for reason, count in fallbacks.most_common()))


def main(argv: list[str] | None = None, clock: Callable[[], float] = time.perf_counter,
         packages: dict[str, str] | None = None, kaggle_input: Path | None = None,
         started: float | None = None) -> int:
    """Score every video under --videos and write the submission; `clock` times the budget, from `started` (on
    `clock`; kernel.py gives the process's start) or else from now. `packages` ({distribution: version} as
    kernel.py settled the pins) goes into the log and the report's first line; `kaggle_input` (from kernel.py) is
    where Kaggle attaches datasets."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv, kaggle_input)
    entered = clock()
    if started is None:
        started = entered
    else:
        log.info("start-up took %.1f s (the interpreter, imports and install): the time budget counts it",
                 entered - started)
    if packages:
        log.info("packages: %s", ", ".join(f"{name} {version}" for name, version in packages.items()))
    ensemble_path = args.ensemble or default_manifest()
    pipeline = Pipeline(ensemble_path, args.device, args.batch_size, args.readers)
    log.info("loaded %d models on %s in %.1f s", len(pipeline.classifiers), pipeline.accelerator.device,
             clock() - entered)
    videos, ignored = find_videos(args.videos)
    log.info("%d videos under %s%s", len(videos), args.videos,
             f"; ignoring {len(ignored)} other files" if ignored else "")
    fingerprint = {"manifest": sha256_of(ensemble_path), "frames": args.frames_per_video,
                   "videos": str(args.videos.resolve())}
    journal = Journal(args.journal or args.out.with_name(args.out.name + ".progress.jsonl"), fingerprint)
    finished = journal.read()
    journal.open(finished)
    if finished:
        log.info("resuming: %d videos already done in %s", len(finished), journal.path)
    with open_report(args.report, packages) as report:
        recorder = Recorder(report)
        todo, names = plan_videos(videos, finished, recorder)
        for path in ignored:
            recorder.write({"filename": path.name, "path": str(path), "ignored": "not a video file"})
        models = [m.name for m in pipeline.ensemble.models]
        optional = [m.name for m in pipeline.ensemble.models if m.optional]
        budget = TimeBudget(args.time_budget, started, len(todo), args.frames_per_video, models, optional, clock)
        score_videos(pipeline, budget, todo, journal, recorder, len(videos))
    pipeline.close()
    rows = [(name, recorder.labels.get(name, pipeline.fallback))
            for name in submission_order(sorted(names), args.sample_submission)]
    write_submission(args.out, rows)
    journal.close(finished=len(recorder.labels) == len(names))  # kept when videos are missing: a rerun retries them
    summarise(recorder.outcomes)
    print(f"wrote {len(rows)} rows to {args.out} in {clock() - started:.1f} s")
    return 0
