"""MTCNN face detector (Zhang et al. 2016): PNet proposals over an image pyramid, RNet and ONet refinement.

The three networks keep the state-dict keys of facenet-pytorch's port (conv1, prelu1, ..., dense6_3), so its
published weights load strictly. `mtcnn` bundles the three under the prefixes pnet., rnet., onet. so that one
checkpoint describes the whole detector.

Box conventions follow the original code: a box [x1, y1, x2, y2] covers the pixels x1-1 .. x2 (width x2 - x1 + 1
in the regressions), and is returned as is, in frame pixels, like facenet-pytorch's `MTCNN.detect`.
Unlike facenet-pytorch, which clips a box to the frame and stretches what is left, crops that leave the frame
are zero-padded (as in the original MATLAB code) so faces at the border keep their aspect ratio.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from weights.registry import InputSpec, register_arch

PIXEL_MEAN = 127.5
PIXEL_SCALE = 0.0078125  # 1 / 128
# The same normalisation on RGB in [0, 1], as an input spec: (x - 0.5) / (128 / 255).
NORMALISED = {"mean": (0.5, 0.5, 0.5), "std": (128 / 255,) * 3}
PNET_STRIDE = 2
PNET_CELL = 12
PNET_SCALE_NMS = 0.5  # within one pyramid level
PNET_NMS = 0.7  # across the levels of one frame
RNET_NMS = 0.7
ONET_NMS_MIN = 0.7  # overlap / smaller area
PNET_MAX_PIXELS = 1 << 23  # pyramid pixels per PNet call: bounds the activations (about 330 MB for conv1 in fp32)
CROP_BATCH = 512

Forward = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, ...]]


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - PIXEL_MEAN) * PIXEL_SCALE


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

def pyramid_scales(height: int, width: int, min_face_size: float, factor: float, downscale: float = 1.0
                   ) -> list[float]:
    """Image scales at which a PNet cell (12 px) covers faces from min_face_size / downscale pixels upward."""
    scale = PNET_CELL / min_face_size * downscale
    scales = []
    while min(height, width) * scale >= PNET_CELL:
        scales.append(scale)
        scale *= factor
    return scales


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each [x1, y1, x2, y2, ...] box to a square about its centre (the longer side wins)."""
    boxes = boxes.clone()
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(width, height)
    boxes[:, 0] += (width - side) / 2
    boxes[:, 1] += (height - side) / 2
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def regress_boxes(boxes: torch.Tensor, offsets: torch.Tensor, inclusive: bool = True) -> torch.Tensor:
    """Shift box edges by offsets x box size (size counted inclusively, w = x2 - x1 + 1, after PNet)."""
    boxes = boxes.clone()
    extra = 1.0 if inclusive else 0.0
    size = torch.stack([boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra] * 2, dim=1)
    boxes[:, :4] = boxes[:, :4] + offsets * size
    return boxes


def nms_min(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS where overlap = intersection / smaller area (inclusive pixel areas); indices kept, best first."""
    x1, y1, x2, y2, scores = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = width * height / np.minimum(areas[best], areas[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------------------------------------- stage 1

def resize_pixels(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x 3 x H x W pixels -> float N x 3 x size, by anti-aliased bilinear resampling.

    On the CPU, uint8 frames are resized as uint8 (a vectorised path, about 10x faster than averaging floats
    and no float copy of the whole frame); elsewhere in float.
    """
    if images.dtype == torch.uint8 and images.device.type == "cpu":
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).float()
    return F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


