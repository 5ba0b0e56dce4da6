"""Synthetic sample videos: a real face photo (scikit-image's astronaut) moving over a 1080p scene.

`python -m bench.samples --out samples/` writes the embedded default set the README's demo runs on:
a landscape 1080p clip with one face, the same scene without the face, and a portrait (1080x1920) clip.
"""
from __future__ import annotations

import argparse
import functools
import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data as skimage_data

FPS = 30
HEAD_AND_SHOULDERS = (slice(0, 300), slice(100, 370))  # rows, cols of the astronaut photo around her face


@dataclass(frozen=True)
class SampleSpec:
    """One synthetic clip: file name, frame size (width, height), and how many faces are pasted in."""

    name: str
    width: int
    height: int
    faces: int


DEFAULT_SAMPLES = (
    SampleSpec("face_1080p.mp4", 1920, 1080, 1),
    SampleSpec("no_face_1080p.mp4", 1920, 1080, 0),
    SampleSpec("face_portrait.mp4", 1080, 1920, 1),
)


@functools.lru_cache(maxsize=16)
def background(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth coloured gradient with soft blobs: textured like a room, with nothing face-like in it."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for channel in range(3):
        image[..., channel] = 60 + 80 * (xs / width) * rng.uniform(0.3, 1) + 60 * (ys / height) * rng.uniform(0.3, 1)
    for _ in range(12):
        cx, cy, radius = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(40, 200)
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))
        image += blob[..., None] * rng.uniform(-50, 50, size=3)
    image = np.clip(image, 0, 255).astype(np.uint8)
    image.flags.writeable = False  # cached and shared: callers copy before drawing
    return image


def face_patch(scale: float) -> np.ndarray:
    """The astronaut's head and shoulders, resized by `scale` (face about 110 px wide at scale 1)."""
    patch = skimage_data.astronaut()[HEAD_AND_SHOULDERS]
    return cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def render_frames(spec: SampleSpec, frame_count: int, face_scale: float = 1.2):
    """Yield RGB frames; each face drifts across its own horizontal lane so every sampled frame differs."""
    scene = background(spec.width, spec.height, seed=len(spec.name))
    patch = face_patch(face_scale)
    ph, pw = patch.shape[:2]
    lane_width = spec.width // max(1, spec.faces)
    for index in range(frame_count):
        frame = scene.copy()
        t = index / max(1, frame_count - 1)
        for lane in range(spec.faces):
            left = lane * lane_width + int(max(0, lane_width - pw) * (0.15 + 0.7 * t))
            top = int((spec.height - ph) * (0.4 + 0.1 * np.sin(2 * np.pi * (t + lane / 3))))
            frame[top:top + ph, left:left + pw] = patch[:, : spec.width - left]
        yield frame


def write_video(path: Path, frames, width: int, height: int, fps: int = FPS, crf: int = 23,
                bitrate: int | None = None) -> Path:
    """Encode RGB frames as H.264 (yuv420p) in an mp4 container with PyAV, at constant quality or `bitrate`.

    The file appears whole or not at all (written beside, then renamed): callers that reuse a clip if its file
    exists never pick up one an interrupted run left half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"} if bitrate else {"crf": str(crf), "preset": "veryfast"}
        if bitrate:
            stream.bit_rate = bitrate
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.replace(path)
    return path


def set_display_rotation(path: Path, degrees: int) -> Path:
    """Rewrite the mp4 track header's display matrix so players show the frames rotated clockwise by `degrees`."""
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    if box < 0:
        raise ValueError(f"{path} has no tkhd box")
    version = data[box + 4]
    matrix_at = box + 4 + (40 if version == 0 else 52)  # after version/flags, times, track id, duration, layer...
    cos, sin = round(math.cos(math.radians(degrees))), round(math.sin(math.radians(degrees)))
    one = 1 << 16  # 16.16 fixed point
    matrix = (cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, 1 << 30)
    data[matrix_at:matrix_at + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path


def make_samples(out_dir: Path, seconds: float = 3.0, specs=DEFAULT_SAMPLES) -> list[Path]:
    """Write each sample clip into out_dir (skipping ones already there) and return their paths."""
    paths = []
    for spec in specs:
        path = out_dir / spec.name
        if not path.is_file():
            write_video(path, render_frames(spec, round(seconds * FPS)), spec.width, spec.height)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("samples"))
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    for path in make_samples(args.out, args.seconds):
        print(path)


if __name__ == "__main__":
    main()
