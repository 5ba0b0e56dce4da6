"""efficientnet_pytorch 0.6.3's fixed "same" pads as an option of timm's tf_efficientnet_bN (`static_padding`):
equal to the library itself at its native size and at odd sizes, where timm's own padding is not; and the
lukemelas imports (ntech, polimi) that used to be refused off multiples of 32 now take it."""
from __future__ import annotations

import json

import pytest
import timm
import torch

from bench.standins import calibrate
from tests.test_importers import imported_model, manifest  # noqa: F401 (the manifest fixture)
from weights import create_model
from weights.archs.efficientnet import static_same_pads
from zootools.importing import import_checkpoint, map_keys
from zootools.importing.efficientnet_check import image_like, lukemelas_padding

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
EfficientNet = efficientnet_pytorch.EfficientNet

RELATIVE = 1e-5


def lukemelas(variant: int, native: int) -> torch.nn.Module:
    """efficientnet_pytorch 0.6.3's B`variant` with 2 outputs, BatchNorm statistics from picture-like inputs and
    a head whose logits are of order 1-10."""
    model = EfficientNet.from_name(f"efficientnet-b{variant}", override_params={"num_classes": 2})
    calibrate(model, image_like(2, (native, native), seed=5))
    with torch.no_grad():
        model._fc.weight.normal_(0, 16 / model._fc.in_features ** 0.5, generator=torch.Generator().manual_seed(3))
    return model


def relative_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    assert expected.shape == actual.shape
    return float((expected - actual).abs().max() / expected.abs().max())


def test_pads_are_computed_once_from_the_global_image_size():
    assert static_same_pads(300, (3, 3), (2, 2), (1, 1)) == (0, 1, 0, 1)
    assert static_same_pads(300, (5, 5), (2, 2), (1, 1)) == (1, 2, 1, 2)
    assert static_same_pads((600, 301), (3, 3), (2, 2), (1, 1)) == (1, 1, 0, 1)  # (height, width): odd width
    assert static_same_pads(300, (3, 3), (1, 1), (1, 1)) == (1, 1, 1, 1)
    model = create_model("timm/tf_efficientnet_b3", static_padding=300)
    pads = {name: module.pads for name, module in model.named_modules() if hasattr(module, "pads")}
    assert pads == {"conv_stem": (0, 1, 0, 1), "blocks.1.0.conv_dw": (0, 1, 0, 1), "blocks.2.0.conv_dw": (1, 2, 1, 2),
                    "blocks.3.0.conv_dw": (0, 1, 0, 1), "blocks.5.0.conv_dw": (1, 2, 1, 2)}
    assert list(model.state_dict()) == list(timm.create_model("tf_efficientnet_b3", num_classes=1).state_dict())
    with pytest.raises(ValueError, match="tf_ models"):
        create_model("timm/efficientnet_b0", static_padding=224)  # PyTorch-style padding: nothing to fix


@pytest.mark.slow
@pytest.mark.parametrize("variant, native", [(0, 224), (3, 300)])
def test_static_padding_equals_efficientnet_pytorch_063(variant, native):
    """0.6.3 pads for its native size whatever the input: timm's own padding differs at 300 and 301 px, the
    option does not (B3 at 300: 9 x 9 last maps, not timm's 10 x 10). In float64: float32 rounding alone moves
    their own B3's logits by about 1e-5 of their size (against float64), as much as the tolerance."""
    source = lukemelas(variant, native).double()
    state = map_keys("ntech", source.state_dict(), f"timm/tf_efficientnet_b{variant}").state
    models = {}
    for padding in (None, native):
        kwargs = {"num_classes": 2} | ({"static_padding": padding} if padding else {})
        models[padding] = create_model(f"timm/tf_efficientnet_b{variant}", **kwargs).eval()
        models[padding].double().load_state_dict(state)
    for size in (300, 301):
        pixels = image_like(1, (size, size), seed=1).double()
        with torch.inference_mode():
            expected, padded, dynamic = source(pixels), models[native](pixels), models[None](pixels)
        assert relative_difference(expected, padded) <= RELATIVE, size
        assert relative_difference(expected, dynamic) > 0.01, size


def test_ntech_import_at_an_odd_size_takes_the_static_padding(tmp_path, manifest):  # noqa: F811
    """200 px: B0's 4th stride-2 convolution sees 25 px, where timm pads otherwise than 0.6.3 (this import was
    refused before); the entry gets `static_padding: 224` and the model gives the library's outputs."""
    source = lukemelas(0, 224)
    path = tmp_path / "ntech_b0.pth"
    torch.save(source.state_dict(), path)
    result = import_checkpoint("ntech", path, name="odd", arch="timm/tf_efficientnet_b0", ensemble=manifest,
                               overrides={"size": 200})
    assert result.spec.arch_kwargs == {"num_classes": 2, "static_padding": 224}
    assert json.loads(manifest.read_text())["models"][-1]["arch_kwargs"] == {"num_classes": 2, "static_padding": 224}
    assert any(note.startswith("padding: efficientnet_pytorch 0.6.3's fixed pads for 224 px") for note in result.notes)
    assert any(note.startswith("check: timm equals efficientnet_pytorch 0.6.3 at 200x200") for note in result.notes)
    pixels = image_like(1, (200, 200), seed=2)
    with torch.inference_mode():
        assert relative_difference(source(pixels), imported_model(result)(pixels)) <= RELATIVE


def test_the_padding_is_chosen_only_where_timm_differs():
    with torch.device("meta"):
        b0, b4 = (timm.create_model(f"tf_efficientnet_b{n}", num_classes=1) for n in (0, 4))
    assert lukemelas_padding(b0, "timm/tf_efficientnet_b0", (224, 192)) == {}
    assert lukemelas_padding(b4, "timm/tf_efficientnet_b4", (224, 224)) == {}
    assert lukemelas_padding(b0, "timm/tf_efficientnet_b0", (200, 200)) == {"static_padding": 224}
    assert lukemelas_padding(b4, "timm/tf_efficientnet_b4", (380, 380)) == {"static_padding": 380}