class PNetProposals(nn.Module):
    """Stage 1 as one module, so a device runs the whole pyramid and only the candidate boxes come back.

    Input: N x H x W x 3 RGB pixels (uint8 or float in [0, 255]). Output: (boxes n x 5 [x1, y1, x2, y2, score]
    after regression and squaring, frame index n as float). `scales` and `threshold` are set per call.
    """

    def __init__(self, pnet: PNet, threshold: float = 0.6):
        super().__init__()
        self.pnet = pnet
        self.threshold = threshold
        self.scales: Sequence[float] = ()
        self.max_pixels = PNET_MAX_PIXELS

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count, height, width = frames.shape[:3]
        all_boxes, all_owners = [], []
        if self.scales:
            first = (int(height * self.scales[0] + 1), int(width * self.scales[0] + 1))
            step = max(1, self.max_pixels // (first[0] * first[1]))
            for start in range(0, count, step):
                for boxes, owners in self._chunk_candidates(frames[start:start + step]):
                    all_boxes.append(boxes)
                    all_owners.append(owners + start)
        if not all_boxes:
            return frames.new_zeros((0, 5), dtype=torch.float32), frames.new_zeros((0,), dtype=torch.float32)
        boxes, owners = torch.cat(all_boxes), torch.cat(all_owners)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], owners, PNET_NMS)
        boxes, owners = boxes[keep], owners[keep]
        boxes = square_boxes(regress_boxes(boxes[:, :5], boxes[:, 5:9], inclusive=False))
        return boxes, owners.float()

    def _chunk_candidates(self, frames: torch.Tensor):
        """Yield (candidates, frame index) per pyramid level, each level kept by NMS within itself."""
        images = frames.permute(0, 3, 1, 2)
        height, width = images.shape[-2:]
        for scale in self.scales:
            level = resize_pixels(images, (int(height * scale + 1), int(width * scale + 1)))
            offsets, probs = self.pnet(level.sub_(PIXEL_MEAN).mul_(PIXEL_SCALE))
            boxes, owners = self._candidates(offsets, probs[:, 1], scale)
            keep = batched_nms(boxes[:, :4], boxes[:, 4], owners, PNET_SCALE_NMS)
            yield boxes[keep], owners[keep]

    def _candidates(self, offsets: torch.Tensor, probs: torch.Tensor, scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells scoring >= threshold -> (n x 9 [x1, y1, x2, y2, score, 4 offsets] in frame pixels, frame index)."""
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
    """The MTCNN cascade over whole RGB frames; boxes come back in frame pixels, best score first.

    `downscale` < 1 detects as if on frames resized by that factor (the 1st DFDC solution used 0.5): the smallest
    face found grows to min_face_size / downscale pixels and the pyramid costs about downscale^2 as much.
    """

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, min_face_size: float = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 downscale: float = 1.0):
        if not 0 < factor < 1:
            raise ValueError(f"pyramid factor must lie in (0, 1), got {factor}")
        if min_face_size < PNET_CELL:
            raise ValueError(f"min_face_size must be >= {PNET_CELL}, got {min_face_size}")
        # channels-last suits these small convolutions (about 2.5x faster PNet on CPU); the kernel's
        # Accelerator places modules the same way
        self.proposals = PNetProposals(pnet.eval().to(memory_format=torch.channels_last), thresholds[0])
        self.rnet = rnet.eval().to(memory_format=torch.channels_last)
        self.onet = onet.eval().to(memory_format=torch.channels_last)
        self.min_face_size = min_face_size
        self.thresholds = tuple(thresholds)
        self.factor = factor
        self.downscale = downscale

    @classmethod
    def from_model(cls, model: MTCNN, **kwargs) -> MTCNNDetector:
        """A detector over the networks of an `mtcnn` bundle (e.g. from `Ensemble.build_detector()`)."""
        return cls(model.pnet, model.rnet, model.onet, **kwargs)

    @property
    def modules(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The modules handed to `forward`: stage 1 (PNet inside), RNet, ONet."""
        return self.proposals, self.rnet, self.onet

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
        if not downscale > 0:
            raise ValueError(f"downscale must be > 0, got {downscale}")
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
        height, width = frames[0].shape[:2]
        self.proposals.scales = pyramid_scales(height, width, self.min_face_size, self.factor, downscale)
        self.proposals.threshold = self.thresholds[0]
        batch = torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
        boxes, owners = _call(self.proposals, batch, forward)
        owners = owners.long()
        images = _FrameCache(frames)

        if len(boxes):  # stage 2: RNet on 24x24 crops
            offsets, probs = self._classify(self.rnet, images, boxes, owners, 24, forward)
            keep = probs[:, 1] > self.thresholds[1]
            boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
            owners, offsets = owners[keep], offsets[keep]
            keep = batched_nms(boxes[:, :4], boxes[:, 4], owners, RNET_NMS)
            boxes = square_boxes(regress_boxes(boxes[keep], offsets[keep]))
            owners = owners[keep]

        points = torch.zeros((0, 5, 2))
        if len(boxes):  # stage 3: ONet on 48x48 crops
            offsets, landmarks, probs = self._classify(self.onet, images, boxes, owners, 48, forward)
            keep = probs[:, 1] > self.thresholds[2]
            boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], dim=1)
            owners, offsets, landmarks = owners[keep], offsets[keep], landmarks[keep]
            size = (boxes[:, 2:4] - boxes[:, 0:2] + 1)[:, None, :]
            points = torch.stack([landmarks[:, :5], landmarks[:, 5:]], dim=2) * size + boxes[:, None, 0:2] - 1
            boxes = regress_boxes(boxes, offsets)

        results = []
        boxes_np, points_np, owners_np = boxes.numpy(), points.numpy(), owners.numpy()
        for index in range(len(frames)):
            mine = np.flatnonzero(owners_np == index)
            keep = mine[nms_min(boxes_np[mine], ONET_NMS_MIN)] if len(mine) else mine
            results.append((boxes_np[keep].astype(np.float32).reshape(-1, 5),
                            points_np[keep].astype(np.float32).reshape(-1, 5, 2)))
        return results

    def _classify(self, network: nn.Module, images: _FrameCache, boxes: torch.Tensor, owners: torch.Tensor,
                  size: int, forward: Forward | None) -> tuple[torch.Tensor, ...]:
        """Crop every box (zero outside the frame), resize to size x size by averaging, run `network` in batches."""
        crops = _normalise(images.crops(boxes, owners, size))
        outputs = [_call(network, crops[start:start + CROP_BATCH], forward)
                   for start in range(0, len(crops), CROP_BATCH)]
        return tuple(torch.cat(parts) for parts in zip(*outputs))


