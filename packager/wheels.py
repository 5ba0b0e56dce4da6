"""Wheels for the kernel's runtime pins, for the target Python and platform, through a persistent cache.

Resolution: `pip install --dry-run --ignore-installed --target T --only-binary=:all: --python-version X.Y
--implementation cp --platform ... --report R` gives the full dependency closure (name, version, URL, sha256)
without installing anything; it is cached per input (pins, Python, platforms, index options), so a rebuild
needs neither the network nor pip. Files missing from the cache are fetched with `pip download --no-deps` by
URL and hash-checked; the bundle gets hard links to the cached files (copies across file systems).

Image-aware bundles (`--image-packages FILE`, the image's `pip list --format=freeze`): kernel.py's rule
(`kernel.choose`) says which pins the image satisfies; only the others ship, with the part of their closure the
image lacks or has at a version their requirements exclude.

Platform tags: the target (Kaggle's image, glibc >= 2.28) accepts every manylinux tag up to 2_28, and pip
does not expand `manylinux_2_28` to the older ones by itself: name them all. The four usual tags (2_28, 2_27,
2_17, 2014) are not enough: nvidia-nccl-cu13 2.30.7 (a torch 2.14.1 dependency) is tagged manylinux_2_18 only,
so pip finds no wheel for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

import kernel
from kernel import canonical_name
from packager import REPO_ROOT, PackagingError
from packager.manifest import dump_json, sha256_many

ARCH = "x86_64"
PLATFORMS = tuple(f"manylinux_2_{minor}_{ARCH}" for minor in range(28, 16, -1)) + tuple(
    f"{legacy}_{ARCH}" for legacy in ("manylinux2014", "manylinux2010", "manylinux1"))
TARGETS = ("gpu", "cpu")
GPU_SWAPS = {"onnxruntime": "onnxruntime-gpu"}  # CPU distribution -> its CUDA build (same import name)
RESOLUTION_FORMAT = 2  # 2: each wheel's requirements recorded


def default_cache_dir() -> Path:
    """$PACKAGER_WHEEL_CACHE, else artifacts/cache/wheels in the repository (one pool for every target)."""
    return Path(os.environ.get("PACKAGER_WHEEL_CACHE") or REPO_ROOT / "artifacts" / "cache" / "wheels")


def requirement_name(requirement: str) -> str:
    return canonical_name(re.split(r"[=<>!~;\[ @]", requirement.strip(), maxsplit=1)[0])


@dataclass(frozen=True)
class Wheel:
    name: str      # canonical distribution name
    version: str
    filename: str
    url: str
    sha256: str | None
    requires: tuple[str, ...] = ()  # its Requires-Dist lines, markers included


@dataclass(frozen=True)
class Resolution:
    python_version: str
    target: str
    platforms: tuple[str, ...]
    requirements: tuple[str, ...]  # what the bundle's requirements.txt pins (after the target's swaps)
    notes: tuple[str, ...]         # e.g. which distribution replaced which
    wheels: tuple[Wheel, ...]      # the whole closure, sorted by file name


def read_pins(path: Path) -> list[kernel.Pin]:
    """The pins of a requirements file (name==version, with the image versions kernel.py keeps), order kept."""
    if not path.is_file():
        raise PackagingError(f"{path} is missing (the kernel's runtime pins)")
    try:
        pins = kernel.read_pins(path)
    except ValueError as error:
        raise PackagingError(f"{error}: a runtime pin is exact, the image versions kept go in an "
                             f"`# {kernel.KEEP_NOTE} RANGE` comment") from None
    if not pins:
        raise PackagingError(f"{path} pins no requirement")
    return pins


def bundle_pins(resolution: Resolution, pins: list[kernel.Pin]) -> list[kernel.Pin]:
    """The resolution's pins (after the target's swaps), each with the image versions its source pin keeps."""
    keeps = {}
    for pin in pins:
        name = canonical_name(pin.name)
        keeps[name] = keeps[canonical_name(GPU_SWAPS.get(name, name))] = pin.keep
    return [kernel.Pin(requirement_name(r), r.split("==", 1)[1].strip(), keeps.get(requirement_name(r)))
            for r in resolution.requirements]


def target_args(python_version: str, platforms=PLATFORMS) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        args += ["--platform", platform]
    return args


def _pip(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, **kwargs)


def unsatisfied_requirements(stderr: str) -> list[str]:
    """The requirements pip's error output (`stderr`) says it found no (binary) distribution for, sorted."""
    names = re.findall(r"No matching distribution found for (\S+)", stderr)
    names += re.findall(r"Could not find a version that satisfies the requirement (\S+)", stderr)
    return sorted(set(n.rstrip(";") for n in names))


