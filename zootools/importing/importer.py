"""The import itself: the checkpoint read and mapped, cast to fp32, loaded strictly into the target architecture,
checked against efficientnet_pytorch where it came from there, then `NAME.safetensors` and the manifest entry (the
source's preset, the flags over it) written through verified temporary files: a refusal writes nothing."""
from __future__ import annotations

import copy
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from weights.archs.efficientnet import apply_static_padding
from weights.checkpoint import WeightsError, load_checkpoint, sha256_of
from weights.manifest import LANDMARK_DETECTORS, ModelSpec, as_tuples, default_manifest, load_ensemble
from weights.registry import InputSpec, arch_config, create_model
from zootools.importing.efficientnet_check import check_lukemelas, lukemelas_padding
from zootools.importing.keymaps import KeyMap, fp32, head_of, map_keys, recognised_arch
from zootools.importing.reading import STATE_DICT_KEYS, ImportRefused, read_checkpoint, unwrap
from zootools.importing.variants import choose_arch, layout_arch, variant_kwargs
from zootools.presets import PRESETS, SOURCES

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
INPUT_FIELDS = tuple(f.name for f in fields(InputSpec))
ENTRY_FIELDS = ("aggregation", "video_score", "tta")  # overridable besides the input's fields
# Sources whose checkpoints are in lukemelas' layout, and whether the team pinned efficientnet_pytorch 0.6.x.
LUKEMELAS_SOURCES = {"ntech": True, "polimi": False}


@dataclass(frozen=True)
class ImportResult:
    """What an import wrote, and what it did to get there."""

    spec: ModelSpec
    manifest: Path
    checkpoint: Path
    tensors: int
    renames: dict[str, int]
    dropped: dict[str, int]
    notes: tuple[str, ...]
    replaced: bool

    def summary(self) -> str:
        spec, spec_input = self.spec, self.spec.input
        outputs = spec.arch_kwargs.get("num_classes", 1)
        resize = spec_input.resize + (f" to {spec_input.resize_to}" if spec_input.resize_to else "")
        clip = f", {spec_input.frames} frames, box {spec_input.box}" if spec.kind != "frame" else ""
        tta = f", tta {'+'.join(spec.tta)}" if spec.tta else ""
        margin = "the detector's" if spec_input.margin is None else (
            f"{spec_input.margin:.4g} of the box's {spec_input.margin_of}, x {list(spec_input.margin_sides)} "
            f"(left, top, right, bottom), cut {spec_input.margin_cut}")
        lines = [
            f"{'replaced' if self.replaced else 'added'} {spec.name} in {self.manifest}: {spec.arch} "
            f"{json.dumps(spec.arch_kwargs)}, {outputs} output(s), positive class {spec.positive_class}",
            f"  tensors loaded: {self.tensors} (strict) -> {self.checkpoint.name} (sha256 {spec.sha256[:16]}...)",
            "  renames: " + ("; ".join(f"{rule} ({n})" for rule, n in self.renames.items()) or "none"),
            "  dropped: " + ("; ".join(f"{rule} ({n})" for rule, n in self.dropped.items()) or "nothing"),
            *(f"  {note}" for note in self.notes),
            f"  input: {spec.kind} {'x'.join(map(str, spec_input.shape))}, {resize} (rounding {spec_input.rounding}, "
            f"pad {spec_input.pad}), interpolation {'/'.join(spec_input.interpolation)} in {spec_input.precision}, "
            f"mean {list(spec_input.mean)}, std {[round(v, 6) for v in spec_input.std]}{clip}",
            f"  margin: {margin}" + (f"; aligned on the {spec_input.align} template" if spec_input.align else ""),
            f"  frames: {timeline(spec_input)}",
            f"  scores: aggregation {spec.aggregation}, video_score {spec.video_score or '(the manifest tracks)'}"
            f"{tta}, weight {spec.weight}",
        ]
        return "\n".join(lines)


def timeline(spec_input: InputSpec) -> str:
    """Which frames and faces a model sees, in words."""
    if spec_input.every:
        rate = f" sampled at {spec_input.fps:g} fps" if spec_input.fps else ""
        words = f"own timeline: from frame {spec_input.start} every {spec_input.every}{rate}"
    else:
        words = "the run's key frames" + (" (clips centred on them)" if spec_input.frames > 1 else "")
    if spec_input.share != (1, 0, 1):
        period, first, count = spec_input.share
        words += f"; {count} of each {period} from the {first + 1}."
    if spec_input.limit:
        words += f"; at most {spec_input.limit} per track"
    return words + ("; every other one flipped" if spec_input.flip == "alternate" else "")


