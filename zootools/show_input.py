"""`python -m zootools show-input NAME IMAGE --box X0,Y0,X1,Y1 --out PREFIX`: exactly what a model receives for one
face box in one image, cut and resized by the runtime's own code, to check a model's preprocessing by eye."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from inference.classify import normalise
from inference.crops import crop, fit
from weights.manifest import load_ensemble


def model_input(image: np.ndarray, box: tuple[float, float, float, float], ensemble_path: Path,
                name: str) -> tuple[np.ndarray, np.ndarray]:
    """(the normalised float32 input in the model's layout, channels first; the uint8 RGB crop it comes from).

    A clip or sequence model gets the crop repeated over its clip: (3, T, H, W) or (T, 3, H, W)."""
    ensemble = load_ensemble(ensemble_path)
    specs = {spec.name: spec for spec in ensemble.models}
    if name not in specs:
        raise KeyError(f"{ensemble_path} has no model {name!r}; it lists {', '.join(specs)}")
    spec = specs[name]
    face = crop(image, np.asarray(box, np.float32), spec.input, ensemble.detector.margin)
    if face is None:
        raise ValueError(f"the box {box} leaves less than 2 x 2 pixels inside the {image.shape[1]} x "
                         f"{image.shape[0]} image")
    pixels = fit(face, spec.input)
    batch = pixels[None] if spec.kind == "frame" else np.repeat(pixels[None], spec.input.frames, axis=0)[None]
    chw = normalise(batch, spec)[0].numpy()
    return chw, pixels


def show_input(ensemble_path: Path, name: str, image_path: Path, box: tuple[float, float, float, float],
               prefix: Path) -> tuple[Path, Path]:
    """Write PREFIX.npy (what the model receives) and PREFIX.png (that input de-normalised); return both paths."""
    bgr = cv2.imread(str(image_path))
    if bgr is None:
        raise ValueError(f"cannot read the image {image_path}")
    normalised, pixels = model_input(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), box, ensemble_path, name)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    array, picture = prefix.with_name(prefix.name + ".npy"), prefix.with_name(prefix.name + ".png")
    np.save(array, normalised)
    cv2.imwrite(str(picture), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    return array, picture
