"""Throughput of the kernel, against two references measured in the same run on the same videos.

`python bench/speed.py [--videos DIR | --count 8] [--frames-per-video 32] [--json OUT]` prints seconds per
video (wall and CPU, all threads) by stage, videos per second and peak memory for:
- the decode floor: the evenly spaced frames read with full decoding (every frame before them decoded, as the
  public kernels and this kit's exact sampling do) by the fastest reader set-up alone (PyAV one video at a time,
  or two reader threads), nothing else;
- the reader floor: the same, with the manifest's own decoding (reference sampling skips the frames nothing
  depends on; see DecodeSpec);
- the sequential baseline, as the public DFDC kernels ran: read (full decoding) -> detect (BlazeFace on square
  tiles, every frame) -> predict one video at a time, PyTorch eager, a batch = that video's frames;
- the kernel's own path one video at a time (its runtime choice, no readers, inference on every core), to show
  what overlap adds;
- the kernel: reader threads decoding, detecting and cropping ahead, crops batched across videos for each model,
  onnxruntime on the CPU.
The floors and the kernel are measured `--repeat` times (default 3), one after the other in each round, and
reported at their medians with every round's figures: on a shared machine one round's ratio can be off by a
third. Without --videos it generates DFDC-like clips (1920x1080, 10 s, 30 fps, H.264 at about 3 Mbit/s with film
grain, a moving face) once into artifacts/bench/speed/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.manifests import manifest_copy, with_options
from bench.samples import FPS, SampleSpec, render_frames, write_video
from bench.zoo_cost import FAMILIES, with_untrained_models
from inference.faces import BlazeFaceFinder, downsize
from inference.pipeline import STAGES, Pipeline, VideoResult
from inference.video import find_videos, read_video
from weights import DecodeSpec, default_manifest
from weights.archs.blazeface import weighted_nms
from zootools.sources import REPO_ROOT

DFDC_BITRATE = 3_000_000  # DFDC's test clips: H.264 High, about 3 Mbit/s at 1080p
KAGGLE_VIDEOS = 4000
HEAVY = ("efficientnet_b0", "xception41", "r3d_18")  # two timm frame models at 224-299 px and a 3D CNN


def grainy(frames, seed: int):
    """Add camera-like noise: a smooth synthetic scene would encode, and so decode, far cheaper than DFDC's."""
    rng = np.random.default_rng(seed)
    for frame in frames:
        noise = rng.integers(-8, 9, size=frame.shape, dtype=np.int16)
        yield np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def dfdc_like_clips(folder: Path, count: int, seconds: float = 10.0, bitrate: int = DFDC_BITRATE) -> list[Path]:
    """`count` 1920x1080 clips at 30 fps with one moving face, written once and reused."""
    paths = []
    for index in range(count):
        path = folder / f"dfdc_like_{index:02d}_{seconds:g}s_{bitrate // 1000}k.mp4"
        if not path.is_file():
            spec = SampleSpec(path.name, 1920, 1080, 1)
            write_video(path, grainy(render_frames(spec, round(FPS * seconds)), index), 1920, 1080, bitrate=bitrate)
        paths.append(path)
    return paths


def as_public_kernels(manifest: Path, folder: Path) -> Path:
    """A copy of the manifest run as the public kernels ran: PyTorch, full decoding, detection on every frame (its
    files still beside the original)."""
    def force(data):
        for entry in [data["detector"], *data["models"]]:
            entry["runtime"] = "torch"
        data["detector"]["every"] = 1
        data["decode"] = {"sampling": "exact", "deblocking": True}

    return manifest_copy(manifest, folder, force)


