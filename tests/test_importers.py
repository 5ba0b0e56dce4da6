"""`python -m zootools import`: each team's checkpoint, written in that team's exact layout with the team's own
library (random weights, BatchNorm statistics from one training-mode pass so outputs depend on the input), imports,
loads strictly and gives the source module's outputs; what has no architecture here, or would run code, is refused
in one line and writes nothing."""
from __future__ import annotations

import collections
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import zootools.__main__
from bench.standins import calibrate
from weights import create_model, load_ensemble
from zootools.importing import (
    ImportRefused,
    baked_padding_differences,
    import_checkpoint,
    map_keys,
    read_checkpoint,
)

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
pretrainedmodels = pytest.importorskip("pretrainedmodels")
EfficientNet = efficientnet_pytorch.EfficientNet

TOLERANCE = 1e-5


# --- helpers --------------------------------------------------------------------------------------------------------


def randomise_head(linear: nn.Linear) -> None:
    """A head whose logits are of order 1, so a wrong feature shows in them."""
    with torch.no_grad():
        linear.weight.normal_(0, 1 / linear.in_features ** 0.5 * 4)
        linear.bias.normal_(0, 0.5)


def seeded(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def folder_state(folder: Path) -> dict[str, str]:
    """Every file in a folder with its sha256: what 'writes nothing' compares."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def imported_model(result) -> nn.Module:
    """The imported model as the kernel builds it from the manifest (PyTorch, strict, hash-checked)."""
    ensemble = load_ensemble(result.manifest)
    spec = next(s for s in ensemble.models if s.name == result.spec.name)
    assert spec == result.spec
    return ensemble.build_model(spec, "cuda")  # the GPU's runtime choice (PyTorch); built on the CPU


def max_difference(source: nn.Module, model: nn.Module, batch: torch.Tensor) -> float:
    with torch.inference_mode():
        expected, actual = source(batch), model(batch)
    assert expected.shape == actual.shape
    return float((expected - actual).abs().max())


@pytest.fixture
def manifest(tmp_path) -> Path:
    """A minimal valid manifest (parsing never opens the detector's or model's files) in its own folder."""
    folder = tmp_path / "ensemble"
    folder.mkdir()
    path = folder / "ensemble.json"
    path.write_text(json.dumps({
        "format": 2,
        "detector": {"arch": "blazeface_back", "checkpoint": "blazeface_back.safetensors", "sha256": "0" * 64,
                     "min_score": 0.65},
        "models": [{"name": "meso4_df", "arch": "meso4", "checkpoint": "meso4_df.safetensors", "sha256": "1" * 64,
                    "positive_class": "REAL"}],
    }, indent=2))
    return path


# --- source-layout modules, built with each team's library ----------------------------------------------------------


class DeepFakeClassifier(nn.Module):
    """The 1st place's classifier: a whole timm EfficientNet (its ImageNet head kept, unused), pool, dropout, fc."""

    def __init__(self, encoder: str = "tf_efficientnet_b0"):
        super().__init__()
        self.encoder = timm.create_model(encoder, pretrained=False)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(self.encoder.num_features, 1)

    def forward(self, x):
        x = self.avg_pool(self.encoder.forward_features(x)).flatten(1)
        return self.fc(self.dropout(x))


class DataParallel(nn.Module):
    """What DistributedDataParallel adds to the keys: `module.`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


class PolimiEfficientNet(nn.Module):
    """polimi's EfficientNetGen: lukemelas' EfficientNet under `efficientnet` (its _fc deleted) + `classifier`."""

    def __init__(self, model: str = "efficientnet-b0"):
        super().__init__()
        self.efficientnet = EfficientNet.from_name(model)
        self.classifier = nn.Linear(self.efficientnet._conv_head.out_channels, 1)
        del self.efficientnet._fc

    def forward(self, x):
        x = self.efficientnet._avg_pooling(self.efficientnet.extract_features(x)).flatten(1)
        return self.classifier(self.efficientnet._dropout(x))


class PolimiXception(nn.Module):
    """polimi's Xception: Cadene's xception under `xception`, `last_linear` with one output."""

    def __init__(self):
        super().__init__()
        self.xception = pretrainedmodels.xception(num_classes=1000, pretrained=None)
        self.xception.last_linear = nn.Linear(2048, 1)

    def forward(self, x):
        return self.xception(x)


class MedicsSingleHead(nn.Module):
    """The Medics' 2D model: Cadene se_resnext50_32x4d (last_linear = Identity, adaptive pool) + dropout + fc."""

    def __init__(self):
        super().__init__()
        self.backbone = pretrainedmodels.se_resnext50_32x4d(num_classes=1000, pretrained=None)
        self.backbone.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.backbone.last_linear = nn.Identity()
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2048, 1)

    def forward(self, x):
        return self.fc(self.dropout(self.backbone(x)))


