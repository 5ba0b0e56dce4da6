"""Hash-checked, strict loading of safetensors checkpoints."""
from __future__ import annotations

import hashlib
from pathlib import Path

from safetensors.torch import load_file
from torch import nn


class WeightsError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit its architecture."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path, sha256: str | None, what: str = "checkpoint") -> None:
    """A missing file or a sha256 other than the manifest's raises WeightsError naming the file."""
    if not Path(path).is_file():
        raise WeightsError(f"{what} not found: {path}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise WeightsError(f"sha256 mismatch for {path}: manifest says {sha256}, file is {actual}")


def load_checkpoint(model: nn.Module, path: Path, sha256: str | None = None) -> nn.Module:
    """Load a safetensors file into `model` strictly; a hash mismatch or key mismatch raises WeightsError."""
    check_file(path, sha256)
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # missing, unexpected or mis-shaped keys
        raise WeightsError(f"{path} does not fit {type(model).__name__}: {error}") from None
    return model.eval()
