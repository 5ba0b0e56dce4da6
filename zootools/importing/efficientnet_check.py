"""The efficientnet_pytorch numerical check: a lukemelas-layout import is accepted only where the imported model
equals the source library's at the entry's input size. timm's own padding is 0.6.x's only where every stride-2
convolution sees an even side; elsewhere the import takes 0.6.3's fixed pads (`static_padding`), and >= 0.7
bakes still other pads for the native size."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from weights.archs.efficientnet import DYNAMIC_SAME, StaticSameConv2d, static_same_pads
from weights.registry import IMAGENET, TIMM_PREFIX
from zootools.importing.keymaps import fp32
from zootools.importing.reading import ImportRefused
from zootools.importing.variants import layout_arch

# efficientnet_pytorch's native input sides (its `efficientnet_params`): what >= 0.7 bakes its padding for.
LUKEMELAS_NATIVE_SIZE = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
# Numerical check: timm's and the source library's feature maps must agree to this fraction of their scale.
CHECK_TOLERANCE = 1e-3


def image_like(count: int, shape: tuple[int, int], mean=IMAGENET["mean"], std=IMAGENET["std"],
               seed: int = 0) -> torch.Tensor:
    """`count` picture-like inputs, normalised: smooth colour fields with some texture, in [0, 1]. Trained
    BatchNorm statistics can blow Gaussian noise up to 1e5 and fail a relative tolerance on a correct import;
    natural images they keep in range."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator)
    texture = torch.rand(count, 3, max(shape[0] // 8, 1), max(shape[1] // 8, 1), generator=generator)
    pixels = (0.8 * F.interpolate(coarse, shape, mode="bicubic", align_corners=False)
              + 0.2 * F.interpolate(texture, shape, mode="bilinear", align_corners=False)).clamp(0, 1)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def lukemelas_padding(model: nn.Module, arch: str, shape: tuple[int, int]) -> dict[str, int]:
    """{"static_padding": the native size} where timm's dynamic padding differs from efficientnet_pytorch 0.6.3's
    fixed pads at `shape` (some stride-2 convolution sees an odd side), else {}."""
    native = LUKEMELAS_NATIVE_SIZE[int(re.search(r"efficientnet_b(\d)", arch).group(1))]
    sides = list(shape)
    for conv in (module for module in model.modules() if isinstance(module, DYNAMIC_SAME)):
        dynamic = static_same_pads(tuple(sides), conv.kernel_size, conv.stride, conv.dilation)  # TF "same" here
        if dynamic != static_same_pads(native, conv.kernel_size, conv.stride, conv.dilation):
            return {"static_padding": native}
        sides = [-(-side // stride) for side, stride in zip(sides, conv.stride)]
    return {}


def check_lukemelas(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, shape: tuple[int, int],
                    pinned: bool, mean=IMAGENET["mean"], std=IMAGENET["std"],
                    arch_kwargs: Mapping | None = None) -> list[str]:
    """Show, at the entry's input size, that the imported model equals the source model as the installed
    efficientnet_pytorch builds it (its default, native image size, as the teams built it), on a picture-like
    input normalised with `mean` and `std`; refuse otherwise.

    efficientnet_pytorch 0.6.x pads every "same" convolution with fixed pads for the native size, which timm's
    dynamic padding equals wherever every stride-2 convolution sees an even side (the importer gives the model
    0.6.3's pads elsewhere); >= 0.7 bakes other pads (B4 built for 380, run at 224). The team variants
    (`arch_kwargs`: their `variant`, `frames`) are compared with the team's own model (`team_models`), a temporal
    one on one clip of `frames` frames. Returns the summary's lines (the check, and for an unpinned source a
    warning where >= 0.7's padding would have differed)."""
    try:
        import efficientnet_pytorch

        from zootools.importing.team_models import team_model
    except ImportError:
        raise ImportRefused("efficientnet_pytorch is needed to check this checkpoint's padding against timm at "
                            f"{shape[0]}x{shape[1]} (pip install --no-deps -r requirements-sources.txt)") from None
    arch_kwargs = arch_kwargs or {}
    variant = int(re.search(r"efficientnet_b(\d)", layout_arch(arch, arch_kwargs)).group(1))
    source, native = team_model(arch, arch_kwargs, variant, state)
    native = {k: fp32(v) for k, v in native.items()}
    for key in source.state_dict():
        if key not in native and key.endswith(".num_batches_tracked"):
            native[key] = torch.zeros((), dtype=torch.long)
    try:
        source.load_state_dict(native, strict=True)
    except RuntimeError as error:
        raise ImportRefused(f"efficientnet_pytorch's EfficientNet-B{variant} does not load the checkpoint: "
                            f"{str(error).splitlines()[0]}") from None
    source.eval()
    pixels = image_like(arch_kwargs.get("frames", 1), shape, mean, std)  # a temporal model's: one clip
    with torch.inference_mode():  # the feature maps show a padding difference whatever the head's weights
        reference_features, features = source.extract_features(pixels), model.forward_features(pixels)
        reference, logits = source.head(reference_features), model.forward_head(features)
    scale = float(reference_features.abs().max())
    if reference_features.shape != features.shape:  # 0.6.x at odd sides: other feature-map sizes
        difference = logit_difference = float("inf")
    else:
        difference = float((reference_features - features).abs().max())
        logit_difference = float((reference - logits).abs().max())
    version = getattr(efficientnet_pytorch, "__version__", "?")
    where = f"{shape[0]}x{shape[1]}"
    if not difference <= CHECK_TOLERANCE * scale:
        shapes = f"; maps {tuple(features.shape[2:])} vs {tuple(reference_features.shape[2:])}" \
            if reference_features.shape != features.shape else ""
        raise ImportRefused(f"at {where} the imported {arch.removeprefix(TIMM_PREFIX)} differs from "
                            f"efficientnet_pytorch {version}'s model by {difference:.3g} in its features (up to "
                            f"{scale:.3g}{shapes}): the padding differs at this size (reproduced: 0.6.x's)")
    notes = [f"check: timm equals efficientnet_pytorch {version} at {where}: max |difference| {difference:.2g} in "
             f"the features (up to {scale:.3g}), {logit_difference:.2g} in the logits"]
    baked = baked_padding_differences(model, LUKEMELAS_NATIVE_SIZE[variant], shape)
    if baked and not pinned:
        notes.append(f"warning: the source did not pin efficientnet_pytorch; had it trained with >= 0.7, its "
                     f"padding was baked for {LUKEMELAS_NATIVE_SIZE[variant]} px and differs from this model's at "
                     f"{where} in {', '.join(baked)}: confirm the scores on known videos")
    return notes


def baked_padding_differences(model: nn.Module, native: int, shape: tuple[int, int]) -> list[str]:
    """The convolutions of a timm EfficientNet whose padding efficientnet_pytorch >= 0.7 (padding computed once
    for `native` px, then tracked through the strides) sets differently from the model's own at `shape` (TF
    "same", or 0.6.3's fixed pads where the model has them)."""
    convs = [("conv_stem", model.conv_stem)]
    convs += [(f"blocks.{s}.{j}.conv_dw", block.conv_dw) for s, stage in enumerate(model.blocks)
              for j, block in enumerate(stage)]
    baked, actual, differ = (native, native), tuple(shape), []
    for name, conv in convs:
        kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
        ours = conv.pads if isinstance(conv, StaticSameConv2d) else static_same_pads(actual, kernel, stride, dilation)
        if static_same_pads(baked, kernel, stride, dilation) != ours:
            differ.append(name)
        baked = tuple(-(-side // s) for side, s in zip(baked, stride))
        actual = tuple((side + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1  # the model's own output sides
                       for side, pad, k, s, d in zip(actual, (ours[2:], ours[:2]), kernel, stride, dilation))
    return differ
