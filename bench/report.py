"""Error analysis of the ensemble on a labelled set: where the log loss comes from, as one offline HTML page and a JSON
with the same numbers.

    python bench/report.py --set dfdc|timit|ff [--root DIR] [--frames-per-video N] [--worst 8] [--out DIR]
                           [local-LB options]

Built from the local-LB prediction cache (a video it lacks is scored first, as `local_lb.py` would): per model and
for the blend, log loss with a bootstrap interval, AUC, accuracy, calibration error and each member's marginal value
(the blend's log loss without it); the loss split by slices of the videos (face size, tracks, fallback reason,
resolution, duration, true class, the set's groups), ranked by the loss they cost above the set's mean; prediction
histograms, a reliability diagram, log loss against frames per video when `tune.py` has run on the set; and the
worst videos, each with the face crops the models saw under their scores and a frame with the track boxes. Only
those videos' frames are read again, and videos cached before their facts were recorded are read and detected once.
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from bench.analysis import reliability, slice_attributes, slices
from bench.datasets import default_root
from bench.history import git_commit
from bench.lb_cache import PredictionCache, record_facts, video_facts
from bench.local_lb import (
    BLEND,
    EngineUnavailable,
    add_set_arguments,
    engine_failure,
    ensemble_path,
    json_safe,
    labelled_videos,
    open_engine,
    predictions,
    run_file,
    score_rows,
)
from bench.metrics import format_metric, format_table, video_losses
from bench.pictures import video_pictures
from inference.pipeline import Pipeline

log = logging.getLogger("report")
GROUP_NAMES = {"dfdc": "part", "ff": "method", "timit": "quality"}
WORST_SLICES_SHOWN = 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def marginal_values(evaluation, ensemble, labels: np.ndarray, blend_loss: float) -> dict[str, float]:
    """Per blend member, the blend's log loss without it (weights renormalised) minus with it: what it is worth."""
    members = ensemble.members()
    if len(members) < 2:
        return {}
    values = {}
    for member in members:
        weights = {m.name: (0.0 if m.name == member.name else m.weight) for m in members}
        if not any(weights.values()):
            continue
        without = predictions(evaluation, ensemble.with_weights(weights))[BLEND]
        values[member.name] = float(video_losses(labels, without).mean() - blend_loss)
    return values


def backfill_facts(videos, evaluation, ensemble, runner: Pipeline, frames: int, cache: PredictionCache) -> None:
    """Read and detect once the videos whose cache entries predate their facts; record the facts in the cache."""
    missing = [i for i, facts in enumerate(evaluation.facts) if facts is None]
    if missing:
        log.warning("report: %d videos were cached without their facts: reading and detecting them once",
                    len(missing))
    for i in missing:
        evaluation.facts[i] = video_facts(runner.prepare(runner.read(runner.job(videos[i].path, frames, set()))).result)
        record_facts(videos[i].path, ensemble, frames, cache, evaluation.facts[i])


def worst_videos(runner: Pipeline, videos, evaluation, predicted: dict[str, np.ndarray], losses: np.ndarray,
                 attributes: list[dict], count: int, frames: int) -> tuple[list[dict], dict[str, bytes]]:
    """The `count` videos of largest loss, each with its numbers and the names of its pictures; the pictures."""
    entries, images = [], {}
    for rank, i in enumerate(np.argsort(-losses, kind="stable")[:count], start=1):
        video = videos[i]
        entry = {"rank": rank, "path": str(video.path), "label": video.label, "group": video.group,
                 "prediction": float(predicted[BLEND][i]), "loss": float(losses[i]), "error": evaluation.errors[i],
                 "facts": evaluation.facts[i], "slices": attributes[i],
                 "models": {name: float(predicted[name][i]) for name in predicted if name != BLEND}}
        try:
            pictures = video_pictures(runner, video.path, frames, evaluation.frame_scores[i])
            for kind, data in (("strip", pictures.strip), ("frame", pictures.frame)):
                if data is not None:
                    images[f"worst{rank}_{kind}"] = data
                    entry[kind] = f"worst{rank}_{kind}"
        except Exception as error:  # a video the pipeline cannot show still gets its row and numbers
            entry["pictures_error"] = f"{type(error).__name__}: {error}"
        entries.append(entry)
    return entries, images


def figure_png(figure: Figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def histograms_png(labels: np.ndarray, predicted: dict[str, np.ndarray]) -> bytes:
    """Prediction histograms by true class, one panel per model and the blend."""
    names = list(predicted)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4 * columns, 2.8 * rows))
    bins = np.linspace(0, 1, 21)
    for index, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, index + 1)
        for label, word, colour in ((0, "REAL", "tab:blue"), (1, "FAKE", "tab:red")):
            axes.hist(predicted[name][labels == label], bins=bins, alpha=0.6, color=colour, label=word)
        axes.set(title=name, xlim=(0, 1), xlabel="P(FAKE)")
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure_png(figure)


