"""Every registered architecture builds, runs at its registered default input and round-trips its checkpoint
strictly; a manifest entry takes its architecture's defaults for what it leaves out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weights import (
    DetectorSpec,
    Ensemble,
    InputSpec,
    ModelSpec,
    WeightsError,
    arch_config,
    create_model,
    list_archs,
    load_checkpoint,
    load_ensemble,
    register_arch,
    sha256_of,
)
from weights.archs.mesonet import meso4
from weights.archs.mtcnn import MTCNN, MTCNNDetector
from weights.archs.retinaface import RetinaFace
from weights.registry import IMAGENET, KINETICS

HEAVY = {"i3d", "wsdan_xception", "wsdan_efficientnet_b3"}  # several seconds per forward pass on a 2-core CPU
# Architectures whose default is B4 or B7 run at their default input as B0 stand-ins (test_ntech_temporal.py has
# the one B7 round trip).
STAND_INS = {arch: {"variant": "b0"} for arch in ("efficientnet_temporal", "efficientnet_autoatt", "efficientnet_st",
                                                   "efficientnet_autoatt_st")}


def example_input(arch: str) -> torch.Tensor:
    """A seeded batch at the architecture's default input, in its kind's layout, normalised like its crops."""
    config = arch_config(arch)
    spec, generator = config.input, torch.Generator().manual_seed(0)
    shape = {"frame": (2, 3, *spec.shape), "clip": (1, 3, spec.frames, *spec.shape),
             "sequence": (1, spec.frames, 3, *spec.shape)}[config.kind]
    pixels = torch.rand(shape, generator=generator)
    channel = 1 if config.kind in ("frame", "clip") else 2
    view = [1] * len(shape)
    view[channel] = 3
    return (pixels - torch.tensor(spec.mean).view(view)) / torch.tensor(spec.std).view(view)


def run(model: torch.nn.Module, arch: str) -> list[torch.Tensor]:
    """The model's outputs at its default input; MTCNN (a cascade with no single input) detects on a frame, RetinaFace
    (whole frames of any size) runs on a small one."""
    with torch.inference_mode():
        if isinstance(model, RetinaFace):
            return list(model(torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 50))
        if isinstance(model, MTCNN):
            frame = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
            detector = MTCNNDetector.from_model(model, thresholds=(0.0, 0.0, 0.0))
            boxes, points = detector.detect_with_landmarks([frame])[0]
            return [torch.from_numpy(boxes), torch.from_numpy(points)]
        output = model(example_input(arch))
    return list(output) if isinstance(output, tuple) else [output]


def warm_batch_norm(model: torch.nn.Module, arch: str) -> None:
    """BatchNorm statistics from one training-mode pass, so outputs depend on every weight (untouched running
    statistics leave many networks nearly constant)."""
    if arch_config(arch).input is None:
        return
    model.train()
    with torch.no_grad():
        model(example_input(arch))
    model.eval()


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in list_archs()])
def test_every_arch_runs_at_its_default_input_and_round_trips_strictly(arch, tmp_path):
    torch.manual_seed(0)
    model = create_model(arch, **STAND_INS.get(arch, {})).eval()
    warm_batch_norm(model, arch)
    expected = run(model, arch)
    assert expected and all(torch.isfinite(t).all() for t in expected)
    config = arch_config(arch)
    if config.input is not None and config.kind != "frame" or arch in ("meso4", "mesoinception4"):
        logits = expected[0]  # one logit per clip, or per frame (efficientnet_temporal: 1 x T x 1)
        assert logits.shape[0] == (2 if config.kind == "frame" else 1)
        assert logits.numel() in (logits.shape[0], logits.shape[0] * config.input.frames)

    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    reloaded = load_checkpoint(create_model(arch, **STAND_INS.get(arch, {})), path, sha256_of(path))
    for before, after in zip(expected, run(reloaded, arch), strict=True):
        assert torch.equal(before, after)

    state = model.state_dict()
    state.pop(next(iter(state)))  # one key missing: a strict load refuses it, naming the file
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError, match="does not fit"):
        load_checkpoint(create_model(arch, **STAND_INS.get(arch, {})), path)


def test_every_arch_registers_a_kind_and_all_but_the_whole_frame_detectors_an_input():
    for arch in list_archs():
        config = arch_config(arch)
        assert config.kind in ("frame", "clip", "sequence")
        assert (config.input is None) == (arch in ("mtcnn", "retinaface_mobilenet", "retinaface_resnet50")), arch
    assert arch_config("r3d_18").input == InputSpec(112, frames=16, **KINETICS)
    assert arch_config("tsm").kind == "sequence" and arch_config("i3d").input.frames == 64


def test_timm_archs_take_timm_pretrained_input():
    assert arch_config("timm/efficientnet_b0").input == InputSpec(224, **IMAGENET)
    assert arch_config("timm/xception41").input.size == 299
    with pytest.raises(KeyError, match="no_such_net"):
        arch_config("timm/no_such_net")


def test_registering_a_name_twice_or_an_unknown_kind_is_refused():
    archs = list_archs()
    with pytest.raises(ValueError, match="already registered"):
        register_arch(meso4)
    with pytest.raises(ValueError, match="kind must be"):
        register_arch(kind="volume")
    assert list_archs() == archs


def untrained(folder: Path, arch: str) -> tuple[str, str]:
    path = folder / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in create_model(arch).state_dict().items()}, str(path))
    return path.name, sha256_of(path)


def test_a_manifest_entry_takes_its_arch_defaults_for_what_it_leaves_out(tmp_path):
    detector, detector_sha = untrained(tmp_path, "blazeface_back")
    r3d, r3d_sha = untrained(tmp_path, "r3d_18")
    meso, meso_sha = untrained(tmp_path, "meso4")
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({
        "format": 2,
        "detector": {"arch": "blazeface_back", "checkpoint": detector, "sha256": detector_sha, "min_score": 0.65},
        "models": [{"name": "r3d", "arch": "r3d_18", "checkpoint": r3d, "sha256": r3d_sha},
                   {"name": "r3d_short", "arch": "r3d_18", "checkpoint": r3d, "sha256": r3d_sha,
                    "input": {"frames": 8, "clips": 2}},
                   {"name": "meso", "arch": "meso4", "checkpoint": meso, "sha256": meso_sha,
                    "positive_class": "REAL"}],
    }))
    ensemble = load_ensemble(manifest)
    full, short, frame = ensemble.models
    assert full.kind == "clip" and full.input == InputSpec(112, frames=16, **KINETICS)
    assert short.kind == "clip" and short.input == InputSpec(112, frames=8, clips=2, **KINETICS)
    assert frame.kind == "frame" and frame.input == InputSpec(256)
    ensemble.save(manifest)  # written out whole: the defaults become explicit and read back the same
    assert load_ensemble(manifest).models == ensemble.models
    assert [f.path for f in ensemble.files()] == [detector, r3d, r3d, meso]
    assert ensemble.files()[1].label == "models[0] (r3d).checkpoint" and ensemble.files()[1].sha256 == r3d_sha


def test_an_entry_of_an_arch_without_defaults_must_give_its_input(tmp_path):
    spec = dict(name="x", arch="no_such_arch", checkpoint="x.safetensors", sha256="0" * 64)
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"format": 2, "detector": {"arch": "blazeface_back", "checkpoint": "d",
                                                              "sha256": "0" * 64, "min_score": 0.5},
                                    "models": [spec]}))
    with pytest.raises(WeightsError, match="malformed"):
        load_ensemble(manifest)
    ensemble = Ensemble(tmp_path, DetectorSpec("blazeface_back", "d", "0" * 64, 0.5),
                        (ModelSpec(**spec, input=InputSpec(64)),))
    with pytest.raises(KeyError, match="no_such_arch"):
        ensemble.build_model(ensemble.models[0], "cuda")
