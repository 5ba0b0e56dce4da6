"""The network block of `python -m packager verify`: a fresh venv whose runs cannot reach the network, as on Kaggle.

`unshare --net` (or `unshare -rn`, user namespaces) when this machine allows it, checked by a connect() to public
addresses that must fail; otherwise a sitecustomize.py in the venv that refuses every non-loopback connect and
name lookup. Runs get an environment without this machine's pip configuration, so only the bundle's wheels install.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from packager import PackagingError

PROBE_ADDRESSES = (("1.1.1.1", 443), ("8.8.8.8", 53), ("151.101.0.223", 443))  # Cloudflare, Google, PyPI
PROBE = r"""
import socket, sys
errors = []
for host, port in %r:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as error:
        errors.append(f"{host}:{port} {error}")
    else:
        print(f"connected to {host}:{port}")
        sys.exit(3)
try:
    socket.getaddrinfo("pypi.org", 443)
    lookup = "pypi.org resolves"
except OSError as error:
    lookup = f"pypi.org does not resolve ({error})"
print("blocked: " + "; ".join(errors) + "; " + lookup)
""" % (PROBE_ADDRESSES,)

SITECUSTOMIZE = '''"""Written by `python -m packager verify`: no network in this venv (Kaggle's internet is off)."""
import ipaddress
import socket

_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
BLOCKED = "network blocked by packager verify (Kaggle runs this kernel with the internet off)"


def _local(address):
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths
    host = address[0]
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address):
        raise OSError(101, BLOCKED)
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address):
        return 101
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _local((host,)):
        raise socket.gaierror(socket.EAI_NONAME, BLOCKED)
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
'''

PASS_THROUGH_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                    "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH")


def network_blocked(command: list[str], env: dict | None = None) -> tuple[bool, str]:
    """Run PROBE with the Python `command`: whether every public connect failed, and what the probe printed."""
    try:
        process = subprocess.run([*command, "-c", PROBE], capture_output=True, text=True, env=env, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    output = (process.stdout + process.stderr).strip()
    return process.returncode == 0 and output.startswith("blocked"), output


def unshare_prefix() -> list[str] | None:
    """`unshare --net` or `unshare -rn` if either runs here and really cuts the network off; else None."""
    unshare = shutil.which("unshare")
    if not unshare:
        return None
    for prefix in ([unshare, "--net"], [unshare, "-rn"]):
        blocked, _ = network_blocked([*prefix, sys.executable])
        if blocked:
            return prefix
    return None


def install_sitecustomize(venv: Path) -> Path:
    """Write SITECUSTOMIZE into the venv's site-packages, where its Python runs it at every start."""
    purelib = subprocess.run([str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    path = Path(purelib) / "sitecustomize.py"
    path.write_text(SITECUSTOMIZE)
    return path


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def clean_env(work: Path, venv: Path, extra: dict | None = None) -> dict:
    """A Kaggle-like environment: no pip configuration of this machine, no user site, no PYTHONPATH."""
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(work / "home"),
        "TMPDIR": str(work / "tmp"), "LANG": "C.UTF-8", "VIRTUAL_ENV": str(venv),
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "PYTHONUNBUFFERED": "1",
        "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
    }
    env.update({k: os.environ[k] for k in PASS_THROUGH_ENV if k in os.environ})
    env.update(extra or {})
    (work / "home").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    return env


class Sandbox:
    """A fresh venv plus the way to run things in it with the network blocked."""

    def __init__(self, work: Path, python: str, isolation: str = "auto",
                 seed: Callable[[Sandbox], None] | None = None, log: Callable[[str], None] = print):
        """`seed` runs in the new venv with the network, before the network is blocked; `log` gets the line
        saying how it was blocked."""
        self.work, self.venv = work, work / "venv"
        self.env = clean_env(work, self.venv)
        self.prefix: list[str] = []
        if isolation in ("auto", "unshare"):
            self.prefix = unshare_prefix() or []
            if not self.prefix and isolation == "unshare":
                raise PackagingError("unshare cannot block the network on this machine")
        self.method = " ".join(Path(self.prefix[0]).name if i == 0 else a for i, a in enumerate(self.prefix)) \
            or "sitecustomize"
        started = time.perf_counter()
        process = self.run([python, "-m", "venv", str(self.venv)], capture_output=True, text=True)
        if process.returncode != 0:
            raise PackagingError(f"python -m venv {self.venv} failed:\n{process.stderr[-3000:]}")
        if seed:
            seed(self)
        if not self.prefix:
            install_sitecustomize(self.venv)
        blocked, detail = network_blocked([*self.prefix, str(venv_python(self.venv))], env=self.env)
        if not blocked:
            raise PackagingError(f"could not block the network for the verify run ({self.method}): {detail}")
        log(f"fresh venv {self.venv} in {time.perf_counter() - started:.1f} s; network blocked ({self.method}): "
            f"{detail}")

    @property
    def python(self) -> str:
        return str(venv_python(self.venv))

    def run(self, command: list[str], env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *command], env={**self.env, **(env or {})}, **kwargs)