def reliability_png(table: dict, title: str) -> bytes:
    """The reliability diagram: fake share against mean prediction per bin (point size by count), the diagonal."""
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    rows = table["bins"]
    axes.scatter([r["mean_prediction"] for r in rows], [r["fake_share"] for r in rows],
                 s=[20 + 200 * r["n"] / max(1, max(b["n"] for b in rows)) for r in rows], color="tab:red")
    axes.plot([r["mean_prediction"] for r in rows], [r["fake_share"] for r in rows], color="tab:red", linewidth=1)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean P(FAKE) in bin", ylabel="share of FAKE videos",
             title=f"{title}: ECE {table['ece']:.3f}")
    return figure_png(figure)


def frames_png(losses: dict[str, float], title: str) -> bytes:
    """Blend log loss against frames per video, from a tune run."""
    figure = Figure(figsize=(5, 3.5))
    axes = figure.add_subplot()
    counts = sorted(losses, key=int)
    axes.plot([int(c) for c in counts], [losses[c] for c in counts], marker="o")
    axes.set(xlabel="frames per video", ylabel="log loss", title=title)
    return figure_png(figure)


def build(args: argparse.Namespace) -> tuple[dict, dict[str, bytes]]:
    """Every number of the report (what the JSON holds) and its images by name (PNG plots, JPEG photos)."""
    started = time.perf_counter()
    manifest = ensemble_path(args)
    cache = PredictionCache(args.cache)
    with open_engine(args) as score_videos:
        videos, options = labelled_videos(args)
        evaluation, ensemble = score_videos(videos, args.frames_per_video)
    runner = Pipeline(manifest, args.device, readers=0)  # reads again: videos without facts, the worst videos
    try:
        backfill_facts(videos, evaluation, ensemble, runner, args.frames_per_video, cache)
        labels = np.array([v.label for v in videos])
        predicted = predictions(evaluation, ensemble)
        losses = video_losses(labels, predicted[BLEND])
        extra = {"compression": options.get("compression", "c23")} if args.set == "ff" else {}
        attributes = [slice_attributes(v.label, v.group, error, facts, GROUP_NAMES[args.set], extra)
                      for v, error, facts in zip(videos, evaluation.errors, evaluation.facts)]
        worst, images = worst_videos(runner, videos, evaluation, predicted, losses, attributes, args.worst,
                                     args.frames_per_video)
    finally:
        runner.close()
    rows = score_rows(videos, predicted, per_method=args.set == "ff")
    marginal = marginal_values(evaluation, ensemble, labels, float(losses.mean()))
    calibration = {name: reliability(labels, values) for name, values in predicted.items()}
    ranked = slices(attributes, losses)

    images.update(histograms=histograms_png(labels, predicted),
                  reliability=reliability_png(calibration[BLEND], "blend"))
    tune_file = args.tune_json or run_file(args, "_tune.json")
    frames_losses = json.loads(tune_file.read_text()).get("frames_per_video") if tune_file.is_file() else None
    if frames_losses:
        images["frames"] = frames_png(frames_losses, f"{args.set}: blend, n={len(videos)} (tune run)")

    report = {
        "set": args.set, "root": str(args.root or default_root(args.set)), "n": len(videos),
        "frames_per_video": args.frames_per_video, "ensemble": str(manifest), "commit": git_commit(),
        "options": {k: str(v) for k, v in options.items()},
        "scores": {name: {**dataclasses.asdict(s), "ece": calibration[name]["ece"] if name in calibration else None,
                          "marginal": marginal.get(name)} for name, s in rows.items()},
        "reliability": calibration[BLEND],
        "slices": [dataclasses.asdict(s) for s in ranked],
        "frames_per_video_losses": frames_losses,
        "worst": worst,
        "videos": [{"path": str(v.path), "label": v.label, "prediction": float(predicted[BLEND][i]),
                    "loss": float(losses[i]), "error": evaluation.errors[i], "facts": evaluation.facts[i]}
                   for i, v in enumerate(videos)],
        "seconds": round(time.perf_counter() - started, 2),
    }
    return report, images


