"""The offline Kaggle bundle: build (layout, metadata, manifest, traced runtime code, wheels, determinism,
credentials), verify (offline in a fresh venv, against a local run; missing or corrupted files named), push.

The full bundle (about 3.4 GB of wheels, hard-linked from the persistent cache artifacts/cache/wheels) is built
once per module from a snapshot of the repository, and verified once; failure cases use hard-linked copies and
fail in the cheap pre-checks.
"""
from __future__ import annotations

import contextlib
import filecmp
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from packager import PLACEHOLDER_OWNER, REPO_ROOT, PackagingError
from packager.__main__ import main as packager_main
from packager.build import copy_ensemble, ensemble_files, prepare_out
from packager.credentials import credential_reason
from packager.manifest import check_files, read_manifest, sha256_file, write_manifest
from packager.push import push
from packager.sandbox import PROBE, install_sitecustomize, unshare_prefix, venv_python
from packager.trace import TOOLING, is_tooling
from packager.verify import VerifyOptions, verify
from packager.wheels import (
    PLATFORMS,
    available_versions,
    fetch,
    nearest_version,
    read_pins,
    resolve,
    resolve_cached,
    target_requirements,
)

OWNER = "tester"
PLANTED = ("kaggle.json", ".env", ".netrc", "api_token.txt", "server.pem", "id_rsa", "aws_credentials")
SECRET = '{"username": "someone", "key": "0123456789abcdef0123456789abcdef"}'


RUNTIME_PACKAGES = ("inference", "weights", "blending")
TOOLING_PACKAGES = ("zootools", "bench", "packager", "tests")


def tooling_files(root: Path) -> list[str]:
    """The Python files below root that the one list of tooling patterns (packager.trace.TOOLING) names."""
    return sorted(relative for path in root.rglob("*.py") if is_tooling(relative := path.relative_to(root).as_posix()))


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def repo_snapshot(tmp_path_factory) -> Path:
    """kernel.py, the runtime packages, the tooling packages and the runtime pins, copied once: builds of this
    module never race edits of the working tree."""
    root = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (*RUNTIME_PACKAGES, *TOOLING_PACKAGES):
        shutil.copytree(REPO_ROOT / package, root / package, ignore=ignore)
    for name in ("kernel.py", "requirements-kernel.txt"):
        shutil.copyfile(REPO_ROOT / name, root / name)
    return root


def build_cli(out: Path, ensemble: Path, repo: Path, *extra: str) -> int:
    return packager_main(["build", "--out", str(out), "--ensemble", str(ensemble), "--repo", str(repo),
                          "--owner", OWNER, *extra])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, repo_snapshot, ensemble_path) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "dist"
    assert build_cli(out, ensemble_path, repo_snapshot) == 0
    return out


@pytest.fixture(scope="module")
def verified(bundle, repo_snapshot, ensemble_path, sample_videos):
    """The full verify, once: fresh venv, network blocked, wheels self-installed, Kaggle paths, no arguments."""
    videos = next(iter(sample_videos.values())).parent
    return verify(VerifyOptions(dist=bundle, videos=videos, ensemble=ensemble_path, repo=repo_snapshot,
                                device="cpu"))


def linked_copy(dist: Path, destination: Path) -> Path:
    """A copy of a bundle made of hard links: cheap, and deleting a file in it leaves the original alone."""
    shutil.copytree(dist, destination, copy_function=os.link)
    return destination


def replace_file(path: Path, data: bytes) -> None:
    """Write new content without touching the other hard links of the file."""
    path.unlink()
    path.write_bytes(data)


