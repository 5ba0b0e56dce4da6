"""`python -m packager verify dist/`: the bundle alone, offline, in a fresh venv, gives the local predictions.

1. Cheap checks first: every file of the bundle manifest present with its size and sha256 (nothing extra),
   the kernel metadata (internet off, the dataset attached), one wheel per pin, wheels only.
2. A fresh virtual env (python -m venv, with pip, no site packages), and in it, network blocked, an offline
   `pip install --dry-run --no-index --find-links wheels -r requirements.txt`: a missing wheel is named here,
   before anything is installed.
3. Kaggle's path exactly: input/<dataset-slug> -> dist/dataset, input/deepfake-detection-challenge/test_videos
   + sample_submission.csv, an empty working/, then `<venv>/bin/python kernel.py` with no arguments (a copy
   with no weights/ beside it, so the bundle is found under $KAGGLE_INPUT), network blocked: the kernel
   installs its wheels from the bundle into the empty venv, then writes working/submission.csv.
4. The repository's kernel.py on the same videos, in this interpreter; every row must agree within 1e-6.
5. Every pin as the kernel left it is one kernel.py keeps, and nothing else is in the venv.

With `--image FILE` (the Kaggle image's `pip list --format=freeze`) the venv is first seeded, with this
machine's pip configuration and network, with the image's versions of the pins the image has (the image's other
versions constrain their dependencies); then the network is blocked, and the kernel must install what differs.

The network block is packager.sandbox's: `unshare --net` where this machine allows it, else a sitecustomize.py
in the venv; pip's configuration is switched off there, so only the bundle's wheels can be installed.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import kernel as bootstrap
from packager import (
    COMPETITION,
    DATASET_DIR,
    DATASET_METADATA,
    KERNEL_DIR,
    KERNEL_METADATA,
    REPO_ROOT,
    WHEELS_DIR,
    PackagingError,
)
from packager.manifest import check_files, sha256_file
from packager.sandbox import Sandbox
from packager.wheels import (
    canonical_name,
    read_image_packages,
    read_pins,
    requirement_name,
    unsatisfied_requirements,
)
from weights.manifest import BUNDLED_ENSEMBLE, default_manifest


@dataclass
class VerifyOptions:
    dist: Path = Path("dist")
    videos: Path | None = None
    ensemble: Path | None = None
    device: str = "auto"
    keep: bool = False
    check_only: bool = False
    tolerance: float = 1e-6
    repo: Path = REPO_ROOT
    work: Path | None = None        # default: a temporary folder
    isolation: str = "auto"         # auto | unshare | sitecustomize
    image: Path | None = None       # the image's `pip list --format=freeze`: seed the venv with its versions


def log(message: str) -> None:
    print(f"packager verify: {message}", flush=True)


# ---------------------------------------------------------------------------------------------- checks

def check_metadata(dist: Path, manifest: dict) -> None:
    kernel_meta = json.loads((dist / KERNEL_DIR / KERNEL_METADATA).read_text())
    dataset_meta = json.loads((dist / DATASET_DIR / DATASET_METADATA).read_text())
    problems = []
    if kernel_meta.get("enable_internet") is not False:
        problems.append(f"{KERNEL_DIR}/{KERNEL_METADATA}: enable_internet must be written as false "
                        f"(the Kaggle client defaults it to true), found {kernel_meta.get('enable_internet')!r}")
    if not (dist / KERNEL_DIR / str(kernel_meta.get("code_file"))).is_file():
        problems.append(f"{KERNEL_DIR}/{KERNEL_METADATA}: code_file {kernel_meta.get('code_file')!r} is not in "
                        f"{KERNEL_DIR}/")
    if dataset_meta.get("id") not in kernel_meta.get("dataset_sources", []):
        problems.append(f"{KERNEL_DIR}/{KERNEL_METADATA}: dataset_sources {kernel_meta.get('dataset_sources')} "
                        f"lacks the bundle's dataset {dataset_meta.get('id')!r}")
    if COMPETITION not in kernel_meta.get("competition_sources", []):
        problems.append(f"{KERNEL_DIR}/{KERNEL_METADATA}: competition_sources lacks {COMPETITION}")
    if not (dist / DATASET_DIR / BUNDLED_ENSEMBLE).is_file():
        problems.append(f"{DATASET_DIR}/{BUNDLED_ENSEMBLE.as_posix()} is missing")
    wheels = sorted(p.name for p in (dist / DATASET_DIR / WHEELS_DIR).glob("*"))
    problems += [f"{DATASET_DIR}/{WHEELS_DIR}/{name}: not a wheel" for name in wheels if not name.endswith(".whl")]
    expected = {canonical_name(w["name"]): w["file"] for w in manifest.get("wheels", [])}
    for pin in read_pins(dist / DATASET_DIR / "requirements.txt"):
        name = canonical_name(pin.name)
        if name in manifest.get("left_to_image", {}):
            continue
        if name not in expected:
            problems.append(f"requirements.txt pins {pin.requirement}, but the bundle manifest lists no wheel for it")
        elif expected[name] not in wheels:
            problems.append(f"missing wheel {DATASET_DIR}/{WHEELS_DIR}/{expected[name]} for {pin.requirement}")
    if problems:
        raise PackagingError(f"bundle {dist}:\n  " + "\n  ".join(problems))


def check_offline_resolution(sandbox: Sandbox, dist: Path, manifest: dict,
                             installed: dict[str, str] | None = None) -> list[str]:
    """`pip install --dry-run --no-index` from the bundle's wheels, offline, of the pins the kernel would install
    given `installed` (the seeded image's versions; None: an empty venv, where it installs every pin).

    Returns the wheel files pip would install; a failure names the missing wheel file where the manifest knows it.
    """
    wheels_dir = dist / DATASET_DIR / WHEELS_DIR
    choices = bootstrap.plan(dist / DATASET_DIR, (installed or {}).get)
    stops = [f"{choice.pin.name}: {choice.reason}" for choice in choices if choice.action == "stop"]
    if stops:
        raise PackagingError("the kernel would stop on this image: " + "; ".join(stops))
    requirements = [choice.pin.requirement for choice in choices if choice.action == "install"]
    if not requirements:
        log("offline resolution: the image has every pin at a version the kernel keeps")
        return []
    report = sandbox.work / "resolution.json"
    started = time.perf_counter()
    fresh = [] if installed else ["--ignore-installed"]  # an empty venv: everything the bundle ships
    process = sandbox.run([sandbox.python, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                           str(wheels_dir), *fresh, "--quiet", "--report", str(report), *requirements],
                          capture_output=True, text=True)
    if process.returncode != 0:
        files = {canonical_name(w["name"]): w["file"] for w in manifest.get("wheels", [])}
        named = []
        for requirement in unsatisfied_requirements(process.stderr):
            expected = files.get(requirement_name(requirement))
            named.append(f"{requirement} (missing wheel {DATASET_DIR}/{WHEELS_DIR}/{expected})" if expected
                         else f"{requirement} (no wheel for it in the bundle manifest either)")
        errors = "\n".join(line for line in process.stderr.splitlines() if "ERROR" in line) or process.stderr[-3000:]
        raise PackagingError("the bundle's wheels do not install offline"
                             + (": " + "; ".join(named) if named else "") + f"\npip said:\n{errors}")
    installs = json.loads(report.read_text())["install"]
    files = sorted(Path(item["download_info"]["url"]).name for item in installs)
    log(f"offline resolution: {len(files)} wheels from {wheels_dir} in {time.perf_counter() - started:.1f} s")
    return files


def seed_image(sandbox: Sandbox, image: dict[str, str | None], pins: list[bootstrap.Pin]) -> None:
    """Install the image's versions of the pins (or of their equivalents) with this machine's pip configuration
    and network, its other versions as constraints on their dependencies; what no index has is left out, named."""
    names = {canonical_name(name) for pin in pins for name in (pin.name, *bootstrap.SAME_PACKAGE.get(pin.name, ()))}
    seeds = {name: version for name, version in image.items() if name in names and version}
    constraints = {name: version for name, version in image.items() if name not in names and version}
    if not seeds:
        raise PackagingError("the image package list has none of the bundle's pins: nothing to seed the venv with")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_CONFIG_FILE")}
    constraints_file = sandbox.work / "image-constraints.txt"
    started = time.perf_counter()
    while True:
        constraints_file.write_text("".join(f"{name}=={version}\n" for name, version in sorted(constraints.items())))
        process = subprocess.run([sandbox.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                  "-c", str(constraints_file), *(f"{n}=={v}" for n, v in sorted(seeds.items()))],
                                 capture_output=True, text=True, env=env)
        if process.returncode == 0:
            break
        missing = {requirement_name(r) for r in unsatisfied_requirements(process.stderr)}
        unavailable = missing & (seeds.keys() | constraints.keys())
        if not unavailable:
            raise PackagingError(f"could not install the image's versions into {sandbox.venv}:\n"
                                 f"{process.stderr[-3000:]}")
        log("not on the indexes, so not seeded: " + ", ".join(f"{n}=={seeds.get(n) or constraints.get(n)}"
                                                             for n in sorted(unavailable)))
        for name in unavailable:
            seeds.pop(name, None)
            constraints.pop(name, None)
    log(f"seeded the venv with the image's {', '.join(f'{n} {v}' for n, v in sorted(seeds.items()))} "
        f"in {time.perf_counter() - started:.1f} s")


def check_pins_honoured(dist: Path, installed: dict[str, str], bundled: dict[str, str],
                        seeded: dict[str, str]) -> None:
    """After the kernel ran: each pin at a version kernel.py keeps, and every distribution either a bundled wheel
    or left from the seeded image."""
    wrong = [f"{choice.pin.name}: {choice.reason}" for choice in bootstrap.plan(dist / DATASET_DIR, installed.get)
             if choice.action != "keep"]
    if wrong:
        raise PackagingError("after the kernel's installs, pins are not honoured: " + "; ".join(wrong))
    strays = sorted(f"{n}=={v}" for n, v in installed.items()
                    if n not in ("pip", "setuptools") and v not in (bundled.get(n), seeded.get(n)))
    if strays:
        raise PackagingError(f"the venv holds distributions that are not the bundled wheels: {', '.join(strays)}")


# ---------------------------------------------------------------------------------------------- runs

def find_python(version: str) -> str:
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if not found:
        raise PackagingError(f"the bundle targets Python {version}: no python{version} on PATH to verify it with")
    return found


def sample_videos(folder: Path) -> Path:
    from bench.samples import make_samples

    make_samples(folder, seconds=2.0)
    return folder


def lay_out_input(work: Path, dist: Path, dataset_id: str, videos: Path) -> tuple[Path, Path, Path]:
    """input/<slug> -> dist/dataset, input/deepfake-detection-challenge/{test_videos,sample_submission.csv}."""
    input_dir, working = work / "input", work / "working"
    competition = input_dir / COMPETITION
    (competition / "test_videos").mkdir(parents=True)
    working.mkdir()
    (input_dir / dataset_id.split("/")[-1]).symlink_to((dist / DATASET_DIR).resolve(), target_is_directory=True)
    names = []
    for video in sorted(p for p in videos.rglob("*") if p.is_file()):
        destination = competition / "test_videos" / video.relative_to(videos)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, destination)
        names.append(video.name)
    if not names:
        raise PackagingError(f"no videos under {videos}")
    with open(competition / "sample_submission.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        writer.writerows([name, "0.5"] for name in sorted(set(names)))
    return input_dir, working, competition


def read_submission(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise PackagingError(f"{path} was not written")
    with open(path, newline="") as f:
        return {row["filename"]: float(row["label"]) for row in csv.DictReader(f)}


def timed_run(command: list[str], log_path: Path, runner=subprocess.run, **kwargs) -> tuple[int, str, float]:
    """Run with stdout and stderr into log_path; (exit code, the log, seconds)."""
    started = time.perf_counter()
    with open(log_path, "w") as out:
        process = runner(command, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    return process.returncode, log_path.read_text(), time.perf_counter() - started


def compare(bundle: dict[str, float], reference: dict[str, float], tolerance: float) -> float:
    if set(bundle) != set(reference):
        raise PackagingError(f"the bundle's submission has rows {sorted(bundle)}, the local run {sorted(reference)}")
    worst = max((abs(bundle[name] - reference[name]) for name in bundle), default=0.0)
    if worst > tolerance:
        rows = "\n".join(f"  {name}: bundle {bundle[name]:.6f}, local {reference[name]:.6f}"
                         for name in sorted(bundle) if abs(bundle[name] - reference[name]) > tolerance)
        raise PackagingError(f"predictions differ by up to {worst:.2e} (> {tolerance:g}):\n{rows}")
    return worst


def installed_distributions(sandbox: Sandbox) -> dict[str, str]:
    process = sandbox.run([sandbox.python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    return {canonical_name(d["name"]): d["version"] for d in json.loads(process.stdout or "[]")}


def check_bundle(dist: Path, image: Path | None) -> dict:
    """Step 1, the cheap checks: the files against the bundle manifest, the metadata, one wheel per pin, and an
    image list given where the bundle leaves pins to the image. Returns the manifest."""
    started = time.perf_counter()
    manifest = check_files(dist)
    log(f"{len(manifest['files'])} files match {DATASET_DIR}/bundle-manifest.json "
        f"({time.perf_counter() - started:.1f} s)")
    check_metadata(dist, manifest)
    left_to_image = manifest.get("left_to_image", {})
    if left_to_image and image is None:
        raise PackagingError(f"the bundle leaves {', '.join(sorted(left_to_image))} to the image it was built for: "
                             "verify it with --image FILE (that image's package list)")
    return manifest


def resolve_offline(dist: Path, manifest: dict, pins: list[bootstrap.Pin], image: dict[str, str | None] | None,
                    python: str, isolation: str, work: Path, summary: dict) -> tuple[Sandbox, dict[str, str]]:
    """Step 2: a fresh venv (seeded with the image's versions, if any), network blocked, and in it pip's offline
    dry-run install of what the kernel would install. Returns the sandbox and {name: version} seeded."""
    seed = functools.partial(seed_image, image=image, pins=pins) if image else None
    sandbox = Sandbox(work, python, isolation, seed=seed, log=log)
    seeded = installed_distributions(sandbox) if image else {}
    summary["isolation"] = sandbox.method
    summary["resolved"] = check_offline_resolution(sandbox, dist, manifest, seeded or None)
    return sandbox, seeded


def check_reference_ensemble(options: VerifyOptions, dist: Path) -> Path:
    """Before any run, that step 4's local run can be compared: its ensemble is the bundled one. Returns it."""
    reference_ensemble = (options.ensemble or default_manifest()).resolve()
    bundled_ensemble = dist / DATASET_DIR / BUNDLED_ENSEMBLE
    if not reference_ensemble.is_file():
        raise PackagingError(f"reference ensemble {reference_ensemble} is missing: give --ensemble (the one "
                             f"the bundle was built from, or {bundled_ensemble})")
    if reference_ensemble.read_bytes() != bundled_ensemble.read_bytes():
        raise PackagingError(f"the bundle holds another ensemble than {reference_ensemble}: give verify the "
                             "--ensemble the bundle was built with")
    if sha256_file(options.repo / "kernel.py") != sha256_file(dist / KERNEL_DIR / "kernel.py"):
        log(f"note: {options.repo / 'kernel.py'} changed since the build; the reference run uses the new one")
    return reference_ensemble


@dataclass
class KernelRuns:
    """What steps 3 and 4 ran side by side: the bundled kernel's output and working/, the local run's exit and log."""
    bundle_output: str
    working: Path
    reference_code: int
    reference_output: str


def run_on_kaggle_paths(options: VerifyOptions, dist: Path, manifest: dict, sandbox: Sandbox, work: Path,
                        reference_ensemble: Path, summary: dict) -> KernelRuns:
    """Step 3: the bundled kernel.py with no arguments on Kaggle's paths, offline in the sandbox, with step 4's
    local run of the repository's kernel.py on the same videos alongside; the bundled kernel must succeed."""
    videos = options.videos.resolve() if options.videos else sample_videos(work / "videos")
    input_dir, working, competition = lay_out_input(work, dist, manifest["dataset_id"], videos)
    runner = work / "kernel-run"
    runner.mkdir()
    shutil.copyfile(dist / KERNEL_DIR / "kernel.py", runner / "kernel.py")
    device_env = {"CUDA_VISIBLE_DEVICES": ""} if options.device == "cpu" else {}

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAGGLE_") and k not in ("DEEPFAKE_ENSEMBLE", "PYTHONPATH")}
    bundle_run = functools.partial(
        timed_run, [sandbox.python, str(runner / "kernel.py")], work / "bundle-run.log", sandbox.run,
        env={"KAGGLE_INPUT": str(input_dir), "KAGGLE_WORKING": str(working), **device_env}, cwd=working)
    reference_run = functools.partial(
        timed_run, [sys.executable, str(options.repo / "kernel.py"), "--videos", str(competition / "test_videos"),
                    "--ensemble", str(reference_ensemble), "--out", str(work / "reference.csv")],
        work / "reference-run.log", env={**env, **device_env}, cwd=work)
    # Both at once: the offline install is mostly one core of unzipping, the reference run the other cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        bundle_future, reference_future = pool.submit(bundle_run), pool.submit(reference_run)
        (code, output, summary["bundle_seconds"]) = bundle_future.result()
        (ref_code, ref_output, summary["reference_seconds"]) = reference_future.result()
    if code != 0:
        raise PackagingError(f"the bundled kernel failed offline in the fresh venv (exit {code}); "
                             f"last lines of {work / 'bundle-run.log'}:\n{output[-4000:]}")
    return KernelRuns(output, working, ref_code, ref_output)


def check_installed_pins(sandbox: Sandbox, dist: Path, manifest: dict, pins: list[bootstrap.Pin],
                         seeded: dict[str, str], summary: dict) -> dict[str, str]:
    """Step 5: every pin as the kernel left it is one kernel.py keeps, and nothing else is in the venv.
    Returns {name: version} installed."""
    installed = installed_distributions(sandbox)
    bundled = {canonical_name(w["name"]): w["version"] for w in manifest["wheels"]}
    check_pins_honoured(dist, installed, bundled, seeded)
    summary["packages"] = {pin.name: installed.get(canonical_name(pin.name)) for pin in pins}
    return installed


def compare_with_reference(runs: KernelRuns, installed: dict[str, str], seeded: dict[str, str], work: Path,
                           tolerance: float, summary: dict) -> dict[str, float]:
    """Step 4: both runs reported, and every row of the bundle's submission within `tolerance` of the local run's.
    Returns the bundle's rows."""
    for line in runs.bundle_output.splitlines():
        if line.startswith("package "):
            log(f"  {line}")
    log(f"bundled kernel: offline install of {len(set(installed.items()) - set(seeded.items()))} distributions "
        f"and the run took {summary['bundle_seconds']:.1f} s")
    bundle_rows = read_submission(runs.working / "submission.csv")
    if runs.reference_code != 0:
        raise PackagingError(f"the local reference run failed (exit {runs.reference_code}):\n"
                             f"{runs.reference_output[-4000:]}")
    log(f"local reference run: {summary['reference_seconds']:.1f} s (alongside)")
    reference_rows = read_submission(work / "reference.csv")
    summary["max_difference"] = compare(bundle_rows, reference_rows, tolerance)
    summary["rows"] = bundle_rows
    for name in sorted(bundle_rows):
        log(f"  {name}: bundle {bundle_rows[name]:.6f}  local {reference_rows[name]:.6f}")
    return bundle_rows


def verify(options: VerifyOptions) -> dict:
    """Raise PackagingError naming what is wrong; return a summary dict when the bundle passes."""
    started = time.perf_counter()
    dist = options.dist.resolve()
    manifest = check_bundle(dist, options.image)
    image = read_image_packages(options.image) if options.image else None
    python = find_python(manifest["python_version"])
    work = Path(options.work or tempfile.mkdtemp(prefix="packager-verify-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    summary = {"files": len(manifest["files"]), "work": str(work)}
    try:
        pins = read_pins(dist / DATASET_DIR / "requirements.txt")
        sandbox, seeded = resolve_offline(dist, manifest, pins, image, python, options.isolation, work, summary)
        if options.check_only:
            log(f"checks passed in {time.perf_counter() - started:.1f} s (--check-only: the kernel was not run)")
            return summary
        reference_ensemble = check_reference_ensemble(options, dist)
        runs = run_on_kaggle_paths(options, dist, manifest, sandbox, work, reference_ensemble, summary)
        # Step 5 before step 4's comparison: a wrong install explains any difference in the predictions.
        installed = check_installed_pins(sandbox, dist, manifest, pins, seeded, summary)
        bundle_rows = compare_with_reference(runs, installed, seeded, work, options.tolerance, summary)
        log(f"passed: {len(bundle_rows)} predictions equal the local run (max difference "
            f"{summary['max_difference']:.1e}) in {time.perf_counter() - started:.1f} s")
        return summary
    finally:
        if options.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
