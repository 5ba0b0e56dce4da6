#!/usr/bin/env python
"""Kaggle notebook entry point for deepfake detection: bootstrap the offline bundle, then run the runtime.

1. Find the bundle: the folder beside this file (a checkout of the repository), else an attached Kaggle
   dataset that holds the runtime package.
2. Install, offline from the bundle's wheels, each pinned requirement the image lacks.
3. Import the runtime package from the bundle and run its command line (`inference.cli`; `--help` lists it).

Everything else lives in the runtime package; this file only bootstraps it, so it is all the notebook holds.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

KERNEL_DIR = Path(__file__).resolve().parent
KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))  # overridable so the bundle can be verified
RUNTIME = "inference"  # the runtime package: its folder marks a bundle
ENTRY = f"{RUNTIME}.cli"

# A distribution the image may have under another name, owning the same import package: installing ours beside
# it would mix two copies in one folder.
SAME_PACKAGE = {"onnxruntime-gpu": ("onnxruntime",), "onnxruntime": ("onnxruntime-gpu",),
                "opencv-python-headless": ("opencv-python", "opencv-contrib-python",
                                           "opencv-contrib-python-headless")}


def find_bundle() -> Path | None:
    """The folder holding the runtime package: beside this file, else an attached Kaggle dataset (up to three
    levels down, however Kaggle mounts it)."""
    marker = Path(RUNTIME) / "__init__.py"
    candidates = [KERNEL_DIR] + sorted(p.parents[1] for depth in ("*", "*/*", "*/*/*")
                                       for p in KAGGLE_INPUT.glob(f"{depth}/{marker}"))
    return next((folder for folder in candidates if (folder / marker).is_file()), None)


def is_installed(name: str) -> bool:
    """Whether the distribution, or one owning the same import package, is installed."""
    for candidate in (name, *SAME_PACKAGE.get(name, ())):
        try:
            importlib.metadata.version(candidate)
            return True
        except importlib.metadata.PackageNotFoundError:
            pass
    return False


def bundle_python(bundle: Path) -> str | None:
    """The Python version the bundle's wheels were built for, from its bundle-manifest.json."""
    try:
        return json.loads((bundle / "bundle-manifest.json").read_text()).get("python_version")
    except (OSError, ValueError, AttributeError):
        return None


def install_bundled_wheels(bundle: Path) -> None:
    """pip-install, offline from the bundle's wheels/, each pinned requirement whose package is not installed.

    A package the image already has is kept at its version: reinstalling torch on Kaggle costs minutes.
    """
    requirements, wheels = bundle / "requirements.txt", bundle / "wheels"
    if not (requirements.is_file() and wheels.is_dir()):
        return
    missing = []
    for line in requirements.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement and not is_installed(re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]):
            missing.append(requirement)
    if not missing:
        return
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    built_for = bundle_python(bundle)
    if built_for not in (None, running):  # pip would only say "no matching distribution"
        sys.exit(f"the bundle's wheels are for Python {built_for}, this is Python {running}: "
                 f"rebuild it with `python -m packager build --python-version {running}`")
    print(f"installing {len(missing)} packages offline from {wheels}: {' '.join(missing)}", flush=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
               "--disable-pip-version-check", *missing]
    if subprocess.run(command).returncode != 0:
        sys.exit(f"offline install from {wheels} failed (see pip's message above): {' '.join(missing)}")
    importlib.invalidate_caches()


def import_runtime(bundle: Path | None) -> ModuleType:
    """The runtime's command-line module, imported from the bundle folder."""
    if bundle is not None and str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    return importlib.import_module(ENTRY)


def main(argv: list[str] | None = None) -> int:
    """Bootstrap, then run the runtime's command line with `argv`."""
    bundle = find_bundle()
    if bundle is not None:
        install_bundled_wheels(bundle)
    return import_runtime(bundle).main(argv)


if __name__ == "__main__":
    sys.exit(main())
