"""The teams' own models, which the efficientnet_pytorch check runs a checkpoint through: lukemelas'
`EfficientNet` from the installed efficientnet_pytorch (the teams ran 0.6.3) with the layers the teams added,
transcribed from their code (read, not copied): NTech-Lab `predict.py` (`SeqExpandConv` in
`TrackSequencesClassifier`) and polimi-ispl `architectures/fornet.py` (`EfficientNetGen`, `EfficientNetAutoAtt`,
`SiameseTuning`). Each loads the checkpoint as the team saved it and splits the team's forward in two:
`extract_features` (the last feature map) and `head` (its logits). Tooling: needs efficientnet_pytorch, which the
check imports first."""
from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.model import MBConvBlock
from torch import nn

from weights.archs.team_efficientnets import ATTENTION_STAGE
from zootools.importing.keymaps import KeyMap, lukemelas_native


class LukemelasEfficientNet(EfficientNet):
    """lukemelas' EfficientNet, its forward's pooling, dropout and `_fc` as `head`."""

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self._avg_pooling(features).flatten(1)))


def lukemelas(variant: int, outputs: int, cls: type = LukemelasEfficientNet) -> EfficientNet:
    """`cls.from_name("efficientnet-b<variant>")` with `outputs` logits, at its native image size (as the teams
    built it); 0.6.x takes the overrides as a dict, 0.7+ as keyword arguments."""
    if "override_params" in inspect.signature(cls.from_name).parameters:
        return cls.from_name(f"efficientnet-b{variant}", override_params={"num_classes": outputs})
    return cls.from_name(f"efficientnet-b{variant}", num_classes=outputs)


# --- NTech: predict.py -------------------------------------------------------------------------------------------


class SeqExpandConv(nn.Module):
    """NTech's temporal expansion: (N*T) x C x H x W, sequence-major -> Conv3d (3, 1, 1) over T -> back."""

    def __init__(self, in_channels: int, out_channels: int, frames: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
        self.frames = frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.view(batch // self.frames, self.frames, channels, height, width)
        return self.conv(x.transpose(1, 2).contiguous()).transpose(2, 1).contiguous().flatten(0, 1)


def ntech_sequence_model(variant: int, outputs: int, frames: int) -> LukemelasEfficientNet:
    """TrackSequencesClassifier's network: every MBConvBlock whose expand_ratio is not 1 gets a SeqExpandConv."""
    model = lukemelas(variant, outputs)
    for block in model.modules():
        if isinstance(block, MBConvBlock) and block._block_args.expand_ratio != 1:
            expand = block._expand_conv
            block._expand_conv = SeqExpandConv(expand.in_channels, expand.out_channels, frames)
    return model


# --- polimi: architectures/fornet.py --------------------------------------------------------------------------------


class EfficientNetAutoAtt(EfficientNet):
    """fornet's EfficientNetAutoAtt (width 0): after block `att_block_idx`, x = x * sigmoid(attconv(x))."""

    def init_att(self) -> None:
        """fornet sets block 9 and 56 channels for B4 (its only variant): the last block of the third stage, which
        is where any variant gets it here."""
        stage_ends = [i for i, block in enumerate(self._blocks)
                      if i + 1 == len(self._blocks)
                      or self._blocks[i + 1]._block_args.output_filters != block._block_args.output_filters]
        self.att_block_idx = stage_ends[ATTENTION_STAGE]
        channels = self._blocks[self.att_block_idx]._block_args.output_filters
        self.attconv = nn.Conv2d(kernel_size=1, in_channels=channels, out_channels=1)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for index, block in enumerate(self._blocks):
            x = block(x)  # drop connect acts only in training
            if index == self.att_block_idx:
                x = x * torch.sigmoid(self.attconv(x))
        return self._swish(self._bn1(self._conv_head(x)))


class EfficientNetGen(nn.Module):
    """fornet's EfficientNetGen / EfficientNetGenAutoAtt: `efficientnet` (its `_fc` deleted) + `classifier`."""

    def __init__(self, variant: int, attention: bool) -> None:
        super().__init__()
        self.efficientnet = lukemelas(variant, 1, EfficientNetAutoAtt if attention else LukemelasEfficientNet)
        if attention:
            self.efficientnet.init_att()
        self.classifier = nn.Linear(self.efficientnet._conv_head.out_channels, 1)
        del self.efficientnet._fc

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.efficientnet.extract_features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.efficientnet._dropout(self.efficientnet._avg_pooling(features).flatten(1)))


class SiameseTuning(nn.Module):
    """fornet's SiameseTuning: `feat_ext` (its own `classifier` unused) + BatchNorm1d and Linear on its features."""

    def __init__(self, feat_ext: EfficientNetGen) -> None:
        super().__init__()
        self.feat_ext = feat_ext
        features = feat_ext.classifier.in_features
        self.classifier = nn.Sequential(nn.BatchNorm1d(num_features=features), nn.Linear(features, 1))

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat_ext.extract_features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.feat_ext.efficientnet._avg_pooling(features).flatten(1))


# --- which one --------------------------------------------------------------------------------------------------


def team_model(arch: str, arch_kwargs: Mapping, variant: int, state: Mapping[str, torch.Tensor]
               ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The team's untrained model for an import as `arch`, and the checkpoint's state dict as it loads into it."""
    keymap = KeyMap(dict(state))
    keymap.strip("module.", only_if_all=True)
    if arch == "efficientnet_temporal":
        outputs = int(keymap.state["_fc.weight"].shape[0])
        return ntech_sequence_model(variant, outputs, arch_kwargs["frames"]), keymap.state
    if arch in ("efficientnet_autoatt", "efficientnet_st", "efficientnet_autoatt_st"):  # fornet's: one logit
        network = EfficientNetGen(variant, attention="autoatt" in arch)
        return (SiameseTuning(network) if arch.endswith("_st") else network), keymap.state
    native = lukemelas_native(state)
    return lukemelas(variant, int(native["_fc.weight"].shape[0])), native
