"""Bundles sized by what the Kaggle image lacks, and the pins that matter honoured on it: kernel.py's rule
(`choose`: keep the image's version, install the bundle's, or stop), the image package list, the build's cut of
the wheel closure, the size report, and the versions in the log and the report.

The seeded-image verify (a real bundle, a venv with the image's torch and an older timm) is in test_packager.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import inference.cli
import kernel
from kernel import Pin
from packager import REPO_ROOT, PackagingError
from packager import build as build_module
from packager.__main__ import main as packager_main
from packager.manifest import read_manifest
from packager.verify import VerifyOptions, verify
from packager.wheels import bundle_pins, for_image, read_image_packages, read_pins, resolve_cached
from tests.test_packager import OWNER, make_wheel

TORCH = Pin("torch", "2.14.1", ">=2.8,<2.15")
TIMM = Pin("timm", "1.0.31")
NUMPY = Pin("numpy", "2.4.6", "any")
ONNXRUNTIME_GPU = Pin("onnxruntime-gpu", "1.31.1")
PINNED_IMAGE = {"torch": "2.14.1", "torchvision": "0.29.1", "numpy": "2.4.6", "opencv-python-headless": "4.14.0.94"}


# ---------------------------------------------------------------------------------------------- the kernel's rule

def test_the_kernel_pins_declare_which_image_versions_are_kept():
    pins = {pin.name: pin for pin in kernel.read_pins(REPO_ROOT / "requirements-kernel.txt")}
    assert pins["torch"].keep and pins["torchvision"].keep  # a range: reinstalling torch costs minutes
    assert all(pins[name].keep is None for name in ("timm", "safetensors", "onnxruntime", "av"))  # exact
    assert kernel.version_in(pins["torch"].version, pins["torch"].keep)  # the pin lies in its own range


def test_a_requirement_that_is_not_a_pin_is_refused(tmp_path):
    (tmp_path / "requirements.txt").write_text("timm==1.0.31  # comment\ntorch>=2.8\n")
    with pytest.raises(ValueError, match=r"requirements.txt:2: 'torch>=2.8' is not a pin"):
        kernel.read_pins(tmp_path / "requirements.txt")


@pytest.mark.parametrize("pin,found,shipped,action", [
    (TORCH, ("torch", "2.14.1"), False, "keep"),
    (TORCH, ("torch", "2.12.0+cu126"), False, "keep"),       # a local CUDA build inside the range
    (TORCH, ("torch", "2.6.0+cu124"), True, "install"),      # outside, and the bundle ships torch
    (TORCH, ("torch", "2.6.0+cu124"), False, "stop"),        # outside, and it does not
    (TORCH, ("torch", "2.15.0"), True, "install"),           # above the range
    (TIMM, ("timm", "1.0.31"), False, "keep"),
    (TIMM, ("timm", "1.0.29"), True, "install"),             # architectures and state-dict keys change
    (TIMM, ("timm", "1.0.29"), False, "stop"),
    (TIMM, None, False, "install"),                          # not on the image: pip names a missing wheel
    (NUMPY, ("numpy", "1.26.4"), False, "keep"),
    (ONNXRUNTIME_GPU, ("onnxruntime", "1.31.1"), False, "keep"),  # the CPU build at the pinned version
    (ONNXRUNTIME_GPU, ("onnxruntime", "1.20.0"), True, "install"),
])
def test_the_kernel_keeps_installs_or_stops(pin, found, shipped, action):
    assert kernel.choose(pin, found, shipped).action == action


def test_the_stop_reason_is_one_line_naming_version_and_range():
    choice = kernel.choose(TORCH, ("torch", "2.6.0+cu124"), shipped=False)
    assert choice.reason == ("torch 2.6.0+cu124 on the image is outside >=2.8,<2.15, and the bundle ships no "
                             "torch==2.14.1 wheel")
    assert kernel.choose(TIMM, ("timm", "1.0.29"), shipped=True).reason == "timm 1.0.29 on the image is not 1.0.31"


def fake_bundle(folder: Path, requirements: str, wheels: tuple[str, ...] = ()) -> Path:
    """requirements.txt, a wheels/ folder with empty files of these names, and a runtime package that would
    record being imported (no video can be read without it)."""
    (folder / "wheels").mkdir(parents=True)
    for name in wheels:
        (folder / "wheels" / name).write_bytes(b"")
    (folder / "requirements.txt").write_text(requirements)
    (folder / "inference").mkdir()
    (folder / "inference" / "__init__.py").write_text(
        "from pathlib import Path\nPath(__file__).parents[1].joinpath('runtime-imported').write_text('yes')\n")
    (folder / "inference" / "cli.py").write_text("def main(argv=None, packages=None):\n    return 0\n")
    return folder


def test_the_kernel_installs_the_bundle_wheels_of_what_differs(tmp_path, monkeypatch):
    image = {"torch": "2.6.0+cu124", "timm": "1.0.29", "numpy": "1.26.4", "onnxruntime": "1.20.0"}
    bundle = fake_bundle(tmp_path, "torch==2.14.1  # image: >=2.8,<2.15\ntimm==1.0.31\nnumpy==2.4.6  # image: any\n"
                                   "onnxruntime-gpu==1.31.1\n",
                         ("torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl", "timm-1.0.31-py3-none-any.whl",
                          "onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"))
    monkeypatch.setattr(kernel, "installed_version", image.get)
    commands = []
    monkeypatch.setattr(kernel.subprocess, "run", lambda command: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    used = kernel.install_bundled_wheels(bundle)
    uninstall, install = commands
    assert uninstall[-1] == "onnxruntime" and "uninstall" in uninstall  # never two copies of one import package
    assert install[-3:] == ["torch==2.14.1", "timm==1.0.31", "onnxruntime-gpu==1.31.1"]
    # pip is faked, so the image's versions remain; each is reported under the distribution that has it
    assert used == {"torch": "2.6.0+cu124", "timm": "1.0.29", "numpy": "1.26.4", "onnxruntime": "1.20.0"}


def test_the_kernel_stops_before_any_video_is_read(tmp_path):
    """torch on this machine (2.14.1) lies outside the range this bundle declares, and the bundle ships no torch:
    one line on stderr, and the runtime (which reads the videos) is never imported."""
    bundle = fake_bundle(tmp_path / "input" / "owner" / "bundle", "torch==3.0.0  # image: >=3.0,<3.1\n")
    (tmp_path / "run").mkdir()
    shutil.copyfile(REPO_ROOT / "kernel.py", tmp_path / "run" / "kernel.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"KAGGLE_INPUT": str(tmp_path / "input")}
    process = subprocess.run([sys.executable, "-I", str(tmp_path / "run" / "kernel.py")], cwd=tmp_path,
                             capture_output=True, text=True, env=env, timeout=120)
    assert process.returncode == 1
    assert process.stderr.splitlines() == [
        "cannot run on this image: torch: torch 2.14.1 on the image is outside >=3.0,<3.1, and the bundle ships no "
        "torch==3.0.0 wheel (rebuild the bundle with this image's package list: `python -m packager build "
        "--image-packages FILE`)"]
    assert not (bundle / "runtime-imported").exists()


def test_the_versions_in_use_go_to_the_log_and_the_report(ensemble_path, tmp_path, caplog):
    (tmp_path / "videos").mkdir()
    packages = {"torch": "2.14.1", "timm": "1.0.31"}
    argv = ["--videos", str(tmp_path / "videos"), "--out", str(tmp_path / "submission.csv"),
            "--report", str(tmp_path / "report.jsonl"), "--ensemble", str(ensemble_path), "--device", "cpu"]
    with caplog.at_level("INFO", logger="inference"):
        assert inference.cli.main(argv, packages=packages) == 0
    assert "packages: torch 2.14.1, timm 1.0.31" in caplog.text
    assert json.loads((tmp_path / "report.jsonl").read_text().splitlines()[0]) == {"packages": packages}


# ---------------------------------------------------------------------------------------------- the image list

def test_the_image_package_list_is_read_tolerantly(tmp_path):
    listing = tmp_path / "image-packages.txt"
    listing.write_text("# pip list --format=freeze\n\nPyYAML==6.0.2\nopencv_python_headless==4.10.0.84\n"
                       "torch @ file:///tmp/torch-2.6.0%2Bcu124-cp311-cp311-linux_x86_64.whl\n"
                       "mylib @ git+https://example.com/mylib.git\n-e /src/project\nlegacy===1.0-x  # odd\n")
    assert read_image_packages(listing) == {"pyyaml": "6.0.2", "opencv-python-headless": "4.10.0.84",
                                            "torch": "2.6.0+cu124", "mylib": None, "legacy": "1.0-x"}
    listing.write_text("not a package list\n")
    with pytest.raises(PackagingError, match="lists no package"):
        read_image_packages(listing)


# ---------------------------------------------------------------------------------------------- the build's cut

@pytest.fixture(scope="module")
def fake_index(tmp_path_factory) -> Path:
    """Tiny wheels with the pins' names and the shape of their real dependencies."""
    index = tmp_path_factory.mktemp("index")
    for name, version, requires in [
        ("torch", "2.14.1", ["nvidia-fake==13.0", "filelock"]),
        ("nvidia-fake", "13.0", []),
        ("torchvision", "0.29.1", ["torch>=2.14.0", "numpy"]),
        ("timm", "1.0.31", ["torch", "torchvision", "huggingface-hub", "safetensors"]),
        ("huggingface-hub", "2.4.0", ["filelock>=3.10.0", 'tomli; python_version < "3.11"',
                                      'pytest; extra == "testing"']),
        ("filelock", "4.3.1", []),
        ("numpy", "2.4.6", []),
        ("opencv-python-headless", "4.14.0.94", ["numpy>=2"]),
        ("onnxruntime-gpu", "1.31.1", ["numpy>=1.21.6", 'sympy; extra == "symbolic"']),
        ("av", "18.1.0", []),
        ("safetensors", "0.8.0", []),
    ]:
        make_wheel(index, name, version, requires)
    return index


