"""`python -m packager build`: dist/dataset (what the kernel imports and installs) and dist/kernel (what runs)."""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import kernel as bootstrap
from packager import (
    BUNDLE_MANIFEST,
    COMPETITION,
    DATASET_DIR,
    DATASET_METADATA,
    KERNEL_DIR,
    KERNEL_METADATA,
    PLACEHOLDER_OWNER,
    REPO_ROOT,
    WHEELS_DIR,
    PackagingError,
)
from packager import wheels as wheel_tools
from packager.credentials import credential_like_files, credential_reason, default_owner
from packager.manifest import sha256_file, write_json, write_manifest
from packager.push import name_problems
from packager.trace import trace_runtime_modules
from weights.manifest import BUNDLED_ENSEMBLE, default_manifest

DEFAULT_DATASET_SLUG = "deepfake-kit-bundle"
DEFAULT_DATASET_TITLE = "Deepfake kit bundle"
DEFAULT_KERNEL_TITLE = "Deepfake kit inference"
SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
ZIP_WARNING_BYTES = 3 * 2**30  # Kaggle zips each folder on upload; zip64 starts at 4 GiB: warn well before
MACHINE_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9]*")  # such as NvidiaTeslaT4 or TpuV5E8


def slugify(title: str) -> str:
    """The slug Kaggle derives from a title: lowercase letters and digits joined by single hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


@dataclass
class BuildOptions:
    out: Path = Path("dist")
    ensemble: Path | None = None
    python_version: str = f"{sys.version_info.major}.{sys.version_info.minor}"
    target: str = "gpu"
    owner: str | None = None
    dataset_slug: str = DEFAULT_DATASET_SLUG
    dataset_title: str = DEFAULT_DATASET_TITLE
    kernel_slug: str | None = None
    kernel_title: str = DEFAULT_KERNEL_TITLE
    license: str = "other"
    repo: Path = REPO_ROOT                 # where kernel.py, the runtime packages and the pins come from
    requirements: Path | None = None      # default: <repo>/requirements-kernel.txt
    wheel_cache: Path | None = None       # default: $PACKAGER_WHEEL_CACHE or artifacts/cache/wheels
    index_args: list[str] = field(default_factory=list)  # extra pip options (--no-index, --find-links DIR)
    refresh: bool = False                 # resolve the pins again even when the resolution is cached
    image_packages: Path | None = None    # the image's `pip list --format=freeze`: ship only what it lacks
    accelerator: str | None = None        # kernel-metadata.json's machine_shape; None: Kaggle's default machine


@dataclass(frozen=True)
class EnsembleFile:
    path: str    # relative to the manifest's folder
    sha256: str
    named_by: str


def log(message: str) -> None:
    print(f"packager: {message}", flush=True)


def ensemble_files(manifest: Path) -> list[EnsembleFile]:
    """Every checkpoint and ONNX file the ensemble manifest names, with the sha256 it gives for it."""
    from weights import WeightsError, load_ensemble

    try:
        named = load_ensemble(manifest).files()
    except WeightsError as error:
        raise PackagingError(f"{error} (run `python -m zootools build`, or give --ensemble)") from None
    files: dict[str, EnsembleFile] = {}
    for label, path, digest in ((item.label, item.path, item.sha256) for item in named):
        if not isinstance(path, str) or not path or not digest:
            raise PackagingError(f"{manifest}: {label} names no file or no sha256 ({path!r}, {digest!r})")
        relative = PurePosixPath(path)
        if relative.is_absolute() or ".." in relative.parts or str(relative) != path.strip():
            raise PackagingError(f"{manifest}: {label} file {path!r} must be a plain path relative to the manifest")
        reason = credential_reason(path)
        if reason:
            raise PackagingError(f"{manifest}: refusing to bundle {path} named by {label}: it looks like a "
                                 f"credential ({reason})")
        if path in files and files[path].sha256 != digest:
            raise PackagingError(f"{manifest}: {path} is named with two different sha256 values")
        files.setdefault(path, EnsembleFile(path, digest, label))
    return [files[p] for p in sorted(files)]


def check_identity(options: BuildOptions) -> tuple[str, str, str]:
    """The owner, dataset id and kernel id; a PackagingError names every name the Kaggle client would refuse."""
    owner = options.owner or default_owner() or PLACEHOLDER_OWNER
    kernel_slug = options.kernel_slug or slugify(options.kernel_title)
    problems = [f"{what} {value!r} must be lowercase letters and digits joined by single hyphens"
                for what, value in (("dataset slug", options.dataset_slug), ("kernel slug", kernel_slug))
                if not SLUG.fullmatch(value)]
    if not OWNER.fullmatch(owner) or not 3 <= len(owner) <= 50:
        problems.append(f"owner {owner!r} is not a Kaggle username (3 to 50 letters, digits, '-' and '_')")
    problems += name_problems({"dataset slug": options.dataset_slug, "dataset title": options.dataset_title,
                               "kernel slug": kernel_slug, "kernel title": options.kernel_title})
    if options.accelerator is not None and not MACHINE_SHAPE.fullmatch(options.accelerator):
        problems.append(f"accelerator {options.accelerator!r} is not a Kaggle machine shape such as NvidiaTeslaT4")
    if problems:
        raise PackagingError("; ".join(problems))
    if owner == PLACEHOLDER_OWNER:
        log(f"no --owner, and no username in $KAGGLE_USERNAME, kaggle.json or the OAuth credentials: the metadata "
            f"says {owner!r}; `push` refuses it until you rebuild with --owner YOUR_KAGGLE_USERNAME")
    if slugify(options.kernel_title) != kernel_slug:
        log(f"note: Kaggle derives a notebook's slug from its title; title {options.kernel_title!r} gives "
            f"{slugify(options.kernel_title)!r}, not {kernel_slug!r}, which can make a push create a new notebook")
    return owner, f"{owner}/{options.dataset_slug}", f"{owner}/{kernel_slug}"


def kernel_metadata(options: BuildOptions, kernel_id: str, dataset_id: str) -> dict:
    """kernel-metadata.json: a private script, internet off, with the bundle and the competition attached."""
    metadata = {
        "id": kernel_id, "title": options.kernel_title, "code_file": "kernel.py", "language": "python",
        "kernel_type": "script", "is_private": True, "enable_gpu": options.target == "gpu",
        "enable_tpu": False, "enable_internet": False,  # the Kaggle client's default is True: write it
        "dataset_sources": [dataset_id], "competition_sources": [COMPETITION],
        "kernel_sources": [], "model_sources": [],
    }
    if options.accelerator:
        metadata["machine_shape"] = options.accelerator  # the client (2.2.5) sends it, overriding enable_gpu
    return metadata


def copy_runtime(repo: Path, dataset: Path) -> list[str]:
    modules = trace_runtime_modules(repo)
    for relative in modules:
        reason = credential_reason(relative)
        if reason:
            raise PackagingError(f"refusing to bundle runtime module {relative}: it looks like a credential "
                                 f"({reason}); rename it")
        destination = dataset / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo / relative, destination)
    packages = sorted({PurePosixPath(m).parts[0] for m in modules if len(PurePosixPath(m).parts) > 1})
    for package in packages:
        for relative in credential_like_files(repo / package):
            log(f"not bundled (credential-like name): {package}/{relative}")
    log(f"runtime code: {len(modules)} modules traced from kernel.py ({', '.join(packages)})")
    return modules


def copy_ensemble(manifest: Path, dataset: Path) -> tuple[list[EnsembleFile], dict[str, str]]:
    files = ensemble_files(manifest)
    source, destination = manifest.parent, dataset / BUNDLED_ENSEMBLE.parent
    problems = []
    for item in files:
        path = source / item.path
        if not path.is_file():
            problems.append(f"missing: {path} (named by {item.named_by})")
        elif (digest := sha256_file(path)) != item.sha256:
            problems.append(f"sha256 mismatch: {path} is {digest}, the manifest ({item.named_by}) says {item.sha256}")
    if problems:
        raise PackagingError(f"ensemble {manifest}:\n  " + "\n  ".join(problems))
    check_models_load(manifest)
    destination.mkdir(parents=True)
    shutil.copyfile(manifest, dataset / BUNDLED_ENSEMBLE)
    known = {}
    for item in files:
        (destination / item.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / item.path, destination / item.path)
        known[f"{DATASET_DIR}/{BUNDLED_ENSEMBLE.parent.as_posix()}/{item.path}"] = item.sha256
    listed = {item.path for item in files} | {manifest.name}
    secrets = credential_like_files(source)
    for relative in secrets:
        log(f"not bundled (credential-like name): {source / relative}")
    others = [p for p in source.rglob("*") if p.is_file() and p.relative_to(source).as_posix() not in listed
              and p.relative_to(source).as_posix() not in secrets]
    log(f"ensemble: {manifest.name} and the {len(files)} files it names, hash-checked"
        + (f" ({len(others)} other files beside it left out)" if others else ""))
    return files, known


def check_models_load(manifest: Path) -> None:
    """Build the detector and every model as PyTorch loads them on a GPU, strictly: where this machine would run
    an ONNX export instead, an unknown arch or a checkpoint that does not fit would otherwise surface on Kaggle."""
    from weights import WeightsError, load_ensemble

    try:
        ensemble = load_ensemble(manifest)
        ensemble.build_detector()
        for spec in ensemble.models:
            ensemble.build_model(spec, "cuda")
    except (WeightsError, KeyError, TypeError) as error:
        raise PackagingError(f"ensemble {manifest}: {error}") from None


def requirements_text(resolution: wheel_tools.Resolution, pins: list[bootstrap.Pin],
                      left_to_image: dict[str, str]) -> str:
    """The bundle's requirements.txt: every pin, with the image versions kernel.py keeps in its place."""
    lines = [
        "# Runtime pins of kernel.py. On the image it keeps an installed version that equals the pin, or lies in the",
        f"# range after `{bootstrap.KEEP_NOTE}` (\"{bootstrap.ANY_VERSION}\": every version), and installs the others "
        "offline:",
        "#   pip install --no-index --find-links wheels/ REQUIREMENT",
        f"# target: {resolution.target}, CPython {resolution.python_version}, manylinux {wheel_tools.ARCH}",
        *[f"# {note}" for note in resolution.notes],
        *([f"# no wheels for what the image has: {', '.join(f'{n} {v}' for n, v in sorted(left_to_image.items()))}"]
          if left_to_image else []),
        *[pin.requirement + (f"  # {bootstrap.KEEP_NOTE} {pin.keep}" if pin.keep else "") for pin in pins],
    ]
    return "\n".join(lines) + "\n"


