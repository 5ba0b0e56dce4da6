"""inference.pipeline: readers decode, detect and crop ahead (bounded), the main thread predicts across videos;
batching changes no score, a bad video costs only its own row, and a failing device falls back to the CPU."""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import blending
import inference.pipeline
from inference.classify import Classifier
from inference.crops import TrackCrops, crop_key
from inference.device import Accelerator, to_cpu, usable_cpus
from inference.pipeline import Pipeline, Prepared, VideoResult
from inference.video import find_videos
from tests.helpers import make_small_videos, run_kernel
from weights import InputSpec, ModelSpec
from weights.onnx_runtime import OnnxModule


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    return make_small_videos(tmp_path_factory.mktemp("small"))


@pytest.mark.slow
def test_read_ahead_is_bounded(small_videos, ensemble_path, monkeypatch):
    """Readers never hold more than `readers + videos_per_group` decoded videos: memory stays flat."""
    runner = Pipeline(ensemble_path, "cpu", readers=2)
    state = {"decoded": 0, "peak": 0}
    real_read, real_prepare = runner.read, runner.prepare

    def read(job):
        decoded = real_read(job)
        state["decoded"] += 1
        state["peak"] = max(state["peak"], state["decoded"])
        return decoded

    def prepare(decoded):
        time.sleep(0.2)  # a slow consumer: readers would run far ahead if nothing held them back
        state["decoded"] -= 1
        return real_prepare(decoded)

    monkeypatch.setattr(runner, "read", read)
    monkeypatch.setattr(runner, "prepare", prepare)
    videos, _ = find_videos(small_videos)
    results = [r for batch in runner.run(runner.job(path, 8) for path in videos) for r in batch]
    assert [r.filename for r in results] == [p.name for p in videos]
    assert state["peak"] <= runner.readers + runner.videos_per_group(8)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [4, 16])
def test_pipelined_run_equals_the_sequential_path(small_videos, ensemble_path, batch_size):
    """Read-ahead and cross-video batching change nothing: every frame score within 1e-6 of one-at-a-time."""
    runner = Pipeline(ensemble_path, "cpu", batch_size=batch_size)
    assert runner.videos_per_group(8) == batch_size // 4  # groups of 1 and of 4 videos
    videos, _ = find_videos(small_videos)
    sequential = [runner.process(path, 8) for path in videos]
    pipelined = [r for batch in runner.run(runner.job(path, 8) for path in videos) for r in batch]
    assert [r.filename for r in pipelined] == [r.filename for r in sequential]
    assert sum(not r.fallback for r in sequential) == 9
    for one, many in zip(sequential, pipelined):
        assert many.label == pytest.approx(one.label, abs=1e-6)
        assert many.frame_scores.keys() == one.frame_scores.keys()
        for model, tracks in one.frame_scores.items():
            for a, b in zip(tracks, many.frame_scores[model], strict=True):
                assert b == pytest.approx(a, abs=1e-6)


@pytest.mark.slow
def test_readers_detect_and_crop_while_the_main_thread_predicts(small_videos, ensemble_path, monkeypatch):
    runner = Pipeline(ensemble_path, "cpu")
    threads = {"detect": set(), "predict": set()}
    real_find, real_predict = runner.finder.find, Classifier.predict

    def find(frames):
        threads["detect"].add(threading.current_thread().name)
        return real_find(frames)

    def predict(self, crops, accelerator, batch_size, pool=None):
        threads["predict"].add(threading.current_thread().name)
        return real_predict(self, crops, accelerator, batch_size, pool)

    monkeypatch.setattr(runner.finder, "find", find)
    monkeypatch.setattr(Classifier, "predict", predict)
    videos, _ = find_videos(small_videos)
    results = [r for batch in runner.run(runner.job(path, 8) for path in videos) for r in batch]
    assert sum(not r.fallback for r in results) == 9
    assert threads["detect"] and all(name.startswith("reader") for name in threads["detect"])
    assert threads["predict"] == {threading.main_thread().name}


