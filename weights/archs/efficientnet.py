"""efficientnet_pytorch 0.6.3's padding for timm's TensorFlow-ported EfficientNets (`tf_efficientnet_bN`).

lukemelas' efficientnet_pytorch 0.6.3 (the library NTech, polimi and \\WM/ trained with) builds every "same"
convolution with fixed zero pads, computed once from the network's global image size (B3 300, B4 380, B7 600)
whatever the input: (left, right, top, bottom) = (0, 1, 0, 1) for kernel 3 stride 2 and (1, 2, 1, 2) for kernel 5
stride 2 at those even sizes. timm's `tf_` models pad each stride-2 convolution for the side it actually sees, which
gives the same pads only where every stride-2 convolution sees an even side (B3 at 300 does not: 75 and 19 px).

`apply_static_padding(model, image_size)` gives a timm model 0.6.3's fixed pads; its state_dict keys stay timm's.
`create_model("timm/tf_efficientnet_b3", static_padding=300)` applies it (registered below as a timm option).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
from torch import nn

from weights.registry import register_timm_option

DYNAMIC_SAME = (Conv2dSame, Conv2dSameExport)  # timm's convolutions that pad for the input's size


def static_same_pads(image_size: int | tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) pads as efficientnet_pytorch 0.6.3's Conv2dStaticSamePadding computes them for
    the global `image_size` (a side, or (height, width)): TF "same" for that size, the odd pixel after."""
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    pads = [max((math.ceil(side / s) - 1) * s + (k - 1) * d + 1 - side, 0)
            for side, k, s, d in zip(sides, kernel, stride, dilation)]
    pad_h, pad_w = pads
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class StaticSameConv2d(nn.Conv2d):
    """A convolution behind fixed zero pads (left, right, top, bottom), as 0.6.3's Conv2dStaticSamePadding; the
    pads are an attribute, not a buffer, so the state_dict keys are nn.Conv2d's (`weight`, `bias`)."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None)
        self.weight, self.bias = conv.weight, conv.bias  # the model's own parameters, untouched
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pads={self.pads}"


def apply_static_padding(model: nn.Module, image_size: int | tuple[int, int]) -> nn.Module:
    """Give every dynamically padded convolution of a timm model (its stride-2 "same" ones) 0.6.3's fixed pads for
    `image_size`. Stride-1 "same" convolutions need nothing: timm pads them (k - 1) // 2 on each side, as 0.6.3
    does for any size. Raises ValueError for a model without such convolutions (not a `tf_` model)."""
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, DYNAMIC_SAME)]
    if not targets:
        raise ValueError("static_padding is for timm's tf_ models (TensorFlow 'same' padding); this model has no "
                         "dynamically padded convolution")
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        pads = static_same_pads(image_size, conv.kernel_size, conv.stride, conv.dilation)
        setattr(model.get_submodule(parent_name), child, StaticSameConv2d(conv, pads))
    return model


register_timm_option("static_padding", apply_static_padding)
