"""inference.device: the Accelerator falls back to the CPU on a device failure, once, from any thread."""
from __future__ import annotations

import pytest
import torch

from inference.device import Accelerator


def test_accelerator_without_a_gpu_retries_on_cpu():
    """Asking for CUDA where the device fails (no driver here, or an injected OOM there) still gives the answer."""

    class FailsOffCpu(torch.nn.Module):
        def forward(self, x):
            if x.device.type != "cpu":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
            return x * 2

    accelerator = Accelerator("cuda")
    out = accelerator(FailsOffCpu(), torch.ones(2, 3))
    assert torch.equal(out, torch.full((2, 3), 2.0))
    assert accelerator.device.type == "cpu" and accelerator.fallback_reason


def test_a_thread_whose_device_failed_after_another_fell_back_retries_on_cpu(caplog):
    """Readers and the main thread share the accelerator: whoever fails second must retry, not raise, and the
    modules move (and the warning is logged) once."""
    accelerator = Accelerator("cuda")
    real_forward = accelerator.forward

    def failing_after_another_thread_fell_back(module, batch, memory_format):
        if accelerator.device.type == "cuda":
            accelerator.fall_back_to_cpu(RuntimeError("CUDA error: injected in another thread"))
            raise RuntimeError("CUDA error: this thread's call failed too")
        return real_forward(module, batch, memory_format)

    accelerator.forward = failing_after_another_thread_fell_back
    with caplog.at_level("WARNING", logger="inference"):
        out = accelerator(torch.nn.Identity(), torch.ones(2))
        accelerator.fall_back_to_cpu(RuntimeError("CUDA error: a third report"))
    assert torch.equal(out, torch.ones(2))
    assert "another thread" in accelerator.fallback_reason
    assert sum("continuing on the CPU" in record.message for record in caplog.records) == 1


def test_non_device_errors_are_not_swallowed_by_the_fallback():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("bad input shape")

    with pytest.raises(ValueError):
        Accelerator("cpu")(Broken(), torch.ones(1))
