"""Labelled video sets for the local leaderboard: DFDC, FaceForensics++ and DeepfakeTIMIT/VidTIMIT.

Discovery only reads folder listings, metadata.json and label CSVs; it never decodes a video.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath

from zootools.sources import shared_dir

logger = logging.getLogger(__name__)

FAKE, REAL = 1, 0
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
ROOT_ENV_VARS = {"dfdc": "DFDC_ROOT", "ff": "FF_ROOT", "timit": "TIMIT_ROOT"}
SHARED_SAMPLES = {"dfdc": "dfdc_sample", "ff": "ff_sample"}

DFDC_PART_PREFIX = "dfdc_train_part"
CSV_LABEL_COLUMNS = (("filename", "label"), ("name", "is_fake"))  # a submission-style CSV, dfdc_train_labels.csv
LABEL_WORDS = {"1": FAKE, "0": REAL, "FAKE": FAKE, "REAL": REAL}

FF_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter")
FF_DFD = "DeepFakeDetection"  # paid actors, not YouTube: its own originals and no official split, so opt-in only
# The official download script names the uncompressed folder "raw"; papers call it c0.
FF_COMPRESSION_FOLDERS = {"c0": ("c0", "raw"), "c23": ("c23",), "c40": ("c40",)}

TIMIT_QUALITIES = {"hq": ("higher_quality",), "lq": ("lower_quality",),
                   "both": ("higher_quality", "lower_quality")}
# VidTIMIT's head-rotation sequences have no speech and no DeepfakeTIMIT counterpart: they would add an easy,
# unmatched kind of REAL video, so the REAL side keeps only the spoken sentences the fakes were made from.
VIDTIMIT_HEAD_ROTATIONS = {"head", "head2", "head3"}


@dataclass(frozen=True)
class LabelledVideo:
    """One labelled input: a video file, or (VidTIMIT) a folder of JPEG frames the kernel reads as a video."""

    path: Path
    label: int  # 1 = FAKE, 0 = REAL
    group: str  # dfdc: part folder or "dfdc"; ff: "original" or the method; timit: quality folder or "vidtimit"


def default_root(name: str) -> Path | None:
    """Where set `name` lives when no root is given: $DFDC_ROOT/$FF_ROOT/$TIMIT_ROOT, else the shared sample."""
    env_var = ROOT_ENV_VARS.get(name)
    if env_var is None:
        raise ValueError(f"unknown set {name!r}: choose one of {sorted(ROOT_ENV_VARS)}")
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    sample = SHARED_SAMPLES.get(name)
    if sample and (shared_dir() / "data" / sample).is_dir():
        return shared_dir() / "data" / sample
    return None


def load_set(name: str, root: Path | None = None, **options) -> list[LabelledVideo]:
    """All labelled videos of set `name` (dfdc, ff, timit) under root, sorted by path; see each loader's options."""
    if name not in LOADERS:
        raise ValueError(f"unknown set {name!r}: choose one of {sorted(LOADERS)}")
    loader, option_names = LOADERS[name]
    # None means "not given", so a CLI can pass its unset flags straight through.
    options = {key: value for key, value in options.items() if value is not None}
    unknown = sorted(set(options) - option_names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for set {name!r}: it takes {sorted(option_names)}")
    root = Path(root) if root is not None else default_root(name)
    if root is None:
        raise ValueError(f"no root for set {name!r}: pass --root or set ${ROOT_ENV_VARS[name]}")
    if not root.exists():
        raise ValueError(f"root {root} for set {name!r} does not exist")
    videos = loader(root, **options)
    if not videos:
        raise ValueError(f"no labelled {name} videos found under {root} with options {options}")
    return sorted(videos, key=lambda video: video.path)


# --- DFDC ---------------------------------------------------------------------------------------------------


def load_dfdc(root: Path, videos: Path | None = None, labels: Path | None = None) -> list[LabelledVideo]:
    """DFDC from a folder of metadata.json folders (labels= CSV for folders without one) or from a labels CSV.

    A CSV root labels the videos found recursively under its own folder, or under videos= when given.
    """
    if root.is_file():
        if labels is not None:
            raise ValueError(f"labels= applies to a folder root; {root} is already a labels file")
        return dfdc_from_csv(root, Path(videos) if videos is not None else root.parent)
    if videos is not None:
        raise ValueError(f"videos= applies to a labels-CSV root; {root} is a folder")
    found, missing = [], []
    metadata_folders = set()
    for metadata_path in sorted(root.rglob("metadata.json")):
        folder = metadata_path.parent
        metadata_folders.add(folder)
        for filename, label in read_metadata(metadata_path).items():
            path = folder / filename
            if path.is_file():
                found.append(LabelledVideo(path, label, dfdc_group(path)))
            else:
                missing.append(str(path))
    if labels is not None:
        # The CSV may list far more videos than this folder holds (dfdc_train_labels.csv has all 119k),
        # so its absent entries are expected and not reported as missing.
        labels_by_key = read_labels_csv(Path(labels))
        for path in video_files(root):
            label = labels_by_key.get(video_key(path.name))
            if path.parent not in metadata_folders and label is not None:
                found.append(LabelledVideo(path, label, dfdc_group(path)))
    elif not metadata_folders:
        raise ValueError(f"no metadata.json under {root}: pass labels=<labels CSV> to label its videos")
    warn_missing("dfdc", missing)
    return found


def dfdc_from_csv(csv_path: Path, videos_root: Path) -> list[LabelledVideo]:
    """Label the videos under videos_root (recursively) from a labels CSV, matching names with or without .mp4."""
    if not videos_root.is_dir():
        raise ValueError(f"videos folder {videos_root} for labels {csv_path} does not exist")
    labels_by_key = read_labels_csv(csv_path)
    paths_by_key: dict[str, list[Path]] = {}
    for path in video_files(videos_root):
        paths_by_key.setdefault(video_key(path.name), []).append(path)
    found, missing = [], []
    for key, label in labels_by_key.items():
        paths = paths_by_key.get(key, [])
        if len(paths) > 1:
            raise ValueError(f"{csv_path}: {key!r} matches several videos under {videos_root}: "
                             f"{sorted(map(str, paths))}")
        if paths:
            found.append(LabelledVideo(paths[0], label, dfdc_group(paths[0])))
        else:
            missing.append(key)
    warn_missing("dfdc", missing)
    return found


def dfdc_group(path: Path) -> str:
    """The dfdc_train_part_* folder holding a video, or "dfdc" for any other folder (e.g. test_videos)."""
    return path.parent.name if path.parent.name.startswith(DFDC_PART_PREFIX) else "dfdc"


def read_metadata(path: Path) -> dict[str, int]:
    """A DFDC metadata.json as {file name: label}."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"malformed metadata file {path}: {error}") from error
    if not isinstance(entries, dict):
        raise ValueError(f"malformed metadata file {path}: expected an object of file name -> entry")
    labels = {}
    for filename, entry in entries.items():
        word = entry.get("label") if isinstance(entry, dict) else None
        if word not in ("FAKE", "REAL"):
            raise ValueError(f"malformed metadata file {path}: {filename!r} has label {word!r}, not FAKE or REAL")
        labels[filename] = LABEL_WORDS[word]
    return labels


def read_labels_csv(path: Path) -> dict[str, int]:
    """A labels CSV (`filename,label` with 0/1 or REAL/FAKE, or `name,is_fake`) as {video key: label}."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # utf-8-sig: spreadsheet exports add a BOM
            reader = csv.DictReader(file)
            header = [column.strip().lower() for column in reader.fieldnames or []]
            reader.fieldnames = header
            columns = next((pair for pair in CSV_LABEL_COLUMNS if set(pair) <= set(header)), None)
            if columns is None:
                raise ValueError(f"malformed labels file {path}: header {header} lacks "
                                 f"{' or '.join(','.join(pair) for pair in CSV_LABEL_COLUMNS)}")
            name_column, label_column = columns
            labels: dict[str, int] = {}
            for line_number, row in enumerate(reader, start=2):
                key = video_key(row[name_column] or "")
                label = LABEL_WORDS.get((row[label_column] or "").strip().upper())
                if not key or label is None:
                    raise ValueError(f"malformed labels file {path}, line {line_number}: "
                                     f"{row[name_column]!r}, {row[label_column]!r} (label must be 0/1 or REAL/FAKE)")
                if labels.setdefault(key, label) != label:
                    raise ValueError(f"malformed labels file {path}, line {line_number}: {key!r} labelled both ways")
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"unreadable labels file {path}: {error}") from error
    return labels


