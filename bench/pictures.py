"""Pictures of one video as the kernel saw it: a strip of the face crops each model was fed, each under its score,
and one frame with the face tracks' boxes drawn. The frames are read and the faces found again (the kernel's own
pipeline); no model runs: the scores come from the prediction cache."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inference.crops import crop_key, stack_key
from inference.pipeline import Pipeline

TILE = 96  # pixels: a crop's height in the strip
CROPS_PER_ROW = 8
MAX_TRACKS = 3
FRAME_SIDE = 640  # pixels: the frame's longer side at most
JPEG_QUALITY = 85  # photos as JPEG: a tenth of the PNG's size, and the page holds many
TRACK_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180))  # RGB
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@dataclass
class VideoPictures:
    """JPEG bytes of the crop strip (None where the video had no face) and of the frame with the boxes."""

    strip: bytes | None
    frame: bytes | None


def jpeg(image: np.ndarray) -> bytes:
    """An RGB image as JPEG bytes."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


def text_band(width: int, text: str, height: int = 18) -> np.ndarray:
    """A white band of `width` pixels with `text` in black."""
    band = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(band, text, (3, height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, BLACK, 1, cv2.LINE_AA)
    return band


def caption(score: float) -> str:
    """A crop's score to 3 decimals, or "-" where the cache holds none."""
    return f"{score:.3f}" if math.isfinite(score) else "-"


def tile(image: np.ndarray, caption: str) -> np.ndarray:
    """A crop scaled to TILE pixels high, with its caption below."""
    width = max(1, round(image.shape[1] * TILE / image.shape[0]))
    scaled = cv2.resize(np.ascontiguousarray(image[..., :3]), (width, TILE), interpolation=cv2.INTER_AREA)
    return np.concatenate([scaled, text_band(width, caption)])


def row(tiles: list[np.ndarray], title: str) -> np.ndarray:
    """Tiles side by side, 4 pixels apart, under a title band."""
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    body = np.concatenate([part for t in tiles for part in (t, gap)][:-1], axis=1)
    return np.concatenate([text_band(body.shape[1], title), body])


def stacked(rows: list[np.ndarray]) -> np.ndarray:
    """Rows one under another, left-aligned on white."""
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def spread(count: int, most: int) -> list[int]:
    """At most `most` evenly spaced indices of `count` items."""
    return sorted({round(i * (count - 1) / max(1, most - 1)) for i in range(min(count, most))}) if count else []


def model_faces(inputs, spec, scores: list[float]) -> list[tuple[np.ndarray, float]]:
    """One track's inputs of one model as (image, score) pairs, NaN where the cache holds no score: the faces of a
    frame model, the middle frame of each clip of a clip or sequence model (a sequence model's per-frame scores
    averaged over each clip)."""
    if spec.kind == "frame":
        faces = inputs.faces.get(crop_key(spec.input))
        images = list(faces) if faces is not None else []
    else:
        clips = inputs.clips.get(stack_key(spec))
        images = [clip[len(clip) // 2] for clip in clips] if clips is not None else []
        if images and scores and len(scores) % len(images) == 0:
            scores = np.asarray(scores, np.float64).reshape(len(images), -1).mean(axis=1).tolist()
    return list(zip(images, [*scores, *[math.nan] * (len(images) - len(scores))]))


def video_pictures(runner: Pipeline, path: Path, frames: int,
                   frame_scores: dict[str, list[list[float]]]) -> VideoPictures:
    """Read and detect one video again at `frames` key frames; draw what each model saw with its cached scores."""
    decoded = runner.read(runner.job(path, frames))
    if decoded.error is not None:
        raise decoded.error
    prepared = runner.prepare(decoded)  # a video without faces still shows its frame
    rows = []
    for number, inputs in enumerate(prepared.inputs[:MAX_TRACKS]):
        for classifier in prepared.classifiers:
            spec = classifier.spec
            scores = frame_scores.get(spec.name) or []
            pairs = model_faces(inputs, spec, scores[number] if number < len(scores) else [])
            if pairs:
                tiles = [tile(pairs[i][0], caption(pairs[i][1])) for i in spread(len(pairs), CROPS_PER_ROW)]
                rows.append(row(tiles, f"track {number}: {spec.name} ({len(pairs)} inputs)"))
    return VideoPictures(jpeg(stacked(rows)) if rows else None, jpeg(boxed_frame(decoded.video, prepared.tracks)))


def boxed_frame(video, tracks) -> np.ndarray:
    """The key frame where the most tracks have a detection, each track's box drawn in its colour and numbered,
    scaled to FRAME_SIDE pixels at most."""
    position = max(range(len(video.keys)), key=lambda p: sum(p in t.boxes for t in tracks))
    image = np.ascontiguousarray(video.frames[video.keys[position]].copy())
    scale = min(1.0, FRAME_SIDE / max(image.shape[:2]))
    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else image
    for number, track in enumerate(tracks):
        if position in track.boxes:
            colour = TRACK_COLOURS[number % len(TRACK_COLOURS)]
            x0, y0, x1, y1 = (int(round(v * scale)) for v in track.boxes[position][:4])
            cv2.rectangle(image, (x0, y0), (x1, y1), colour, 2)
            cv2.putText(image, str(number), (x0 + 2, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                        cv2.LINE_AA)
    cv2.putText(image, f"frame {video.keys[position]}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
    return image
