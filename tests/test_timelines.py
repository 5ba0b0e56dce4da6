"""The teams' own ways of picking frames and faces, and of scoring them: per-model timelines (NTech's 15 fps
sampling, \\WM/'s every 10th frame), alternate flips, shares and limits per track, five-point alignment onto a
template, per-frame scores of a sequence model, and pools of models scored as one."""
from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch

import blending
from inference.classify import Classifier, score_tracks
from inference.crops import TrackCrops, align, crop_key, picked, similarity, stack_key, track_crops
from inference.device import Accelerator
from inference.tracks import Track
from inference.video import DecodedVideo, Timeline, own_windows, plan_frames, read_video
from weights import InputSpec, ModelSpec, WeightsError, load_ensemble
from weights.manifest import BlendSpec, PoolSpec
from weights.registry import ALIGNMENTS

NTECH_FRAMES = InputSpec((224, 192), fps=15, every=2)             # the 2D models: every 2nd frame sampled at 15 fps
NTECH_SEQUENCES = InputSpec((224, 192), frames=7, fps=15, every=14)  # 7 sampled frames, a sequence every 14
WM_FRAMES = InputSpec(320, every=10, start=9, limit=25)             # every 10th frame from frame 9, 25 faces at most


# ---------------------------------------------------------------------------------------------- timelines

def test_ntech_samples_at_15_fps_by_their_rounding():
    """predict.py: step round(int(fps) / 15): 29.97 fps -> every 2nd frame, 25 -> 2, 60 -> 4; 2D faces every 2nd
    sampled frame, sequences of 7 consecutive sampled frames every 14."""
    frames = Timeline(*NTECH_FRAMES.timeline)
    assert own_windows(300, frames, 29.97)[:3] == [[0], [4], [8]] and len(own_windows(300, frames, 29.97)) == 75
    assert own_windows(300, frames, 60.0)[:2] == [[0], [8]]
    assert own_windows(100, frames, 25.0)[:2] == [[0], [4]]
    sequences = own_windows(300, Timeline(*NTECH_SEQUENCES.timeline), 29.97)
    assert sequences[0] == [0, 2, 4, 6, 8, 10, 12] and sequences[1][0] == 28
    assert len(sequences) == 11 and sequences[-1][-1] <= 299  # each whole inside the video
    assert own_windows(300, frames, 0.0)[:2] == [[0], [2]]  # frame rate unknown: every frame counts


def test_wm_takes_every_10th_frame_from_frame_9():
    assert [run[0] for run in own_windows(300, Timeline(*WM_FRAMES.timeline), 30.0)] == list(range(9, 300, 10))


def test_a_frame_models_own_frames_join_the_frames_faces_are_found_on():
    keys, windows, wanted = plan_frames(300, 4, [WM_FRAMES.timeline], fps=30.0)
    assert keys == [0, 100, 199, 299]
    own = [run[0] for run in windows[Timeline(*WM_FRAMES.timeline)]]
    assert set(own) | set(keys) == wanted


def test_the_reader_keeps_the_base_key_frames_apart_from_the_own_ones(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (64, 48))
    for index in range(60):
        writer.write(np.full((48, 64, 3), index * 4, np.uint8))
    writer.release()
    video = read_video(path, 3, [WM_FRAMES.timeline])
    assert video.fps == pytest.approx(30.0) and len(video.base) == 3
    assert set(video.keys) == set(video.base) | {9, 19, 29, 39, 49, 59}


def test_own_timelines_are_validated():
    assert InputSpec(64, fps=15).problems() == ["input fps and start need every >= 1"]
    assert "share" in InputSpec(64, share=(4, 3, 2)).problems()[0]
    assert "flip" in InputSpec(64, flip="sometimes").problems()[0]
    assert "align" in InputSpec(64, align="nowhere").problems()[0]


# ---------------------------------------------------------------------------------------------- per track

def test_ntech_flips_every_other_face_and_its_two_models_take_turns_two_by_two():
    """predict.py: face i flipped when i % 2 == 0; model 1 takes faces with i % 4 < 2, model 2 the others."""
    faces = list(range(10))
    first = picked(faces, InputSpec(64, flip="alternate", share=(4, 0, 2)))
    second = picked(faces, InputSpec(64, flip="alternate", share=(4, 2, 2)))
    assert first == [(0, True), (1, False), (4, True), (5, False), (8, True), (9, False)]
    assert second == [(2, True), (3, False), (6, True), (7, False)]
    assert picked(faces, InputSpec(64, limit=3)) == [(0, False), (1, False), (2, False)]


def frames_video(count: int, keys: list[int], timelines: dict) -> DecodedVideo:
    """Frames whose pixels say their index and column (the left half dark, the right bright)."""
    frames = {}
    for index in range(count):
        frame = np.zeros((120, 160, 3), np.uint8)
        frame[..., 0] = index
        frame[:, 80:, 1] = 255
        frames[index] = frame
    return DecodedVideo(frames, keys, timelines, "test")


