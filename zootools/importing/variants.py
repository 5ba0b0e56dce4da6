"""The teams' EfficientNet variants (`weights/archs/team_efficientnets.py`) read off a checkpoint in lukemelas'
layout: which architecture it is (NTech's 5-D temporal expansion convolutions; polimi's `attconv` and siamese
`feat_ext.`) and which B-variant (its number of blocks and head width, compared with timm's), so that one
command imports each without --arch. Names and shapes only: meta tensors work."""
from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import torch

from weights.registry import TIMM_PREFIX, create_model
from zootools.importing.reading import ImportRefused

LAYOUTS = {  # arch -> what such a checkpoint is, in words
    "efficientnet_temporal": "NTech's sequence model (5-D Conv3d `_expand_conv.conv.weight` over frames)",
    "efficientnet_autoatt": "polimi's EfficientNetAutoAtt (`efficientnet.attconv.*`)",
    "efficientnet_st": "polimi's siamese-tuned EfficientNet (`feat_ext.efficientnet.*` + a BatchNorm1d head)",
    "efficientnet_autoatt_st": "polimi's siamese-tuned EfficientNetAutoAtt (`feat_ext.efficientnet.attconv.*`)",
}
VARIANTS = tuple(f"b{n}" for n in range(8))


def detect_arch(source: str, state: Mapping[str, torch.Tensor]) -> str | None:
    """The team variant architecture a checkpoint's keys say it is, or None for the plain EfficientNet."""
    keys = [re.sub(r"^module\.", "", key) for key in state]
    if source == "ntech" and any(key.endswith("_expand_conv.conv.weight") and tensor.dim() == 5
                                 for key, tensor in state.items()):
        return "efficientnet_temporal"
    if source != "polimi":
        return None
    attention = any(re.match(r"(feat_ext\.)?efficientnet\.attconv\.", key) for key in keys)
    siamese = any(key.startswith("feat_ext.efficientnet.") for key in keys)
    if attention or siamese:
        return "efficientnet" + ("_autoatt" if attention else "") + ("_st" if siamese else "")
    return None


def choose_arch(source: str, state: Mapping[str, torch.Tensor], arch: str | None) -> str | None:
    """`arch` (None: the checkpoint's own variant, else the source's default); refuses an `arch` that contradicts
    the variant the keys show."""
    detected = detect_arch(source, state)
    if arch is None or detected is None or arch == detected:
        return arch or detected
    raise ImportRefused(f"the checkpoint is {LAYOUTS[detected]}: import it as {detected} (or leave out --arch)")


@lru_cache(maxsize=None)
def _shape_of(variant: str) -> tuple[int, int]:
    """(blocks, head width) of timm's tf_efficientnet_<variant>, built on the meta device."""
    with torch.device("meta"):
        model = create_model(f"{TIMM_PREFIX}tf_efficientnet_{variant}")
    return sum(len(stage) for stage in model.blocks), model.conv_head.out_channels


def lukemelas_variant(state: Mapping[str, torch.Tensor]) -> str:
    """The B-variant (b0 .. b7) of a lukemelas-layout state dict, from its `_blocks.i` count and `_conv_head`."""
    blocks = {int(m.group(1)) for key in state if (m := re.search(r"(?:^|\.)_blocks\.(\d+)\.", key))}
    head = next((tuple(t.shape) for k, t in state.items() if re.search(r"(?:^|\.)_conv_head\.weight$", k)), None)
    for variant in VARIANTS:
        if head is not None and (len(blocks), head[0]) == _shape_of(variant):
            return variant
    raise ImportRefused(f"not an EfficientNet-B0..B7 in lukemelas' layout ({len(blocks)} blocks, head {head})")


def variant_kwargs(arch: str, state: Mapping[str, torch.Tensor], frames: int) -> dict:
    """The arch kwargs a team variant takes from the entry (`frames`, the clip length its temporal convolutions
    reshape by) and, from a checkpoint in lukemelas' layout, `variant`; none for other architectures."""
    kwargs = {"frames": frames} if arch == "efficientnet_temporal" else {}
    if arch in LAYOUTS and any(re.search(r"(?:^|\.)_blocks\.\d+\.", key) for key in state):
        kwargs["variant"] = lukemelas_variant(state)
    return kwargs


def layout_arch(arch: str, arch_kwargs: Mapping) -> str:
    """The timm EfficientNet whose block layout (and key names) a team variant shares; `arch` itself otherwise."""
    return f"{TIMM_PREFIX}tf_efficientnet_{arch_kwargs['variant']}" if "variant" in arch_kwargs else arch
