"""Read the frames a run needs from a video: evenly spaced key frames, plus the runs of frames clip models see.

Where the container's H.264 says which frames are references, the key frames are the nearest reference frames to
the evenly spaced ones, and the frames nothing depends on are never sent to the decoder (about half of them)."""
from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import av
import cv2
import numpy as np

from weights import DecodeSpec

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}

log = logging.getLogger(__name__)

class Timeline(NamedTuple):
    """Which frames a model sees besides the run's key frames (see InputSpec): runs of `frames` frames `stride`
    apart. With `every` 0, `clips` runs centred on key frames; with `every` k, a run starts at frame `start` and
    every k-th frame after it, counted at about `fps` frames a second (0: every frame counts)."""

    frames: int
    stride: int
    clips: int
    fps: float = 0.0
    every: int = 0
    start: int = 0

    @property
    def own(self) -> bool:
        """Whether the runs follow the model's own timeline rather than the key frames."""
        return self.every > 0


@dataclass
class DecodedVideo:
    """The decoded frames of one video (RGB, upright) by frame index.

    `keys` are the frames detection sees: the evenly spaced `base` frames that frame models see, plus the frames
    of frame models with their own timeline; `windows` holds, per timeline, the runs of frames its models see.
    """

    frames: dict[int, np.ndarray]
    keys: list[int]
    windows: dict[Timeline, list[list[int]]]
    reader: str
    sampling: str = "exact"  # "reference" where the keys are the nearest reference frames (see DecodeSpec)
    base: list[int] = field(default_factory=list)  # empty: every key frame is a base frame
    fps: float = 0.0  # the container's frame rate (0: unknown)
    total: int = 0  # the frames the container holds, as its reader counts them (0: unknown)

    def __post_init__(self):
        if not self.base:
            self.base = list(self.keys)


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


def sample_indices(total: int, count: int, cheap: list[int] | None = None) -> list[int]:
    """`count` evenly spaced frame indices in [0, total); given the `cheap` frames, each index moves to the nearest
    cheap one not yet taken within half the spacing (the earlier on a tie), else to the nearest free frame."""
    if total <= 0:
        return []
    targets = sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))
    if cheap is None:
        return targets
    reach = (total - 1) / max(1, len(targets) - 1) / 2
    taken: set[int] = set()
    for target in targets:
        near = [index for index in cheap if index not in taken and abs(index - target) <= reach]
        free = near or [index for index in range(total) if index not in taken]
        taken.add(min(free, key=lambda index: (abs(index - target), index)))
    return sorted(taken)


