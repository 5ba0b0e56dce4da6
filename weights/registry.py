"""Registry of named architectures (timm-style): one factory over small architecture modules, each registered
with its default input, as timm's `default_cfgs` are.

Besides the registered names, `create_model("timm/<name>")` builds any timm architecture, untrained, with timm's
own parameter names (so checkpoints trained with timm load strictly), and takes its default input from timm's
pretrained config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import timm
from torch import nn

TIMM_PREFIX = "timm/"
MODEL_KINDS = ("frame", "clip", "sequence")
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
KINETICS = {"mean": (0.43216, 0.394666, 0.37645), "std": (0.22803, 0.22145, 0.216989)}  # torchvision's video models
SYMMETRIC = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # pixels scaled to [-1, 1]


RESIZES = ("letterbox", "pad_bottom_right", "stretch", "pad_stretch", "short_side_center_crop", "resize_center_crop")
INTERPOLATIONS = ("nearest", "area", "linear", "cubic")
BOXES = ("centre", "track_union")
MARGIN_BASES = ("side", "height", "width")
MARGIN_CUTS = ("floor", "exact", "round")
ROUNDINGS = ("round", "truncate")
PADS = ("zero", "reflect")
PRECISIONS = ("uint8", "float64")
FLIPS = ("none", "alternate")
# Five-point face templates (left eye, right eye, nose, left and right mouth corners, in pixels of a square of the
# given side) that `align` maps landmarks onto by a similarity transform.
ALIGNMENTS = {
    "wm": (320, ((122.5, 141.25), (197.5, 141.25), (160.0, 178.75), (137.5, 225.25), (182.5, 225.25))),  # \WM/
}


@dataclass(frozen=True)
class InputSpec:
    r"""How a model wants its input: face crops of `size` (a side, or [height, width]), normalised per channel from
    RGB in [0, 1], cut and resized the way the model was trained.

    Clip (3D CNN, N x 3 x T x H x W) and sequence (temporal 2D, N x T x 3 x H x W) models also say how many
    frames T a clip holds, `stride` video frames apart, and how many clips per video to score.

    Preprocessing (the defaults are the kernel's own: the detector's margin, letterbox, area/linear):
    - `margin`: the model's own margin, a fraction of the box's size; None takes the detector's `margin` (half of
      it on each side). `margin_sides` (left, top, right, bottom) multiplies it per side; `margin_of` says what it
      is a fraction of: `side` (the box's width left and right, its height above and below), `height` or `width`
      (that one on all four sides). `margin_cut` says how the result becomes whole pixels: `floor` (the box's
      corners cut to int first, then the margin floored before its multiple: the 1st place's `h // 3`), `exact`
      (the margins added to the box as they are, the corners cut after: NTech's x1.5 about the centre), `round`
      (the margin rounded half to even before its multiple, the corners cut after: polimi's `round(0.2 h)`, twice
      above).
    - `resize`: `letterbox` (isotropic to fit, centred pad), `pad_bottom_right` (zero pad to a square at the
      bottom and right, then resize), `stretch` (resize, ignoring the aspect), `pad_stretch` (a centred pad of each
      side shorter than `size`, then a stretch: albumentations' PadIfNeeded + Resize), `short_side_center_crop`
      (isotropic so the short side is `resize_to`, centred pad where short, centre crop), `resize_center_crop`
      (resize to `resize_to`, centre crop); `resize_to` also makes `pad_bottom_right` crop to `size` after it.
    - `rounding`: how an isotropic resize cuts the side it scales to whole pixels: `round` (albumentations'
      SmallestMaxSize) or `truncate` (`int()`, the 1st place's isotropically_resize_image); the side that sets the
      scale gets its target exactly either way.
    - `pad`: what a centred pad fills with: `zero`, or `reflect` (OpenCV's BORDER_REFLECT_101, albumentations'
      PadIfNeeded default).
    - `interpolation`: (shrinking, enlarging), each nearest, area, linear or cubic; one name sets both.
    - `precision`: the pixels a resize runs on: `uint8` (OpenCV's fixed point, rounded), or `float64`, cut back to
      uint8 by truncation after (The Medics resized float64 squares and cast them with astype).
    - `box` (clip and sequence models): `centre`, the track's box at the clip's centre frame; `track_union`, the
      union of the track's boxes.
    - `align`: a template of ALIGNMENTS: the face's five landmarks (a detector that gives them: RetinaFace) mapped
      onto it by a similarity transform and warped onto the template's square (bilinear, black border) instead of
      cut with a margin; `resize` (stretch) then takes the square to `size`.

    Timeline (which frames; the defaults follow the run's key frames, or `clips` clips centred on them):
    - `every` k >= 1: the model's own frames, from frame `start` every k-th frame, counted at about `fps` frames a
      second (0: every video frame counts; NTech sampled at 15). A frame model's own frames join the frames faces
      are found on; a clip or sequence model's clips start there, `frames` frames `stride` (sampled) frames apart.
    - `limit`: at most this many inputs per track, the first ones (0: no limit; \WM/: 25 faces).
    - `share` (period, first, count): of each `period` inputs of a track in time, keep `count` from the `first`
      (NTech's two frame models took turns two by two: (4, 0, 2) and (4, 2, 2)).
    - `flip`: `alternate` flips every other input of a track left-right, the first one included (counted before
      `share`), as NTech did.
    """

    size: int | tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    frames: int = 1
    stride: int = 1
    clips: int = 4
    margin: float | None = None
    margin_sides: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    margin_of: str = "side"
    margin_cut: str = "floor"
    resize: str = "letterbox"
    resize_to: int | tuple[int, int] | None = None
    rounding: str = "round"
    pad: str = "zero"
    interpolation: tuple[str, str] = ("area", "linear")
    precision: str = "uint8"
    box: str = "centre"
    align: str | None = None
    fps: float = 0.0
    every: int = 0
    start: int = 0
    limit: int = 0
    share: tuple[int, int, int] = (1, 0, 1)
    flip: str = "none"

    def __post_init__(self):
        if isinstance(self.interpolation, str):  # one name for both directions
            object.__setattr__(self, "interpolation", (self.interpolation, self.interpolation))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    @property
    def resize_shape(self) -> tuple[int, int] | None:
        """(height, width) of `resize_to`, or None."""
        if self.resize_to is None:
            return None
        return (self.resize_to, self.resize_to) if isinstance(self.resize_to, int) else tuple(self.resize_to)

    @property
    def timeline(self) -> tuple[int, int, int, float, int, int]:
        """(frames, stride, clips, fps, every, start): which video frames the model sees (`clips` only counts for
        clips centred on key frames)."""
        return self.frames, self.stride, 0 if self.every else self.clips, self.fps, self.every, self.start

    def problems(self) -> list[str]:
        """What is wrong with this spec, in words (empty when it is valid)."""
        checks = [
            (all(side >= 1 for side in self.shape), f"input size must be positive, not {self.size}"),
            (self.margin is None or self.margin >= 0, f"input margin must be >= 0, not {self.margin}"),
            (len(self.margin_sides) == 4 and all(side >= 0 for side in self.margin_sides),
             f"input margin_sides must be four numbers >= 0 (left, top, right, bottom), not {self.margin_sides}"),
            (self.margin_of in MARGIN_BASES, f"input margin_of must be one of {MARGIN_BASES}, not {self.margin_of!r}"),
            (self.margin_cut in MARGIN_CUTS, f"input margin_cut must be one of {MARGIN_CUTS}, not {self.margin_cut!r}"),
            (self.resize in RESIZES, f"input resize must be one of {RESIZES}, not {self.resize!r}"),
            (self.rounding in ROUNDINGS, f"input rounding must be one of {ROUNDINGS}, not {self.rounding!r}"),
            (self.pad in PADS, f"input pad must be one of {PADS}, not {self.pad!r}"),
            (self.precision in PRECISIONS, f"input precision must be one of {PRECISIONS}, not {self.precision!r}"),
            (self.resize not in ("short_side_center_crop", "resize_center_crop") or self.resize_to is not None,
             f"input resize {self.resize} needs resize_to"),
            (len(self.interpolation) == 2 and set(self.interpolation) <= set(INTERPOLATIONS),
             f"input interpolation must be (shrinking, enlarging) from {INTERPOLATIONS}, not {self.interpolation}"),
            (self.box in BOXES, f"input box must be one of {BOXES}, not {self.box!r}"),
            (self.stride >= 1 and self.clips >= 1, "input stride and clips must be at least 1"),
            (self.align is None or self.align in ALIGNMENTS,
             f"input align must be one of {tuple(ALIGNMENTS)} or null, not {self.align!r}"),
            (self.fps >= 0 and self.every >= 0 and self.start >= 0 and self.limit >= 0,
             "input fps, every, start and limit must be >= 0"),
            (self.fps == 0 and self.start == 0 or self.every >= 1, "input fps and start need every >= 1"),
            (len(self.share) == 3 and self.share[0] >= 1 and 0 <= self.share[1] and self.share[2] >= 1
             and self.share[1] + self.share[2] <= self.share[0],
             f"input share must be (period, first, count) with first + count <= period, not {self.share}"),
            (self.flip in FLIPS, f"input flip must be one of {FLIPS}, not {self.flip!r}"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True)
class ArchConfig:
    """What a registered architecture expects by default: its kind and input (None: no single input, as a
    detector cascade)."""

    kind: str = "frame"
    input: InputSpec | None = None


_ARCHS: dict[str, tuple[Callable[..., nn.Module], ArchConfig]] = {}


def register_arch(factory: Callable[..., nn.Module] | None = None, *, kind: str = "frame",
                  input: InputSpec | None = None):
    """Register a model factory under its function name, with its default kind and input.

    Used bare (`@register_arch`) or with defaults (`@register_arch(kind="clip", input=InputSpec(112, ...))`).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, not {kind!r}")

    def register(function: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if function.__name__ in _ARCHS:
            raise ValueError(f"architecture {function.__name__!r} is already registered")
        _ARCHS[function.__name__] = (function, ArchConfig(kind, input))
        return function

    return register(factory) if factory is not None else register


def list_archs() -> list[str]:
    """Names of every registered architecture (any timm name with the "timm/" prefix works too)."""
    return sorted(_ARCHS)


def arch_config(arch: str) -> ArchConfig:
    """The registered defaults of an architecture; for "timm/<name>", a frame model at timm's pretrained input."""
    if arch.startswith(TIMM_PREFIX):
        name = arch.removeprefix(TIMM_PREFIX)
        if not timm.is_model(name):
            raise KeyError(f"unknown timm architecture {name!r}")
        config = timm.models.get_pretrained_cfg(name)
        if config is None:
            return ArchConfig("frame", None)
        _, height, width = config.input_size
        return ArchConfig("frame", InputSpec(size=height if height == width else (height, width),
                                             mean=tuple(config.mean), std=tuple(config.std)))
    return _entry(arch)[1]


def create_model(arch: str, **kwargs) -> nn.Module:
    """Build an untrained model of a registered architecture, or of timm's `name` given "timm/<name>"."""
    if arch.startswith(TIMM_PREFIX):
        return _create_timm_model(arch.removeprefix(TIMM_PREFIX), **kwargs)
    return _entry(arch)[0](**kwargs)


def _entry(arch: str) -> tuple[Callable[..., nn.Module], ArchConfig]:
    try:
        return _ARCHS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_ARCHS))}") from None


def register_timm_option(name: str, apply: Callable[[nn.Module, object], nn.Module]) -> None:
    """An arch kwarg of every "timm/<name>" model that timm lacks: `apply(model, value)` after timm builds it (an
    architecture module registers it, as weights.archs.efficientnet does `static_padding`)."""
    _TIMM_OPTIONS[name] = apply


_TIMM_OPTIONS: dict[str, Callable[[nn.Module, object], nn.Module]] = {}


def _create_timm_model(name: str, num_classes: int = 1, **kwargs) -> nn.Module:
    """timm's `name`, untrained; one output (a logit) unless num_classes says otherwise; the registered timm
    options (`register_timm_option`) applied after."""
    if not timm.is_model(name):
        raise KeyError(f"unknown timm architecture {name!r}")
    options = {key: kwargs.pop(key) for key in list(kwargs) if key in _TIMM_OPTIONS}
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    for key, value in options.items():
        if value is not None:
            model = _TIMM_OPTIONS[key](model, value)
    return model
