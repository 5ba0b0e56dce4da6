"""Temporal 2D models over the frames of one face track: TSM on a timm ResNet, and a timm CNN feeding an RNN.

Input: clips N x T x 3 x H x W of normalised RGB face crops (the backbone's training mean/std). Output: logits
N x num_classes. Backbones come from timm, untrained, with timm's parameter names.
"""
from __future__ import annotations

from typing import Sequence

import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from weights.registry import IMAGENET, InputSpec, register_arch

# --- Temporal Shift Module (Lin, Gan and Han, ICCV 2019) ----------------------------------------------


def temporal_shift(frames: torch.Tensor, num_segments: int, shift_div: int) -> torch.Tensor:
    """Shift 1/shift_div of the channels of (N*T) x C x H x W frames one step back in time, the next 1/shift_div
    one step forward, zero-padding the ends; frame t then sees channels of frames t+1 and t-1."""
    clips = frames.view(-1, num_segments, *frames.shape[1:])
    fold = clips.shape[2] // shift_div
    shifted = torch.zeros_like(clips)
    shifted[:, :-1, :fold] = clips[:, 1:, :fold]
    shifted[:, 1:, fold : 2 * fold] = clips[:, :-1, fold : 2 * fold]
    shifted[:, :, 2 * fold :] = clips[:, :, 2 * fold :]
    return shifted.view_as(frames)


class TemporalShift:
    """Forward pre-hook for a residual block's conv1: shifts its input in time (residual shift, since the
    block's shortcut keeps the unshifted input). A hook, not a wrapper module, so parameter names stay timm's."""

    def __init__(self, num_segments: int, shift_div: int) -> None:
        self.num_segments = num_segments
        self.shift_div = shift_div

    def __call__(self, conv: nn.Module, inputs: tuple[torch.Tensor]) -> torch.Tensor:
        return temporal_shift(inputs[0], self.num_segments, self.shift_div)


class TemporalShiftResNet(ResNet):
    """A timm ResNet run on every frame of a clip, with temporal shifts in its blocks; averages logits over T."""

    num_segments: int

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 5 or clips.shape[1] != self.num_segments:
            raise ValueError(
                f"TSM expects clips N x {self.num_segments} x 3 x H x W (T = num_segments), got {tuple(clips.shape)}"
            )
        frame_logits = super().forward(clips.flatten(0, 1))
        return frame_logits.view(clips.shape[0], self.num_segments, -1).mean(dim=1)


@register_arch(kind="sequence", input=InputSpec(224, frames=8, **IMAGENET))
def tsm(backbone: str = "resnet50", num_segments: int = 8, shift_div: int = 8,
        num_classes: int = 1) -> TemporalShiftResNet:
    """TSM over any timm ResNet-family backbone (resnet, resnext, seresnext...); its state dict is exactly the
    backbone's, so a checkpoint of the timm model (backbone + fc) loads strictly."""
    model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    if not isinstance(model, ResNet):
        raise ValueError(f"tsm needs a timm ResNet-family backbone; {backbone!r} is a {type(model).__name__}")
    for block in model.modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            block.conv1.register_forward_pre_hook(TemporalShift(num_segments, shift_div))
    # Re-class timm's instance rather than wrap it: the modules and keys stay timm's, only forward changes.
    model.__class__ = TemporalShiftResNet
    model.num_segments = num_segments
    return model


# --- CNN + RNN ----------------------------------------------------------------------------------------


class SpatialPyramidPool(nn.Module):
    """Adaptive max pooling to level x level cells for each level, flattened and concatenated (as in SPP-net)."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        self.levels = tuple(levels)

    def cells_per_channel(self) -> int:
        """Pooled values per input channel."""
        return sum(level * level for level in self.levels)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._pool(feature_map, level).flatten(1) for level in self.levels], dim=1)

    @staticmethod
    def _pool(feature_map: torch.Tensor, level: int) -> torch.Tensor:
        # Where the level divides the map, a plain max pool gives the same cells and exports to ONNX,
        # which has no adaptive max pool.
        height, width = feature_map.shape[-2:]
        if height % level == 0 and width % level == 0:
            return F.max_pool2d(feature_map, (height // level, width // level))
        return F.adaptive_max_pool2d(feature_map, level)


RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU}


class CnnRnn(nn.Module):
    """Per-frame timm CNN features (global average pooled, or spatial pyramid pooled) -> RNN over time ->
    linear head on the final hidden state."""

    def __init__(
        self,
        backbone: str,
        rnn: str,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        spp_levels: Sequence[int] | None,
        dropout: float,
        num_classes: int,
    ) -> None:
        super().__init__()
        if rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {sorted(RNN_TYPES)}, got {rnn!r}")
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0)
        self.spp = SpatialPyramidPool(spp_levels) if spp_levels else None
        frame_features = self.backbone.num_features * (self.spp.cells_per_channel() if self.spp else 1)
        self.rnn = RNN_TYPES[rnn](
            frame_features,
            hidden_size,
            num_layers,
            batch_first=True,
            # The RNN's own dropout acts between stacked layers only; a single layer would just warn.
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.dropout = dropout
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N*T) x 3 x H x W frames -> (N*T) x features."""
        feature_map = self.backbone.forward_features(frames)
        return self.spp(feature_map) if self.spp else feature_map.mean(dim=(2, 3))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.dim() != 5:
            raise ValueError(f"cnn_rnn expects clips N x T x 3 x H x W, got {tuple(clips.shape)}")
        batch, time = clips.shape[:2]
        sequence = self.frame_features(clips.flatten(0, 1)).view(batch, time, -1)
        _, hidden = self.rnn(sequence)
        final_hidden = hidden[0] if isinstance(self.rnn, nn.LSTM) else hidden  # LSTM also returns its cell state
        # The last layer's final state in each direction: forward after frame T, backward after frame 1, so
        # both directions have seen the whole track.
        directions = 2 if self.rnn.bidirectional else 1
        summary = torch.cat(list(final_hidden[-directions:]), dim=1)
        return self.head(F.dropout(summary, self.dropout, self.training))


@register_arch(kind="sequence", input=InputSpec(224, frames=8, **IMAGENET))
def cnn_rnn(
    backbone: str = "efficientnet_b0",
    rnn: str = "lstm",
    hidden_size: int = 256,
    num_layers: int = 1,
    bidirectional: bool = False,
    spp_levels: Sequence[int] | None = None,
    dropout: float = 0.0,
    num_classes: int = 1,
) -> CnnRnn:
    """CNN + RNN over any timm backbone with a spatial feature map; `dropout` acts before the head (and
    between stacked RNN layers). Works for any T."""
    return CnnRnn(backbone, rnn, hidden_size, num_layers, bidirectional, spp_levels, dropout, num_classes)
