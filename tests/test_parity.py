"""Each source's preset against that team's own preprocessing (tests/team_reference.py: their arithmetic with the
libraries they called), on real faces of ../shared/data: what `python -m zootools show-input` gives the model must
be their input, pixel for pixel where both make the same OpenCV call."""
from __future__ import annotations

import pytest

from tests import team_reference
from tests.team_reference import CASES, FACES, REAL, differences, preset_manifest

SAME_CALLS = [label for label in CASES if label != "wm"]
# What each preset was before issue 21, and the pixels it changes: the check must see the difference.
BEFORE = {
    "selimsef": {"rounding": "round"},
    "ntech model 2": {"interpolation": ["area", "linear"], "margin_cut": "floor"},
    "ntech model 1": {"pad": "zero"},
    "polimi": {"margin_sides": [1, 1, 1, 1], "margin_of": "side", "margin_cut": "floor", "resize": "letterbox",
               "interpolation": ["area", "linear"]},
    "medics mc3 224": {"precision": "uint8"},
    "medics resnet34": {"precision": "uint8"},
}


@pytest.fixture(scope="module")
def manifest(shared, tmp_path_factory):
    return preset_manifest(tmp_path_factory.mktemp("presets"))


@pytest.mark.parametrize("label", SAME_CALLS)
def test_the_preset_gives_the_teams_pixels(manifest, label):
    rows = differences(manifest, label)
    assert len(rows) == len(FACES) >= 4
    for what, difference, same_picture, scale in rows:
        assert same_picture, (label, what)
        # the same pixels; normalised by one multiply-add instead of their divide: float32 rounding only
        assert difference <= 1e-6 * (1 + scale), (label, what, difference)


def test_wm_xception_input_is_within_the_bilinear_difference(manifest):
    """\\WM/ resized a float tensor with F.interpolate, the kit resizes 8-bit pixels with OpenCV: both bilinear
    with half-pixel centres, apart by OpenCV's rounding (1/255 is 0.0078 in their units)."""
    rows = differences(manifest, "wm", REAL)
    assert len(rows) >= 4 and max(row[1] for row in rows) <= 0.05


@pytest.mark.parametrize("label", list(BEFORE))
def test_the_presets_before_issue_21_fed_other_pixels(shared, tmp_path, label):
    manifest = preset_manifest(tmp_path, {label: BEFORE[label]})
    rows = differences(manifest, label)
    assert sum(not row[2] for row in rows) >= 4, rows
    assert max(row[1] for row in rows) > 0.01


def test_the_reference_rules_reproduce_the_documented_examples():
    """ANCHOR_CHECKPOINTS.md's worked examples, so the loops the rules are checked against are the teams' rules."""
    assert team_reference.confident([0.9] * 9 + [0.5] * 11) == pytest.approx(0.68)
    assert team_reference.confident([0.95] * 13 + [0.3] * 19) == pytest.approx(0.95)
    assert team_reference.confident([0.9] * 7 + [0.4] * 9) == pytest.approx(0.619, abs=5e-4)
    assert team_reference.sharpen([0.6] * 10 + [0.2]) == pytest.approx(0.5668, abs=5e-5)
    assert team_reference.sharpen([0.9, 0.5]) == pytest.approx(0.989878, abs=5e-7)
