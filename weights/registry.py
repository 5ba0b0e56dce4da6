"""Registry of named architectures: one factory over small architecture modules (timm-style)."""
from __future__ import annotations

from typing import Callable

from torch import nn

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name."""
    if factory.__name__ in _ARCHS:
        raise ValueError(f"architecture {factory.__name__!r} is already registered")
    _ARCHS[factory.__name__] = factory
    return factory


def list_archs() -> list[str]:
    """Names of every registered architecture."""
    _import_archs()
    return sorted(_ARCHS)


def create_model(arch: str, **kwargs) -> nn.Module:
    """Build an untrained model of a registered architecture."""
    _import_archs()
    try:
        factory = _ARCHS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_ARCHS))}") from None
    return factory(**kwargs)


def _import_archs() -> None:
    """Importing the package registers every architecture module in it."""
    from weights import archs  # noqa: F401