def clip_windows(total: int, keys: list[int], timeline: Timeline, fps: float = 0.0) -> list[list[int]]:
    """The runs of a timeline inside the video: its own timeline (see `own_windows`), else `clips` runs of `frames`
    indices `stride` apart, centred on key frames in the middle of equal parts of the video (not on its first and
    last frames, often fades)."""
    if timeline.own:
        return own_windows(total, timeline, fps)
    frames, stride, clips = timeline.frames, timeline.stride, timeline.clips
    span = (frames - 1) * stride
    centres = sorted({keys[int((part + 0.5) * len(keys) / clips)] for part in range(clips)}) if keys else []
    windows = []
    for centre in centres:
        start = min(max(0, centre - span // 2), max(0, total - 1 - span))
        windows.append([min(start + step * stride, total - 1) for step in range(frames)])
    return windows


def own_windows(total: int, timeline: Timeline, fps: float) -> list[list[int]]:
    """Runs starting at frame `start` and every `every` sampled frames after it, each `frames` sampled frames
    `stride` apart; a sampled frame is every round(int(fps) / timeline.fps)-th video frame (NTech's rule: 29.97
    fps at 15 -> every 2nd), every frame where either rate is unknown."""
    step = max(1, round(int(fps) / timeline.fps)) if timeline.fps > 0 and fps > 0 else 1
    span = (timeline.frames - 1) * timeline.stride * step
    return [[first + offset * timeline.stride * step for offset in range(timeline.frames)]
            for first in range(timeline.start, total - span, timeline.every * step)]


def plan_frames(total: int, count: int, timelines, cheap: list[int] | None = None,
                fps: float = 0.0) -> tuple[list[int], dict, set[int]]:
    """Base key frames (among the `cheap` ones where given), windows per timeline, and every frame index that must
    be decoded."""
    keys = sample_indices(total, count, cheap)
    windows = {Timeline(*timeline): clip_windows(total, keys, Timeline(*timeline), fps) for timeline in timelines}
    wanted = set(keys).union(*(index for runs in windows.values() for index in runs))
    return keys, windows, wanted


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame upright: rotate it by `rotation` degrees counter-clockwise (PyAV's display matrix)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=quarter_turns)) if quarter_turns else frame


def read_video(path: Path, count: int, timelines=(), decode: DecodeSpec = DecodeSpec()) -> DecodedVideo:
    """Decode the planned frames: PyAV with threaded decoding first, OpenCV grab/retrieve as the fallback.

    A folder is read as a video of its image files in name order (VidTIMIT keeps its videos that way).
    """
    if path.is_dir():
        return read_frame_folder(path, count, timelines)
    if not stat.S_ISREG(path.stat().st_mode):  # a named pipe or a device would block the reader for ever
        raise ValueError("not a regular file")
    try:
        return read_pyav(path, count, timelines, decode)
    except Exception as pyav_error:
        log.info("%s: PyAV failed (%s); trying OpenCV", path.name, pyav_error)
        try:
            return read_opencv(path, count, timelines)
        except Exception as opencv_error:
            raise ValueError(f"cannot decode: PyAV: {pyav_error}; OpenCV: {opencv_error}") from None


def read_pyav(path: Path, count: int, timelines, decode: DecodeSpec = DecodeSpec()) -> DecodedVideo:
    """The planned frames with PyAV (threaded decoding, stopping after the last one needed); with reference
    sampling, only the packets those frames depend on reach the decoder."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if not decode.deblocking:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        packets = [packet for packet in container.demux(stream) if packet.size]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        shown = display_indices(packets)
        references = None
        if decode.sampling == "reference" and shown is not None and stream.codec_context.name == "h264":
            references = h264_references(packets, stream.codec_context.extradata)
        if references is None:  # the reader cannot tell which frames others depend on: decode them all
            total = stream.frames or len(packets)
            keys, windows, wanted = plan_frames(total, count, timelines, fps=fps)
            frames = decode_all(stream.codec_context, packets, wanted)
            return _decoded(frames, keys, windows, "pyav", "exact", fps, total)
        cheap = sorted(index for index, reference in zip(shown, references) if reference)
        keys, windows, wanted = plan_frames(len(packets), count, timelines, cheap, fps)
        frames = decode_needed(stream.codec_context, packets, shown, references, wanted)
    return _decoded(frames, keys, windows, "pyav", "reference", fps, len(packets))


def display_indices(packets: list) -> list[int] | None:
    """Each packet's frame index in display order (packets come in decode order); None without distinct pts."""
    stamps = [packet.pts for packet in packets]
    if None in stamps or len(set(stamps)) != len(stamps):
        return None
    rank = {stamp: index for index, stamp in enumerate(sorted(stamps))}
    return [rank[stamp] for stamp in stamps]


def h264_references(packets: list, extradata: bytes | None) -> list[bool] | None:
    """Whether each H.264 packet's picture is a reference (nal_ref_idc > 0 in its slices); None where a packet
    holds no slice, so the stream is not what this reader understands."""
    length_size = (extradata[4] & 3) + 1 if extradata and extradata[0] == 1 else None  # avcC, else Annex B
    references = []
    for packet in packets:
        reference = slice_reference(memoryview(packet), length_size)
        if reference is None:
            return None
        references.append(reference)
    return references


def slice_reference(data: memoryview, length_size: int | None) -> bool | None:
    """nal_ref_idc > 0 of the first slice in one packet (length-prefixed NAL units, or Annex B start codes)."""
    for header in nal_headers(data, length_size):
        if header & 0x1F in (1, 5):  # a coded slice: non-IDR or IDR
            return header >> 5 & 3 > 0
    return None


def nal_headers(data: memoryview, length_size: int | None):
    """The first byte of each NAL unit in a packet."""
    if length_size is not None:
        position = 0
        while position + length_size < len(data):
            yield data[position + length_size]
            position += length_size + int.from_bytes(data[position:position + length_size], "big")
        return
    raw = bytes(data)
    start = raw.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(raw):
        yield raw[start + 3]
        start = raw.find(b"\x00\x00\x01", start + 3)


def decode_all(codec, packets: list, wanted: set[int]) -> dict[int, np.ndarray]:
    """Decode in order, counting frames as they come out, until the last wanted one."""
    last, frames, index = max(wanted, default=-1), {}, 0
    for packet in [*packets, None]:  # None drains the decoder
        for frame in codec.decode(packet):
            if index in wanted:
                frames[index] = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
            if index >= last:
                return frames
            index += 1
    return frames


def decode_needed(codec, packets: list, shown: list[int], references: list[bool], wanted: set[int]) -> dict:
    """Decode only the packets the wanted frames need (see `needed_packets`); frames are known by their pts."""
    index_of = {packet.pts: index for packet, index in zip(packets, shown)}
    frames = {}
    for packet in [*(packets[position] for position in needed_packets(shown, references, wanted)), None]:
        for frame in codec.decode(packet):
            index = index_of.get(frame.pts)
            if index in wanted:
                frames[index] = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
    return frames


def needed_packets(shown: list[int], references: list[bool], wanted: set[int]) -> list[int]:
    """Positions (decode order) of the packets up to the last wanted frame that are references or wanted: no frame
    depends on the others, so they never reach the decoder."""
    last = max((position for position, index in enumerate(shown) if index in wanted), default=-1)
    return [position for position in range(last + 1) if references[position] or shown[position] in wanted]


def read_frame_folder(folder: Path, count: int, timelines) -> DecodedVideo:
    """The planned frames of a folder of images, in name order."""
    # VidTIMIT names its JPEG frames 001, 002, ... without an extension: OpenCV reads them by content.
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (len(p.stem), p.name))
    keys, windows, wanted = plan_frames(len(files), count, timelines)
    frames = {}
    for index in sorted(wanted):
        bgr = cv2.imread(str(files[index]))
        if bgr is not None:
            frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _decoded(frames, keys, windows, "frames", total=len(files))


def read_opencv(path: Path, count: int, timelines) -> DecodedVideo:
    """The planned frames with OpenCV grab/retrieve (rotation metadata applied)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError("OpenCV cannot open the file")
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        keys, windows, wanted = plan_frames(total, count, timelines, fps=fps)
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
    return _decoded(frames, keys, windows, "opencv", fps=fps, total=total)


def _decoded(frames: dict[int, np.ndarray], keys, windows, reader: str, sampling: str = "exact",
             fps: float = 0.0, total: int = 0) -> DecodedVideo:
    """Keep what was really decoded (containers sometimes promise more frames than they hold); the frames of frame
    models' own timelines join the key frames, so detection sees them."""
    if not frames:
        raise ValueError("no frame decoded")
    complete = {key: [run for run in runs if all(i in frames for i in run)] for key, runs in windows.items()}
    base = [k for k in keys if k in frames]
    own = {run[0] for key, runs in complete.items() if key.own and key.frames == 1 for run in runs}
    return DecodedVideo(frames, sorted(own.union(base)), complete, reader, sampling, base, fps, total)
