"""The teams' state-dict keys onto this project's architectures: wrapper prefixes stripped, unused heads dropped,
heads renamed, lukemelas' efficientnet_pytorch keys onto timm's `tf_efficientnet_bN` (the stage layout read from
timm's model itself). Names only: meta tensors work."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import timm
import torch
from torch import nn

from weights.registry import TIMM_PREFIX, create_model
from zootools.importing.reading import ImportRefused

# Heads of the registered (non-timm) architectures a source can target: the module whose weight's first
# dimension is the number of outputs.
REGISTERED_HEADS = {"i3d": "logits.conv3d", "resnet34_3d": "fc", "mc3_18": "fc", "r2plus1d_18": "fc", "r3d_18": "fc",
                    "wsdan_xception": "fc", "wsdan_efficientnet_b3": "fc",
                    "efficientnet_temporal": "classifier", "efficientnet_autoatt": "classifier",
                    "efficientnet_st": "classifier.1", "efficientnet_autoatt_st": "classifier.1"}
# \WM/'s WS-DAN backbones by their keys' prefix: Cadene's Xception (`features.*`, timm's names already) or
# efficientnet_pytorch's B3 (`EFN.*`, lukemelas' names).
WSDAN_BACKBONES = {"features.": "wsdan_xception", "EFN.": "wsdan_efficientnet_b3"}
TIMM_EFFICIENTNET_TOPS = ("conv_stem.", "bn1.", "blocks.", "conv_head.", "bn2.")  # a timm EfficientNet's backbone

# lukemelas -> timm renames inside one block (stage-0 depthwise-separable blocks differ from the others).
DS_BLOCK_RENAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                    "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_BLOCK_RENAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                    "_bn2": "bn3"}
TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier", "classifier": "classifier"}


@dataclass
class KeyMap:
    """A state dict under the target architecture's names, with what was renamed and dropped (rule -> tensors)."""

    state: dict[str, torch.Tensor]
    renames: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def strip(self, prefix: str, only_if_all: bool = False) -> None:
        """Remove `prefix` from the keys that start with it (with only_if_all: only if every key does)."""
        hits = [k for k in self.state if k.startswith(prefix)]
        if not hits or (only_if_all and len(hits) != len(self.state)):
            return
        self.rename(prefix, "", f"{prefix}* -> *")

    def rename(self, old: str, new: str, rule: str | None = None) -> None:
        """Rename the keys starting with `old` (a prefix; the whole key also matches) to start with `new`."""
        renamed = {}
        for key, tensor in self.state.items():
            if key == old or key.startswith(old):
                renamed[new + key[len(old):]] = tensor
                self.renames[rule or f"{old}* -> {new}*"] += 1
            else:
                renamed[key] = tensor
        if len(renamed) != len(self.state):
            raise ImportRefused(f"renaming {old!r} to {new!r} makes two keys equal")
        self.state = renamed

    def drop(self, prefix: str, why: str) -> None:
        """Remove the keys starting with `prefix` (tensors no architecture uses)."""
        gone = [k for k in self.state if k.startswith(prefix)]
        for key in gone:
            del self.state[key]
        if gone:
            self.dropped[f"{prefix}* ({why})"] += len(gone)


