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


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input: square face crops, normalised per channel from RGB in [0, 1].

    Clip (3D CNN, N x 3 x T x S x S) and sequence (temporal 2D, N x T x 3 x S x S) models also say how many
    frames T a clip holds, `stride` video frames apart, and how many clips per video to score.
    """

    size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    frames: int = 1
    stride: int = 1
    clips: int = 4

    @property
    def clip_geometry(self) -> tuple[int, int, int]:
        """(frames, stride, clips): which video frames a clip or sequence model sees."""
        return self.frames, self.stride, self.clips


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
        return ArchConfig("frame", InputSpec(size=height if height == width else max(height, width),
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


def _create_timm_model(name: str, num_classes: int = 1, **kwargs) -> nn.Module:
    """timm's `name`, untrained; one output (a logit) unless num_classes says otherwise."""
    if not timm.is_model(name):
        raise KeyError(f"unknown timm architecture {name!r}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
