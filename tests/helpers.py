"""Running the kernel's runtime in-process and reading what it wrote, and the small clips several tests share."""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import inference.cli
from bench.samples import SampleSpec, make_samples
from weights import DetectorSpec, Ensemble, InputSpec, ModelSpec


def read_rows(path: Path) -> dict[str, float]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(list(row) == ["filename", "label"] for row in rows)
    return {row["filename"]: float(row["label"]) for row in rows}


def read_report(path: Path, ignored: bool = False) -> dict[str, dict]:
    """The report's lines by file name: the videos', or (ignored=True) those of the files the kernel skipped."""
    entries = map(json.loads, path.read_text().splitlines())
    return {entry["filename"]: entry for entry in entries if ("ignored" in entry) == ignored}


def run_kernel(videos: Path, out_dir: Path, ensemble: Path, *extra: str,
               clock: Callable[[], float] | None = None) -> tuple[dict, dict]:
    """`inference.cli.main` on a folder of videos (timed by `clock` when given); the rows and the report."""
    out, report = out_dir / "submission.csv", out_dir / "report.jsonl"
    argv = ["--videos", str(videos), "--out", str(out), "--report", str(report), "--ensemble", str(ensemble), *extra]
    assert (inference.cli.main(argv) if clock is None else inference.cli.main(argv, clock=clock)) == 0
    return read_rows(out), read_report(report)


def make_small_videos(folder: Path) -> Path:
    """Ten short 640x360 clips with one face each (and one without), quick to read."""
    specs = [SampleSpec(f"clip_{i:02d}.mp4", 640, 360, 1) for i in range(9)] + [SampleSpec("empty.mp4", 640, 360, 0)]
    make_samples(folder, seconds=1.0, specs=specs)
    return folder


def small_manifest(folder: Path, names: tuple[str, ...] = ("alpha", "beta")) -> Path:
    """A manifest of meso4 models with no weight files behind it (loading never opens checkpoints)."""
    models = tuple(ModelSpec(name=name, arch="meso4", checkpoint=f"{name}.pt", sha256="0" * 64,
                             input=InputSpec(size=256)) for name in names)
    detector = DetectorSpec(arch="blazeface", checkpoint="detector.pt", sha256="0" * 64, min_score=0.5)
    path = folder / "ensemble.json"
    Ensemble(root=folder, detector=detector, models=models).save(path)
    return path
