"""Issue 6, "never fail a submission": the kernel, run as a script on a folder of bad inputs (tests/bad_inputs.py).

One run of kernel.py (a subprocess, as on Kaggle) over every case, then one test per case of the contract:
every video entry gets exactly one row (the manifest's fallback where it must, with the reason in the report),
every other file is ignored and reported, and the kernel exits 0. The generator's claims about its files
(4K is 4K, truncated is truncated, ...) are checked by probing them, so no case can pass vacuously.
Two hazards that could take a whole run down (a named pipe: a hang; a file name that is not UTF-8: a crash)
get a small run each, beside one good clip, so that they cannot hide the other cases' results.
"""
from __future__ import annotations

import csv
import json
import math
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

import kernel
from inference.video import VIDEO_SUFFIXES
from tests.bad_inputs import (
    CASES,
    FIFO_CASE,
    GOOD_NAME,
    NOT_UTF8_NAME,
    SMALL_FRAMES,
    Expectation,
    make_bad_inputs,
    make_fifo_case,
    make_not_utf8_case,
)
from zootools.sources import REPO_ROOT

KERNEL = Path(kernel.__file__).resolve()
KERNEL_TIMEOUT_S = 180  # the bad-input run takes about 25 s on this 2-core CPU
HAZARD_TIMEOUT_S = 45   # a run over one good clip and one hazard takes about 8 s; a hang must not stall the suite
FRAMES_PER_VIDEO = 8
VIDEOS = [name for name, case in CASES.items() if case.is_video]
IGNORED = [name for name, case in CASES.items() if case.kind == "ignored"]


@dataclass
class Run:
    """What one kernel run left behind."""

    folder: Path
    cases: dict[str, Expectation]
    returncode: int | None          # None: killed at the time limit
    log: str
    seconds: float
    rows: list[tuple[str, str]] | None   # (filename, label) in file order; None: no submission.csv
    report: list[dict]
    fallback: float
    clamp: tuple[float, float]

    def rows_named(self, name: str) -> list[str]:
        return [label for filename, label in self.rows or [] if filename == name]

    def report_named(self, name: str) -> list[dict]:
        return [entry for entry in self.report if entry.get("filename") == name]

    def trace(self, name: str | None = None) -> str:
        """The kernel's log lines about `name` (or its last lines), for assertion messages."""
        lines = self.log.splitlines()
        status = "timed out" if self.returncode is None else f"exit code {self.returncode}"
        if name is not None:
            about = [line for line in lines if name in line]
            return f"kernel {status}; its log about {name!r}:\n" + ("\n".join(about[-8:]) or "(nothing)")
        return f"kernel {status}; the end of its log:\n" + "\n".join(lines[-25:])


def manifest_path(request) -> Path:
    """$DEEPFAKE_ENSEMBLE, else the manifest `make` builds, else one built for this session (conftest)."""
    if "DEEPFAKE_ENSEMBLE" in os.environ:
        return Path(os.environ["DEEPFAKE_ENSEMBLE"])
    built = REPO_ROOT / "artifacts" / "weights" / "ensemble.json"
    return built if built.is_file() else request.getfixturevalue("ensemble_path")