class _FrameCache:
    """Per frame a uint8 mip pyramid (2 x 2 block averages), built lazily, that the crops are sampled from.

    A box is cropped from the level where one output pixel spans 1-2 level pixels, so roi_align's 2 x 2 bilinear
    samples per output pixel approximate an area resize at a cost independent of the box size. Only the region
    around a group's boxes is converted to float, so no float copy of a whole frame is kept.
    """

    MAX_LEVEL = 5
    MARGIN = 2  # level pixels around the boxes: every bilinear sample has both neighbours inside the region

    def __init__(self, frames: list[np.ndarray]):
        self.frames = frames
        self._uint8: dict[tuple[int, int], torch.Tensor] = {}

    def crops(self, boxes: torch.Tensor, owners: torch.Tensor, size: int) -> torch.Tensor:
        """size x size crops of the boxes [x1, y1, x2, y2] (covering pixels x1-1 .. x2), in box order."""
        out = torch.zeros((len(boxes), 3, size, size))
        # pixel-edge coordinates: a box covers [x1 - 1, x2] (the original's 1-based inclusive pixels)
        rois = torch.stack([boxes[:, 0] - 1, boxes[:, 1] - 1, boxes[:, 2], boxes[:, 3]], dim=1)
        sides = torch.maximum(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1]).clamp(min=1)
        levels = torch.log2(sides / size).floor().clamp(0, self.MAX_LEVEL).long()
        for frame, level in torch.unique(torch.stack([owners, levels], dim=1), dim=0).tolist():
            mine = ((owners == frame) & (levels == level)).nonzero().squeeze(1)
            pixels = self._pixels(frame, level)
            local = rois[mine] * 0.5 ** level
            height, width = pixels.shape[:2]
            x0 = min(max(int(local[:, 0].min()) - self.MARGIN, 0), width)
            y0 = min(max(int(local[:, 1].min()) - self.MARGIN, 0), height)
            x1 = max(min(int(local[:, 2].max()) + self.MARGIN + 1, width), x0)
            y1 = max(min(int(local[:, 3].max()) + self.MARGIN + 1, height), y0)
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue  # wholly outside the frame: zeros, as the original pads
            region = pixels[y0:y1, x0:x1].permute(2, 0, 1)[None].float()
            shift = torch.tensor([x0, y0, x0, y0], dtype=local.dtype)
            out[mine] = roi_align(region, [local - shift], output_size=size, spatial_scale=1.0, sampling_ratio=-1,
                                  aligned=True)
        return out

    def _pixels(self, frame: int, level: int) -> torch.Tensor:
        """H/2^level x W/2^level x 3 uint8: the frame zero-padded to a multiple of 2^MAX_LEVEL, then `level` times
        averaged over 2 x 2 blocks, so every level is an exact area average of the zero-padded frame (zeros being
        what the original puts outside the frame)."""
        key = (frame, level)
        if key not in self._uint8:
            if level == 0:
                image = self.frames[frame]
                block = 1 << self.MAX_LEVEL
                height, width = image.shape[:2]
                padded = np.zeros((-(-height // block) * block, -(-width // block) * block, 3), np.uint8)
                padded[:height, :width] = image
                self._uint8[key] = torch.from_numpy(padded)
            else:
                larger = self._pixels(frame, level - 1)
                blocks = larger.view(larger.shape[0] // 2, 2, larger.shape[1] // 2, 2, 3)
                total = blocks[:, 0, :, 0].to(torch.int16)
                for row, col in ((0, 1), (1, 0), (1, 1)):
                    total += blocks[:, row, :, col]  # in int16: four uint8 values overflow uint8
                self._uint8[key] = ((total + 2) >> 2).to(torch.uint8)
        return self._uint8[key]


def _call(module: nn.Module, batch: torch.Tensor, forward: Forward | None) -> tuple[torch.Tensor, ...]:
    if forward is not None:
        return tuple(forward(module, batch))
    device = next(module.parameters()).device
    return tuple(output.float().cpu() for output in module(batch.to(device)))


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def _no_points() -> np.ndarray:
    return np.zeros((0, 5, 2), np.float32)