def video_key(name: str) -> str:
    """The name labels and files are matched on: the file name without folder or video extension."""
    path = PurePath(name.strip())
    return path.stem if path.suffix.lower() in VIDEO_SUFFIXES else path.name


def video_files(folder: Path, recursive: bool = True) -> list[Path]:
    """The video files under folder (recursively by default)."""
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(path for path in candidates if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file())


def warn_missing(set_name: str, missing: list[str]) -> None:
    """Log one warning counting the labelled videos that are not on disk."""
    if missing:
        logger.warning("%s: %d labelled videos are missing on disk and were skipped (first: %s)",
                       set_name, len(missing), ", ".join(sorted(missing)[:5]))


# --- FaceForensics++ ------------------------------------------------------------------------------------------


def load_ff(root: Path, compression: str = "c23", methods: Iterable[str] | str | None = None,
            split: Path | None = None) -> list[LabelledVideo]:
    """FaceForensics++ originals (REAL) and manipulations (FAKE) at one compression.

    methods: names or a comma-separated string; default all of FF_METHODS present (DeepFakeDetection only when
    asked, with its actors originals). split: an official train/val/test JSON of [target, source] id pairs.
    """
    if compression not in FF_COMPRESSION_FOLDERS:
        raise ValueError(f"unknown FaceForensics++ compression {compression!r}: "
                         f"choose one of {list(FF_COMPRESSION_FOLDERS)}")
    if methods is None:
        chosen = [method for method in FF_METHODS
                  if ff_videos_folder(root / "manipulated_sequences" / method, compression) is not None]
        if not chosen:
            raise ValueError(f"no manipulated_sequences/<method>/{compression}/videos under {root}")
    else:
        chosen = methods.split(",") if isinstance(methods, str) else list(methods)
        unknown = sorted(set(chosen) - {*FF_METHODS, FF_DFD})
        if unknown:
            raise ValueError(f"unknown FaceForensics++ method(s) {unknown}: choose from {[*FF_METHODS, FF_DFD]}")
    pairs = read_ff_split(Path(split)) if split is not None else None
    if pairs is not None and FF_DFD in chosen:
        raise ValueError(f"the official splits cover only the YouTube sequences, not {FF_DFD}")
    split_ids = {video_id for pair in pairs for video_id in pair} if pairs is not None else None

    sources = ["youtube", "actors"] if FF_DFD in chosen else ["youtube"]
    videos = []
    for source in sources:
        originals = required_ff_folder(root / "original_sequences" / source, compression)
        for path in video_files(originals, recursive=False):
            if split_ids is None or path.stem in split_ids:
                videos.append(LabelledVideo(path, REAL, "original"))
    for method in chosen:
        manipulated = required_ff_folder(root / "manipulated_sequences" / method, compression)
        for path in video_files(manipulated, recursive=False):
            if pairs is None or tuple(path.stem.split("_")) in pairs:
                videos.append(LabelledVideo(path, FAKE, method))
    return videos


