"""Convert the published MesoNet Keras .h5 weights into PyTorch state dicts (offline tooling; needs h5py)."""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import torch

from weights.archs.mesonet import FEATURES_CHW
from weights.registry import create_model

# Keras names weighted layers <kind>_<n> with n counting up in creation order; the first may carry no number.
KERAS_LAYER_NAME = re.compile(r"^(conv2d|batch_normalization|dense)(?:_(\d+))?$")


def _inception_convs(block: str) -> list[str]:
    """An Inception block's convolutions in the order the Keras code created them (branch a, b, c, d)."""
    names = ["a_1x1", "b_1x1", "b_3x3", "c_1x1", "c_3x3_dilated2", "d_1x1", "d_3x3_dilated3"]
    return [f"{block}.{name}" for name in names]


# Per architecture and Keras layer kind: the PyTorch modules that take those layers, in Keras creation order.
KERAS_LAYOUT: dict[str, dict[str, list[str]]] = {
    "meso4": {
        "conv2d": ["conv1", "conv2", "conv3", "conv4"],
        "batch_normalization": ["bn1", "bn2", "bn3", "bn4"],
        "dense": ["fc1", "fc2"],
    },
    "mesoinception4": {
        "conv2d": [*_inception_convs("inception1"), *_inception_convs("inception2"), "conv3", "conv4"],
        "batch_normalization": ["bn1", "bn2", "bn3", "bn4"],
        "dense": ["fc1", "fc2"],
    },
}


def convert_mesonet(h5_path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """A strict state dict for `arch` ('meso4' or 'mesoinception4') from a MesoNet Keras weights file.

    Raises ValueError unless every Keras weight is used exactly once and fills a module key of the right shape.
    """
    if arch not in KERAS_LAYOUT:
        raise ValueError(f"no Keras layout for architecture {arch!r}; known: {', '.join(KERAS_LAYOUT)}")
    h5_path = Path(h5_path)
    layers = _read_keras_layers(h5_path)
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}  # PyTorch key -> Keras weight, for error messages
    for kind, module_names in KERAS_LAYOUT[arch].items():
        numbers = sorted(number for layer_kind, number in layers if layer_kind == kind)
        if len(numbers) != len(module_names):
            raise ValueError(f"{h5_path.name}: {len(numbers)} Keras {kind} layers, but {arch} has {len(module_names)}")
        for number, module_name in zip(numbers, module_names):
            layer_name = f"{kind}_{number}"
            weights = layers.pop((kind, number))
            try:
                converted = _CONVERTERS[kind](module_name, weights)
            except KeyError as missing:
                raise ValueError(f"{h5_path.name}: Keras layer {layer_name} lacks weight {missing}") from None
            for key, tensor in converted.items():
                state[key] = tensor
                origin[key] = layer_name
            if weights:
                raise ValueError(f"{h5_path.name}: unused weights {sorted(weights)} in Keras layer {layer_name}")
    _check_against_model(state, origin, arch, h5_path.name)
    return state


def _read_keras_layers(h5_path: Path) -> dict[tuple[str, int], dict[str, np.ndarray]]:
    """Every weight in the file, as {(kind, number): {'kernel': array, ...}}; weights elsewhere raise ValueError."""
    layers: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    with h5py.File(h5_path, "r") as h5:
        # Files saved with model.save() nest the weights under 'model_weights'; save_weights() files do not.
        root = h5["model_weights"] if "model_weights" in h5 else h5
        for group_name, group in root.items():
            datasets: dict[str, np.ndarray] = {}

            def collect(path: str, node: h5py.HLObject) -> None:
                if isinstance(node, h5py.Dataset):
                    # 'conv2d_5/kernel:0' -> 'kernel'
                    weight_name = path.rsplit("/", 1)[-1].split(":", 1)[0]
                    if weight_name in datasets:
                        raise ValueError(f"{h5_path.name}: Keras layer {group_name} has two {weight_name!r} weights")
                    datasets[weight_name] = node[()]

            group.visititems(collect)
            if not datasets:
                continue  # input, pooling, dropout, flatten, activation and concatenate layers hold no weights
            match = KERAS_LAYER_NAME.match(group_name)
            if match is None:
                raise ValueError(f"{h5_path.name}: weights in unexpected Keras layer {group_name!r}")
            layers[(match.group(1), int(match.group(2) or 0))] = datasets
    return layers


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor (safetensors refuses non-contiguous ones)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _convert_conv(module_name: str, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keras kernel (h, w, in, out) -> PyTorch (out, in, h, w); both are cross-correlations, so no flip."""
    return {
        f"{module_name}.weight": _as_tensor(weights.pop("kernel").transpose(3, 2, 0, 1)),
        f"{module_name}.bias": _as_tensor(weights.pop("bias")),
    }


def _convert_batch_norm(module_name: str, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """gamma/beta/moving statistics -> weight/bias/running statistics; Keras keeps no batch counter."""
    return {
        f"{module_name}.weight": _as_tensor(weights.pop("gamma")),
        f"{module_name}.bias": _as_tensor(weights.pop("beta")),
        f"{module_name}.running_mean": _as_tensor(weights.pop("moving_mean")),
        f"{module_name}.running_var": _as_tensor(weights.pop("moving_variance")),
        f"{module_name}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


def _convert_dense(module_name: str, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Keras kernel (in, out) -> PyTorch (out, in). fc1 reads the flattened feature map, which Keras flattened
    in (h, w, c) order and PyTorch flattens in (c, h, w) order: reorder its input columns to match."""
    weight = weights.pop("kernel").T
    if module_name == "fc1":
        channels, height, width = FEATURES_CHW
        out_features = weight.shape[0]
        if weight.shape[1] != channels * height * width:
            raise ValueError(f"fc1 input width {weight.shape[1]} is not {channels} x {height} x {width}")
        weight = weight.reshape(out_features, height, width, channels).transpose(0, 3, 1, 2)
        weight = weight.reshape(out_features, channels * height * width)
    return {f"{module_name}.weight": _as_tensor(weight), f"{module_name}.bias": _as_tensor(weights.pop("bias"))}


_CONVERTERS = {"conv2d": _convert_conv, "batch_normalization": _convert_batch_norm, "dense": _convert_dense}


def _check_against_model(state: dict[str, torch.Tensor], origin: dict[str, str], arch: str, file_name: str) -> None:
    """Raise ValueError unless `state` fills exactly the model's keys, each with the model's shape."""
    expected = create_model(arch).state_dict()
    problems = [f"missing {key}" for key in expected if key not in state]
    problems += [f"unexpected {key} (from {origin[key]})" for key in state if key not in expected]
    problems += [
        f"{key} (from {origin[key]}) has shape {tuple(tensor.shape)}, {arch} expects {tuple(expected[key].shape)}"
        for key, tensor in state.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    if problems:
        raise ValueError(f"{file_name} does not fit {arch}: " + "; ".join(problems))
