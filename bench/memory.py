"""Peak memory of the kernel against the number of videos: videos are streamed, so RSS must not grow with N.

`python -m bench.memory [--counts 10,100] [--frames-per-video 32] [--width 1920 --height 1080 --seconds 2]
[--distinct 4] [--ensemble PATH] [--json OUT]` writes `--distinct` DFDC-like synthetic clips with a moving face
once (into `--workdir`, default artifacts/bench/memory/clips/), then for each count N a folder of N
differently named links to them (the kernel reads file by file, so a link costs what a copy would), and runs
the real kernel (`kernel.py`, a subprocess, `--device cpu` by default) on each folder in turn.

Per run it measures the kernel process's peak resident set (ru_maxrss of that one child, from wait4, checked
against /proc/PID/status VmHWM polled while it runs), wall time and seconds per video, and prints:
videos, peak RSS (MiB), growth against the smallest count, wall s, s/video. A start-up run on an empty folder
(0 videos: Python, torch and the loaded models) comes first unless `--no-baseline`, and the last line is the
decoded-frame working set the kernel is designed to hold: one decoded video per reader thread (a reader
detects and crops its clip before it takes the next; the queue behind it holds face crops), each the
planned frames at full resolution (RGB, uint8).

It exits non-zero, with the kernel's last log lines, when the kernel fails or writes the wrong number of rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.samples import FPS, SampleSpec, render_frames, write_video
from weights.manifest import default_manifest
from zootools.sources import REPO_ROOT

MIB = 1 << 20
POLL_SECONDS = 0.2
TIMELINE_POINTS = 200  # the RSS timeline kept in the JSON, evenly thinned to at most this many samples


# ---------------------------------------------------------------------------------------------- inputs

def face_scale(index: int, distinct: int, width: int, height: int) -> float:
    """Face sizes spread over the clips (about 90 to 130 px wide at 1080p), always fitting inside the frame."""
    base = min(1.2, 0.6 * height / 300)
    spread = 0.8 + 0.4 * index / max(1, distinct - 1)
    return min(base * spread, 0.9 * height / 300, 0.9 * width / 270)  # the pasted patch is 300 x 270 at scale 1


def distinct_clips(folder: Path, distinct: int, width: int, height: int, seconds: float) -> list[Path]:
    """`distinct` H.264 clips with one moving face, each with its own scene and face size; written once."""
    paths = []
    for index in range(distinct):
        path = folder / f"memory_{index:02d}_{width}x{height}_{seconds:g}s.mp4"
        if not path.is_file():
            # render_frames seeds the scene with the length of the spec's name: a name per clip, a scene per clip
            spec = SampleSpec("m" * (index + 1), width, height, 1)
            frames = render_frames(spec, max(1, round(seconds * FPS)), face_scale(index, distinct, width, height))
            write_video(path, frames, width, height)
        paths.append(path)
    return paths


def linked_videos(folder: Path, clips: list[Path], count: int) -> Path:
    """A fresh folder of `count` links `video_0000.mp4`, ... to the clips in turn."""
    if folder.exists():
        shutil.rmtree(folder)  # removes the links, never their targets
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"video_{index:04d}.mp4").symlink_to(clips[index % len(clips)].resolve())
    return folder


# ---------------------------------------------------------------------------------------------- measure

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a live process in bytes (empty once it has exited)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024  # kB
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return values


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def thin(samples: list, limit: int = TIMELINE_POINTS) -> list:
    if len(samples) <= limit:
        return samples
    step = (len(samples) - 1) / (limit - 1)
    return [samples[round(i * step)] for i in range(limit)]


def run_kernel(videos: Path, run_dir: Path, ensemble: Path, frames: int, device: str,
               extra: list[str] = ()) -> dict:
    """Run kernel.py on the folder as a child process; its peak RSS, wall time, rows and an RSS timeline.

    The peak is ru_maxrss of this one child (os.wait4 reports the child it reaps, not every child so far as
    RUSAGE_CHILDREN would), and never less than the last VmHWM polled from /proc while it ran.
    """
    out, report, log_path = run_dir / "submission.csv", run_dir / "report.jsonl", run_dir / "kernel.log"
    command = [sys.executable, str(REPO_ROOT / "kernel.py"), "--videos", str(videos), "--out", str(out),
               "--report", str(report), "--ensemble", str(ensemble), "--frames-per-video", str(frames),
               "--device", device, *extra]
    timeline = []  # (seconds since start, VmRSS MiB, videos reported done)
    polled_hwm = 0
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        reaped = False
        try:
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid == process.pid:
                    reaped = True
                    break
                values = proc_status(process.pid)
                if "VmRSS" in values:
                    polled_hwm = max(polled_hwm, values.get("VmHWM", 0))
                    timeline.append((round(time.perf_counter() - started, 2), round(values["VmRSS"] / MIB, 1),
                                     count_lines(report)))
                time.sleep(POLL_SECONDS)
        finally:
            if not reaped:  # interrupted: stop the kernel we started
                process.kill()
                process.wait()
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = max(usage.ru_maxrss * 1024, polled_hwm)  # ru_maxrss is in KiB on Linux
    return {"command": command, "returncode": process.returncode, "wall_s": wall, "peak_rss_bytes": peak,
            "peak_rss_mib": peak / MIB, "ru_maxrss_mib": usage.ru_maxrss / 1024, "polled_vmhwm_mib": polled_hwm / MIB,
            "submission": str(out), "report": str(report), "log": str(log_path), "timeline": timeline}


def submission_rows(path: Path) -> int:
    """Data rows of a submission (the header excluded)."""
    return max(0, count_lines(path) - 1)


def fallbacks(report: Path) -> dict[str, int]:
    """Fallback videos by reason, from the kernel's report."""
    reasons: dict[str, int] = {}
    if report.is_file():
        for line in report.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("fallback"):
                reason = str(entry.get("error"))
                reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def rss_by_quarter(timeline: list, videos: int) -> list[float | None]:
    """Max VmRSS polled while the first, second, third and last quarter of the videos were being processed."""
    quarters: list[float | None] = [None] * 4
    if videos <= 0:
        return quarters
    for _, rss, done in timeline:
        quarter = min(3, done * 4 // videos)
        quarters[quarter] = max(quarters[quarter] or 0.0, rss)
    return quarters


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def measure(count: int, clips: list[Path], workdir: Path, ensemble: Path, frames: int, device: str,
            extra: list[str]) -> dict:
    """One count: link the videos, run the kernel, check its rows. SystemExit when the kernel fails."""
    run_dir = workdir / "runs" / f"{count:04d}"
    videos = linked_videos(run_dir / "videos", clips, count)
    for stale in ("submission.csv", "report.jsonl", "kernel.log", "submission.csv.progress.jsonl"):
        (run_dir / stale).unlink(missing_ok=True)  # a journal left by a killed run would make the kernel resume
    print(f"running the kernel on {count} videos ...", file=sys.stderr, flush=True)
    run = run_kernel(videos, run_dir, ensemble, frames, device, extra)
    log_path = Path(run["log"])
    if run["returncode"] != 0:
        raise SystemExit(f"bench.memory: the kernel failed with {count} videos (exit code {run['returncode']}); "
                         f"last lines of {log_path}:\n{tail(log_path)}")
    rows = submission_rows(Path(run["submission"]))
    if rows != count:
        raise SystemExit(f"bench.memory: the kernel wrote {rows} rows for {count} videos to {run['submission']}; "
                         f"last lines of {log_path}:\n{tail(log_path)}")
    run.update(videos=count, rows=rows, fallbacks=fallbacks(Path(run["report"])),
               s_per_video=run["wall_s"] / count if count else None,
               rss_by_quarter_mib=rss_by_quarter(run["timeline"], count))
    run["timeline"] = thin(run["timeline"])
    return run


def designed_working_set(ensemble: Path, frames: int, device: str, clip: Path, extra: list[str]) -> dict:
    """Decoded frames the kernel holds at most: one video per reader (Pipeline.run's readers crop before they
    hand a video on), each the frames it plans for the video (key frames and clip-model windows), RGB uint8."""
    from inference.cli import parse_args  # torch and the models: only now, after the measured runs
    from inference.pipeline import Pipeline
    from inference.video import read_video

    args = parse_args(["--videos", str(clip.parent), "--ensemble", str(ensemble), "--device", device,
                       "--frames-per-video", str(frames), *extra])
    runner = Pipeline(ensemble, device, args.batch_size, args.readers)
    runner.close()  # only its plan is needed: which frames it decodes, how many readers hold them
    decoded = read_video(clip, frames, runner.timelines())
    frame_bytes = max(frame.nbytes for frame in decoded.frames.values())
    total = runner.readers * len(decoded.frames) * frame_bytes
    return {"clips_in_flight": runner.readers, "readers": runner.readers,
            "frames_decoded_per_clip": len(decoded.frames), "bytes_per_frame": frame_bytes,
            "bytes": total, "mib": total / MIB}


# ---------------------------------------------------------------------------------------------- report

def machine() -> dict:
    memory = None
    try:
        with open("/proc/meminfo") as f:
            memory = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_total_mib": memory / MIB if memory else None, "platform": platform.platform(),
            "python": platform.python_version()}


