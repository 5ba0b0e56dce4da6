"""inference.budget: the time budget projects the finish from the measured rate, steps down the work per video,
and skips what cannot finish; unit tests on a fake clock, end to end on a shifted one. And the budget counts from
the process's start (kernel.py): the process's age read from the OS, and kernel.py run in a subprocess whose
start-up takes a fixed part of the budget, timed from outside."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kernel
from bench.manifests import manifest_copy
from inference.budget import TimeBudget, budget_levels
from inference.classify import Classifier
from inference.pipeline import VideoResult
from tests.helpers import make_small_videos, read_report, read_rows, run_kernel


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    return make_small_videos(tmp_path_factory.mktemp("small"))


def optional_copy(ensemble_path: Path, folder: Path, optional: str) -> Path:
    """The test ensemble with one model marked optional (the manifest points at the original weights)."""
    def mark(data):
        for model in data["models"]:
            model["optional"] = model["name"] == optional

    return manifest_copy(ensemble_path, folder, mark)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class ShiftedClock:
    """The real clock plus `shift` seconds: a test adds to the shift to make the run look slower than it is."""

    def __init__(self):
        self.shift = 0.0

    def __call__(self):
        return time.perf_counter() + self.shift


def finished(level=0, skipped=False):
    return VideoResult("v.mp4", 0.5, budget_level=level, skipped=skipped)


def test_budget_levels_step_down_frames_then_drop_optional_models():
    assert budget_levels(32, frozenset({"slow"})) == [
        (32, frozenset()), (16, frozenset()), (8, frozenset()), (8, frozenset({"slow"}))]
    assert budget_levels(8, frozenset()) == [(8, frozenset())]
    assert budget_levels(12, frozenset()) == [(12, frozenset()), (8, frozenset())]


def test_budget_projects_from_the_rate_and_skips_past_the_point_of_no_return():
    clock = FakeClock()
    budget = TimeBudget(150.0, clock.now, total=20, frames=32, models=["a", "slow"], optional=["slow"], clock=clock)

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


def test_start_up_counts_against_the_deadline_but_not_as_a_video_s_cost():
    clock = FakeClock()
    budget = TimeBudget(150.0, clock.now - 100, total=20, frames=32, models=["a"], optional=[], clock=clock)
    assert budget.deadline == clock.now + 50  # 100 s of the 150 went to start-up
    jobs = [budget.plan(Path("v.mp4")) for _ in range(2)]
    clock.now += 20
    budget.record([finished(job.budget_level) for job in jobs])
    assert budget.first_rate == pytest.approx(10)  # the 100 s of start-up are not spread over the first videos


def test_the_process_start_is_read_from_the_os(tmp_path):
    """A process that sleeps 1.5 s before it imports kernel.py is 1.5 s old, and a bit more, by /proc."""
    script = ("import time; time.sleep(1.5); import kernel; "
              "print(time.perf_counter() - kernel.process_started())")
    completed = subprocess.run([sys.executable, "-c", script], cwd=Path(kernel.__file__).parent, capture_output=True,
                               text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert 1.5 <= float(completed.stdout) < 5.0


def test_where_the_os_does_not_say_the_run_counts_from_kernel_py_s_import(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(kernel, "PROC_STAT", tmp_path / "no-proc" / "stat")
    assert kernel.process_started() is None
    assert kernel.run_started() == kernel.IMPORTED
    assert "the process's start is unknown here" in capsys.readouterr().out


def test_no_budget_means_no_degradation():
    clock = FakeClock()
    budget = TimeBudget(None, clock.now, total=5, frames=32, models=["a"], optional=[], clock=clock)
    for _ in range(5):
        clock.now += 1e6
        budget.record([finished()])
    assert budget.level == 0 and budget.plan(Path("a.mp4")).skip is None


@pytest.mark.slow
def test_slow_model_run_degrades_and_finishes_inside_the_budget(small_videos, ensemble_path, tmp_path, monkeypatch):
    """An artificially slow optional model: the run steps down, drops it, and ends before the budget.

    The slow model costs 1.5 s per crop on a shifted clock (the one the run is given), so the test is quick and
    does not depend on how busy the machine is: half the frames are not enough either, so it must be dropped.
    """
    manifest = optional_copy(ensemble_path, tmp_path, optional="mesoinception4_df")
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(20):
        (videos / f"v{i:02d}.mp4").symlink_to(small_videos / f"clip_{i % 9:02d}.mp4")
    clock, real_predict = ShiftedClock(), Classifier.predict

    def slow_predict(self, crops, accelerator, batch_size, pool=None):
        if self.spec.name == "mesoinception4_df":
            clock.shift += 1.5 * len(crops)
        return real_predict(self, crops, accelerator, batch_size, pool)

    monkeypatch.setattr(Classifier, "predict", slow_predict)
    budget = 200.0  # 20 videos at 24 s each: 480 s; at 8 frames (12 s each) still over
    started = clock()
    rows, report = run_kernel(videos, tmp_path, manifest, "--frames-per-video", "16", "--time-budget", str(budget),
                              "--readers", "1", clock=clock)
    elapsed = clock() - started
    assert elapsed < budget, f"run took {elapsed:.1f} s for a {budget} s budget"
    assert len(rows) == 20 and all(0.0 <= label <= 1.0 for label in rows.values())
    entries = [report[name] for name in sorted(report)]
    levels = [entry["budget_level"] for entry in entries]
    assert levels == sorted(levels) and levels[-1] == 2, levels
    assert all(entry["frames_requested"] == {0: 16, 1: 8, 2: 8}[entry["budget_level"]] for entry in entries)
    dropped = [e for e in entries if e["budget_level"] == 2 and not e["fallback"]]
    assert len(dropped) >= 3 and all("mesoinception4_df" not in e["model_scores"] for e in dropped)
    skipped = [e for e in entries if e["skipped"]]
    assert all(e["fallback"] and "time budget" in e["error"] and e["key_frames"] == 0 for e in skipped)


@pytest.mark.slow
def test_budget_skips_what_cannot_finish(small_videos, ensemble_path, tmp_path, monkeypatch):
    """With no optional model to drop, the videos past the point of no return get the fallback, and why."""
    clock, real_predict = ShiftedClock(), Classifier.predict

    def slow_predict(self, crops, accelerator, batch_size, pool=None):
        clock.shift += 1.0 * len(crops)
        return real_predict(self, crops, accelerator, batch_size, pool)

    monkeypatch.setattr(Classifier, "predict", slow_predict)
    started = clock()
    rows, report = run_kernel(small_videos, tmp_path, ensemble_path, "--frames-per-video", "8", "--batch-size", "8",
                              "--time-budget", "200", "--readers", "1", clock=clock)  # 4 models x 8 crops: 32 s
    assert clock() - started < 200
    assert len(rows) == 10
    skipped = [e for e in report.values() if e["skipped"]]
    assert 1 <= len(skipped) <= 6 and all(rows[e["filename"]] == 0.5 and "time budget" in e["error"] for e in skipped)


# Before kernel.py runs: a fixed start-up (sleeping), then each model's predict call made slower, so the budget
# binds on any machine.
SLOW_START = """
import runpy, sys, time
time.sleep({start_up})
sys.path.insert(0, {root!r})  # the runtime kernel.py will import
import inference.classify
real_predict = inference.classify.Classifier.predict
def slow_predict(self, *args, **kwargs):
    time.sleep({per_call})
    return real_predict(self, *args, **kwargs)
