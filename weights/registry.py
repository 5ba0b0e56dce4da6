"""Registry of named architectures: one factory over small architecture modules (timm-style).

Besides the registered names, `create_model("timm/<name>")` builds any timm architecture, untrained, with timm's
own parameter names, so checkpoints trained with timm load strictly.
"""
from __future__ import annotations

from typing import Callable

import timm
from torch import nn

TIMM_PREFIX = "timm/"

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name."""
    if factory.__name__ in _ARCHS:
        raise ValueError(f"architecture {factory.__name__!r} is already registered")
    _ARCHS[factory.__name__] = factory
    return factory


def list_archs() -> list[str]:
    """Names of every registered architecture (any timm name with the "timm/" prefix works too)."""
    _import_archs()
    return sorted(_ARCHS)


def create_model(arch: str, **kwargs) -> nn.Module:
    """Build an untrained model of a registered architecture, or of timm's `name` given "timm/<name>"."""
    if arch.startswith(TIMM_PREFIX):
        return _create_timm_model(arch.removeprefix(TIMM_PREFIX), **kwargs)
    _import_archs()
    try:
        factory = _ARCHS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_ARCHS))}") from None
    return factory(**kwargs)


def _create_timm_model(name: str, num_classes: int = 1, **kwargs) -> nn.Module:
    """timm's `name`, untrained; one output (a logit) unless num_classes says otherwise."""
    if not timm.is_model(name):
        raise KeyError(f"unknown timm architecture {name!r}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _import_archs() -> None:
    """Importing the package registers every architecture module in it."""
    from weights import archs  # noqa: F401
