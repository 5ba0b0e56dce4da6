"""Bad inputs for the kernel (issue 6, "never fail a submission"): every case generated here, small and fast.

`make_bad_inputs(folder)` writes each case into `folder` and returns, per file name (the base name: what the
submission's `filename` column holds), an `Expectation`: what the kernel must do with it. `CASES` holds the
same expectations without writing anything, so tests can be parametrized at collection time.

The contract the expectations encode:

- A *video entry* is any entry below the videos folder whose suffix is in `inference.video.VIDEO_SUFFIXES`
  (case-insensitive): a regular file, a symlink (even a dangling one), a named pipe, a directory. Every video
  entry gets exactly one row in submission.csv and one line in the report. Where no real prediction can be
  made the row holds the manifest's `blend.fallback` and the report line says why (`fallback: true`,
  non-empty `error`).
- Any other *file* (another suffix, no suffix, a hidden file) is ignored: no row, and one report line
  `{"filename": NAME, "path": PATH, "ignored": "<reason>"}` without a `label`.
- A directory with a video suffix (`dir.mp4/`) is a video entry too: the kernel reads a folder of image files as
  a video (VidTIMIT keeps its videos that way), so it gets a row; `dir.mp4` is empty, so the fallback with a
  reason. Other directories are searched: the clip in `nested/` gets its row under its base name.

"Unreadable video files". The tests run as root, so `chmod 000` stops nothing; these video entries are what
"unreadable" means here, and each must still get its row (the fallback with a reason), quickly:

- `no_permission.mp4`: a good clip with mode 000. Unreadable for an ordinary user (then: the fallback with a
  reason); root reads it anyway (then: a real prediction). Which one is decided by `os.access` when the file
  is written, so the expectation is exact either way.
- `broken.mp4`: a dangling symlink: a name that promises a video with nothing to read behind it.
- `loop.mp4`: a symlink to itself (open fails with ELOOP).
- `pipe.mp4`: a named pipe (FIFO) with no writer. Opening it for reading blocks forever, so a kernel that
  opens every video entry blindly hangs on it; it must be recognised as not a regular file and get the
  fallback with a reason. Written by `make_fifo_case`, apart from `CASES`: a hang (or, for the file name that
  is not UTF-8, `make_not_utf8_case`, a crash) would cost the whole run and hide every other case's result,
  so each of these two gets its own kernel run beside one good clip.
- `dir.mp4`: see above.

Cases that may or may not decode (the truncated mp4s whose index is at the front, an image named .mp4)
accept a prediction or the fallback, the fallback still with its reason. Cases that expect a real prediction
are ones where the current BlazeFace finds the face in every sampled frame with a score of 0.9 or more
(threshold 0.65): a fallback there is a kernel bug, not bad luck. BlazeFace also finds the sideways and
upside-down faces of the rotated clips before the display matrix is applied, so those cases check that rotated
input is handled, not that it is turned upright (tests/test_video.py checks the orientation).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from bench.samples import SampleSpec, background, face_patch, render_frames, set_display_rotation

SMALL = (320, 240)          # most clips: 1 s at 320x240 (30 frames), a face about 65 px wide
SMALL_FACE_SCALE = 0.6
SMALL_FRAMES = 30
SOURCES = "sources"         # sibling folder of the videos folder: the intact clips the cases are made from


@dataclass(frozen=True)
class Expectation:
    """What the kernel must do with one generated entry, and what the generator claims the entry is.

    kind: "video" (one row + one report line) or "ignored" (no row, one report line with `ignored`).
    prediction (videos): True = a real prediction (not the fallback); False = the fallback with a reason;
    None = either, a fallback still with its reason.
    The other fields are claims about the file, checked by probing it, so that a generator bug cannot make a
    case vacuous (a "4K" video that is not 4K, a "truncated" file that is whole).
    """

    kind: str
    prediction: bool | None = None
    why: str = ""
    path: str = ""                          # relative to the videos folder (default: the name)
    entry: str = "file"                     # file, symlink, dangling_symlink, symlink_loop, fifo, directory
    width: int | None = None                # coded frame size
    height: int | None = None
    frames: int | None = None               # decodable video frames
    rotation: int | None = None             # display-matrix rotation, degrees clockwise
    audio_only: bool = False
    variable_frame_rate: bool = False
    black: bool = False
    size: int | None = None                 # bytes
    truncated: float | None = None          # fraction of `source` kept
    source: str | None = None               # the intact file it was cut from (absolute once written)
    mode: int | None = None                 # permission bits

    @property
    def is_video(self) -> bool:
        return self.kind == "video"


def _small_clip(why: str, **claims) -> Expectation:
    return Expectation("video", True, why, width=SMALL[0], height=SMALL[1], frames=SMALL_FRAMES, **claims)


CASES: dict[str, Expectation] = {
    # empty and garbage
    "zero_bytes.mp4": Expectation("video", False, "empty file", size=0),
    "random_bytes.mp4": Expectation("video", False, "64 KiB of random bytes", size=64 * 1024),
    # truncated mp4s. With the index (moov) at the front the container promises 30 frames and the data runs out
    # part way: 10% holds no whole frame; 50% and 90% may decode their first frames. With the index last
    # (libx264's default here) a cut loses it and nothing decodes.
    "truncated_10.mp4": Expectation("video", False, "faststart mp4 cut at 10%", truncated=0.1,
                                    source="good_faststart.mp4"),
    "truncated_50.mp4": Expectation("video", None, "faststart mp4 cut at 50%", truncated=0.5,
                                    source="good_faststart.mp4"),
    "truncated_90.mp4": Expectation("video", None, "faststart mp4 cut at 90%", truncated=0.9,
                                    source="good_faststart.mp4"),
    "truncated_90_index_at_end.mp4": Expectation("video", False, "mp4 with its moov last, cut at 90%",
                                                 truncated=0.9, source="good.mp4"),
    # audio only: an mp4 holding one AAC stream, under a video suffix (a row) and as .m4a (not a video suffix)
    "audio_only.mp4": Expectation("video", False, "mp4 with one AAC stream and no video", audio_only=True),
    "audio_only.m4a": Expectation("ignored", why=".m4a is not a video suffix", audio_only=True),
    # tiny and degenerate
    "one_frame.mp4": Expectation("video", True, "a single frame with a face", width=SMALL[0], height=SMALL[1],
                                 frames=1),
    "tiny_16x16.mp4": Expectation("video", False, "16x16 frames: no face fits", width=16, height=16, frames=10),
    "all_black.mp4": Expectation("video", False, "black frames", width=SMALL[0], height=SMALL[1],
                                 frames=SMALL_FRAMES, black=True),
    "no_face.mp4": Expectation("video", False, "a scene without a face", width=SMALL[0], height=SMALL[1],
                               frames=SMALL_FRAMES),
    # large and oddly shaped frames
    "uhd_4k.mp4": Expectation("video", True, "3840x2160, 3 frames, face about 300 px wide", width=3840,
                              height=2160, frames=3),
    "portrait_1080x1920.mp4": Expectation("video", True, "true portrait frame size, 6 frames", width=1080,
                                          height=1920, frames=6),
    **{f"rotated_{degrees}.mp4": Expectation(
        "video", True, f"display matrix {degrees} degrees; the picture is upright only once it is applied",
        width=640 if degrees % 180 else 360, height=360 if degrees % 180 else 640, frames=SMALL_FRAMES,
        rotation=degrees) for degrees in (90, 180, 270)},
    # variable frame rate: gaps of 10 to 90 ms between timestamps; mkv streams carry no frame count, so the
    # reader must count packets
    "vfr.mp4": _small_clip("irregular pts (mp4)", variable_frame_rate=True),
    "vfr.mkv": _small_clip("irregular pts (mkv, no frame count)", variable_frame_rate=True),
    "ten_faces.mp4": Expectation("video", True, "ten faces on a 5 x 2 grid, 1280x720, 10 frames", width=1280,
                                 height=720, frames=10),
    # odd file names (copies of the good clip); a name that is not UTF-8 has its own test and run
    "clip with spaces.mp4": _small_clip("spaces in the name"),
    "vidéo ñ 日本.mp4": _small_clip("non-ASCII name"),
    "-x.mp4": _small_clip("leading dash (an option to a command line)"),
    'comma, "quote".mp4': _small_clip("comma and quotes (CSV quoting)"),
    "SHOUTING.MP4": _small_clip("upper-case suffix"),
    # content that does not match the suffix: FFmpeg may read a JPEG as a one-frame video
    "image_named.mp4": Expectation("video", None, "a JPEG with a face, named .mp4"),
    # not videos: ignored and reported
    "notes.txt": Expectation("ignored", why="text file"),
    "labels.csv": Expectation("ignored", why="csv file"),
    "face.jpg": Expectation("ignored", why="an image, even of a face, is not a video"),
    "README": Expectation("ignored", why="no suffix"),
    ".DS_Store": Expectation("ignored", why="hidden file"),
    # an empty directory named like a video (an empty frame folder), and a clip in an ordinary subfolder
    "dir.mp4": Expectation("video", False, "an empty directory named .mp4", entry="directory"),
    "nested_clip.mp4": _small_clip("good clip in nested/", path="nested/nested_clip.mp4"),
    # unreadable video entries (see the module docstring); no_permission's prediction is settled when written
    "no_permission.mp4": Expectation("video", None, "mode 000 (root reads it anyway)", mode=0),
    "broken.mp4": Expectation("video", False, "dangling symlink", entry="dangling_symlink"),
    "loop.mp4": Expectation("video", False, "symlink to itself", entry="symlink_loop"),
    "link_to_good.mp4": _small_clip("symlink to a good clip", entry="symlink"),
}

# Hazards with a kernel run of their own (see the module docstring), each beside a good clip named GOOD_NAME.
FIFO_CASE = Expectation("video", False, "named pipe without a writer: opening it blocks", entry="fifo")
NOT_UTF8_NAME = os.fsdecode(b"caf\xe9.mp4")  # Latin-1 bytes: not valid UTF-8, so Python holds a lone surrogate
GOOD_NAME = "ok.mp4"


# ---------------------------------------------------------------------------------------------- writers

def encode(path: Path, frames, width: int, height: int, fps: int = 30, options: dict | None = None,
           pts_ms: list[int] | None = None) -> Path:
    """H.264 yuv420p with PyAV; `options`: container options (movflags), `pts_ms`: irregular timestamps in ms."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def small_face_frames(count: int = SMALL_FRAMES) -> list[np.ndarray]:
    """The astronaut's face (about 65 px wide) drifting over a 320x240 scene."""
    width, height = SMALL
    return list(render_frames(SampleSpec("face", width, height, 1), count, face_scale=SMALL_FACE_SCALE))


