"""polimi's EfficientNetAutoAtt and siamese-tuned (ST) variants: each imports with one command, its architecture
found from the keys, and equals fornet's class built on efficientnet_pytorch 0.6.3 (tests/team_networks.py) on
image-like faces; B0 stand-ins, B4's layout checked on the meta device."""
from __future__ import annotations

import pytest
import torch

from bench.standins import calibrate
from tests.team_networks import polimi_network
from tests.test_importers import imported_model, manifest, refused  # noqa: F401  (manifest: a fixture)
from weights import create_model
from zootools.importing import import_checkpoint, map_keys
from zootools.importing.efficientnet_check import image_like

TOLERANCE = 1e-5  # relative to the largest logit, both sides in float64 (float32's rounding alone reaches 1e-5)
ARCHS = ("efficientnet_autoatt", "efficientnet_st", "efficientnet_autoatt_st")
TENSORS = {"efficientnet_autoatt": 362, "efficientnet_st": 365, "efficientnet_autoatt_st": 367}  # B0


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: on a busy shared CPU OpenMP's spinning threads oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def team_b0(arch: str) -> torch.nn.Module:
    """fornet's class with B0, BatchNorm statistics (the ST head's too) from image-like faces, a head of order 1."""
    torch.manual_seed(3)
    team = calibrate(polimi_network(arch), image_like(8, (96, 96), seed=0))
    head = team.classifier[1] if arch.endswith("_st") else team.classifier
    with torch.no_grad():
        head.weight.normal_(0, 0.1)
    return team


def relative_difference(team: torch.nn.Module, model: torch.nn.Module, faces: torch.Tensor) -> float:
    team, model, faces = team.double(), model.double(), faces.double()
    with torch.inference_mode():
        expected, actual = team(faces), model(faces)
    assert actual.shape == expected.shape == (len(faces), 1)
    return float((actual - expected).abs().max() / expected.abs().max())


def snapshot(team: torch.nn.Module) -> dict:
    """train_binclass.py's save_model: the state under `net`, with the optimizer's state and the run's numbers."""
    optimizer = torch.optim.Adam(team.parameters(), lr=1e-5)
    for parameter in team.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # zero gradients: Adam's state exists, the weights stay
    return dict(net=team.state_dict(), opt=optimizer.state_dict(), train_loss=0.31, val_loss=0.35,
                iteration=20000, batch_size=32, epoch=7)


@pytest.mark.parametrize("arch", ARCHS)
def test_polimi_variant_imports_without_arch_and_matches(tmp_path, manifest, arch):  # noqa: F811
    team = team_b0(arch)
    path = tmp_path / f"{arch}_DFDC_bestval.pth"
    # the released files are plain state dicts; a training snapshot holds it under `net`
    torch.save(snapshot(team) if arch == "efficientnet_autoatt_st" else team.state_dict(), path)
    result = import_checkpoint("polimi", path, name="p", ensemble=manifest)
    spec = result.spec
    assert (spec.arch, spec.arch_kwargs, spec.kind) == (arch, {"variant": "b0", "num_classes": 1}, "frame")
    assert (spec.input.size, spec.input.margin, spec.input.margin_sides, spec.input.margin_of, spec.input.resize,
            spec.aggregation, spec.video_score) == (224, 0.2, (1, 2, 1, 1), "height", "pad_stretch", "logit_mean",
                                                    "pool")
    assert result.tensors == TENSORS[arch]
    assert any(note.startswith("check: timm equals efficientnet_pytorch 0.6.3 at 224x224") for note in result.notes)
    if arch.endswith("_st"):
        assert result.dropped == {"feat_ext.classifier.* (polimi's unused head: siamese tuning classifies with "
                                  "`classifier`)": 2}
    assert relative_difference(team, imported_model(result), image_like(3, (96, 96), seed=5)) <= TOLERANCE


def test_polimi_b4_variants_keys_and_shapes_equal_fornet():
    """Names and shapes only (meta device): fornet's B4 classes map onto the B4 archs; the attention sits on
    lukemelas' block 9 (56 channels) there, timm's stage 2."""
    for arch, tensors in (("efficientnet_autoatt", 708), ("efficientnet_autoatt_st", 713)):
        with torch.device("meta"):
            team = polimi_network(arch, "efficientnet-b4")
            expected = create_model(arch).state_dict()
        efficientnet = team.feat_ext.efficientnet if arch.endswith("_st") else team.efficientnet
        assert efficientnet.att_block_idx == 9 and expected["attconv.weight"].shape == (1, 56, 1, 1)
        keymap = map_keys("polimi", team.state_dict(), "timm/tf_efficientnet_b4")
        assert {k: tuple(v.shape) for k, v in keymap.state.items()} == {k: tuple(v.shape) for k, v in
                                                                        expected.items()}
        assert len(expected) == tensors


def test_an_attention_checkpoint_into_the_plain_arch_is_refused(tmp_path, manifest):  # noqa: F811
    path = tmp_path / "EfficientNetAutoAttB0_DFDC_bestval.pth"
    torch.save(polimi_network("efficientnet_autoatt").state_dict(), path)
    refused(manifest, r"EfficientNetAutoAtt .*import it as efficientnet_autoatt", "polimi", path,
            arch="timm/tf_efficientnet_b0")
