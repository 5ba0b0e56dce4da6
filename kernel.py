#!/usr/bin/env python
"""Kaggle notebook entry point for deepfake detection: bootstrap the offline bundle, then run the runtime.

1. Find the bundle: the folder beside this file (a checkout of the repository), else an attached Kaggle
   dataset that holds the runtime package.
2. Settle each pin of the bundle's requirements.txt against the image: keep the image's version where it equals
   the pin, or lies in the range the pin declares after `image:`; install the bundle's wheel offline where not;
   stop, naming the package, where the bundle ships no wheel for a version the image has wrong.
3. Import the runtime package from the bundle and run its command line (`inference.cli`; `--help` lists it),
   with the version of each pinned package as used, and the process's start: the time budget counts from
   there, as Kaggle counts the notebook's time.

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
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

IMPORTED = time.perf_counter()  # where the OS does not say when the process began, the run counts from here
PROC_STAT = Path("/proc/self/stat")
KERNEL_DIR = Path(__file__).resolve().parent
KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))  # overridable so the bundle can be verified
RUNTIME = "inference"  # the runtime package: its folder marks a bundle
ENTRY = f"{RUNTIME}.cli"

# A distribution the image may have under another name, owning the same import package: installing ours beside
# it would mix two copies in one folder.
SAME_PACKAGE = {"onnxruntime-gpu": ("onnxruntime",), "onnxruntime": ("onnxruntime-gpu",),
                "opencv-python-headless": ("opencv-python", "opencv-contrib-python",
                                           "opencv-contrib-python-headless")}
KEEP_NOTE = "image:"  # after a pin, in a comment: the image versions kept in its place (a PEP 440 range, or any)
ANY_VERSION = "any"
PIN = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)\s*")


class Pin(NamedTuple):
    name: str
    version: str
    keep: str | None = None  # the image versions kept instead: a PEP 440 range or "any"; None: the pinned one only

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


class Choice(NamedTuple):
    pin: Pin
    found: tuple[str, str] | None  # (distribution, version) installed under the pin's or an equivalent name
    action: str                    # "keep", "install" or "stop"
    reason: str


def find_bundle() -> Path | None:
    """The folder holding the runtime package: beside this file, else an attached Kaggle dataset (up to three
    levels down, however Kaggle mounts it)."""
    marker = Path(RUNTIME) / "__init__.py"
    candidates = [KERNEL_DIR] + sorted(p.parents[1] for depth in ("*", "*/*", "*/*/*")
                                       for p in KAGGLE_INPUT.glob(f"{depth}/{marker}"))
    return next((folder for folder in candidates if (folder / marker).is_file()), None)


def read_pins(path: Path) -> list[Pin]:
    """The name==version lines of a requirements file, each with the image versions its comment keeps."""
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        requirement, _, comment = line.partition("#")
        if not requirement.strip():
            continue
        match = PIN.fullmatch(requirement)
        if not match:
            raise ValueError(f"{path}:{number}: {requirement.strip()!r} is not a pin (name==version)")
        keep = comment.split(KEEP_NOTE, 1)[1].strip() if KEEP_NOTE in comment else None
        pins.append(Pin(match[1], match[2], keep or None))
    return pins


def canonical_name(name: str) -> str:
    """A distribution name as pip compares them: lowercase, runs of -_. as one hyphen."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def find_installed(name: str, version_of: Callable[[str], str | None]) -> tuple[str, str] | None:
    """(distribution, version) of `name`, or of a distribution owning the same import package, where installed."""
    for candidate in (name, *SAME_PACKAGE.get(name, ())):
        version = version_of(candidate)
        if version is not None:
            return candidate, version
    return None


def version_in(version: str, specifier: str) -> bool:
    """Whether `version` lies in the PEP 440 `specifier`, local builds (2.14.1+cu130) and pre-releases included."""
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # an image without packaging still has pip's copy
        from pip._vendor.packaging.specifiers import SpecifierSet
    try:
        return SpecifierSet(specifier).contains(version, prereleases=True)
    except ValueError:  # a version PEP 440 cannot read: not one the pin vouches for
        return False


def choose(pin: Pin, found: tuple[str, str] | None, shipped: bool) -> Choice:
    """Keep the installed version, install the bundle's, or stop: the one rule, for this kernel and the build."""
    if found is None:
        return Choice(pin, found, "install", "not on the image")
    name, version = found
    if pin.keep == ANY_VERSION:
        return Choice(pin, found, "keep", "the image's (any version is kept)")
    if version_in(version, pin.keep or f"=={pin.version}"):
        return Choice(pin, found, "keep", f"the image's, within {pin.keep}" if pin.keep else "the image's, as pinned")
    wrong = f"{name} {version} on the image is " + (f"outside {pin.keep}" if pin.keep else f"not {pin.version}")
    if shipped:
        return Choice(pin, found, "install", wrong)
    return Choice(pin, found, "stop", f"{wrong}, and the bundle ships no {pin.requirement} wheel")


