"""The runtime code set: what kernel.py's bootstrap imports (the runtime package and what it imports) from the repo.

Traced in a subprocess rather than kept as a list by hand: a module the runtime starts importing is bundled
without anyone remembering to add it, and a tooling module is never bundled because the runtime never loads it.
"""
from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

from packager import PackagingError

# Offline tooling, the one list of it: if the trace ever finds one of these, the runtime has started importing
# tooling.
TOOLING = ("zootools/*", "*__main__.py", "bench/*", "tests/*", "packager/*", "conftest.py")
SKIPPED_DIRS = {"site-packages", "dist-packages", "venv", "node_modules"}
MARKER = "PACKAGER_TRACE "

_TRACE_SCRIPT = r"""
import importlib.util, json, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
spec = importlib.util.spec_from_file_location("kernel", root / "kernel.py")
kernel = importlib.util.module_from_spec(spec)
sys.modules["kernel"] = kernel
spec.loader.exec_module(kernel)
kernel.import_runtime(root)
files = sorted({str(Path(m.__file__).resolve()) for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(%r + json.dumps(files))
""" % MARKER


def is_tooling(relative: str) -> bool:
    return any(fnmatch.fnmatchcase(relative, pattern) for pattern in TOOLING)


def trace_runtime_modules(root: Path, python: str = sys.executable) -> list[str]:
    """Sorted POSIX paths, relative to root, of the repository's modules that kernel.py's bootstrap imports.

    kernel.py itself is not in the list (it ships as the kernel's code file, not in the dataset).
    """
    root = root.resolve()
    if not (root / "kernel.py").is_file():
        raise PackagingError(f"{root / 'kernel.py'} is missing")
    with tempfile.TemporaryDirectory(prefix="packager-trace-") as empty:
        env = {k: v for k, v in os.environ.items() if k not in ("DEEPFAKE_ENSEMBLE", "PYTHONPATH")}
        env["KAGGLE_INPUT"] = env["KAGGLE_WORKING"] = empty  # no attached dataset, no Kaggle mode
        process = subprocess.run([python, "-I", "-B", "-c", _TRACE_SCRIPT, str(root)],
                                 cwd=empty, env=env, capture_output=True, text=True)
    lines = [line for line in process.stdout.splitlines() if line.startswith(MARKER)]
    if process.returncode != 0 or not lines:
        raise PackagingError(f"tracing the runtime imports of {root / 'kernel.py'} failed "
                             f"(exit {process.returncode}):\n{process.stderr[-4000:]}")
    modules = []
    for name in json.loads(lines[-1][len(MARKER):]):
        path = Path(name)
        try:
            relative = PurePosixPath(path.relative_to(root).as_posix())
        except ValueError:
            continue  # the standard library and installed packages
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in relative.parts):
            continue  # a virtual env inside the repository
        if str(relative) == "kernel.py":
            continue
        modules.append(str(relative))
    tooling = [m for m in modules if is_tooling(m)]
    if tooling:
        raise PackagingError(f"the runtime imports offline tooling: {', '.join(tooling)} (traced from kernel.py); "
                             "move that import out of the runtime path instead of bundling tooling")
    if not modules:
        raise PackagingError(f"importing {root / 'kernel.py'} loaded no runtime module from {root}")
    return sorted(modules)