# ------------------------------------------------------------------------------------------------------------ page

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
.worst{border-top:2px solid #888;margin-top:1.5em;padding-top:.5em}img{max-width:100%}"""


def table(header: list[str], body: list[list[str]]) -> str:
    """An HTML table of escaped cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def image(images: dict[str, bytes], name: str, alt: str) -> str:
    """An <img> holding the picture itself (a data URI of its PNG or JPEG bytes): the page needs no other file."""
    kind = "png" if images[name].startswith(PNG_SIGNATURE) else "jpeg"
    data = base64.b64encode(images[name]).decode()
    return f'<img src="data:image/{kind};base64,{data}" alt="{html.escape(alt)}">'


def interval(values) -> str:
    return f"[{values[0]:.3f}, {values[1]:.3f}]"


def page(report: dict, images: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page."""
    scores = [[name, s["n"], f"{s['log_loss']:.4f}", interval(s["log_loss_ci"]), format_metric(s["auc"], 3),
               format_metric(s["accuracy"], 3), format_metric(s["ece"], 3),
               "-" if s["marginal"] is None else f"{s['marginal']:+.4f}"] for name, s in report["scores"].items()]
    slice_rows = [[s["dimension"], s["value"], s["n"], f"{s['log_loss']:.4f}", interval(s["log_loss_ci"]),
                   f"{100 * s['share']:.1f}%", f"{s['excess']:+.2f}"] for s in report["slices"]]
    parts = [
        f"<h1>Error analysis: {html.escape(report['set'])}, {report['n']} videos</h1>",
        f"<p>root {html.escape(report['root'])}; {report['frames_per_video']} frames per video; ensemble "
        f"{html.escape(report['ensemble'])}; commit {html.escape(str(report['commit']))}</p>",
        "<h2>Models and blend</h2>",
        "<p>marginal: the blend's log loss without the member minus with it (positive: the member helps). "
        "ECE: expected calibration error over 10 bins.</p>",
        table(["name", "n", "log loss", "95% CI", "AUC", "acc", "ECE", "marginal"], scores),
        "<h2>Where the loss is</h2>",
        "<p>Slices ranked by excess loss: their total log loss minus what the set's mean loss would give as many "
        "videos. Share: of the set's total loss.</p>",
        table(["dimension", "value", "n", "log loss", "95% CI", "share", "excess"], slice_rows),
        "<h2>Predictions</h2>", image(images, "histograms", "prediction histograms by true class"),
        image(images, "reliability", "reliability diagram of the blend"),
    ]
    if "frames" in images:
        parts.append(image(images, "frames", "log loss against frames per video"))
    parts.append("<h2>Worst videos</h2>")
    for entry in report["worst"]:
        facts = entry["facts"] or {}
        parts.append(
            f"<div class='worst'><h3>{entry['rank']}. {html.escape(Path(entry['path']).name)}</h3><p>"
            f"{'FAKE' if entry['label'] else 'REAL'} ({html.escape(entry['group'])}), predicted "
            f"{entry['prediction']:.3f}, loss {entry['loss']:.3f}; "
            + html.escape(", ".join(f"{k} {v}" for k, v in entry["slices"].items()))
            + (f"; error: {html.escape(entry['error'])}" if entry["error"] else "")
            + (f"; {facts.get('width')}x{facts.get('height')}" if facts.get("width") else "")
            + "; models: " + html.escape(", ".join(f"{k} {v:.3f}" for k, v in entry["models"].items())) + "</p>")
        for kind, alt in (("strip", "face crops with each input's score"), ("frame", "a frame with the tracks")):
            if kind in entry:
                parts.append(image(images, entry[kind], alt))
        if "pictures_error" in entry:
            parts.append(f"<p>no pictures: {html.escape(entry['pictures_error'])}</p>")
        parts.append("</div>")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Error analysis: "
            f"{html.escape(report['set'])}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_set_arguments(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.html and report.json (default artifacts/lb/runs/RUN_report)")
    parser.add_argument("--worst", type=int, default=8, help="how many of the worst videos to show with pictures")
    parser.add_argument("--tune-json", type=Path, default=None,
                        help="a tune run's JSON for log loss against frames (default the run's own, if tune ran)")
    args = parser.parse_args(argv)
    if args.set is None:
        parser.error("--set is required")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        report, images = build(args)
    except EngineUnavailable as error:
        return engine_failure("report", error)
    out = args.out or run_file(args, "_report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2))
    (out / "report.html").write_text(page(report, images))
    blend = report["scores"][BLEND]
    print(f"report: {args.set}, {report['n']} videos, blend log loss {blend['log_loss']:.4f} "
          f"{interval(blend['log_loss_ci'])}, AUC {format_metric(blend['auc'], 3)}, ECE {blend['ece']:.3f}")
    print(format_table(["worst slices", "n", "log loss", "share", "excess"],
                       [[f"{s['dimension']}: {s['value']}", str(s["n"]), f"{s['log_loss']:.4f}",
                         f"{100 * s['share']:.1f}%", f"{s['excess']:+.2f}"]
                        for s in report["slices"][:WORST_SLICES_SHOWN]]))
    print(f"written: {out / 'report.html'} and report.json ({report['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
