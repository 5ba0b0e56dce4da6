"""The teams' own preprocessing and per-video rules, as an oracle for the presets: each function redoes, step by
step, what one team's published inference code did to a frame and a detector box, calling the library that team
called (OpenCV, albumentations, torch), so a test compares the kit's inputs with theirs on real frames.

Sources (read, not copied): selimsef/dfdc_deepfake_challenge `kernel_utils.py`; NTech-Lab/deepfake-detection-
challenge `predict.py`; polimi-ispl/icpr2020dfdc `blazeface/face_extract.py` and `isplutils/utils.py`;
jphdotam/DFDC `cnn3d/export/video_utils.py`; cuihaoleo/kaggle-dfdc as ../shared/reference/ANCHOR_CHECKPOINTS.md
section 4 states it, and its `model_def/wsdan.py` (`TeamWSDAN`: the WS-DAN models themselves, on the libraries
they ran). albumentations 2.0.8 stands in for the teams' 0.4.x: both give equal pixels for these transforms
(docs/bring-your-own-model.md says how that was checked).

`python -m tests.team_reference [--ensemble PATH]` prints, per source, how far the kit's input (what
`python -m zootools show-input` writes) is from the team's on the real faces below.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from zootools.presets import PRESETS
from zootools.sources import shared_dir

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations 2 asks PyPI for news at import otherwise


@dataclass(frozen=True)
class Face:
    """A face box on frame 30 of a shared video (BlazeFace's box there, or a box moved to test an edge case)."""

    video: str
    box: tuple[float, float, float, float]
    what: str


# Real faces (the kit's BlazeFace boxes on frame 30), then boxes placed to reach each edge of a 1920 x 1080 frame,
# one far smaller and one far larger than the models' inputs, and one of odd, fractional size.
WIDE = "dfdc_sample/dfdc_train_part_10/widuwuoiur.mp4"
FACES = (
    Face("dfdc_sample/dfdc_train_part_0/brtujopkby.mp4", (619.10, 649.43, 742.84, 773.17), "real, portrait 1080p"),
    Face(WIDE, (548.43, 190.91, 734.26, 376.74), "real, 1080p"),
    Face("dfdc_sample/dfdc_train_part_10/yhffcuhhjy.mp4", (348.89, 336.17, 463.03, 450.30), "real, portrait 720p"),
    Face("ff_sample/manipulated_sequences/Deepfakes/c23/videos/519_515.mp4", (377.06, 101.51, 459.56, 184.01),
         "real, 480p, small"),
    Face("ff_sample/manipulated_sequences/Face2Face/c23/videos/750_743.mp4", (725.34, 198.25, 1011.22, 484.13),
         "real, 1080p, large"),
    Face(WIDE, (3.7, 400.2, 190.1, 586.6), "clamped left"),
    Face(WIDE, (900.3, 2.6, 1086.9, 189.1), "clamped top"),
    Face(WIDE, (1730.4, 500.5, 1917.2, 687.3), "clamped right"),
    Face(WIDE, (800.8, 890.1, 987.5, 1078.4), "clamped bottom"),
    Face(WIDE, (0.0, 0.0, 150.5, 171.25), "clamped top-left"),
    Face(WIDE, (960.2, 540.7, 1001.9, 591.3), "tiny: enlarged"),
    Face(WIDE, (300.6, 100.3, 1001.8, 980.9), "huge: shrunk"),
    Face(WIDE, (611.5, 333.25, 742.75, 481.5), "odd size"),
)
REAL = FACES[:5]


@lru_cache(maxsize=None)
def frame(video: str, index: int = 30) -> np.ndarray:
    """Frame `index` of a shared video, RGB (read with OpenCV, as every team read theirs)."""
    capture = cv2.VideoCapture(str(shared_dir() / "data" / video))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = capture.read()
    capture.release()
    if not ok:
        raise FileNotFoundError(f"cannot read frame {index} of {video} under {shared_dir() / 'data'}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def normalise(pixels: np.ndarray, mean, std) -> np.ndarray:
    """torchvision's Normalize on x / 255, channels first (float32), as the teams normalised."""
    x = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (mean, std))
    return ((x - mean) / std).numpy()


# --- the 1st place: MTCNN box, h // 3 and w // 3 around it, isotropic resize to 380 (sides truncated), centred pad


def selimsef(image: np.ndarray, box, size: int = 380) -> np.ndarray:
    """The model's 380 x 380 RGB input for one face, as kernel_utils.py made it."""
    # their MTCNN ran on the half-size frame and its boxes were doubled, then cut to whole pixels
    xmin, ymin, xmax, ymax = (int(value / 2 * 2) for value in box)
    pad_h, pad_w = (ymax - ymin) // 3, (xmax - xmin) // 3
    face = image[max(ymin - pad_h, 0):ymax + pad_h, max(xmin - pad_w, 0):xmax + pad_w]
    height, width = face.shape[:2]
    if max(height, width) != size:
        if width > height:
            scale = size / width
            new_width, new_height = size, height * scale
        else:
            scale = size / height
            new_width, new_height = width * scale, size
        face = cv2.resize(face, (int(new_width), int(new_height)),
                          interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    face = face[:size, :size]
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - face.shape[0]) // 2, (size - face.shape[1]) // 2
    canvas[top:top + face.shape[0], left:left + face.shape[1]] = face
    return canvas


# --- NTech (3rd): DSFD box x1.5 about its centre, albumentations SmallestMaxSize + (PadIfNeeded +) CenterCrop ---


def ntech_crop(image: np.ndarray, box) -> np.ndarray:
    """The face crop of predict.py's extract_face: the box scaled x1.5 about its centre, corners cut to int."""
    height, width = image.shape[:2]
    xmin, ymin, xmax, ymax = (float(v) for v in box)
    box_w, box_h = xmax - xmin, ymax - ymin
    centre_x, centre_y = xmin + box_w / 2, ymin + box_h / 2
    box_w, box_h = box_w * 1.5, box_h * 1.5
    xmin, ymin = centre_x - box_w / 2, centre_y - box_h / 2
    xmax, ymax = xmin + box_w, ymin + box_h
    return image[max(int(ymin), 0):min(int(ymax), height), max(int(xmin), 0):min(int(xmax), width)]


def ntech(image: np.ndarray, box, model: int = 2) -> np.ndarray:
    """The 224 x 192 RGB input of NTech's model 2 (and the sequence model) or model 1."""
    import albumentations as A

    if model == 2:
        transform = A.Compose([A.SmallestMaxSize(224), A.CenterCrop(224, 192)])
    else:  # PadIfNeeded's default border: OpenCV's BORDER_REFLECT_101
        transform = A.Compose([A.SmallestMaxSize(192), A.PadIfNeeded(224, 192, border_mode=cv2.BORDER_REFLECT_101),
                               A.CenterCrop(224, 192)])
    return transform(image=np.ascontiguousarray(ntech_crop(image, box)))["image"]


# --- polimi: BlazeFace box + round(0.2 h) (twice above), PadIfNeeded(224) + Resize(224) ------------------------


def polimi_corners(box, height: int, width: int) -> tuple[int, int, int, int]:
    """face_extract.py's margin in torch float32: round(0.2 h) twice above, once on the other sides, clamped, cut
    to int: (left, top, right, bottom)."""
    x0, y0, x1, y1 = box[:4]
    detection = torch.tensor([[y0, x0, y1, x1]], dtype=torch.float32)  # BlazeFace's order: ymin, xmin, ymax, xmax
    offset = torch.round(0.2 * (detection[:, 2] - detection[:, 0]))
    detection[:, 0] = torch.clamp(detection[:, 0] - offset * 2, min=0)
    detection[:, 1] = torch.clamp(detection[:, 1] - offset, min=0)
    detection[:, 2] = torch.clamp(detection[:, 2] + offset, max=height)
    detection[:, 3] = torch.clamp(detection[:, 3] + offset, max=width)
    ymin, xmin, ymax, xmax = (int(v) for v in detection[0].numpy().astype(int))
    return xmin, ymin, xmax, ymax


def polimi(image: np.ndarray, box, size: int = 224) -> np.ndarray:
    """The 224 x 224 RGB input of polimi's networks ("scale" policy), from face_extract.py's margin and crop."""
    import albumentations as A

    left, top, right, bottom = polimi_corners(box, *image.shape[:2])
    face = np.ascontiguousarray(image[top:bottom, left:right])
    transform = A.Compose([A.PadIfNeeded(size, size, border_mode=cv2.BORDER_CONSTANT, fill=0), A.Resize(size, size)])
    return transform(image=face)["image"]


# --- The Medics (5th): the track box padded to a square at the bottom/right in float64, resized, centre crop ----


def medics_3d(image: np.ndarray, box, square: int = 256, size: int = 224) -> np.ndarray:
    """One frame of a 3D model's clip: resize_and_square_face (float64 zeros, OpenCV's default linear, astype
    uint8) to `square`, then the centre crop to `size` their datasets applied."""
    x0, y0, x1, y1 = (int(v) for v in box)
    face = image[max(y0, 0):y1, max(x0, 0):x1]
    side = max(face.shape[:2])
    padded = np.zeros((side, side, 3))
    padded[:face.shape[0], :face.shape[1]] = face
    squared = cv2.resize(padded, (square, square)).astype(np.uint8) if side != square else padded.astype(np.uint8)
    top = left = (square - size) // 2
    return squared[top:top + size, left:left + size]


def medics_2d(image: np.ndarray, box, size: int = 256) -> np.ndarray:
    """The 2D model's input: the box (margin 0) stretched to 256 x 256, bicubic."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return cv2.resize(image[max(y0, 0):y1, max(x0, 0):x1], (size, size), interpolation=cv2.INTER_CUBIC)


# --- \WM/: the aligned 320 x 320 face, [0, 1], F.interpolate to 299 (bilinear), (x - 0.5) / 0.5 -----------------


def wm_xception(face320: np.ndarray) -> np.ndarray:
    """\\WM/'s Xception input, normalised, channels first, from their 320 x 320 aligned RGB face."""
    x = torch.from_numpy(face320).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return ((x[0] - 0.5) / 0.5).numpy()


def wm_square(face: Face) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 320 x 320 region of the frame around the face (standing in for the aligned face: the alignment needs
    RetinaFace's landmarks), and the box whose preset margin (0.5 of the box per side) cuts exactly that region."""
    x0, y0, x1, y1 = face.box
    image = frame(face.video)
    height, width = image.shape[:2]
    centre_x = min(max(int((x0 + x1) / 2), 160), width - 160)  # moved inside the frame where the face is near an edge
    centre_y = min(max(int((y0 + y1) / 2), 160), height - 160)
    return (image[centre_y - 160:centre_y + 160, centre_x - 160:centre_x + 160],
            (centre_x - 80, centre_y - 80, centre_x + 80, centre_y + 80))


# --- \WM/'s WS-DAN models (model_def/wsdan.py), built on the libraries they ran: Cadene's Xception
# (pretrainedmodels 0.7.4, the layout of their xception_wsdan) and efficientnet_pytorch 0.6.3's B3 --------------


class TeamWSDAN(torch.nn.Module):
    """Their WSDAN at inference (M attention maps, GAP pooling): keys `features.*` (Xception) or `EFN.*` (B3, its
    unused `_fc` included), `attentions.conv`, `attentions.bn` (eps 1e-3), `fc` (no bias). forward returns their
    (logits, feature matrix, mean attention map)."""

    def __init__(self, net: str, M: int = 8, num_classes: int = 2):  # noqa: N803 (their name)
        super().__init__()
        if net == "xception":
            self.features = _team_xception()
            self.num_features = 2048
        else:
            from efficientnet_pytorch import EfficientNet

            self.EFN = EfficientNet.from_name("efficientnet-b3")
            self.EFN.set_swish()
            self.features = self.EFN.extract_features  # a bound method: no `features.*` keys
            self.num_features = 1536
        self.attentions = torch.nn.Module()
        self.attentions.conv = torch.nn.Conv2d(self.num_features, M, 1, bias=False)
        self.attentions.bn = torch.nn.BatchNorm2d(M, eps=0.001)
        self.fc = torch.nn.Linear(M * self.num_features, num_classes, bias=False)

    def forward(self, x):
        feature_maps = self.features(x)
        attention_maps = F.relu(self.attentions.bn(self.attentions.conv(feature_maps)), inplace=True)
        _, _, height, width = feature_maps.size()
        feature_matrix = torch.einsum("imjk,injk->imn", (attention_maps, feature_maps)) / float(height * width)
        feature_matrix = feature_matrix.view(x.size(0), -1)
        feature_matrix = torch.sign(feature_matrix) * torch.sqrt(torch.abs(feature_matrix) + 1e-12)
        feature_matrix = F.normalize(feature_matrix, dim=-1)
        p = self.fc(feature_matrix * 100.0)
        return p, feature_matrix, torch.mean(attention_maps, dim=1, keepdim=True)


def _team_xception() -> torch.nn.Module:
    """Their xception_wsdan: Cadene's Xception without its head, ending with the ReLU Cadene's logits() applied."""
    import pretrainedmodels

    class XceptionFeatures(type(pretrainedmodels.xception(num_classes=1000, pretrained=None))):
        def __init__(self):
            super().__init__(num_classes=1000)
            del self.fc  # Cadene's head (pretrainedmodels.xception() renames it last_linear)

        def forward(self, x):
            return F.relu(super().features(x))

    return XceptionFeatures()


# --- the per-video rules, written out as loops over the stated formulas ------------------------------------------


def confident(scores: list[float]) -> float:
    """The 1st place's confident_strategy (t = 0.8)."""
    n = len(scores)
    fakes = [s for s in scores if s > 0.8]
    reals = [s for s in scores if s < 0.2]
    if len(fakes) > n // 2.5 and len(fakes) > 11:
        return sum(fakes) / len(fakes)
    if len(reals) > 0.9 * n:
        return sum(reals) / len(reals)
    return sum(scores) / n


def sharpen(scores: list[float]) -> float:
    """NTech's end of predict.py: each score pushed from 0.5 by |d|^0.65 and clipped, weighted by |d| + 1e-4 of
    the original d = p - 0.5."""
    total = weights = 0.0
    for p in scores:
        d = p - 0.5
        new = p if d == 0 else min(max(0.5 + math.copysign(abs(d) ** 0.65, d), 0.01), 0.99)
        weight = abs(d) + 1e-4
        total += new * weight
        weights += weight
    return total / weights


def logit_mean(scores: list[float]) -> float:
    """polimi's video score: the sigmoid of the mean logit of the frames."""
    logits = [math.log(p / (1 - p)) for p in scores]
    return 1 / (1 + math.exp(-sum(logits) / len(logits)))


# --- the kit's side, and the comparison --------------------------------------------------------------------------


CASES = {  # label -> (source, arch, overrides of the preset's input, the team's function)
    "selimsef": ("selimsef", "timm/tf_efficientnet_b7", {}, selimsef),
    "ntech model 2": ("ntech", "timm/tf_efficientnet_b7", {}, ntech),
    "ntech model 1": ("ntech", "timm/tf_efficientnet_b7", {"resize_to": 192, "pad": "reflect"},
                      lambda image, box: ntech(image, box, model=1)),
    "polimi": ("polimi", "timm/tf_efficientnet_b4", {}, polimi),
    "medics mc3 224": ("medics", "mc3_18", {}, medics_3d),
    "medics resnet34": ("medics", "resnet34_3d", {}, medics_3d),
    "medics r2plus1d 112": ("medics", "r2plus1d_18", {}, lambda image, box: medics_3d(image, box, 128, 112)),
    "medics 2d": ("medics", "timm/legacy_seresnext50_32x4d", {}, medics_2d),
    "wm": ("wm", "timm/legacy_xception", {}, None),
}


def preset_manifest(folder: Path, overrides: dict[str, dict] | None = None) -> Path:
    """A manifest whose models are the presets of CASES, as `python -m zootools import` writes their entries
    (parsing it opens no weight file)."""
    models = []
    for label, (source, arch, extra, _) in CASES.items():
        entry = PRESETS[source]["archs"][arch]
        spec_input = {**entry["input"], **extra, **(overrides or {}).get(label, {})}
        if spec_input.get("align"):  # a BlazeFace manifest: the import stretches the box instead (the 320 square)
            spec_input.update(PRESETS[source]["unaligned"])
        models.append({"name": label.replace(" ", "_"), "arch": arch, "checkpoint": "none.safetensors",
                       "sha256": "0" * 64, **{k: v for k, v in entry.items() if k != "input"},
                       "positive_class": "FAKE", "input": spec_input})
    path = folder / "ensemble.json"
    path.write_text(json.dumps({"format": 2, "models": models, "detector": {
        "arch": "blazeface_back", "checkpoint": "none.safetensors", "sha256": "0" * 64, "min_score": 0.65}}))
    return path


def kit_input(manifest: Path, label: str, image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """What the kit feeds model `label`: (normalised, channels first; the uint8 RGB picture), one frame of a clip."""
    from zootools.show_input import model_input

    normalised, pixels = model_input(image, box, manifest, label.replace(" ", "_"))
    return (normalised[:, 0] if normalised.ndim == 4 else normalised), pixels


def team_input(label: str, face: Face) -> tuple[np.ndarray, np.ndarray, tuple]:
    """What the team fed its model for this face (normalised, channels first; the uint8 picture or None), and the
    box to hand the kit."""
    source, arch, extra, function = CASES[label]
    entry = PRESETS[source]["archs"][arch]["input"]
    if function is None:  # \WM/: from the 320 x 320 square
        square, box = wm_square(face)
        return wm_xception(np.ascontiguousarray(square)), None, box
    box = np.asarray(face.box, np.float32)  # as a detector gives it (and show-input reads --box)
    pixels = function(frame(face.video), box)
    return normalise(pixels, entry["mean"], entry["std"]), pixels, box


def differences(manifest: Path, label: str, faces=FACES) -> list[tuple[str, float, bool, float]]:
    """Per face: (what, max |kit - team| in normalised units, whether the pictures are equal, max |team|)."""
    rows = []
    for face in faces:
        expected, picture, box = team_input(label, face)
        normalised, pixels = kit_input(manifest, label, frame(face.video), box)
        same_picture = picture is not None and picture.shape == pixels.shape and np.array_equal(picture, pixels)
        difference = float(np.abs(normalised - expected).max()) if normalised.shape == expected.shape else math.inf
        rows.append((face.what, difference, same_picture, float(np.abs(expected).max())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.team_reference", description=__doc__.split("\n\n")[0])
    parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        manifest = preset_manifest(Path(folder))
        for label in CASES:
            faces = REAL if label == "wm" else FACES
            rows = differences(manifest, label, faces)
            worst = max(rows, key=lambda row: row[1])
            equal = sum(row[2] for row in rows)
            print(f"{label:22s} max |kit - team| {worst[1]:.4f} ({worst[0]}), pictures equal on {equal} of "
                  f"{len(rows)} faces")


if __name__ == "__main__":
    main()
