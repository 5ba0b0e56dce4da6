"""inference.submission: every video a row, in the sample submission's order, the file replaced atomically."""
from __future__ import annotations

import pytest

from inference.submission import submission_order, write_submission
from tests.helpers import read_rows


def test_rows_follow_the_sample_submission_and_keep_its_videos(tmp_path):
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("filename,label\nb.mp4,0.5\nmissing.mp4,0.5\na.mp4,0.5\n")
    assert submission_order(["a.mp4", "b.mp4", "c.mp4"], sample) == ["b.mp4", "missing.mp4", "a.mp4", "c.mp4"]


def test_submission_is_replaced_atomically(tmp_path):
    out = tmp_path / "submission.csv"
    write_submission(out, [("a.mp4", 0.25)])
    with pytest.raises(ValueError):
        write_submission(out, [("a.mp4", 0.75), ("b.mp4", "not a number")])
    assert read_rows(out) == {"a.mp4": 0.25}  # the old file is untouched by the failed write
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]