def available_versions(name: str, python_version: str, index_args: list[str], platforms=PLATFORMS) -> list[str]:
    """Versions of `name` with a binary wheel for the target, as pip lists them for an impossible pin."""
    with tempfile.TemporaryDirectory(prefix="packager-probe-") as scratch:
        process = _pip(["download", "--no-deps", *target_args(python_version, platforms), *index_args,
                        "-d", scratch, f"{name}==0+packager.probe"])
    found = re.search(r"\(from versions: ([^)]*)\)", process.stderr)
    if not found or found.group(1).strip() == "none":
        return []
    return [v.strip() for v in found.group(1).split(",") if v.strip()]


def nearest_version(wanted: str, available: list[str]) -> str | None:
    """`wanted` if available; else the highest release of the same major.minor; else the highest below it;
    else the lowest above it. Pre-releases are never picked."""
    releases = sorted({v for v in available if not Version(v).is_prerelease}, key=Version)
    if not releases:
        return None
    target = Version(wanted)
    if any(Version(v) == target for v in releases):
        return next(v for v in releases if Version(v) == target)
    same_minor = [v for v in releases if Version(v).release[:2] == target.release[:2]]
    below = [v for v in releases if Version(v) < target]
    above = [v for v in releases if Version(v) > target]
    return (same_minor or below or [None])[-1] or above[0]


def target_requirements(requirements: list[str], target: str, python_version: str,
                        index_args: list[str]) -> tuple[list[str], list[str]]:
    """The pins for a target: for `gpu`, onnxruntime==V becomes onnxruntime-gpu at V or the nearest version
    that has a wheel for the target. Returns (requirements, notes)."""
    if target not in TARGETS:
        raise PackagingError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    if target == "cpu":
        return list(requirements), []
    result, notes = [], []
    for requirement in requirements:
        name = requirement_name(requirement)
        pinned = re.fullmatch(r"\s*[A-Za-z0-9_.-]+\s*==\s*([A-Za-z0-9_.+!-]+)\s*", requirement)
        if name not in GPU_SWAPS:
            result.append(requirement)
            continue
        swap = GPU_SWAPS[name]
        if not pinned:
            raise PackagingError(f"{requirement}: the gpu target needs it pinned (name==version) to pick {swap}")
        wanted = pinned.group(1)
        available = available_versions(swap, python_version, index_args)
        chosen = nearest_version(wanted, available)
        if chosen is None:
            raise PackagingError(f"{swap} has no binary wheel for Python {python_version} on manylinux {ARCH} "
                                 f"(needed to replace {requirement} for the gpu target)")
        result.append(f"{swap}=={chosen}")
        notes.append(f"{requirement} replaced by {swap}=={chosen} (its CUDA build, same `import onnxruntime`)"
                     + ("" if chosen == wanted else f"; {wanted} has no wheel for the target, {chosen} is nearest"))
    return result, notes


