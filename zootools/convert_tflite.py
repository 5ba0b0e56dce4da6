"""Convert MediaPipe BlazeFace .tflite graphs into BlazeFace state dicts (offline tooling: needs `tflite`, not TF)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tflite
import torch
from torch import nn

from weights.archs.blazeface import SamePadConv2d
from weights.registry import create_model

_OP_NAMES = {code: name for name, code in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
_NUMPY_TYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
                tflite.TensorType.INT32: np.int32}
# Weightless ops that BlazeBlock / BlazeFace.forward reproduce; any other op means the graph is not a BlazeFace.
_STRUCTURAL_OPS = {"ADD", "RELU", "PAD", "MAX_POOL_2D", "RESHAPE", "CONCATENATION"}


class TFLiteConversionError(ValueError):
    """The .tflite graph does not match the PyTorch BlazeFace module."""


@dataclass
class ConvLayer:
    """One CONV_2D / DEPTHWISE_CONV_2D of the graph with its weights already in PyTorch layout."""

    name: str
    depthwise: bool
    stride: tuple[int, int]
    same_padding: bool
    weight: np.ndarray
    bias: np.ndarray


def _op_name(model: tflite.Model, op: tflite.Operator) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    # Older files keep the opcode in the deprecated int8 field; newer ones in the int32 field.
    return _OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")


def _constant_tensors(model: tflite.Model, graph: tflite.SubGraph) -> dict[int, np.ndarray]:
    """Tensor index -> array for every tensor backed by a non-empty buffer."""
    constants = {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        buffer = model.Buffers(tensor.Buffer())
        if buffer is None or buffer.DataLength() == 0:
            continue
        if tensor.Sparsity() is not None:
            raise TFLiteConversionError(f"tensor {tensor.Name().decode()} is sparse; only dense graphs are supported")
        dtype = _NUMPY_TYPES.get(tensor.Type())
        if dtype is None:
            raise TFLiteConversionError(f"tensor {tensor.Name().decode()} has unsupported type {tensor.Type()}")
        constants[index] = buffer.DataAsNumpy().view(dtype).reshape(tensor.ShapeAsNumpy())
    return constants


def _conv_options(op: tflite.Operator, depthwise: bool) -> tuple[tuple[int, int], bool, int]:
    """(stride, SAME padding?, fused activation) of a conv operator."""
    options = tflite.DepthwiseConv2DOptions() if depthwise else tflite.Conv2DOptions()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    stride = (options.StrideH(), options.StrideW())
    return stride, options.Padding() == tflite.Padding.SAME, options.FusedActivationFunction()


def read_conv_layers(tflite_bytes: bytes) -> tuple[list[ConvLayer], list[int]]:
    """Every conv layer in execution order, and the graph's input shape (NHWC)."""
    model = tflite.Model.GetRootAs(tflite_bytes, 0)
    if model.SubgraphsLength() != 1:
        raise TFLiteConversionError(f"expected one subgraph, found {model.SubgraphsLength()}")
    graph = model.Subgraphs(0)
    constants = _constant_tensors(model, graph)
    weight_tensors = {i for i, value in constants.items() if value.dtype != np.int32}  # int32 = paddings, shapes
    used = set()
    layers = []
    for op_index in range(graph.OperatorsLength()):
        op = graph.Operators(op_index)
        name = _op_name(model, op)
        inputs = list(op.InputsAsNumpy())
        if name == "DEQUANTIZE":  # float16 weights feed the convs through DEQUANTIZE to float32
            constants[op.Outputs(0)] = constants[inputs[0]].astype(np.float32)
            used.add(inputs[0])
        elif name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = name == "DEPTHWISE_CONV_2D"
            stride, same_padding, activation = _conv_options(op, depthwise)
            layer_name = graph.Tensors(op.Outputs(0)).Name().decode()
            if activation != tflite.ActivationFunctionType.NONE:
                raise TFLiteConversionError(f"{layer_name}: fused activation {activation} is not modelled")
            if len(inputs) != 3 or any(i not in constants for i in inputs[1:]):
                raise TFLiteConversionError(f"{layer_name}: expected constant kernel and bias inputs")
            kernel, bias = (constants[i].astype(np.float32) for i in inputs[1:])
            used.update(inputs[1:])
            # TFLite kernels: conv (out, h, w, in), depthwise (1, h, w, channels); PyTorch wants (out, in, h, w).
            weight = kernel.transpose(3, 0, 1, 2) if depthwise else kernel.transpose(0, 3, 1, 2)
            layers.append(ConvLayer(layer_name, depthwise, stride, same_padding, weight, bias))
        elif name not in _STRUCTURAL_OPS:
            raise TFLiteConversionError(f"operator {op_index} is {name}, which the PyTorch module does not model")
    unused = sorted(graph.Tensors(i).Name().decode() for i in weight_tensors - used)
    if unused:
        raise TFLiteConversionError(f"weight tensors not used by any conv: {unused}")
    return layers, list(graph.Tensors(graph.Inputs(0)).ShapeAsNumpy())


def _check_layer(key: str, module: nn.Conv2d, layer: ConvLayer) -> None:
    """Raise unless the graph layer and the module agree on kind, stride, padding and shapes."""
    problems = []
    if layer.depthwise != (module.groups > 1):
        problems.append(f"depthwise={layer.depthwise} but groups={module.groups}")
    if layer.stride != module.stride:
        problems.append(f"stride {layer.stride} vs {module.stride}")
    if module.kernel_size != (1, 1) and layer.same_padding != isinstance(module, SamePadConv2d):
        problems.append(f"SAME padding={layer.same_padding} but module is {type(module).__name__}")
    if layer.weight.shape != tuple(module.weight.shape) or layer.bias.shape != tuple(module.bias.shape):
        problems.append(f"shapes {layer.weight.shape}/{layer.bias.shape} vs "
                        f"{tuple(module.weight.shape)}/{tuple(module.bias.shape)}")
    if problems:
        raise TFLiteConversionError(f"graph layer {layer.name!r} does not fit module {key!r}: {'; '.join(problems)}")


def convert_blazeface(tflite_bytes: bytes, variant: str) -> dict[str, torch.Tensor]:
    """State dict for `blazeface_{variant}` from a MediaPipe .tflite; the i-th graph conv fills the i-th Conv2d."""
    model = create_model(f"blazeface_{variant}")
    layers, input_shape = read_conv_layers(tflite_bytes)
    expected_input = [1, model.input_size, model.input_size, 3]
    if input_shape != expected_input:
        raise TFLiteConversionError(f"graph input is {input_shape}, blazeface_{variant} expects {expected_input}")
    convs = [(key, module) for key, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if len(layers) != len(convs):
        raise TFLiteConversionError(f"graph has {len(layers)} conv layers, blazeface_{variant} has {len(convs)}")
    state = {}
    for (key, module), layer in zip(convs, layers):
        _check_layer(key, module, layer)
        state[f"{key}.weight"] = torch.from_numpy(np.ascontiguousarray(layer.weight))
        state[f"{key}.bias"] = torch.from_numpy(np.ascontiguousarray(layer.bias))
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise TFLiteConversionError(f"blazeface_{variant} tensors with no graph counterpart: {missing}")
    return state