def bundled_wheels(wheels: Path) -> set[tuple[str, str]]:
    """(canonical name, version) of every wheel file in the folder."""
    fields = (path.name.split("-") for path in wheels.glob("*.whl"))
    return {(canonical_name(parts[0]), parts[1]) for parts in fields if len(parts) >= 5}


def plan(bundle: Path, version_of: Callable[[str], str | None]) -> list[Choice]:
    """What to do with each pin of the bundle's requirements.txt, given the installed versions."""
    shipped = bundled_wheels(bundle / "wheels")
    return [choose(pin, find_installed(pin.name, version_of), (canonical_name(pin.name), pin.version) in shipped)
            for pin in read_pins(bundle / "requirements.txt")]


def bundle_python(bundle: Path) -> str | None:
    """The Python version the bundle's wheels were built for, from its bundle-manifest.json."""
    try:
        return json.loads((bundle / "bundle-manifest.json").read_text()).get("python_version")
    except (OSError, ValueError, AttributeError):
        return None


def install_bundled_wheels(bundle: Path) -> dict[str, str] | None:
    """Settle each pin of the bundle against the image (see `choose`), installing offline from its wheels/ what
    must change; returns {distribution: version} as used, or None for a folder without pins and wheels.

    A package the image has at an acceptable version is kept: reinstalling torch on Kaggle costs minutes.
    """
    requirements, wheels = bundle / "requirements.txt", bundle / "wheels"
    if not (requirements.is_file() and wheels.is_dir()):
        return None
    choices = plan(bundle, installed_version)
    stops = [f"{choice.pin.name}: {choice.reason}" for choice in choices if choice.action == "stop"]
    if stops:  # before any video is read: a run on the wrong versions would submit wrong predictions
        sys.exit(f"cannot run on this image: {'; '.join(stops)} (rebuild the bundle with this image's package "
                 "list: `python -m packager build --image-packages FILE`)")
    installs = [choice for choice in choices if choice.action == "install"]
    if installs:
        install(bundle, installs)
    return versions_in_use(choices)


def install(bundle: Path, installs: list[Choice]) -> None:
    """pip-install the chosen pins offline from the bundle's wheels, replacing an equivalent distribution."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    built_for = bundle_python(bundle)
    if built_for not in (None, running):  # pip would only say "no matching distribution"
        sys.exit(f"the bundle's wheels are for Python {built_for}, this is Python {running}: "
                 f"rebuild it with `python -m packager build --python-version {running}`")
    wheels, requirements = bundle / "wheels", [choice.pin.requirement for choice in installs]
    others = [choice.found[0] for choice in installs if choice.found and choice.found[0] != choice.pin.name]
    if others:  # two distributions owning one import folder would break both
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *others])
    print(f"installing {len(requirements)} packages offline from {wheels}: {' '.join(requirements)}", flush=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
               "--disable-pip-version-check", *requirements]
    if subprocess.run(command).returncode != 0:
        sys.exit(f"offline install from {wheels} failed (see pip's message above): {' '.join(requirements)}")
    importlib.invalidate_caches()


def versions_in_use(choices: list[Choice]) -> dict[str, str]:
    """{distribution: version} of each pin as now installed, each printed with where it came from."""
    used = {}
    for choice in choices:
        name, version = find_installed(choice.pin.name, installed_version) or (choice.pin.name, "missing")
        source = f"from the bundle ({choice.reason})" if choice.action == "install" else choice.reason
        print(f"package {name} {version}: {source}", flush=True)
        used[name] = version
    return used


def import_runtime(bundle: Path | None) -> ModuleType:
    """The runtime's command-line module, imported from the bundle folder."""
    if bundle is not None and str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    return importlib.import_module(ENTRY)


def process_started(clock: Callable[[], float] = time.perf_counter) -> float | None:
    """When the OS started this process, on `clock`'s scale (now less the process's age, from /proc on Linux);
    None where unknown."""
    try:
        # After the command name in parentheses (which may hold spaces and parentheses), field 22 of the stat line:
        # the process's start in clock ticks since boot, on the clock CLOCK_BOOTTIME reads.
        ticks = int(PROC_STAT.read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc, or no CLOCK_BOOTTIME (not Linux)
        return None
    return clock() - age if age >= 0 else None


def run_started() -> float:
    """When the run began, on time.perf_counter: the process's start, as Kaggle counts a notebook's time (the
    interpreter, the imports and the install included); this file's import where the OS does not say."""
    started = process_started()
    if started is None:
        print(f"the process's start is unknown here ({PROC_STAT} unreadable): the time budget counts from "
              "kernel.py's import", flush=True)
        return IMPORTED
    return started


def main(argv: list[str] | None = None) -> int:
    """Bootstrap, then run the runtime's command line with `argv`, its time budget counted from the process's
    start."""
    started = run_started()
    bundle = find_bundle()
    packages = install_bundled_wheels(bundle) if bundle is not None else None
    return import_runtime(bundle).main(argv, packages=packages, kaggle_input=KAGGLE_INPUT, started=started)


if __name__ == "__main__":
    sys.exit(main())
