"""The offline Kaggle bundle: `python -m packager build | verify | push`.

build   dist/dataset (runtime code traced from kernel.py, the ensemble and its checkpoints, wheels for the
        target Python and platform, requirements.txt, dataset-metadata.json, bundle-manifest.json) and
        dist/kernel (kernel.py, kernel-metadata.json); the same inputs give the same bytes.
verify  checks every file of the bundle manifest, then runs dist/kernel/kernel.py the way Kaggle does: in a
        fresh virtual env, network blocked, wheels self-installed from the bundle, on sample videos, and
        compares its submission with a local run of the repository's kernel.py.
push    uploads the dataset (`-r zip`, so its folders are not silently dropped) and pushes the kernel with the
        Kaggle CLI, or prints the commands when there are no credentials.
"""
from __future__ import annotations

# The runtime's values, packager's modules take them from here: the repository's root, and the competition whose
# folder Kaggle attaches the videos in.
from inference.cli import COMPETITION  # noqa: F401
from weights.manifest import ROOT as REPO_ROOT  # noqa: F401

FORMAT = 1  # bundle-manifest.json format
DATASET_DIR, KERNEL_DIR = "dataset", "kernel"
BUNDLE_MANIFEST = "bundle-manifest.json"
DATASET_METADATA, KERNEL_METADATA = "dataset-metadata.json", "kernel-metadata.json"
WHEELS_DIR = "wheels"
PLACEHOLDER_OWNER = "your-kaggle-username"


class PackagingError(Exception):
    """A bundle cannot be built, verified or pushed; the message names the file or requirement at fault."""
