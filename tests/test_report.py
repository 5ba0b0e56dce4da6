"""The error-analysis report: slices, calibration error and the page on synthetic predictions whose answer is known,
then end to end on the shared DFDC sample (pictures, facts recorded in the cache, the page self-contained)."""
from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench import local_lb, report
from bench.analysis import reliability, slice_attributes, slices
from bench.lb_cache import PredictionCache
from bench.metrics import video_losses
from bench.pictures import TILE, video_pictures
from inference.pipeline import Pipeline

VOID = {"meta", "img", "br", "hr", "link", "input"}


class PageParser(HTMLParser):
    """Collects the page's <img> sources and fails on a closing tag that does not match the open one."""

    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (tag, self.open[-5:])
        self.open.pop()


def parsed(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    assert parser.open == [], parser.open
    return parser


def decoded_images(sources: list[str]) -> list[np.ndarray]:
    """Every source is an inline PNG or JPEG that decodes to a picture."""
    images = []
    for source in sources:
        match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", source)
        assert match, source[:60]
        image = cv2.imdecode(np.frombuffer(base64.b64decode(match.group(2)), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.size
        images.append(image)
    return images


def synthetic_set(seed: int = 0, n: int = 300):
    """Labelled videos with facts; the small faces (< 64 px) are predicted confidently wrong, the rest fairly well."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    sides = rng.choice([40, 90, 180, 300], n, p=[0.15, 0.35, 0.35, 0.15])
    good = np.where(labels == 1, rng.uniform(0.6, 0.9, n), rng.uniform(0.1, 0.4, n))
    predictions = np.where(sides < 64, np.where(labels == 1, 0.05, 0.95), good)
    facts = [{"width": 1920, "height": 1080, "duration": 10.0, "face_side": float(s), "tracks": 1, "skipped": False}
             for s in sides]
    attributes = [slice_attributes(int(y), "dfdc_train_part_0", None, f, "part") for y, f in zip(labels, facts)]
    return labels, predictions, attributes


def test_a_slice_made_bad_is_ranked_first():
    labels, predictions, attributes = synthetic_set()
    losses = video_losses(labels, predictions)
    ranked = slices(attributes, losses, resamples=200)
    worst = ranked[0]
    assert (worst.dimension, worst.value) == ("face size", "< 64 px")
    assert worst.n == sum(a["face size"] == "< 64 px" for a in attributes)
    assert worst.log_loss == pytest.approx(losses[[a["face size"] == "< 64 px" for a in attributes]].mean())
    assert worst.log_loss_ci[0] < worst.log_loss < worst.log_loss_ci[1]
    assert worst.share > 0.5 > worst.n / len(labels)  # a seventh of the videos, most of the loss
    # a slice holding every video costs exactly the mean: no excess
    whole = next(s for s in ranked if s.dimension == "part")
    assert whole.n == len(labels) and whole.share == pytest.approx(1) and whole.excess == pytest.approx(0, abs=1e-9)
    for dimension in ("face size", "class"):  # each dimension's slices share out the whole loss
        assert sum(s.share for s in ranked if s.dimension == dimension) == pytest.approx(1)


def test_each_video_falls_in_named_slices():
    facts = {"width": 1280, "height": 720, "duration": 12.5, "face_side": 63.9, "tracks": 2, "skipped": False}
    assert slice_attributes(1, "Face2Face", None, facts, "method", {"compression": "c23"}) == {
        "face size": "< 64 px", "tracks": "2", "fallback": "scored", "resolution": "720-1080 p",
        "duration": "10-20 s", "class": "FAKE", "method": "Face2Face", "compression": "c23"}
    no_face = {**facts, "face_side": None, "tracks": 0}
    assert slice_attributes(0, "original", "no face found", no_face, "method")["face size"] == "no face"
    assert slice_attributes(0, "original", "no face found", no_face, "method")["fallback"] == "no face"
    unreadable = {**no_face, "width": 0, "height": 0, "duration": None}
    row = slice_attributes(0, "original", "ValueError: cannot decode", unreadable, "method")
    assert (row["fallback"], row["resolution"], row["duration"]) == ("unreadable", "unknown", "unknown")
    skipped = {**unreadable, "skipped": True}
    assert slice_attributes(0, "x", "TimeoutError: budget", skipped, "part")["fallback"] == "budget"
    assert slice_attributes(0, "x", None, None, "part")["face size"] == "unknown"  # cached before facts existed
    assert slice_attributes(1, "x", None, {**facts, "face_side": 256, "tracks": 5}, "part")["face size"] == ">= 256 px"


def test_calibration_error_tells_a_calibrated_set_from_an_overconfident_one():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.02, 0.98, 20000)
    labels = (rng.uniform(size=truth.size) < truth).astype(int)
    calibrated = reliability(labels, truth)
    overconfident = reliability(labels, 1 / (1 + np.exp(-3 * np.log(truth / (1 - truth)))))
    assert calibrated["ece"] < 0.02 < 0.08 < overconfident["ece"]
    assert sum(b["n"] for b in calibrated["bins"]) == truth.size and len(calibrated["bins"]) == 10
    middle = calibrated["bins"][5]
    assert middle["mean_prediction"] == pytest.approx(0.55, abs=0.01)
    assert middle["fake_share"] == pytest.approx(0.55, abs=0.04)


def synthetic_report(images: dict) -> dict:
    labels, predictions, attributes = synthetic_set(n=40)
    losses = video_losses(labels, predictions)
    scores = {"blend": {"n": 40, "log_loss": float(losses.mean()), "log_loss_ci": [0.5, 1.0], "auc": 0.7,
                        "accuracy": 0.6, "ece": 0.2, "marginal": None},
              "meso4_df": {"n": 40, "log_loss": 1.0, "log_loss_ci": [0.8, 1.2], "auc": float("nan"),
                           "accuracy": 0.5, "ece": 0.3, "marginal": 0.02}}
    return {"set": "dfdc", "root": "/data/<dfdc>", "n": 40, "frames_per_video": 32, "ensemble": "e.json",
            "commit": "abc", "scores": scores,
            "slices": [s.__dict__ for s in slices(attributes, losses, resamples=50)],
            "worst": [{"rank": 1, "path": "/x/a&b.mp4", "label": 1, "group": "part <0>", "prediction": 0.05,
                       "loss": 3.0, "error": "no face found", "facts": None, "slices": attributes[0],
                       "models": {"meso4_df": 0.1}, "strip": "worst1_strip", "frame": "worst1_frame"},
                      {"rank": 2, "path": "/x/c.mp4", "label": 0, "group": "p", "prediction": 0.9, "loss": 2.3,
                       "error": None, "facts": {}, "slices": {}, "models": {}, "pictures_error": "ValueError: <bad>"}]}


def test_the_page_embeds_every_image_and_parses():
    labels, predictions, _ = synthetic_set(n=40)
    photo = cv2.imencode(".jpg", np.full((20, 30, 3), 128, np.uint8))[1].tobytes()
    images = {"histograms": report.histograms_png(labels, {"meso4_df": predictions, "blend": predictions}),
              "reliability": report.reliability_png(reliability(labels, predictions), "blend"),
              "frames": report.frames_png({"8": 0.7, "16": 0.65, "32": 0.6}, "frames"),
              "worst1_strip": photo, "worst1_frame": photo}
    text = report.page(synthetic_report(images), images)
    page = parsed(text)
    assert len(decoded_images(page.sources)) == len(images) == 5
    assert "http" not in text.replace("http-equiv", "") and "<link" not in text  # nothing fetched: opens offline
    assert "a&amp;b.mp4" in text and "part &lt;0&gt;" in text and "&lt;bad&gt;" in text  # names escaped
    assert text.index("face size") < text.index("Worst videos")


@pytest.fixture(scope="module")
def lb_cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("report-cache")


@pytest.mark.slow
def test_report_on_the_dfdc_sample(shared, ensemble_path, lb_cache_dir, tmp_path, capsys, caplog):
    common = ["--set", "dfdc", "--ensemble", str(ensemble_path), "--frames-per-video", "8",
              "--cache", str(lb_cache_dir)]
    assert local_lb.main([*common, "--json", str(tmp_path / "lb.json"), "--history-file",
                          str(tmp_path / "history.jsonl"), "--plot", str(tmp_path / "hist.png")]) == 0
    lb = json.loads((tmp_path / "lb.json").read_text())
    tune = tmp_path / "tune.json"
    tune.write_text(json.dumps({"frames_per_video": {"4": 0.71, "8": lb["scores"]["blend"]["log_loss"]}}))
    # entries cached before facts were recorded: the report reads and detects those videos once, and records them
    cache = PredictionCache(lb_cache_dir)
    for path in lb_cache_dir.glob("*.json"):
        entry = json.loads(path.read_text())
        assert entry["facts"]["width"] > 0 and entry["facts"]["tracks"] == 1
        cache.put(path.stem, {k: v for k, v in entry.items() if k != "facts"})
    out = tmp_path / "report"
    assert report.main([*common, "--worst", "2", "--out", str(out), "--tune-json", str(tune)]) == 0
    captured = capsys.readouterr()
    assert "4 videos were cached without their facts" in caplog.text
    assert all(json.loads(p.read_text())["facts"]["width"] for p in lb_cache_dir.glob("*.json"))
    assert "worst slices" in captured.out and "blend log loss" in captured.out

    data = json.loads((out / "report.json").read_text())
    for name, scores in lb["scores"].items():  # the same numbers as the local LB: no model ran again
        assert data["scores"][name]["log_loss"] == pytest.approx(scores["log_loss"], abs=1e-12)
    assert set(data["scores"]["blend"]) >= {"log_loss_ci", "auc", "accuracy", "ece", "marginal"}
    assert all(data["scores"][m]["marginal"] is not None for m in ("meso4_df", "mesoinception4_f2f"))
    assert data["frames_per_video_losses"] == {"4": 0.71, "8": lb["scores"]["blend"]["log_loss"]}
    losses = sorted((v["loss"] for v in data["videos"]), reverse=True)
    assert [w["loss"] for w in data["worst"]] == losses[:2]
    assert {s["dimension"] for s in data["slices"]} == {"face size", "tracks", "fallback", "resolution", "duration",
                                                        "class", "part"}
    page = parsed((out / "report.html").read_text())
    pictures = decoded_images(page.sources)
    assert len(pictures) == 3 + 2 * 2  # histograms, reliability, frames; a strip and a frame per worst video
    assert pictures[3].shape[1] >= 8 * TILE  # 8 square MesoNet crops a row


@pytest.mark.slow
def test_pictures_of_a_video_without_a_face_show_its_frame(ensemble_path, sample_videos):
    runner = Pipeline(ensemble_path, "cpu", readers=0)
    try:
        empty = video_pictures(runner, sample_videos["no_face_1080p.mp4"], 4, {})
        face = video_pictures(runner, sample_videos["face_1080p.mp4"], 4, {"meso4_df": [[0.25, 0.5, 0.75, 1.0]]})
    finally:
        runner.close()
    assert empty.strip is None
    frame = cv2.imdecode(np.frombuffer(empty.frame, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (360, 640, 3)  # 1080p scaled to 640 on the longer side
    strip = cv2.imdecode(np.frombuffer(face.strip, np.uint8), cv2.IMREAD_COLOR)
    # a row per track and model, each a title band over captioned crops; the models without cached scores too
    rows, rest = divmod(strip.shape[0], 18 + TILE + 18 + 6)
    assert rest == 0 and rows >= 4 and rows % 4 == 0, strip.shape


def test_reliability_bins_are_scikit_learns_calibration_curve():
    from sklearn.calibration import calibration_curve

    labels, predictions, _ = synthetic_set(n=300)
    bins = reliability(labels, predictions)["bins"]
    fake_share, mean_prediction = calibration_curve(labels, predictions, n_bins=10, strategy="uniform")
    assert [b["fake_share"] for b in bins] == pytest.approx(fake_share.tolist())
    assert [b["mean_prediction"] for b in bins] == pytest.approx(mean_prediction.tolist())
