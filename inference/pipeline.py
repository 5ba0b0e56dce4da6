"""Wire the stages for a stream of videos: readers decode, find faces, link tracks and crop ahead, while the main
thread runs each model over the crops of several videos at once, then blends each video."""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import blending
from inference.classify import Classifier, score_tracks
from inference.crops import TrackCrops, track_crops
from inference.device import Accelerator, resolve_device, usable_cpus
from inference.faces import find_sparse, make_face_finder
from inference.tracks import Track, link_tracks
from inference.video import DecodedVideo, Timeline, read_video
from weights import load_ensemble

STAGES = ("read", "detect", "crop", "predict", "blend")

log = logging.getLogger(__name__)


@contextmanager
def timed(seconds: dict[str, float], stage: str):
    """Add the wall time of the block to seconds[stage]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class VideoResult:
    """Everything the report says about one video."""

    filename: str
    label: float
    frames_requested: int = 0      # what the time budget allowed this video
    key_frames: int = 0           # key frames, evenly spaced: what detection and frame models see
    frames_decoded: int = 0        # key frames plus the clip windows of clip and sequence models
    frames_detected: int = 0       # key frames with a whole-frame pass; the others were searched near their faces
    frame_indices: list[int] = field(default_factory=list)  # the key frames, by index in the video
    reader: str | None = None
    sampling: str | None = None    # "reference": the key frames are the nearest reference frames; see DecodeSpec
    width: int = 0                 # of the decoded (upright) frames
    height: int = 0
    duration: float | None = None  # seconds, from the container's frame count and rate
    faces_per_frame: list[int] = field(default_factory=list)
    track_lengths: list[int] = field(default_factory=list)
    face_side: float | None = None  # the median longer side of the tracked face boxes, in pixels
    frame_scores: dict[str, list[list[float]]] = field(default_factory=dict)  # model -> track -> frame (or clip)
    model_scores: dict[str, float | None] = field(default_factory=dict)
    blended: float | None = None
    fallback: bool = False
    error: str | None = None
    skipped: bool = False          # not even read: the time budget ran out
    budget_level: int = 0          # 0 = as configured; see TimeBudget
    device: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Job:
    """One video to score, with what the time budget allows it: `skip` says why it must not even be read."""

    path: Path
    frames: int
    models: frozenset[str] | None = None  # None: every model
    budget_level: int = 0
    skip: str | None = None


@dataclass
class Decoded:
    """A job after its reader: the decoded video, or the error that stopped it."""

    job: Job
    video: DecodedVideo | None
    error: BaseException | None
    seconds: float


@dataclass
class Prepared:
    """A video after detect and crop: its result so far and, when it has faces, its tracks and their models'
    inputs."""

    result: VideoResult
    classifiers: list[Classifier]
    inputs: list[TrackCrops]
    tracks: list[Track] = field(default_factory=list)


class Pipeline:
    """Everything loaded once (detector, models, device), then applied to a stream of videos.

    `process` scores one video start to finish (the sequential path); `run` scores many: reader threads
    decode, detect and crop ahead while the main thread runs each model over the crops of several videos.
    """

    def __init__(self, ensemble_path: Path, device: str, batch_size: int | None = None, readers: int = 2,
                 cores: int | None = None):
        """`readers`: the reader threads of `run`; 0 for a pipeline used only through `process`, whose inference
        then has every core to itself. `cores`: how many cores inference may use (default: the usable ones).

        The detector's onnxruntime sessions, run by each reader, share the cores among the readers and the main
        thread. The classifiers' run one thread per call, and the main thread runs a model's batches side by side,
        one per core: on 2 cores, a two-thread session costs 20% more CPU time per batch than a one-thread one
        (MesoNets, batch 8), and the last videos of a run, after the readers are done, still get every core."""
        self.ensemble = load_ensemble(ensemble_path)
        self.accelerator = Accelerator(resolve_device(device))
        # On the CPU small batches stay in cache (one thread, per image: MesoInception4 5.7 ms at 1, 6.9 ms at 8).
        # With batches side by side, 4 costs 6% less CPU time per video than 8 and no more than 1 or 2 (2 cores).
        self.batch_size = batch_size or (4 if self.accelerator.device.type == "cpu" else 64)
        self.cores = cores or usable_cpus()
        self.finder = make_face_finder(self.ensemble, self.accelerator, self.batch_size,
                                       max(1, self.cores // (readers + 1)))
        self.classifiers = [Classifier(m, self.ensemble.build_model(m, self.accelerator.device.type, threads=1))
                            for m in self.ensemble.models]
        self.pool = ThreadPoolExecutor(self.cores, thread_name_prefix="predict")  # threads start on first use
        self.members = self.ensemble.members()
        self.blend_weights = {m.name: m.weight for m in self.members}
        self.readers = readers

    @property
    def fallback(self) -> float:
        return self.ensemble.blend.fallback

    def close(self) -> None:
        """Stop the predict threads; the pipeline scores nothing after this."""
        self.pool.shutdown()

    def videos_per_group(self, frames: int) -> int:
        """Videos of `frames` key frames each that make two full batches of crops: a GPU batch of 64 at 32 frames
        takes 4 videos."""
        return max(1, math.ceil(2 * self.batch_size / frames))

    @staticmethod
    def job(path: Path, frames: int, models: set[str] | None = None) -> Job:
        """A job of `frames` key frames for every model (or only those named)."""
        return Job(path, frames, frozenset(models) if models is not None else None)

    def process(self, path: Path, frames: int, models: set[str] | None = None) -> VideoResult:
        """Score one video at `frames` key frames with every model (or only those named); any failure yields the
        fallback value."""
        return self.score([self.read_and_prepare(self.job(path, frames, models))])[0]

    def run(self, jobs: Iterator[Job]) -> Iterator[list[VideoResult]]:
        """Results in job order, a batch of videos at a time; readers (decode, detect, crop) run ahead by a
        bounded number of videos, so memory stays flat.

        `jobs` is consumed lazily, one job per free reader slot, so a time budget can plan each job late; group and
        read-ahead sizes follow the frame count of the latest job.
        """
        if self.readers < 1:
            raise ValueError("run() needs at least one reader thread; this pipeline was built with readers=0")
        with ThreadPoolExecutor(self.readers, thread_name_prefix="reader") as pool:
            pending: deque[Future] = deque()
            group: list[Prepared] = []
            frames = None  # of the latest job

            def top_up():
                nonlocal frames
                while frames is None or len(pending) < self.readers + self.videos_per_group(frames):
                    job = next(jobs, None)
                    if job is None:
                        return
                    frames = job.frames
                    pending.append(pool.submit(self.read_and_prepare, job))

            top_up()
            while pending:
                group.append(pending.popleft().result())
                top_up()
                if len(group) >= self.videos_per_group(frames) or not pending or not pending[0].done():
                    yield self.score(group)
                    group = []

    def read_and_prepare(self, job: Job) -> Prepared:
        """A reader thread's work: decode, then detect and crop."""
        return self.prepare(self.read(job))

    def read(self, job: Job) -> Decoded:
        """Decode the job's frames; an error is handed on, not raised."""
        start = time.perf_counter()
        if job.skip:
            return Decoded(job, None, None, 0.0)
        try:
            video = read_video(job.path, job.frames, self.timelines(job.models), self.ensemble.decode)
            return Decoded(job, video, None, time.perf_counter() - start)
        except Exception as error:
            return Decoded(job, None, error, time.perf_counter() - start)

    def prepare(self, decoded: Decoded) -> Prepared:
        """Detect, track and crop one decoded video; without faces its result is already final."""
        job = decoded.job
        result = VideoResult(filename=job.path.name, label=self.fallback, frames_requested=job.frames,
                             budget_level=job.budget_level, seconds={"read": decoded.seconds})
        classifiers = self.classifiers_for(job.models)
        prepared = Prepared(result, classifiers, [])
        try:
            if job.skip:
                result.skipped = True
                raise TimeoutError(job.skip)
            if decoded.error is not None:
                raise decoded.error
            video = decoded.video
            result.key_frames, result.frames_decoded, result.reader = len(video.keys), len(video.frames), video.reader
            result.frame_indices, result.sampling = video.keys, video.sampling
            result.height, result.width = video.frames[video.keys[0]].shape[:2]
            result.duration = video.total / video.fps if video.total and video.fps else None
            with timed(result.seconds, "detect"):
                boxes, detected = find_sparse(self.finder, [video.frames[k] for k in video.keys], video.keys,
                                              self.ensemble.detector.every)
                tracks = link_tracks(boxes, self.ensemble.tracks)
            result.frames_detected = len(detected)
            result.faces_per_frame = [len(b) for b in boxes]
            result.track_lengths = [len(t.boxes) for t in tracks]
            result.face_side = face_side(tracks)
            if not tracks:
                result.fallback, result.error = True, "no face found"
                return prepared
            with timed(result.seconds, "crop"):
                specs = [c.spec for c in classifiers]
                prepared.inputs = [track_crops(video, t, specs, self.ensemble.detector.margin) for t in tracks]
            prepared.tracks = tracks
        except Exception as error:  # one bad video must never cost the submission
            self.fail(result, error)
        return prepared

    def score(self, group: list[Prepared]) -> list[VideoResult]:
        """Run each model once over the crops of every video in the group, then blend each video."""
        scorable = [p for p in group if p.inputs]
        try:
            started = time.perf_counter()
            scores = self.predict(scorable)
            share = (time.perf_counter() - started) / max(1, len(scorable))
            for prepared, frame_scores in zip(scorable, scores):
                prepared.result.seconds["predict"] = share
                with timed(prepared.result.seconds, "blend"):
                    self.blend(prepared.result, frame_scores)
        except Exception as error:
            if len(scorable) > 1:  # find the one video that breaks the batch: the others keep their scores
                return [self.score([prepared])[0] for prepared in group]
            for prepared in scorable:
                self.fail(prepared.result, error)
        for prepared in group:
            prepared.result.device = str(self.accelerator.device)
        return [prepared.result for prepared in group]

    def predict(self, group: list[Prepared]) -> list[dict[str, list[np.ndarray]]]:
        """Per video, per model, per track: the frame (or clip) scores; one batched run per model."""
        per_video: list[dict[str, list[np.ndarray]]] = [{} for _ in group]
        for classifier in self.classifiers:
            users = [i for i, p in enumerate(group) if classifier in p.classifiers]
            if not users:
                continue
            inputs = [track for i in users for track in group[i].inputs]
            flat = score_tracks(inputs, classifier, self.accelerator, self.batch_size, self.pool)
            offsets = np.cumsum([0] + [len(group[i].inputs) for i in users])
            for i, start, stop in zip(users, offsets[:-1], offsets[1:]):
                per_video[i][classifier.spec.name] = flat[start:stop]
        return per_video

    def blend(self, result: VideoResult, frame_scores: dict[str, list[np.ndarray]]) -> None:
        """Aggregate frames, combine tracks, blend the members (models alone, or pools), calibrate and clamp: the
        video's label (`blended` stays the uncalibrated blend). The report's model scores hold each model alone and
        each pool."""
        specs = {c.spec.name: c.spec for c in self.classifiers}
        alone = {name: blending.video_score(tracks, specs[name].aggregation, self.ensemble.combine_for(specs[name]))
                 for name, tracks in frame_scores.items()}
        scores = {m.name: blending.member_score(frame_scores, m.models, m.aggregation, m.video_score)
                  for m in self.members if any(name in frame_scores for name in m.models)}
        result.frame_scores = {k: [track.tolist() for track in v] for k, v in frame_scores.items()}
        result.model_scores = {k: finite_or_none(v) for k, v in {**alone, **scores}.items()}
        result.blended = finite_or_none(blending.blend_models(scores, self.blend_weights))
        result.label = blending.final_prediction(result.blended if result.blended is not None else math.nan,
                                                 self.ensemble.blend)
        result.fallback = result.blended is None
        if result.fallback:
            result.error = "no model could score the faces"

    def fail(self, result: VideoResult, error: BaseException) -> None:
        """Give a video the fallback value, with the reason."""
        log.warning("%s: %s: %s; writing the fallback %.2f", result.filename, type(error).__name__, error,
                    self.fallback)
        result.label, result.fallback = self.fallback, True
        result.error = f"{type(error).__name__}: {error}"

    def classifiers_for(self, models: frozenset[str] | None) -> list[Classifier]:
        """The classifiers of the named models (None: all), in manifest order."""
        return [c for c in self.classifiers if models is None or c.spec.name in models]

    def timelines(self, models: frozenset[str] | None = None) -> list[Timeline]:
        """The timelines besides the key frames that the named models' readers must decode: clip and sequence
        models', and those of frame models with their own."""
        return sorted({Timeline(*c.spec.input.timeline) for c in self.classifiers_for(models)
                       if c.spec.kind != "frame" or c.spec.input.every})


def face_side(tracks: list[Track]) -> float | None:
    """The median longer side, in pixels, of every box in the tracks; None without any."""
    sides = [max(box[2] - box[0], box[3] - box[1]) for track in tracks for box in track.boxes.values()]
    return float(np.median(sides)) if sides else None


def finite_or_none(value: float) -> float | None:
    """The value, or None (null in the report) when it is NaN or infinite."""
    return value if math.isfinite(value) else None
