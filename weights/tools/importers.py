"""`python -m weights import SOURCE CHECKPOINT`: bring a DFDC team's trained checkpoint into the ensemble.

The steps, each a function the tests call on its own:

1. `read_checkpoint`: `.pth`, `.pt`, `.model`, extension-less files (the format is sniffed, not guessed from the
   name) and `.safetensors`. Pickles are read only with `torch.load(weights_only=True)` and an allowlist of numpy's
   scalar reconstructor, `numpy.dtype` and the float64 dtype class (the 1st place's `bce_best`); any other class in
   the pickle refuses the file, and nothing in it runs.
2. `unwrap`: the state dict inside `{"state_dict": ...}`, `{"model": ...}` (and `net`, `model_state_dict`) or a
   plain dict of tensors.
3. `refuse_unsupported`: layouts with no architecture here (WS-DAN attention, NTech's temporal Conv3d blocks,
   polimi's attention and siamese-tuned variants) are named and refused.
4. `map_keys`: the source's renames onto the target architecture (`module.` and the other wrapper prefixes
   stripped, unused heads dropped, heads renamed, lukemelas' efficientnet_pytorch keys onto timm's
   `tf_efficientnet_bN`, the stage layout read from timm's model itself).
5. `import_checkpoint`: fp16 cast to fp32, `num_classes` from the head, a strict load into
   `weights.create_model(arch, **arch_kwargs)`, for efficientnet_pytorch checkpoints a numerical check against
   the source library at the entry's input size, then `NAME.safetensors` beside the manifest and the manifest
   entry (the source's preset from `weights.tools.presets`, overridden by flags), written only once all of this
   passed: a refusal writes nothing.

Every refusal is an `ImportRefused` (a `WeightsError`) with a one-line reason.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from weights.checkpoint import WeightsError, load_checkpoint, sha256_of
from weights.manifest import AGGREGATIONS, VIDEO_SCORES, ModelSpec, default_manifest, load_ensemble
from weights.registry import (
    BOXES,
    INTERPOLATIONS,
    MARGIN_BASES,
    MARGIN_CUTS,
    PADS,
    PRECISIONS,
    RESIZES,
    ROUNDINGS,
    TIMM_PREFIX,
    InputSpec,
    arch_config,
    create_model,
)
from weights.tools.presets import PRESETS, SOURCES

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")  # where training scripts put the weights
INPUT_FIELDS = tuple(f.name for f in fields(InputSpec))
ENTRY_FIELDS = ("aggregation", "video_score", "tta", "optional")  # overridable besides the input's fields

# Heads of the registered (non-timm) architectures a source can target: the module whose weight's first
# dimension is the number of outputs.
REGISTERED_HEADS = {"i3d": "logits.conv3d", "resnet34_3d": "fc", "mc3_18": "fc", "r2plus1d_18": "fc", "r3d_18": "fc"}

# efficientnet_pytorch's native input sides (its `efficientnet_params`): what >= 0.7 bakes its padding for.
LUKEMELAS_NATIVE_SIZE = {0: 224, 1: 240, 2: 260, 3: 300, 4: 380, 5: 456, 6: 528, 7: 600}
# Sources whose checkpoints are in lukemelas' layout, and whether the team pinned efficientnet_pytorch 0.6.x.
LUKEMELAS_SOURCES = {"ntech": True, "polimi": False}
# Numerical check: timm's and the source library's feature maps must agree to this fraction of their scale.
CHECK_TOLERANCE = 1e-3

# lukemelas -> timm renames inside one block (stage-0 depthwise-separable blocks differ from the others).
DS_BLOCK_RENAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                    "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_BLOCK_RENAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                    "_bn2": "bn3"}
TOP_RENAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier", "classifier": "classifier"}


class ImportRefused(WeightsError):
    """A checkpoint cannot be imported; the message says why in one line. Nothing was written."""


# --- 1. reading -------------------------------------------------------------------------------------------------


def _numpy_scalar():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


def safe_globals() -> list:
    """The smallest allowlist that reads the teams' pickles beyond torch's own: numpy's scalar reconstructor
    (under its numpy 1.x and 2.x names), `numpy.dtype`, and the float64 dtype class its state is built on (the
    1st place's `bce_best`). Any other dtype class (object, void, ...) stays refused."""
    scalar = _numpy_scalar()
    allowed = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
               np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: dtypes have their own classes
    if dtypes is not None:
        allowed.append(dtypes.Float64DType)
    return allowed


def _file_format(path: Path) -> str:
    """'safetensors', 'zip' (torch.save since 1.6), 'legacy' (older torch.save) or 'unknown', from the bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":  # a pickle protocol opcode: the legacy format starts with a pickled magic number
        return "legacy"
    return "unknown"


def _pickle_refusal(error: Exception) -> str:
    """What torch's weights-only unpickler refused, in a few words."""
    text = str(error)
    for pattern in (r"GLOBAL (\S+)", r"but got <class '([^']+)'>", r"Unsupported operand (\S+)"):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    lines = [line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line]
    return lines[0].split("error:", 1)[-1].strip() if lines else text.splitlines()[0][:200]


def read_checkpoint(path: Path | str) -> Any:
    """The object stored in a checkpoint file, read without running any code from it (see `safe_globals`)."""
    path = Path(path)
    if not path.is_file():
        raise ImportRefused(f"checkpoint not found: {path}")
    kind = _file_format(path)
    if kind == "safetensors" or path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ImportRefused(f"{path.name}: not a readable safetensors file ({error})") from None
    if kind == "unknown":
        raise ImportRefused(f"{path.name}: not a PyTorch (torch.save) or safetensors file")
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as error:  # a zip cut short: its directory, at the end, is gone
            raise ImportRefused(f"{path.name}: a torch.save zip archive, cut short or damaged ({error}): copy the "
                                "file again") from None
        if any(name.endswith("constants.pkl") for name in names):
            raise ImportRefused(f"{path.name}: a TorchScript archive, not a state dict (save model.state_dict())")
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        what = _pickle_refusal(error)
        hint = " (a whole pickled model: save model.state_dict())" if what.startswith("torch.nn.modules.") else ""
        raise ImportRefused(f"{path.name}: refused to unpickle {what}{hint}: weights-only loading allows tensors, "
                            "plain containers and numpy float64 scalars (nothing in it ran)") from None
    except Exception as error:  # a file cut short fails in many places (EOFError, IndexError, struct.error, ...)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImportRefused(f"{path.name}: unreadable torch file ({reason})") from None


# --- 2. unwrapping ----------------------------------------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj: Any, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict in what a training script saved: the dict itself when every value is a tensor, else the
    one under `state_dict`, `model_state_dict`, `model` or `net` (nested wrappers too)."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            non_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            if obj and len(non_tensors) < len(obj):
                raise ImportRefused(f"{what}: a state dict with non-tensor entries ({', '.join(non_tensors[:4])})")
            raise ImportRefused(f"{what}: no state dict found (top-level keys: {keys or 'none'})")
        obj = obj[key]
    if not _is_state_dict(obj):
        raise ImportRefused(f"{what}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


# --- 3. layouts with no architecture here ----------------------------------------------------------------------


UNSUPPORTED_LAYOUTS = (
    (re.compile(r"(^|\.)attentions\.(conv|bn)\."),
     "a WS-DAN model (attention maps + bilinear attention pooling, \\WM/'s blend): no architecture here"),
    (re.compile(r"(^|\.)attconv\."),
     "an EfficientNet with polimi's attention block (efficientnet.attconv.*): no architecture here"),
    (re.compile(r"^(module\.)?feat_ext\."),
     "a polimi siamese-tuned model (feat_ext.* + a BatchNorm1d head): no architecture here"),
)


def refuse_unsupported(state: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Refuse layouts this project has no architecture for, naming the layout."""
    for key, tensor in state.items():
        if key.endswith("_expand_conv.weight") and tensor.dim() == 5:
            raise ImportRefused(f"{what}: NTech's temporal EfficientNet ({key} is a 5-D Conv3d over frames): "
                                "no architecture here")
        for pattern, reason in UNSUPPORTED_LAYOUTS:
            if pattern.search(key):
                raise ImportRefused(f"{what}: {reason} ({key})")


# --- 4. key maps --------------------------------------------------------------------------------------------------


@dataclass
class KeyMap:
    """A state dict under the target architecture's names, with what was renamed and dropped (rule -> tensors)."""

    state: dict[str, torch.Tensor]
    renames: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def strip(self, prefix: str, only_if_all: bool = False) -> None:
        """Remove `prefix` from the keys that start with it (with only_if_all: only if every key does)."""
        hits = [k for k in self.state if k.startswith(prefix)]
        if not hits or (only_if_all and len(hits) != len(self.state)):
            return
        self.rename(prefix, "", f"{prefix}* -> *")

    def rename(self, old: str, new: str, rule: str | None = None) -> None:
        """Rename the keys starting with `old` (a prefix; the whole key also matches) to start with `new`."""
        renamed = {}
        for key, tensor in self.state.items():
            if key == old or key.startswith(old):
                renamed[new + key[len(old):]] = tensor
                self.renames[rule or f"{old}* -> {new}*"] += 1
            else:
                renamed[key] = tensor
        if len(renamed) != len(self.state):
            raise ImportRefused(f"renaming {old!r} to {new!r} makes two keys equal")
        self.state = renamed

    def drop(self, prefix: str, why: str) -> None:
        """Remove the keys starting with `prefix` (tensors no architecture uses)."""
        gone = [k for k in self.state if k.startswith(prefix)]
        for key in gone:
            del self.state[key]
        if gone:
            self.dropped[f"{prefix}* ({why})"] += len(gone)


@lru_cache(maxsize=None)
def efficientnet_layout(arch: str) -> tuple[tuple[int, int, bool], ...]:
    """(stage, index in stage, depthwise-separable?) of every block of a timm EfficientNet, in order: where
    lukemelas' flat `_blocks.i` lands. Built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = create_model(arch, num_classes=1)
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(model, "conv_stem"):
        raise ImportRefused(f"{arch} is not a timm EfficientNet: efficientnet_pytorch checkpoints map onto "
                            "timm/tf_efficientnet_bN only")
    return tuple((s, j, not hasattr(block, "conv_pwl"))
                 for s, stage in enumerate(stages) for j, block in enumerate(stage))


def map_lukemelas(keymap: KeyMap, arch: str) -> None:
    """lukemelas' efficientnet_pytorch keys (`_conv_stem`, `_blocks.i.*`, `_fc`) -> timm's `tf_efficientnet_bN`."""
    layout = efficientnet_layout(arch)
    indices = {int(m.group(1)) for k in keymap.state if (m := re.match(r"_blocks\.(\d+)\.", k))}
    if indices and (max(indices) + 1 != len(layout) or len(indices) != len(layout)):
        raise ImportRefused(f"the checkpoint has {len(indices)} EfficientNet blocks, {arch} has {len(layout)}: "
                            f"{_efficientnet_hint(len(indices))}")
    mapped = {}
    for key, tensor in keymap.state.items():
        block = re.match(r"_blocks\.(\d+)\.([^.]+)(.*)$", key)
        if block:
            stage, index, separable = layout[int(block.group(1))]
            renames = DS_BLOCK_RENAMES if separable else IR_BLOCK_RENAMES
            module = renames.get(block.group(2), block.group(2))
            mapped[f"blocks.{stage}.{index}.{module}{block.group(3)}"] = tensor
            kind = "stage-0 depthwise-separable" if separable else "inverted-residual"
            keymap.renames[f"_blocks.i.* -> blocks.s.j.* ({kind} block renames)"] += 1
            continue
        top, _, rest = key.partition(".")
        if top in TOP_RENAMES and rest:
            mapped[f"{TOP_RENAMES[top]}.{rest}"] = tensor
            if TOP_RENAMES[top] != top:
                keymap.renames[f"{top}.* -> {TOP_RENAMES[top]}.*"] += 1
        else:
            mapped[key] = tensor  # left as is: named as unexpected when it does not fit
    keymap.state = mapped


def _efficientnet_hint(blocks: int) -> str:
    variants = {16: "b0", 23: "b1 or b2", 26: "b3", 32: "b4", 39: "b5", 45: "b6", 55: "b7"}
    variant = variants.get(blocks)
    return f"it looks like EfficientNet-{variant}: pass --arch timm/tf_efficientnet_{variant.split()[0]}" \
        if variant else "not an EfficientNet-B0..B7 layout"


def head_of(arch: str) -> str | None:
    """The module name of an architecture's classifier (its weight's first dimension = outputs), if known."""
    if arch.startswith(TIMM_PREFIX):
        config = timm.models.get_pretrained_cfg(arch.removeprefix(TIMM_PREFIX))
        head = getattr(config, "classifier", None)
        return head if isinstance(head, str) else None
    return REGISTERED_HEADS.get(arch)


def map_keys(source: str, state: Mapping[str, torch.Tensor], arch: str, strip_prefixes: Sequence[str] = (),
             renames: Sequence[tuple[str, str]] = ()) -> KeyMap:
    """The source's key map onto `arch`; touches names only (meta tensors work)."""
    keymap = KeyMap(dict(state))
    keymap.strip("module.", only_if_all=True)  # DistributedDataParallel / DataParallel
    head = head_of(arch)
    if source == "selimsef":
        keymap.drop("encoder.classifier.", "timm's unused ImageNet head")
        keymap.strip("encoder.")
        keymap.rename("fc.", f"{head or 'classifier'}.")
    elif source == "ntech" or (source == "polimi" and "efficientnet" in arch):
        keymap.strip("efficientnet.")  # polimi's wrapper; its `classifier` is timm's name already
        map_lukemelas(keymap, arch)
    elif source == "polimi":  # their Xception: Cadene's layout under `xception.`
        keymap.strip("xception.")
        keymap.rename("last_linear.", "fc.")
    elif source == "medics" and arch == "timm/legacy_seresnext50_32x4d":
        keymap.strip("backbone.")
        keymap.rename("fc.", "last_linear.")
    elif source == "wm":
        keymap.rename("last_linear.", "fc.")
    elif source == "plain":
        for prefix in strip_prefixes:
            keymap.strip(prefix)
        for old, new in renames:
            keymap.rename(old, new)
    return keymap


def lukemelas_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A polimi or NTech state dict under efficientnet_pytorch's own names (`_fc` for the head), as the source
    library's `EfficientNet` loads it."""
    keymap = KeyMap(dict(state))
    keymap.strip("module.", only_if_all=True)
    keymap.strip("efficientnet.")
    keymap.rename("classifier.", "_fc.")
    return keymap.state


# --- 5. the import ------------------------------------------------------------------------------------------------


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
            f"  margin: {margin}",
            f"  scores: aggregation {spec.aggregation}, video_score {spec.video_score or '(the manifest tracks)'}"
            f"{tta}, weight {spec.weight}",
        ]
        return "\n".join(lines)


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
                            "(it needs a detector): `python -m weights build` writes one, or pass --ensemble")
    load_ensemble(manifest)  # refuses a broken manifest before any work
    arch, entry = _preset(source, arch)
    name = name or _default_name(source, checkpoint)
    if not NAME_PATTERN.fullmatch(name):
        raise ImportRefused(f"model name {name!r}: use letters, digits, '_', '-' and '.' (it names the file)")
    if source == "plain" and (strip_prefixes or renames):
        renames = [_split_rename(r) for r in renames]
    elif strip_prefixes or renames:
        raise ImportRefused("--strip-prefix and --rename are for the plain source; the others map their own keys")

    what = checkpoint.name
    state = unwrap(read_checkpoint(checkpoint), what)
    refuse_unsupported(state, what)
    keymap = map_keys(source, state, arch, strip_prefixes, renames)
    notes = []
    cast = Counter(str(t.dtype).removeprefix("torch.") for t in keymap.state.values()
                   if t.is_floating_point() and t.dtype != torch.float32)
    keymap.state = {k: _fp32(t) for k, t in keymap.state.items()}
    if cast:
        notes.append("cast to float32: " + ", ".join(f"{n} {dtype}" for dtype, n in cast.items()))

    head = head_of(arch)
    arch_kwargs = dict(entry.get("arch_kwargs", {}))
    if head and f"{head}.weight" in keymap.state:
        arch_kwargs["num_classes"] = int(keymap.state[f"{head}.weight"].shape[0])
    outputs = arch_kwargs.get("num_classes")
    if outputs is not None and outputs not in (1, 2):
        raise ImportRefused(f"{what}: the head {head} has {outputs} outputs; the kernel reads 1 (a logit) or 2")
    model = _fit(arch, arch_kwargs, keymap, what, notes)

    spec = _spec(source, name, arch, arch_kwargs, entry, overrides or {}, positive_class, weight, outputs, what)
    if source in LUKEMELAS_SOURCES and "efficientnet" in arch:
        notes.extend(check_lukemelas(model, state, arch, spec.input.shape, pinned=LUKEMELAS_SOURCES[source]))
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


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.dtype != torch.float32:
        tensor = tensor.to(torch.float32)
    return tensor


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
    entry_fields = {k: entry[k] for k in ("aggregation", "video_score", "tta") if k in entry}
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
            kind=entry.get("kind", "frame"), input=InputSpec(**_tuples(spec_input)), positive_class=positive_class,
            weight=weight, **_tuples(entry_fields),
        )
    except WeightsError as error:  # ModelSpec's own checks name the model already
        raise ImportRefused(str(error)) from None
    except (TypeError, ValueError) as error:
        raise ImportRefused(f"model {name}: {error}") from None