@pytest.fixture(scope="module")
def resolved(fake_index, tmp_path_factory):
    """The kernel's real pins (gpu target) resolved against the fake index, and the bundle's pins."""
    pins = read_pins(REPO_ROOT / "requirements-kernel.txt")
    resolution = resolve_cached([pin.requirement for pin in pins], "3.11", "gpu", tmp_path_factory.mktemp("cache"),
                                ["--no-index", "--find-links", str(fake_index)], log=lambda message: None)
    return resolution, bundle_pins(resolution, pins)


def shipped_names(resolution, pins, image: dict) -> tuple[set[str], dict]:
    cut, left = for_image(resolution, pins, image)
    return {wheel.name for wheel in cut.wheels}, left


def test_without_an_image_every_wheel_ships_and_the_swap_keeps_its_range(resolved):
    resolution, pins = resolved
    assert {pin.name: pin.keep for pin in pins}["onnxruntime-gpu"] is None  # exact, as onnxruntime's
    assert {pin.name: pin.keep for pin in pins}["torch"] == ">=2.8,<2.15"
    names, left = shipped_names(resolution, pins, {})
    assert names == {wheel.name for wheel in resolution.wheels} and left == {}


def test_an_image_with_the_pinned_torch_numpy_and_opencv_gets_no_wheels_for_them(resolved):
    resolution, pins = resolved
    names, left = shipped_names(resolution, pins, {**PINNED_IMAGE, "filelock": "3.0.0"})
    assert names == {"timm", "huggingface-hub", "filelock", "onnxruntime-gpu", "av", "safetensors"}
    assert left == PINNED_IMAGE  # nor torch's own dependencies: the image has torch
    # filelock 3.0.0 is below huggingface-hub's >=3.10.0: shipped; an extra (pytest) and tomli (< 3.11) are not


