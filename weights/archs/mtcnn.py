"""MTCNN face detector (Zhang et al. 2016): PNet proposals over an image pyramid, RNet and ONet refinement.

The three networks keep the state-dict keys of facenet-pytorch's port (conv1, prelu1, ..., dense6_3), so its
published weights load strictly. `mtcnn` bundles the three under the prefixes pnet., rnet., onet. so that one
checkpoint describes the whole detector.

`MTCNNDetector` computes what facenet-pytorch 2.6.0's `detect_face` computes, step for step: the pyramid levels and
the 24 / 48 px crops are resized by area (`F.interpolate(mode="area")`, i.e. adaptive average pooling); the
refinement stages crop each box truncated to whole pixels and clipped to the frame (a face at the border is
stretched, as in facenet); boxes, regressions, NMS steps and thresholds are facenet's. On the CPU its boxes equal
facenet's to float rounding (tests/test_mtcnn_parity.py). Only the means differ: the area averages come from
integral images (exact integer sums divided as adaptive pooling divides, so the same floats, without a float copy
of the frame or one pass over it per level), the crops of all boxes are gathered at once, and frames of one size
share the network calls while every NMS step still runs per frame, as facenet runs on one image.

Box conventions follow the original code: a box [x1, y1, x2, y2] covers the pixels x1-1 .. x2 (width x2 - x1 + 1
in the regressions), and is returned as is, in frame pixels, like facenet-pytorch's `MTCNN.detect`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms

from weights.registry import InputSpec, register_arch

PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125  # 1 / 128
# The same normalisation on RGB in [0, 1], as an input spec: (x - 0.5) / (128 / 255).
NORMALISED = {"mean": (0.5, 0.5, 0.5), "std": (128 / 255,) * 3}
PNET_STRIDE = 2
PNET_CELL = 12
RNET_SIZE = 24
ONET_SIZE = 48
PNET_SCALE_NMS = 0.5  # within one pyramid level
PNET_NMS = 0.7  # across the levels of one frame
RNET_NMS = 0.7
ONET_NMS_MIN = 0.7  # overlap / smaller area
# first-level pixels per PNet call (one 1080p frame, five half-size ones): larger calls spill the caches, 1.5x slower
# per frame at eight 1080p frames a call on the CPU
PNET_MAX_PIXELS = 1 << 20
CROP_BATCH = 512  # crops per RNet / ONet call, as facenet batches them
# How `downscale` resizes frames: bicubic, `Image.resize`'s default for RGB images since Pillow 7 (the 1st DFDC
# solution called `img.resize(size=[s // 2 for s in img.size])` without a filter)
RESAMPLE = Image.Resampling.BICUBIC

Forward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, ...]]


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x (W*H*C): the ported dense layers expect the original (Caffe) width-major order."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """Proposal network, fully convolutional: 12x12 windows at stride 2 -> (box offsets N x 4 x h x w,
    face probabilities N x 2 x h x w)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops -> (box offsets N x 4, face probabilities N x 2)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_transposed(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 crops -> (box offsets N x 4, landmarks N x 10 as 5 x then 5 y,
    face probabilities N x 2)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_transposed(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


class MTCNN(nn.Module):
    """The three networks as one module, so one checkpoint (keys pnet.*, rnet.*, onet.*) holds the detector."""

    def __init__(self):
        super().__init__()
        self.pnet = PNet()
        self.rnet = RNet()
        self.onet = ONet()


@register_arch(input=InputSpec(PNET_CELL, **NORMALISED))
def mtcnn_pnet() -> PNet:
    """MTCNN proposal network (facenet-pytorch keys)."""
    return PNet()


@register_arch(input=InputSpec(24, **NORMALISED))
def mtcnn_rnet() -> RNet:
    """MTCNN refinement network, 24x24 input (facenet-pytorch keys)."""
    return RNet()


@register_arch(input=InputSpec(48, **NORMALISED))
def mtcnn_onet() -> ONet:
    """MTCNN output network, 48x48 input (facenet-pytorch keys)."""
    return ONet()


@register_arch
def mtcnn() -> MTCNN:
    """The whole MTCNN cascade: PNet, RNet and ONet under the prefixes pnet., rnet., onet."""
    return MTCNN()


# ---------------------------------------------------------------------------------------------- box helpers

def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """facenet's pyramid: from 12 / min_face_size (a PNet cell, 12 px, then covers min_face_size pixels) down by
    `factor` while the short side stays >= 12 px, the short side tracked as facenet tracks it (times factor)."""
    scale = PNET_CELL / min_face_size
    short_side = min(height, width) * scale
    scales = []
    while short_side >= PNET_CELL:
        scales.append(scale)
        scale *= factor
        short_side *= factor
    return scales


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each [x1, y1, x2, y2, ...] box to a square about its centre (the longer side wins): facenet's `rerec`,
    in its float steps."""
    boxes = boxes.clone()
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(width, height)
    boxes[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def regress_boxes(boxes: torch.Tensor, offsets: torch.Tensor, inclusive: bool = True) -> torch.Tensor:
    """Shift box edges by offsets x box size: facenet's `bbreg` (size counted inclusively, w = x2 - x1 + 1) after
    RNet and ONet, its plain w = x2 - x1 after PNet."""
    boxes = boxes.clone()
    extra = 1.0 if inclusive else 0.0
    size = torch.stack([boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra] * 2, dim=1)
    boxes[:, :4] = boxes[:, :4] + offsets * size
    return boxes


def nms_min(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS where overlap = intersection / smaller area (inclusive pixel areas); indices kept, best first.

    facenet's `nms_numpy(..., "Min")` step for step (same argsort, so equal scores are visited in its order).
    """
    x1, y1, x2, y2, scores = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)  # ascending: the best is the last
    keep = []
    while len(order):
        best, rest = order[-1], order[:-1]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = width * height / np.minimum(areas[best], areas[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def nms_per_frame(boxes: torch.Tensor, owners: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices kept by IoU NMS run on each frame's boxes alone, as facenet runs it on one image (`batched_nms` with
    one class: offsetting frames apart, as a batched call does, changes the float overlaps); owners must be sorted."""
    keep = []
    for frame in torch.unique_consecutive(owners).tolist():
        mine = (owners == frame).nonzero().squeeze(1)
        picked = batched_nms(boxes[mine, :4], boxes[mine, 4], _zeros_like_index(mine), threshold)
        keep.append(mine[picked])
    return torch.cat(keep) if keep else owners.new_zeros((0,), dtype=torch.long)


# ---------------------------------------------------------------------------------------------- resampling

def detection_size(height: int, width: int, downscale: float) -> tuple[int, int]:
    """The size of a frame resized by `downscale`, sides truncated to whole pixels (at 0.5: s // 2, as PIL's
    `img.resize(size=[s // 2 for s in img.size])`)."""
    if downscale == 1:
        return height, width
    return max(1, int(height * downscale)), max(1, int(width * downscale))


def resize_frame(frame: np.ndarray, downscale: float) -> np.ndarray:
    """The frame resized by `downscale` as the 1st DFDC solution resized it for MTCNN: a PIL image, `resize` with
    the bicubic filter."""
    height, width = detection_size(*frame.shape[:2], downscale)
    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), RESAMPLE))


def integral_images(frames: Sequence[np.ndarray]) -> np.ndarray:
    """N x (H+1) x (W+1) x 3 sums of the pixels above and left of each pixel corner (cv2.integral), one per frame of
    one size: int32 while any sum fits (up to 8.4 Mpx, 4K), else float64 (exact integers too)."""
    height, width = frames[0].shape[:2]
    small = 255 * height * width < 2 ** 31
    tables = np.empty((len(frames), height + 1, width + 1, 3), np.int32 if small else np.float64)
    for frame, table in zip(frames, tables):
        cv2.integral(frame, table, sdepth=cv2.CV_32S if small else cv2.CV_64F)
    return tables


def area_windows(size_in: int | torch.Tensor, size_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive average pooling's windows (what `F.interpolate(mode="area")` averages): output i covers the inputs
    floor(i * n / m) .. ceil((i + 1) * n / m) - 1, as (first, end) indices; size_in may be a column of sizes."""
    index = torch.arange(size_out)
    return index * size_in // size_out, ((index + 1) * size_in + size_out - 1) // size_out


def area_level(integrals: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x (H+1) x (W+1) x 3 integral images -> N x 3 x size float32 (channels-last) area means, equal to
    `F.interpolate(frames.float(), size, mode="area")`: the window sums are exact integers, divided by the window
    height, then width, as the pooling kernel divides. Costs O(output), not a pass over the frame per level."""
    top, bottom = area_windows(integrals.shape[1] - 1, size[0])
    left, right = area_windows(integrals.shape[2] - 1, size[1])
    if integrals.device.type == "cpu":  # numpy's take gathers these rows / pixels about 5x faster than torch
        table = integrals.numpy()
        strips = np.take(table, bottom.numpy(), axis=1)
        strips -= np.take(table, top.numpy(), axis=1)
        sums = np.take(strips, right.numpy(), axis=2)
        sums -= np.take(strips, left.numpy(), axis=2)
        sums = torch.from_numpy(sums)
    else:
        sums = _window_sums(integrals, top, bottom, left, right)
    heights = (bottom - top).to(sums.device, torch.float32).view(1, -1, 1, 1)
    widths = (right - left).to(sums.device, torch.float32).view(1, 1, -1, 1)
    return sums.float().div_(heights).div_(widths).permute(0, 3, 1, 2)


def _window_sums(integrals: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, left: torch.Tensor,
                 right: torch.Tensor) -> torch.Tensor:
    """`area_level`'s window sums with torch alone (any device)."""
    device = integrals.device
    strips = integrals.index_select(1, bottom.to(device)) - integrals.index_select(1, top.to(device))
    return strips.index_select(2, right.to(device)) - strips.index_select(2, left.to(device))


def crop_regions(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """facenet's `pad`: each box truncated to whole pixels and clipped to the frame, as 0-based pixel ranges
    n x 4 [left, top, right, bottom) (a box [x1, y1, x2, y2] covers 1-based pixels x1 .. x2); may be empty."""
    corners = boxes[:, :4].trunc().long()
    return torch.stack([corners[:, 0].clamp(min=1) - 1, corners[:, 1].clamp(min=1) - 1,
                        corners[:, 2].clamp(max=width), corners[:, 3].clamp(max=height)], dim=1)


def area_crops(integrals: np.ndarray, regions: torch.Tensor, owners: torch.Tensor, size: int) -> torch.Tensor:
    """The (non-empty) regions [left, top, right, bottom) of their frames resized by area to size x size:
    n x 3 x size x size float32 (channels-last) pixels, equal to facenet's `imresample` of each crop."""
    table = integrals.reshape(-1, 3)
    stride = integrals.shape[2]  # W + 1
    top, bottom = area_windows((regions[:, 3] - regions[:, 1])[:, None], size)
    left, right = area_windows((regions[:, 2] - regions[:, 0])[:, None], size)
    base = owners[:, None] * integrals.shape[1] + regions[:, 1:2]  # the first row of each region, frame-major
    upper, lower = ((base + top) * stride)[:, :, None], ((base + bottom) * stride)[:, :, None]
    first, end = (left + regions[:, 0:1])[:, None, :], (right + regions[:, 0:1])[:, None, :]

    def column_sums(row: torch.Tensor) -> np.ndarray:  # sums from the top of the frame down to `row`, per window
        return table[(row + end).numpy()] - table[(row + first).numpy()]

    sums = torch.from_numpy(column_sums(lower) - column_sums(upper)).float()
    heights = (bottom - top).float()[:, :, None, None]
    widths = (right - left).float()[:, None, :, None]
    return sums.div_(heights).div_(widths).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------- stage 1

class PNetProposals(nn.Module):
    """Stage 1 as one module, so a device runs the whole pyramid and only the candidate boxes come back.

    Input: N x (H+1) x (W+1) x 3 integral images of N frames (`integral_images`). Output: (boxes n x 5 [x1, y1, x2,
    y2, score] after regression and squaring, frame index n as float), frame by frame, each frame's boxes in the
    order facenet gives them. The pyramid follows from the input's size, so concurrent calls (the kernel's reader
    threads) share the module safely.
    """

    def __init__(self, pnet: PNet, threshold: float = 0.6, min_face_size: float = 20, factor: float = 0.709):
        super().__init__()
        self.pnet = pnet
        self.threshold = threshold
        self.min_face_size = min_face_size
        self.factor = factor

    def scales(self, height: int, width: int) -> list[float]:
        return pyramid_scales(height, width, self.min_face_size, self.factor)

    def forward(self, integrals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count, height, width = integrals.shape[0], integrals.shape[1] - 1, integrals.shape[2] - 1
        levels: list[list[torch.Tensor]] = [[] for _ in range(count)]  # per frame, its candidates per level
        for scale in self.scales(height, width):
            pixels = area_level(integrals, (int(height * scale + 1), int(width * scale + 1)))
            offsets, probs = self.pnet(pixels.sub_(PIXEL_MEAN).mul_(PIXEL_SCALE))
            boxes, owners = self._candidates(offsets.float(), probs[:, 1].float(), scale)
            for frame, kept in enumerate(levels):
                mine = boxes[owners == frame]
                kept.append(mine[batched_nms(mine[:, :4], mine[:, 4], _zeros_like_index(mine), PNET_SCALE_NMS)])
        device = integrals.device
        all_boxes, all_owners = [torch.zeros((0, 9), device=device)], [torch.zeros(0, device=device)]
        for frame, kept in enumerate(levels):
            if kept:
                boxes = torch.cat(kept)
                boxes = boxes[batched_nms(boxes[:, :4], boxes[:, 4], _zeros_like_index(boxes), PNET_NMS)]
                all_boxes.append(boxes)
                all_owners.append(boxes.new_full((len(boxes),), frame))
        boxes = torch.cat(all_boxes)
        return square_boxes(regress_boxes(boxes[:, :5], boxes[:, 5:9], inclusive=False)), torch.cat(all_owners)

    def _candidates(self, offsets: torch.Tensor, probs: torch.Tensor, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells scoring >= threshold -> (n x 9 [x1, y1, x2, y2, score, 4 offsets] in frame pixels, frame index):
        facenet's `generateBoundingBox`."""
        where = (probs >= self.threshold).nonzero()
        owners, rows, cols = where.unbind(1)
        cells = torch.stack([cols, rows], dim=1).to(offsets.dtype)
        top_left = torch.floor((PNET_STRIDE * cells + 1) / scale)
        bottom_right = torch.floor((PNET_STRIDE * cells + PNET_CELL) / scale)
        score = probs[owners, rows, cols]
        deltas = offsets.permute(0, 2, 3, 1)[owners, rows, cols]
        return torch.cat([top_left, bottom_right, score[:, None], deltas], dim=1), owners


# ---------------------------------------------------------------------------------------------- detector

class MTCNNDetector:
    """The MTCNN cascade over whole RGB frames (facenet-pytorch's `detect_face`); boxes come back in frame pixels,
    best score first (facenet's `MTCNN.detect` sorts the same boxes largest first by default).

    `downscale` != 1 detects on each frame resized by that factor (`resize_frame`: PIL, bicubic) and scales the
    boxes back by 1 / downscale: at 0.5 with thresholds (0.7, 0.8, 0.8) this is the 1st DFDC solution's call, a
    half-size PIL frame into facenet's MTCNN, boxes times 2. The smallest face found grows to min_face_size /
    downscale pixels and the pyramid costs about downscale^2 as much.
    """

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, min_face_size: float = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 downscale: float = 1.0):
        if not 0 < factor < 1:
            raise ValueError(f"pyramid factor must lie in (0, 1), got {factor}")
        if min_face_size < PNET_CELL:
            raise ValueError(f"min_face_size must be >= {PNET_CELL}, got {min_face_size}")
        if len(thresholds) != 3:
            raise ValueError(f"expected three stage thresholds (PNet, RNet, ONet), got {thresholds}")
        _check_downscale(downscale)
        # channels-last suits these small convolutions (about 2.5x faster PNet on CPU); the kernel's
        # Accelerator places modules the same way
        self.proposals = PNetProposals(pnet.eval().to(memory_format=torch.channels_last), float(thresholds[0]),
                                       min_face_size, factor)
        self.rnet = rnet.eval().to(memory_format=torch.channels_last)
        self.onet = onet.eval().to(memory_format=torch.channels_last)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.downscale = downscale

    @classmethod
    def from_model(cls, model: MTCNN, **kwargs) -> MTCNNDetector:
        """A detector over the networks of an `mtcnn` bundle (e.g. from `Ensemble.build_detector()`)."""
        return cls(model.pnet, model.rnet, model.onet, **kwargs)

    def detect(self, frames: list[np.ndarray], forward: Forward | None = None,
               downscale: float | None = None) -> list[np.ndarray]:
        """Per frame (H x W x 3 uint8 RGB), a float32 array (k, 5) of [x0, y0, x1, y1, score], best first."""
        return [boxes for boxes, _ in self.detect_with_landmarks(frames, forward, downscale)]

    def detect_with_landmarks(self, frames: list[np.ndarray], forward: Forward | None = None,
                              downscale: float | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame (boxes (k, 5), landmarks (k, 5, 2) as x, y for eyes, nose, mouth corners), best first.

        `forward(module, batch)` may replace the plain call, e.g. to place the module on a device with fallback;
        it must return the outputs on the CPU.
        """
        downscale = self.downscale if downscale is None else downscale
        _check_downscale(downscale)
        results: list[tuple[np.ndarray, np.ndarray]] = [(_no_boxes(), _no_points()) for _ in frames]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, frame in enumerate(frames):
            if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"expected H x W x 3 uint8 RGB frames, got {frame.dtype} {frame.shape}")
            groups.setdefault(frame.shape, []).append(index)
        with torch.inference_mode():
            for indices in groups.values():
                found = self._detect_same_size([frames[i] for i in indices], forward, downscale)
                for index, result in zip(indices, found):
                    results[index] = result
        return results

    # -------------------------------------------------------------------------------------- stages

    def _detect_same_size(self, frames: list[np.ndarray], forward: Forward | None, downscale: float
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The cascade over frames of one size, as many at a time as keep the pyramid within PNET_MAX_PIXELS."""
        height, width = detection_size(*frames[0].shape[:2], downscale)
        scales = self.proposals.scales(height, width)
        if not scales:
            return [(_no_boxes(), _no_points()) for _ in frames]
        step = max(1, PNET_MAX_PIXELS // (int(height * scales[0] + 1) * int(width * scales[0] + 1)))
        results = []
        for start in range(0, len(frames), step):
            chunk = frames[start:start + step]
            if downscale != 1:
                chunk = [resize_frame(frame, downscale) for frame in chunk]
            results.extend(self._cascade(integral_images(chunk), forward, downscale))
        return results

    def _cascade(self, integrals: np.ndarray, forward: Forward | None, downscale: float
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        """facenet's three stages on the frames of these integral images; boxes scaled back by 1 / downscale."""
        boxes, owners = _call(self.proposals, torch.from_numpy(integrals), forward)
        owners = owners.long()

        if len(boxes):  # stage 2: RNet on 24x24 crops
            offsets, probs = self._classify(self.rnet, integrals, boxes, owners, RNET_SIZE, (4, 2), forward)
            keep = probs[:, 1] > self.thresholds[1]
            boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
            owners, offsets = owners[keep], offsets[keep]
            keep = nms_per_frame(boxes, owners, RNET_NMS)
            boxes = square_boxes(regress_boxes(boxes[keep], offsets[keep]))
            owners = owners[keep]

        points = torch.zeros((0, 5, 2))
        if len(boxes):  # stage 3: ONet on 48x48 crops
            offsets, landmarks, probs = self._classify(self.onet, integrals, boxes, owners, ONET_SIZE, (4, 10, 2),
                                                       forward)
            keep = probs[:, 1] > self.thresholds[2]
            boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
            owners, offsets, landmarks = owners[keep], offsets[keep], landmarks[keep]
            size = (boxes[:, 2:4] - boxes[:, 0:2] + 1)[:, None, :]
            points = torch.stack([landmarks[:, :5], landmarks[:, 5:]], dim=2) * size + boxes[:, None, 0:2] - 1
            boxes = regress_boxes(boxes, offsets)

        results = []
        boxes_np, points_np, owners_np = boxes.numpy(), points.numpy(), owners.numpy()
        for index in range(len(integrals)):
            mine = np.flatnonzero(owners_np == index)
            keep = mine[nms_min(boxes_np[mine], ONET_NMS_MIN)] if len(mine) else mine
            found, marks = boxes_np[keep].reshape(-1, 5), points_np[keep].reshape(-1, 5, 2)
            if downscale != 1:  # back to the caller's frame pixels (exact for 0.5: times 2)
                found = np.concatenate([found[:, :4] / np.float32(downscale), found[:, 4:]], axis=1)
                marks = marks / np.float32(downscale)
            results.append((found.astype(np.float32), marks.astype(np.float32)))
        return results

    def _classify(self, network: nn.Module, integrals: np.ndarray, boxes: torch.Tensor, owners: torch.Tensor,
                  size: int, widths: tuple[int, ...], forward: Forward | None) -> tuple[torch.Tensor, ...]:
        """facenet's crops of every box (whole pixels, clipped to the frame, area-resized to size x size) through
        `network` in batches; a box wholly outside the frame (facenet fails on it) gets zeros, so passes no
        threshold."""
        regions = crop_regions(boxes, integrals.shape[1] - 1, integrals.shape[2] - 1)
        inside = ((regions[:, 2] > regions[:, 0]) & (regions[:, 3] > regions[:, 1])).nonzero().squeeze(1)
        outputs = tuple(torch.zeros((len(boxes), width)) for width in widths)
        for start in range(0, len(inside), CROP_BATCH):
            chosen = inside[start:start + CROP_BATCH]
            crops = area_crops(integrals, regions[chosen], owners[chosen], size)
            for output, part in zip(outputs, _call(network, crops.sub_(PIXEL_MEAN).mul_(PIXEL_SCALE), forward)):
                output[chosen] = part
        return outputs


def _zeros_like_index(rows: torch.Tensor) -> torch.Tensor:
    """One NMS class for all rows: facenet's image index on a single image."""
    return torch.zeros(len(rows), dtype=torch.long, device=rows.device)


def _check_downscale(downscale: float) -> None:
    if not downscale > 0:
        raise ValueError(f"downscale must be > 0, got {downscale}")


def _call(module: nn.Module, batch: torch.Tensor, forward: Forward | None) -> tuple[torch.Tensor, ...]:
    if forward is not None:
        return tuple(forward(module, batch))
    device = next(module.parameters()).device
    return tuple(output.float().cpu() for output in module(batch.to(device)))


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def _no_points() -> np.ndarray:
    return np.zeros((0, 5, 2), np.float32)