def resolve_wheels(options: BuildOptions, repo: Path,
                   cache_dir: Path) -> tuple[wheel_tools.Resolution, list[bootstrap.Pin], dict[str, str]]:
    """The wheels to ship, the bundle's pins, and {pin: the image's version} of the pins left to the image."""
    pins = wheel_tools.read_pins(options.requirements or repo / "requirements-kernel.txt")
    resolution = wheel_tools.resolve_cached([pin.requirement for pin in pins], options.python_version,
                                            options.target, cache_dir, options.index_args, refresh=options.refresh,
                                            log=log)
    pins = wheel_tools.bundle_pins(resolution, pins)
    if options.image_packages is None:
        return resolution, pins, {}
    image = wheel_tools.read_image_packages(options.image_packages)
    needed, left_to_image = wheel_tools.for_image(resolution, pins, image)
    log(f"image {options.image_packages.name} ({len(image)} packages) has "
        f"{', '.join(f'{name} {version}' for name, version in sorted(left_to_image.items())) or 'none of the pins'}:"
        f" {len(needed.wheels)} of {len(resolution.wheels)} wheels ship")
    return needed, pins, left_to_image


def report_sizes(manifest: dict) -> None:
    """Log the size of each folder (one zip each on upload) and the total; warn as a folder nears zip64's 4 GiB."""
    sizes: dict[str, int] = {}
    for entry in manifest["files"]:
        parts = entry["path"].split("/")
        folder = "/".join(parts[:2]) + "/" if len(parts) > 2 else f"{parts[0]}/ (files)"
        sizes[folder] = sizes.get(folder, 0) + entry["size"]
    log("size: " + ", ".join(f"{folder} {size / 1e6:.1f} MB" for folder, size in sorted(sizes.items()))
        + f"; total {sum(sizes.values()) / 1e6:.1f} MB")
    for folder, size in sorted(sizes.items()):
        if size >= ZIP_WARNING_BYTES:
            log(f"warning: {folder} is {size / 2**30:.2f} GiB: Kaggle zips each folder on upload, and past 4 GiB the "
                "zip needs zip64; `--image-packages FILE` leaves out what the Kaggle image already has")