def lukemelas_b0(outputs: int = 1) -> nn.Module:
    return EfficientNet.from_name("efficientnet-b0", override_params={"num_classes": outputs})


def save_selimsef(path: Path, model: nn.Module, legacy: bool = False, numpy1: bool = False) -> Path:
    """As train_classifier.py saved it: {"epoch", "state_dict" (DDP keys), "bce_best": numpy float64}."""
    payload = {"epoch": 12, "state_dict": DataParallel(model).state_dict(), "bce_best": np.float64(0.1875)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    if numpy1:  # as numpy 1.x pickled the scalar (torch 1.4-era files): numpy.core, not numpy._core
        data = path.read_bytes().replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
        assert b"numpy.core.multiarray\nscalar" in data
        path.write_bytes(data)
    return path


# --- the sources ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-numpy1"])
def test_selimsef_checkpoint_imports_and_matches(tmp_path, manifest, legacy):
    source = calibrate(DeepFakeClassifier(), seeded(2, 3, 128, 128, seed=0))
    randomise_head(source.fc)
    path = save_selimsef(tmp_path / "final_111_DeepFakeClassifier_tf_efficientnet_b0_ns_0_36", source,
                         legacy=legacy, numpy1=legacy)
    result = import_checkpoint("selimsef", path, name="sel", arch="timm/tf_efficientnet_b0", ensemble=manifest)
    assert max_difference(source, imported_model(result), seeded(2, 3, 128, 128)) <= TOLERANCE
    spec = result.spec
    assert (spec.arch, spec.arch_kwargs, spec.kind, spec.positive_class) == (
        "timm/tf_efficientnet_b0", {"num_classes": 1}, "frame", "FAKE")
    assert (spec.input.size, spec.input.margin, spec.input.resize, spec.input.interpolation) == (
        380, pytest.approx(1 / 3), "letterbox", ("area", "cubic"))
    assert (spec.aggregation, spec.video_score, spec.tta) == ("confident", "pool", ())
    assert result.tensors == 360
    assert result.dropped == {"encoder.classifier.* (timm's unused ImageNet head)": 2}
    assert result.renames["fc.* -> classifier.*"] == 2
    assert (manifest.parent / "sel.safetensors").is_file()


def test_selimsef_b7_keys_and_shapes_equal_timm_b7():
    """Full size, names and shapes only: the B7 DeepFakeClassifier's DDP state dict maps onto timm's B7."""
    with torch.device("meta"):
        state = DataParallel(DeepFakeClassifier("tf_efficientnet_b7")).state_dict()
        expected = timm.create_model("tf_efficientnet_b7", num_classes=1).state_dict()
    keymap = map_keys("selimsef", state, "timm/tf_efficientnet_b7")
    assert list(keymap.state) == list(expected)
    assert {k: tuple(v.shape) for k, v in keymap.state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert len(expected) == 1200 and keymap.state["classifier.weight"].shape == (1, 2560)
    assert keymap.dropped == {"encoder.classifier.* (timm's unused ImageNet head)": 2}


def test_ntech_b7_keys_and_shapes_equal_timm_b7():
    """lukemelas' B7 (NTech's frame models) maps onto timm's B7 block for block, stage layout read from timm."""
    with torch.device("meta"):
        state = EfficientNet.from_name("efficientnet-b7", override_params={"num_classes": 1}).state_dict()
        expected = timm.create_model("tf_efficientnet_b7", num_classes=1).state_dict()
    keymap = map_keys("ntech", state, "timm/tf_efficientnet_b7")
    assert set(keymap.state) == set(expected)
    assert all(tuple(keymap.state[k].shape) == tuple(v.shape) for k, v in expected.items())


def test_ntech_fp16_checkpoint_imports_and_matches(tmp_path, manifest):
    source = calibrate(lukemelas_b0(), seeded(2, 3, 224, 192, seed=0))
    randomise_head(source._fc)
    path = tmp_path / "ntech_b0.pth"
    torch.save({k: v.half() for k, v in source.state_dict().items()}, path)  # copy_weights.py: plain fp16
    source.load_state_dict({k: v.half().float() for k, v in source.state_dict().items()})  # the same rounding
    result = import_checkpoint("ntech", path, name="ntech", arch="timm/tf_efficientnet_b0", ensemble=manifest)
    assert max_difference(source, imported_model(result), seeded(2, 3, 224, 192)) <= TOLERANCE
    spec = result.spec
    assert (spec.input.shape, spec.input.margin, spec.input.resize, spec.input.resize_to) == (
        (224, 192), 0.25, "short_side_center_crop", 224)
    assert (spec.aggregation, spec.video_score, spec.positive_class) == ("sharpen", "pool", "FAKE")
    assert any(note.startswith("cast to float32: 360 float16") for note in result.notes)
    assert any(note.startswith("check: timm equals efficientnet_pytorch") for note in result.notes)
    stage0 = "_blocks.i.* -> blocks.s.j.* (stage-0 depthwise-separable block renames)"
    assert result.renames[stage0] == 16 and result.renames["_fc.* -> classifier.*"] == 2


def test_polimi_efficientnet_imports_and_matches(tmp_path, manifest):
    source = calibrate(PolimiEfficientNet(), seeded(2, 3, 224, 224, seed=0))
    randomise_head(source.classifier)
    path = tmp_path / "EfficientNetB0_DFDC_bestval.pth"
    torch.save(source.state_dict(), path)
    result = import_checkpoint("polimi", path, name="polimi", arch="timm/tf_efficientnet_b0", ensemble=manifest)
    assert max_difference(source, imported_model(result), seeded(2, 3, 224, 224)) <= TOLERANCE
    spec = result.spec
    assert (spec.input.size, spec.input.margin, spec.input.margin_sides, spec.input.margin_of, spec.input.margin_cut,
            spec.input.resize, spec.input.interpolation, spec.input.mean, spec.aggregation) == (
        224, 0.2, (1, 2, 1, 1), "height", "round", "pad_stretch", ("linear", "linear"), (0.485, 0.456, 0.406),
        "logit_mean")
    assert result.renames["efficientnet.* -> *"] == 358


@pytest.mark.slow
def test_polimi_b4_at_224_is_accepted_with_a_warning(tmp_path, manifest):
    """Equal to efficientnet_pytorch 0.6.3 at 224; polimi did not pin it, so the 0.7+ padding is named."""
    path = tmp_path / "EfficientNetB4_DFDC_bestval.pth"
    torch.save(PolimiEfficientNet("efficientnet-b4").state_dict(), path)
    result = import_checkpoint("polimi", path, name="b4", ensemble=manifest)
    assert result.spec.arch == "timm/tf_efficientnet_b4" and result.spec.input.size == 224
    assert any(note.startswith("check: timm equals efficientnet_pytorch 0.6.3 at 224x224") for note in result.notes)
    assert any("baked for 380 px" in note and "blocks.2.0.conv_dw" in note for note in result.notes)


def test_polimi_b4_padding_of_efficientnet_pytorch_07_differs_at_224():
    """>= 0.7 bakes B4's padding for 380 px: at 224 one stride-2 convolution pads otherwise than timm's."""
    with torch.device("meta"):
        b4, b0 = (timm.create_model(f"tf_efficientnet_b{n}", num_classes=1) for n in (4, 0))
    assert baked_padding_differences(b4, 380, (224, 224)) == ["blocks.2.0.conv_dw"]
    assert baked_padding_differences(b4, 380, (380, 380)) == []
    assert baked_padding_differences(b0, 224, (224, 224)) == []


@pytest.mark.slow
def test_polimi_xception_imports_and_matches(tmp_path, manifest):
    source = calibrate(PolimiXception(), seeded(2, 3, 128, 128, seed=0))
    randomise_head(source.xception.last_linear)
    path = tmp_path / "Xception_DFDC_bestval.pth"
    torch.save(source.state_dict(), path)
    result = import_checkpoint("polimi", path, name="px", arch="timm/legacy_xception", ensemble=manifest)
    assert max_difference(source, imported_model(result), seeded(2, 3, 128, 128)) <= TOLERANCE
    assert result.renames == {"xception.* -> *": len(source.state_dict()), "last_linear.* -> fc.*": 2}


MEDICS_3D = {  # arch: (arch kwargs, a small clip)
    "i3d": ({}, (2, 3, 8, 64, 64)),
    "resnet34_3d": ({"shortcut_type": "A"}, (2, 3, 8, 64, 64)),
    "mc3_18": ({}, (2, 3, 8, 64, 64)),
    "r2plus1d_18": ({}, (2, 3, 8, 64, 64)),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(MEDICS_3D))
def test_medics_3d_checkpoint_imports_and_matches(tmp_path, manifest, arch):
    kwargs, shape = MEDICS_3D[arch]
    source = calibrate(create_model(arch, num_classes=2, **kwargs), seeded(*shape, seed=0))
    state = source.state_dict()
    if arch == "i3d":  # saved from nn.DataParallel
        state = DataParallel(source).state_dict()
    path = tmp_path / f"{arch}.model"
    torch.save(state, path)
    result = import_checkpoint("medics", path, name=arch, arch=arch, positive_class="REAL", ensemble=manifest)
    assert max_difference(source, imported_model(result), seeded(*shape)) <= TOLERANCE
    spec = result.spec
    assert spec.arch_kwargs == {**kwargs, "num_classes": 2} and spec.positive_class == "REAL"
    assert (spec.kind, spec.input.box, spec.input.margin, spec.input.resize, spec.tta) == (
        "clip", "track_union", 0.0, "pad_bottom_right", ("hflip",))
    expected = {"i3d": (224, 256, 64, (0.5, 0.5, 0.5)), "resnet34_3d": (224, 256, 32, (1 / 255,) * 3),
                "mc3_18": (224, 256, 32, (0.229, 0.224, 0.225)), "r2plus1d_18": (112, 128, 32, (0.229, 0.224, 0.225))}
    assert (spec.input.size, spec.input.resize_to, spec.input.frames, spec.input.std) == expected[arch]


@pytest.mark.slow
def test_medics_2d_seresnext_imports_and_matches(tmp_path, manifest):
    source = calibrate(MedicsSingleHead(), seeded(2, 3, 128, 128, seed=0))
    randomise_head(source.fc)
    path = tmp_path / "seresnext50.pth"
    torch.save(source.state_dict(), path)
    result = import_checkpoint("medics", path, name="sx", arch="timm/legacy_seresnext50_32x4d", ensemble=manifest)
    assert max_difference(source, imported_model(result), seeded(2, 3, 128, 128)) <= TOLERANCE
    spec = result.spec
    assert (spec.input.size, spec.input.resize, spec.input.interpolation, spec.aggregation) == (
        256, "stretch", ("cubic", "cubic"), "median")
    assert result.renames["fc.* -> last_linear.*"] == 2


@pytest.mark.slow
def test_wm_xception_imports_with_its_fixed_positive_class(tmp_path, manifest):
    source = pretrainedmodels.xception(num_classes=1000, pretrained=None)
    source.last_linear = nn.Linear(2048, 2)
    calibrate(source, seeded(2, 3, 128, 128, seed=0))
    randomise_head(source.last_linear)
    path = tmp_path / "xception-best.pth"
    torch.save({"epoch": 19, "arch": "xception", "acc1": torch.tensor(97.25), "state_dict": source.state_dict()}, path)
    result = import_checkpoint("wm", path, name="wm", ensemble=manifest)  # no --positive-class: column 1 = FAKE
    assert max_difference(source, imported_model(result), seeded(2, 3, 128, 128)) <= TOLERANCE
    spec = result.spec
    assert (spec.arch, spec.arch_kwargs, spec.positive_class) == ("timm/legacy_xception", {"num_classes": 2}, "FAKE")
    assert (spec.input.size, spec.input.resize, spec.input.mean, spec.input.interpolation) == (
        299, "stretch", (0.5, 0.5, 0.5), ("linear", "linear"))


def test_plain_safetensors_with_prefix_strips_and_renames(tmp_path, manifest):
    source = calibrate(timm.create_model("tf_efficientnet_b0", num_classes=1), seeded(2, 3, 128, 128, seed=0))
    state = {("net." + k).replace("net.classifier.", "net.head."): v for k, v in source.state_dict().items()}
    path = tmp_path / "mine.safetensors"
    save_file(state, str(path))
    result = import_checkpoint("plain", path, name="mine", arch="timm/tf_efficientnet_b0", ensemble=manifest,
                               strip_prefixes=["net."], renames=["head.=classifier."], overrides={"margin": 0.1})
    assert max_difference(source, imported_model(result), seeded(2, 3, 128, 128)) <= TOLERANCE
    assert (result.spec.input.size, result.spec.input.margin) == (224, 0.1)  # timm's default input, the flag
    assert result.renames == {"net.* -> *": 360, "head.* -> classifier.*": 2}


def test_reimport_replaces_the_entry(tmp_path, manifest):
    path = save_selimsef(tmp_path / "final_b0", DeepFakeClassifier())
    first = import_checkpoint("selimsef", path, name="n", arch="timm/tf_efficientnet_b0", ensemble=manifest)
    second = import_checkpoint("selimsef", path, name="n", arch="timm/tf_efficientnet_b0", ensemble=manifest,
                               weight=2.0, overrides={"margin": 0.25, "aggregation": "mean"})
    assert not first.replaced and second.replaced
    models = json.loads(manifest.read_text())["models"]
    assert [m["name"] for m in models] == ["meso4_df", "n"]
    assert (models[1]["weight"], models[1]["input"]["margin"], models[1]["aggregation"]) == (2.0, 0.25, "mean")
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["ensemble.json", "n.safetensors"]


# --- refusals: one line, nothing written --------------------------------------------------------------------------


class NotADict(collections.OrderedDict):
    """A class of this test module: unpickling it would import and run this module's code."""


class RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def refused(manifest: Path, match: str, *args, **kwargs) -> str:
    before = folder_state(manifest.parent)
    with pytest.raises(ImportRefused, match=match) as refusal:
        import_checkpoint(*args, ensemble=manifest, **kwargs)
    message = str(refusal.value)
    assert "\n" not in message and len(message) < 400, message
    assert folder_state(manifest.parent) == before
    return message


def test_pickled_class_is_refused(tmp_path, manifest):
    path = tmp_path / "subclass.pth"
    torch.save({"state_dict": NotADict(w=torch.zeros(2))}, path)
    message = refused(manifest, "NotADict", "plain", path, arch="timm/tf_efficientnet_b0")
    assert "refused to unpickle" in message


def test_pickle_that_runs_a_command_is_refused_without_running_it(tmp_path, manifest):
    marker = tmp_path / "it-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": RunsACommand(marker)}, path)
    refused(manifest, "system", "selimsef", path)
    assert not marker.exists()