def ff_videos_folder(sequence_root: Path, compression: str) -> Path | None:
    """sequence_root/<compression>/videos, accepting "raw" for c0; None when absent."""
    for folder_name in FF_COMPRESSION_FOLDERS[compression]:
        folder = sequence_root / folder_name / "videos"
        if folder.is_dir():
            return folder
    return None


def required_ff_folder(sequence_root: Path, compression: str) -> Path:
    """Like ff_videos_folder, but a missing folder is an error."""
    folder = ff_videos_folder(sequence_root, compression)
    if folder is None:
        raise ValueError(f"FaceForensics++ folder {sequence_root / compression / 'videos'} does not exist")
    return folder


def read_ff_split(path: Path) -> set[tuple[str, str]]:
    """An official split JSON ([[target, source], ...]) as a set of id pairs in both orders."""
    try:
        pairs = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"malformed split file {path}: {error}") from error
    if not isinstance(pairs, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, str) for i in pair) for pair in pairs):
        raise ValueError(f"malformed split file {path}: expected a list of [target, source] id strings")
    # A manipulated video is named either way round depending on the method, so accept both orders.
    return {(first, second) for a, b in pairs for first, second in ((a, b), (b, a))}


# --- DeepfakeTIMIT / VidTIMIT ---------------------------------------------------------------------------------


def load_timit(root: Path, quality: str = "both") -> list[LabelledVideo]:
    """DeepfakeTIMIT face swaps (FAKE) and VidTIMIT frame folders of the same speakers (REAL).

    VidTIMIT has 43 speakers; only those DeepfakeTIMIT swapped (32) are used, and their head-rotation
    folders (head, head2, head3) are left out so REAL and FAKE are the same kind of spoken-sentence clip.
    """
    if quality not in TIMIT_QUALITIES:
        raise ValueError(f"unknown DeepfakeTIMIT quality {quality!r}: choose one of {list(TIMIT_QUALITIES)}")
    vidtimit = root / "VidTIMIT"
    if not vidtimit.is_dir():
        raise ValueError(f"VidTIMIT folder {vidtimit} does not exist")
    videos, speakers = [], set()
    for quality_folder in TIMIT_QUALITIES[quality]:
        fakes = root / "DeepfakeTIMIT" / quality_folder
        if not fakes.is_dir():
            raise ValueError(f"DeepfakeTIMIT folder {fakes} does not exist "
                             "(choose quality='hq' or 'lq' if only one is there)")
        for path in sorted(fakes.glob("*/*.avi")):
            videos.append(LabelledVideo(path, FAKE, quality_folder))
            speakers.add(path.parent.name.lower())
    for sentence in sorted(vidtimit.glob("*/video/*")):
        speaker = sentence.parent.parent.name.lower()
        if (speaker in speakers and sentence.name not in VIDTIMIT_HEAD_ROTATIONS and sentence.is_dir()
                and any(frame.is_file() for frame in sentence.iterdir())):
            videos.append(LabelledVideo(sentence, REAL, "vidtimit"))
    return videos


LOADERS: dict[str, tuple[Callable[..., list[LabelledVideo]], set[str]]] = {
    "dfdc": (load_dfdc, {"videos", "labels"}),
    "ff": (load_ff, {"compression", "methods", "split"}),
    "timit": (load_timit, {"quality"}),
}
