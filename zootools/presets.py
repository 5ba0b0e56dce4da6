"""What `python -m zootools import SOURCE` writes into a manifest entry, one table per source (data only).

Each table says how that team's models were built and fed (from their published training and inference code,
summarised in ../shared/reference/ANCHOR_CHECKPOINTS.md), as the manifest's own fields:

- `archs`: every architecture a checkpoint of that source may be imported as, each with its entry fields
  (`arch_kwargs`, `kind`, `input`, `positive_class`, `aggregation`, `video_score`, `tta`); `input` holds
  `weights.registry.InputSpec` fields.
- `default_arch`: the architecture used without `--arch` (None: `--arch` is required); \\WM/'s WS-DAN checkpoints
  are recognised from their keys instead (`zootools.importing.keymaps.recognised_arch`).
- `detector` (optional): the detector settings that team ran (`python -m zootools build --detector-preset SOURCE`).
- `unaligned` (optional): the input fields that replace an aligning preset's where the manifest's detector gives no
  landmarks.
- `fixed_positive_class`: True where the source fixes which class a 2-output head's column 1 is (\\WM/); False
  where a 2-output head needs `--positive-class` (The Medics: their class order came from `os.listdir`).

The importer's flags (`--size`, `--margin`, `--resize`, ...) override these per import. The `plain` source has no
table: its entry is the architecture's registered defaults.
"""
from __future__ import annotations

from weights.archs.wsdan import WM_FACES
from weights.registry import IMAGENET, SYMMETRIC
from zootools.sources import RETINAFACE_WHEEL_MEAN

RAW_PIXELS = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # 0-255, unnormalised

EFFICIENTNETS = tuple(f"timm/tf_efficientnet_b{n}" for n in range(8))


def _each(archs: tuple[str, ...], entry: dict) -> dict[str, dict]:
    return {arch: entry for arch in archs}


# --- selimsef/dfdc_deepfake_challenge (1st place, private LB 0.42798) ------------------------------------------
# Training: `DeepFakeClassifier` = a whole timm `tf_efficientnet_b7_ns` (its unused 1000-class head kept) + global
# average pool + dropout + `fc` (1 logit, sigmoid = P(FAKE)); saved from DistributedDataParallel as
# {"epoch", "state_dict", "bce_best": numpy float64}, keys `module.encoder.*` / `module.fc.*`, no file extension.
# Inference: MTCNN (thresholds 0.7, 0.8, 0.8) at half resolution; the box cut to int, widened by h // 3 above and
# below and w // 3 left and right (1/3 of the box per side); isotropic resize of the long side to 380 with the short
# side truncated (`int(w * scale)`), INTER_AREA shrinking, INTER_CUBIC enlarging; zero pad centred; ImageNet
# mean/std; 32 frames, every face of every frame pooled, "confident" rule.
# B2-B6 encoders exist too (and serve as stand-ins: --arch timm/tf_efficientnet_b0 .. b6).
SELIMSEF = {
    "default_arch": "timm/tf_efficientnet_b7",
    "fixed_positive_class": True,
    "detector": {"arch": "mtcnn", "min_score": 0.8, "thresholds": [0.7, 0.8, 0.8], "downscale": 0.5},
    "archs": _each(EFFICIENTNETS, {
        "arch_kwargs": {},
        "kind": "frame",
        "input": {"size": 380, **IMAGENET, "margin": 1 / 3, "margin_cut": "floor", "resize": "letterbox",
                  "rounding": "truncate", "interpolation": ["area", "cubic"]},
        "positive_class": "FAKE",
        "aggregation": "confident",
        "video_score": "pool",
        "tta": [],
    }),
}

