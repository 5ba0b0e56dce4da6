"""Read the frames a run needs from a video: evenly spaced key frames, plus the runs of frames clip models see."""
from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}

log = logging.getLogger(__name__)

ClipGeometry = tuple[int, int, int]  # (frames, stride, clips) of a clip or sequence model: see InputSpec


@dataclass
class DecodedVideo:
    """The decoded frames of one video (RGB, upright) by frame index.

    `keys` are the evenly spaced frames that detection and frame models see; `windows` holds, per clip
    geometry, the runs of frames that clip and sequence models see.
    """

    frames: dict[int, np.ndarray]
    keys: list[int]
    windows: dict[ClipGeometry, list[list[int]]]
    reader: str


def find_videos(folder: Path) -> tuple[list[Path], list[Path]]:
    """Videos anywhere below `folder` (sorted by name then path), and the other files, which are ignored.

    A video is any entry with a video suffix, even one that cannot be opened (a dangling link, a folder):
    it still gets its row.
    """
    videos, ignored = [], []
    for path in folder.rglob("*"):
        if any(parent.suffix.lower() in VIDEO_SUFFIXES for parent in path.relative_to(folder).parents):
            continue  # inside a folder that is itself read as a video
        if path.suffix.lower() in VIDEO_SUFFIXES:
            videos.append(path)
        elif path.is_file():
            ignored.append(path)
    return sorted(videos, key=lambda p: (p.name, str(p))), sorted(ignored)


def sample_indices(total: int, count: int) -> list[int]:
    """`count` evenly spaced frame indices in [0, total)."""
    if total <= 0:
        return []
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


def clip_windows(total: int, keys: list[int], geometry: ClipGeometry) -> list[list[int]]:
    """`clips` runs of `frames` indices `stride` apart, centred on key frames in the middle of equal parts of
    the video (not on its first and last frames, often fades), inside the video."""
    frames, stride, clips = geometry
    span = (frames - 1) * stride
    centres = sorted({keys[int((part + 0.5) * len(keys) / clips)] for part in range(clips)}) if keys else []
    windows = []
    for centre in centres:
        start = min(max(0, centre - span // 2), max(0, total - 1 - span))
        windows.append([min(start + step * stride, total - 1) for step in range(frames)])
    return windows


def plan_frames(total: int, count: int, geometries) -> tuple[list[int], dict, set[int]]:
    """Key frames, clip windows per geometry, and every frame index that must be decoded."""
    keys = sample_indices(total, count)
    windows = {geometry: clip_windows(total, keys, geometry) for geometry in geometries}
    wanted = set(keys).union(*(index for runs in windows.values() for index in runs))
    return keys, windows, wanted


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame upright: rotate it by `rotation` degrees counter-clockwise (PyAV's display matrix)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=quarter_turns)) if quarter_turns else frame


def read_video(path: Path, count: int, geometries=()) -> DecodedVideo:
    """Decode the planned frames: PyAV with threaded decoding first, OpenCV grab/retrieve as the fallback.

    A folder is read as a video of its image files in name order (VidTIMIT keeps its videos that way).
    """
    if path.is_dir():
        return read_frame_folder(path, count, geometries)
    if not stat.S_ISREG(path.stat().st_mode):  # a named pipe or a device would block the reader for ever
        raise ValueError("not a regular file")
    try:
        return read_pyav(path, count, geometries)
    except Exception as pyav_error:
        log.info("%s: PyAV failed (%s); trying OpenCV", path.name, pyav_error)
        try:
            return read_opencv(path, count, geometries)
        except Exception as opencv_error:
            raise ValueError(f"cannot decode: PyAV: {pyav_error}; OpenCV: {opencv_error}") from None


def read_pyav(path: Path, count: int, geometries) -> DecodedVideo:
    """The planned frames with PyAV (threaded decoding, one pass, stopping after the last one needed)."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if not stream.frames:
            container.seek(0)
        keys, windows, wanted = plan_frames(total, count, geometries)
        last, frames = max(wanted, default=-1), {}
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                frames[index] = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
            if index >= last:
                break
    return _decoded(frames, keys, windows, "pyav")


def read_frame_folder(folder: Path, count: int, geometries) -> DecodedVideo:
    """The planned frames of a folder of images, in name order."""
    # VidTIMIT names its JPEG frames 001, 002, ... without an extension: OpenCV reads them by content.
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (len(p.stem), p.name))
    keys, windows, wanted = plan_frames(len(files), count, geometries)
    frames = {}
    for index in sorted(wanted):
        bgr = cv2.imread(str(files[index]))
        if bgr is not None:
            frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _decoded(frames, keys, windows, "frames")


def read_opencv(path: Path, count: int, geometries) -> DecodedVideo:
    """The planned frames with OpenCV grab/retrieve (rotation metadata applied)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError("OpenCV cannot open the file")
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        keys, windows, wanted = plan_frames(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), count, geometries)
        frames = {}
        for index in range(max(wanted, default=-1) + 1):
            if not capture.grab():  # grab() skips decoding to RGB: only retrieve() pays for the frames we keep
                break
            if index in wanted:
                ok, bgr = capture.retrieve()
                if ok:
                    frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
    return _decoded(frames, keys, windows, "opencv")


def _decoded(frames: dict[int, np.ndarray], keys, windows, reader: str) -> DecodedVideo:
    """Keep what was really decoded: containers sometimes promise more frames than they hold."""
    if not frames:
        raise ValueError("no frame decoded")
    complete = {geometry: [run for run in runs if all(i in frames for i in run)] for geometry, runs in windows.items()}
    return DecodedVideo(frames, [k for k in keys if k in frames], complete, reader)