@lru_cache(maxsize=None)
def efficientnet_layout(arch: str) -> tuple[tuple[int, int, bool], ...]:
    """(stage, index in stage, depthwise-separable?) of every block of a timm EfficientNet, in order: where
    lukemelas' flat `_blocks.i` lands. Built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = create_model(arch, num_classes=1)
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(model, "conv_stem"):
        raise ImportRefused(f"{arch} is not a timm EfficientNet: efficientnet_pytorch checkpoints map onto "
                            "timm/tf_efficientnet_bN only")
    return tuple((s, j, not hasattr(block, "conv_pwl"))
                 for s, stage in enumerate(stages) for j, block in enumerate(stage))


def map_lukemelas(keymap: KeyMap, arch: str) -> None:
    """lukemelas' efficientnet_pytorch keys (`_conv_stem`, `_blocks.i.*`, `_fc`) -> timm's `tf_efficientnet_bN`."""
    layout = efficientnet_layout(arch)
    indices = {int(m.group(1)) for k in keymap.state if (m := re.match(r"_blocks\.(\d+)\.", k))}
    if indices and (max(indices) + 1 != len(layout) or len(indices) != len(layout)):
        raise ImportRefused(f"the checkpoint has {len(indices)} EfficientNet blocks, {arch} has {len(layout)}: "
                            f"{_efficientnet_hint(len(indices))}")
    mapped = {}
    for key, tensor in keymap.state.items():
        block = re.match(r"_blocks\.(\d+)\.([^.]+)(.*)$", key)
        if block:
            stage, index, separable = layout[int(block.group(1))]
            renames = DS_BLOCK_RENAMES if separable else IR_BLOCK_RENAMES
            module = renames.get(block.group(2), block.group(2))
            mapped[f"blocks.{stage}.{index}.{module}{block.group(3)}"] = tensor
            kind = "stage-0 depthwise-separable" if separable else "inverted-residual"
            keymap.renames[f"_blocks.i.* -> blocks.s.j.* ({kind} block renames)"] += 1
            continue
        top, _, rest = key.partition(".")
        if top in TOP_RENAMES and rest:
            mapped[f"{TOP_RENAMES[top]}.{rest}"] = tensor
            if TOP_RENAMES[top] != top:
                keymap.renames[f"{top}.* -> {TOP_RENAMES[top]}.*"] += 1
        else:
            mapped[key] = tensor  # left as is: named as unexpected when it does not fit
    keymap.state = mapped


def _efficientnet_hint(blocks: int) -> str:
    variants = {16: "b0", 23: "b1 or b2", 26: "b3", 32: "b4", 39: "b5", 45: "b6", 55: "b7"}
    variant = variants.get(blocks)
    return f"it looks like EfficientNet-{variant}: pass --arch timm/tf_efficientnet_{variant.split()[0]}" \
        if variant else "not an EfficientNet-B0..B7 layout"


def recognised_arch(source: str, state: Mapping[str, torch.Tensor]) -> str | None:
    """The architecture a checkpoint's keys call for where a source saved several kinds (\\WM/: a WS-DAN's
    attention maps and its backbone's prefix), else None (the source's default)."""
    if source != "wm" or "attentions.conv.weight" not in state:
        return None
    return next((arch for prefix, arch in WSDAN_BACKBONES.items() if any(k.startswith(prefix) for k in state)), None)


def map_wsdan_efficientnet(keymap: KeyMap) -> None:
    """\\WM/'s `EFN.*` (lukemelas' B3, its unused `_fc` included) -> `features.*` under timm's tf_efficientnet_b3
    names; `attentions.*` and `fc.*` keep theirs."""
    keymap.drop("EFN._fc.", "efficientnet_pytorch's ImageNet head, unused by WS-DAN")
    keymap.strip("EFN.")
    map_lukemelas(keymap, "timm/tf_efficientnet_b3")
    for top in TIMM_EFFICIENTNET_TOPS:
        keymap.rename(top, f"features.{top}", "EFN.* -> features.*")


def head_of(arch: str) -> str | None:
    """The module name of an architecture's classifier (its weight's first dimension = outputs), if known."""
    if arch.startswith(TIMM_PREFIX):
        config = timm.models.get_pretrained_cfg(arch.removeprefix(TIMM_PREFIX))
        head = getattr(config, "classifier", None)
        return head if isinstance(head, str) else None
    return REGISTERED_HEADS.get(arch)


def map_keys(source: str, state: Mapping[str, torch.Tensor], arch: str, strip_prefixes: Sequence[str] = (),
             renames: Sequence[tuple[str, str]] = ()) -> KeyMap:
    """The source's key map onto `arch`; touches names only (meta tensors work)."""
    keymap = KeyMap(dict(state))
    keymap.strip("module.", only_if_all=True)  # DistributedDataParallel / DataParallel
    head = head_of(arch)
    if source == "selimsef":
        keymap.drop("encoder.classifier.", "timm's unused ImageNet head")
        keymap.strip("encoder.")
        keymap.rename("fc.", f"{head or 'classifier'}.")
    elif source == "ntech" or (source == "polimi" and "efficientnet" in arch):
        # polimi's SiameseTuning: the tuned network under `feat_ext.`, whose own per-frame head it never runs
        keymap.drop("feat_ext.classifier.", "polimi's unused head: siamese tuning classifies with `classifier`")
        keymap.strip("feat_ext.")
        keymap.strip("efficientnet.")  # polimi's wrapper; its `classifier` is timm's name already
        map_lukemelas(keymap, arch)
    elif source == "polimi":  # their Xception: Cadene's layout under `xception.`
        keymap.strip("xception.")
        keymap.rename("last_linear.", "fc.")
    elif source == "medics" and arch == "timm/legacy_seresnext50_32x4d":
        keymap.strip("backbone.")
        keymap.rename("fc.", "last_linear.")
    elif source == "wm" and arch == "wsdan_efficientnet_b3":
        map_wsdan_efficientnet(keymap)
    elif source == "wm":
        keymap.rename("last_linear.", "fc.")
    elif source == "plain":
        for prefix in strip_prefixes:
            keymap.strip(prefix)
        for old, new in renames:
            keymap.rename(old, new)
    return keymap


def lukemelas_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A polimi or NTech state dict under efficientnet_pytorch's own names (`_fc` for the head), as the source
    library's `EfficientNet` loads it."""
    keymap = KeyMap(dict(state))
    keymap.strip("module.", only_if_all=True)
    keymap.strip("efficientnet.")
    keymap.rename("classifier.", "_fc.")
    return keymap.state


def fp32(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.to(torch.float32)
    return tensor