def resolve(requirements: list[str], python_version: str, index_args: list[str],
            platforms=PLATFORMS) -> list[Wheel]:
    """The closure of `requirements` as binary wheels for the target (no download of the wheels themselves)."""
    with tempfile.TemporaryDirectory(prefix="packager-resolve-") as scratch:
        report = Path(scratch) / "report.json"
        process = _pip(["install", "--dry-run", "--ignore-installed", "--quiet", "--target", str(Path(scratch) / "t"),
                        *target_args(python_version, platforms), *index_args, "--report", str(report),
                        *requirements])
        if process.returncode != 0 or not report.is_file():
            missing = unsatisfied_requirements(process.stderr)
            detail = "\n".join(line for line in process.stderr.splitlines() if line.startswith("ERROR"))
            if missing:
                raise PackagingError(
                    f"no binary wheel for {', '.join(missing)} (Python {python_version}, manylinux {ARCH}); "
                    f"the bundle takes wheels only, never sdists:\n{detail}")
            raise PackagingError(f"pip could not resolve the runtime pins for Python {python_version}:\n"
                                 f"{process.stderr[-4000:]}")
        installs = json.loads(report.read_text())["install"]
    wheels = []
    for item in installs:
        info = item["download_info"]
        filename = unquote(Path(urlparse(info["url"]).path).name)
        name = canonical_name(item["metadata"]["name"])
        if not filename.endswith(".whl"):
            raise PackagingError(f"{name}=={item['metadata']['version']} resolved to {filename}, not a wheel: "
                                 "the bundle takes binary wheels only")
        digest = (info.get("archive_info") or {}).get("hashes", {}).get("sha256")
        wheels.append(Wheel(name, item["metadata"]["version"], filename, info["url"], digest,
                            tuple(item["metadata"].get("requires_dist", []))))
    return sorted(wheels, key=lambda w: w.filename)