def test_two_outputs_without_positive_class_are_refused(tmp_path, manifest):
    path = tmp_path / "mc3.model"
    torch.save(create_model("mc3_18", num_classes=2).state_dict(), path)
    message = refused(manifest, "--positive-class", "medics", path, arch="mc3_18")
    assert "2-output" in message


def test_ntech_temporal_model_is_imported_not_refused(tmp_path, manifest):
    """Formerly refused: the 5-D `_expand_conv.conv.weight` now selects efficientnet_temporal (tests in
    test_ntech_temporal.py); a 2D --arch for it is refused, naming the architecture to use."""
    state = lukemelas_b0().state_dict()
    weight = state.pop("_blocks.1._expand_conv.weight")  # out x in x 1 x 1 -> Conv3d over 3 frames
    state["_blocks.1._expand_conv.conv.weight"] = weight.unsqueeze(2).repeat(1, 1, 3, 1, 1)
    path = tmp_path / "sequence_model.pth"
    torch.save(state, path)
    refused(manifest, "import it as efficientnet_temporal", "ntech", path, arch="timm/tf_efficientnet_b0")


def test_polimi_attention_is_imported_not_refused(tmp_path, manifest):
    """Formerly refused: `efficientnet.attconv.*` now selects efficientnet_autoatt (tests in
    test_polimi_variants.py); only the attention's shape is checked here."""
    state = PolimiEfficientNet().state_dict()
    state["efficientnet.attconv.weight"] = torch.zeros(1, 40, 1, 1)
    state["efficientnet.attconv.bias"] = torch.zeros(1)
    path = tmp_path / "EfficientNetAutoAttB4_DFDC_bestval.pth"
    torch.save(state, path)
    result = import_checkpoint("polimi", path, name="att", ensemble=manifest)
    assert (result.spec.arch, result.spec.arch_kwargs) == ("efficientnet_autoatt", {"variant": "b0", "num_classes": 1})