def test_readers_share_the_cores_and_the_classifiers_run_batches_side_by_side(ensemble_path, monkeypatch):
    assert usable_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(inference.pipeline, "usable_cpus", lambda: 8)
    for readers, threads in ((3, 2), (1, 4), (0, 8), (8, 1)):
        runner = Pipeline(ensemble_path, "cpu", readers=readers)
        assert {c.module.threads for c in runner.classifiers} == {1} and runner.cores == 8
        assert runner.finder.detector.network.threads == threads
    runner = Pipeline(ensemble_path, "cpu", readers=2, cores=3)
    assert runner.cores == 3 and runner.finder.detector.network.threads == 1
    # Two batches of a model must be in its session at once: a barrier of two passes only then.
    runner = Pipeline(ensemble_path, "cpu", readers=0, cores=2)
    together, real_forward, threads = threading.Barrier(2, timeout=10), OnnxModule.forward, set()

    def forward(module, batch):
        threads.add(threading.current_thread().name)
        together.wait()
        return real_forward(module, batch)

    crops = np.random.default_rng(0).integers(0, 256, (16, 256, 256, 3), dtype=np.uint8)  # two batches of 8
    group = [Prepared(VideoResult("a.mp4", 0.5), runner.classifiers,
                      [TrackCrops({crop_key(runner.classifiers[0].spec.input): crops})])]
    one_by_one = [runner.classifiers[0].predict(crops, runner.accelerator, 8)]
    monkeypatch.setattr(OnnxModule, "forward", forward)
    (side_by_side,) = runner.predict(group)
    monkeypatch.setattr(OnnxModule, "forward", real_forward)
    assert len(threads) == 2 and all(name.startswith("predict") for name in threads)
    np.testing.assert_array_equal(side_by_side[runner.classifiers[0].spec.name][0], one_by_one[0])
    with pytest.raises(ValueError, match="at least one reader"):
        next(Pipeline(ensemble_path, "cpu", readers=0).run(iter([])))


POISON = 7


@pytest.mark.slow
def test_a_video_that_breaks_its_batch_costs_only_its_own_row(small_videos, ensemble_path, monkeypatch):
    runner = Pipeline(ensemble_path, "cpu", batch_size=16)  # groups of 4 videos at 8 frames
    videos, _ = find_videos(small_videos)
    real_predict = Classifier.predict

    def predict(self, crops, accelerator, batch_size, pool=None):
        if (crops.reshape(len(crops), -1) == POISON).all(axis=1).any():
            raise ValueError("poisoned crops")
        return real_predict(self, crops, accelerator, batch_size, pool)

    real_prepare = runner.prepare

    def prepare(decoded):
        prepared = real_prepare(decoded)
        if decoded.job.path.name == "clip_02.mp4":
            for track in prepared.inputs:
                for stack in track.faces.values():
                    stack[0] = POISON
        return prepared

    monkeypatch.setattr(Classifier, "predict", predict)
    monkeypatch.setattr(runner, "prepare", prepare)
    results = {r.filename: r for batch in runner.run(runner.job(path, 8) for path in videos) for r in batch}
    assert len(results) == 10
    assert results["clip_02.mp4"].fallback and "poisoned" in results["clip_02.mp4"].error
    assert all(not r.fallback for name, r in results.items() if name not in ("clip_02.mp4", "empty.mp4"))


@pytest.mark.slow
def test_device_failure_mid_run_falls_back_to_cpu(sample_videos, ensemble_path, tmp_path, monkeypatch):
    """A simulated GPU works for a few batches, then runs out of memory: the rest runs on the CPU, no row lost."""
    videos = next(iter(sample_videos.values())).parent
    expected, _ = run_kernel(videos, tmp_path / "cpu", ensemble_path, "--device", "cpu", "--frames-per-video", "8")

    real_forward = Accelerator.forward
    gpu_calls = []

    def flaky_gpu(self, module, batch, memory_format):
        if self.device.type == "cuda":
            gpu_calls.append(threading.current_thread().name)
            if len(gpu_calls) > 3:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            with torch.inference_mode():  # the simulated GPU computes on the CPU, leaving the accelerator as it is
                return to_cpu(module(batch))
        return real_forward(self, module, batch, memory_format)

    monkeypatch.setattr(Accelerator, "forward", flaky_gpu)
    (tmp_path / "gpu").mkdir()
    rows, report = run_kernel(videos, tmp_path / "gpu", ensemble_path, "--device", "cuda", "--frames-per-video", "8")
    # The detector (reader threads) and the classifiers (main thread) share the device: calls already under way
    # when the first one fails fail too, then the whole run stays on the CPU.
    assert 4 <= len(gpu_calls) <= 4 + 2
    assert rows.keys() == expected.keys()
    for name, label in expected.items():  # the CPU run uses onnxruntime, the "GPU" PyTorch: equal within 1e-4
        assert rows[name] == pytest.approx(label, abs=1e-4)
    assert all(entry["error"] is None or entry["error"] == "no face found" for entry in report.values())
    assert {entry["device"] for entry in report.values()} <= {"cpu", "cuda"}
    assert report[sorted(report)[-1]]["device"] == "cpu"


