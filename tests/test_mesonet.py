"""MesoNet: the four published Keras files convert, load strictly, and reproduce the reference scores."""
from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weights.checkpoint import WeightsError, load_checkpoint
from weights.registry import create_model
from zootools.convert_keras import convert_mesonet
from zootools.sources import MESONET_FILES, mesonet_dir, shared_dir

# Every test reads the published Keras files and faces: in ../shared (or $MESONET_WEIGHTS, $DEEPFAKE_SHARED).
pytestmark = pytest.mark.shared
FACES_DIR = shared_dir() / "data" / "mesonet_faces"
# P(REAL) a correct Meso4_DF port gives on the shared faces (FACTS.md section 4).
MESO4_DF_REFERENCE = {
    "df/df00204.jpg": 0.05,
    "df/df01254.jpg": 0.03,
    "real/real00240.jpg": 0.99,
    "real/real00772.jpg": 1.00,
}
TOLERANCE = 0.02

def load_faces(relative_paths: list[str]) -> torch.Tensor:
    """Face crops as N x 3 x 256 x 256 RGB in [0, 1], the way MesoNet was fed."""
    faces = []
    for relative_path in relative_paths:
        bgr = cv2.imread(str(FACES_DIR / relative_path))
        assert bgr is not None, f"cannot read {relative_path}"
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] != (256, 256):
            rgb = cv2.resize(rgb, (256, 256))
        faces.append(rgb)
    return torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).float() / 255


def converted_model(model_name: str, folder: Path) -> torch.nn.Module:
    """Convert one published file, save it as safetensors, and load it back strictly."""
    arch, h5_name = MESONET_FILES[model_name]
    checkpoint = folder / f"{model_name}.safetensors"
    save_file(convert_mesonet(mesonet_dir() / h5_name, arch), str(checkpoint))
    return load_checkpoint(create_model(arch), checkpoint)


def p_real(model: torch.nn.Module, faces: torch.Tensor) -> np.ndarray:
    """Sigmoid of the model's logits, checking they come one per face."""
    with torch.no_grad():
        logits = model(faces)
    assert logits.shape == (len(faces),)
    return torch.sigmoid(logits).numpy()


@pytest.mark.parametrize("model_name", sorted(MESONET_FILES))
def test_every_file_converts_and_loads_strictly(model_name, tmp_path):
    model = converted_model(model_name, tmp_path)
    scores = p_real(model, load_faces(sorted(MESO4_DF_REFERENCE)))
    print(model_name, ", ".join(f"{name} {score:.4f}" for name, score in zip(sorted(MESO4_DF_REFERENCE), scores)))
    assert np.all((scores >= 0) & (scores <= 1))


def test_loading_into_the_wrong_architecture_fails(tmp_path):
    checkpoint = tmp_path / "meso4_df.safetensors"
    save_file(convert_mesonet(mesonet_dir() / MESONET_FILES["meso4_df"][1], "meso4"), str(checkpoint))
    with pytest.raises(WeightsError):
        load_checkpoint(create_model("mesoinception4"), checkpoint)


def test_converting_for_the_wrong_architecture_fails():
    with pytest.raises(ValueError, match="conv2d"):
        convert_mesonet(mesonet_dir() / MESONET_FILES["meso4_df"][1], "mesoinception4")
    with pytest.raises(ValueError, match="no Keras layout"):
        convert_mesonet(mesonet_dir() / MESONET_FILES["meso4_df"][1], "xception")


def replace_dataset(h5: h5py.File, path: str, data: np.ndarray) -> None:
    del h5[path]
    h5.create_dataset(path, data=data)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda h5: h5.create_dataset("my_layer/my_layer/kernel:0", data=np.zeros(3)), "unexpected Keras layer"),
        (lambda h5: h5.create_dataset("dense_4/dense_4/extra:0", data=np.zeros(1)), "unused weights"),
        (lambda h5: h5.create_dataset("conv2d_9/conv2d_9/kernel:0", data=np.zeros((1, 1, 1, 1))), "5 Keras conv2d"),
        (lambda h5: h5.__delitem__("dense_3/dense_3/bias:0"), "dense_3 lacks weight 'bias'"),
        (lambda h5: replace_dataset(h5, "conv2d_6/conv2d_6/kernel:0", np.zeros((3, 3, 8, 8))), "conv2.weight"),
    ],
)
def test_tampered_files_are_refused(tamper, message, tmp_path):
    tampered = tmp_path / "tampered.h5"
    tampered.write_bytes((mesonet_dir() / MESONET_FILES["meso4_df"][1]).read_bytes())
    with h5py.File(tampered, "r+") as h5:
        tamper(h5)
    with pytest.raises(ValueError, match=message):
        convert_mesonet(tampered, "meso4")


def test_meso4_df_reproduces_reference_scores(tmp_path):
    model = converted_model("meso4_df", tmp_path)
    names = sorted(MESO4_DF_REFERENCE)
    scores = p_real(model, load_faces(names))
    for name, score in zip(names, scores):
        print(f"meso4_df {name}: P(REAL) = {score:.4f} (reference {MESO4_DF_REFERENCE[name]:.2f})")
    np.testing.assert_allclose(scores, [MESO4_DF_REFERENCE[name] for name in names], atol=TOLERANCE)


def test_mesoinception4_df_scores_real_faces_as_more_real(tmp_path):
    model = converted_model("mesoinception4_df", tmp_path)
    fake_names = sorted(name for name in MESO4_DF_REFERENCE if name.startswith("df/"))
    real_names = sorted(name for name in MESO4_DF_REFERENCE if name.startswith("real/"))
    fake_scores = p_real(model, load_faces(fake_names))
    real_scores = p_real(model, load_faces(real_names))
    print(f"mesoinception4_df P(REAL): df {fake_scores.round(4)}, real {real_scores.round(4)}")
    assert real_scores.min() > fake_scores.max()