# --- NTech-Lab/deepfake-detection-challenge (3rd place) --------------------------------------------------------
# Training: EfficientNet-B7 built with lukemelas' efficientnet_pytorch 0.6.3 (pinned), 1 logit; saved as plain fp16
# state dicts (`_conv_stem`, `_blocks.N.*`, `_fc`). The sequence model (`efficientnet_temporal`, found by its 5-D
# `_expand_conv.conv.weight`) ran 7 consecutive frames sampled at 15 fps (every 2nd frame of DFDC's 30 fps) through
# the B7 with Conv3d expansions, one logit per frame, its crops cut with the box of the middle frame (`box`'s
# default, `centre`). Input: DSFD boxes scaled x1.5 about their centre in float (0.25 of the box per side), corners
# cut to int after; crops 224 high x 192 wide, albumentations 0.4.3 (INTER_LINEAR both ways, new sides rounded);
# model 2 and the sequence model: SmallestMaxSize(224) + CenterCrop(224, 192) (this preset); model 1:
# SmallestMaxSize(192) + PadIfNeeded(224, 192) with its default reflecting border + CenterCrop. ImageNet mean/std.
# Frames (predict.py): the video sampled every round(int(fps) / 15)-th frame; the 2D models on every 2nd sampled
# frame of a track, taking turns two by two (face i to model 1 where i % 4 < 2: import model 1 with
# `--resize-to 192 --pad reflect --share 4,0,2`; this preset is model 2's, `[4, 2, 2]`); sequences of 7 consecutive
# sampled frames every 14; faces and sequences with an even index flipped left-right. Per video: every score
# sharpened (|p - 0.5|^0.65), weighted by |p - 0.5| + 1e-4 of the original score, pooled over all tracks and all
# three models (a blend pool: docs/bring-your-own-model.md).
_NTECH = {
    "arch_kwargs": {},
    "kind": "frame",
    "input": {"size": [224, 192], **IMAGENET, "margin": 0.25, "margin_cut": "exact",
              "resize": "short_side_center_crop", "resize_to": 224, "interpolation": ["linear", "linear"],
              "fps": 15.0, "every": 2, "share": [4, 2, 2], "flip": "alternate"},
    "positive_class": "FAKE",
    "aggregation": "sharpen",
    "video_score": "pool",
    "tta": [],
}
NTECH = {
    "default_arch": "timm/tf_efficientnet_b7",
    "fixed_positive_class": True,
    "archs": {**_each(EFFICIENTNETS, _NTECH),
              "efficientnet_temporal": {**_NTECH, "kind": "sequence",
                                        "input": {**_NTECH["input"], "frames": 7, "every": 14,
                                                  "share": [1, 0, 1]}}},
}

# --- jphdotam/DFDC (5th place, "The Medics") -------------------------------------------------------------------
# 3D models, saved as plain state dicts (`.model`): I3D (piergiaj), 3D ResNet-34 (kenshohara, shortcut A),
# torchvision mc3_18 and r2plus1d_18, all with 2 outputs (softmax, cross-entropy). Class order from `os.listdir` of
# FAKE and REAL folders: their comments say column 0 = FAKE, column 1 = REAL (--positive-class REAL), but the order
# depends on the file system, so the importer requires --positive-class for every 2-output model.
# Input: the union of the track's MTCNN boxes (margin 0), zero-padded at the bottom/right to a square in float64,
# resized to 256 (OpenCV linear) and cast back with astype(uint8) (truncation), centre crop 224 (I3D, ResNet-34, mc3
# at 224); mc3 and r(2+1)d at 112: resize to 128, centre crop 112 (--size 112 --resize-to 128). Normalisation: I3D
# x / 255 * 2 - 1; ResNet-34 raw 0-255; mc3, r(2+1)d ImageNet. Clips of 64 consecutive frames (I3D) or 32 (the
# others). Horizontal-flip TTA, mean across faces.
# 2D model: Cadene `se_resnext50_32x4d` as `backbone.*` + `fc` [1, 2048] (sigmoid), crops stretched to 256 x 256
# (cubic), ImageNet; per clip the median of its frames' scores. Its crops came from the 3D pipeline's track-union
# boxes; a frame model here crops each frame's own box (margin 0).
_MEDICS_3D = {"kind": "clip", "positive_class": None, "aggregation": "mean", "video_score": "mean",
              "tta": ["hflip"]}
_MEDICS_3D_INPUT = {"size": 224, "margin": 0.0, "box": "track_union", "resize": "pad_bottom_right",
                    "resize_to": 256, "interpolation": ["linear", "linear"], "precision": "float64", "stride": 1}
MEDICS = {
    "default_arch": None,
    "fixed_positive_class": False,
    "archs": {
        "i3d": {**_MEDICS_3D, "arch_kwargs": {}, "input": {**_MEDICS_3D_INPUT, **SYMMETRIC, "frames": 64}},
        "resnet34_3d": {**_MEDICS_3D, "arch_kwargs": {"shortcut_type": "A"},
                        "input": {**_MEDICS_3D_INPUT, **RAW_PIXELS, "frames": 32}},
        "mc3_18": {**_MEDICS_3D, "arch_kwargs": {}, "input": {**_MEDICS_3D_INPUT, **IMAGENET, "frames": 32}},
        "r2plus1d_18": {**_MEDICS_3D, "arch_kwargs": {},
                        "input": {**_MEDICS_3D_INPUT, **IMAGENET, "size": 112, "resize_to": 128, "frames": 32}},
        "timm/legacy_seresnext50_32x4d": {
            "arch_kwargs": {},
            "kind": "frame",
            "input": {"size": 256, **IMAGENET, "margin": 0.0, "resize": "stretch",
                      "interpolation": ["cubic", "cubic"]},
            "positive_class": "FAKE",
            "aggregation": "median",
            "video_score": "mean",
            "tta": ["hflip"],
        },
    },
}

