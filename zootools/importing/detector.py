"""`python -m zootools import-detector CHECKPOINT`: a RetinaFace checkpoint in biubug6/Pytorch_Retinaface's layout
(their Resnet50_Final.pth or mobilenet0.25_Final.pth, \\WM/'s RetinaFace-Resnet50-fixed.pth) as the manifest's
detector: read without unpickling code, `module.` stripped, the backbone recognised from the keys, loaded strictly,
written as safetensors and the detector entry replaced, both through verified temporary files."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from safetensors.torch import save_file

from weights.archs.retinaface import BIUBUG6_MEAN
from weights.checkpoint import WeightsError, load_checkpoint, sha256_of
from weights.manifest import DetectorSpec, default_manifest, load_ensemble
from weights.registry import create_model
from zootools.importing.importer import NAME_PATTERN, _fit, _temporary
from zootools.importing.keymaps import KeyMap, fp32
from zootools.importing.reading import ImportRefused, read_checkpoint, unwrap

# The backbone a biubug6 checkpoint holds, told by a key only it has.
BACKBONE_KEYS = {"body.layer1.0.conv1.weight": "retinaface_resnet50", "body.stage1.0.0.weight": "retinaface_mobilenet"}
# \WM/'s settings (their RetinaFace call): confidence 0.8 on the full-resolution frame, biubug6's mean.
WM_SETTINGS = {"min_score": 0.8, "downscale": 1.0}


@dataclass(frozen=True)
class DetectorImport:
    """What an import-detector wrote."""

    spec: DetectorSpec
    manifest: Path
    notes: tuple[str, ...]

    def summary(self) -> str:
        spec = self.spec
        lines = [f"detector of {self.manifest}: {spec.arch} from {spec.checkpoint}, min_score {spec.min_score}, "
                 f"downscale {spec.downscale}, BGR mean {list(spec.bgr_mean)}"]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def import_detector(checkpoint: Path | str, ensemble: Path | str | None = None, name: str | None = None,
                    min_score: float = WM_SETTINGS["min_score"],
                    downscale: float = WM_SETTINGS["downscale"]) -> DetectorImport:
    """Make a biubug6 RetinaFace checkpoint the detector of `ensemble` (default: the default manifest) as
    NAME.safetensors beside it (NAME: the checkpoint's stem); raises ImportRefused and writes nothing on failure."""
    checkpoint = Path(checkpoint)
    manifest = Path(ensemble) if ensemble is not None else default_manifest()
    if not manifest.is_file():
        raise ImportRefused(f"ensemble manifest not found: {manifest} (`python -m zootools build` writes one)")
    current = load_ensemble(manifest)
    name = name or checkpoint.stem
    if not NAME_PATTERN.fullmatch(name):
        raise ImportRefused(f"name {name!r}: use letters, digits, '_', '-' and '.' (it names the file)")
    keymap = KeyMap(unwrap(read_checkpoint(checkpoint), checkpoint.name))
    keymap.strip("module.")  # saved from DataParallel
    keymap.state = {key: fp32(tensor) for key, tensor in keymap.state.items()}
    arch = next((arch for key, arch in BACKBONE_KEYS.items() if key in keymap.state), None)
    if arch is None:
        raise ImportRefused(f"{checkpoint.name}: not a biubug6 RetinaFace (no {' or '.join(BACKBONE_KEYS)})")
    notes = [f"{rule}: {count} keys" for rule, count in keymap.renames.items()]
    model = _fit(arch, {}, keymap, checkpoint.name, notes)
    spec = replace(current.detector, arch=arch, checkpoint=f"{name}.safetensors", sha256="", min_score=min_score,
                   downscale=downscale, bgr_mean=BIUBUG6_MEAN, runtime="auto", onnx=None, onnx_sha256=None)
    if any(f.path == spec.checkpoint for f in current.files() if not f.label.startswith("detector.")):
        raise ImportRefused(f"{spec.checkpoint} is a model's file in {manifest.name}: pass another --name")
    return DetectorImport(_write(manifest, spec, model.state_dict(), checkpoint), manifest, tuple(notes))


def _write(manifest: Path, spec: DetectorSpec, state: dict, checkpoint: Path) -> DetectorSpec:
    """NAME.safetensors and the manifest's new detector entry, each checked (read back strictly, the manifest
    parsed) as a temporary file before it replaces anything."""
    folder = manifest.parent
    temporary = []
    try:
        weights_tmp = _temporary(folder, spec.checkpoint)
        temporary.append(weights_tmp)
        save_file({k: v.contiguous() for k, v in state.items()}, str(weights_tmp),
                  metadata={"source": "biubug6/Pytorch_Retinaface layout", "imported_from": checkpoint.name,
                            "source_sha256": sha256_of(checkpoint)})
        spec = replace(spec, sha256=sha256_of(weights_tmp))
        load_checkpoint(create_model(spec.arch), weights_tmp, spec.sha256)
        raw = json.loads(manifest.read_text())
        raw["detector"] = json.loads(json.dumps(asdict(spec)))
        manifest_tmp = _temporary(folder, manifest.name)
        temporary.append(manifest_tmp)
        manifest_tmp.write_text(json.dumps(raw, indent=2) + "\n")
        try:
            load_ensemble(manifest_tmp)
        except WeightsError as error:
            raise ImportRefused(f"the new manifest does not load: {error}") from None
        os.replace(weights_tmp, folder / spec.checkpoint)
        temporary.remove(weights_tmp)
        os.replace(manifest_tmp, manifest)
        temporary.remove(manifest_tmp)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return spec
