"""Convert torch-saved state dicts (facenet-pytorch's MTCNN nets) into checked state dicts (offline tooling).

The files are read with `torch.load(..., weights_only=True)`: tensors and plain containers only, never an
arbitrary unpickle.
"""
from __future__ import annotations

import io
import pickle
from collections.abc import Mapping

import torch

from weights.registry import create_model

MTCNN_NETS = ("pnet", "rnet", "onet")


class TorchConversionError(ValueError):
    """A torch-saved file is unreadable or does not match its architecture."""


def convert_mtcnn(state_bytes: bytes, net: str) -> dict[str, torch.Tensor]:
    """A strict float32 state dict for `mtcnn_<net>` ('pnet', 'rnet' or 'onet') from facenet-pytorch's <net>.pt."""
    if net not in MTCNN_NETS:
        raise TorchConversionError(f"unknown MTCNN net {net!r}; expected one of {', '.join(MTCNN_NETS)}")
    try:
        state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise TorchConversionError(f"MTCNN {net}: not a weights-only torch file ({error})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TorchConversionError(f"MTCNN {net}: expected a state dict of tensors, got {type(state).__name__}")
    expected = create_model(f"mtcnn_{net}").state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TorchConversionError(f"MTCNN {net}: keys differ from mtcnn_{net}: missing {missing}, "
                                   f"unexpected {unexpected}")
    converted = {}
    for key, reference in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(reference.shape):
            raise TorchConversionError(f"MTCNN {net}: {key} has shape {tuple(tensor.shape)}, "
                                       f"mtcnn_{net} expects {tuple(reference.shape)}")
        if not tensor.is_floating_point():
            raise TorchConversionError(f"MTCNN {net}: {key} has dtype {tensor.dtype}, expected floating point")
        converted[key] = tensor.detach().to(torch.float32).contiguous()
    return converted


def bundle_mtcnn(states: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state dict for the `mtcnn` arch from the three converted nets: keys pnet.*, rnet.*, onet.*."""
    if set(states) != set(MTCNN_NETS):
        raise TorchConversionError(f"need exactly the nets {MTCNN_NETS}, got {sorted(states)}")
    return {f"{net}.{key}": tensor for net in MTCNN_NETS for key, tensor in states[net].items()}
