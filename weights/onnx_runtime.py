"""Run an exported ONNX model with onnxruntime behind the same call as a PyTorch module."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from weights.checkpoint import WeightsError, sha256_of


class OnnxModule(nn.Module):
    """An onnxruntime session as an nn.Module: CUDA provider first when asked for a GPU, the CPU always behind it.

    `.to(device)` picks the providers, so the kernel's device fallback moves it to the CPU like any module.
    """

    def __init__(self, path: Path, sha256: str):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"ONNX model not found: {path}")
        actual = sha256_of(path)
        if actual != sha256:
            raise WeightsError(f"sha256 mismatch for {path}: manifest says {sha256}, file is {actual}")
        self.path = path
        self.device = torch.device("cpu")
        self.session = self._session(self.device)

    def _session(self, device: torch.device):
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        return onnxruntime.InferenceSession(str(self.path), providers=providers)

    def to(self, device=None, *args, **kwargs):
        device = torch.device(device) if device is not None else self.device
        if device.type != self.device.type:
            self.device = device
            self.session = self._session(device)
        return self

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        feed = {self.session.get_inputs()[0].name: np.ascontiguousarray(batch.detach().cpu().numpy(), np.float32)}
        return torch.from_numpy(self.session.run(None, feed)[0])