def table(runs: list[dict]) -> list[str]:
    measured = [r for r in runs if r["videos"] > 0]
    smallest = min(measured, key=lambda r: r["videos"]) if measured else None
    lines = [f"{'videos':>7s} {'peak RSS MiB':>13s} {'growth MiB':>11s} {'growth':>7s} {'wall s':>8s} "
             f"{'s/video':>8s}  {'fallbacks':>9s}"]
    for run in runs:
        if run["videos"] == 0:
            lines.append(f"{0:7d} {run['peak_rss_mib']:13.0f} {'':>11s} {'':>7s} {run['wall_s']:8.1f} {'':>8s}"
                         f"  {'':>9s}  (start-up only: Python, torch, the models)")
            continue
        growth = run["peak_rss_mib"] - smallest["peak_rss_mib"]
        run["growth_mib"], run["growth_pct"] = growth, 100 * growth / smallest["peak_rss_mib"]
        lines.append(f"{run['videos']:7d} {run['peak_rss_mib']:13.0f} {growth:+11.0f} {run['growth_pct']:+6.1f}% "
                     f"{run['wall_s']:8.1f} {run['s_per_video']:8.2f}  {sum(run['fallbacks'].values()):9d}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10,100", help="comma-separated numbers of videos, one kernel run each")
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each synthetic clip")
    parser.add_argument("--distinct", type=int, default=4, help="distinct clips the videos link to")
    parser.add_argument("--ensemble", type=Path, default=default_manifest(),
                        help="ensemble manifest (default: $DEEPFAKE_ENSEMBLE, else artifacts/weights/ensemble.json)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--readers", type=int, default=None, help="passed to the kernel (default: the kernel's)")
    parser.add_argument("--batch-size", type=int, default=None, help="passed to the kernel (default: the kernel's)")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "artifacts" / "bench" / "memory",
                        help="clips/ (kept and reused) and runs/N/ (links, submission, report, log) go here")
    parser.add_argument("--no-baseline", action="store_true", help="skip the start-up run on an empty folder")
    parser.add_argument("--no-working-set", action="store_true",
                        help="skip computing the designed decoded-frame working set (loads the models here)")
    parser.add_argument("--json", type=Path, default=None, help="write settings, machine and every run here")
    args = parser.parse_args(argv)
    try:
        args.counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    except ValueError:
        parser.error("--counts must be comma-separated integers, e.g. 10,100")
    if not args.counts or min(args.counts) < 1:
        parser.error("--counts needs at least one count, each at least 1")
    if min(args.frames_per_video, args.width, args.height, args.distinct) < 1 or args.seconds <= 0:
        parser.error("--frames-per-video, --width, --height, --distinct and --seconds must be positive")
    if args.width % 2 or args.height % 2:
        parser.error("--width and --height must be even (H.264 yuv420p)")
    if not args.ensemble.is_file():
        parser.error(f"no ensemble manifest at {args.ensemble} (build it with `python -m zootools build`)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # the table after the progress lines, also when piped
    extra = [*(["--readers", str(args.readers)] if args.readers else []),
             *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
    clips = distinct_clips(args.workdir / "clips", args.distinct, args.width, args.height, args.seconds)
    counts = ([] if args.no_baseline else [0]) + args.counts
    runs = [measure(count, clips, args.workdir, args.ensemble.resolve(), args.frames_per_video, args.device, extra)
            for count in counts]
    working_set = None if args.no_working_set else designed_working_set(
        args.ensemble.resolve(), args.frames_per_video, args.device, clips[0], extra)

    print(f"kernel peak RSS against videos ({args.width}x{args.height}, {args.seconds:g} s clips, "
          f"{args.frames_per_video} frames per video, {args.distinct} distinct clips, device {args.device}, "
          f"{os.cpu_count()} CPUs)")
    for line in table(runs):
        print(line)
    measured = [r for r in runs if r["videos"] > 0]
    if len(measured) > 1:
        first, last = measured[0], measured[-1]
        marginal = (last["wall_s"] - first["wall_s"]) / (last["videos"] - first["videos"])
        print(f"marginal: {marginal:.2f} s per video between {first['videos']} and {last['videos']} videos "
              f"(start-up excluded)")
    for run in measured:
        quarters = ", ".join("-" if q is None else f"{q:.0f}" for q in run["rss_by_quarter_mib"])
        print(f"{run['videos']} videos: RSS (MiB, max polled) by quarter of the videos done: {quarters}")
        if run["fallbacks"]:
            print(f"{run['videos']} videos: fallbacks: " + "; ".join(f"{n} x {reason}"
                                                                     for reason, n in run["fallbacks"].items()))
    if working_set:
        print(f"designed decoded-frame working set: {working_set['clips_in_flight']} clips in flight "
              f"(one per reader; queued videos hold face crops) x "
              f"{working_set['frames_decoded_per_clip']} frames x {working_set['bytes_per_frame'] / MIB:.1f} MiB "
              f"= {working_set['mib']:.0f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {"counts": args.counts, "baseline": not args.no_baseline,
                    "frames_per_video": args.frames_per_video, "width": args.width, "height": args.height,
                    "seconds": args.seconds, "fps": FPS, "distinct": args.distinct, "ensemble": str(args.ensemble),
                    "device": args.device, "readers": args.readers, "batch_size": args.batch_size,
                    "clips": [str(c) for c in clips]}
        args.json.write_text(json.dumps({"settings": settings, "machine": machine(), "runs": runs,
                                         "working_set": working_set}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
