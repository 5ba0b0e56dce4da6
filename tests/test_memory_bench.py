"""bench.memory: the kernel's peak RSS for several numbers of videos (issue 6), run here on tiny clips.

Only the mechanics are checked (every count measured, every video a row, plausible figures): the memory and
time targets live in the benchmark's output, not in unit tests.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from bench import memory
from zootools.sources import REPO_ROOT

TINY = ["--width", "640", "--height", "360", "--seconds", "1", "--frames-per-video", "8", "--distinct", "2"]


@pytest.fixture(scope="module")
def manifest(request) -> Path:
    """$DEEPFAKE_ENSEMBLE, else the manifest `make` builds, else one built for this session (conftest)."""
    if "DEEPFAKE_ENSEMBLE" in os.environ:
        return Path(os.environ["DEEPFAKE_ENSEMBLE"])
    built = REPO_ROOT / "artifacts" / "weights" / "ensemble.json"
    return built if built.is_file() else request.getfixturevalue("ensemble_path")


@pytest.fixture(scope="module")
def tiny_run(manifest, tmp_path_factory) -> tuple[dict, str]:
    workdir = tmp_path_factory.mktemp("memory")
    out = workdir / "memory.json"
    assert memory.main(["--counts", "2,4", *TINY, "--ensemble", str(manifest), "--workdir", str(workdir),
                        "--json", str(out)]) == 0
    return json.loads(out.read_text()), str(workdir)


@pytest.mark.slow
def test_each_count_is_measured_in_its_own_kernel_run(tiny_run):
    data, _ = tiny_run
    runs = {run["videos"]: run for run in data["runs"]}
    assert sorted(runs) == [0, 2, 4]  # the start-up baseline, then the counts
    for count in (2, 4):
        run = runs[count]
        assert run["returncode"] == 0
        assert run["peak_rss_mib"] > 100, "torch alone takes more: the RSS of the wrong process was read"
        assert run["wall_s"] > 0 and run["s_per_video"] > 0
        with open(run["submission"], newline="") as f:
            names = [row["filename"] for row in csv.DictReader(f)]
        assert len(names) == len(set(names)) == run["rows"] == count
        assert len(Path(run["report"]).read_text().splitlines()) == count
        assert run["timeline"], "the RSS was never polled"
    assert runs[0]["rows"] == 0 and runs[0]["peak_rss_mib"] > 100
    assert runs[2]["growth_mib"] == 0
    assert runs[4]["growth_mib"] == pytest.approx(runs[4]["peak_rss_mib"] - runs[2]["peak_rss_mib"])


@pytest.mark.slow
def test_json_holds_the_settings_the_machine_and_the_working_set(tiny_run):
    data, workdir = tiny_run
    settings = data["settings"]
    assert (settings["counts"], settings["width"], settings["height"], settings["frames_per_video"]) == \
        ([2, 4], 640, 360, 8)
    assert len(settings["clips"]) == 2 and all(Path(c).is_file() for c in settings["clips"])
    assert all(Path(c).is_relative_to(workdir) for c in settings["clips"])
    assert data["machine"]["cpu_count"] >= 1
    working_set = data["working_set"]
    assert working_set["bytes_per_frame"] == 640 * 360 * 3
    assert working_set["frames_decoded_per_clip"] >= 8
    assert working_set["bytes"] == (working_set["clips_in_flight"] * working_set["frames_decoded_per_clip"]
                                    * working_set["bytes_per_frame"])


def test_videos_are_distinct_names_linked_to_the_few_clips(tmp_path):
    clips = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for clip in clips:
        clip.write_bytes(b"x")
    folder = memory.linked_videos(tmp_path / "videos", clips, 5)
    videos = sorted(folder.iterdir())
    assert len({v.name for v in videos}) == 5
    assert all(v.is_symlink() for v in videos)
    assert [v.resolve() for v in videos] == [clips[i % 2].resolve() for i in range(5)]
    memory.linked_videos(tmp_path / "videos", clips, 2)  # a re-run starts from a fresh folder
    assert len(list(folder.iterdir())) == 2 and all(c.is_file() for c in clips)


@pytest.mark.slow
def test_a_failing_kernel_stops_the_benchmark_with_its_log(tmp_path):
    broken = tmp_path / "ensemble.json"
    broken.write_text("{}")
    with pytest.raises(SystemExit) as stopped:
        memory.main(["--counts", "1", *TINY, "--ensemble", str(broken), "--workdir", str(tmp_path),
                     "--no-baseline", "--no-working-set"])
    message = str(stopped.value.code)
    assert "the kernel failed with 1 videos" in message and "kernel.log" in message
