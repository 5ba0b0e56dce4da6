"""`python -m zootools show-input`: exactly the input the pipeline gives a model for one face box."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch

from bench.zoo_cost import with_untrained_models
from inference.classify import Classifier
from inference.crops import track_crops
from inference.device import Accelerator
from inference.tracks import Track
from inference.video import DecodedVideo
from weights import load_ensemble
from zootools.show_input import model_input, show_input

EXTRA = {
    "ntech_like": dict(arch="meso4", input={"size": [224, 192], "margin": 0.25, "resize": "short_side_center_crop",
                                            "resize_to": 224, "interpolation": ["area", "cubic"]}),
    "medics_like": dict(arch="r3d_18", input={"size": 112, "frames": 8, "margin": 0.0, "resize": "pad_bottom_right",
                                              "resize_to": 128, "box": "track_union"}),
}


@pytest.fixture(scope="module")
def manifest(ensemble_path, tmp_path_factory):
    folder = shutil.copytree(ensemble_path.parent, tmp_path_factory.mktemp("show") / "weights")
    return with_untrained_models(folder / "ensemble.json", EXTRA)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["meso4_df", "ntech_like", "medics_like"])
def test_show_input_is_what_the_pipeline_feeds_the_model(manifest, image, name):
    box = (200.4, 80.7, 330.2, 250.9)
    normalised, pixels = model_input(image, box, manifest, name)
    ensemble = load_ensemble(manifest)
    spec = next(s for s in ensemble.models if s.name == name)
    # The pipeline's own crops and normalisation for a one-detection track with this box.
    video = DecodedVideo({index: image for index in range(spec.input.frames)}, [0],
                         {spec.input.timeline: [list(range(spec.input.frames))]}, "test")
    crops = track_crops(video, Track({0: np.array([*box, 0.9], np.float32)}), [spec], ensemble.detector.margin)
    received = []

    class Recorder(torch.nn.Module):  # what the classifier hands its model
        def forward(self, batch):
            received.append(batch.clone())
            return torch.zeros(len(batch))

    classifier = Classifier(spec, Recorder())
    classifier.predict(classifier.inputs(crops), Accelerator("cpu"), 4)
    assert np.array_equal(normalised, received[0][0].numpy())
    mean, std = (np.asarray(value, np.float32)[:, None, None] for value in (spec.input.mean, spec.input.std))
    frame = (np.moveaxis(pixels, -1, 0) / np.float32(255) - mean) / std  # channels first
    expected = {"frame": frame, "clip": np.repeat(frame[:, None], spec.input.frames, axis=1),
                "sequence": np.repeat(frame[None], spec.input.frames, axis=0)}[spec.kind]
    np.testing.assert_allclose(normalised, expected, atol=1e-6)
    height, width = spec.input.shape
    expected_shape = {"frame": (3, height, width), "clip": (3, spec.input.frames, height, width)}[spec.kind]
    assert normalised.shape == expected_shape and normalised.dtype == np.float32 and pixels.shape == (height, width, 3)


def test_show_input_writes_the_array_and_the_picture(manifest, image, tmp_path):
    source = tmp_path / "frame.png"
    cv2.imwrite(str(source), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    array, picture = show_input(manifest, "ntech_like", source, (200, 80, 330, 250), tmp_path / "out" / "face")
    normalised = np.load(array)
    assert normalised.shape == (3, 224, 192)
    seen = cv2.cvtColor(cv2.imread(str(picture)), cv2.COLOR_BGR2RGB)
    # the meso4 stand-in's mean is 0 and std 1: de-normalised, the input is the picture
    assert np.array_equal(seen, np.round(normalised.transpose(1, 2, 0) * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="less than 2 x 2"):
        show_input(manifest, "meso4_df", source, (900, 900, 950, 950), tmp_path / "none")
    with pytest.raises(KeyError, match="no model 'nope'"):
        show_input(manifest, "nope", source, (200, 80, 330, 250), tmp_path / "none")


def test_the_command_line_writes_both_files_and_names_a_bad_box(manifest, image, tmp_path, capsys):
    from zootools.__main__ import main

    source = tmp_path / "frame.png"
    cv2.imwrite(str(source), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    main(["show-input", "meso4_df", str(source), "--box", "200,80,330,250", "--out", str(tmp_path / "face"),
          "--ensemble", str(manifest)])
    assert capsys.readouterr().out.split() == [str(tmp_path / "face.npy"), str(tmp_path / "face.png")]
    assert np.load(tmp_path / "face.npy").shape == (3, 256, 256)
    with pytest.raises(SystemExit):
        main(["show-input", "meso4_df", str(source), "--box", "330,80,200,250", "--out", str(tmp_path / "x"),
              "--ensemble", str(manifest)])
    assert "is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no model 'nope'"):
        main(["show-input", "nope", str(source), "--box", "200,80,330,250", "--out", str(tmp_path / "x"),
              "--ensemble", str(manifest)])
