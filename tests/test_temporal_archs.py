"""Temporal 2D archs (TSM, CNN + RNN) and timm models through the registry: shapes, strict round trips, and
that TSM's shift really mixes neighbouring frames."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from weights.archs.temporal import temporal_shift
from weights.checkpoint import WeightsError, load_checkpoint
from weights.registry import create_model

SIZE = 64
SMALL_ARCHS = {
    "tsm": dict(backbone="resnet18", num_segments=4),
    "cnn_rnn": dict(backbone="efficientnet_b0", hidden_size=32),
}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """One intra-op thread: these models are tiny, and a busy shared CPU makes OpenMP's spinning threads
    oversubscribe it (an efficientnet_b0 batch then takes seconds instead of a fraction of one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_clips(batch: int, time: int, size: int = SIZE) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, time, 3, size, size)


def build(arch: str, **overrides) -> torch.nn.Module:
    """A small untrained `arch` in eval mode (train-mode batch norm would mix statistics across frames)."""
    return create_model(arch, **{**SMALL_ARCHS[arch], **overrides}).eval()


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_forward_gives_one_finite_logit_per_clip(arch):
    with torch.no_grad():
        logits = build(arch)(random_clips(2, 4))
    assert logits.shape == (2, 1)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_safetensors_round_trip_loads_strictly_and_reproduces_outputs(arch, tmp_path: Path):
    model = build(arch)
    path = tmp_path / f"{arch}.safetensors"
    save_file(model.state_dict(), str(path))
    reloaded = load_checkpoint(build(arch), path)
    clips = random_clips(1, 4)
    with torch.no_grad():
        assert torch.equal(reloaded(clips), model(clips))


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_renamed_key_raises_weights_error(arch, tmp_path: Path):
    state = build(arch).state_dict()
    name = next(iter(state))
    state["renamed." + name] = state.pop(name)
    path = tmp_path / "renamed.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError):
        load_checkpoint(build(arch), path)


def test_temporal_shift_moves_one_fold_each_way_with_zero_padding():
    # One clip of 3 frames, 4 channels, shift_div 4: channel 0 comes from t+1, channel 1 from t-1, 2-3 stay.
    frames = torch.arange(1.0, 13.0).view(3, 4, 1, 1)
    shifted = temporal_shift(frames, num_segments=3, shift_div=4).view(3, 4)
    expected = torch.tensor([[5.0, 0.0, 3.0, 4.0], [9.0, 2.0, 7.0, 8.0], [0.0, 6.0, 11.0, 12.0]])
    assert torch.equal(shifted, expected)


def first_block_change_per_frame(
    model: torch.nn.Module, clip: torch.Tensor, changed_frame: int, takes_clips: bool
) -> torch.Tensor:
    """How much the output of layer1[0] changes in each frame when one input frame is replaced by noise.

    `model` takes the clip itself (TSM) or, if not `takes_clips`, its frames flattened into a batch.
    """
    outputs = []
    hook = model.layer1[0].register_forward_hook(lambda module, inputs, output: outputs.append(output))
    edited = clip.clone()
    edited[:, changed_frame] = torch.randn_like(edited[:, changed_frame])
    with torch.no_grad():
        for frames in (clip, edited):
            model(frames if takes_clips else frames.flatten(0, 1))
    hook.remove()
    return (outputs[1] - outputs[0]).abs().flatten(1).amax(dim=1)


def test_tsm_shift_lets_a_frame_reach_exactly_its_neighbours():
    # After one residual block the stem is still per frame, so a change in frame 3 can reach frames 2 and 4
    # only through the shift. The same weights in plain timm ResNet-18 (no shift) keep it in frame 3.
    frames, changed = 6, 3
    tsm = build("tsm", num_segments=frames)
    # timm zero-initialises each block's last batch-norm scale, which would silence the residual branch.
    for module in tsm.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    plain = timm.create_model("resnet18", pretrained=False, num_classes=1).eval()
    plain.load_state_dict(tsm.state_dict())
    clip = random_clips(1, frames)

    tsm_reached = first_block_change_per_frame(tsm, clip, changed, takes_clips=True) > 0
    plain_reached = first_block_change_per_frame(plain, clip, changed, takes_clips=False) > 0

    assert tsm_reached.tolist() == [False, False, True, True, True, False]
    assert plain_reached.tolist() == [False, False, False, True, False, False]


def test_tsm_state_dict_is_exactly_timms():
    tsm_state = create_model("tsm", backbone="resnet18").state_dict()
    timm_state = timm.create_model("resnet18", pretrained=False, num_classes=1).state_dict()
    assert list(tsm_state) == list(timm_state)
    assert all(tsm_state[key].shape == timm_state[key].shape for key in timm_state)


def test_tsm_rejects_a_clip_length_other_than_num_segments():
    with pytest.raises(ValueError, match="num_segments"):
        build("tsm", num_segments=4)(random_clips(1, 5))


def test_tsm_rejects_a_backbone_outside_the_resnet_family():
    with pytest.raises(ValueError, match="ResNet"):
        create_model("tsm", backbone="efficientnet_b0")


@pytest.mark.parametrize(
    "variant",
    [
        dict(rnn="lstm", spp_levels=(1, 2, 4)),
        dict(rnn="gru"),
        dict(rnn="lstm", bidirectional=True),
        dict(rnn="gru", bidirectional=True, num_layers=2, dropout=0.1, spp_levels=(1, 2)),
    ],
    ids=["lstm-spp", "gru", "bilstm", "bigru-2layers-spp"],
)
def test_cnn_rnn_variants_take_any_clip_length(variant):
    model = build("cnn_rnn", **variant)
    with torch.no_grad():
        for time in (1, 5):
            logits = model(random_clips(2, time))
            assert logits.shape == (2, 1)
            assert torch.isfinite(logits).all()


def test_cnn_rnn_submodules_and_parameter_free_spp():
    model = build("cnn_rnn", spp_levels=(1, 2, 4))
    assert [name for name, _ in model.named_children()] == ["backbone", "spp", "rnn", "head"]
    assert not list(model.spp.parameters())
    # SPP over efficientnet_b0's 1280 channels: 1 + 4 + 16 cells each.
    assert model.rnn.input_size == 1280 * 21


@pytest.mark.parametrize("name", ["efficientnet_b0", "xception41", "mixnet_s", "seresnext26d_32x4d"])
def test_any_timm_architecture_builds_with_one_output(name):
    model = create_model(f"timm/{name}").eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, SIZE, SIZE))
    assert logits.shape == (1, 1)


def test_unknown_timm_architecture_raises_key_error_naming_it():
    with pytest.raises(KeyError, match="nope"):
        create_model("timm/nope")
