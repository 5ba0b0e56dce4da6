"""Export a manifest model to ONNX, check onnxruntime against PyTorch, and switch the entry to the ONNX runtime."""
from __future__ import annotations

import dataclasses
import inspect
import logging
from pathlib import Path

import numpy as np
import torch

from weights.checkpoint import sha256_of
from weights.manifest import ModelSpec, load_ensemble
from weights.onnx_runtime import OnnxModule

log = logging.getLogger(__name__)

TOLERANCE = 1e-4


def example_input(spec: ModelSpec, batch: int) -> torch.Tensor:
    """A random input batch in the model's layout (frame, clip or sequence)."""
    size, frames = spec.input.size, spec.input.frames
    shape = {"frame": (batch, 3, size, size), "clip": (batch, 3, frames, size, size),
             "sequence": (batch, frames, 3, size, size)}[spec.kind]
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
    batch = torch.export.Dim("batch", min=1, max=1024)
    input_name = next(iter(inspect.signature(model.forward).parameters))  # dynamic_shapes is keyed by it
    torch.onnx.export(model, (example_input(torch_spec, 2),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_shapes={input_name: {0: batch}}, opset_version=opset,
                      dynamo=True, external_data=False)
    digest = sha256_of(path)
    difference = max_difference(model, OnnxModule(path, digest), example_input(torch_spec, 3))
    if difference > TOLERANCE:
        raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {difference:.2e} (> {TOLERANCE})")
    onnx_spec = dataclasses.replace(torch_spec, runtime="onnx", onnx=path.name, onnx_sha256=digest)
    models = tuple(onnx_spec if spec.name == name else spec for spec in ensemble.models)
    dataclasses.replace(ensemble, models=models).save(manifest)
    log.info("%s: exported to %s, max |onnxruntime - torch| = %.2e", name, path, difference)
    return path, difference


def max_difference(model: torch.nn.Module, onnx_model: OnnxModule, batch: torch.Tensor) -> float:
    """Largest absolute difference of the two models' outputs on one batch."""
    with torch.inference_mode():
        expected = model(batch).numpy()
    return float(np.abs(onnx_model(batch).numpy() - expected).max())