def test_a_frame_model_with_its_own_timeline_reads_only_its_frames_flipped_in_turn():
    own = InputSpec(32, margin=0.0, resize="stretch", interpolation="nearest", every=10, start=9, flip="alternate")
    plain = dataclasses.replace(own, every=0, start=0, flip="none")
    timeline = Timeline(*own.timeline)
    video = frames_video(40, [0, 9, 19, 20, 29, 39], {timeline: [[9], [19], [29], [39]]})
    video.base = [0, 20, 39]
    box = np.array([40, 20, 120, 100, 0.9], np.float32)
    track = Track({position: box for position in range(6)})
    models = [ModelSpec("own", "meso4", "a", "0", own), ModelSpec("plain", "meso4", "b", "0", plain)]
    crops = track_crops(video, track, models, detector_margin=0.0)
    mine, theirs = crops.faces[crop_key(own)], crops.faces[crop_key(plain)]
    assert mine[:, 0, 0, 0].tolist() == [9, 19, 29, 39] and theirs[:, 0, 0, 0].tolist() == [0, 20, 39]
    bright_right = [bool(face[0, -1, 1] == 255) for face in mine]  # a flipped face has its bright half on the left
    assert bright_right == [False, True, False, True]


def test_own_sequences_stay_inside_the_track_and_alternate_their_flips():
    spec = ModelSpec("seq", "tsm", "s", "0", dataclasses.replace(NTECH_SEQUENCES, size=32, margin=0.0,
                     resize="stretch", interpolation="nearest", fps=0.0, every=4, frames=3, flip="alternate"),
                     kind="sequence")
    timeline = Timeline(*spec.input.timeline)
    windows = own_windows(40, timeline, 30.0)
    assert windows[:2] == [[0, 1, 2], [4, 5, 6]]
    video = frames_video(40, [3, 20, 33], {timeline: windows})
    box = np.array([40, 20, 120, 100, 0.9], np.float32)
    stacks = track_crops(video, Track({0: box, 1: box, 2: box}), [spec], 0.0).clips[stack_key(spec)]
    assert stacks[:, :, 0, 0, 0].tolist() == [[4, 5, 6], [8, 9, 10], [12, 13, 14], [16, 17, 18], [20, 21, 22],
                                              [24, 25, 26], [28, 29, 30]]  # from frame 3 to frame 33
    assert [bool(stack[0, 0, -1, 1] == 255) for stack in stacks] == [False, True] * 3 + [False]


# ---------------------------------------------------------------------------------------------- alignment

def test_the_similarity_is_scikit_images():
    from skimage.transform import SimilarityTransform

    generator = np.random.default_rng(0)
    template = np.asarray(ALIGNMENTS["wm"][1])
    for _ in range(50):
        angle, scale = generator.uniform(-0.6, 0.6), generator.uniform(0.3, 3.0)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = template @ rotation.T + generator.uniform(0, 900, 2) + generator.normal(0, 4, (5, 2))
        expected = SimilarityTransform.from_estimate(points, template)  # \WM/'s `estimate`, renamed in 0.26
        assert np.abs(similarity(points, template) - expected.params[:2]).max() < 1e-9


def test_alignment_warps_the_face_as_wm_did():
    """\\WM/: landmarks cut to int, skimage's SimilarityTransform onto the 320 template, cv2.warpAffine (bilinear,
    border 0) to 320 x 320."""
    from skimage.transform import SimilarityTransform

    generator = np.random.default_rng(1)
    frame = generator.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    landmarks = np.array([[600.7, 300.2], [680.4, 305.9], [641.0, 350.5], [612.3, 395.0], [672.8, 398.6]])
    detection = np.concatenate([[560, 240, 720, 440, 0.99], landmarks.ravel()]).astype(np.float32)
    transform = SimilarityTransform.from_estimate(landmarks.astype(int), np.asarray(ALIGNMENTS["wm"][1]))
    theirs = cv2.warpAffine(frame, transform.params[0:2, :], (320, 320), borderValue=0.0)
    ours = align(frame, detection, "wm")
    assert ours.shape == (320, 320, 3)
    assert np.abs(ours.astype(int) - theirs).max() <= 1 and (ours == theirs).mean() > 0.999
    assert align(frame, detection[:5], "wm") is None  # no landmarks (BlazeFace's boxes): no aligned face


# ---------------------------------------------------------------------------------------------- scores

class PerFrame(torch.nn.Module):
    """A sequence model scoring each frame: its logit is the frame's mean pixel (N x T x 1)."""

    def forward(self, clips):
        return clips.mean(dim=(2, 3, 4)).unsqueeze(-1)


def test_a_sequence_model_that_scores_each_frame_gives_one_score_per_frame():
    spec = ModelSpec("seq", "tsm", "s", "0", InputSpec(8, frames=3, std=(1 / 255,) * 3), kind="sequence")
    classifier = Classifier(spec, PerFrame())
    clips = np.zeros((2, 3, 8, 8, 3), np.uint8)
    clips[0, 1] = 1
    clips[1, 2] = 2
    key = stack_key(spec)
    tracks = [TrackCrops(clips={key: clips[:1]}), TrackCrops(), TrackCrops(clips={key: clips[1:]})]
    scores = score_tracks(tracks, classifier, Accelerator("cpu"), batch_size=4)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert np.allclose(scores[0], sigmoid(np.array([0, 1, 0])), atol=1e-6)
    assert scores[1].size == 0
    assert np.allclose(scores[2], sigmoid(np.array([0, 0, 2])), atol=1e-6)