def _resolution_file(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "resolved" / f"{key['python_version']}-{key['target']}-{digest}.json"


def resolve_cached(requirements: list[str], python_version: str, target: str, cache_dir: Path,
                   index_args: list[str], refresh: bool = False, log=print) -> Resolution:
    """The target's pins and their closure, from the cache when these inputs were resolved before."""
    key = {"format": RESOLUTION_FORMAT, "requirements": requirements, "python_version": python_version,
           "target": target, "platforms": list(PLATFORMS), "index_args": index_args}
    path = _resolution_file(cache_dir, key)
    if path.is_file() and not refresh:
        data = json.loads(path.read_text())
        log(f"wheels: resolution cached in {path}")
        return Resolution(python_version, target, tuple(PLATFORMS), tuple(data["requirements"]),
                          tuple(data["notes"]), tuple(Wheel(**{**w, "requires": tuple(w["requires"])})
                                                      for w in data["wheels"]))
    pins, notes = target_requirements(requirements, target, python_version, index_args)
    for note in notes:
        log(f"wheels: {note}")
    wheels = resolve(pins, python_version, index_args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_json({"key": key, "requirements": pins, "notes": notes,
                               "wheels": [asdict(w) for w in wheels]}))
    log(f"wheels: resolved {len(wheels)} wheels for Python {python_version} ({target}); recorded in {path}")
    return Resolution(python_version, target, tuple(PLATFORMS), tuple(pins), tuple(notes), tuple(wheels))


def read_image_packages(path: Path) -> dict[str, str | None]:
    """{canonical name: version} from an image's `pip list --format=freeze` (or `pip freeze`) output.

    `name @ URL` lines give the version of the wheel file they name, else None; comments, options and editable
    installs are skipped.
    """
    if not path.is_file():
        raise PackagingError(f"image package list {path} is missing")
    packages: dict[str, str | None] = {}
    for line in path.read_text(errors="replace").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        pinned = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*===?\s*(\S+)", line)
        if pinned:
            packages[canonical_name(pinned[1])] = pinned[2]
            continue
        direct = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*@\s*(\S+)", line)
        if direct:
            wheel = re.fullmatch(r"([^-/]+)-([^-/]+)-.*\.whl", unquote(direct[2].rsplit("/", 1)[-1]))
            packages[canonical_name(direct[1])] = wheel[2] if wheel else None
    if not packages:
        raise PackagingError(f"{path} lists no package: expected the output of `pip list --format=freeze`")
    return packages


def target_environment(python_version: str) -> dict[str, str]:
    """Marker variables of the target (Kaggle's Linux x86_64 CPython), no extras."""
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": ARCH,
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def image_satisfies(requirement: Requirement, image: dict[str, str | None]) -> bool:
    """Whether the image has the required distribution at a version the requirement allows (unknown: no)."""
    version = image.get(canonical_name(requirement.name))
    return version is not None and kernel.version_in(version, str(requirement.specifier))


def for_image(resolution: Resolution, pins: list[kernel.Pin],
              image: dict[str, str | None]) -> tuple[Resolution, dict[str, str]]:
    """The resolution cut to what the image needs: the pins it does not satisfy by kernel.py's rule, and the
    dependencies of a shipped wheel the image lacks or has at a version the requirement excludes.

    Returns it and {pin name: the image's version} of the pins left to the image.
    """
    choices = [kernel.choose(pin, kernel.find_installed(pin.name, image.get), shipped=True) for pin in pins]
    by_name = {wheel.name: wheel for wheel in resolution.wheels}
    environment = target_environment(resolution.python_version)
    shipped: set[str] = set()
    todo = [canonical_name(c.pin.name) for c in choices if c.action == "install"]
    while todo:
        name = todo.pop()
        if name in shipped:
            continue
        shipped.add(name)
        for line in by_name[name].requires:
            try:
                requirement = Requirement(line)
            except InvalidRequirement as error:
                raise PackagingError(f"{by_name[name].filename}: cannot read its requirement {line!r}: {error}")
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            dependency = canonical_name(requirement.name)
            if dependency in by_name and not image_satisfies(requirement, image):  # (pip resolved it for the target)
                todo.append(dependency)
    wheels = tuple(wheel for wheel in resolution.wheels if wheel.name in shipped)
    left = {c.pin.name: c.found[1] for c in choices if c.action == "keep" and c.pin.name not in shipped}
    return replace(resolution, wheels=wheels), left


def fetch(resolution: Resolution, cache_dir: Path, index_args: list[str], log=print) -> dict[str, str]:
    """Make sure every wheel of the resolution is in the cache with its sha256; returns {file name: sha256}."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = list(resolution.wheels)
    for attempt in (1, 2):
        missing = [w for w in wheels if not (cache_dir / w.filename).is_file()]
        if missing:
            log(f"wheels: downloading {len(missing)} of {len(wheels)} into {cache_dir}")
            process = _pip(["download", "--no-deps", *target_args(resolution.python_version, resolution.platforms),
                            *index_args, "-d", str(cache_dir), *[w.url for w in missing]])
            if process.returncode != 0:
                raise PackagingError(f"pip download failed for {', '.join(w.filename for w in missing)}:\n"
                                     f"{process.stderr[-4000:]}")
            still = [w.filename for w in missing if not (cache_dir / w.filename).is_file()]
            if still:
                raise PackagingError(f"pip download left no {', '.join(still)} in {cache_dir}")
        digests = dict(zip([w.filename for w in wheels], sha256_many([cache_dir / w.filename for w in wheels])))
        bad = [w for w in wheels if w.sha256 and digests[w.filename] != w.sha256]
        if not bad:
            return digests
        for wheel in bad:
            log(f"wheels: {wheel.filename} in the cache has sha256 {digests[wheel.filename]}, the index says "
                f"{wheel.sha256}; downloading it again")
            (cache_dir / wheel.filename).unlink()
    raise PackagingError("sha256 mismatch after a fresh download: " + ", ".join(w.filename for w in bad))


def link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
