"""Face finders compared on real clips: the default ensemble's (BlazeFace) against RetinaFace.

`python -m bench.finders [--weights artifacts/weights] [--frames 32] [--sets dfdc_sample,ff_sample]
[--timing-frames 7] [--resnet50]` prints, per set of ../shared/data and finder, the share of key frames with a face
(a whole-frame pass on every key frame, as `detector.every` 1), and for RetinaFace the share of its detections whose
five landmarks all lie inside their box; then each finder's CPU seconds per 1080p frame (the median of single-frame
calls). Everything runs on one thread: on a busy machine a second thread's spin-waiting inflates the CPU time by up
to 4x (the kernel's readers each run the detector on their share of the cores). `--resnet50` also times RetinaFace
ResNet-50 at full resolution, untrained (the weights change no cost).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.manifests import manifest_copy
from inference.device import Accelerator
from inference.faces import RetinaFaceFinder, make_face_finder
from inference.video import find_videos, read_video
from weights import create_model, load_ensemble
from weights.archs.retinaface import RetinaFaceDetector
from weights.manifest import BUILD_DIR
from zootools.build import DETECTOR_SETTINGS
from zootools.sources import shared_dir

RETINAFACE = "retinaface_mobilenet"


def retinaface_manifest(manifest: Path, folder: Path, **overrides) -> Path:
    """A copy of the built manifest whose detector is the build's RetinaFace with its build settings (and
    `overrides`)."""
    def edit(data):
        source = Path(data["detector"]["checkpoint"]).parent
        settings = {**DETECTOR_SETTINGS[RETINAFACE], **overrides}
        data["detector"] = {"arch": RETINAFACE, "checkpoint": str(source / f"{RETINAFACE}.safetensors"),
                            "sha256": None, **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}

    return manifest_copy(manifest, folder, edit)


def key_frames(folder: Path, count: int) -> dict[str, list[np.ndarray]]:
    """Each video's `count` key frames, as the kernel samples them."""
    return {path.name: [video_frames.frames[k] for k in video_frames.keys]
            for path in find_videos(folder)[0] for video_frames in [read_video(path, count)]}


def landmarks_inside(detections: np.ndarray) -> np.ndarray:
    """Per (k, 15) detection, whether its five landmarks all lie inside its box."""
    points = detections[:, 5:15].reshape(-1, 5, 2)
    inside = ((points >= detections[:, None, 0:2]) & (points <= detections[:, None, 2:4])).all(axis=2)
    return inside.all(axis=1)


def cpu_seconds_per_frame(detect, frame: np.ndarray, repeat: int) -> float:
    """Median CPU seconds (every thread) of one-frame calls, after a warm-up call."""
    detect([frame])
    times = []
    for _ in range(repeat):
        start = time.process_time()
        detect([frame])
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=BUILD_DIR)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--sets", default="dfdc_sample,ff_sample")
    parser.add_argument("--timing-frames", type=int, default=7)
    parser.add_argument("--resnet50", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    accelerator = Accelerator("cpu")
    manifest = args.weights / "ensemble.json"
    with tempfile.TemporaryDirectory() as scratch:
        finders = {"default (" + load_ensemble(manifest).detector.arch + ")":
                   make_face_finder(load_ensemble(manifest), accelerator, 4)}
        for downscale in (0.5, 1.0):
            folder = Path(scratch) / str(downscale)
            folder.mkdir()
            ensemble = load_ensemble(retinaface_manifest(manifest, folder, downscale=downscale))
            finders[f"{RETINAFACE}, downscale {downscale:g}"] = make_face_finder(ensemble, accelerator, 4)
        timing_frame = None
        for name in args.sets.split(","):
            videos = key_frames(shared_dir() / "data" / name, args.frames)
            timing_frame = next((f[0] for f in videos.values() if f[0].shape[:2] == (1080, 1920)), timing_frame)
            for label, finder in finders.items():
                found = [finder.find(frames) for frames in videos.values()]
                share = np.mean([len(boxes) > 0 for per_video in found for boxes in per_video])
                line = f"{name:12s} {label:36s} key frames with a face {share:6.1%}"
                if isinstance(finder, RetinaFaceFinder):
                    rows = np.concatenate([boxes for per_video in found for boxes in per_video])
                    line += f"   landmarks inside the box {landmarks_inside(rows).mean():6.1%} of {len(rows)}"
                print(line, flush=True)
        print(f"CPU seconds per 1080p frame (one thread, median of {args.timing_frames}):")
        for label, finder in finders.items():
            print(f"  {label:36s} {cpu_seconds_per_frame(finder.find, timing_frame, args.timing_frames):.3f}",
                  flush=True)
        if args.resnet50:
            detector = RetinaFaceDetector(create_model("retinaface_resnet50"), 0.8)
            seconds = cpu_seconds_per_frame(lambda frames: detector.detect(frames), timing_frame, args.timing_frames)
            print(f"  {'retinaface_resnet50 (untrained), downscale 1':36s} {seconds:.3f}")


if __name__ == "__main__":
    main()