class TiledFinder(BlazeFaceFinder):
    """The public BlazeFace kernels' detection: overlapping square tiles of each frame (three across a 1080p
    frame at scale 1), each resized to the network's input, merged per frame by blended NMS."""

    min_overlap = 0.25

    def find_at_scale(self, frames: list[np.ndarray], scale: float) -> list[np.ndarray]:
        size = self.detector.input_size
        inputs, owners = [], []
        for frame_index, frame in enumerate(frames):
            for top, left, side in self.tiles(*frame.shape[:2], scale):
                inputs.append(downsize(frame[top:top + side, left:left + side], size, size))
                owners.append((frame_index, top, left, side))
        found: list[list[np.ndarray]] = [[] for _ in frames]
        for start in range(0, len(inputs), self.batch_size):
            batch = torch.from_numpy(np.stack(inputs[start:start + self.batch_size]))
            detections = self.detector.detect(batch, forward=self.accelerator)
            for (frame_index, top, left, side), dets in zip(owners[start:start + self.batch_size], detections):
                if len(dets):
                    dets = dets.copy()
                    dets[:, [0, 2]] = dets[:, [0, 2]] * side + top   # ymin, ymax
                    dets[:, [1, 3]] = dets[:, [1, 3]] * side + left  # xmin, xmax
                    found[frame_index].append(dets)
        return [self.in_frame_pixels(weighted_nms(np.concatenate(parts)), 1.0) if parts
                else np.zeros((0, 5), np.float32) for parts in found]

    @classmethod
    def tiles(cls, height: int, width: int, scale: float) -> list[tuple[int, int, int]]:
        """(top, left, side) of squares of `scale` x the short side covering the frame, a quarter overlapping."""
        side = max(1, round(min(height, width) * scale))

        def offsets(length: int) -> list[int]:
            if length <= side:
                return [0]
            count = math.ceil((length - side) / (side * (1 - cls.min_overlap))) + 1
            return np.linspace(0, length - side, count).round().astype(int).tolist()

        return [(top, left, side) for top in offsets(height) for left in offsets(width)]


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_medians(results: list[VideoResult]) -> dict[str, float]:
    return {stage: statistics.median(r.seconds.get(stage, 0.0) for r in results) for stage in STAGES}


def decode_floor(videos: list[Path], frames: int, timelines, decode: DecodeSpec) -> dict:
    """Seconds per video of reading alone, for each reader set-up; the floor is the fastest."""
    setups, cpu = {}, {}
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for path in videos:
        read_video(path, frames, timelines, decode)
    setups["pyav, one video at a time"] = (time.perf_counter() - started) / len(videos)
    cpu["pyav, one video at a time"] = (cpu_seconds() - cpu_started) / len(videos)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda path: read_video(path, frames, timelines, decode), videos))
    setups["pyav, 2 reader threads"] = (time.perf_counter() - started) / len(videos)
    cpu["pyav, 2 reader threads"] = (cpu_seconds() - cpu_started) / len(videos)
    best = min(setups, key=setups.get)
    return {"seconds_per_video": setups[best], "cpu_seconds_per_video": cpu[best], "reader": best,
            "setups": setups}


def sequential(runner: Pipeline, videos: list[Path], frames: int) -> dict:
    """One video at a time through read -> detect -> crop -> predict -> blend, nothing overlapped."""
    runner.process(videos[0], frames)  # warm-up: first calls allocate and place
    started, cpu_started = time.perf_counter(), cpu_seconds()
    results = [runner.process(path, frames) for path in videos]
    return _summary(results, time.perf_counter() - started, cpu_seconds() - cpu_started)


def pipelined(runner: Pipeline, videos: list[Path], frames: int) -> dict:
    """The kernel's run: readers ahead in threads, crops batched across videos."""
    runner.process(videos[0], frames)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    results = [result for batch in runner.run(runner.job(path, frames) for path in videos) for result in batch]
    return _summary(results, time.perf_counter() - started, cpu_seconds() - cpu_started)


def _summary(results: list[VideoResult], wall: float, cpu: float) -> dict:
    return {"seconds_per_video": wall / len(results), "videos_per_second": len(results) / wall,
            "cpu_seconds_per_video": cpu / len(results),
            "stages": stage_medians(results), "fallbacks": sum(r.fallback for r in results),
            "labels": {r.filename: r.label for r in results}}


