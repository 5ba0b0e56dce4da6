"""Export manifest models and the BlazeFace detector to ONNX, check onnxruntime against PyTorch, record the files.

An entry with an export runs on onnxruntime on the CPU and on PyTorch on a GPU (runtime "auto").
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from pathlib import Path

import numpy as np
import torch

from weights.archs.blazeface import PixelInputBlazeFace
from weights.checkpoint import sha256_of
from weights.manifest import ModelSpec, load_ensemble
from weights.onnx_runtime import LAYOUTS, OnnxModule

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
# Leave onnxruntime's default layout only when the other is clearly faster, so that timing noise cannot flip the
# choice for a network where both cost the same (Meso4: within 10% either way; MesoInception4: 55-65%).
LAYOUT_GAIN = 0.8
LAYOUT_ROUNDS = 5
LAYOUT_BATCH = 4


def example_input(spec: ModelSpec, batch: int) -> torch.Tensor:
    """A random input batch in the model's layout (frame, clip or sequence)."""
    (height, width), frames = spec.input.shape, spec.input.frames
    shape = {"frame": (batch, 3, height, width), "clip": (batch, 3, frames, height, width),
             "sequence": (batch, frames, 3, height, width)}[spec.kind]
    return torch.rand(shape, generator=torch.Generator().manual_seed(batch))


def export_onnx(manifest: Path, name: str, opset: int = 18) -> tuple[Path, float]:
    """Write NAME.onnx beside the manifest (batch size dynamic), check it, record it; return (path, max |diff|)."""
    ensemble = load_ensemble(manifest)
    specs = {spec.name: spec for spec in ensemble.models}
    if name not in specs:
        raise KeyError(f"{manifest} has no model {name!r}; it lists {', '.join(specs)}")
    torch_spec = dataclasses.replace(specs[name], runtime="torch")
    model = ensemble.build_model(torch_spec)
    path = ensemble.root / f"{name}.onnx"
    digest, difference = _export_checked(model, example_input(torch_spec, 2), example_input(torch_spec, 3), path,
                                         ["logits"], opset)
    layout = faster_layout(path, digest, example_input(torch_spec, LAYOUT_BATCH))
    onnx_spec = dataclasses.replace(torch_spec, runtime="onnx" if specs[name].runtime == "onnx" else "auto",
                                    onnx=path.name, onnx_sha256=digest, onnx_layout=layout)
    models = tuple(onnx_spec if spec.name == name else spec for spec in ensemble.models)
    dataclasses.replace(ensemble, models=models).save(manifest)
    log.info("%s: exported to %s, max |onnxruntime - torch| = %.2e", name, path, difference)
    return path, difference


def export_detector_onnx(manifest: Path, opset: int = 18) -> tuple[Path, float]:
    """Export the BlazeFace network (N x H x W x 3 pixels in, boxes and scores out; batch, height and width
    dynamic, the sides multiples of S / 8) beside the manifest."""
    ensemble = load_ensemble(manifest)
    if not ensemble.detector.arch.startswith("blazeface"):
        raise ValueError(f"only BlazeFace detectors export to ONNX, not {ensemble.detector.arch}")
    network = PixelInputBlazeFace(ensemble.build_detector()).eval()
    size = network.model.input_size
    cell = size // 8
    pixels = lambda batch, rows, cols: torch.rand(  # noqa: E731
        batch, rows * cell, cols * cell, 3, generator=torch.Generator().manual_seed(batch)) * 255
    path = ensemble.root / f"{ensemble.detector.arch}.onnx"
    # A landscape example and a portrait check: neither side may be specialised to the trained square.
    digest, difference = _export_checked(network, pixels(2, 8, 14), pixels(3, 10, 6), path, ["boxes", "scores"],
                                         opset, spatial_multiple=cell)
    layout = faster_layout(path, digest, pixels(LAYOUT_BATCH, 8, 8))
    detector = dataclasses.replace(ensemble.detector, onnx=path.name, onnx_sha256=digest, onnx_layout=layout)
    dataclasses.replace(ensemble, detector=detector).save(manifest)
    log.info("detector: exported to %s, max |onnxruntime - torch| = %.2e", path, difference)
    return path, difference


def _export_checked(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor, path: Path,
                    output_names: list[str], opset: int, spatial_multiple: int | None = None) -> tuple[str, float]:
    """Export with a dynamic batch size (and dynamic height and width, multiples of `spatial_multiple`, for an
    N x H x W x C input) and compare onnxruntime with PyTorch on another input size."""
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if spatial_multiple:
        dims[1] = spatial_multiple * torch.export.Dim("rows", min=1, max=1024)
        dims[2] = spatial_multiple * torch.export.Dim("cols", min=1, max=1024)
    input_name = next(iter(inspect.signature(model.forward).parameters))  # dynamic_shapes is keyed by it
    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=output_names,
                      dynamic_shapes={input_name: dims}, opset_version=opset, dynamo=True, verbose=False,
                      external_data=False)
    digest = sha256_of(path)
    difference = max_difference(model, OnnxModule(path, digest), check)
    if difference > TOLERANCE:
        raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {difference:.2e} (> {TOLERANCE})")
    return digest, difference


def max_difference(model: torch.nn.Module, onnx_model: OnnxModule, batch: torch.Tensor) -> float:
    """Largest absolute difference of the two models' outputs on one batch."""
    with torch.inference_mode():
        expected = model(batch)
    actual = onnx_model(batch)
    pairs = zip(expected, actual) if isinstance(expected, tuple) else [(expected, actual)]
    return max(float(np.abs(a.numpy() - e.numpy()).max()) for e, a in pairs)


def faster_layout(path: Path, sha256: str, batch: torch.Tensor) -> str:
    """The onnxruntime CPU layout that runs `batch` faster: "nchw" where it takes at most LAYOUT_GAIN of the
    default's CPU time, else the default "nchwc"."""
    seconds = layout_seconds(path, sha256, batch)
    chosen = "nchw" if seconds["nchw"] <= LAYOUT_GAIN * seconds["nchwc"] else "nchwc"
    log.info("%s: onnxruntime CPU layout %s (CPU s per batch of %d, one thread: %s)", path.name, chosen, len(batch),
             ", ".join(f"{layout} {value:.3f}" for layout, value in seconds.items()))
    return chosen


def layout_seconds(path: Path, sha256: str, batch: torch.Tensor) -> dict[str, float]:
    """Per layout, the median CPU time of one run over `batch` (one thread; the layouts' runs alternate)."""
    modules = {layout: OnnxModule(path, sha256, threads=1, layout=layout) for layout in LAYOUTS}
    seconds: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for module in modules.values():
        module(batch)  # the first run allocates
    for _ in range(LAYOUT_ROUNDS):
        for layout, module in modules.items():
            start = time.process_time()
            module(batch)
            seconds[layout].append(time.process_time() - start)
    return {layout: float(np.median(times)) for layout, times in seconds.items()}