def test_hflip_tta_averages_the_two_views():
    class LeftRightDetector(torch.nn.Module):
        def forward(self, x):
            return x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3)) - x[..., x.shape[-1] // 2:].mean(dim=(1, 2, 3))

    crops = np.zeros((1, 8, 8, 3), np.uint8)
    crops[:, :, :4] = 255  # bright left half
    spec = ModelSpec(name="lr", arch="none", checkpoint="", sha256="", input=InputSpec(8))
    plain = Classifier(spec, LeftRightDetector())
    flipped = Classifier(dataclasses.replace(spec, tta=("hflip",)), LeftRightDetector())
    accelerator = Accelerator("cpu")
    assert plain.predict(crops, accelerator, 4)[0] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert flipped.predict(crops, accelerator, 4)[0] == pytest.approx(0.5)


def test_a_logit_mean_model_keeps_its_scores_in_float64():
    """polimi's rule reads the logit back from P(FAKE): a logit of 30 must not round to P(FAKE) = 1."""
    class FixedLogits(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([30.0, -3.0, -3.0, 12.5])[: len(x)]

    crops = np.zeros((4, 8, 8, 3), np.uint8)
    spec = ModelSpec(name="p", arch="none", checkpoint="", sha256="", input=InputSpec(8), aggregation="logit_mean")
    accelerator = Accelerator("cpu")
    scores = Classifier(spec, FixedLogits()).predict(crops, accelerator, 4)
    assert scores.dtype == np.float64 and scores[0] < 1.0
    mean_logit = (30.0 - 3.0 - 3.0 + 12.5) / 4
    assert blending.aggregate_frames(scores, "logit_mean") == pytest.approx(1 / (1 + np.exp(-mean_logit)), abs=1e-7)
    plain = Classifier(dataclasses.replace(spec, aggregation="mean"), FixedLogits()).predict(crops, accelerator, 4)
    assert plain.dtype == np.float32 and plain[0] == 1.0  # what float32 would have made of it


def test_the_report_says_which_frames_were_read_and_which_detected(sample_videos, ensemble_path, tmp_path):
    """Default decoding samples the nearest reference frames and detects sparsely where the face is steady; a
    manifest can ask for the evenly spaced frames, each detected, as before."""
    from bench.manifests import with_options
    from bench.samples import SampleSpec, render_frames, write_video
    from inference.video import sample_indices

    steady = write_video(tmp_path / "steady.mp4", render_frames(SampleSpec("steady.mp4", 512, 512, 1), 60), 512, 512)
    runner = Pipeline(ensemble_path, "cpu", readers=0)
    sparse = runner.process(steady, 16)
    assert sparse.sampling == "reference" and len(sparse.frame_indices) == sparse.key_frames == 16
    assert sparse.frames_detected == 5 and sparse.faces_per_frame == [1] * 16  # 0, 4, 8, 12, 15: the rest carried
    fast = runner.process(sample_videos["face_1080p.mp4"], 16)  # the face crosses the frame in 2 s: every frame seen
    assert fast.frames_detected == 16 and fast.faces_per_frame == [1] * 16
    exact_manifest = with_options(ensemble_path, ["decode.sampling=exact", "detector.every=1"], tmp_path)
    exact = Pipeline(exact_manifest, "cpu", readers=0).process(steady, 16)
    assert exact.sampling == "exact" and exact.frame_indices == sample_indices(60, 16)
    assert exact.frames_detected == 16 and exact.faces_per_frame == [1] * 16
    assert abs(exact.label - sparse.label) < 0.05