# --- cuihaoleo/kaggle-dfdc (team \WM/) -------------------------------------------------------------------------
# Training: Cadene-style Xception saved as {"epoch", "arch", "acc1", "state_dict"} (no `module.`), head
# `last_linear` [2, 2048], softmax with column 1 = FAKE. Faces: RetinaFace (confidence 0.8), the 5 landmarks cut to
# int and aligned onto a 320 x 320 template by a similarity transform (`align: wm`), bilinear to 299, mean/std 0.5;
# every 10th frame from frame 9 until 25 faces; mean over faces. A detector with landmarks is needed
# (`python -m zootools build --detector-preset wm`).
# The team's two WS-DAN models (0.7 and 0.1 of their blend, `model_def/wsdan.py`, M = 8 attention maps, 2 outputs,
# softmax column 1 = FAKE) were saved as {"logs": numpy arrays, "state_dict", "feature_center"}: the Xception one
# (`features.*`) read the aligned 320 face normalised with their dataset's mean/std; the efficientnet_pytorch 0.6.3
# B3 one (`EFN.*`) read that normalised 320 tensor resized to 300 (F.interpolate, bilinear; here OpenCV's bilinear
# on the uint8 face, then normalised: the same filter, rounded to 8 bits in between).
_WM_FRAME = {"kind": "frame", "positive_class": "FAKE", "aggregation": "mean", "video_score": "pool", "tta": []}
_WM_CROP = {"align": "wm", "resize": "stretch", "interpolation": ["linear", "linear"], "every": 10, "start": 9,
            "limit": 25}
WM = {
    "default_arch": "timm/legacy_xception",
    "fixed_positive_class": True,
    # Their RetinaFace ResNet-50 (not redistributable: bring it with `import-detector`) ran at full resolution with
    # confidence 0.8 and kept the largest face; the embedded MobileNet-0.25 with its own mean stands in, keeping the
    # best-scoring face.
    "detector": {"arch": "retinaface_mobilenet", "min_score": 0.8, "downscale": 1.0, "bgr_mean": RETINAFACE_WHEEL_MEAN,
                 "max_faces_per_frame": 1},
    # Into a manifest whose detector gives no landmarks (BlazeFace, MTCNN): the box cut with 0.5 of it on each side
    # (about what a face fills of the 320 template) and stretched, instead of aligned.
    "unaligned": {"align": None, "margin": 0.5},
    "archs": {
        "timm/legacy_xception": {**_WM_FRAME, "arch_kwargs": {}, "input": {"size": 299, **SYMMETRIC, **_WM_CROP}},
        "wsdan_xception": {**_WM_FRAME, "arch_kwargs": {}, "input": {"size": 320, **WM_FACES, **_WM_CROP}},
        "wsdan_efficientnet_b3": {**_WM_FRAME, "arch_kwargs": {}, "input": {"size": 300, **WM_FACES, **_WM_CROP}},
    },
}

# --- polimi-ispl/icpr2020dfdc (popular public weights) ---------------------------------------------------------
# Training: `EfficientNetB4` = lukemelas' EfficientNet-B4 under `efficientnet.` (its `_fc` deleted) + `classifier`
# [1, 1792], 1 logit, sigmoid; released as plain state dicts. efficientnet_pytorch is unpinned (>= 0.7 bakes the
# padding for B4's native 380 px; the faces were 224). The attention (`efficientnet.attconv.*`:
# `efficientnet_autoatt`) and siamese-tuned (`feat_ext.*`, BatchNorm1d head: `efficientnet_st`,
# `efficientnet_autoatt_st`) variants, found by those keys, were fed the same. Their Xception (Cadene layout under
# `xception.`, `last_linear` [1, 2048]) imports with --arch timm/legacy_xception. Input: BlazeFace boxes (float32)
# with a margin of round(0.2 x the box's height), twice above and once on the other three sides, clamped, corners
# cut to int; "scale" policy: albumentations PadIfNeeded(224, 224) (zeros, centred, only a short side) then
# Resize(224, 224) (a stretch, INTER_LINEAR); ImageNet mean/std (all their networks). Per video: the mean of the
# logits over frames, then sigmoid.
_POLIMI = {
    "arch_kwargs": {},
    "kind": "frame",
    "input": {"size": 224, **IMAGENET, "margin": 0.2, "margin_sides": [1, 2, 1, 1], "margin_of": "height",
              "margin_cut": "round", "resize": "pad_stretch", "interpolation": ["linear", "linear"]},
    "positive_class": "FAKE",
    "aggregation": "logit_mean",
    "video_score": "pool",
    "tta": [],
}
POLIMI = {
    "default_arch": "timm/tf_efficientnet_b4",
    "fixed_positive_class": True,
    "archs": {**_each(EFFICIENTNETS, _POLIMI), "timm/legacy_xception": _POLIMI,
              **_each(("efficientnet_autoatt", "efficientnet_st", "efficientnet_autoatt_st"), _POLIMI)},
}

PRESETS = {"selimsef": SELIMSEF, "ntech": NTECH, "medics": MEDICS, "wm": WM, "polimi": POLIMI}
SOURCES = (*PRESETS, "plain")
DETECTOR_PRESETS = tuple(source for source, table in PRESETS.items() if "detector" in table)
