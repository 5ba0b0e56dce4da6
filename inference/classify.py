"""Turn crops into P(FAKE) with each model of the ensemble: normalise, lay out, run (batched), read the logit."""
from __future__ import annotations

from concurrent.futures import Executor
from functools import lru_cache

import numpy as np
import torch

from inference.crops import TrackCrops, crop_key, stack_key
from inference.device import Accelerator
from weights import ModelSpec
from weights.manifest import LOGIT_AGGREGATIONS
from weights.onnx_runtime import OnnxModule

MEMORY_FORMATS = {"frame": torch.channels_last, "clip": torch.channels_last_3d, "sequence": torch.contiguous_format}
CHANNEL_SHAPES = {"frame": (1, 3, 1, 1), "clip": (1, 3, 1, 1, 1), "sequence": (1, 1, 3, 1, 1)}  # see layout()


def layout(batch: torch.Tensor, kind: str) -> torch.Tensor:
    """Channels-last pixels -> the layout of a `kind` model (as strided views: no copy)."""
    if kind == "frame":
        return batch.permute(0, 3, 1, 2)          # N, 3, S, S
    if kind == "clip":
        return batch.permute(0, 4, 1, 2, 3)       # N, 3, T, S, S
    return batch.permute(0, 1, 4, 2, 3)           # N, T, 3, S, S


@lru_cache(maxsize=None)
def scale_and_shift(mean: tuple, std: tuple, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels / 255 - mean) / std as one multiply and one add over a batch of the kind's layout."""
    deviation = torch.tensor(std, dtype=torch.float32)
    channels = CHANNEL_SHAPES[kind]
    return (1 / (255 * deviation)).view(channels), (-torch.tensor(mean, dtype=torch.float32) / deviation).view(channels)


def normalise(crops: np.ndarray, spec: ModelSpec, memory_format=torch.contiguous_format) -> torch.Tensor:
    """uint8 crops (or clips), channels last -> float32 (pixels / 255 - mean) / std in the model's layout."""
    scale, shift = scale_and_shift(tuple(spec.input.mean), tuple(spec.input.std), spec.kind)
    batch = layout(torch.from_numpy(crops), spec.kind).to(torch.float32, memory_format=memory_format)
    return batch.mul_(scale).add_(shift)


class Classifier:
    """One ensemble model with its input spec, turning uint8 crops (or stacks of them) into P(FAKE)."""

    def __init__(self, spec: ModelSpec, module: torch.nn.Module):
        self.spec = spec
        self.module = module
        self.memory_format = MEMORY_FORMATS[spec.kind]
        # onnxruntime takes contiguous arrays; PyTorch modules were placed in their memory format
        self.input_format = torch.contiguous_format if isinstance(module, OnnxModule) else self.memory_format
        # A rule that reads the logit back needs P(FAKE) in float64: float32 rounds it to 1 from a logit of 17.
        self.score_dtype = torch.float64 if spec.aggregation in LOGIT_AGGREGATIONS else torch.float32

    def runs_batches_at_once(self, accelerator: Accelerator) -> bool:
        """Whether its batches may run at once on a pool's threads: onnxruntime on the CPU, whose sessions run one
        thread per call."""
        return isinstance(self.module, OnnxModule) and accelerator.device.type == "cpu"

    def inputs(self, crops: TrackCrops) -> np.ndarray | None:
        """This model's input stack among a track's crops, or None where the track has none."""
        if self.spec.kind == "frame":
            return crops.faces.get(crop_key(self.spec.input))
        return crops.clips.get(stack_key(self.spec))

    def predict(self, crops: np.ndarray, accelerator: Accelerator, batch_size: int,
                pool: Executor | None = None) -> np.ndarray:
        """P(FAKE) for (N, S, S, 3) face crops or (N, T, S, S, 3) clips, averaged over the TTA views: (N,), or (N, T)
        from a sequence model that scores each frame; `pool` runs the batches side by side."""
        views = [crops] + [np.flip(crops, axis=-2) for name in self.spec.tta if name == "hflip"]
        return np.mean([self.predict_view(np.ascontiguousarray(v), accelerator, batch_size, pool) for v in views],
                       axis=0)

    def predict_view(self, crops: np.ndarray, accelerator: Accelerator, batch_size: int,
                     pool: Executor | None = None) -> np.ndarray:
        """P(FAKE) of one view, `batch_size` inputs per call."""
        run = lambda start: self.predict_batch(crops[start:start + batch_size], accelerator)  # noqa: E731
        starts = range(0, len(crops), batch_size)
        scores = list(pool.map(run, starts) if pool else map(run, starts))
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def predict_batch(self, crops: np.ndarray, accelerator: Accelerator) -> np.ndarray:
        """P(FAKE) of one batch."""
        batch = normalise(crops, self.spec, self.input_format)
        logit = self.logit(accelerator(self.module, batch, self.memory_format))
        return torch.sigmoid(logit.to(self.score_dtype)).numpy()

    def logit(self, output: torch.Tensor) -> torch.Tensor:
        """The logit of FAKE from an output of shape (N,), (N, 1) or (N, 2) (column 1 = positive_class); a sequence
        model's (N, T, 1) or (N, T, 2), one per frame, gives (N, T)."""
        if output.dim() == 3 and self.spec.kind == "sequence" and output.shape[1] == self.spec.input.frames:
            return self.logit(output.flatten(0, 1)).view(output.shape[:2])
        if output.dim() == 2 and output.shape[1] == 2:
            logit = output[:, 1] - output[:, 0]
        elif output.dim() == 2 and output.shape[1] == 1 or output.dim() == 1:
            logit = output.reshape(-1)
        else:
            raise ValueError(f"model {self.spec.name} returned shape {tuple(output.shape)}; expected N, N x 1 or N x 2")
        return -logit if self.spec.positive_class == "REAL" else logit


def score_tracks(inputs: list[TrackCrops], classifier: Classifier, accelerator: Accelerator, batch_size: int,
                 pool: Executor | None = None) -> list[np.ndarray]:
    """Per track, the P(FAKE) of each of its frames (or clips, or each frame of a sequence model's clips) by one
    model; empty where the track has no input.
    `pool` runs the batches at once where the model allows it (see Classifier.runs_batches_at_once)."""
    stacks = [classifier.inputs(t) for t in inputs]
    present = [i for i, stack in enumerate(stacks) if stack is not None]
    per_track = [np.zeros(0, np.float32) for _ in stacks]
    if present:  # one batched run over all tracks, split back per track (a frame-scoring sequence model's flat)
        flat = classifier.predict(np.concatenate([stacks[i] for i in present]), accelerator, batch_size,
                                  pool if classifier.runs_batches_at_once(accelerator) else None)
        for i, part in zip(present, np.split(flat, np.cumsum([len(stacks[i]) for i in present])[:-1])):
            per_track[i] = part.reshape(-1)
    return per_track
