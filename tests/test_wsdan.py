"""\\WM/'s WS-DAN models: their class (tests.team_reference.TeamWSDAN, on Cadene's Xception and efficientnet_pytorch
0.6.3's B3), saved as their training script saved it ({"logs": numpy arrays, "state_dict", "feature_center"}),
imported in one command, give the same logits; the reader takes numpy arrays of plain numeric dtypes and still
refuses object arrays."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import zootools.__main__
from bench.standins import calibrate
from tests.team_reference import TeamWSDAN
from tests.test_importers import RunsACommand, manifest, refused  # noqa: F401 (manifest: a fixture)
from weights import create_model, load_ensemble
from weights.archs.wsdan import WM_FACES
from zootools.importing import ImportRefused, read_checkpoint
from zootools.importing.efficientnet_check import image_like

pytest.importorskip("efficientnet_pytorch")
pytest.importorskip("pretrainedmodels")

RELATIVE = 1e-5
BACKBONES = {"xception": ("wsdan_xception", 2048), "efficientnet": ("wsdan_efficientnet_b3", 1536)}


def faces(size: int, seed: int, count: int = 1) -> torch.Tensor:
    return image_like(count, (size, size), WM_FACES["mean"], WM_FACES["std"], seed=seed)


def team_model(net: str, size: int) -> TeamWSDAN:
    """Their WSDAN with random weights, BatchNorm statistics from picture-like faces, logits of order 1-10."""
    model = calibrate(TeamWSDAN(net, M=8, num_classes=2), faces(size, seed=5, count=2))
    with torch.no_grad():
        model.fc.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    return model


def save_as_they_did(model: TeamWSDAN, path: Path, numpy1: bool = False) -> Path:
    """train-wsdan.py's checkpoint: {"logs": their log dict of numbers and numpy arrays, "state_dict",
    "feature_center": a tensor}; with numpy1 the pickle names numpy 1.x's modules, as their numpy 1.15 wrote
    (in torch's legacy format, whose pickle is not inside a checksummed zip)."""
    logs = {"epoch": 12, "lr": 1e-3, "train_loss": np.float64(0.0831), "val_acc": np.array([97.25, 99.5]),
            "val_count": np.array(640, dtype=np.int64), "train_raw_acc": np.array([96.1], dtype=np.float32)}
    features = model.fc.in_features
    torch.save({"logs": logs, "state_dict": model.state_dict(), "feature_center": torch.randn(2, features)}, path,
               _use_new_zipfile_serialization=not numpy1)
    if numpy1:
        path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    return path


def import_and_compare(net: str, size: int, manifest_path: Path, tmp_path: Path, capsys,
                       dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """Their model saved, imported with one command, then both on the same faces in `dtype`: the max relative
    difference of the logits, and what the command printed."""
    source = team_model(net, size)
    path = save_as_they_did(source, tmp_path / "ckpt.pth", numpy1=net == "xception")
    zootools.__main__.main(["import", "wm", str(path), "--name", net, "--ensemble", str(manifest_path)])
    printed = capsys.readouterr().out
    arch, channels = BACKBONES[net]
    assert f"{arch} {{\"num_classes\": 2, \"num_attentions\": 8}}, 2 output(s), positive class FAKE" in printed
    assert "ignored beside the weights: logs, feature_center" in printed
    pixels = faces(size, seed=1).to(dtype)
    with torch.inference_mode():
        expected = source.to(dtype)(pixels)[0]
        actual = built(manifest_path, net, size).to(dtype)(pixels)
    assert actual.shape == (1, 2) and source.fc.in_features == 8 * channels
    return float((expected - actual).abs().max() / expected.abs().max()), printed


def built(manifest_path: Path, name: str, size: int) -> torch.nn.Module:
    """The imported model as the kernel builds it from the manifest; its entry at the team's size and mean/std."""
    ensemble = load_ensemble(manifest_path)
    spec = next(s for s in ensemble.models if s.name == name)
    assert (spec.input.size, spec.input.mean, spec.input.std) == (size, WM_FACES["mean"], WM_FACES["std"])
    return ensemble.build_model(spec, "cuda")


@pytest.mark.slow
def test_wsdan_xception_imports_in_one_command_and_matches_theirs(tmp_path, manifest, capsys):  # noqa: F811
    difference, printed = import_and_compare("xception", 320, manifest, tmp_path, capsys)
    assert difference <= RELATIVE
    assert "tensors loaded: 281" in printed and "dropped: nothing" in printed


@pytest.mark.slow
def test_wsdan_efficientnet_b3_imports_in_one_command_and_matches_theirs(tmp_path, manifest, capsys):  # noqa: F811
    """In float64: in float32 their own B3 WS-DAN is about 1.4e-5 (relative) from its float64 logits, the
    tolerance's size (the signed square root magnifies rounding near 0); the Xception's float32 logits are equal."""
    difference, printed = import_and_compare("efficientnet", 300, manifest, tmp_path, capsys, torch.float64)
    assert difference <= RELATIVE
    assert "tensors loaded: 579" in printed
    assert "EFN._fc.* (efficientnet_pytorch's ImageNet head, unused by WS-DAN) (2)" in printed


def test_wsdan_xception_has_their_keys_and_logits_at_a_small_size():
    """The cheap check of the Xception one: their state dict loads strictly as it is, equal logits at 64 px."""
    source = team_model("xception", 64)
    model = create_model("wsdan_xception").eval()
    assert list(model.state_dict()) == list(source.state_dict())
    model.load_state_dict(source.state_dict(), strict=True)
    pixels = faces(64, seed=1, count=2)
    with torch.inference_mode():
        expected, actual = source(pixels)[0], model(pixels)
    assert float((expected - actual).abs().max() / expected.abs().max()) <= RELATIVE


def test_the_reader_takes_plain_numeric_arrays_and_refuses_object_arrays(tmp_path):
    path = tmp_path / "ckpt.pth"
    for numpy1 in (False, True):
        logs = {"a": np.array([1.5, 2.0]), "b": np.array(3, dtype=np.int16), "c": np.float32(0.5), "d": np.bool_(1),
                "e": np.float64(0.1875)}
        torch.save({"logs": logs, "state_dict": {"w": torch.ones(2)}}, path, _use_new_zipfile_serialization=not numpy1)
        if numpy1:
            path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
        read = read_checkpoint(path)["logs"]
        assert all(np.array_equal(read[k], v) for k, v in logs.items())
    marker = tmp_path / "it-ran"
    for bad, refused_class in ((np.array([1, "x"], dtype=object), "ObjectDType"),
                               (np.array([RunsACommand(marker)], dtype=object), "ObjectDType"),
                               (np.array(["text"]), "StrDType")):
        torch.save({"logs": {"bad": bad}, "state_dict": {"w": torch.ones(2)}}, path)
        with pytest.raises(ImportRefused, match=refused_class):
            read_checkpoint(path)
    assert not marker.exists() and os.listdir(tmp_path) == ["ckpt.pth"]


def test_a_wsdan_checkpoint_holding_an_object_array_is_refused_writing_nothing(tmp_path, manifest):  # noqa: F811
    state = create_model("wsdan_xception", num_attentions=2).state_dict()
    path = tmp_path / "ckpt_x.pth"
    torch.save({"logs": {"history": np.array([{"acc": 1.0}], dtype=object)}, "state_dict": state}, path)
    message = refused(manifest, "ObjectDType", "wm", path)
    assert "nothing in it ran" in message
