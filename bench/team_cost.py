"""What each anchor team's whole ensemble costs per video, at the real sizes (B7s, B4s, Xceptions, not stand-ins):
each model's inputs per video from its preset's timeline (a 10 s, 30 fps DFDC video with one face track), its CPU
seconds per input measured here, its floating-point operations counted by PyTorch, and a GPU projection from them.

    python -m bench.team_cost [--threads 2] [--repeats 3] [--gpu-tflops 9.3] [--efficiency 0.3]

The projection is FLOPs / (--gpu-tflops x --efficiency): Kaggle's P100 does 9.3 fp32 TFLOPS at peak, and a
batched CNN forward reaches a fraction of that; the fraction is an assumption, printed with the result.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from inference.crops import picked
from inference.video import Timeline, own_windows
from weights import InputSpec, create_model
from weights.registry import arch_config
from zootools.presets import PRESETS

VIDEO_FRAMES, VIDEO_FPS = 300, 30.0  # a DFDC video
# team -> its models: (name, arch, arch kwargs, the arch's entry in the team's preset, input changes)
TEAMS = {
    "ntech": [("model 1 (B7)", "timm/tf_efficientnet_b7", {}, "timm/tf_efficientnet_b7", {"share": (4, 0, 2)}),
              ("model 2 (B7)", "timm/tf_efficientnet_b7", {}, "timm/tf_efficientnet_b7", {}),
              ("sequence (B7)", "efficientnet_temporal", {"variant": "b7"}, "efficientnet_temporal", {})],
    "wm": [("Xception", "timm/legacy_xception", {"num_classes": 2}, "timm/legacy_xception", {}),
           ("WS-DAN Xception", "wsdan_xception", {}, "wsdan_xception", {}),
           ("WS-DAN B3", "wsdan_efficientnet_b3", {}, "wsdan_efficientnet_b3", {})],
    "polimi": [(name, arch, {"variant": "b4"} if arch != "timm/tf_efficientnet_b4" else {}, arch, {})
               for name, arch in (("B4", "timm/tf_efficientnet_b4"), ("B4 ST", "efficientnet_st"),
                                  ("AutoAtt B4", "efficientnet_autoatt"),
                                  ("AutoAtt B4 ST", "efficientnet_autoatt_st"))],
}


def inputs_per_video(spec: InputSpec, frames_per_video: int) -> int:
    """How many inputs (faces, or clips) one face track of a DFDC video gives the model."""
    if not spec.every:
        return frames_per_video if spec.frames == 1 else spec.clips
    runs = own_windows(VIDEO_FRAMES, Timeline(*spec.timeline), VIDEO_FPS)
    return len(picked(runs, spec))


def example(arch: str, spec: InputSpec) -> torch.Tensor:
    """One input of the model's kind at its size."""
    height, width = spec.shape
    if arch_config(arch).kind == "sequence":
        return torch.randn(1, spec.frames, 3, height, width)
    return torch.randn(1, 3, height, width)


def measure(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(median CPU seconds, GFLOPs) of one forward pass."""
    with torch.inference_mode():
        model(batch)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            seconds.append(time.perf_counter() - start)
        counter = FlopCounterMode(display=False)
        with counter:
            model(batch)
    return statistics.median(seconds), counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.team_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames-per-video", type=int, default=32, help="key frames, for models without a timeline")
    parser.add_argument("--gpu-tflops", type=float, default=9.3, help="the GPU's peak fp32 TFLOPS (P100: 9.3)")
    parser.add_argument("--efficiency", type=float, default=0.3, help="the fraction of the peak a forward reaches")
    parser.add_argument("--teams", nargs="+", default=sorted(TEAMS), choices=sorted(TEAMS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rate = args.gpu_tflops * 1e3 * args.efficiency  # GFLOP per second
    print(f"team    model            inputs/video  CPU s/input  GFLOP/input  CPU s/video  GPU s/video "
          f"(GFLOP / {rate:.0f} GFLOP/s)")
    for team in args.teams:
        totals = [0.0, 0.0]
        for name, arch, kwargs, preset_arch, changes in TEAMS[team]:
            entry = PRESETS[team]["archs"][preset_arch]
            spec = InputSpec(**{**{k: tuple(v) if isinstance(v, list) else v for k, v in entry["input"].items()
                                   if k != "align"}, **changes})
            count = inputs_per_video(spec, args.frames_per_video)
            model = create_model(arch, **{**entry.get("arch_kwargs", {}), **kwargs}).eval()
            seconds, gflops = measure(model, example(arch, spec), args.repeats)
            cpu, gpu = count * seconds, count * gflops / rate
            totals[0] += cpu
            totals[1] += gpu
            print(f"{team:7} {name:16} {count:12d}  {seconds:11.3f}  {gflops:11.1f}  {cpu:11.1f}  {gpu:11.3f}")
        print(f"{team:7} {'all':16} {'':12}  {'':11}  {'':11}  {totals[0]:11.1f}  {totals[1]:11.3f}")


if __name__ == "__main__":
    main()