def test_an_image_torch_outside_the_range_gets_the_bundle_torch(resolved):
    resolution, pins = resolved
    names, left = shipped_names(resolution, pins, {**PINNED_IMAGE, "torch": "2.6.0+cu124"})
    assert {"torch", "nvidia-fake", "filelock"} <= names and "torchvision" not in names
    assert "torch" not in left


def test_a_shipped_wheel_requiring_a_newer_torch_than_the_image_kept_ships_torch_too(resolved):
    """torch 2.12 lies in the range, but the bundle's torchvision (the image's 0.20 lies outside its range)
    requires torch>=2.14.0: pip will replace torch on the image, so the bundle must hold it."""
    resolution, pins = resolved
    names, left = shipped_names(resolution, pins, {**PINNED_IMAGE, "torch": "2.12.0", "torchvision": "0.20.0"})
    assert {"torch", "torchvision"} <= names and not {"torch", "torchvision"} & left.keys()


# ---------------------------------------------------------------------------------------------- build and sizes

def test_sizes_per_folder_and_the_zip64_warning(capsys, monkeypatch):
    manifest = {"files": [{"path": "dataset/wheels/torch.whl", "size": 3_300_000_000},
                          {"path": "dataset/wheels/timm.whl", "size": 200_000_000},
                          {"path": "dataset/ensemble/ensemble.json", "size": 1_000},
                          {"path": "dataset/requirements.txt", "size": 500},
                          {"path": "kernel/kernel.py", "size": 10_000}]}
    build_module.report_sizes(manifest)
    said = capsys.readouterr().out
    assert ("size: dataset/ (files) 0.0 MB, dataset/ensemble/ 0.0 MB, dataset/wheels/ 3500.0 MB, kernel/ (files) "
            "0.0 MB; total 3500.0 MB") in said
    assert "warning: dataset/wheels/ is 3.26 GiB" in said and "--image-packages" in said
    monkeypatch.setattr(build_module, "ZIP_WARNING_BYTES", 4 * 2**30)
    build_module.report_sizes(manifest)
    assert "warning" not in capsys.readouterr().out


