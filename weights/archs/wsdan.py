"""WS-DAN (Hu et al. 2019, "See Better Before Looking Closer") as team \\WM/ ran it in the DFDC
(cuihaoleo/kaggle-dfdc `model_def/wsdan.py`): attention maps over a backbone's last feature map, bilinear attention
pooling, a linear head. Only the logits: the attention crop-and-refine ran in their training validation only.

Input: N x 3 x H x W face crops normalised with their dataset's mean/std. Output: logits N x num_classes (softmax
column 1 = FAKE in their models). State-dict keys:
- `features.*`: the backbone, timm's keys without its head: `legacy_xception` (= Cadene's Xception, their
  `xception_wsdan`), or `tf_efficientnet_b3` (`conv_stem`, `bn1`, `blocks.*`, `conv_head`, `bn2`: lukemelas' B3
  under timm's names) with efficientnet_pytorch 0.6.3's fixed pads for 300 px;
- `attentions.conv.weight` (M x C x 1 x 1), `attentions.bn.*`: the attention maps;
- `fc.weight` (num_classes x M * C): the head, without bias.
"""
from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from weights.archs.efficientnet import apply_static_padding
from weights.registry import InputSpec, register_arch

# Their dataset's per-channel statistics (submission.py's zhq_nm_avg / zhq_nm_std), on RGB in [0, 1].
WM_FACES = {"mean": (0.4479, 0.3744, 0.3473), "std": (0.2537, 0.2502, 0.2424)}
SQRT_EPSILON = 1e-12  # their EPSILON: keeps the signed square root's gradient finite at 0
LOGIT_SCALE = 100.0  # they applied fc to 100 x the normalised features


class AttentionMaps(nn.Module):
    """M attention maps: ReLU(BatchNorm(1 x 1 convolution without bias)), their BasicConv2d (BatchNorm eps 1e-3).
    Keys `conv.weight`, `bn.*`."""

    def __init__(self, in_channels: int, num_attentions: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_attentions, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(num_attentions, eps=1e-3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(features)))


def bilinear_attention_pool(features: torch.Tensor, attentions: torch.Tensor) -> torch.Tensor:
    """Their BAP (average pooling): each attention map's average of the features, N x M * C, then the signed
    square root and L2 normalisation over all M * C values."""
    height, width = features.shape[-2:]
    matrix = torch.einsum("imjk,injk->imn", attentions, features) / float(height * width)
    matrix = matrix.flatten(1)
    matrix = torch.sign(matrix) * torch.sqrt(matrix.abs() + SQRT_EPSILON)
    return F.normalize(matrix, dim=-1)


class WSDAN(nn.Module):
    """A backbone's feature map -> attention maps -> bilinear attention pooling -> fc(100 x features)."""

    def __init__(self, features: nn.Module, num_features: int, num_attentions: int = 8, num_classes: int = 2):
        super().__init__()
        self.features = features  # a timm model without head: forward_features gives the last feature map
        self.attentions = AttentionMaps(num_features, num_attentions)
        self.fc = nn.Linear(num_attentions * num_features, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features.forward_features(x)
        pooled = bilinear_attention_pool(features, self.attentions(features))
        return self.fc(pooled * LOGIT_SCALE)


@register_arch(input=InputSpec(320, **WM_FACES))
def wsdan_xception(num_attentions: int = 8, num_classes: int = 2) -> WSDAN:
    """\\WM/'s WS-DAN on Cadene's Xception (`ckpt_x.pth`: 320 px, 2048 channels)."""
    backbone = timm.create_model("legacy_xception", pretrained=False, num_classes=0)
    return WSDAN(backbone, backbone.num_features, num_attentions, num_classes)


@register_arch(input=InputSpec(300, **WM_FACES))
def wsdan_efficientnet_b3(num_attentions: int = 8, num_classes: int = 2) -> WSDAN:
    """\\WM/'s WS-DAN on efficientnet_pytorch 0.6.3's B3 (`ckpt_e.pth`: 300 px, features after the head
    convolution, 1536 channels); 0.6.3 padded for 300 px whatever the input, so this backbone always does."""
    backbone = apply_static_padding(timm.create_model("tf_efficientnet_b3", pretrained=False, num_classes=0), 300)
    return WSDAN(backbone, backbone.num_features, num_attentions, num_classes)
