"""NTech's sequence model: `efficientnet_temporal` equals their TrackSequencesClassifier network (efficientnet_pytorch
0.6.3 with Conv3d expansions, tests/team_networks.py) on image-like clips, imported with one command from their
plain fp16 state dict; its temporal convolution mixes exactly the neighbouring frames."""
from __future__ import annotations

import json

import pytest
import torch

import zootools.__main__
from bench.standins import calibrate
from tests.team_networks import clips_like, ntech_sequence_model
from tests.test_importers import imported_model, manifest, refused  # noqa: F401  (manifest: a fixture)
from weights import create_model
from weights.archs.team_efficientnets import TemporalPointwise
from zootools.importing import import_checkpoint, map_keys

# relative to the largest logit, both sides in float64: in float32 the two implementations' rounding alone (SE pooling,
# summation order) reaches 1e-5 of the logits on some random networks
TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: on a busy shared CPU OpenMP's spinning threads oversubscribe it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_fp16(team: torch.nn.Module, path) -> None:
    """copy_weights.py: every tensor .half(), a plain state dict; the team's model then runs those weights."""
    state = {k: v.half() for k, v in team.state_dict().items()}
    torch.save(state, path)
    team.load_state_dict({k: v.float() for k, v in state.items()})


def relative_difference(team: torch.nn.Module, model: torch.nn.Module, clips: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs| over every frame's logit (theirs: (N*T) x 1, ours: N x T x 1), in float64."""
    team, model, clips = team.double(), model.double(), clips.double()
    with torch.inference_mode():
        expected, actual = team(clips.flatten(0, 1)), model(clips)
    assert actual.shape == (*clips.shape[:2], 1)
    return float((actual.flatten(0, 1) - expected).abs().max() / expected.abs().max())


def test_temporal_pointwise_sees_the_previous_this_and_next_frame():
    torch.manual_seed(0)
    layer = TemporalPointwise(4, 5, frames=3)
    frames = torch.randn(2 * 3, 4, 2, 2)  # two clips of three frames, sequence-major
    weight = layer.conv.weight[:, :, :, 0, 0]  # out x in x (previous, this, next)
    clips = frames.view(2, 3, 4, 2, 2)
    padded = torch.cat([torch.zeros_like(clips[:, :1]), clips, torch.zeros_like(clips[:, :1])], dim=1)
    expected = sum(torch.einsum("oi,ntihw->ntohw", weight[:, :, k], padded[:, k:k + 3]) for k in range(3))
    with torch.no_grad():
        assert torch.allclose(layer(frames), expected.flatten(0, 1), atol=1e-6)


def test_temporal_b7_keys_and_shapes_equal_ntech_sequence_model():
    """Names and shapes only (meta device): NTech's B7 state dict maps onto efficientnet_temporal's B7, 51
    Conv3d expansions at blocks.s.j.conv_pw.conv.weight."""
    with torch.device("meta"):
        state = ntech_sequence_model("efficientnet-b7").state_dict()
        expected = create_model("efficientnet_temporal").state_dict()
    keymap = map_keys("ntech", state, "timm/tf_efficientnet_b7")
    assert {k: tuple(v.shape) for k, v in keymap.state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    temporal = [k for k, v in expected.items() if v.dim() == 5]
    assert len(expected) == 1200 and len(temporal) == 51
    assert expected["blocks.1.0.conv_pw.conv.weight"].shape == (192, 32, 3, 1, 1)


def test_ntech_temporal_b0_imports_with_one_command_and_matches(tmp_path, manifest, capsys):  # noqa: F811
    torch.manual_seed(0)
    team = calibrate(ntech_sequence_model("efficientnet-b0"), clips_like(2, 7, 64, 64, seed=0).flatten(0, 1))
    with torch.no_grad():  # logits of order 1
        team._fc.weight.normal_(0, 0.05)
    path = tmp_path / "snapshot_100000.fp16.pth"
    save_fp16(team, path)
    zootools.__main__.main(["import", "ntech", str(path), "--name", "ntech_seq", "--ensemble", str(manifest)])
    printed = capsys.readouterr().out
    assert "tensors loaded: 360" in printed and "check: timm equals efficientnet_pytorch 0.6.3 at 224x192" in printed
    entry = json.loads(manifest.read_text())["models"][-1]
    assert (entry["arch"], entry["arch_kwargs"], entry["kind"]) == (
        "efficientnet_temporal", {"variant": "b0", "frames": 7, "num_classes": 1}, "sequence")
    # predict.py: 7 consecutive frames sampled at 15 fps, a sequence every 14 of them, every other one flipped
    assert {k: entry["input"][k] for k in ("size", "frames", "stride", "box", "margin", "resize", "resize_to", "fps",
                                           "every", "flip")} == {
        "size": [224, 192], "frames": 7, "stride": 1, "box": "centre", "margin": 0.25,
        "resize": "short_side_center_crop", "resize_to": 224, "fps": 15.0, "every": 14, "flip": "alternate"}
    assert (entry["aggregation"], entry["video_score"]) == ("sharpen", "pool")

    from weights import load_ensemble

    ensemble = load_ensemble(manifest)
    model = ensemble.build_model(next(s for s in ensemble.models if s.name == "ntech_seq"), "cuda")
    assert relative_difference(team, model, clips_like(2, 7, 64, 64, seed=5)) <= TOLERANCE
    with torch.inference_mode():  # a later frame changes the earlier frames' logits: the model is temporal
        clips = clips_like(1, 7, 64, 64, seed=5).double()
        changed = clips.clone()
        changed[:, 6] = clips_like(1, 1, 64, 64, seed=9)[:, 0]
        assert (model(changed)[0, :6] - model(clips)[0, :6]).abs().max() > 1e-3


def test_a_temporal_checkpoint_into_a_2d_arch_is_refused(tmp_path, manifest):  # noqa: F811
    path = tmp_path / "sequence_model.pth"
    torch.save(ntech_sequence_model("efficientnet-b0").state_dict(), path)
    refused(manifest, r"NTech's sequence model .*import it as efficientnet_temporal", "ntech", path,
            arch="timm/tf_efficientnet_b0")


@pytest.mark.slow
def test_ntech_temporal_b7_round_trip_at_224x192(tmp_path, manifest):  # noqa: F811
    """The suite's one B7-sized round trip: NTech's B7 sequence model, fp16, imported without --arch."""
    torch.manual_seed(0)
    torch.set_num_threads(2)  # B7 on 7 frames is big enough to use both cores
    team = calibrate(ntech_sequence_model("efficientnet-b7"), clips_like(1, 7, 224, 192, seed=0).flatten(0, 1))
    with torch.no_grad():
        team._fc.weight.normal_(0, 0.05)
    path = tmp_path / "snapshot_100000.fp16.pth"
    save_fp16(team, path)
    result = import_checkpoint("ntech", path, name="ntech_seq_b7", ensemble=manifest)
    assert result.spec.arch_kwargs == {"variant": "b7", "frames": 7, "num_classes": 1} and result.tensors == 1200
    # B7's 55 blocks in float32: the features differ by 3.4e-5 of their scale, the logits by 1.6e-5 (measured)
    assert relative_difference(team, imported_model(result), clips_like(1, 7, 224, 192, seed=5)) <= TOLERANCE