def median_run(runs: list[dict]) -> dict:
    """The run of median seconds per video (the upper of the two middle ones), with every run's wall and CPU
    seconds per video under "runs"."""
    middle = dict(sorted(runs, key=lambda run: run["seconds_per_video"])[len(runs) // 2])
    middle["runs"] = [{key: run[key] for key in ("seconds_per_video", "cpu_seconds_per_video")} for run in runs]
    return middle


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=None, help="measure on these videos instead of generated ones")
    parser.add_argument("--count", type=int, default=8, help="generated clips (without --videos)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generated clips")
    parser.add_argument("--bitrate", type=int, default=DFDC_BITRATE, help="bits per second of the generated clips")
    parser.add_argument("--ensemble", type=Path, default=default_manifest())
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="cpu")
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--heavy", action="store_true",
                        help="add untrained timm/efficientnet_b0 (224), timm/xception41 (299) and r3d_18 (4 x 16 x "
                             "112) to the ensemble: what a GPU ensemble runs")
    parser.add_argument("--clips", type=Path, default=REPO_ROOT / "artifacts" / "bench" / "speed",
                        help="where generated clips are kept")
    parser.add_argument("--option", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change one manifest setting, e.g. decode.deblocking=false or detector.every=1")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of floor, reader floor and kernel (medians are reported)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args(argv)

    if args.videos:
        videos, _ = find_videos(args.videos)
    else:
        videos = dfdc_like_clips(args.clips, args.count, args.seconds, args.bitrate)
    if not videos:
        sys.exit(f"no videos under {args.videos}")
    for path in videos:  # the page cache holds them for every set-up alike
        path.read_bytes()
    megabits = statistics.median(p.stat().st_size * 8 / 1e6 for p in videos)
    workdir = tempfile.TemporaryDirectory()
    if args.heavy:
        weights = Path(shutil.copytree(args.ensemble.parent, Path(workdir.name) / "weights"))
        args.ensemble = with_untrained_models(weights / args.ensemble.name, {name: FAMILIES[name] for name in HEAVY})
    args.ensemble = with_options(args.ensemble, args.option, Path(workdir.name) / "options")
    runner = Pipeline(args.ensemble, args.device, args.batch_size, args.readers)
    timelines = runner.timelines()

    report = {"videos": len(videos), "megabits_per_video": megabits, "frames_per_video": args.frames_per_video,
              "device": str(runner.accelerator.device), "cpus": os.cpu_count(), "ensemble": str(args.ensemble),
              "models": [c.spec.name for c in runner.classifiers]}
    report["decode"] = dataclasses.asdict(runner.ensemble.decode)
    report["detect_every"] = runner.ensemble.detector.every
    with tempfile.TemporaryDirectory() as folder:
        eager = Pipeline(as_public_kernels(args.ensemble, Path(folder)), args.device,
                         batch_size=args.frames_per_video, readers=0)
        eager.finder = TiledFinder(eager.finder.detector, eager.finder.spec, eager.accelerator, eager.batch_size)
        report["sequential_baseline"] = sequential(eager, videos, args.frames_per_video)
        eager.close()
    del eager
    alone = Pipeline(args.ensemble, args.device, args.batch_size, readers=0)
    report["sequential_kernel"] = sequential(alone, videos, args.frames_per_video)  # every core to its inference
    alone.close()
    del alone
    rounds = {"decode_floor": [], "reader_floor": [], "kernel": []}
    for _ in range(max(1, args.repeat)):  # in turn, so that the machine's drift reaches all three alike
        rounds["decode_floor"].append(decode_floor(videos, args.frames_per_video, timelines,
                                                   DecodeSpec(sampling="exact")))
        rounds["reader_floor"].append(decode_floor(videos, args.frames_per_video, timelines, runner.ensemble.decode))
        rounds["kernel"].append(pipelined(runner, videos, args.frames_per_video))
    report.update({key: median_run(runs) for key, runs in rounds.items()})
    report["peak_rss_mib"] = peak_rss_mib()
    seconds = {key: [run["seconds_per_video"] for run in runs] for key, runs in rounds.items()}
    report["kernel_over_floor_runs"] = [k / f for k, f in zip(seconds["kernel"], seconds["decode_floor"])]
    report["kernel_over_floor"] = statistics.median(report["kernel_over_floor_runs"])
    report["kernel_over_reader_floor"] = statistics.median(
        k / f for k, f in zip(seconds["kernel"], seconds["reader_floor"]))
    report["baseline_over_kernel"] = report["sequential_baseline"]["seconds_per_video"] / statistics.median(
        seconds["kernel"])
    report["projected_hours_for_4000_videos"] = statistics.median(seconds["kernel"]) * KAGGLE_VIDEOS / 3600
    same = [abs(report["kernel"]["labels"][n] - label) for n, label in report["sequential_kernel"]["labels"].items()]
    report["max_label_difference_pipelined_vs_sequential"] = max(same)
    workdir.cleanup()
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: dict) -> None:
    print(f"{report['videos']} videos ({report['megabits_per_video']:.1f} Mbit each), {report['frames_per_video']} "
          f"frames per video, {report['device']}, {report['cpus']} CPUs, models: {', '.join(report['models'])}")
    print(f"{'':44s}{'s/video':>8s}{'video/s':>9s}{'cpu s':>8s}" + "".join(f"{stage:>8s}" for stage in STAGES))
    for key, title in (("decode_floor", "decode floor"), ("reader_floor", "reader floor")):
        floor = report[key]
        print(f"{title + ' (' + floor['reader'] + ')':44s}{floor['seconds_per_video']:8.3f}"
              f"{1 / floor['seconds_per_video']:9.3f}{floor['cpu_seconds_per_video']:8.3f}")
    for key, title in (("sequential_baseline", "sequential baseline (PyTorch, batch = video)"),
                       ("sequential_kernel", "kernel runtime, one video at a time"),
                       ("kernel", "kernel (readers ahead, cross-video batches)")):
        row = report[key]
        print(f"{title:44s}{row['seconds_per_video']:8.3f}{row['videos_per_second']:9.3f}"
              f"{row['cpu_seconds_per_video']:8.3f}"
              + "".join(f"{row['stages'][stage]:8.3f}" for stage in STAGES))
    decode = report["decode"]
    print(f"decoding: {decode['sampling']} sampling, deblocking {'on' if decode['deblocking'] else 'off'}; "
          f"detection on every {report['detect_every']} sampled frames (and where faces change)")
    if len(report["kernel_over_floor_runs"]) > 1:
        print(f"medians of {len(report['kernel_over_floor_runs'])} rounds; kernel s/video by round: "
              + ", ".join(f"{run['seconds_per_video']:.3f}" for run in report["kernel"]["runs"])
              + "; cpu s: " + ", ".join(f"{run['cpu_seconds_per_video']:.2f}" for run in report["kernel"]["runs"])
              + "; kernel / decode floor: " + ", ".join(f"{ratio:.2f}" for ratio in report["kernel_over_floor_runs"]))
    print(f"kernel / decode floor: {report['kernel_over_floor']:.2f}x (target <= 1.3x); kernel / reader floor: "
          f"{report['kernel_over_reader_floor']:.2f}x; "
          f"baseline / kernel: {report['baseline_over_kernel']:.2f}x (target >= 1.5x)")
    print(f"peak RSS {report['peak_rss_mib']:.0f} MiB; 4000 videos would take "
          f"{report['projected_hours_for_4000_videos']:.2f} h; pipelined vs sequential labels differ by at most "
          f"{report['max_label_difference_pipelined_vs_sequential']:.1e}")


if __name__ == "__main__":
    main()
