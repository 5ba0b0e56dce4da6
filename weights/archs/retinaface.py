"""RetinaFace face detector (Deng et al. 2019) in biubug6/Pytorch_Retinaface's layout: a MobileNet-0.25 or
ResNet-50 body, a 3-level FPN, an SSH context module per level, and class, box and 5-landmark heads with 2 anchors
per cell at strides 8, 16, 32.

State-dict keys are biubug6's (`body.*`, `fpn.output1-3.*`, `fpn.merge1-2.*`, `ssh1-3.*`, `ClassHead.i.conv1x1.*`,
`BboxHead.i.conv1x1.*`, `LandmarkHead.i.conv1x1.*`; a conv-BN-activation block is a Sequential, conv at .0 and
BatchNorm at .1), so their checkpoints load strictly once a DataParallel `module.` prefix is stripped. The ResNet-50
body is torchvision's resnet50 up to layer4 (`body.conv1`, `body.bn1`, `body.layer1-4`, as their
IntermediateLayerGetter keeps it); the MobileNet body is their MobileNetV1 without its classifier
(`body.stage1-3`).

`RetinaFaceDetector` runs it as their detect.py does: the whole BGR frame minus a mean, priors and decoding with
variances 0.1 and 0.2, scores above the threshold, NMS at 0.4 with their +1-pixel areas.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from weights.registry import register_arch

BIUBUG6_MEAN = (104, 117, 123)  # BGR, subtracted from 0-255 pixels (detect.py); no scaling
STEPS = (8, 16, 32)  # the feature levels' strides
MIN_SIZES = ((16, 32), (64, 128), (256, 512))  # the anchors' sides per level, in input pixels
VARIANCES = (0.1, 0.2)  # centre offsets, log sizes
NMS_THRESHOLD = 0.4  # detect.py's --nms_threshold
MAX_PIXELS_PER_CALL = 1 << 23  # about four 1080p frames: ResNet-50's first maps at 1080p take ~1.3 GB per frame


def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3, relu: bool = True,
            groups: int = 1) -> nn.Sequential:
    """biubug6's conv_bn / conv_bn_no_relu / conv_bn1X1: conv (no bias) at .0, BatchNorm at .1, LeakyReLU at .2."""
    layers = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(oup)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """A depthwise 3x3 and a pointwise 1x1, each with BatchNorm and LeakyReLU (keys .0, .1 and .3, .4)."""
    return nn.Sequential(*conv_bn(inp, inp, stride, leaky, groups=inp), *conv_bn(inp, oup, 1, leaky, kernel=1))


class MobileNetBody(nn.Module):
    """biubug6's MobileNetV1 x 0.25 without its classifier: three stages, strides 8, 16, 32, 64 / 128 / 256
    channels."""

    channels = (64, 128, 256)

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(conv_bn(3, 8, 2, leaky=0.1), conv_dw(8, 16, 1), conv_dw(16, 32, 2),
                                    conv_dw(32, 32, 1), conv_dw(32, 64, 2), conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(conv_dw(64, 128, 2), *(conv_dw(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.stage1(x)
        second = self.stage2(first)
        return [first, second, self.stage3(second)]


class ResNet50Body(nn.Module):
    """torchvision's ResNet-50 up to layer4 (no pooling, no fc): layer2-4 at strides 8, 16, 32."""

    channels = (512, 1024, 2048)

    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        second = self.layer2(self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x))))))
        third = self.layer3(second)
        return [second, third, self.layer4(third)]