def test_a_pool_scores_its_models_votes_as_one_and_blends_once():
    """NTech: sharpen over all three models' scores at once. 10 x 0.6 + 1 x 0.2 -> 0.5668 (their example), split
    between two models; each model alone would give other values."""
    frame_scores = {"a": [[0.6] * 6], "b": [[0.6] * 4, [0.2]], "c": [[0.9]]}
    pooled = blending.member_score(frame_scores, ("a", "b"), "sharpen", "pool")
    assert pooled == pytest.approx(0.5668, abs=1e-4)
    assert blending.member_score(frame_scores, ("b",), "sharpen", "pool") != pytest.approx(pooled, abs=1e-3)
    assert blending.member_score(frame_scores, ("c",), "mean", "max") == blending.video_score([[0.9]], "mean", "max")


def pooled_manifest(tmp_path, pools) -> dict:
    model = {"arch": "meso4", "checkpoint": "x.safetensors", "sha256": "0", "input": {"size": 256}}
    return {"format": 2, "detector": {"arch": "blazeface", "checkpoint": "d", "sha256": "0", "min_score": 0.5},
            "models": [{**model, "name": name} for name in ("a", "b", "c")], "blend": {"pools": pools}}


def test_pools_are_checked_and_written_back(tmp_path):
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps(pooled_manifest(tmp_path, [{"name": "ntech", "models": ["a", "b"],
                                                           "aggregation": "sharpen", "weight": 2.0}])))
    ensemble = load_ensemble(path)
    assert [(m.name, m.models, m.weight) for m in ensemble.members()] == [("c", ("c",), 1.0),
                                                                          ("ntech", ("a", "b"), 2.0)]
    ensemble.with_weights({"c": 0.25, "ntech": 0.75}).save(path)
    assert [m.weight for m in load_ensemble(path).members()] == [0.25, 0.75]
    for pools, message in [([{"name": "p", "models": ["a", "z"]}], "unknown models"),
                           ([{"name": "p", "models": ["a", "b"]}, {"name": "q", "models": ["b", "c"]}],
                            "one blend pool"),
                           ([{"name": "a", "models": ["b", "c"]}], "differ from model names"),
                           ([{"name": "p", "models": ["a"]}], "at least two"),
                           ([{"name": "p", "models": ["a", "b"], "aggregation": "vote"}], "aggregation")]:
        path.write_text(json.dumps(pooled_manifest(tmp_path, pools)))
        with pytest.raises(WeightsError, match=message):
            load_ensemble(path)
    assert BlendSpec(pools=({"name": "p", "models": ["a", "b"]},)).pools == (PoolSpec("p", ("a", "b")),)


# ---------------------------------------------------------------------------------------------- \WM/'s preset

def test_wm_models_align_on_a_landmark_detector_and_stretch_the_box_on_others(tmp_path, capsys):
    from bench.standins import save_wm
    from zootools.importing import import_checkpoint

    checkpoint = save_wm(tmp_path)
    detectors = {"blazeface": {"arch": "blazeface_back", "checkpoint": "b.safetensors", "sha256": "0" * 64,
                               "min_score": 0.65},
                 "retinaface": {"arch": "retinaface_mobilenet", "checkpoint": "r.safetensors", "sha256": "0" * 64,
                                "min_score": 0.8}}
    paths = {}
    for name, detector in detectors.items():
        (tmp_path / name).mkdir()
        paths[name] = tmp_path / name / "ensemble.json"
        paths[name].write_text(json.dumps({"format": 2, "detector": detector, "models": [
            {"name": "meso4_df", "arch": "meso4", "checkpoint": "m.safetensors", "sha256": "1" * 64}]}))
    blazeface, retinaface = paths["blazeface"], paths["retinaface"]

    aligned = import_checkpoint("wm", checkpoint, name="x", ensemble=retinaface).spec.input
    assert (aligned.align, aligned.every, aligned.start, aligned.limit, aligned.size) == ("wm", 10, 9, 25, 299)
    fallback = import_checkpoint("wm", checkpoint, name="x", ensemble=blazeface)
    assert (fallback.spec.input.align, fallback.spec.input.margin) == (None, 0.5)
    assert any("gives no landmarks" in note for note in fallback.notes)
    data = json.loads(blazeface.read_text())
    aligning = {**json.loads(retinaface.read_text())["models"][-1], "name": "aligning"}
    data["models"].append(aligning)  # an aligning model behind BlazeFace's boxes
    blazeface.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match="align faces on five landmarks"):
        load_ensemble(blazeface)


def test_the_wm_detector_preset_is_retinaface_with_their_threshold():
    from zootools.build import detector_settings

    settings = detector_settings(None, "wm")
    assert (settings["arch"], settings["min_score"], settings["downscale"], settings["max_faces_per_frame"]) == (
        "retinaface_mobilenet", 0.8, 1.0, 1)
