"""Test oracle: NTech's and polimi's EfficientNet networks as the teams built them, from lukemelas'
efficientnet_pytorch 0.6.3 (installed) plus the layers the teams added, transcribed from their code (read, not
copied): NTech-Lab/deepfake-detection-challenge `predict.py` (`SeqExpandConv`, `TrackSequencesClassifier`),
polimi-ispl/icpr2020dfdc `architectures/fornet.py` (`EfficientNetGen`, `EfficientNetAutoAtt`, `SiameseTuning`);
and image-like clips to calibrate and compare them on (../shared/reference/ANCHOR_CHECKPOINTS.md section 7)."""
from __future__ import annotations

import torch
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.model import MBConvBlock
from torch import nn

from zootools.importing.efficientnet_check import image_like


def clips_like(count: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """`count` clips N x T x 3 x H x W of one image each, drifting a pixel per frame with fresh grain, as video."""
    base = image_like(count, (height + frames, width + frames), seed=seed)
    grain = 0.05 * torch.randn(count, frames, 3, height, width, generator=torch.Generator().manual_seed(seed + 1))
    return torch.stack([base[:, :, t:t + height, t:t + width] for t in range(frames)], dim=1) + grain


# --- NTech: predict.py's TrackSequencesClassifier -----------------------------------------------------------------


class SeqExpandConv(nn.Module):
    def __init__(self, in_channels, out_channels, seq_length):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
        self.seq_length = seq_length

    def forward(self, x):
        batch_size, in_channels, height, width = x.shape
        x = x.view(batch_size // self.seq_length, self.seq_length, in_channels, height, width)
        x = self.conv(x.transpose(1, 2).contiguous()).transpose(2, 1).contiguous()
        return x.flatten(0, 1)


def ntech_sequence_model(name: str = "efficientnet-b7", seq_length: int = 7) -> EfficientNet:
    """The sequence model's network: input (N*7) x 3 x H x W, sequence-major; one logit per frame."""
    model = EfficientNet.from_name(name, override_params={"num_classes": 1})
    for module in model.modules():
        if isinstance(module, MBConvBlock) and module._block_args.expand_ratio != 1:
            expand_conv = module._expand_conv
            module._expand_conv = SeqExpandConv(expand_conv.in_channels, expand_conv.out_channels, seq_length)
    return model


# --- polimi: fornet.py ---------------------------------------------------------------------------------------------


class EfficientNetAutoAtt(EfficientNet):
    def init_att(self):
        """fornet: B4 only, block 9 (56 channels). For other variants (B0 stand-ins) the same place: the last block
        of the third stage, i.e. of the third distinct output width."""
        widths = [block._block_args.output_filters for block in self._blocks]
        third = list(dict.fromkeys(widths))[2]
        self.att_block_idx = len(widths) - 1 - widths[::-1].index(third)
        self.attconv = nn.Conv2d(kernel_size=1, in_channels=third, out_channels=1)

    def extract_features(self, x):
        x = self._swish(self._bn0(self._conv_stem(x)))
        for idx, block in enumerate(self._blocks):
            drop_connect_rate = self._global_params.drop_connect_rate
            if drop_connect_rate:
                drop_connect_rate *= float(idx) / len(self._blocks)
            x = block(x, drop_connect_rate=drop_connect_rate)
            if idx == self.att_block_idx:
                att = torch.sigmoid(self.attconv(x))
                x = x * att
        return self._swish(self._bn1(self._conv_head(x)))


class EfficientNetGen(nn.Module):
    """EfficientNetGen (attention=False) and EfficientNetGenAutoAtt (width 0), built with from_name (no download)."""

    def __init__(self, model: str = "efficientnet-b0", attention: bool = False):
        super().__init__()
        self.efficientnet = (EfficientNetAutoAtt if attention else EfficientNet).from_name(model)
        if attention:
            self.efficientnet.init_att()
        self.classifier = nn.Linear(self.efficientnet._conv_head.out_channels, 1)
        del self.efficientnet._fc

    def features(self, x):
        x = self.efficientnet.extract_features(x)
        x = self.efficientnet._avg_pooling(x)
        return x.flatten(start_dim=1)

    def forward(self, x):
        return self.classifier(self.efficientnet._dropout(self.features(x)))


class SiameseTuning(nn.Module):
    def __init__(self, feat_ext: nn.Module, num_feat: int):
        super().__init__()
        self.feat_ext = feat_ext
        self.classifier = nn.Sequential(nn.BatchNorm1d(num_features=num_feat), nn.Linear(num_feat, 1))

    def forward(self, x):
        with torch.no_grad():
            x = self.feat_ext.features(x)
        return self.classifier(x)


def polimi_network(arch: str, model: str = "efficientnet-b0") -> nn.Module:
    """fornet's class for one of this project's polimi archs: EfficientNetAutoAtt<B>, EfficientNet<B>ST,
    EfficientNetAutoAtt<B>ST."""
    network = EfficientNetGen(model, attention="autoatt" in arch)
    return SiameseTuning(network, network.classifier.in_features) if arch.endswith("_st") else network
