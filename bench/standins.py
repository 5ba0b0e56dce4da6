"""Untrained stand-ins of the DFDC teams' models, each saved in that team's checkpoint layout and brought in with
`python -m zootools import SOURCE`, so the kernel and the local leaderboard run every source's preset end to end:
one stand-in per team added to the default ensemble, or one team's whole ensemble (`--team`: its models, detector
and blend, as in docs/bring-your-own-model.md).

    python -m bench.standins --out DIR [--ensemble PATH] [--team wm|ntech|polimi]
    python bench/local_lb.py --set dfdc --ensemble DIR/ensemble.json

The weights are random (seeded) with BatchNorm statistics from one training-mode pass, so scores depend on the
input but mean nothing: the point is the inputs, rules and timings, and that the default models' figures stay put.
Small members stand in for the teams' large ones (B0 for the B7s and B4, r(2+1)D-18 at 112 for the 3D models).
Building the lukemelas layouts needs efficientnet_pytorch (`requirements-sources.txt`).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from bench.manifests import manifest_copy
from weights import create_model, default_manifest, load_ensemble, sha256_of
from zootools.importing import import_checkpoint
from zootools.presets import PRESETS


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


def save_ntech_sequence(folder: Path) -> Path:
    """NTech's sequence model layout: the 2D keys in fp16, each expansion convolution a 5-D Conv3d weight
    `_blocks.N._expand_conv.conv.weight` (out, in, 3, 1, 1): here the 2D weight in the middle frame's slot and small
    random neighbours."""
    state = {}
    for key, value in lukemelas_b0().state_dict().items():
        if key.endswith("._expand_conv.weight"):
            temporal = 0.05 * noise(*value.shape[:2], 3, 1, 1) * value.std()
            temporal[:, :, 1] += value
            key, value = key.replace("._expand_conv.weight", "._expand_conv.conv.weight"), temporal
        state[key] = value.half()
    path = folder / "ntech_seq_b0.pth"
    torch.save(state, path)
    return path


def save_polimi_variant(folder: Path, attention: bool, siamese: bool) -> Path:
    """polimi's EfficientNetAutoAtt (`efficientnet.attconv.*` after the third stage) and siamese-tuned
    (`feat_ext.*` + `classifier.0` BatchNorm1d, `classifier.1` Linear; the unused `feat_ext.classifier`) layouts."""
    state = {f"efficientnet.{k}": v for k, v in lukemelas_b0().state_dict().items() if not k.startswith("_fc.")}
    if attention:  # B0's third stage ends with 40 channels (B4's: 56)
        state.update({f"efficientnet.attconv.{k}": v for k, v in nn.Conv2d(40, 1, 1).state_dict().items()})
    state.update({f"classifier.{k}": v for k, v in nn.Linear(1280, 1).state_dict().items()})
    if siamese:
        head = nn.Sequential(nn.BatchNorm1d(1280), nn.Linear(1280, 1))
        calibrate(head, noise(8, 1280))
        state = {f"feat_ext.{k}": v for k, v in state.items()}
        state.update({f"classifier.{k}": v for k, v in head.state_dict().items()})
    path = folder / f"polimi_b0{'_autoatt' if attention else ''}{'_st' if siamese else ''}.pth"
    torch.save(state, path)
    return path


def save_wsdan(folder: Path, backbone: str) -> Path:
    """\\WM/'s WS-DAN layout: {"logs": numpy arrays, "state_dict", "feature_center"}; `features.*` (Cadene's Xception
    names, timm's legacy_xception's) or `EFN.*` (efficientnet_pytorch's B3, its unused `_fc` included), then
    `attentions.conv`, `attentions.bn`, `fc` (2 x 8 C, no bias)."""
    if backbone == "xception":
        model = calibrate(create_model("wsdan_xception"), noise(2, 3, 160, 160))
        state = model.state_dict()
    else:
        from efficientnet_pytorch import EfficientNet

        efn = calibrate(EfficientNet.from_name("efficientnet-b3"), noise(2, 3, 160, 160))
        head = calibrate(nn.Sequential(nn.Conv2d(1536, 8, 1, bias=False), nn.BatchNorm2d(8, eps=1e-3)),
                         noise(2, 1536, 5, 5))
        state = {f"EFN.{k}": v for k, v in efn.state_dict().items()}
        state.update({f"attentions.conv.{k}": v for k, v in head[0].state_dict().items()})
        state.update({f"attentions.bn.{k}": v for k, v in head[1].state_dict().items()})
        state["fc.weight"] = 0.01 * noise(2, 8 * 1536)
    path = folder / f"ckpt_{backbone[0]}.pth"
    logs = {"train_loss": np.array([0.41, 0.33]), "val_acc": np.array([0.88, 0.91], np.float32)}
    torch.save({"logs": logs, "state_dict": state, "feature_center": noise(2, 8 * 1536)}, path)
    return path


@dataclass(frozen=True)
class Member:
    """One model of a team's ensemble: its name, how its checkpoint is written, import arguments, blend weight."""

    name: str
    save: Callable[[Path], Path]
    arguments: dict = field(default_factory=dict)
    weight: float = 1.0


# team -> its models (B0 stand-ins for the B7s and B4s; the real layouts otherwise) and the pools of its blend
TEAMS = {
    "wm": ([Member("wm_xception", save_wm, weight=0.2),
            Member("wm_wsdan_x", lambda folder: save_wsdan(folder, "xception"), weight=0.7),
            Member("wm_wsdan_b3", lambda folder: save_wsdan(folder, "efficientnet_b3"), weight=0.1)], []),
    "ntech": ([Member("ntech_m1", save_ntech, {"arch": "timm/tf_efficientnet_b0", "overrides": {
                   "resize_to": 192, "pad": "reflect", "share": [4, 0, 2]}}),
               Member("ntech_m2", save_ntech, {"arch": "timm/tf_efficientnet_b0"}),
               Member("ntech_seq", save_ntech_sequence)],
              [{"name": "ntech", "models": ["ntech_m1", "ntech_m2", "ntech_seq"], "aggregation": "sharpen"}]),
    "polimi": ([Member("polimi_b4", save_polimi, {"arch": "timm/tf_efficientnet_b0"}),
                Member("polimi_b4_st", lambda folder: save_polimi_variant(folder, False, True)),
                Member("polimi_autoatt_b4", lambda folder: save_polimi_variant(folder, True, False)),
                Member("polimi_autoatt_b4_st", lambda folder: save_polimi_variant(folder, True, True))],
               [{"name": "polimi", "models": ["polimi_b4", "polimi_b4_st", "polimi_autoatt_b4",
                                              "polimi_autoatt_b4_st"], "aggregation": "logit_mean"}]),
}


def team_ensemble(team: str, manifest: Path, folder: Path) -> Path:
    """folder/ensemble.json: one team's whole ensemble of stand-ins (TEAMS), each imported with
    `python -m zootools import`, with the team's detector where its preset has one (from `manifest`'s folder, where
    the build writes every detector) and its blend pools; nothing else of `manifest`."""
    members, pools = TEAMS[team]
    detector = PRESETS[team].get("detector")

    def with_team_detector(data: dict) -> None:
        if detector is not None:
            settings = {k: v for k, v in detector.items() if k != "arch"}
            weights = manifest.parent.resolve() / f"{detector['arch']}.safetensors"
            data["detector"] = {**data["detector"], "runtime": "auto", "onnx": None, "onnx_sha256": None, **settings,
                                "arch": detector["arch"], "checkpoint": str(weights), "sha256": sha256_of(weights)}

    folder.mkdir(parents=True, exist_ok=True)
    copy = manifest_copy(manifest, folder, with_team_detector)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    for member in members:
        torch.manual_seed(0)
        import_checkpoint(team, member.save(checkpoints), name=member.name, ensemble=copy, weight=member.weight,
                          **member.arguments)
    data = json.loads(copy.read_text())
    data["models"] = [entry for entry in data["models"] if entry["name"] in {m.name for m in members}]
    data.setdefault("blend", {})["pools"] = pools
    copy.write_text(json.dumps(data, indent=2) + "\n")
    load_ensemble(copy)
    return copy


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
    parser.add_argument("--ensemble", type=Path, default=None,
                        help="the ensemble to add to, or whose detectors a team uses (default: the built one)")
    parser.add_argument("--team", choices=sorted(TEAMS), default=None,
                        help="one team's whole ensemble of stand-ins instead (its detector and blend too)")
    args = parser.parse_args()
    manifest = args.ensemble or default_manifest()
    print(team_ensemble(args.team, manifest, args.out) if args.team else standin_ensemble(manifest, args.out))


if __name__ == "__main__":
    main()
