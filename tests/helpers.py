"""Running the kernel in-process and reading what it wrote."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import kernel


def read_rows(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(list(row) == ["filename", "label"] for row in rows)
    return {row["filename"]: float(row["label"]) for row in rows}


def read_report(path: Path, ignored: bool = False) -> dict[str, dict]:
    """The report's lines by file name: the videos', or (ignored=True) those of the files the kernel skipped."""
    entries = map(json.loads, path.read_text().splitlines())
    return {entry["filename"]: entry for entry in entries if ("ignored" in entry) == ignored}


def run_kernel(videos: Path, out_dir: Path, ensemble: Path, *extra: str) -> tuple[dict, dict]:
    out, report = out_dir / "submission.csv", out_dir / "report.jsonl"
    assert kernel.main(["--videos", str(videos), "--out", str(out), "--report", str(report),
                        "--ensemble", str(ensemble), *extra]) == 0
    return read_rows(out), read_report(report)
