"""The three anchors' whole ensembles, as stand-ins in the teams' own checkpoint layouts (bench.standins --team),
end to end: imported with one command each, run by the kernel on the shared DFDC sample and by the local LB, every
model scoring every video with the frames, faces and pools its team used."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.manifests import manifest_copy
from bench.standins import TEAMS, team_ensemble
from tests.helpers import run_kernel
from tests.test_local_lb import lb

# Fewer faces than the teams took (25 for \WM/, every 2nd frame at 15 fps for NTech), so three ensembles fit the suite.
QUICK = {"limit": 3}


@pytest.fixture(scope="module")
def teams(ensemble_path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("teams")
    quick = {}
    for team in TEAMS:
        manifest = team_ensemble(team, ensemble_path, folder / team)
        (folder / team / "quick").mkdir()
        quick[team] = manifest_copy(manifest, folder / team / "quick", shorten)
    return quick


def shorten(data: dict) -> None:
    for entry in data["models"]:
        entry["input"].update(QUICK)
    data["detector"]["downscale"] = min(data["detector"].get("downscale", 0.5), 0.5)


@pytest.fixture(scope="module")
def videos(shared, tmp_path_factory) -> Path:
    """Two of the shared DFDC clips, one with two people."""
    folder = tmp_path_factory.mktemp("dfdc_two")
    for name in ("dfdc_train_part_10/yhffcuhhjy.mp4", "dfdc_train_part_10/widuwuoiur.mp4"):
        (folder / Path(name).name).symlink_to(shared / "data" / "dfdc_sample" / name)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("team", sorted(TEAMS))
def test_each_teams_whole_ensemble_runs_in_the_kernel(teams, videos, tmp_path, team):
    data = json.loads(teams[team].read_text())
    names = [entry["name"] for entry in data["models"]]
    assert sorted(names) == sorted(member.name for member in TEAMS[team][0])
    rows, report = run_kernel(videos, tmp_path, teams[team], "--frames-per-video", "8")
    assert sorted(rows) == ["widuwuoiur.mp4", "yhffcuhhjy.mp4"]
    for entry in report.values():
        assert entry["error"] is None and not entry["fallback"]
        for name in names:  # every model scores every video, at most QUICK["limit"] inputs per track
            counts = [len(track) for track in entry["frame_scores"][name]]
            assert any(counts) and entry["model_scores"][name] is not None
            frames_each = 7 if name == "ntech_seq" else 1  # the sequence model scores each of its 7 frames
            assert all(count <= QUICK["limit"] * frames_each for count in counts)
        for pool in data["blend"]["pools"]:
            assert entry["model_scores"][pool["name"]] == pytest.approx(entry["blended"])
    if team == "wm":  # RetinaFace's landmarks reached the aligning models
        assert data["detector"]["arch"] == "retinaface_mobilenet"
        assert all(entry["input"]["align"] == "wm" for entry in data["models"])


@pytest.mark.slow
def test_a_pooled_ensemble_scores_on_the_local_lb_as_one_member(teams, shared, tmp_path):
    dirs = {"cache": tmp_path / "cache", "history": tmp_path / "history.jsonl", "root": tmp_path}
    result = lb("dfdc", teams["ntech"], dirs, "--limit", "2")
    assert set(result["scores"]) == {"ntech", "blend"}  # the pool is the blend's one member
    assert result["computed"] == 2 * 3 and result["scores"]["blend"] == result["scores"]["ntech"]
