"""Write the submission: every video a row, in the sample submission's order, replaced atomically."""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path


def submission_order(filenames: list[str], sample_submission: Path | None) -> list[str]:
    """The sample submission's order (its videos first, even missing ones), then any other videos."""
    if sample_submission is None or not sample_submission.is_file():
        return filenames
    with open(sample_submission, newline="") as f:
        listed = [row["filename"] for row in csv.DictReader(f)]
    listed_set = set(listed)
    return listed + [name for name in filenames if name not in listed_set]


def write_submission(path: Path, rows: list[tuple[str, float]]) -> None:
    """Write filename,label atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape writes a file name that is not valid UTF-8 back as the bytes it has on disk
    with tempfile.NamedTemporaryFile("w", newline="", dir=path.parent, prefix=".submission-", suffix=".csv",
                                     delete=False, errors="surrogateescape") as f:
        try:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            writer.writerows((name, f"{label:.6f}") for name, label in rows)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            os.unlink(f.name)
            raise
    os.replace(f.name, path)