def test_build_with_an_image_package_list(fake_index, ensemble_path, tmp_path, capsys):
    """The whole build from the fake index: the bundle's requirements.txt keeps every pin and its range (what the
    kernel reads), the wheels are only what the image lacks, and a plain verify asks for the image list."""
    image = tmp_path / "image-packages.txt"
    image.write_text("".join(f"{name}=={version}\n" for name, version in PINNED_IMAGE.items()) + "timm==1.0.29\n")
    out = tmp_path / "dist"
    assert packager_main(["build", "--out", str(out), "--ensemble", str(ensemble_path), "--owner", OWNER,
                          "--no-index", "--find-links", str(fake_index), "--wheel-cache", str(tmp_path / "cache"),
                          "--image-packages", str(image)]) == 0
    said = capsys.readouterr().out
    assert "image image-packages.txt (5 packages) has numpy 2.4.6, opencv-python-headless 4.14.0.94, torch 2.14.1, " \
           "torchvision 0.29.1: 6 of 11 wheels ship" in said
    assert "size: dataset/ (files)" in said and "dataset/wheels/" in said and "warning" not in said

    dataset = out / "dataset"
    manifest = read_manifest(out)
    assert manifest["left_to_image"] == PINNED_IMAGE
    shipped = {"timm", "huggingface-hub", "filelock", "safetensors", "onnxruntime-gpu", "av"}
    assert {wheel["name"] for wheel in manifest["wheels"]} == shipped
    assert len(list((dataset / "wheels").iterdir())) == len(shipped)
    assert kernel.read_pins(dataset / "requirements.txt") == [
        Pin("torch", "2.14.1", ">=2.8,<2.15"), Pin("torchvision", "0.29.1", ">=0.23,<0.30"), Pin("timm", "1.0.31"),
        Pin("opencv-python-headless", "4.14.0.94", "any"), Pin("numpy", "2.4.6", "any"),
        Pin("onnxruntime-gpu", "1.31.1"), Pin("av", "18.1.0"), Pin("safetensors", "0.8.0")]
    with pytest.raises(PackagingError, match="leaves numpy, opencv-python-headless, torch, torchvision to the image"):
        verify(VerifyOptions(dist=out, check_only=True))
