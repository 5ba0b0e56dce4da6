"""Reading a team's checkpoint without running anything in it: the file's format sniffed from its bytes, pickles
through torch's weights-only unpickler and the smallest allowlist the teams' files need, the state dict unwrapped,
and layouts with no architecture here named and refused. Every refusal is an `ImportRefused` with a one-line reason.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from weights.checkpoint import WeightsError

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")  # where training scripts put the weights


class ImportRefused(WeightsError):
    """A checkpoint cannot be imported; the message says why in one line. Nothing was written."""


# What a numpy number or array in a pickle may be: the plain numeric dtypes (bool, integers, floats). An object
# array's pickle holds arbitrary objects, so ObjectDType (and void, strings, ...) stay refused.
PLAIN_NUMERIC = "?bBhHiIlLqQefd"


def safe_globals() -> list:
    """The smallest allowlist that reads the teams' pickles beyond torch's own: numpy's scalar and array
    reconstructors (under their numpy 1.x and 2.x names), `numpy.ndarray`, `numpy.dtype`, and the dtype classes
    of plain numeric dtypes (the 1st place's float64 `bce_best`, \\WM/'s `logs` arrays). Any other dtype class
    (object, void, ...) stays refused: torch's unpickler builds only allowlisted classes."""
    multiarray = (getattr(np, "_core", None) or np.core).multiarray
    allowed = [np.ndarray, np.dtype]
    for function in (multiarray.scalar, multiarray._reconstruct):
        allowed += [function, *((function, f"{package}.multiarray.{function.__name__}")
                                for package in ("numpy.core", "numpy._core"))]
    if getattr(np, "dtypes", None) is not None:  # numpy >= 1.25: dtypes have their own classes
        allowed += list(dict.fromkeys(type(np.dtype(code)) for code in PLAIN_NUMERIC))
    return allowed


def _file_format(path: Path) -> str:
    """'safetensors', 'zip' (torch.save since 1.6), 'legacy' (older torch.save) or 'unknown', from the bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":  # a pickle protocol opcode: the legacy format starts with a pickled magic number
        return "legacy"
    return "unknown"


def _pickle_refusal(error: Exception) -> str:
    """What torch's weights-only unpickler refused, in a few words."""
    text = str(error)
    for pattern in (r"GLOBAL (\S+)", r"but got <class '([^']+)'>", r"Unsupported operand (\S+)"):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    lines = [line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line]
    return lines[0].split("error:", 1)[-1].strip() if lines else text.splitlines()[0][:200]


def read_checkpoint(path: Path | str) -> Any:
    """The object stored in a checkpoint file, read without running any code from it (see `safe_globals`)."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"checkpoint not found: {path}")
    kind = _file_format(path)
    if kind == "safetensors" or path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ImportRefused(f"{path.name}: not a readable safetensors file ({error})") from None
    if kind == "unknown":
        raise ImportRefused(f"{path.name}: not a PyTorch (torch.save) or safetensors file")
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:  # a zip cut short: its directory, at the end, is gone
            raise ImportRefused(f"{path.name}: a torch.save zip archive, cut short or damaged ({error}): copy the "
                                "file again") from None
        if any(name.endswith("constants.pkl") for name in names):
            raise ImportRefused(f"{path.name}: a TorchScript archive, not a state dict (save model.state_dict())")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        what = _pickle_refusal(error)
        hint = " (a whole pickled model: save model.state_dict())" if what.startswith("torch.nn.modules.") else ""
        raise ImportRefused(f"{path.name}: refused to unpickle {what}{hint}: weights-only loading allows tensors, "
                            "plain containers and numpy numbers and arrays of plain numeric dtypes (nothing in it "
                            "ran)") from None
    except Exception as error:  # a file cut short fails in many places (EOFError, IndexError, struct.error, ...)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImportRefused(f"{path.name}: unreadable torch file ({reason})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj: Any, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict in what a training script saved: the dict itself when every value is a tensor, else the
    one under `state_dict`, `model_state_dict`, `model` or `net` (nested wrappers too)."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            if obj and len(non_tensors) < len(obj):
                raise ImportRefused(f"{what}: a state dict with non-tensor entries ({', '.join(non_tensors[:4])})")
            raise ImportRefused(f"{what}: no state dict found (top-level keys: {keys or 'none'})")
        obj = obj[key]
    if not _is_state_dict(obj):
        raise ImportRefused(f"{what}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {str(k): v for k, v in obj.items()}
