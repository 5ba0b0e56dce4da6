"""The efficientnet_pytorch numerical check: a lukemelas-layout import is accepted only where timm's model equals
the source library's at the entry's input size (their padding differs off multiples of 32, and >= 0.7 bakes it for
the native size)."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from timm.layers import get_same_padding
from torch import nn

from weights.registry import IMAGENET, TIMM_PREFIX
from zootools.importing.keymaps import fp32
from zootools.importing.reading import ImportRefused
from zootools.importing.variants import layout_arch

# efficientnet_pytorch's native input sides (its `efficientnet_params`): what >= 0.7 bakes its padding for.
LUKEMELAS_NATIVE_SIZE = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
# Sources whose checkpoints are in lukemelas' layout, and whether the team pinned efficientnet_pytorch 0.6.x.
# Numerical check: timm's and the source library's feature maps must agree to this fraction of their scale.
CHECK_TOLERANCE = 1e-3

# lukemelas -> timm renames inside one block (stage-0 depthwise-separable blocks differ from the others).


def check_lukemelas(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, shape: tuple[int, int],
                    pinned: bool, arch_kwargs: Mapping | None = None) -> list[str]:
    """Show, at the entry's input size, that the timm model equals the source model as the installed
    efficientnet_pytorch builds it (its default, native image size, as the teams built it); refuse otherwise.

    efficientnet_pytorch 0.6.x pads every stride-2 convolution for an even side, which is TF "same" wherever the
    input sides are multiples of 32; >= 0.7 bakes the padding for the model's native size and differs from timm
    elsewhere (B4 built for 380, run at 224). The team variants (`arch_kwargs`: their `variant`, `frames`) are
    compared with the team's own model (`team_models`), a temporal one on one clip of `frames` frames. Returns the
    summary's lines (the check, and for an unpinned source a warning where >= 0.7's padding would have differed)."""
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
    pixels = image_like(arch_kwargs.get("frames", 1), shape)  # a temporal model's: one clip
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
        raise ImportRefused(f"at {where} timm's {arch.removeprefix(TIMM_PREFIX)} differs from efficientnet_pytorch "
                            f"{version}'s model by {difference:.3g} in its features (up to {scale:.3g}{shapes}): "
                            "the padding differs at this size; import at a size whose sides are multiples of 32")
    notes = [f"check: timm equals efficientnet_pytorch {version} at {where}: max |difference| {difference:.2g} in "
             f"the features (up to {scale:.3g}), {logit_difference:.2g} in the logits"]
    baked = baked_padding_differences(model, LUKEMELAS_NATIVE_SIZE[variant], shape)
    if baked and not pinned:
        notes.append(f"warning: the source did not pin efficientnet_pytorch; had it trained with >= 0.7, its "
                     f"padding was baked for {LUKEMELAS_NATIVE_SIZE[variant]} px and differs from timm at {where} "
                     f"in {', '.join(baked)}: confirm the scores on known videos")
    return notes


def image_like(count: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """`count` smooth colour images (coarse noise upsampled, with a fine grain) in [0, 1], ImageNet-normalised: a
    checkpoint's BatchNorm statistics turn Gaussian noise into activations around 1e5, where float32's rounding
    alone breaks a relative tolerance."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, max(shape[0] // 16, 2), max(shape[1] // 16, 2), generator=generator)
    pixels = F.interpolate(coarse, size=shape, mode="bicubic", align_corners=False)
    pixels = (pixels + 0.05 * torch.randn(count, 3, *shape, generator=generator)).clamp(0, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET["mean"], IMAGENET["std"]))
    return (pixels - mean) / std


def baked_padding_differences(model: nn.Module, native: int, shape: tuple[int, int]) -> list[str]:
    """The convolutions of a timm EfficientNet whose padding efficientnet_pytorch >= 0.7 (padding computed once
    for `native` px, then tracked through the strides) sets differently from TF "same" at `shape`."""
    convs = [("conv_stem", model.conv_stem)]
    convs += [(f"blocks.{s}.{j}.conv_dw", block.conv_dw) for s, stage in enumerate(model.blocks)
              for j, block in enumerate(stage)]
    baked, actual, differ = [native, native], list(shape), []
    for name, conv in convs:
        kernel, stride = conv.kernel_size, conv.stride
        if any(get_same_padding(baked[d], kernel[d], stride[d], 1) !=
               get_same_padding(actual[d], kernel[d], stride[d], 1) for d in (0, 1)):
            differ.append(name)
        baked = [-(-baked[d] // stride[d]) for d in (0, 1)]
        actual = [-(-actual[d] // stride[d]) for d in (0, 1)]
    return differ