inference.classify.Classifier.predict = slow_predict
runpy.run_path({kernel!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_the_budget_counts_from_the_process_s_start(small_videos, ensemble_path, tmp_path):
    """kernel.py in a subprocess whose start-up alone takes a third of the budget (a sleep; the imports add to it):
    the run, timed from outside the process, ends within the budget plus one video. Counted from after the
    imports, it would overrun by the whole start-up.

    A video costs at least 3 s (4 models, 0.75 s more per predict call), more than the interpreter's exit (about
    2 s here: timm's teardown), which the allowance of one video must also cover."""
    budget, start_up = 30.0, 10.0
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(30):  # 90 s of videos or more, for under 20 s left after start-up
        (videos / f"v{i:02d}.mp4").symlink_to(small_videos / f"clip_{i % 9:02d}.mp4")
    script = SLOW_START.format(start_up=start_up, per_call=0.75, kernel=str(Path(kernel.__file__)),
                               root=str(Path(kernel.__file__).parent))
    out, report = tmp_path / "submission.csv", tmp_path / "report.jsonl"
    begun = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-c", script, "--videos", str(videos), "--out", str(out), "--report", str(report),
         "--ensemble", str(ensemble_path), "--frames-per-video", "8", "--batch-size", "8", "--readers", "1",
         "--device", "cpu", "--time-budget", str(budget)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - begun
    assert completed.returncode == 0, completed.stderr
    rows, entries = read_rows(out), list(read_report(report).values())
    assert len(rows) == 30
    scored = [entry for entry in entries if not entry["skipped"]]
    assert scored and len(scored) < 30  # the budget bound: some videos were skipped
    one_video = max(sum(entry["seconds"].values()) for entry in scored)
    logged = re.search(r"start-up took ([0-9.]+) s", completed.stderr)
    print(json.dumps({"wall": round(wall, 2), "budget": budget, "one_video": round(one_video, 2),
                      "start_up": float(logged.group(1)) if logged else None, "scored": len(scored)}))
    assert wall <= budget + one_video, f"{wall:.1f} s for a budget of {budget:.0f} s (+ {one_video:.1f} s)"
    assert logged and float(logged.group(1)) >= start_up, completed.stderr
