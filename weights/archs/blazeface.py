"""BlazeFace face detectors (MediaPipe short-range "front" 128 and "back" 256) with anchor decoding and blended NMS."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weights.registry import SYMMETRIC, InputSpec, register_arch

SCORE_CLIP = 100.0
IOU_THRESHOLD = 0.3
DEFAULT_MIN_SCORE = {"front": 0.75, "back": 0.65}


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: the odd leftover pixel goes right/bottom, unlike PyTorch's padding.

    timm's Conv2dSame pads the same, but computes it with math.ceil on the size, and the dynamic-shape ONNX export
    of BlazeFace with it did not finish in 10 minutes (33 s with this one)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            # (ceil(size / stride) - 1) * stride + kernel - size, written so that an ONNX export with sizes
            # symbolic multiples of the stride sees a constant.
            total = max(kernel - (size % stride or stride), 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class BlazeBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 with a residual; stride 2 max-pools the skip, wider outputs zero-pad it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.extra_channels = out_channels - in_channels
        self.convs = nn.Sequential(
            SamePadConv2d(in_channels, in_channels, 3, stride=stride, groups=in_channels),
            nn.Conv2d(in_channels, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.max_pool2d(x, 2, 2) if self.stride == 2 else x
        if self.extra_channels:
            skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra_channels))
        return F.relu(self.convs(x) + skip)


class FinalBlazeBlock(nn.Module):
    """Stride-2 separable conv without a residual (the back model's last 8x8 stage)."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            SamePadConv2d(channels, channels, 3, stride=2, groups=channels),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs(x))


def _stem() -> list[nn.Module]:
    return [SamePadConv2d(3, 24, 5, stride=2), nn.ReLU(inplace=True)]


def _flatten_anchors(head_output: torch.Tensor, values_per_anchor: int) -> torch.Tensor:
    """N x (A*V) x H x W -> N x (H*W*A) x V, in TFLite's row-major NHWC anchor order."""
    batch, channels, height, width = head_output.shape
    return head_output.permute(0, 2, 3, 1).reshape(batch, height * width * (channels // values_per_anchor),
                                                   values_per_anchor)


class BlazeFace(nn.Module):
    """SSD heads shared by both variants: 2 anchors per cell on the 16x16 map, 6 on the 8x8 map."""

    variant: str
    input_size: int

    def _add_heads(self, fine_channels: int, coarse_channels: int = 96) -> None:
        # Registered after the backbone so module order equals the TFLite graph's conv order.
        self.classifier_8 = nn.Conv2d(fine_channels, 2, 1)
        self.classifier_16 = nn.Conv2d(coarse_channels, 6, 1)
        self.regressor_8 = nn.Conv2d(fine_channels, 2 * 16, 1)
        self.regressor_16 = nn.Conv2d(coarse_channels, 6 * 16, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(16x16 map for the 2-anchor heads, 8x8 map for the 6-anchor heads)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: N x 3 x H x W RGB in [-1, 1] -> (regressors N x A x 16, score logits N x A): A = 896 anchors at
        H = W = S, in blazeface_anchors' order."""
        fine, coarse = self.features(x)
        logits = torch.cat([_flatten_anchors(self.classifier_8(fine), 1),
                            _flatten_anchors(self.classifier_16(coarse), 1)], dim=1)
        regressors = torch.cat([_flatten_anchors(self.regressor_8(fine), 16),
                                _flatten_anchors(self.regressor_16(coarse), 16)], dim=1)
        return regressors, logits.squeeze(-1)


class BlazeFaceFront(BlazeFace):
    """MediaPipe short-range face detector, 128x128 input; channels widen 24 -> 88 in backbone1, 96 in backbone2."""

    variant = "front"
    input_size = 128

    def __init__(self):
        super().__init__()
        widths_and_strides = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
                              (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1)]
        self.backbone1 = nn.Sequential(*_stem(), *(BlazeBlock(*spec) for spec in widths_and_strides))
        self.backbone2 = nn.Sequential(BlazeBlock(88, 96, 2), *(BlazeBlock(96, 96) for _ in range(4)))
        self._add_heads(88)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.backbone1(x)
        return fine, self.backbone2(fine)


class BlazeFaceBack(BlazeFace):
    """MediaPipe back-camera face detector, 256x256 input: 31 blocks over four resolutions, then a stride-2 block."""

    variant = "back"
    input_size = 256

    def __init__(self):
        super().__init__()
        blocks = [BlazeBlock(24, 24) for _ in range(7)]
        for c_in, c_out in [(24, 24), (24, 48), (48, 96)]:
            blocks += [BlazeBlock(c_in, c_out, stride=2), *(BlazeBlock(c_out, c_out) for _ in range(7))]
        self.backbone = nn.Sequential(*_stem(), *blocks)
        self.final = FinalBlazeBlock(96)
        self._add_heads(96)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fine = self.backbone(x)
        return fine, self.final(fine)


@register_arch(input=InputSpec(128, **SYMMETRIC))
def blazeface_front() -> BlazeFaceFront:
    """MediaPipe short-range BlazeFace (face_detection_short_range.tflite), 128x128 input."""
    return BlazeFaceFront()


@register_arch(input=InputSpec(256, **SYMMETRIC))
def blazeface_back() -> BlazeFaceBack:
    """MediaPipe back-camera BlazeFace (face_detection_back.tflite), 256x256 input."""
    return BlazeFaceBack()


def blazeface_anchors(rows: int = 16, cols: int = 16) -> np.ndarray:
    """Anchors (x_center, y_center, w=1, h=1) in units of the input size S: 2 per cell of the fine map (rows x cols
    cells of S/16 pixels), then 6 per cell of the coarse map (cells twice that size): 896 on an S x S input."""
    grids = []
    for halvings, per_cell in [(1, 2), (2, 6)]:
        y = (np.arange(math.ceil(rows / halvings)) + 0.5) * halvings / 16
        x = (np.arange(math.ceil(cols / halvings)) + 0.5) * halvings / 16
        y, x = np.meshgrid(y, x, indexing="ij")
        grids.append(np.repeat(np.stack([x.ravel(), y.ravel()], axis=1), per_cell, axis=0))
    centres = np.concatenate(grids)
    return np.concatenate([centres, np.ones_like(centres)], axis=1)


def decode_detections(regressors: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor, input_size: int,
                      min_score: float) -> list[np.ndarray]:
    """Raw outputs for a batch -> per image a (k, 17) float32 array [ymin, xmin, ymax, xmax, 6 x (x, y), score]."""
    scores = torch.sigmoid(logits.float().clamp(-SCORE_CLIP, SCORE_CLIP))
    offsets = regressors.float() / input_size
    centre = anchors[:, :2]
    box_centre = offsets[..., 0:2] * anchors[:, 2:4] + centre
    half_size = offsets[..., 2:4] * anchors[:, 2:4] / 2
    keypoints = offsets[..., 4:16].reshape(*offsets.shape[:2], 6, 2) * anchors[:, None, 2:4] + centre[:, None]
    top_left, bottom_right = box_centre - half_size, box_centre + half_size
    boxes = torch.stack([top_left[..., 1], top_left[..., 0], bottom_right[..., 1], bottom_right[..., 0]], dim=-1)
    detections = torch.cat([boxes, keypoints.flatten(2), scores[..., None]], dim=-1)
    keep = scores >= min_score  # filter before leaving the device: few anchors pass
    kept = detections[keep].cpu().numpy()
    per_image = np.split(kept, np.cumsum(keep.sum(dim=1).tolist()))[:-1]  # the last split is always empty
    return [weighted_nms(image_detections) for image_detections in per_image]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one [ymin, xmin, ymax, xmax] box against many."""
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:4], boxes[:, 2:4])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = np.prod(box[2:4] - box[:2])
    areas = np.prod(boxes[:, 2:4] - boxes[:, :2], axis=1)
    return intersection / np.maximum(area + areas - intersection, 1e-12)


def weighted_nms(detections: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """MediaPipe-style blended NMS: each cluster's box and keypoints become the score-weighted mean; score = best."""
    remaining = detections[np.argsort(-detections[:, 16], kind="stable")]
    merged = []
    while len(remaining):
        overlapping = _iou(remaining[0, :4], remaining[:, :4]) > iou_threshold
        overlapping[0] = True  # a degenerate zero-area box still represents itself
        cluster = remaining[overlapping]
        weights = cluster[:, 16:17] + 1e-12  # scores can underflow to 0 when min_score is 0
        blended = np.append((cluster[:, :16] * weights).sum(axis=0) / weights.sum(), cluster[0, 16])
        merged.append(blended)
        remaining = remaining[~overlapping]
    return np.asarray(merged, dtype=np.float32).reshape(-1, 17)


class PixelInputBlazeFace(nn.Module):
    """BlazeFace fed N x H x W x 3 RGB pixels in [0, 255]; normalising here keeps it on the model's device."""

    def __init__(self, model: BlazeFace):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(images.permute(0, 3, 1, 2).float() / 127.5 - 1.0)


Forward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class BlazeFaceDetector:
    """Normalise -> BlazeFace -> decode -> blended NMS, for RGB images at the model's scale: S x S (S = the input
    size) as trained, or any height and width that are multiples of S / 8 (the coarse map's cell)."""

    def __init__(self, model: BlazeFace, variant: str | None = None, min_score: float | None = None,
                 network: nn.Module | None = None):
        """`network` replaces PixelInputBlazeFace(model) where given (an onnxruntime session of it, say)."""
        self.variant = variant or model.variant
        self.network = network or PixelInputBlazeFace(model.eval())
        self.input_size = model.input_size
        self.alignment = model.input_size // 8
        self.score_threshold = DEFAULT_MIN_SCORE[self.variant] if min_score is None else min_score
        self._anchors: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        parameter = next(self.network.parameters(), None)  # an onnxruntime session has none: it takes CPU tensors
        return parameter.device if parameter is not None else torch.device("cpu")

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """The anchors of an input of height x width pixels (computed once per size)."""
        if (height, width) not in self._anchors:
            cell = self.input_size // 16
            self._anchors[height, width] = torch.from_numpy(blazeface_anchors(height // cell, width // cell)).float()
        return self._anchors[height, width]

    def detect(self, images: torch.Tensor, forward: Forward | None = None) -> list[np.ndarray]:
        """images: N x H x W x 3 RGB, uint8 or float in [0, 255] -> per image (k, 17) float32 detections, in units
        of the input size S (a box across an S x S image spans 0 to 1).

        `forward(network, images)` may replace the plain call, e.g. to place the network on a device with fallback.
        """
        sides = tuple(images.shape[1:3])
        if images.dim() != 4 or images.shape[3] != 3 or any(side == 0 or side % self.alignment for side in sides):
            raise ValueError(f"expected N x H x W x 3 images with H and W multiples of {self.alignment}, "
                             f"got {tuple(images.shape)}")
        with torch.inference_mode():
            if forward is None:
                regressors, logits = self.network(images.to(self.device))
            else:
                regressors, logits = forward(self.network, images)
            return decode_detections(regressors, logits, self.anchors(*sides).to(regressors.device),
                                     self.input_size, self.score_threshold)
