"""Labelled-set discovery (bench.datasets) on tiny generated layouts and on the shared DFDC / FF++ samples."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.datasets import LabelledVideo, default_root, load_set


def touch(path: Path) -> Path:
    """A placeholder video file: discovery never decodes, so a few bytes will do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    return path


def write_metadata(folder: Path, labels: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps(
        {name: {"label": label, "split": "train", "original": None} for name, label in labels.items()}))


def summary(videos: list[LabelledVideo], root: Path) -> list[tuple[str, int, str]]:
    return [(video.path.relative_to(root).as_posix(), video.label, video.group) for video in videos]


# --- DFDC ---


def test_dfdc_part_folders_skip_and_count_missing_videos(tmp_path, caplog):
    write_metadata(tmp_path / "dfdc_train_part_0", {"aaa.mp4": "FAKE", "bbb.mp4": "REAL", "gone.mp4": "FAKE"})
    write_metadata(tmp_path / "nested" / "dfdc_train_part_7", {"ccc.mp4": "REAL", "lost.mp4": "REAL"})
    for name in ("dfdc_train_part_0/aaa.mp4", "dfdc_train_part_0/bbb.mp4", "dfdc_train_part_0/unlabelled.mp4",
                 "nested/dfdc_train_part_7/ccc.mp4"):
        touch(tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="bench.datasets"):
        videos = load_set("dfdc", tmp_path)
    assert summary(videos, tmp_path) == [
        ("dfdc_train_part_0/aaa.mp4", 1, "dfdc_train_part_0"),
        ("dfdc_train_part_0/bbb.mp4", 0, "dfdc_train_part_0"),
        ("nested/dfdc_train_part_7/ccc.mp4", 0, "dfdc_train_part_7"),
    ]
    assert "2 labelled videos are missing" in caplog.text and "gone.mp4" in caplog.text


def test_dfdc_single_folder_with_metadata(tmp_path):
    write_metadata(tmp_path / "test_videos", {"xyz.mp4": "FAKE", "uvw.mp4": "REAL"})
    touch(tmp_path / "test_videos" / "xyz.mp4")
    touch(tmp_path / "test_videos" / "uvw.mp4")
    assert summary(load_set("dfdc", tmp_path / "test_videos"), tmp_path) == [
        ("test_videos/uvw.mp4", 0, "dfdc"), ("test_videos/xyz.mp4", 1, "dfdc")]


@pytest.mark.parametrize("rows", [
    "filename,label\naaa.mp4,1\nbbb.mp4,0\nmissing.mp4,1\n",
    "filename,label\naaa.mp4,FAKE\nbbb.mp4,real\nmissing.mp4,FAKE\n",
    "name,is_fake,n_frame,set_name\naaa,1,300,val\nbbb,0,300,train\nmissing,1,300,train\n",
])
def test_dfdc_labels_csv_forms(tmp_path, caplog, rows):
    (tmp_path / "labels.csv").write_text(rows)
    touch(tmp_path / "dfdc_train_part_3" / "aaa.mp4")
    touch(tmp_path / "videos" / "bbb.mp4")
    touch(tmp_path / "videos" / "unlabelled.mp4")
    with caplog.at_level(logging.WARNING, logger="bench.datasets"):
        videos = load_set("dfdc", tmp_path / "labels.csv")
    assert summary(videos, tmp_path) == [("dfdc_train_part_3/aaa.mp4", 1, "dfdc_train_part_3"),
                                         ("videos/bbb.mp4", 0, "dfdc")]
    assert "1 labelled videos are missing" in caplog.text


def test_dfdc_labels_csv_with_separate_videos_folder(tmp_path):
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "labels.csv").write_text("filename,label\naaa.mp4,0\n")
    touch(tmp_path / "elsewhere" / "aaa.mp4")
    videos = load_set("dfdc", tmp_path / "labels" / "labels.csv", videos=tmp_path / "elsewhere")
    assert summary(videos, tmp_path) == [("elsewhere/aaa.mp4", 0, "dfdc")]


def test_dfdc_labels_option_labels_folders_without_metadata(tmp_path):
    write_metadata(tmp_path / "dfdc_train_part_0", {"aaa.mp4": "FAKE"})
    touch(tmp_path / "dfdc_train_part_0" / "aaa.mp4")
    touch(tmp_path / "dfdc_train_part_0" / "bbb.mp4")  # in the CSV, but its folder's metadata.json rules
    touch(tmp_path / "dfdc_train_part_1" / "ccc.mp4")
    labels = tmp_path / "labels.csv"
    labels.write_text("name,is_fake,n_frame,set_name\naaa,0,300,val\nbbb,1,300,val\nccc,0,300,train\nzzz,1,300,val\n")
    assert summary(load_set("dfdc", tmp_path, labels=labels), tmp_path) == [
        ("dfdc_train_part_0/aaa.mp4", 1, "dfdc_train_part_0"),
        ("dfdc_train_part_1/ccc.mp4", 0, "dfdc_train_part_1"),
    ]


