"""Never fail a submission: the time budget, resuming a killed run, bounded read-ahead, the progress journal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kernel
from bench.manifests import manifest_copy
from bench.samples import SampleSpec, make_samples
from tests.helpers import read_report, read_rows, run_kernel

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    """Ten short 640x360 clips with one face each (and one without), quick to read."""
    folder = tmp_path_factory.mktemp("small")
    specs = [SampleSpec(f"clip_{i:02d}.mp4", 640, 360, 1) for i in range(9)] + [SampleSpec("empty.mp4", 640, 360, 0)]
    make_samples(folder, seconds=1.0, specs=specs)
    return folder


def optional_copy(ensemble_path: Path, folder: Path, optional: str) -> Path:
    """The test ensemble with one model marked optional (the manifest points at the original weights)."""
    def mark(data):
        for model in data["models"]:
            model["optional"] = model["name"] == optional

    return manifest_copy(ensemble_path, folder, mark)


# ---------------------------------------------------------------------------------------------- time budget

def test_budget_levels_step_down_frames_then_drop_optional_models():
    assert kernel.budget_levels(32, frozenset({"slow"})) == [
        (32, frozenset()), (16, frozenset()), (8, frozenset()), (8, frozenset({"slow"}))]
    assert kernel.budget_levels(8, frozenset()) == [(8, frozenset())]
    assert kernel.budget_levels(12, frozenset()) == [(12, frozenset()), (8, frozenset())]


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def finished(level=0, skipped=False):
    return kernel.VideoResult("v.mp4", 0.5, budget_level=level, skipped=skipped)


def test_budget_projects_from_the_rate_and_skips_past_the_point_of_no_return(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(kernel.time, "perf_counter", clock)
    budget = kernel.TimeBudget(150.0, clock.now, total=20, frames=32, models=["a", "slow"], optional=["slow"])

    def finish(count):  # plan a batch of 2 videos, take 20 s over it: 20 videos would take 200 s of 150 s
        for _ in range(count):
            jobs = [budget.plan(Path("v.mp4")) for _ in range(2)]
            clock.now += 20
            budget.record([finished(job.budget_level, bool(job.skip)) for job in jobs])
        return jobs[0]

    first = finish(1)
    assert (first.frames, first.models, budget.rate, budget.level) == (32, None, None, 0)  # warm-up: no rate
    finish(1)
    assert budget.rate == pytest.approx(10) and budget.level == 1
    assert budget.plan(Path("x.mp4")).frames == 16
    budget.record([finished(level=0)])  # planned before the switch: not the new level's rate
    for expected_level in (2, 3):  # the rate is re-measured at each level before stepping down again
        finish(1)
        assert budget.level == expected_level - 1
        finish(1)
        assert budget.level == expected_level
    job = budget.plan(Path("y.mp4"))
    assert job.frames == 8 and job.models == frozenset({"a"}) and job.skip is None
    clock.now = budget.deadline - 15  # y in flight + one more at 10 s each would overrun
    assert "time budget" in budget.plan(Path("z.mp4")).skip
    budget.record([finished(level=3, skipped=True)] * 5)  # skipped videos cost nothing: the rate stands
    assert budget.rate == pytest.approx(10)


def test_no_budget_means_no_degradation(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(kernel.time, "perf_counter", clock)
    budget = kernel.TimeBudget(None, clock.now, total=5, frames=32, models=["a"], optional=[])
    for _ in range(5):
        clock.now += 1e6
        budget.record([finished()])
    assert budget.level == 0 and budget.plan(Path("a.mp4")).skip is None


def test_slow_model_run_degrades_and_finishes_inside_the_budget(small_videos, ensemble_path, tmp_path, monkeypatch):
    """An artificially slow optional model: the run steps down, drops it, and ends before the budget.

    The slow model costs 1 s per crop on a shifted clock (the kernel's only clock), so the test is quick and
    does not depend on how busy the machine is.
    """
    manifest = optional_copy(ensemble_path, tmp_path, optional="mesoinception4_df")
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(20):
        (videos / f"v{i:02d}.mp4").symlink_to(small_videos / f"clip_{i % 9:02d}.mp4")
    real_clock, real_predict, shift = time.perf_counter, kernel.Classifier.predict, [0.0]

    def slow_predict(self, crops, accelerator, batch_size):
        if self.spec.name == "mesoinception4_df":
            shift[0] += 1.0 * len(crops)
        return real_predict(self, crops, accelerator, batch_size)

    monkeypatch.setattr(kernel.time, "perf_counter", lambda: real_clock() + shift[0])
    monkeypatch.setattr(kernel.Classifier, "predict", slow_predict)
    budget = 200.0  # 20 videos at 16 s each: 320 s
    started = kernel.time.perf_counter()
    rows, report = run_kernel(videos, tmp_path, manifest, "--frames-per-video", "16", "--time-budget", str(budget),
                              "--readers", "1")
    elapsed = kernel.time.perf_counter() - started
    assert elapsed < budget, f"run took {elapsed:.1f} s for a {budget} s budget"
    assert len(rows) == 20 and all(0.0 <= label <= 1.0 for label in rows.values())
    entries = [report[name] for name in sorted(report)]
    levels = [entry["budget_level"] for entry in entries]
    assert levels == sorted(levels) and levels[-1] == 2, levels
    assert all(entry["frames_requested"] == {0: 16, 1: 8, 2: 8}[entry["budget_level"]] for entry in entries)
    dropped = [e for e in entries if e["budget_level"] == 2 and not e["fallback"]]
    assert len(dropped) >= 3 and all("mesoinception4_df" not in e["model_scores"] for e in dropped)
    skipped = [e for e in entries if e["skipped"]]
    assert all(e["fallback"] and "time budget" in e["error"] and e["frames_read"] == 0 for e in skipped)


def test_budget_skips_what_cannot_finish(small_videos, ensemble_path, tmp_path, monkeypatch):
    """With no optional model to drop, the videos past the point of no return get the fallback, and why."""
    real_clock, real_predict, shift = time.perf_counter, kernel.Classifier.predict, [0.0]

    def slow_predict(self, crops, accelerator, batch_size):
        shift[0] += 1.0 * len(crops)
        return real_predict(self, crops, accelerator, batch_size)

    monkeypatch.setattr(kernel.time, "perf_counter", lambda: real_clock() + shift[0])
    monkeypatch.setattr(kernel.Classifier, "predict", slow_predict)
    started = kernel.time.perf_counter()
    rows, report = run_kernel(small_videos, tmp_path, ensemble_path, "--frames-per-video", "8", "--batch-size", "8",
                              "--time-budget", "200", "--readers", "1")  # 4 models x 8 crops: 32 s a video
    assert kernel.time.perf_counter() - started < 200
    assert len(rows) == 10
    skipped = [e for e in report.values() if e["skipped"]]
    assert 1 <= len(skipped) <= 6 and all(rows[e["filename"]] == 0.5 and "time budget" in e["error"] for e in skipped)


# ---------------------------------------------------------------------------------------------- resume

def test_journal_drops_a_torn_line_and_appends_after_it(tmp_path):
    path = tmp_path / "run.progress.jsonl"
    journal = kernel.Journal(path, {"run": 1})
    assert journal.resume() == {}
    journal.append({"filename": "a.mp4", "label": 0.2})
    journal.file.write('{"filename": "b.mp4", "la')  # killed mid-write
    journal.file.close()
    again = kernel.Journal(path, {"run": 1})
    assert again.resume() == {"a.mp4": {"filename": "a.mp4", "label": 0.2}}
    again.append({"filename": "b.mp4", "label": 0.7})
    again.close(finished=False)
    assert set(kernel.Journal(path, {"run": 1}).resume()) == {"a.mp4", "b.mp4"}
    assert kernel.Journal(path, {"run": 2}).resume() == {}  # another run's journal is not reused


def test_sigkill_and_restart_loses_and_duplicates_nothing(small_videos, ensemble_path, tmp_path):
    expected, _ = run_kernel(small_videos, tmp_path / "whole", ensemble_path, "--frames-per-video", "8")
    out, report = tmp_path / "killed" / "submission.csv", tmp_path / "killed" / "report.jsonl"
    journal = out.with_name("submission.csv.progress.jsonl")
    command = [sys.executable, str(REPO / "kernel.py"), "--videos", str(small_videos), "--out", str(out),
               "--ensemble", str(ensemble_path), "--frames-per-video", "8", "--readers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 1 + 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = sum(1 for line in journal.read_text().splitlines()[1:] if kernel._json_or_none(line))
    assert 3 <= done_before < 10 and not out.exists()

    resumed = subprocess.run([*command, "--report", str(report)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {done_before} videos already done" in resumed.stderr
    rows = read_rows(out)
    assert rows.keys() == expected.keys()
    assert all(rows[name] == pytest.approx(label, abs=1e-6) for name, label in expected.items())
    names = [json.loads(line)["filename"] for line in report.read_text().splitlines()]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names))
    assert not journal.exists()  # a finished run leaves only its submission


# ---------------------------------------------------------------------------------------------- pipeline

def test_read_ahead_is_bounded(small_videos, ensemble_path, monkeypatch):
    """Readers never hold more than `readers + videos_per_batch` decoded videos: memory stays flat."""
    runner = kernel.Kernel(ensemble_path, 8, "cpu", readers=2)
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
    videos, _ = kernel.find_videos(small_videos)
    results = [r for batch in runner.run(runner.job(path) for path in videos) for r in batch]
    assert [r.filename for r in results] == [p.name for p in videos]
    assert state["peak"] <= runner.readers + runner.videos_per_batch


@pytest.mark.parametrize("videos_per_batch", [1, 4])
def test_pipelined_run_equals_the_sequential_path(small_videos, ensemble_path, videos_per_batch):
    """Read-ahead and cross-video batching change nothing: every frame score within 1e-6 of one-at-a-time."""
    runner = kernel.Kernel(ensemble_path, 8, "cpu")
    videos, _ = kernel.find_videos(small_videos)
    sequential = [runner.process(path) for path in videos]
    runner.videos_per_batch = videos_per_batch
    pipelined = [r for batch in runner.run(runner.job(path) for path in videos) for r in batch]
    assert [r.filename for r in pipelined] == [r.filename for r in sequential]
    assert sum(not r.fallback for r in sequential) == 9
    for one, many in zip(sequential, pipelined):
        assert many.label == pytest.approx(one.label, abs=1e-6)
        assert many.frame_scores.keys() == one.frame_scores.keys()
        for model, tracks in one.frame_scores.items():
            for a, b in zip(tracks, many.frame_scores[model], strict=True):
                assert b == pytest.approx(a, abs=1e-6)


def test_readers_detect_and_crop_while_the_main_thread_predicts(small_videos, ensemble_path, monkeypatch):
    runner = kernel.Kernel(ensemble_path, 8, "cpu")
    threads = {"detect": set(), "predict": set()}
    real_detect, real_predict = runner.detector.detect, kernel.Classifier.predict

    def detect(frames):
        threads["detect"].add(threading.current_thread().name)
        return real_detect(frames)

    def predict(self, crops, accelerator, batch_size):
        threads["predict"].add(threading.current_thread().name)
        return real_predict(self, crops, accelerator, batch_size)

    monkeypatch.setattr(runner.detector, "detect", detect)
    monkeypatch.setattr(kernel.Classifier, "predict", predict)
    videos, _ = kernel.find_videos(small_videos)
    results = [r for batch in runner.run(runner.job(path) for path in videos) for r in batch]
    assert sum(not r.fallback for r in results) == 9
    assert threads["detect"] and all(name.startswith("reader") for name in threads["detect"])
    assert threads["predict"] == {threading.main_thread().name}


def test_onnxruntime_threads_share_the_cores_among_readers_and_main_thread(ensemble_path, monkeypatch):
    assert kernel.usable_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(kernel, "usable_cpus", lambda: 8)
    for readers, threads in ((3, 2), (1, 4), (0, 8), (8, 1)):
        runner = kernel.Kernel(ensemble_path, 8, "cpu", readers=readers)
        assert {c.module.threads for c in runner.classifiers} == {threads}
        assert runner.detector.detector.network.threads == threads
    with pytest.raises(ValueError, match="at least one reader"):
        next(kernel.Kernel(ensemble_path, 8, "cpu", readers=0).run(iter([])))


POISON = 7


def test_a_video_that_breaks_its_batch_costs_only_its_own_row(small_videos, ensemble_path, monkeypatch):
    runner = kernel.Kernel(ensemble_path, 8, "cpu")
    runner.videos_per_batch = 4
    videos, _ = kernel.find_videos(small_videos)
    real_predict = kernel.Classifier.predict

    def predict(self, crops, accelerator, batch_size):
        if (crops.reshape(len(crops), -1) == POISON).all(axis=1).any():
            raise ValueError("poisoned crops")
        return real_predict(self, crops, accelerator, batch_size)

    real_prepare = runner.prepare

    def prepare(decoded):
        prepared = real_prepare(decoded)
        if decoded.job.path.name == "clip_02.mp4":
            for track in prepared.inputs:
                for stack in track.faces.values():
                    stack[0] = POISON
        return prepared

    monkeypatch.setattr(kernel.Classifier, "predict", predict)
    monkeypatch.setattr(runner, "prepare", prepare)
    results = {r.filename: r for batch in runner.run(runner.job(path) for path in videos) for r in batch}
    assert len(results) == 10
    assert results["clip_02.mp4"].fallback and "poisoned" in results["clip_02.mp4"].error
    assert all(not r.fallback for name, r in results.items() if name not in ("clip_02.mp4", "empty.mp4"))


def test_non_video_files_are_ignored_and_reported(small_videos, ensemble_path, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.mp4").symlink_to(small_videos / "clip_00.mp4")
    (folder / "notes.txt").write_text("not a video")
    (folder / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    rows, report = run_kernel(folder, tmp_path, ensemble_path, "--frames-per-video", "8")
    assert set(rows) == set(report) == {"a.mp4", "dangling.mp4"}
    assert report["dangling.mp4"]["fallback"] and report["dangling.mp4"]["error"]
    ignored = read_report(tmp_path / "report.jsonl", ignored=True)
    assert ignored.keys() == {"notes.txt"} and ignored["notes.txt"]["ignored"] and "label" not in ignored["notes.txt"]


def test_a_broken_run_loop_still_writes_every_row(small_videos, ensemble_path, tmp_path, monkeypatch):
    """Even an error outside any one video (here: the journal's disk fills up) leaves a complete submission."""
    real_append, appended = kernel.Journal.append, []

    def append(self, record):
        if len(appended) == 3:
            raise OSError(28, "No space left on device")
        appended.append(record["filename"])
        real_append(self, record)

    monkeypatch.setattr(kernel.Journal, "append", append)
    out = tmp_path / "submission.csv"
    assert kernel.main(["--videos", str(small_videos), "--out", str(out), "--ensemble", str(ensemble_path),
                        "--frames-per-video", "8"]) == 0
    rows = read_rows(out)
    assert len(rows) == 10 and all(rows[name] == 0.5 for name in rows if name not in appended)
    assert (tmp_path / "submission.csv.progress.jsonl").is_file()  # kept: a rerun picks up the 3 done