def ten_faces_frames(count: int, width: int = 1280, height: int = 720) -> list[np.ndarray]:
    """Ten astronaut faces (about 80 px wide) on a 5 x 2 grid, each drifting inside its cell."""
    scene = background(width, height, seed=10)
    patch = face_patch(0.8)
    ph, pw = patch.shape[:2]
    cell_w, cell_h = width // 5, height // 2
    frames = []
    for index in range(count):
        frame = scene.copy()
        t = index / max(1, count - 1)
        for cell in range(10):
            row, col = divmod(cell, 5)
            left = col * cell_w + int(max(0, cell_w - pw) * (0.2 + 0.6 * t))
            top = row * cell_h + int(max(0, cell_h - ph) * (0.5 + 0.4 * np.sin(2 * np.pi * (t + cell / 10))))
            frame[top:top + ph, left:left + pw] = patch
        frames.append(frame)
    return frames


def write_audio_only(path: Path, seconds: float = 1.0, rate: int = 44100) -> Path:
    """An mp4 container with one mono AAC stream (a 440 Hz tone) and no video stream."""
    tone = (np.sin(np.arange(round(seconds * rate)) * 2 * np.pi * 440 / rate) * 0.3).astype(np.float32)[None]
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_bad_inputs(folder: Path) -> dict[str, Expectation]:
    """Write every case of `CASES` into `folder`; return their expectations by file (base) name.

    The intact clips the cases are cut or linked from go to `folder.parent / "sources"`, outside the videos.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources = folder.parent / SOURCES
    sources.mkdir(exist_ok=True)
    width, height = SMALL
    rng = np.random.default_rng(6)
    written: dict[str, Expectation] = {}

    def done(name: str, **resolved) -> None:
        assert name in CASES and name not in written, name
        written[name] = dataclasses.replace(CASES[name], path=CASES[name].path or name, **resolved)

    good = encode(sources / "good.mp4", small_face_frames(), width, height)
    faststart = encode(sources / "good_faststart.mp4", small_face_frames(), width, height,
                       options={"movflags": "+faststart"})
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(small_face_frames(1)[0], cv2.COLOR_RGB2BGR))[1].tobytes()

    (folder / "zero_bytes.mp4").write_bytes(b"")
    done("zero_bytes.mp4")
    (folder / "random_bytes.mp4").write_bytes(rng.integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes())
    done("random_bytes.mp4")

    intact = {"good.mp4": good, "good_faststart.mp4": faststart}
    for name in ("truncated_10.mp4", "truncated_50.mp4", "truncated_90.mp4", "truncated_90_index_at_end.mp4"):
        source = intact[CASES[name].source]
        data = source.read_bytes()
        (folder / name).write_bytes(data[:round(len(data) * CASES[name].truncated)])
        done(name, source=str(source))

    write_audio_only(folder / "audio_only.mp4")
    done("audio_only.mp4")
    shutil.copy(folder / "audio_only.mp4", folder / "audio_only.m4a")
    done("audio_only.m4a")

    encode(folder / "one_frame.mp4", small_face_frames(1), width, height)
    done("one_frame.mp4")
    encode(folder / "tiny_16x16.mp4", [np.array(background(16, 16, seed=16))] * 10, 16, 16)
    done("tiny_16x16.mp4")
    encode(folder / "all_black.mp4", [np.zeros((height, width, 3), np.uint8)] * SMALL_FRAMES, width, height)
    done("all_black.mp4")
    encode(folder / "no_face.mp4", render_frames(SampleSpec("no_face", width, height, 0), SMALL_FRAMES), width,
           height)
    done("no_face.mp4")

    encode(folder / "uhd_4k.mp4", render_frames(SampleSpec("uhd", 3840, 2160, 1), 3, face_scale=3.0), 3840, 2160)
    done("uhd_4k.mp4")
    encode(folder / "portrait_1080x1920.mp4", render_frames(SampleSpec("portrait", 1080, 1920, 1), 6,
                                                            face_scale=1.5), 1080, 1920)
    done("portrait_1080x1920.mp4")
    # The upright picture is a 360x640 portrait with a face; the coded frames are it turned the other way.
    upright = list(render_frames(SampleSpec("rotated", 360, 640, 1), SMALL_FRAMES, face_scale=1.0))
    undo = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
    for degrees, turn in undo.items():
        name = f"rotated_{degrees}.mp4"
        coded = [cv2.rotate(frame, turn) for frame in upright]
        set_display_rotation(encode(folder / name, coded, coded[0].shape[1], coded[0].shape[0]), degrees)
        done(name)

    pts = [0, *np.cumsum(rng.choice([10, 20, 33, 50, 90], size=SMALL_FRAMES - 1)).tolist()]
    for name in ("vfr.mp4", "vfr.mkv"):
        encode(folder / name, small_face_frames(), width, height, pts_ms=pts)
        done(name)

    encode(folder / "ten_faces.mp4", ten_faces_frames(10), 1280, 720)
    done("ten_faces.mp4")

    for name in ("clip with spaces.mp4", "vidéo ñ 日本.mp4", "-x.mp4", 'comma, "quote".mp4', "SHOUTING.MP4"):
        shutil.copy(good, folder / name)
        done(name)

    (folder / "image_named.mp4").write_bytes(jpeg)
    done("image_named.mp4")

    (folder / "notes.txt").write_text("not a video\n")
    done("notes.txt")
    (folder / "labels.csv").write_text("filename,label\nclip.mp4,0.5\n")
    done("labels.csv")
    (folder / "face.jpg").write_bytes(jpeg)
    done("face.jpg")
    (folder / "README").write_text("no suffix\n")
    done("README")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    done(".DS_Store")

    (folder / "dir.mp4").mkdir()
    done("dir.mp4")
    (folder / "nested").mkdir()
    shutil.copy(good, folder / "nested" / "nested_clip.mp4")
    done("nested_clip.mp4")

    shutil.copy(good, folder / "no_permission.mp4")
    os.chmod(folder / "no_permission.mp4", 0)
    done("no_permission.mp4", prediction=os.access(folder / "no_permission.mp4", os.R_OK))
    (folder / "broken.mp4").symlink_to(sources / "does_not_exist.mp4")
    done("broken.mp4")
    (folder / "loop.mp4").symlink_to("loop.mp4")
    done("loop.mp4")
    (folder / "link_to_good.mp4").symlink_to(good)
    done("link_to_good.mp4")

    assert set(written) == set(CASES), set(CASES) - set(written)
    return written


def _with_good_clip(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return encode(folder / GOOD_NAME, small_face_frames(), *SMALL)


def make_fifo_case(folder: Path) -> Path:
    """`pipe.mp4`, a named pipe nobody writes to, beside a good clip; returns the pipe's path."""
    _with_good_clip(folder)
    os.mkfifo(folder / "pipe.mp4")
    return folder / "pipe.mp4"


def make_not_utf8_case(folder: Path) -> Path:
    """A good clip under a file name that is not valid UTF-8 (`caf\\xe9.mp4`) beside another; returns its path."""
    odd = folder / NOT_UTF8_NAME
    shutil.copy(_with_good_clip(folder), odd)
    return odd
