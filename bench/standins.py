"""The default ensemble plus one untrained stand-in per DFDC team, each saved in that team's checkpoint layout and
brought in with `python -m zootools import SOURCE`, so the local leaderboard runs every source's preset end to end.

    python -m bench.standins --out DIR [--ensemble PATH]
    python bench/local_lb.py --set dfdc --ensemble DIR/ensemble.json

The weights are random (seeded) with BatchNorm statistics from one training-mode pass, so scores depend on the
input but mean nothing: the point is the inputs, rules and timings, and that the default models' figures stay put.
Small members stand in for the teams' large ones (B0 for the B7s and B4, r(2+1)D-18 at 112 for the 3D models).
Building the lukemelas layouts needs efficientnet_pytorch (`requirements-sources.txt`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from bench.manifests import manifest_copy
from weights import create_model, default_manifest
from zootools.importing import import_checkpoint


def calibrate(model: nn.Module, *inputs: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics of one training-mode pass (cumulative, so one pass sets them), then eval:
    with untouched statistics a random network's output hardly depends on its input."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for batch in inputs:
            model(batch)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return model.eval()


def noise(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def save_selimsef(folder: Path) -> Path:
    """The 1st place's layout: {"epoch", "state_dict" (DDP's `module.`, `encoder.` = a whole timm EfficientNet with
    its ImageNet head, `fc`), "bce_best": numpy float64}, no extension."""
    encoder = timm.create_model("tf_efficientnet_b0", pretrained=False)
    fc = nn.Linear(encoder.num_features, 1)
    calibrate(nn.Sequential(encoder), noise(2, 3, 128, 128))
    state = {f"module.encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"module.fc.{k}": v for k, v in fc.state_dict().items()})
    path = folder / "final_111_DeepFakeClassifier_tf_efficientnet_b0_0"
    torch.save({"epoch": 12, "state_dict": state, "bce_best": np.float64(0.2)}, path)
    return path


def lukemelas_b0() -> nn.Module:
    from efficientnet_pytorch import EfficientNet

    return calibrate(EfficientNet.from_name("efficientnet-b0", override_params={"num_classes": 1}),
                     noise(2, 3, 224, 192))


def save_ntech(folder: Path) -> Path:
    """NTech's layout: a plain fp16 state dict of efficientnet_pytorch 0.6.3's model."""
    path = folder / "ntech_b0.pth"
    torch.save({k: v.half() for k, v in lukemelas_b0().state_dict().items()}, path)
    return path


def save_polimi(folder: Path) -> Path:
    """polimi's layout: lukemelas' EfficientNet under `efficientnet.` (its `_fc` removed) + `classifier`."""
    state = {f"efficientnet.{k}": v for k, v in lukemelas_b0().state_dict().items() if not k.startswith("_fc.")}
    state.update({f"classifier.{k}": v for k, v in nn.Linear(1280, 1).state_dict().items()})
    path = folder / "polimi_b0.pth"
    torch.save(state, path)
    return path


def save_medics(folder: Path) -> Path:
    """The Medics' layout: torchvision's r2plus1d_18 with a 2-way head, a plain state dict (`.model`)."""
    model = calibrate(create_model("r2plus1d_18", num_classes=2), noise(1, 3, 8, 112, 112))
    path = folder / "r2p1.model"
    torch.save(model.state_dict(), path)
    return path


def save_wm(folder: Path) -> Path:
    """\\WM/'s Xception layout: {"epoch", "arch", "acc1", "state_dict"}, Cadene's names (`last_linear`, 2 outputs)."""
    model = calibrate(create_model("timm/legacy_xception", num_classes=2), noise(2, 3, 128, 128))
    state = {k.replace("fc.", "last_linear.", 1) if k.startswith("fc.") else k: v
             for k, v in model.state_dict().items()}
    path = folder / "xception-best.pth"
    torch.save({"epoch": 3, "arch": "xception", "acc1": 91.5, "state_dict": state}, path)
    return path


# source -> (how its checkpoint is written, import arguments)
STANDINS = {
    "selimsef": (save_selimsef, {"arch": "timm/tf_efficientnet_b0"}),
    "ntech": (save_ntech, {"arch": "timm/tf_efficientnet_b0"}),
    "medics": (save_medics, {"arch": "r2plus1d_18", "positive_class": "REAL"}),
    "wm": (save_wm, {}),
    "polimi": (save_polimi, {"arch": "timm/tf_efficientnet_b0"}),
}


def standin_ensemble(manifest: Path, folder: Path, sources=tuple(STANDINS)) -> Path:
    """folder/ensemble.json: `manifest`'s models (their weights where they are) plus a stand-in per source, named
    `SOURCE_standin`, imported from its checkpoint in folder/checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = manifest_copy(manifest, folder, lambda data: None)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    for source in sources:
        torch.manual_seed(0)
        save, arguments = STANDINS[source]
        import_checkpoint(source, save(checkpoints), name=f"{source}_standin", ensemble=copy, **arguments)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.standins", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the manifest and the stand-ins")
    parser.add_argument("--ensemble", type=Path, default=None, help="the ensemble to add to (default: the built one)")
    args = parser.parse_args()
    print(standin_ensemble(args.ensemble or default_manifest(), args.out))


if __name__ == "__main__":
    main()