def refresh_manifest(dist: Path) -> None:
    """Rewrite the bundle manifest for the files now present (to reach the checks behind the manifest's).

    Wheels are never edited here: their recorded hashes are reused instead of hashing gigabytes again."""
    manifest = read_manifest(dist)
    known = {e["path"]: e["sha256"] for e in manifest["files"]
             if e["path"].startswith("dataset/wheels/") and (dist / e["path"]).is_file()}
    write_manifest(dist, {k: v for k, v in manifest.items() if k not in ("format", "files")}, known=known)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, repo_snapshot, ensemble_path):
    """A second build from copies of the repository and of the ensemble folder, with credential-like files
    planted where a careless build would pick them up: (dist, what the build printed, the source folders)."""
    root = tmp_path_factory.mktemp("planted")
    repo, weights_dir = root / "repo", root / "weights"
    shutil.copytree(repo_snapshot, repo)
    shutil.copytree(ensemble_path.parent, weights_dir)
    for folder in (weights_dir, repo / "weights", repo / "weights" / "archs", repo / "blending", repo):
        for name in PLANTED:
            (folder / name).write_text(SECRET)
    (repo / "weights" / ".kaggle").mkdir()
    (repo / "weights" / ".kaggle" / "config.py").write_text(f"KEY = {SECRET!r}\n")
    out, said = root / "dist", io.StringIO()
    with contextlib.redirect_stdout(said):
        assert build_cli(out, weights_dir / "ensemble.json", repo) == 0
    return out, said.getvalue(), repo, weights_dir


@pytest.fixture(scope="module")
def small_dist(bundle, tmp_path_factory) -> Path:
    """The bundle without its wheels (manifest rewritten to match): enough for push, cheap to hash."""
    copy = linked_copy(bundle, tmp_path_factory.mktemp("small") / "dist")
    shutil.rmtree(copy / "dataset" / "wheels")
    refresh_manifest(copy)
    return copy