def test_missing_keys_are_named(tmp_path, manifest):
    source = DeepFakeClassifier()
    state = DataParallel(source).state_dict()
    del state["module.encoder.blocks.1.0.conv_pw.weight"]
    path = tmp_path / "final_b0"
    torch.save({"state_dict": state}, path)
    refused(manifest, r"missing 1 keys \(blocks\.1\.0\.conv_pw\.weight\)", "selimsef", path,
            arch="timm/tf_efficientnet_b0")


def test_wrong_efficientnet_variant_says_which(tmp_path, manifest):
    path = tmp_path / "ntech_b0.pth"
    torch.save(lukemelas_b0().state_dict(), path)
    refused(manifest, r"EfficientNet-b0: pass --arch timm/tf_efficientnet_b0", "ntech", path)  # preset: B7


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(ImportRefused, match=r"not found.*python -m zootools build"):
        import_checkpoint("wm", tmp_path / "any.pth", ensemble=tmp_path / "nowhere" / "ensemble.json")


def test_a_checkpoint_cut_short_is_refused_in_one_line(tmp_path, manifest, capsys):
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64), "b": torch.zeros(3)}}, whole)
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, legacy, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(ImportRefused, match="cut short or damaged"):
        read_checkpoint(cut)
    with pytest.raises(SystemExit) as stop:
        zootools.__main__.main(["import", "plain", str(cut), "--arch", "meso4", "--ensemble", str(manifest)])
    assert "cut short" in str(stop.value) and "\n" not in str(stop.value) and "Traceback" not in str(stop.value)
    for source in (whole, legacy):  # cut anywhere: a refusal, never another exception
        data = source.read_bytes()
        for length in range(1, len(data), 97):
            cut.write_bytes(data[:length])
            with pytest.raises(ImportRefused):
                read_checkpoint(cut)


