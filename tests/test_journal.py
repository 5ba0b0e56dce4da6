"""inference.journal: each finished video is recorded durably, so a killed run resumes without redoing or
duplicating any."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kernel
from inference.journal import Journal, json_or_none
from tests.helpers import make_small_videos, read_rows, run_kernel

KERNEL = Path(kernel.__file__).resolve()


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory) -> Path:
    return make_small_videos(tmp_path_factory.mktemp("small"))


def test_journal_drops_a_torn_line_and_appends_after_it(tmp_path):
    path = tmp_path / "run.progress.jsonl"
    journal = Journal(path, {"run": 1})
    assert journal.read() == {}
    journal.open({})
    journal.append({"filename": "a.mp4", "label": 0.2})
    journal.file.write('{"filename": "b.mp4", "la')  # killed mid-write
    journal.file.close()
    again = Journal(path, {"run": 1})
    finished = again.read()
    assert finished == {"a.mp4": {"filename": "a.mp4", "label": 0.2}}
    again.open(finished)
    assert len(path.read_text().splitlines()) == 2  # the torn line is gone from the file too
    again.append({"filename": "b.mp4", "label": 0.7})
    again.close(finished=False)
    assert set(Journal(path, {"run": 1}).read()) == {"a.mp4", "b.mp4"}
    assert Journal(path, {"run": 2}).read() == {}  # another run's journal is not reused


@pytest.mark.slow
def test_sigkill_and_restart_loses_and_duplicates_nothing(small_videos, ensemble_path, tmp_path):
    expected, _ = run_kernel(small_videos, tmp_path / "whole", ensemble_path, "--frames-per-video", "8")
    out, report = tmp_path / "killed" / "submission.csv", tmp_path / "killed" / "report.jsonl"
    journal = out.with_name("submission.csv.progress.jsonl")
    command = [sys.executable, str(KERNEL), "--videos", str(small_videos), "--out", str(out),
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
    done_before = sum(1 for line in journal.read_text().splitlines()[1:] if json_or_none(line))
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