def network_probe(command: list[str]) -> tuple[bool, str]:
    """Run the packager's network probe (PROBE) under `command`: whether every connection was refused, and what
    it printed."""
    try:
        process = subprocess.run([*command, "-c", PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    output = (process.stdout + process.stderr).strip()
    return process.returncode == 0 and output.startswith("blocked"), output


def make_wheel(folder: Path, name: str, version: str, requires=()) -> Path:
    stem = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name.replace('-', '_')}/__init__.py", "")
        z.writestr(f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
        z.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr(f"{stem}.dist-info/RECORD", "")
    return path


def make_sdist(folder: Path, name: str, version: str) -> Path:
    source = folder / f"{name}-{version}"
    source.mkdir()
    (source / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (source / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    path = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    shutil.rmtree(source)
    return path


# ---------------------------------------------------------------------------------------------- build

@pytest.mark.bundle
def test_layout_and_metadata(bundle, ensemble_path, repo_snapshot):
    dataset, kernel = bundle / "dataset", bundle / "kernel"
    assert sorted(p.name for p in bundle.iterdir()) == ["dataset", "kernel"]
    assert sorted(p.name for p in kernel.iterdir()) == ["kernel-metadata.json", "kernel.py"]
    assert {"inference", "weights", "blending", "ensemble", "wheels", "requirements.txt", "dataset-metadata.json",
            "bundle-manifest.json"} == {p.name for p in dataset.iterdir()}
    assert (kernel / "kernel.py").read_bytes() == (repo_snapshot / "kernel.py").read_bytes()

    raw = (kernel / "kernel-metadata.json").read_text()
    assert '"enable_internet": false' in raw  # written explicitly: the Kaggle client defaults it to true
    meta = json.loads(raw)
    assert meta == {
        "id": f"{OWNER}/deepfake-kit-inference", "title": "Deepfake kit inference", "code_file": "kernel.py",
        "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
        "enable_tpu": False, "enable_internet": False, "dataset_sources": [f"{OWNER}/deepfake-kit-bundle"],
        "competition_sources": ["deepfake-detection-challenge"], "kernel_sources": [], "model_sources": [],
    }
    dataset_meta = json.loads((dataset / "dataset-metadata.json").read_text())
    assert dataset_meta["id"] == f"{OWNER}/deepfake-kit-bundle" and dataset_meta["licenses"] == [{"name": "other"}]

    # the ensemble: the manifest byte for byte, and every file it names at its relative path, hash-checked
    assert (dataset / "ensemble" / "ensemble.json").read_bytes() == ensemble_path.read_bytes()
    named = ensemble_files(ensemble_path)
    assert {"blazeface_back.safetensors", "meso4_df.safetensors"} <= {f.path for f in named}
    for item in named:
        assert sha256_file(dataset / "ensemble" / item.path) == item.sha256
    assert sorted(p.name for p in (dataset / "ensemble").iterdir()) == sorted(
        ["ensemble.json", *(f.path for f in named)])

    # the pins: the kernel's, with onnxruntime swapped for its CUDA build on the gpu target; every wheel ships
    pins = [line.split("#")[0].strip() for line in (dataset / "requirements.txt").read_text().splitlines()
            if not line.startswith("#")]
    kernel_pins = [line for line in (REPO_ROOT / "requirements-kernel.txt").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
    assert [p.split("==")[0] for p in pins] == [
        "onnxruntime-gpu" if p.startswith("onnxruntime==") else p.split("==")[0] for p in kernel_pins]
    assert "torch==2.14.1" in pins and any(p.startswith("onnxruntime-gpu==1.") for p in pins)
    assert "# onnxruntime==1.31.1 replaced by onnxruntime-gpu==" in (dataset / "requirements.txt").read_text()
    assert read_manifest(bundle)["left_to_image"] == {}


@pytest.mark.bundle
def test_bundle_manifest_lists_every_file_with_its_hash_and_size(bundle):
    manifest = read_manifest(bundle)
    entries = {e["path"]: e for e in manifest["files"]}
    on_disk = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert sorted([*entries, "dataset/bundle-manifest.json"]) == on_disk
    assert list(entries) == sorted(entries)  # sorted listing
    for path, entry in entries.items():
        if not path.startswith("dataset/wheels/"):  # wheels: hashed below through check_files
            assert sha256_file(bundle / path) == entry["sha256"], path
        assert (bundle / path).stat().st_size == entry["size"], path
    check_files(bundle)  # every hash, wheels included
    assert manifest["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert manifest["target"] == "gpu" and manifest["owner"] == OWNER


@pytest.mark.bundle
def test_runtime_code_is_traced_and_holds_no_tooling(bundle, repo_snapshot):
    manifest = read_manifest(bundle)
    bundled = sorted(p.relative_to(bundle / "dataset").as_posix() for p in (bundle / "dataset").rglob("*.py"))
    assert bundled == manifest["runtime_modules"]
    for module in ("inference/__init__.py", "inference/cli.py", "inference/pipeline.py", "inference/video.py",
                   "weights/__init__.py", "weights/archs/__init__.py", "weights/archs/blazeface.py",
                   "weights/onnx_runtime.py", "weights/manifest.py", "blending/__init__.py", "blending/blend.py"):
        assert module in bundled
    tooling_in_source = tooling_files(repo_snapshot)
    for package in ("zootools/", "bench/", "packager/", "tests/"):  # every kind of tooling is in the source...
        assert any(path.startswith(package) for path in tooling_in_source), (package, TOOLING)
    for tooling in tooling_in_source:
        assert tooling not in bundled  # ...and none of it is bundled
    assert not any(is_tooling(module) for module in bundled)
    assert "kernel.py" not in bundled and not (bundle / "dataset" / "kernel.py").exists()


@pytest.mark.slow
@pytest.mark.bundle
def test_bundled_code_imports_without_the_tooling(bundle, tmp_path):
    """The runtime packages import from the bundle alone (not the repository), and the tooling is absent."""
    dataset = bundle / "dataset"
    # the model zoo's tooling, beside the zoo (none is left inside a runtime package)
    tooling = [path[:-len(".py")].replace("/", ".").removesuffix(".__init__") for path in tooling_files(REPO_ROOT)
               if path.split("/")[0] == "zootools"]
    assert "zootools.build" in tooling and "zootools.importing.reading" in tooling
    assert not [path for path in tooling_files(REPO_ROOT) if path.split("/")[0] in RUNTIME_PACKAGES]
    # No site (-S): this venv's editable install of the repository would serve what the bundle lacks. Its
    # site-packages are added as a plain folder, as an image without the repository has them.
    site_packages = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    script = f"""
import importlib, sys
sys.path.insert(0, {str(dataset)!r})
sys.path.extend({site_packages!r})
import inference.cli, weights, weights.archs, weights.onnx_runtime, blending
loaded = [m.__file__ for n, m in sys.modules.items() if n.split('.')[0] in {RUNTIME_PACKAGES!r}]
assert all(f.startswith({str(dataset)!r}) for f in loaded), loaded
assert 'meso4' in weights.list_archs() and 'blazeface_back' in weights.list_archs()
for tooling in {tooling!r}:
    try:
        importlib.import_module(tooling)
    except ModuleNotFoundError:
        continue
    raise SystemExit(f'{{tooling}} is importable from the bundle')
print('ok', len(loaded))
"""
    process = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", script], cwd=tmp_path, capture_output=True,
                             text=True)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("ok")


@pytest.mark.bundle
def test_wheels_are_binary_for_the_target_and_cover_every_pin(bundle):
    manifest = read_manifest(bundle)
    wheels = sorted(p.name for p in (bundle / "dataset" / "wheels").iterdir())
    assert wheels == sorted(w["file"] for w in manifest["wheels"]) and len(wheels) > 20
    assert all(name.endswith(".whl") for name in wheels)
    allowed = {*(p for p in PLATFORMS), "any"}
    for name in wheels:
        platforms = name[:-4].split("-")[-1].split(".")
        assert any(p in allowed for p in platforms), name
        python = name[:-4].split("-")[-3]
        assert python.startswith(("py3", "py2.py3", "cp3")), name
    names = {w["name"] for w in manifest["wheels"]}
    assert {"torch", "torchvision", "timm", "opencv-python-headless", "numpy", "onnxruntime-gpu", "av",
            "safetensors"} <= names
    assert "onnxruntime" not in names  # the CPU build is replaced, not shipped beside the GPU one
    assert any(n.startswith("nvidia-nccl") for n in names)  # tagged manylinux_2_18 only: needs the full tag list


@pytest.mark.bundle
def test_two_builds_give_the_same_bytes(bundle, planted, repo_snapshot):
    """The second build (other folders, planted credentials left out) gives the same bytes, file for file."""
    again = planted[0]
    assert (again / "dataset" / "bundle-manifest.json").read_bytes() == \
        (bundle / "dataset" / "bundle-manifest.json").read_bytes()
    for entry in read_manifest(bundle)["files"]:
        if not entry["path"].startswith("dataset/wheels/"):
            assert filecmp.cmp(bundle / entry["path"], again / entry["path"], shallow=False), entry["path"]
    check_files(again)  # the wheels too, against the identical manifest
    text = (again / "dataset" / "bundle-manifest.json").read_text()
    assert str(again.parent) not in text and str(repo_snapshot) not in text  # no machine paths
    assert not re.search(r"20\d\d-\d\d-\d\d", text)  # no dates


@pytest.mark.slow
@pytest.mark.bundle
def test_credentials_are_never_bundled(planted, tmp_path, capsys):
    out, said, repo, weights_dir = planted
    for name in PLANTED:
        assert f"not bundled (credential-like name): {weights_dir / name}" in said
        assert f"not bundled (credential-like name): weights/{name}" in said
        assert f"not bundled (credential-like name): blending/{name}" in said
    assert "not bundled (credential-like name): weights/.kaggle/config.py" in said
    bundled = [p for p in out.rglob("*") if p.is_file()]
    assert bundled and not any(credential_reason(p.relative_to(out).as_posix()) for p in bundled)
    assert not {p.name for p in bundled} & set(PLANTED)
    assert not any(SECRET.encode() in p.read_bytes() for p in bundled if "wheels" not in p.parts)

    # a manifest that names a credential-like file is refused, naming it
    manifest = json.loads((weights_dir / "ensemble.json").read_text())
    manifest["models"][0]["checkpoint"] = "kaggle.json"
    manifest["models"][0]["sha256"] = sha256_file(weights_dir / "kaggle.json")
    (tmp_path / "kaggle.json").write_text(SECRET)
    (tmp_path / "bad.json").write_text(json.dumps(manifest))
    with pytest.raises(PackagingError, match=r"refusing to bundle kaggle\.json"):
        ensemble_files(tmp_path / "bad.json")
    # and so is a runtime module with a credential-like name that the kernel really imports
    shutil.copytree(repo, tmp_path / "repo")
    (tmp_path / "repo" / "blending" / "token_store.py").write_text("VALUE = 1\n")
    init = tmp_path / "repo" / "blending" / "__init__.py"
    init.write_text(init.read_text() + "from blending import token_store  # noqa\n")
    capsys.readouterr()
    assert build_cli(tmp_path / "dist", weights_dir / "ensemble.json", tmp_path / "repo") == 1
    err = capsys.readouterr().err
    assert "refusing to bundle runtime module blending/token_store.py" in err and "credential" in err
    assert not (tmp_path / "dist" / "dataset").exists()


@pytest.mark.parametrize("name", ["kaggle.json", ".env", ".env.local", "my.env", "hf_token", "API_TOKEN.txt",
                                  "server.pem", "private.key", ".netrc", "_netrc", ".pypirc", ".git-credentials",
                                  "id_rsa", "id_ed25519.pub", "credentials.json", "client_secret.json",
                                  ".kaggle/anything.txt", "a/.ssh/config"])
def test_credential_names(name):
    assert credential_reason(name)


@pytest.mark.parametrize("name", ["weights/manifest.py", "ensemble.json", "meso4_df.safetensors", "wheels/torch-2.14.1"
                                  "-cp311-cp311-manylinux_2_28_x86_64.whl", "requirements.txt", "environment.yml"])
def test_ordinary_names_pass(name):
    assert credential_reason(name) is None


def test_ensemble_errors_name_the_file(tmp_path, ensemble_path):
    weights_dir = tmp_path / "weights"
    shutil.copytree(ensemble_path.parent, weights_dir)
    target = weights_dir / "meso4_df.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    (weights_dir / "meso4_f2f.safetensors").unlink()
    with pytest.raises(PackagingError) as error:
        copy_ensemble(weights_dir / "ensemble.json", tmp_path / "dataset")
    message = str(error.value)
    assert f"sha256 mismatch: {target}" in message
    assert f"missing: {weights_dir / 'meso4_f2f.safetensors'}" in message
    assert "models[0] (meso4_df).checkpoint" in message


@pytest.mark.parametrize("damage,message", [
    (lambda model: model.update(arch="no_such_net"), "no_such_net"),
    (lambda model: model.update(arch="mesoinception4"), "does not fit"),  # a Meso4 checkpoint
])
def test_models_that_would_fail_on_a_gpu_fail_the_build(tmp_path, ensemble_path, damage, message):
    """The CPU runs the ONNX exports; the build still loads each PyTorch model strictly, as a Kaggle GPU will."""
    weights_dir = tmp_path / "weights"
    shutil.copytree(ensemble_path.parent, weights_dir)
    data = json.loads((weights_dir / "ensemble.json").read_text())
    damage(data["models"][0])
    (weights_dir / "ensemble.json").write_text(json.dumps(data))
    with pytest.raises(PackagingError, match=message):
        copy_ensemble(weights_dir / "ensemble.json", tmp_path / "dataset")


def test_build_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "notes.txt").write_text("mine")
    with pytest.raises(PackagingError, match="not written by the packager"):
        prepare_out(tmp_path)


# ---------------------------------------------------------------------------------------------- wheels

def test_nearest_version():
    assert nearest_version("1.31.1", ["1.30.0", "1.31.0", "1.31.1", "1.32.0"]) == "1.31.1"
    assert nearest_version("1.31.1", ["1.30.0", "1.31.0", "1.32.0"]) == "1.31.0"
    assert nearest_version("1.31.1", ["1.29.0", "1.30.0", "1.32.0"]) == "1.30.0"
    assert nearest_version("1.31.1", ["1.32.0", "1.33.0", "1.32.1rc1"]) == "1.32.0"
    assert nearest_version("1.31.1", []) is None


def test_resolution_is_cached_and_the_cache_is_hash_checked(tmp_path):
    index, cache = tmp_path / "index", tmp_path / "cache"
    index.mkdir()
    make_wheel(index, "fakepkg", "1.0", ["fakedep>=2"])
    make_wheel(index, "fakedep", "2.1")
    make_wheel(index, "onnxruntime-gpu", "1.30.0")
    make_wheel(index, "onnxruntime-gpu", "1.32.0")
    index_args = ["--no-index", "--find-links", str(index)]
    said = []

    assert available_versions("onnxruntime-gpu", "3.11", index_args) == ["1.30.0", "1.32.0"]
    pins, notes = target_requirements(["fakepkg==1.0", "onnxruntime==1.31.1"], "gpu", "3.11", index_args)
    assert pins == ["fakepkg==1.0", "onnxruntime-gpu==1.30.0"] and "nearest" in notes[0]
    assert target_requirements(["onnxruntime==1.31.1"], "cpu", "3.11", index_args) == (["onnxruntime==1.31.1"], [])

    resolution = resolve_cached(["fakepkg==1.0"], "3.11", "cpu", cache, index_args, log=said.append)
    assert [w.filename for w in resolution.wheels] == ["fakedep-2.1-py3-none-any.whl", "fakepkg-1.0-py3-none-any.whl"]
    digests = fetch(resolution, cache, index_args, log=said.append)
    assert any("downloading 2 of 2" in s for s in said)
    assert digests["fakepkg-1.0-py3-none-any.whl"] == sha256_file(index / "fakepkg-1.0-py3-none-any.whl")

    said.clear()
    shutil.rmtree(index)  # a rebuild needs neither the index nor pip
    again = resolve_cached(["fakepkg==1.0"], "3.11", "cpu", cache, index_args, log=said.append)
    assert again == resolution and fetch(again, cache, index_args, log=said.append) == digests
    assert any("resolution cached" in s for s in said) and not any("downloading" in s for s in said)

    (cache / "fakedep-2.1-py3-none-any.whl").write_bytes(b"corrupt")  # a damaged cache file is caught
    with pytest.raises(PackagingError, match="fakedep-2.1-py3-none-any.whl"):
        fetch(again, cache, index_args, log=said.append)
    assert any("has sha256" in s and "downloading it again" in s for s in said)


def test_a_requirement_without_a_binary_wheel_fails_naming_it(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    make_sdist(index, "sourceonly", "1.0")
    make_wheel(index, "fakepkg", "1.0", ["sourceonly==1.0"])
    with pytest.raises(PackagingError, match=r"no binary wheel for sourceonly==1\.0") as error:
        resolve(["fakepkg==1.0"], "3.11", ["--no-index", "--find-links", str(index)])
    assert "never sdists" in str(error.value)


# ---------------------------------------------------------------------------------------------- verify

@pytest.mark.bundle
def test_verify_runs_the_bundle_offline_and_matches_the_local_run(verified, bundle, sample_videos):
    assert set(verified["rows"]) == set(sample_videos)
    assert verified["max_difference"] <= 1e-6
    assert verified["rows"]["no_face_1080p.mp4"] == 0.5
    assert all(0.01 <= v <= 0.99 for v in verified["rows"].values())
    assert verified["isolation"] in ("unshare --net", "unshare -rn", "sitecustomize")
    assert len(verified["resolved"]) == len(read_manifest(bundle)["wheels"])
    assert not Path(verified["work"]).exists()  # the venv and work folder are cleaned up
    check_files(bundle)  # the run wrote nothing into the bundle (no __pycache__ in dist/dataset)


@pytest.mark.bundle
def test_verify_names_a_missing_wheel(bundle, tmp_path):
    copy = linked_copy(bundle, tmp_path / "dist")
    wheel = next((copy / "dataset" / "wheels").glob("timm-*.whl"))
    wheel.unlink()
    with pytest.raises(PackagingError, match=rf"missing: dataset/wheels/{wheel.name}"):
        verify(VerifyOptions(dist=copy, check_only=True))


@pytest.mark.bundle
def test_verify_names_a_missing_or_corrupted_weight(bundle, tmp_path):
    copy = linked_copy(bundle, tmp_path / "dist")
    weight = copy / "dataset" / "ensemble" / "meso4_df.safetensors"
    data = bytearray(weight.read_bytes())
    data[100] ^= 0x01
    replace_file(weight, bytes(data))
    with pytest.raises(PackagingError, match=r"sha256 mismatch: dataset/ensemble/meso4_df\.safetensors"):
        verify(VerifyOptions(dist=copy, check_only=True))
    weight.unlink()
    with pytest.raises(PackagingError, match=r"missing: dataset/ensemble/meso4_df\.safetensors"):
        verify(VerifyOptions(dist=copy, check_only=True))
    check_files(bundle)  # the original is untouched


@pytest.mark.slow
@pytest.mark.bundle
def test_verify_names_a_wheel_pip_cannot_find_offline(bundle, tmp_path):
    """A wheel missing from a bundle whose manifest was rewritten to match: the offline pip resolution in the
    fresh venv (no install) names it."""
    copy = linked_copy(bundle, tmp_path / "dist")
    wheel = next((copy / "dataset" / "wheels").glob("filelock-*.whl"))  # a dependency of torch, not a pin
    wheel.unlink()
    refresh_manifest(copy)
    with pytest.raises(PackagingError, match=rf"filelock.*missing wheel dataset/wheels/{wheel.name}"):
        verify(VerifyOptions(dist=copy, check_only=True))


# ---------------------------------------------------------------------------------------------- image-aware bundles

IMAGE_TIMM = "1.0.29"  # older than the pin, and on this machine's index: the kernel must replace it


@pytest.fixture(scope="module")
def image_packages(tmp_path_factory) -> Path:
    """A Kaggle-like image list: the pinned torch, torchvision, numpy and OpenCV, and another timm."""
    pins = {pin.name: pin.version for pin in read_pins(REPO_ROOT / "requirements-kernel.txt")}
    path = tmp_path_factory.mktemp("image") / "image-packages.txt"
    path.write_text("".join(f"{name}=={pins[name]}\n" for name in ("torch", "torchvision", "numpy",
                                                                    "opencv-python-headless"))
                    + f"timm=={IMAGE_TIMM}\n")
    return path


@pytest.mark.slow
@pytest.mark.bundle
def test_verify_on_an_image_with_another_timm(image_packages, repo_snapshot, ensemble_path, sample_videos, tmp_path):
    """A bundle built for the image ships neither torch nor its CUDA libraries; in a venv seeded with the image's
    versions, offline, the kernel replaces timm with the bundle's, and the predictions equal the local run."""
    out = tmp_path / "dist"
    assert build_cli(out, ensemble_path, repo_snapshot, "--image-packages", str(image_packages)) == 0
    shipped = {wheel["name"] for wheel in read_manifest(out)["wheels"]}
    assert "timm" in shipped and not shipped & {"torch", "torchvision", "numpy", "opencv-python-headless"}
    assert not any(name.startswith(("nvidia", "triton")) for name in shipped)
    videos = next(iter(sample_videos.values())).parent
    summary = verify(VerifyOptions(dist=out, videos=videos, ensemble=ensemble_path, repo=repo_snapshot,
                                   device="cpu", image=image_packages))
    pins = {pin.name: pin.version for pin in read_pins(REPO_ROOT / "requirements-kernel.txt")}
    assert summary["packages"]["timm"] == pins["timm"] != IMAGE_TIMM
    assert summary["packages"]["torch"] == pins["torch"]
    assert summary["max_difference"] <= 1e-6 and set(summary["rows"]) == set(sample_videos)


def test_network_block_fallback_refuses_public_connects(tmp_path):
    """The sitecustomize fallback really blocks (and keeps loopback); unshare, where it runs, blocks too."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install_sitecustomize(venv)
    blocked, detail = network_probe([str(venv_python(venv))])
    assert blocked, detail
    assert "blocked by packager verify" in detail

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).close(); print('loopback ok')"
    process = subprocess.run([str(venv_python(venv)), "-c", script], capture_output=True, text=True)
    server.close()
    assert process.stdout.strip() == "loopback ok", process.stderr

    prefix = unshare_prefix()
    if prefix is not None:
        blocked, detail = network_probe([*prefix, sys.executable])
        assert blocked, detail


# ---------------------------------------------------------------------------------------------- push

@pytest.fixture
def kaggle_env(monkeypatch, tmp_path):
    """No Kaggle credentials anywhere, and a fake `kaggle` first on PATH that records its arguments (the runs of
    the client are tested against a stand-in of the real one in tests/test_push.py)."""
    for name in [name for name in os.environ if name.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "kaggle"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def recorded(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.is_file() else []


def give_credentials(monkeypatch, tmp_path, username: str) -> None:
    config = tmp_path / "kaggle-config"
    config.mkdir(exist_ok=True)
    (config / "kaggle.json").write_text(json.dumps({"username": username, "key": "not-a-real-key"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))


@pytest.mark.bundle
def test_push_without_credentials_prints_the_commands(small_dist, kaggle_env, capsys):
    assert push(small_dist, "first version") == 1
    out = capsys.readouterr().out
    assert f"kaggle datasets version -p {small_dist / 'dataset'} -m 'first version' -r zip" in out
    assert f"kaggle kernels push -p {small_dist / 'kernel'}" in out
    assert "no Kaggle credentials" in out and "nothing was pushed" in out and "save it once in the web UI" in out
    assert recorded(kaggle_env) == []


@pytest.mark.slow
@pytest.mark.bundle
def test_push_cli_without_credentials(small_dist, kaggle_env):
    process = subprocess.run([sys.executable, "-m", "packager", "push", "--dist", str(small_dist), "--new"],
                             cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ.copy())
    assert process.returncode == 1, process.stderr
    assert f"kaggle datasets create -p {small_dist / 'dataset'} -r zip" in process.stdout
    assert recorded(kaggle_env) == []


@pytest.mark.bundle
def test_push_refuses_another_owner(small_dist, kaggle_env, monkeypatch, tmp_path):
    give_credentials(monkeypatch, tmp_path, "someone-else")
    with pytest.raises(PackagingError, match="belongs to 'tester'.*'someone-else'"):
        push(small_dist, "v2")
    assert recorded(kaggle_env) == []


@pytest.mark.bundle
def test_push_refuses_pulled_metadata_placeholders_and_tampered_bundles(small_dist, kaggle_env, monkeypatch, tmp_path):
    give_credentials(monkeypatch, tmp_path, OWNER)
    copy = linked_copy(small_dist, tmp_path / "dist")
    (copy / "dataset" / "kaggle.json").write_text("{}")  # something added after the build is never uploaded
    with pytest.raises(PackagingError, match=r"not in the manifest: dataset/kaggle\.json"):
        push(copy, "v2")
    (copy / "dataset" / "kaggle.json").unlink()

    metadata = copy / "kernel" / "kernel-metadata.json"
    pulled = json.loads(metadata.read_text())
    pulled["id"] = f"code/{OWNER}/deepfake-kit-inference"  # a prefix, as in metadata pulled from Kaggle
    replace_file(metadata, json.dumps(pulled).encode())
    refresh_manifest(copy)
    with pytest.raises(PackagingError, match="is not OWNER/slug"):
        push(copy, "v2")

    for path in (copy / "kernel" / "kernel-metadata.json", copy / "dataset" / "dataset-metadata.json"):
        text = path.read_text().replace(f"code/{OWNER}/", f"{OWNER}/").replace(f"{OWNER}/", f"{PLACEHOLDER_OWNER}/")
        replace_file(path, text.encode())
    refresh_manifest(copy)
    with pytest.raises(PackagingError, match="placeholder"):
        push(copy, "v2")
    assert recorded(kaggle_env) == []
