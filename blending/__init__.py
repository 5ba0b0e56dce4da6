"""Frame aggregation, weighted blending and clipping of predictions (applied by the kernel, fitted offline)."""
from blending.blend import aggregate_frames, blend_models, clip_prediction, combine_tracks

__all__ = ["aggregate_frames", "blend_models", "clip_prediction", "combine_tracks"]