def import_checkpoint(source: str, checkpoint: Path | str, *, name: str | None = None, arch: str | None = None,
                      ensemble: Path | str | None = None, weight: float = 1.0, positive_class: str | None = None,
                      overrides: Mapping[str, Any] | None = None, strip_prefixes: Sequence[str] = (),
                      renames: Sequence[tuple[str, str] | str] = ()) -> ImportResult:
    """Import `checkpoint` (a `source` team's layout) as model `name` of the manifest `ensemble` (default: the
    default manifest): strict load, `NAME.safetensors` beside the manifest, the entry added or replaced.

    `overrides`: InputSpec fields (size, margin, margin_sides, margin_of, margin_cut, resize, resize_to, rounding,
    pad, interpolation, precision, mean, std, frames, stride, clips, box) and entry fields (aggregation,
    video_score, tta, optional) replacing the source's preset.
    `strip_prefixes` and `renames` (OLD=NEW prefix renames) are for the `plain` source. Raises ImportRefused
    (one line) and writes nothing when any step fails.
    """
    checkpoint = Path(checkpoint)
    if source not in SOURCES:
        raise ImportRefused(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    manifest = Path(ensemble) if ensemble is not None else default_manifest()
    if not manifest.is_file():
        raise ImportRefused(f"ensemble manifest not found: {manifest}; an import adds to an existing manifest "
                            "(it needs a detector): `python -m zootools build` writes one, or pass --ensemble")
    detector = load_ensemble(manifest).detector  # refuses a broken manifest before any work
    name = name or _default_name(source, checkpoint)
    if not NAME_PATTERN.fullmatch(name):
        raise ImportRefused(f"model name {name!r}: use letters, digits, '_', '-' and '.' (it names the file)")
    if source == "plain" and (strip_prefixes or renames):
        renames = [_split_rename(r) for r in renames]
    elif strip_prefixes or renames:
        raise ImportRefused("--strip-prefix and --rename are for the plain source; the others map their own keys")

    what = checkpoint.name
    saved = read_checkpoint(checkpoint)
    state = unwrap(saved, what)
    arch, entry = _preset(source, choose_arch(source, state, arch) or recognised_arch(source, state))
    frames = (overrides or {}).get("frames") or entry.get("input", {}).get("frames", 1)
    arch_kwargs = {**entry.get("arch_kwargs", {}), **variant_kwargs(arch, state, frames)}
    keymap = map_keys(source, state, layout_arch(arch, arch_kwargs), strip_prefixes, renames)
    notes = [f"ignored beside the weights: {', '.join(extras)}"] if (extras := _beside_weights(saved)) else []
    cast = Counter(str(t.dtype).removeprefix("torch.") for t in keymap.state.values()
                   if t.is_floating_point() and t.dtype != torch.float32)
    keymap.state = {k: fp32(t) for k, t in keymap.state.items()}
    if cast:
        notes.append("cast to float32: " + ", ".join(f"{n} {dtype}" for dtype, n in cast.items()))

    head = head_of(arch)
    if head and f"{head}.weight" in keymap.state:
        arch_kwargs["num_classes"] = int(keymap.state[f"{head}.weight"].shape[0])
    if "attentions.conv.weight" in keymap.state:  # WS-DAN: M attention maps
        arch_kwargs["num_attentions"] = int(keymap.state["attentions.conv.weight"].shape[0])
    outputs = arch_kwargs.get("num_classes")
    if outputs is not None and outputs not in (1, 2):
        raise ImportRefused(f"{what}: the head {head} has {outputs} outputs; the kernel reads 1 (a logit) or 2")
    model = _fit(arch, arch_kwargs, keymap, what, notes)

    if entry.get("input", {}).get("align") and detector.arch not in LANDMARK_DETECTORS and "align" not in (
            overrides or {}):
        entry["input"].update(PRESETS[source]["unaligned"])
        notes.append(f"the manifest's detector {detector.arch} gives no landmarks: the face box is cut with margin "
                     f"{entry['input']['margin']} and stretched instead of aligned (for the team's alignment, a "
                     "RetinaFace manifest: python -m zootools build --detector-preset wm)")
    spec = _spec(source, name, arch, arch_kwargs, entry, overrides or {}, positive_class, weight, outputs, what)
    if source in LUKEMELAS_SOURCES and "efficientnet" in arch:
        padding = lukemelas_padding(model, layout_arch(arch, arch_kwargs), spec.input.shape)
        if padding:  # timm's own padding is not 0.6.3's at this size: 0.6.3's fixed pads, checked below
            apply_static_padding(model, padding["static_padding"])
            spec = replace(spec, arch_kwargs={**spec.arch_kwargs, **padding})
            notes.append(f"padding: efficientnet_pytorch 0.6.3's fixed pads for {padding['static_padding']} px "
                         f"(static_padding; timm's own differ at {'x'.join(map(str, spec.input.shape))})")
        notes.extend(check_lukemelas(model, state, arch, spec.input.shape, pinned=LUKEMELAS_SOURCES[source],
                                     mean=spec.input.mean, std=spec.input.std, arch_kwargs=spec.arch_kwargs))
    return _write(manifest, spec, keymap, model, notes, source, checkpoint)


def _preset(source: str, arch: str | None) -> tuple[str, dict]:
    """The target arch and its preset entry (a deep copy) for a source."""
    if source == "plain":
        if not arch:
            raise ImportRefused("the plain source needs --arch (a registered architecture or timm/<name>)")
        try:
            config = arch_config(arch)
        except KeyError as error:
            raise ImportRefused(str(error).strip("'\"")) from None
        return arch, {"arch_kwargs": {}, "kind": config.kind,
                      "input": asdict(config.input) if config.input else {}, "positive_class": "FAKE"}
    table = PRESETS[source]
    arch = arch or table["default_arch"]
    if arch is None:
        raise ImportRefused(f"{source} checkpoints need --arch, one of {', '.join(table['archs'])}")
    if arch not in table["archs"]:
        raise ImportRefused(f"{source} checkpoints import as {', '.join(table['archs'])}, not {arch}")
    return arch, copy.deepcopy(table["archs"][arch])


def _beside_weights(saved: Any) -> list[str]:
    """The top-level entries of a checkpoint other than its state dict (epochs, logs, \\WM/'s feature_center):
    not imported."""
    if not isinstance(saved, Mapping) or all(isinstance(v, torch.Tensor) for v in saved.values()):
        return []
    return [str(k) for k in saved if k not in STATE_DICT_KEYS]


def _default_name(source: str, checkpoint: Path) -> str:
    stem = checkpoint.name.removesuffix(checkpoint.suffix) if checkpoint.suffix in (
        ".pth", ".pt", ".model", ".safetensors", ".bin", ".ckpt") else checkpoint.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{source}_{stem}").strip("._-")


def _split_rename(rename: tuple[str, str] | str) -> tuple[str, str]:
    if isinstance(rename, str):
        old, sep, new = rename.partition("=")
        if not sep or not old:
            raise ImportRefused(f"--rename takes OLD=NEW (a key prefix and its replacement), not {rename!r}")
        return old, new
    return tuple(rename)


def _fit(arch: str, arch_kwargs: dict, keymap: KeyMap, what: str, notes: list[str]) -> nn.Module:
    """The target model with the mapped state loaded strictly; every mismatch named in one line."""
    try:
        model = create_model(arch, **arch_kwargs)
    except (KeyError, TypeError, ValueError) as error:
        raise ImportRefused(f"cannot build {arch} with {arch_kwargs}: {error}") from None
    expected = model.state_dict()
    state = keymap.state
    filled = [k for k in expected if k not in state and k.endswith(".num_batches_tracked")
              and k.replace("num_batches_tracked", "running_mean") in state]
    for key in filled:  # absent from checkpoints of torch < 0.4.1; unused in eval
        state[key] = torch.zeros((), dtype=torch.long)
    if filled:
        notes.append(f"filled {len(filled)} BatchNorm num_batches_tracked counters the checkpoint lacks "
                     "(unused at inference)")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = [f"missing {len(missing)} keys ({_some(missing)})" if missing else "",
                 f"unexpected {len(unexpected)} ({_some(unexpected)})" if unexpected else "",
                 f"shapes differ for {len(shapes)} ({_some(shapes)})" if shapes else ""]
        raise ImportRefused(f"{what} does not fit {arch}: " + "; ".join(p for p in parts if p))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ImportRefused(f"{what} does not fit {arch}: {str(error).splitlines()[0]}") from None
    return model.eval()


def _some(names: Sequence[str], count: int = 4) -> str:
    shown = ", ".join(names[:count])
    return shown + (f", ... {len(names) - count} more" if len(names) > count else "")


def _spec(source: str, name: str, arch: str, arch_kwargs: dict, entry: dict, overrides: Mapping[str, Any],
          positive_class: str | None, weight: float, outputs: int | None, what: str) -> ModelSpec:
    """The manifest entry: the preset, the flags over it; sha256 filled in when the file is written."""
    unknown = set(overrides) - set(INPUT_FIELDS) - set(ENTRY_FIELDS)
    if unknown:
        raise ImportRefused(f"unknown preset overrides: {', '.join(sorted(unknown))}")
    spec_input = {**entry.get("input", {}), **{k: v for k, v in overrides.items() if k in INPUT_FIELDS}}
    if "size" not in spec_input:
        raise ImportRefused(f"{arch} has no default input size: pass --size")
    entry_fields = {k: entry[k] for k in ENTRY_FIELDS if k in entry}
    entry_fields.update({k: v for k, v in overrides.items() if k in ENTRY_FIELDS})
    if positive_class is None:
        if outputs == 2 and (source == "plain" or not PRESETS[source]["fixed_positive_class"]):
            raise ImportRefused(f"{what} has a 2-output head and {source} does not fix which class column 1 is: "
                                "pass --positive-class FAKE or REAL (the class of column 1; confirm it on a known "
                                "video)")
        positive_class = entry.get("positive_class") or "FAKE"
    try:
        return ModelSpec(
            name=name, arch=arch, checkpoint=f"{name}.safetensors", sha256="", arch_kwargs=arch_kwargs,
            kind=entry.get("kind", "frame"), input=InputSpec(**as_tuples(spec_input)), positive_class=positive_class,
            weight=weight, **as_tuples(entry_fields),
        )
    except WeightsError as error:  # ModelSpec's own checks name the model already
        raise ImportRefused(str(error)) from None
    except (TypeError, ValueError) as error:
        raise ImportRefused(f"model {name}: {error}") from None


def _write(manifest: Path, spec: ModelSpec, keymap: KeyMap, model: nn.Module, notes: list[str], source: str,
           checkpoint: Path) -> ImportResult:
    """Write NAME.safetensors and the manifest entry, both through temporary files verified before they replace
    anything: a failure leaves the folder as it was."""
    folder = manifest.parent
    target = folder / spec.checkpoint
    raw = json.loads(manifest.read_text())
    entries = raw.get("models", [])
    replaced = any(e.get("name") == spec.name for e in entries)
    others = [raw.get("detector", {})] + [e for e in entries if e.get("name") != spec.name]
    for other in others:
        for key in ("checkpoint", "onnx"):
            if other.get(key) and (folder / other[key]).resolve() == target.resolve():
                raise ImportRefused(f"{target.name} is {other.get('name', 'the detector')}'s {key}: choose "
                                    "another --name")
    expected = model.state_dict()  # what was loaded, in the model's order
    # in the model's dtypes (an fp16 copy may have turned num_batches_tracked into floats), one storage each
    tensors = {k: keymap.state[k].to(expected[k].dtype).contiguous().clone() for k in expected}
    previous = next((e for e in entries if e.get("name") == spec.name), {})
    if previous.get("onnx"):
        notes.append(f"the previous ONNX export {previous['onnx']} is no longer referenced: rerun "
                     f"`python -m zootools export-onnx {spec.name}` for the CPU runtime")
    temporary = []
    try:
        weights_tmp = _temporary(folder, target.name)
        temporary.append(weights_tmp)
        save_file(tensors, str(weights_tmp), metadata={"source": source, "imported_from": checkpoint.name,
                                                       "source_sha256": sha256_of(checkpoint)})
        digest = sha256_of(weights_tmp)
        spec = ModelSpec(**{**_fields(spec), "sha256": digest})
        load_checkpoint(create_model(spec.arch, **spec.arch_kwargs), weights_tmp, digest)  # reads back strictly
        entry = json.loads(json.dumps(asdict(spec)))
        raw["models"] = [entry if e.get("name") == spec.name else e for e in entries] + ([] if replaced else [entry])
        manifest_tmp = _temporary(folder, manifest.name)
        temporary.append(manifest_tmp)
        manifest_tmp.write_text(json.dumps(raw, indent=2) + "\n")
        load_ensemble(manifest_tmp)  # the whole manifest still parses
        os.replace(weights_tmp, target)
        temporary.remove(weights_tmp)
        os.replace(manifest_tmp, manifest)
        temporary.remove(manifest_tmp)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return ImportResult(spec=spec, manifest=manifest, checkpoint=target, tensors=len(tensors),
                        renames=dict(keymap.renames), dropped=dict(keymap.dropped), notes=tuple(notes),
                        replaced=replaced)


def _fields(spec: ModelSpec) -> dict:
    return {f.name: getattr(spec, f.name) for f in fields(spec)}


def _temporary(folder: Path, name: str) -> Path:
    handle, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    return Path(path)