class FPN(nn.Module):
    """1x1 lateral convs to `out` channels, the coarser level upsampled (nearest) and added, then a 3x3 merge."""

    def __init__(self, channels: Sequence[int], out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1 = conv_bn(channels[0], out, leaky=leaky, kernel=1)
        self.output2 = conv_bn(channels[1], out, leaky=leaky, kernel=1)
        self.output3 = conv_bn(channels[2], out, leaky=leaky, kernel=1)
        self.merge1 = conv_bn(out, out, leaky=leaky)
        self.merge2 = conv_bn(out, out, leaky=leaky)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        output1, output2, output3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        output2 = self.merge2(output2 + F.interpolate(output3, size=output2.shape[2:], mode="nearest"))
        output1 = self.merge1(output1 + F.interpolate(output2, size=output1.shape[2:], mode="nearest"))
        return [output1, output2, output3]


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated, ReLU."""

    def __init__(self, inp: int, out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = conv_bn(inp, out // 2, relu=False)
        self.conv5X5_1 = conv_bn(inp, out // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn(out // 4, out // 4, relu=False)
        self.conv7X7_2 = conv_bn(out // 4, out // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn(out // 4, out // 4, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(branch5))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), branch7], dim=1))


class Head(nn.Module):
    """A 1x1 conv giving `values` numbers per anchor, flattened to N x (H * W * anchors) x values."""

    def __init__(self, channels: int, values: int, anchors: int = 2):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """x: N x 3 x H x W, BGR pixels minus the mean (0-255 scale) -> (box offsets N x A x 4, face probabilities
    N x A x 2 (softmax, column 1 = face), landmark offsets N x A x 10), anchors in `prior_boxes(H, W)`'s order."""

    def __init__(self, body: nn.Module, out: int):
        super().__init__()
        self.body = body
        self.fpn = FPN(body.channels, out)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out, out), SSH(out, out), SSH(out, out)
        self.ClassHead = nn.ModuleList(Head(out, 2) for _ in STEPS)
        self.BboxHead = nn.ModuleList(Head(out, 4) for _ in STEPS)
        self.LandmarkHead = nn.ModuleList(Head(out, 10) for _ in STEPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        logits = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, F.softmax(logits, dim=-1), landmarks


@register_arch
def retinaface_mobilenet() -> RetinaFace:
    """RetinaFace with biubug6's MobileNet-0.25 body, 64 channels (cfg_mnet; mobilenet0.25_Final.pth)."""
    return RetinaFace(MobileNetBody(), 64)


@register_arch
def retinaface_resnet50() -> RetinaFace:
    """RetinaFace with a ResNet-50 body, 256 channels (cfg_re50; Resnet50_Final.pth, \\WM/'s detector)."""
    return RetinaFace(ResNet50Body(), 256)


# ---------------------------------------------------------------------------------------------- decoding

def prior_boxes(height: int, width: int) -> np.ndarray:
    """biubug6's PriorBox for an input of height x width: (cx, cy, w, h) in units of the input, per level, row
    by row, both anchor sizes per cell."""
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        row, col, size = np.meshgrid(np.arange(-(-height // step)), np.arange(-(-width // step)), sizes, indexing="ij")
        levels.append(np.stack([(col + 0.5) * step / width, (row + 0.5) * step / height, size / width,
                                size / height], axis=-1).reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)


def decode_boxes(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """box_utils.decode: centre offsets x 0.1 x prior size, sizes prior x exp(0.2 x offset) -> [x0, y0, x1, y1]."""
    centres = priors[:, :2] + offsets[:, :2] * VARIANCES[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(offsets[:, 2:] * VARIANCES[1])
    top_left = centres - sizes / 2
    return torch.cat([top_left, top_left + sizes], dim=1)


def decode_landmarks(offsets: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """box_utils.decode_landm: each of the 5 points = prior centre + offset x 0.1 x prior size -> 10 numbers."""
    points = priors[:, None, :2] + offsets.reshape(-1, 5, 2) * VARIANCES[0] * priors[:, None, 2:]
    return points.reshape(-1, 10)


def nms(detections: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """py_cpu_nms: greedy by score (numpy's argsort, reversed), overlap = IoU of +1-pixel areas; indices kept."""
    x1, y1, x2, y2, scores = (detections[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = width * height
        order = rest[inter / (areas[best] + areas[rest] - inter) <= threshold]
    return keep


# ---------------------------------------------------------------------------------------------- detector

class PixelInputRetinaFace(nn.Module):
    """RetinaFace fed N x H x W x 3 RGB pixels (uint8): BGR minus `mean` here, so it runs on the model's device."""

    def __init__(self, model: RetinaFace, mean: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model(images.flip(3).permute(0, 3, 1, 2).float() - self.mean)


Forward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, ...]]


class RetinaFaceDetector:
    """RetinaFace over whole RGB frames -> per frame (k, 15) [x0, y0, x1, y1, score, 5 x (x, y) landmarks] in frame
    pixels, best first; the landmarks as RetinaFace gives them: left eye, right eye, nose, left and right mouth
    corners (of the picture: the person's right eye is the picture's left).

    `downscale` != 1 detects on each frame resized by it (OpenCV area averaging) and scales the results back.
    """

    def __init__(self, model: RetinaFace, min_score: float, mean: Sequence[float] = BIUBUG6_MEAN,
                 downscale: float = 1.0, max_pixels: int = MAX_PIXELS_PER_CALL):
        if not 0 < downscale <= 1:
            raise ValueError(f"downscale must lie in (0, 1], got {downscale}")
        self.network = PixelInputRetinaFace(model.eval(), mean)
        self.min_score = min_score
        self.downscale = downscale
        self.max_pixels = max_pixels
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    def priors(self, height: int, width: int) -> torch.Tensor:
        """The priors of an input of height x width (computed once per size)."""
        if (height, width) not in self._priors:
            self._priors[height, width] = torch.from_numpy(prior_boxes(height, width))
        return self._priors[height, width]

    def detect(self, frames: list[np.ndarray], forward: Forward | None = None) -> list[np.ndarray]:
        """Per frame (H x W x 3 uint8 RGB), its detections (k, 15) float32 in frame pixels, best first.

        `forward(network, batch)` may replace the plain call, e.g. to place the network on a device with fallback.
        """
        images = [self.resized(frame) for frame in frames]
        found = [np.zeros((0, 15), np.float32) for _ in frames]
        by_shape: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(index)
        for (height, width, _), members in by_shape.items():
            per_call = max(1, self.max_pixels // (height * width))
            for start in range(0, len(members), per_call):
                chunk = members[start:start + per_call]
                batch = torch.from_numpy(np.stack([images[i] for i in chunk]))
                with torch.inference_mode():
                    outputs = forward(self.network, batch) if forward is not None else self.network(batch)
                for index, detections in zip(chunk, self.decode(*outputs, height, width)):
                    scale = np.float32([frames[index].shape[1] / width, frames[index].shape[0] / height])
                    detections[:, [0, 2, *range(5, 15, 2)]] *= scale[0]
                    detections[:, [1, 3, *range(6, 15, 2)]] *= scale[1]
                    found[index] = detections
        return found

    def resized(self, frame: np.ndarray) -> np.ndarray:
        """The frame as the network sees it: resized by `downscale` (area averaging), sides truncated; a frame over
        `max_pixels` is shrunk further to fit one call."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or not frame.size:
            raise ValueError(f"expected H x W x 3 uint8 RGB frames, got {frame.dtype} {frame.shape}")
        factor = min(self.downscale, math.sqrt(self.max_pixels / (frame.shape[0] * frame.shape[1])))
        if factor >= 1:
            return frame
        height, width = (max(1, int(side * factor)) for side in frame.shape[:2])
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)

    def decode(self, offsets: torch.Tensor, probs: torch.Tensor, landmarks: torch.Tensor, height: int,
               width: int) -> list[np.ndarray]:
        """The network's outputs for a batch of height x width images -> per image (k, 15) in image pixels, best
        first: scores above min_score, decoded, NMS."""
        priors = self.priors(height, width).to(offsets.device)
        scale = torch.tensor([width, height] * 5, dtype=torch.float32, device=offsets.device)
        results = []
        for image_offsets, image_probs, image_landmarks in zip(offsets.float(), probs.float(), landmarks.float()):
            keep = image_probs[:, 1] > self.min_score  # decode only what passes: few anchors do
            boxes = decode_boxes(image_offsets[keep], priors[keep]) * scale[:4]
            points = decode_landmarks(image_landmarks[keep], priors[keep]) * scale
            detections = torch.cat([boxes, image_probs[keep, 1:2], points], dim=1).cpu().numpy()
            results.append(detections[nms(detections)].reshape(-1, 15))
        return results