def test_cli_flags_override_the_preset(tmp_path, manifest, capsys):
    path = save_selimsef(tmp_path / "final_b0", DeepFakeClassifier())
    zootools.__main__.main([
        "import", "selimsef", str(path), "--name", "flags", "--arch", "timm/tf_efficientnet_b0", "--ensemble",
        str(manifest), "--size", "224x192", "--margin", "none", "--resize", "short_side_center_crop", "--resize-to",
        "192", "--interpolation", "linear", "--aggregation", "median", "--video-score", "none", "--tta", "hflip",
        "--weight", "0.5", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"])
    entry = json.loads(manifest.read_text())["models"][-1]
    assert entry["input"] == {**entry["input"], "size": [224, 192], "margin": None, "resize": "short_side_center_crop",
                              "resize_to": 192, "interpolation": ["linear", "linear"], "mean": [0.5, 0.5, 0.5],
                              "std": [0.25, 0.25, 0.25]}
    assert (entry["aggregation"], entry["video_score"], entry["tta"], entry["weight"]) == (
        "median", None, ["hflip"], 0.5)
    assert "margin: the detector's" in capsys.readouterr().out
    zootools.__main__.main([
        "import", "selimsef", str(path), "--name", "polimi_like", "--arch", "timm/tf_efficientnet_b0",
        "--ensemble", str(manifest), "--margin", "0.2", "--margin-sides", "1,2,1,1", "--margin-of", "height",
        "--margin-cut", "round", "--resize", "pad_stretch", "--rounding", "round", "--pad", "reflect",
        "--precision", "float64", "--aggregation", "logit_mean"])
    entry = json.loads(manifest.read_text())["models"][-1]
    assert {k: entry["input"][k] for k in ("margin", "margin_sides", "margin_of", "margin_cut", "resize", "rounding",
                                           "pad", "precision")} == {
        "margin": 0.2, "margin_sides": [1, 2, 1, 1], "margin_of": "height", "margin_cut": "round",
        "resize": "pad_stretch", "rounding": "round", "pad": "reflect", "precision": "float64"}
    assert entry["aggregation"] == "logit_mean"
    assert "margin: 0.2 of the box's height, x [1.0, 2.0, 1.0, 1.0]" in capsys.readouterr().out


def test_cli_refusal_exits_with_the_reason(tmp_path, manifest, capsys):
    path = tmp_path / "mc3.model"
    torch.save(create_model("mc3_18", num_classes=2).state_dict(), path)
    with pytest.raises(SystemExit, match="refused: .*--positive-class"):
        zootools.__main__.main(["import", "medics", str(path), "--arch", "mc3_18", "--ensemble", str(manifest)])


# --- the command line on a built ensemble ---------------------------------------------------------------------------


def test_cli_imports_into_a_built_ensemble(ensemble_path, tmp_path, capsys):
    folder = Path(shutil.copytree(ensemble_path.parent, tmp_path / "weights"))
    manifest = folder / "ensemble.json"
    before = json.loads(manifest.read_text())
    source = calibrate(DeepFakeClassifier(), seeded(2, 3, 128, 128, seed=0))
    path = save_selimsef(tmp_path / "final_111_DeepFakeClassifier_tf_efficientnet_b0_ns_0_36", source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zootools.__main__.main(["import", "selimsef", str(path), "--name", "x", "--arch", "timm/tf_efficientnet_b0",
                               "--ensemble", str(manifest)])
    printed = capsys.readouterr().out
    assert "tensors loaded: 360" in printed and "encoder.classifier.*" in printed
    ensemble = load_ensemble(manifest)
    spec = next(s for s in ensemble.models if s.name == "x")
    assert (spec.arch, spec.input.size, spec.input.resize, spec.aggregation, spec.video_score) == (
        "timm/tf_efficientnet_b0", 380, "letterbox", "confident", "pool")
    after = json.loads(manifest.read_text())
    assert after["models"][:-1] == before["models"] and after["detector"] == before["detector"]
    model = ensemble.build_model(spec, "cuda")
    assert max_difference(source, model, seeded(1, 3, 128, 128)) <= TOLERANCE