def run_kernel_script(videos: Path, out_dir: Path, ensemble: Path, timeout: float = KERNEL_TIMEOUT_S) -> Run:
    """kernel.py as a subprocess with --report; whatever it wrote is read back, even after a crash or a hang."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out, report = out_dir / "submission.csv", out_dir / "report.jsonl"
    command = [sys.executable, str(KERNEL), "--videos", str(videos), "--out", str(out), "--report", str(report),
               "--ensemble", str(ensemble), "--frames-per-video", str(FRAMES_PER_VIDEO), "--device", "cpu"]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=out_dir, capture_output=True, timeout=timeout)
        returncode, output = completed.returncode, completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as expired:
        returncode, output = None, (expired.stdout or b"") + (expired.stderr or b"")
    seconds = time.perf_counter() - started
    log = output.decode("utf-8", errors="replace")
    (out_dir / "kernel.log").write_text(log)

    rows = None
    if out.is_file():
        # surrogateescape: a file name that is not UTF-8 must not make the submission unreadable here
        with open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            assert header == ["filename", "label"], f"submission header {header!r}"
            rows = [tuple(row) for row in reader]
    entries = []
    if report.is_file():
        entries = [json.loads(line) for line in report.read_text(errors="surrogateescape").splitlines() if line]
    blend = json.loads(ensemble.read_text()).get("blend", {})
    return Run(videos, {}, returncode, log, seconds, rows, entries, float(blend.get("fallback", 0.5)),
               tuple(blend.get("clamp", (0.0, 1.0))))


@pytest.fixture(scope="module")
def bad_run(request, tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("bad_inputs")
    cases = make_bad_inputs(root / "videos")
    run = run_kernel_script(root / "videos", root / "out", manifest_path(request))
    run.cases = cases
    return run


# ---------------------------------------------------------------------------------------------- the whole run

@pytest.mark.slow
def test_kernel_exits_zero(bad_run):
    assert bad_run.returncode == 0, bad_run.trace()


@pytest.mark.slow
def test_one_row_per_video_entry_and_no_duplicates(bad_run):
    assert bad_run.rows is not None, "no submission.csv written; " + bad_run.trace()
    names = [filename for filename, _ in bad_run.rows]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"duplicate rows: {duplicates}"
    missing = sorted(set(VIDEOS) - set(names))
    extra = sorted(set(names) - set(VIDEOS))
    assert not missing and not extra, f"missing rows: {missing}; rows for non-videos: {extra}"
    assert len(names) == len(VIDEOS)


@pytest.mark.slow
def test_every_label_is_a_probability(bad_run):
    assert bad_run.rows is not None, "no submission.csv written; " + bad_run.trace()
    bad = [(name, label) for name, label in bad_run.rows
           if not (math.isfinite(float(label)) and 0 <= float(label) <= 1)]
    assert not bad, bad


@pytest.mark.slow
def test_report_has_one_line_per_video_and_per_ignored_file(bad_run):
    named = [entry.get("filename") for entry in bad_run.report]
    missing = sorted(name for name in VIDEOS + IGNORED if named.count(name) == 0)
    repeated = sorted({name for name in named if named.count(name) > 1})
    unknown = sorted({str(name) for name in named} - set(CASES))
    assert not missing and not repeated and not unknown, (
        f"report lines missing for {missing}; repeated for {repeated}; for unknown entries {unknown}")


@pytest.mark.slow
def test_ignored_files_are_listed_with_a_reason(bad_run):
    for name in IGNORED:
        entries = bad_run.report_named(name)
        assert entries and all(isinstance(e.get("ignored"), str) and e["ignored"] for e in entries), (
            f"{name}: no report line with a reason for ignoring it: {entries}")


# ---------------------------------------------------------------------------------------------- per case

@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_case(bad_run, name):
    check_case(bad_run, name, bad_run.cases[name])


def check_case(run: Run, name: str, case: Expectation) -> None:
    """The row, report line, fallback and reason of one entry, as `case` expects."""
    assert run.rows is not None, "no submission.csv written; " + run.trace()
    rows, entries = run.rows_named(name), run.report_named(name)
    context = f"{name} ({case.why}): rows {rows}, report {entries}\n{run.trace(name)}"
    if case.kind == "ignored":
        assert not rows, "a non-video got a row: " + context
        assert len(entries) == 1, "an ignored file needs exactly one report line: " + context
        entry = entries[0]
        assert isinstance(entry.get("ignored"), str) and entry["ignored"].strip(), context
        assert "label" not in entry, context
        assert Path(entry.get("path", "")).name == name, context
        return

    assert len(rows) == 1, "a video needs exactly one row: " + context
    assert len(entries) == 1, "a video needs exactly one report line: " + context
    label, entry = float(rows[0]), entries[0]
    assert "ignored" not in entry, context
    assert Path(entry.get("path", "")).name == name, context
    assert entry.get("label") == pytest.approx(label, abs=1e-6), context
    if entry.get("fallback"):
        assert case.prediction is not True, "expected a real prediction, got the fallback: " + context
        assert isinstance(entry.get("error"), str) and entry["error"].strip(), "a fallback without a reason: " + context
        assert label == pytest.approx(run.fallback, abs=1e-6), context
    else:
        assert case.prediction is not False, "expected the fallback with a reason, got a prediction: " + context
        assert entry.get("blended") is not None and entry.get("model_scores"), context
        low, high = run.clamp
        assert low - 1e-6 <= label <= high + 1e-6, context


# ---------------------------------------------------------------------------------------------- the generator

def test_cases_follow_the_kernels_video_suffixes():
    for name, case in {**CASES, "pipe.mp4": FIFO_CASE, NOT_UTF8_NAME: CASES["vfr.mp4"]}.items():
        assert (Path(name).suffix.lower() in VIDEO_SUFFIXES) == case.is_video, name
    assert len(VIDEOS) >= 30 and len(IGNORED) >= 5


def _video_probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        if not container.streams.video:
            return {"video": False, "audio": len(container.streams.audio)}
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return {"video": True, "width": stream.codec_context.width, "height": stream.codec_context.height,
                "frames": len(frames), "rotation": (-frames[0].rotation) % 360 if frames else None,
                "pts": [f.pts for f in frames],
                "max_pixel": max(int(f.to_ndarray(format="rgb24").max()) for f in frames)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_generated_case_is_what_it_claims(bad_run, name):
    case = bad_run.cases[name]
    path = bad_run.folder / case.path
    info = os.lstat(path)
    if case.entry == "file":
        assert stat.S_ISREG(info.st_mode), name
    elif case.entry == "directory":
        assert path.is_dir() and not path.is_symlink(), name
    elif case.entry == "fifo":
        assert stat.S_ISFIFO(info.st_mode), name
    else:
        assert path.is_symlink(), name
        if case.entry == "symlink":
            assert path.resolve().is_file(), name
        elif case.entry == "dangling_symlink":
            assert not os.path.exists(os.readlink(path)), name
        else:
            with pytest.raises(OSError):
                path.stat()  # a symlink loop: ELOOP
    if case.mode is not None:
        assert stat.S_IMODE(info.st_mode) == case.mode, name
    if case.size is not None:
        assert info.st_size == case.size, name
    if case.truncated is not None:
        source = Path(case.source)
        whole = source.stat().st_size
        assert info.st_size == round(whole * case.truncated) < whole, (name, info.st_size, whole)
        assert _video_probe(source)["frames"] == SMALL_FRAMES, f"{name}: its source is not an intact clip"
    if case.audio_only:
        probe = _video_probe(path)
        assert not probe["video"] and probe["audio"] == 1, (name, probe)
    if case.width is not None:
        probe = _video_probe(path)
        assert (probe["width"], probe["height"], probe["frames"]) == (case.width, case.height, case.frames), probe
        assert probe["rotation"] == (case.rotation or 0), (name, probe["rotation"])
        gaps = np.diff(probe["pts"])
        if case.variable_frame_rate:
            assert (gaps > 0).all() and len(set(gaps.tolist())) >= 3, (name, gaps)
        elif len(gaps):
            assert len(set(gaps.tolist())) == 1, (name, gaps)  # the others are constant-rate
        if case.black:
            assert probe["max_pixel"] <= 20, (name, probe["max_pixel"])
        else:
            assert probe["max_pixel"] > 100, (name, probe["max_pixel"])


# ---------------------------------------------------------------------------------------------- hazards

def _good_clip_scored(run: Run) -> None:
    entries = run.report_named(GOOD_NAME)
    assert run.rows_named(GOOD_NAME) and len(entries) == 1 and not entries[0]["fallback"], (
        f"the good clip beside the hazard lost its prediction: {entries}\n{run.trace(GOOD_NAME)}")


@pytest.mark.slow
def test_a_named_pipe_neither_hangs_nor_loses_its_row(request, tmp_path):
    """`pipe.mp4`, a FIFO nobody writes to: opening it blocks, so the kernel must check before it opens."""
    pipe = make_fifo_case(tmp_path / "videos")
    run = run_kernel_script(pipe.parent, tmp_path / "out", manifest_path(request), timeout=HAZARD_TIMEOUT_S)
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    assert run.returncode == 0, run.trace()
    assert sorted(name for name, _ in run.rows or []) == sorted([GOOD_NAME, pipe.name]), run.trace()
    check_case(run, pipe.name, FIFO_CASE)
    _good_clip_scored(run)


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_costs_no_submission(request, tmp_path):
    """`caf\\xe9.mp4` (Latin-1 bytes) beside a good clip: both get a row, and the good one its prediction.

    The row's name may be the raw bytes or a replacement; it must still be recognisably this file.
    """
    odd = make_not_utf8_case(tmp_path / "videos")
    assert os.fsencode(odd.name) == b"caf\xe9.mp4"  # the name really holds a byte that is not UTF-8
    run = run_kernel_script(odd.parent, tmp_path / "out", manifest_path(request), timeout=HAZARD_TIMEOUT_S)
    assert run.returncode == 0, run.trace()
    assert run.rows is not None, "no submission.csv written; " + run.trace()
    names = [filename for filename, _ in run.rows]
    assert len(names) == 2 and GOOD_NAME in names, names
    other = next(name for name in names if name != GOOD_NAME)
    assert other.startswith("caf") and other.endswith(".mp4"), other
    _good_clip_scored(run)
