"""Bring your own models, end to end: checkpoints in the 1st place's, The Medics', NTech's and polimi's layouts,
imported with their presets, run beside the MesoNets on the shared DFDC and FF++ samples; every model scores every
video."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bench.standins import calibrate
from tests.helpers import run_kernel
from tests.test_importers import DeepFakeClassifier, PolimiEfficientNet, lukemelas_b0, save_selimsef, seeded
from weights import create_model, load_ensemble
from zootools.importing import import_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mixed(ensemble_path, tmp_path_factory) -> Path:
    """The default ensemble plus a 1st-place B0 stand-in (380 letterbox, margin 1/3, confident, pooled), an
    NTech-layout B0 (224 x 192, fp16 file, sharpen, pooled), a Medics-layout mc3_18 (track union, two outputs) and a
    polimi-layout B0 (round(0.2 h) margin, pad and stretch to 224, mean logit)."""
    folder = tmp_path_factory.mktemp("byom")
    manifest = Path(shutil.copytree(ensemble_path.parent, folder / "weights")) / "ensemble.json"
    torch.manual_seed(0)
    first = calibrate(DeepFakeClassifier(), seeded(2, 3, 128, 128, seed=0))
    import_checkpoint("selimsef", save_selimsef(folder / "final_111_b0", first), name="selimsef_b0",
                      arch="timm/tf_efficientnet_b0", ensemble=manifest)
    ntech = calibrate(lukemelas_b0(), seeded(2, 3, 224, 192, seed=0))
    torch.save({k: v.half() for k, v in ntech.state_dict().items()}, folder / "ntech_b0.pth")
    import_checkpoint("ntech", folder / "ntech_b0.pth", name="ntech_b0", arch="timm/tf_efficientnet_b0",
                      ensemble=manifest)
    medics = calibrate(create_model("mc3_18", num_classes=2), seeded(1, 3, 8, 112, 112, seed=0))
    torch.save(medics.state_dict(), folder / "mc3.model")
    import_checkpoint("medics", folder / "mc3.model", name="medics_mc3", arch="mc3_18", positive_class="REAL",
                      ensemble=manifest, overrides={"size": 112, "resize_to": 128, "frames": 16})
    polimi = calibrate(PolimiEfficientNet(), seeded(2, 3, 224, 224, seed=0))
    torch.save(polimi.state_dict(), folder / "polimi_b0.pth")
    import_checkpoint("polimi", folder / "polimi_b0.pth", name="polimi_b0", arch="timm/tf_efficientnet_b0",
                      ensemble=manifest)
    return manifest


def test_the_imported_entries_carry_their_sources_preprocessing(mixed):
    specs = {spec.name: spec for spec in load_ensemble(mixed).models}
    assert specs["selimsef_b0"].input.shape == (380, 380) and specs["selimsef_b0"].input.margin == pytest.approx(1 / 3)
    assert specs["selimsef_b0"].aggregation == "confident" and specs["selimsef_b0"].video_score == "pool"
    assert specs["ntech_b0"].input.shape == (224, 192) and specs["ntech_b0"].input.resize == "short_side_center_crop"
    assert specs["ntech_b0"].aggregation == "sharpen"
    assert specs["medics_mc3"].kind == "clip" and specs["medics_mc3"].input.box == "track_union"
    assert specs["medics_mc3"].input.resize == "pad_bottom_right" and specs["medics_mc3"].positive_class == "REAL"
    assert specs["medics_mc3"].input.precision == "float64"
    assert specs["polimi_b0"].input.resize == "pad_stretch" and specs["polimi_b0"].aggregation == "logit_mean"


def test_every_imported_model_scores_every_video(shared, mixed, tmp_path):
    folder = shared / "data" / "dfdc_sample"  # one representative: the 7 FF++ clips cost 70 s more and add no path
    rows, report = run_kernel(folder, tmp_path, mixed, "--frames-per-video", "8")
    names = {p.name for p in folder.rglob("*.mp4")}
    models = {spec.name for spec in load_ensemble(mixed).models}
    assert set(rows) == names and len(models) == 8
    for name, entry in report.items():
        assert not entry["fallback"], (name, entry["error"])
        assert set(entry["model_scores"]) == models and None not in entry["model_scores"].values(), entry
        assert 0.01 <= rows[name] <= 0.99
