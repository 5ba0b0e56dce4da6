"""The local leaderboard's prediction cache and its per-video scoring, shared by both engines (`local_lb` in this
process, `ray_engine` on Ray actors): one JSON file per (video content, model, detector, tracking, frame count)
holding the model's frame scores; `video_scores` reads what a video has and computes the rest."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from bench.datasets import LabelledVideo
from inference.pipeline import VideoResult
from weights import Ensemble, sha256_of

log = logging.getLogger("local_lb")


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
            "decode": dataclasses.asdict(ensemble.decode),
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
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # unreadable: computed again and rewritten
            log.warning("prediction cache entry %s is unreadable (%s): computing it again", path, error)
            return None

    def put(self, key: str, entry: dict) -> None:
        """Write atomically: a temporary file of this writer's own (many processes and nodes share the folder),
        then a rename, so a reader never sees half an entry and a writer killed mid-write leaves no entry."""
        path = self.folder / f"{key}.json"
        temporary = path.with_name(f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            temporary.write_text(json.dumps(entry))
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)


@dataclasses.dataclass
class Evaluation:
    """Per video: label, group, each model's frame scores per track, the seconds spent computing them, and what the
    video was like (`facts`, None in entries cached before they were recorded)."""

    videos: list[LabelledVideo]
    frame_scores: list[dict[str, list[list[float]]]]
    errors: list[str | None]
    seconds: list[dict[str, float]]
    computed: int  # (video, model) pairs that were not in the cache
    nodes: dict[str, int] = dataclasses.field(default_factory=dict)  # --engine ray: videos scored per node
    failed: int = 0  # --engine ray: videos the cluster could not score (their error says why; not cached)
    facts: list[dict | None] = dataclasses.field(default_factory=list)

    def add(self, scores: VideoScores) -> None:
        self.frame_scores.append({name: entry["frame_scores"] for name, entry in scores.entries.items()})
        self.errors.append(next((e["error"] for e in scores.entries.values() if e["error"]), None))
        self.seconds.append(scores.seconds)
        self.facts.append(next((e["facts"] for e in scores.entries.values() if e.get("facts")), None))
        self.computed += scores.computed


@dataclasses.dataclass
class VideoScores:
    """One video's cache entries (model -> frame scores, error, seconds), as read or as just computed."""

    entries: dict[str, dict]
    computed: int  # how many of them were computed now
    seconds: dict[str, float]  # the stage seconds of this computation, else of the cached one


def video_scores(path: Path, ensemble: Ensemble, frames_per_video: int, cache: PredictionCache,
                 compute: Callable[[set[str]], VideoResult]) -> VideoScores:
    """One video: the cached models' entries, and `compute(missing models)` (the kernel's pipeline) for the rest,
    written to the cache. Both engines score every video through this function."""
    keys = {m.name: cache.key(path, ensemble, m.name, frames_per_video) for m in ensemble.models}
    entries = {name: cache.get(key) for name, key in keys.items()}
    missing = {name for name, entry in entries.items() if entry is None}
    seconds: dict[str, float] = {}
    if missing:
        result = compute(missing)
        seconds = result.seconds
        for name in missing:
            entries[name] = {"frame_scores": result.frame_scores.get(name, []), "error": result.error,
                             "seconds": result.seconds, "facts": video_facts(result)}
            cache.put(keys[name], entries[name])
    return VideoScores(entries, len(missing), seconds or next(iter(entries.values()))["seconds"])


def video_facts(result: VideoResult) -> dict:
    """What the error analysis slices a video by: its frame size, length, faces, tracks, and whether the time budget
    skipped it."""
    return {"width": result.width, "height": result.height, "duration": result.duration,
            "face_side": result.face_side, "tracks": len(result.track_lengths), "skipped": result.skipped}


def record_facts(path: Path, ensemble: Ensemble, frames_per_video: int, cache: PredictionCache, facts: dict) -> None:
    """Add a video's facts to its cache entries that lack them (entries written before facts were recorded)."""
    for model in ensemble.models:
        key = cache.key(path, ensemble, model.name, frames_per_video)
        entry = cache.get(key)
        if entry is not None and not entry.get("facts"):
            cache.put(key, {**entry, "facts": facts})
