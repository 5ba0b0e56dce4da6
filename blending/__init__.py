"""The runtime rules that turn frame scores into one prediction per video: frame aggregation, track combination,
weighted blend, calibration, clamp. Fitting the blend is offline tooling (`bench/blend_fit.py`)."""
from blending.blend import (
    aggregate_frames,
    blend_models,
    calibrate,
    clamp_prediction,
    combine_tracks,
    final_prediction,
    member_score,
    video_score,
)

__all__ = ["aggregate_frames", "blend_models", "calibrate", "clamp_prediction", "combine_tracks", "final_prediction",
           "member_score", "video_score"]
