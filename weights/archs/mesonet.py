"""MesoNet deepfake detectors (Afchar et al., WIFS 2018): Meso4 and MesoInception4, ported from Keras.

Input: N x 3 x 256 x 256 RGB in [0, 1]. Output: the logit of P(REAL), shape (N,); sigmoid gives P(REAL).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from weights.registry import InputSpec, register_arch

# Keras BatchNormalization's default epsilon (PyTorch's default is 1e-5).
KERAS_BN_EPS = 1e-3
# Feature map entering the dense head: 16 channels at 8 x 8 (256 / 2 / 2 / 2 / 4).
FEATURES_CHW = (16, 8, 8)
DROPOUT = 0.5
LEAKY_SLOPE = 0.1


def same_conv(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Conv2d:
    """Stride-1 convolution with Keras 'same' padding (odd kernels pad symmetrically, as in PyTorch)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", dilation=dilation)


def dense_head_in_features() -> int:
    """Width of fc1's input.

    fc1 takes PyTorch's (c, h, w) flatten order. Keras flattened (h, w, c); the converter permutes fc1's
    input columns once, so inference needs no transpose and the checkpoint is an ordinary PyTorch one.
    """
    channels, height, width = FEATURES_CHW
    return channels * height * width


class _MesoNet(nn.Module):
    """The part both MesoNets share: two conv 16@5x5 stages, then dense 16 -> LeakyReLU -> dense 1."""

    def __init__(self, stem_channels: int) -> None:
        super().__init__()
        self.conv3 = same_conv(stem_channels, 16, 5)
        self.bn3 = nn.BatchNorm2d(16, eps=KERAS_BN_EPS)
        self.conv4 = same_conv(16, 16, 5)
        self.bn4 = nn.BatchNorm2d(16, eps=KERAS_BN_EPS)
        self.dropout = nn.Dropout(DROPOUT)
        self.fc1 = nn.Linear(dense_head_in_features(), 16)
        self.fc2 = nn.Linear(16, 1)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.bn3(F.relu(self.conv3(self.stem(images)))), 2)
        x = F.max_pool2d(self.bn4(F.relu(self.conv4(x))), 4)
        hidden = F.leaky_relu(self.fc1(self.dropout(x.flatten(1))), LEAKY_SLOPE)
        return self.fc2(self.dropout(hidden)).squeeze(1)


class Meso4(_MesoNet):
    """Four conv -> ReLU -> BN -> max-pool stages, then dense 16 -> LeakyReLU -> dense 1."""

    def __init__(self) -> None:
        super().__init__(stem_channels=8)
        self.conv1 = same_conv(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8, eps=KERAS_BN_EPS)
        self.conv2 = same_conv(8, 8, 5)
        self.bn2 = nn.BatchNorm2d(8, eps=KERAS_BN_EPS)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.bn1(F.relu(self.conv1(images))), 2)
        return F.max_pool2d(self.bn2(F.relu(self.conv2(x))), 2)


class InceptionBlock(nn.Module):
    """Four ReLU branches concatenated in this order: 1x1 (a); 1x1 -> 3x3 (b);
    1x1 -> 3x3 dilation 2 (c); 1x1 -> 3x3 dilation 3 (d)."""

    def __init__(self, in_channels: int, a: int, b: int, c: int, d: int) -> None:
        super().__init__()
        self.a_1x1 = same_conv(in_channels, a, 1)
        self.b_1x1 = same_conv(in_channels, b, 1)
        self.b_3x3 = same_conv(b, b, 3)
        self.c_1x1 = same_conv(in_channels, c, 1)
        self.c_3x3_dilated2 = same_conv(c, c, 3, dilation=2)
        self.d_1x1 = same_conv(in_channels, d, 1)
        self.d_3x3_dilated3 = same_conv(d, d, 3, dilation=3)
        self.out_channels = a + b + c + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            F.relu(self.a_1x1(x)),
            F.relu(self.b_3x3(F.relu(self.b_1x1(x)))),
            F.relu(self.c_3x3_dilated2(F.relu(self.c_1x1(x)))),
            F.relu(self.d_3x3_dilated3(F.relu(self.d_1x1(x)))),
        ]
        return torch.cat(branches, dim=1)


class MesoInception4(_MesoNet):
    """Two Inception stages, then Meso4's last two conv stages and dense head."""

    def __init__(self) -> None:
        inception1 = InceptionBlock(3, 1, 4, 4, 2)
        inception2 = InceptionBlock(inception1.out_channels, 2, 4, 4, 2)
        super().__init__(stem_channels=inception2.out_channels)
        self.inception1 = inception1
        self.bn1 = nn.BatchNorm2d(inception1.out_channels, eps=KERAS_BN_EPS)
        self.inception2 = inception2
        self.bn2 = nn.BatchNorm2d(inception2.out_channels, eps=KERAS_BN_EPS)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.bn1(self.inception1(images)), 2)
        return F.max_pool2d(self.bn2(self.inception2(x)), 2)


@register_arch(input=InputSpec(256))
def meso4() -> Meso4:
    """Meso4, untrained."""
    return Meso4()


@register_arch(input=InputSpec(256))
def mesoinception4() -> MesoInception4:
    """MesoInception4, untrained."""
    return MesoInception4()
