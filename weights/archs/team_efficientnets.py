"""EfficientNet variants two DFDC teams built on lukemelas' efficientnet_pytorch 0.6.3, here on timm's
`tf_efficientnet_<variant>` (equal to 0.6.3 where every stride-2 convolution sees an even side: B7 at 224 x 192,
B4 at 224), with timm's state-dict keys plus these:

- `efficientnet_temporal` (NTech's sequence model, kind `sequence`): every InvertedResidual's expansion 1 x 1
  convolution is a Conv3d of kernel (3, 1, 1) over the clip's frames: `blocks.s.j.conv_pw.conv.weight`, shaped
  (out, in, 3, 1, 1). Input N x T x 3 x H x W; output N x T x num_classes, one logit per frame.
- `efficientnet_autoatt` (polimi's EfficientNetAutoAtt): the feature map after stage 2 (the third stage, 1/8 of the
  input; B4: 56 channels) is weighted by x * sigmoid(attconv(x)): `attconv.weight` (1, C, 1, 1), `attconv.bias`.
- `efficientnet_st`, `efficientnet_autoatt_st` (polimi's SiameseTuning of those): the head on the pooled features
  is BatchNorm1d then Linear: `classifier.0.*` (weight, bias, running_mean, running_var, num_batches_tracked),
  `classifier.1.weight`, `classifier.1.bias`.
"""
from __future__ import annotations

import timm
import torch
from timm.models._efficientnet_blocks import InvertedResidual
from timm.models.efficientnet import EfficientNet
from torch import nn

from weights.archs.efficientnet import apply_static_padding
from weights.registry import IMAGENET, InputSpec, register_arch

# polimi's attention follows lukemelas' `_blocks[9]` of B4, the last block of the 56-channel stage: timm's stage 2.
# fornet defines it for B4 only; the other variants get it at the end of the same stage (B0: 40 channels).
ATTENTION_STAGE = 2


def tf_efficientnet(variant: str, num_classes: int, static_padding: int | None = None) -> EfficientNet:
    """timm's untrained `tf_efficientnet_<variant>` (TF "same" padding), with efficientnet_pytorch 0.6.3's fixed pads
    for `static_padding` px where given (weights/archs/efficientnet.py)."""
    name = f"tf_efficientnet_{variant}"
    if not timm.is_model(name):
        raise ValueError(f"no timm EfficientNet {name!r}: variant is b0 .. b7")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return apply_static_padding(model, static_padding) if static_padding else model


# --- NTech's sequence model ---------------------------------------------------------------------------------------


class TemporalPointwise(nn.Module):
    """A pointwise convolution of (N*T) x C x H x W frames, sequence-major, that also sees each frame's neighbours
    in time: Conv3d of kernel (3, 1, 1) without bias, zero padding before the first frame and after the last."""

    def __init__(self, in_channels: int, out_channels: int, frames: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
        self.frames = frames

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        clips = frames.unflatten(0, (-1, self.frames)).transpose(1, 2)  # N x C x T x H x W
        return self.conv(clips).transpose(1, 2).flatten(0, 1)


class TemporalEfficientNet(EfficientNet):
    """timm's EfficientNet on every frame of a clip, its expansion convolutions temporal; one logit per frame."""

    frames: int

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 5 or clips.shape[1] != self.frames:
            raise ValueError(f"efficientnet_temporal expects clips N x {self.frames} x 3 x H x W, got "
                             f"{tuple(clips.shape)}")
        return super().forward(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])


@register_arch(kind="sequence", input=InputSpec((224, 192), frames=7, **IMAGENET))
def efficientnet_temporal(variant: str = "b7", frames: int = 7, num_classes: int = 1,
                          static_padding: int | None = None) -> TemporalEfficientNet:
    """NTech's sequence model: `tf_efficientnet_<variant>` whose every InvertedResidual's `conv_pw` (lukemelas'
    `_expand_conv` where expand_ratio is not 1: 51 in B7) is a `TemporalPointwise` over `frames` frames."""
    model = tf_efficientnet(variant, num_classes, static_padding)
    for block in model.modules():
        if isinstance(block, InvertedResidual):
            pointwise = block.conv_pw
            block.conv_pw = TemporalPointwise(pointwise.in_channels, pointwise.out_channels, frames)
    # Re-class timm's instance rather than wrap it: the keys stay timm's, only forward changes (as tsm does).
    model.__class__ = TemporalEfficientNet
    model.frames = frames
    return model


# --- polimi's attention and siamese-tuned variants ------------------------------------------------------------------


class AttentionEfficientNet(EfficientNet):
    """timm's EfficientNet with polimi's attention: after stage `ATTENTION_STAGE`, x = x * sigmoid(attconv(x))."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index == ATTENTION_STAGE:
                x = x * torch.sigmoid(self.attconv(x))
        return self.bn2(self.conv_head(x))


def with_attention(model: EfficientNet) -> AttentionEfficientNet:
    """Add polimi's `attconv` (a 1 x 1 convolution with bias, C -> 1) on stage `ATTENTION_STAGE`'s output."""
    channels = model.blocks[ATTENTION_STAGE][-1].conv_pwl.out_channels
    model.attconv = nn.Conv2d(channels, 1, kernel_size=1)
    model.__class__ = AttentionEfficientNet
    return model


def with_siamese_head(model: EfficientNet, num_classes: int) -> EfficientNet:
    """polimi's SiameseTuning head on the pooled features: `classifier` = BatchNorm1d, then Linear."""
    model.classifier = nn.Sequential(nn.BatchNorm1d(model.num_features), nn.Linear(model.num_features, num_classes))
    return model


@register_arch(input=InputSpec(224, **IMAGENET))
def efficientnet_autoatt(variant: str = "b4", num_classes: int = 1,
                         static_padding: int | None = None) -> AttentionEfficientNet:
    """polimi's EfficientNetAutoAtt<variant> (their released one: B4)."""
    return with_attention(tf_efficientnet(variant, num_classes, static_padding))


@register_arch(input=InputSpec(224, **IMAGENET))
def efficientnet_st(variant: str = "b4", num_classes: int = 1, static_padding: int | None = None) -> EfficientNet:
    """polimi's EfficientNet<variant>ST: the plain EfficientNet with the siamese-tuned head."""
    return with_siamese_head(tf_efficientnet(variant, num_classes, static_padding), num_classes)


@register_arch(input=InputSpec(224, **IMAGENET))
def efficientnet_autoatt_st(variant: str = "b4", num_classes: int = 1,
                            static_padding: int | None = None) -> AttentionEfficientNet:
    """polimi's EfficientNetAutoAtt<variant>ST: attention and the siamese-tuned head."""
    model = with_attention(tf_efficientnet(variant, num_classes, static_padding))
    return with_siamese_head(model, num_classes)