def _tuples(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def check_lukemelas(model: nn.Module, state: Mapping[str, torch.Tensor], arch: str, shape: tuple[int, int],
                    pinned: bool) -> list[str]:
    """Show, at the entry's input size, that the timm model equals the source model as the installed
    efficientnet_pytorch builds it (its default, native image size, as the teams built it); refuse otherwise.

    efficientnet_pytorch 0.6.x pads every stride-2 convolution for an even side, which is TF "same" wherever the
    input sides are multiples of 32; >= 0.7 bakes the padding for the model's native size and differs from timm
    elsewhere (B4 built for 380, run at 224). Returns the summary's lines (the check, and for an unpinned source a
    warning where >= 0.7's padding would have differed)."""
    try:
        import efficientnet_pytorch
        from efficientnet_pytorch import EfficientNet
    except ImportError:
        raise ImportRefused("efficientnet_pytorch is needed to check this checkpoint's padding against timm at "
                            f"{shape[0]}x{shape[1]} (pip install --no-deps -r requirements-sources.txt)") from None
    variant = int(re.search(r"efficientnet_b(\d)", arch).group(1))
    native = lukemelas_native(state)
    outputs = int(native["_fc.weight"].shape[0])
    if "override_params" in inspect.signature(EfficientNet.from_name).parameters:  # 0.6.x
        source = EfficientNet.from_name(f"efficientnet-b{variant}", override_params={"num_classes": outputs})
    else:  # 0.7+: overrides as keyword arguments
        source = EfficientNet.from_name(f"efficientnet-b{variant}", num_classes=outputs)
    native = {k: _fp32(v) for k, v in native.items()}
    for key in source.state_dict():
        if key not in native and key.endswith(".num_batches_tracked"):
            native[key] = torch.zeros((), dtype=torch.long)
    try:
        source.load_state_dict(native, strict=True)
    except RuntimeError as error:
        raise ImportRefused(f"efficientnet_pytorch's EfficientNet-B{variant} does not load the checkpoint: "
                            f"{str(error).splitlines()[0]}") from None
    source.eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, *shape, generator=generator)
    with torch.inference_mode():  # the feature maps show a padding difference whatever the head's weights
        reference_features, features = source.extract_features(pixels), model.forward_features(pixels)
        reference = source._fc(source._avg_pooling(reference_features).flatten(1))
        logits = model.forward_head(features)
    scale = float(reference_features.abs().max())
    if reference_features.shape != features.shape:  # 0.6.x at odd sides: other feature-map sizes
        difference = logit_difference = float("inf")
    else:
        difference = float((reference_features - features).abs().max())
        logit_difference = float((reference - logits).abs().max())
    version = getattr(efficientnet_pytorch, "__version__", "?")
    where = f"{shape[0]}x{shape[1]}"
    if not difference <= CHECK_TOLERANCE * scale:
        shapes = f"; maps {tuple(features.shape[2:])} vs {tuple(reference_features.shape[2:])}" \
            if reference_features.shape != features.shape else ""
        raise ImportRefused(f"at {where} timm's {arch.removeprefix(TIMM_PREFIX)} differs from efficientnet_pytorch "
                            f"{version}'s model by {difference:.3g} in its features (up to {scale:.3g}{shapes}): "
                            "the padding differs at this size; import at a size whose sides are multiples of 32")
    notes = [f"check: timm equals efficientnet_pytorch {version} at {where}: max |difference| {difference:.2g} in "
             f"the features (up to {scale:.3g}), {logit_difference:.2g} in the logits"]
    baked = baked_padding_differences(model, LUKEMELAS_NATIVE_SIZE[variant], shape)
    if baked and not pinned:
        notes.append(f"warning: the source did not pin efficientnet_pytorch; had it trained with >= 0.7, its "
                     f"padding was baked for {LUKEMELAS_NATIVE_SIZE[variant]} px and differs from timm at {where} "
                     f"in {', '.join(baked)}: confirm the scores on known videos")
    return notes


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def baked_padding_differences(model: nn.Module, native: int, shape: tuple[int, int]) -> list[str]:
    """The convolutions of a timm EfficientNet whose padding efficientnet_pytorch >= 0.7 (padding computed once
    for `native` px, then tracked through the strides) sets differently from TF "same" at `shape`."""
    convs = [("conv_stem", model.conv_stem)]
    convs += [(f"blocks.{s}.{j}.conv_dw", block.conv_dw) for s, stage in enumerate(model.blocks)
              for j, block in enumerate(stage)]
    baked, actual, differ = [native, native], list(shape), []
    for name, conv in convs:
        kernel, stride = conv.kernel_size, conv.stride
        if any(_same_padding(baked[d], kernel[d], stride[d]) != _same_padding(actual[d], kernel[d], stride[d])
               for d in (0, 1)):
            differ.append(name)
        baked = [-(-baked[d] // stride[d]) for d in (0, 1)]
        actual = [-(-actual[d] // stride[d]) for d in (0, 1)]
    return differ


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
                     f"`python -m weights export-onnx {spec.name}` for the CPU runtime")
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


# --- the command line ---------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    """The `import` subcommand's arguments (argparse)."""
    parser.add_argument("source", choices=SOURCES, help="whose layout the checkpoint is in")
    parser.add_argument("checkpoint", type=Path, help=".pth/.pt/.model/no extension (torch.save) or .safetensors")
    parser.add_argument("--name", default=None, help="the model's name in the manifest (default: SOURCE_FILENAME)")
    parser.add_argument("--arch", default=None, help="target architecture (default: the source's preset)")
    parser.add_argument("--ensemble", type=Path, default=None,
                        help="manifest to add to (default: $DEEPFAKE_ENSEMBLE, else the built one)")
    parser.add_argument("--weight", type=float, default=1.0, help="blend weight")
    parser.add_argument("--positive-class", choices=("FAKE", "REAL"), default=None,
                        help="the class of the single logit, or of column 1 of a 2-output head")
    parser.add_argument("--strip-prefix", action="append", default=[], metavar="P",
                        help="plain: remove this key prefix (repeatable)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="plain: rename this key prefix (repeatable)")
    preset = parser.add_argument_group("preset overrides")
    preset.add_argument("--size", type=_size, help="input side, or HxW")
    preset.add_argument("--margin", type=_optional(float), help="per side, fraction of the box; none: the detector's")
    preset.add_argument("--margin-sides", type=_numbers(4), metavar="L,T,R,B",
                        help="the margin's multiple per side (polimi: 1,2,1,1)")
    preset.add_argument("--margin-of", choices=MARGIN_BASES, help="what the margin is a fraction of")
    preset.add_argument("--margin-cut", choices=MARGIN_CUTS, help="how the margin becomes whole pixels")
    preset.add_argument("--resize", choices=RESIZES)
    preset.add_argument("--resize-to", type=_optional(_size), help="side or HxW; none to unset")
    preset.add_argument("--rounding", choices=ROUNDINGS, help="how an isotropic resize cuts the scaled side")
    preset.add_argument("--pad", choices=PADS, help="what a centred pad fills with")
    preset.add_argument("--interpolation", type=_interpolation, help="SHRINK,ENLARGE or one of " +
                        "/".join(INTERPOLATIONS))
    preset.add_argument("--precision", choices=PRECISIONS, help="the pixels a resize runs on")
    preset.add_argument("--mean", type=_numbers(3))
    preset.add_argument("--std", type=_numbers(3))
    preset.add_argument("--frames", type=int)
    preset.add_argument("--stride", type=int)
    preset.add_argument("--clips", type=int)
    preset.add_argument("--box", choices=BOXES)
    preset.add_argument("--aggregation", choices=AGGREGATIONS)
    preset.add_argument("--video-score", type=_optional(str), help=f"{'/'.join(VIDEO_SCORES)}; none: the manifest's")
    preset.add_argument("--tta", type=_optional(str), help="hflip, or none")


OVERRIDE_FLAGS = ("size", "margin", "margin_sides", "margin_of", "margin_cut", "resize", "resize_to", "rounding",
                  "pad", "interpolation", "precision", "mean", "std", "frames", "stride", "clips", "box",
                  "aggregation", "video_score", "tta")
_UNSET = object()


def run(args) -> ImportResult:
    """`python -m weights import` from parsed arguments."""
    overrides = {}
    for flag in OVERRIDE_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = None if value is _UNSET else value
    if "tta" in overrides:
        overrides["tta"] = [] if overrides["tta"] is None else [overrides["tta"]]
    return import_checkpoint(args.source, args.checkpoint, name=args.name, arch=args.arch, ensemble=args.ensemble,
                             weight=args.weight, positive_class=args.positive_class, overrides=overrides,
                             strip_prefixes=args.strip_prefix, renames=args.rename)


def _size(text: str) -> int | list[int]:
    parts = [int(p) for p in re.split(r"[x,]", text.strip())]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts
    raise ValueError(text)


def _optional(convert):
    def parse(text: str):
        return _UNSET if text.strip().lower() == "none" else convert(text)

    parse.__name__ = convert.__name__
    return parse


def _interpolation(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    return parts * 2 if len(parts) == 1 else parts


def _numbers(count: int):
    def parse(text: str) -> list[float]:
        values = [float(p) for p in text.split(",")]
        if len(values) != count:
            raise ValueError(text)
        return values

    parse.__name__ = f"{count} numbers"
    return parse
