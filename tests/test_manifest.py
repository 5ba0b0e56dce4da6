"""The ensemble manifest: the default one loads strictly; every kind of damage is a clear WeightsError."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from weights import WeightsError, load_ensemble
from zootools import export_onnx
from zootools.sources import MESONET_FILES


@pytest.fixture
def manifest_copy(ensemble_path, tmp_path):
    """A writable copy of the built weights folder; returns (manifest path, parsed JSON)."""
    folder = shutil.copytree(ensemble_path.parent, tmp_path / "weights")
    path = folder / "ensemble.json"
    return path, json.loads(path.read_text())


def test_default_manifest_lists_the_four_mesonets_with_hashes(ensemble_path):
    ensemble = load_ensemble(ensemble_path)
    assert [m.name for m in ensemble.models] == list(MESONET_FILES)
    assert all(len(m.sha256) == 64 and m.positive_class == "REAL" and m.input.size == 256 for m in ensemble.models)
    assert ensemble.blend.clamp == (0.01, 0.99) and ensemble.blend.fallback == 0.5
    assert {m.weight for m in ensemble.models} == {1.0}
    for spec in ensemble.models:  # onnxruntime on the CPU, PyTorch on a GPU
        assert spec.runtime == "auto" and (ensemble.root / spec.onnx).is_file()
        assert type(ensemble.build_model(spec, "cpu")).__name__ == "OnnxModule"
        on_gpu = ensemble.build_model(spec, "cuda")
        assert isinstance(on_gpu, torch.nn.Module) and type(on_gpu).__name__ != "OnnxModule"
        assert not on_gpu.training
    assert ensemble.build_detector() is not None
    assert ensemble.build_detector_onnx("cpu") is not None and ensemble.build_detector_onnx("cuda") is None


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])  # onnxruntime or PyTorch: the checkpoint is checked
def test_hash_mismatch_is_an_error(manifest_copy, device_type):
    path, data = manifest_copy
    data["models"][0]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    ensemble = load_ensemble(path)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        ensemble.build_model(ensemble.models[0], device_type)


def test_checkpoint_for_another_arch_is_an_error(manifest_copy):
    path, data = manifest_copy
    data["models"][0]["arch"] = "mesoinception4"  # a Meso4 checkpoint: keys do not fit
    path.write_text(json.dumps(data))
    ensemble = load_ensemble(path)
    with pytest.raises(WeightsError, match="does not fit"):
        ensemble.build_model(ensemble.models[0], "cuda")  # the PyTorch model a GPU builds


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_missing_checkpoint_is_an_error(manifest_copy, device_type):
    path, data = manifest_copy
    (path.parent / data["models"][1]["checkpoint"]).unlink()
    ensemble = load_ensemble(path)
    with pytest.raises(WeightsError, match="not found"):
        ensemble.build_model(ensemble.models[1], device_type)


@pytest.mark.parametrize("damage,message", [
    (lambda d: d.update(format=99), "unsupported manifest format"),
    (lambda d: d.update(models=[]), "lists no models"),
    (lambda d: d["blend"].update(clamp=[0.9, 0.1]), "blend clamp must satisfy 0 <= lo < hi"),
    (lambda d: d["blend"].update(fallback=0.999), "outside the clamp range"),
    (lambda d: d["models"][0].update(positive_class="maybe"), "positive_class"),
    (lambda d: d["models"][0].pop("checkpoint"), "malformed"),
    (lambda d: d["models"][1].update(name=d["models"][0]["name"]), "unique"),
    (lambda d: [m.update(weight=0.0) for m in d["models"]], "sum to zero"),
    (lambda d: d.update(decode={"sampling": "keyframes"}), "decode.sampling must be one of"),
    (lambda d: d["detector"].update(every=0), "detector.every must be a whole number >= 1"),
    (lambda d: d["detector"].update(every=2.5), "detector.every must be a whole number >= 1"),
    (lambda d: d["models"][0].update(onnx_layout="nhwc"), "onnx_layout must be one of"),
    (lambda d: d["detector"].update(onnx_layout="blocked"), "detector onnx_layout must be one of"),
])
def test_malformed_manifest_is_an_error(manifest_copy, damage, message):
    path, data = manifest_copy
    damage(data)
    path.write_text(json.dumps(data))
    with pytest.raises(WeightsError, match=message):
        load_ensemble(path)


def test_decoding_and_sparse_detection_are_manifest_settings(manifest_copy):
    path, data = manifest_copy
    built = load_ensemble(path)
    assert (built.decode.sampling, built.decode.deblocking, built.detector.every) == ("reference", True, 4)
    data.pop("decode")  # a manifest written before these settings gets the defaults
    data["detector"].pop("every")
    path.write_text(json.dumps(data))
    assert load_ensemble(path).decode == built.decode and load_ensemble(path).detector.every == 4
    data["decode"], data["detector"]["every"] = {"sampling": "exact", "deblocking": False}, 1
    path.write_text(json.dumps(data))
    ensemble = load_ensemble(path)
    assert (ensemble.decode.sampling, ensemble.decode.deblocking, ensemble.detector.every) == ("exact", False, 1)
    ensemble.save(path)
    assert json.loads(path.read_text())["decode"] == {"sampling": "exact", "deblocking": False}


def test_unknown_arch_is_named(manifest_copy):
    path, data = manifest_copy
    data["models"][0]["arch"] = "no_such_net"
    path.write_text(json.dumps(data))
    ensemble = load_ensemble(path)
    with pytest.raises(KeyError, match="no_such_net"):
        ensemble.build_model(ensemble.models[0], "cuda")  # the PyTorch model a GPU builds


def test_onnx_layout_reaches_the_session_and_changes_only_the_speed(ensemble_path, tmp_path, monkeypatch):
    """"nchw" keeps the exported convolutions (no blocked-layout nodes in the graph onnxruntime runs), "nchwc"
    blocks them; the two agree on the scores."""
    import onnx
    import onnxruntime

    ensemble = load_ensemble(ensemble_path)
    spec = next(m for m in ensemble.models if m.arch == "mesoinception4")
    real_session, graphs = onnxruntime.InferenceSession, {}

    def saving_session(path, options, **kwargs):  # keep the graph each session runs after its optimisations
        layout = "nchw" if "NchwcTransformer" in kwargs.get("disabled_optimizers", []) else "nchwc"
        options.optimized_model_filepath = graphs[layout] = str(tmp_path / f"{layout}.onnx")
        return real_session(path, options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", saving_session)
    modules = {layout: ensemble.build_model(dataclasses.replace(spec, onnx_layout=layout), "cpu")
               for layout in ("nchw", "nchwc")}
    domains = {layout: {node.domain for node in onnx.load(path).graph.node} for layout, path in graphs.items()}
    assert "com.microsoft.nchwc" in domains["nchwc"] and "com.microsoft.nchwc" not in domains["nchw"]
    assert {layout: module.layout for layout, module in modules.items()} == {"nchw": "nchw", "nchwc": "nchwc"}
    batch = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(modules["nchw"](batch), modules["nchwc"](batch), atol=1e-4)


@pytest.mark.parametrize("nchw,chosen", [(0.5, "nchw"), (0.79, "nchw"), (0.81, "nchwc"), (1.3, "nchwc")])
def test_export_leaves_the_default_layout_only_for_a_clearly_faster_one(monkeypatch, tmp_path, nchw, chosen):
    monkeypatch.setattr(export_onnx, "layout_seconds", lambda *args: {"nchwc": 1.0, "nchw": nchw})
    assert export_onnx.faster_layout(tmp_path / "model.onnx", "0" * 64, torch.zeros(4, 3, 8, 8)) == chosen
