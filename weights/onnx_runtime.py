"""Run an exported ONNX model with onnxruntime behind the same call as a PyTorch module."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from weights.checkpoint import check_file

# onnxruntime's CPU layouts: "nchwc" converts convolutions to its blocked layout (the default at the highest
# optimisation level); "nchw" keeps them as exported. Networks of very few channels (MesoInception4: 1 to 16) spend
# a third of their time reordering into blocks; export measures both and records the faster (see export_onnx).
LAYOUTS = ("nchwc", "nchw")

class OnnxModule(nn.Module):
    """An onnxruntime session as an nn.Module: CUDA provider first when asked for a GPU, the CPU always behind it.

    `.to(device)` picks the providers, so the kernel's device fallback moves it to the CPU like any module.
    """

    def __init__(self, path: Path, sha256: str, threads: int | None = None, layout: str = "nchwc"):
        """`threads`: onnxruntime's intra-op threads per call (default: torch's thread count); `layout`: one of
        LAYOUTS, for the CPU provider."""
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"onnx layout must be one of {LAYOUTS}, not {layout!r}")
        path = Path(path)
        check_file(path, sha256, what="ONNX model")
        self.path = path
        self.threads = threads or torch.get_num_threads()
        self.layout = layout
        self.device = torch.device("cpu")
        self.session = self._session(self.device)
        self.eval()

    def _session(self, device: torch.device):
        import onnxruntime

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        # Idle threads would otherwise spin on the cores the video readers decode on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        disabled = ["NchwcTransformer"] if self.layout == "nchw" else []
        return onnxruntime.InferenceSession(str(self.path), options, providers=providers,
                                            disabled_optimizers=disabled)

    def to(self, device=None, *args, **kwargs):
        device = torch.device(device) if device is not None else self.device
        if device.type != self.device.type:
            self.device = device
            self.session = self._session(device)
        return self

    def forward(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The model's output, or a tuple of them where the graph has several (BlazeFace: boxes and scores)."""
        feed = {self.session.get_inputs()[0].name: np.ascontiguousarray(batch.detach().cpu().numpy(), np.float32)}
        outputs = tuple(torch.from_numpy(output) for output in self.session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs
