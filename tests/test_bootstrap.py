"""kernel.py, the notebook's bootstrap: find the bundle, install offline only what the image lacks, import the
runtime; importing it (or any runtime module) does nothing else."""
from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import inference
import kernel

# Imports the modules named in argv[1] in a fresh interpreter, recording every process it starts (with the file
# whose module-level code was running: a third-party package's own import, or ours) and sys.path before and
# after. The recording is done here, in the script: nothing depends on a sitecustomize.
IMPORT_PROBE = r"""
import importlib, json, os, subprocess, sys
spawned = []

def importing():
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame.f_code.co_filename if frame is not None else None

real_popen_init = subprocess.Popen.__init__

def popen_init(self, args, *rest, **kwargs):
    spawned.append({"call": "Popen", "args": str(args), "importing": importing()})
    real_popen_init(self, args, *rest, **kwargs)

subprocess.Popen.__init__ = popen_init
for name in ("system", "fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve", "spawnv"):
    if hasattr(os, name):
        def recorder(*args, _name=name, _real=getattr(os, name), **kwargs):
            spawned.append({"call": _name, "args": str(args[:1]), "importing": importing()})
            return _real(*args, **kwargs)
        setattr(os, name, recorder)
before = list(sys.path)
for module in json.loads(sys.argv[1]):
    importlib.import_module(module)
loaded = sorted(n for n in sys.modules if n in ("kernel", "inference") or n.startswith("inference."))
print(json.dumps({"spawned": spawned, "before": before, "after": list(sys.path), "loaded": loaded}))
"""
REPO = Path(kernel.__file__).resolve().parent


def ours(spawn: dict) -> bool:
    """Whether a process was started by our code: not inside a third-party package's own import (importing
    torch runs `ldconfig -p` to find libdl), but by a module of the repository or the probe itself."""
    file = spawn["importing"]
    if file is None or not Path(file).is_absolute():
        return True
    path = Path(file).resolve()
    return path.is_relative_to(REPO) and not any(part in ("site-packages", ".venv") for part in path.parts)


def probe_imports(modules: list[str], cwd: Path, **env: str) -> tuple[dict, str]:
    """What importing `modules` in a fresh isolated interpreter did, and what it printed."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEEPFAKE_ENSEMBLE")} | env
    completed = subprocess.run([sys.executable, "-I", "-c", IMPORT_PROBE, json.dumps(modules)], cwd=cwd,
                               env=environment, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    *printed, result = completed.stdout.splitlines()
    return json.loads(result), "\n".join(printed)


def fake_bundle(folder: Path, requirements: str, python_version: str) -> Path:
    (folder / "wheels").mkdir(parents=True)
    (folder / "requirements.txt").write_text(requirements)
    (folder / "bundle-manifest.json").write_text(f'{{"python_version": "{python_version}"}}')
    return folder


def test_bootstrap_installs_only_what_is_missing(tmp_path, monkeypatch):
    """Installed under its own or an equivalent name (CPU onnxruntime for onnxruntime-gpu, opencv-python for
    the headless build) counts as present: two copies in one import folder would break both."""
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    bundle = fake_bundle(tmp_path, "# pins\nonnxruntime-gpu==1.31.1\nopencv-python-headless==4.14.0.94\n"
                                   "no-such-package==1.0  # comment\n", running)
    calls = []
    monkeypatch.setattr(kernel.subprocess, "run", lambda command: calls.append(command) or
                        subprocess.CompletedProcess(command, 0))
    kernel.install_bundled_wheels(bundle)
    (command,) = calls
    assert command[-1] == "no-such-package==1.0" and "onnxruntime-gpu==1.31.1" not in command
    assert command[command.index("--find-links") + 1] == str(bundle / "wheels") and "--no-index" in command


def test_bootstrap_names_a_python_mismatch(tmp_path, monkeypatch):
    bundle = fake_bundle(tmp_path, "no-such-package==1.0\n", "2.7")
    monkeypatch.setattr(kernel.subprocess, "run", lambda command: pytest.fail("pip must not run"))
    with pytest.raises(SystemExit, match="wheels are for Python 2.7"):
        kernel.install_bundled_wheels(bundle)


def test_bundle_is_found_below_the_input_folder(tmp_path, monkeypatch):
    bundle = tmp_path / "input" / "owner" / "my-bundle"
    (bundle / "inference").mkdir(parents=True)
    (bundle / "inference" / "__init__.py").write_text("")
    monkeypatch.setattr(kernel, "KAGGLE_INPUT", tmp_path / "input")
    monkeypatch.setattr(kernel, "KERNEL_DIR", tmp_path / "elsewhere")
    assert kernel.find_bundle() == bundle


@pytest.mark.slow
def test_importing_the_runtime_starts_no_process_and_leaves_sys_path_alone(tmp_path):
    """Every module of the runtime package imported in a fresh interpreter: none starts a process (an install,
    say) or edits sys.path; that is the bootstrap's job, and only when kernel.py runs."""
    modules = ["inference", *(m.name for m in pkgutil.walk_packages(inference.__path__, "inference."))]
    assert {"inference.cli", "inference.pipeline", "inference.video", "inference.budget"} <= set(modules)
    result, printed = probe_imports(modules, tmp_path)
    assert set(modules) <= set(result["loaded"])
    assert [spawn for spawn in result["spawned"] if ours(spawn)] == []
    assert result["after"] == result["before"]
    assert printed == ""


def test_importing_kernel_py_runs_nothing(tmp_path):
    """An attached bundle with a package to install is there to be found: importing kernel.py must neither
    install it, nor touch sys.path, nor import the runtime."""
    bundle = fake_bundle(tmp_path / "input" / "owner" / "my-bundle", "no-such-package==1.0\n", "2.7")
    (bundle / "inference").mkdir()
    (bundle / "inference" / "__init__.py").write_text("raise SystemExit('the bundle was imported')\n")
    result, printed = probe_imports(["kernel"], tmp_path, KAGGLE_INPUT=str(tmp_path / "input"))
    assert result["loaded"] == ["kernel"]
    assert result["spawned"] == []
    assert result["after"] == result["before"]
    assert printed == ""