def prepare_out(out: Path) -> Path:
    """A fresh staging folder inside `out`; refuses to later replace folders the packager did not write."""
    for part, marker in ((DATASET_DIR, BUNDLE_MANIFEST), (KERNEL_DIR, KERNEL_METADATA)):
        folder = out / part
        if folder.exists() and any(folder.iterdir()) and not (folder / marker).is_file():
            raise PackagingError(f"{folder} exists and was not written by the packager (no {marker}); "
                                 "move it away or choose another --out")
    staging = out / f".partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def build(options: BuildOptions) -> dict:
    """Build the bundle into options.out and return its manifest."""
    started = time.perf_counter()
    repo = options.repo.resolve()
    ensemble = (options.ensemble or default_manifest()).resolve()
    cache_dir = (options.wheel_cache or wheel_tools.default_cache_dir()).resolve()
    owner, dataset_id, kernel_id = check_identity(options)
    out = options.out.resolve()
    staging = prepare_out(out)
    try:
        dataset, kernel = staging / DATASET_DIR, staging / KERNEL_DIR
        dataset.mkdir()
        kernel.mkdir()
        modules = copy_runtime(repo, dataset)
        ensemble_items, known = copy_ensemble(ensemble, dataset)

        step = time.perf_counter()
        resolution, pins, left_to_image = resolve_wheels(options, repo, cache_dir)
        digests = wheel_tools.fetch(resolution, cache_dir, options.index_args, log=log)
        for wheel in resolution.wheels:
            wheel_tools.link_or_copy(cache_dir / wheel.filename, dataset / WHEELS_DIR / wheel.filename)
            known[f"{DATASET_DIR}/{WHEELS_DIR}/{wheel.filename}"] = digests[wheel.filename]
        log(f"wheels: {len(resolution.wheels)} wheels linked from {cache_dir} in {time.perf_counter() - step:.1f} s")
        (dataset / "requirements.txt").write_text(requirements_text(resolution, pins, left_to_image))

        write_json(dataset / DATASET_METADATA, {
            "id": dataset_id, "title": options.dataset_title, "licenses": [{"name": options.license}],
        })
        shutil.copyfile(repo / "kernel.py", kernel / "kernel.py")
        write_json(kernel / KERNEL_METADATA, kernel_metadata(options, kernel_id, dataset_id))
        info = {
            "python_version": resolution.python_version, "target": resolution.target,
            "platforms": list(resolution.platforms), "requirements": list(resolution.requirements),
            "notes": list(resolution.notes),
            "wheels": [{"name": w.name, "version": w.version, "file": w.filename} for w in resolution.wheels],
            "left_to_image": left_to_image,
            "runtime_modules": modules,
            "ensemble": {"manifest": f"{DATASET_DIR}/{BUNDLED_ENSEMBLE.as_posix()}",
                         "files": [item.path for item in ensemble_items]},
            "dataset_id": dataset_id, "kernel_id": kernel_id, "owner": owner,
        }
        manifest = write_manifest(staging, info, known=known)
        for part in (DATASET_DIR, KERNEL_DIR):
            shutil.rmtree(out / part, ignore_errors=True)
            (staging / part).rename(out / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report_sizes(manifest)
    size = sum(entry["size"] for entry in manifest["files"])
    log(f"built {out}: {len(manifest['files'])} files, {size / 1e6:.1f} MB, {len(resolution.wheels)} wheels, "
        f"in {time.perf_counter() - started:.1f} s")
    log(f"next: python -m packager verify {options.out}")
    return manifest