@pytest.mark.parametrize("content, message", [
    ("file,prob\naaa.mp4,1\n", "lacks filename,label"),
    ("filename,label\naaa.mp4,0.7\n", "line 2"),
    ("filename,label\naaa.mp4,1\naaa,0\n", "labelled both ways"),
])
def test_dfdc_malformed_labels_csv(tmp_path, content, message):
    (tmp_path / "labels.csv").write_text(content)
    touch(tmp_path / "aaa.mp4")
    with pytest.raises(ValueError, match=message):
        load_set("dfdc", tmp_path / "labels.csv")


@pytest.mark.parametrize("content", ["{not json", '{"aaa.mp4": {"label": "MAYBE"}}', "[1, 2]"])
def test_dfdc_malformed_metadata(tmp_path, content):
    (tmp_path / "metadata.json").write_text(content)
    with pytest.raises(ValueError, match="malformed metadata"):
        load_set("dfdc", tmp_path)


def test_dfdc_folder_without_metadata_or_labels(tmp_path):
    touch(tmp_path / "aaa.mp4")
    with pytest.raises(ValueError, match="no metadata.json"):
        load_set("dfdc", tmp_path)


# --- FaceForensics++ ---


@pytest.fixture
def ff_root(tmp_path) -> Path:
    for compression in ("c23", "raw"):
        for video_id in ("000", "001", "002", "003"):
            touch(tmp_path / f"original_sequences/youtube/{compression}/videos/{video_id}.mp4")
        for method, name in (("Deepfakes", "000_003"), ("Deepfakes", "001_002"), ("FaceSwap", "003_000"),
                             ("NeuralTextures", "002_001")):
            touch(tmp_path / f"manipulated_sequences/{method}/{compression}/videos/{name}.mp4")
    touch(tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walk__ABC.mp4")
    touch(tmp_path / "original_sequences/actors/c23/videos/01__walk.mp4")
    return tmp_path


def test_ff_defaults_leave_out_deepfakedetection(ff_root):
    videos = load_set("ff", ff_root)
    assert [(v.path.name, v.label, v.group) for v in videos] == [
        ("000_003.mp4", 1, "Deepfakes"), ("001_002.mp4", 1, "Deepfakes"), ("003_000.mp4", 1, "FaceSwap"),
        ("002_001.mp4", 1, "NeuralTextures"),
        ("000.mp4", 0, "original"), ("001.mp4", 0, "original"), ("002.mp4", 0, "original"), ("003.mp4", 0, "original"),
    ]
    assert all(v.path.parts[-3] == "c23" for v in videos)


def test_ff_c0_reads_the_raw_folder_and_methods_filter(ff_root):
    videos = load_set("ff", ff_root, compression="c0", methods="FaceSwap,NeuralTextures")
    assert {v.path.parts[-3] for v in videos} == {"raw"}
    assert sorted({v.group for v in videos}) == ["FaceSwap", "NeuralTextures", "original"]
    assert len(videos) == 6


def test_ff_deepfakedetection_when_asked_brings_actor_originals(ff_root):
    videos = load_set("ff", ff_root, methods=["DeepFakeDetection"])
    assert [(v.path.name, v.label, v.group) for v in videos] == [
        ("01_02__walk__ABC.mp4", 1, "DeepFakeDetection"), ("01__walk.mp4", 0, "original"),
        ("000.mp4", 0, "original"), ("001.mp4", 0, "original"), ("002.mp4", 0, "original"), ("003.mp4", 0, "original"),
    ]


def test_ff_split_keeps_pairs_in_either_order(ff_root):
    split = ff_root / "test.json"
    split.write_text(json.dumps([["003", "000"]]))
    videos = load_set("ff", ff_root, split=split)
    assert sorted(v.path.name for v in videos) == ["000.mp4", "000_003.mp4", "003.mp4", "003_000.mp4"]


@pytest.mark.parametrize("options, message", [
    ({"compression": "c99"}, "compression"),
    ({"methods": ["DeepFake"]}, "unknown FaceForensics"),
    ({"methods": ["FaceShifter"]}, "does not exist"),
    ({"compression": "c40"}, "no manipulated_sequences"),
    ({"split": "SPLIT", "methods": ["DeepFakeDetection"]}, "official splits"),
    ({"split": "BAD_SPLIT"}, "malformed split"),
])
def test_ff_errors(ff_root, options, message):
    (ff_root / "SPLIT").write_text('[["000", "003"]]')
    (ff_root / "BAD_SPLIT").write_text('{"000": "003"}')
    options = {key: ff_root / value if key == "split" else value for key, value in options.items()}
    with pytest.raises(ValueError, match=message):
        load_set("ff", ff_root, **options)


# --- DeepfakeTIMIT / VidTIMIT ---


@pytest.fixture
def timit_root(tmp_path) -> Path:
    for quality in ("higher_quality", "lower_quality"):
        touch(tmp_path / f"DeepfakeTIMIT/{quality}/fadg0/sa1-video-fram1.avi")
        touch(tmp_path / f"DeepfakeTIMIT/{quality}/fram1/si1-video-fadg0.avi")
    frame = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes()
    for speaker, sentence in (("fadg0", "sa1"), ("fadg0", "head"), ("fadg0", "head2"), ("fram1", "si1"),
                              ("fram1", "head3"), ("mabc0", "sa1")):  # mabc0: never face-swapped
        folder = tmp_path / f"VidTIMIT/{speaker}/video/{sentence}"
        folder.mkdir(parents=True)
        for index in range(1, 4):
            (folder / f"{index:03d}").write_bytes(frame)
    (tmp_path / "VidTIMIT/fram1/video/empty").mkdir()
    return tmp_path


REAL_TIMIT = [("VidTIMIT/fadg0/video/sa1", 0, "vidtimit"), ("VidTIMIT/fram1/video/si1", 0, "vidtimit")]


@pytest.mark.parametrize("quality, fake_groups", [
    ("hq", ["higher_quality"]), ("lq", ["lower_quality"]), ("both", ["higher_quality", "lower_quality"])])
def test_timit_quality_and_head_sequences_excluded(timit_root, quality, fake_groups):
    expected = sorted(REAL_TIMIT + [
        (f"DeepfakeTIMIT/{group}/{name}", 1, group) for group in fake_groups
        for name in ("fadg0/sa1-video-fram1.avi", "fram1/si1-video-fadg0.avi")])
    assert summary(load_set("timit", timit_root, quality=quality), timit_root) == expected


def test_timit_errors(timit_root, monkeypatch):
    monkeypatch.delenv("TIMIT_ROOT", raising=False)
    with pytest.raises(ValueError, match="quality"):
        load_set("timit", timit_root, quality="medium")
    with pytest.raises(ValueError, match="no root"):
        load_set("timit")  # no shared default for TIMIT
    shutil.rmtree(timit_root / "DeepfakeTIMIT/lower_quality")
    with pytest.raises(ValueError, match="lower_quality does not exist"):
        load_set("timit", timit_root)


# --- roots and general errors ---


def test_default_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TIMIT_ROOT", str(tmp_path))
    monkeypatch.setenv("DFDC_ROOT", str(tmp_path / "dfdc"))
    assert default_root("timit") == tmp_path
    assert default_root("dfdc") == tmp_path / "dfdc"
    write_metadata(tmp_path / "dfdc", {"aaa.mp4": "REAL"})
    touch(tmp_path / "dfdc" / "aaa.mp4")
    assert summary(load_set("dfdc"), tmp_path) == [("dfdc/aaa.mp4", 0, "dfdc")]


def test_default_root_falls_back_to_shared_samples(monkeypatch, shared):
    for variable in ("DFDC_ROOT", "FF_ROOT", "TIMIT_ROOT"):
        monkeypatch.delenv(variable, raising=False)
    assert default_root("dfdc") == shared / "data" / "dfdc_sample"
    assert default_root("ff") == shared / "data" / "ff_sample"
    assert default_root("timit") is None


def test_general_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown set 'celebdf'"):
        load_set("celebdf", tmp_path)
    with pytest.raises(ValueError, match="unknown set"):
        default_root("celebdf")
    with pytest.raises(ValueError, match="does not exist"):
        load_set("dfdc", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown option"):
        load_set("ff", tmp_path, method="Deepfakes")
    write_metadata(tmp_path, {"gone.mp4": "FAKE"})
    with pytest.raises(ValueError, match="no labelled dfdc videos"):
        load_set("dfdc", tmp_path)


# --- the real shared samples ---


def test_shared_dfdc_sample(monkeypatch, shared):
    monkeypatch.delenv("DFDC_ROOT", raising=False)
    videos = load_set("dfdc")
    assert len(videos) == 4 and sum(v.label for v in videos) == 3
    assert [v.path.stem for v in videos if v.label == 0] == ["lynaeydofd"]


def test_shared_ff_sample(monkeypatch, shared):
    monkeypatch.delenv("FF_ROOT", raising=False)
    videos = load_set("ff")
    assert len(videos) == 7
    assert sorted(v.group for v in videos if v.label == 1) == ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
    assert [v.group for v in videos if v.label == 0] == ["original"] * 3
