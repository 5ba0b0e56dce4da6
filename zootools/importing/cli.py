"""`python -m zootools import`'s arguments, turned into an `import_checkpoint` call."""
from __future__ import annotations

import re
from pathlib import Path

from weights.manifest import AGGREGATIONS, VIDEO_SCORES
from weights.registry import (
    ALIGNMENTS,
    BOXES,
    FLIPS,
    INTERPOLATIONS,
    MARGIN_BASES,
    MARGIN_CUTS,
    PADS,
    PRECISIONS,
    RESIZES,
    ROUNDINGS,
)
from zootools.importing.importer import ENTRY_FIELDS, INPUT_FIELDS, ImportResult, import_checkpoint
from zootools.presets import SOURCES


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
    preset.add_argument("--align", type=_optional(str), help=f"a landmark template ({'/'.join(ALIGNMENTS)}), or none")
    preset.add_argument("--every", type=int, help="own timeline: every k-th sampled frame (0: the run's key frames)")
    preset.add_argument("--fps", type=float, help="own timeline: sample the video at about this rate first")
    preset.add_argument("--start", type=int, help="own timeline: its first frame")
    preset.add_argument("--limit", type=int, help="at most this many inputs per track (0: no limit)")
    preset.add_argument("--share", type=_numbers(3, int), metavar="PERIOD,FIRST,COUNT",
                        help="keep COUNT of each PERIOD inputs from FIRST (NTech: 4,0,2 and 4,2,2)")
    preset.add_argument("--flip", choices=FLIPS, help="alternate: every other input mirrored")
    preset.add_argument("--aggregation", choices=AGGREGATIONS)
    preset.add_argument("--video-score", type=_optional(str), help=f"{'/'.join(VIDEO_SCORES)}; none: the manifest's")
    preset.add_argument("--tta", type=_optional(str), help="hflip, or none")


OVERRIDE_FLAGS = (*INPUT_FIELDS, *ENTRY_FIELDS)  # each has its flag in add_arguments
_UNSET = object()


def run(args) -> ImportResult:
    """`python -m zootools import` from parsed arguments."""
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


def _numbers(count: int, kind=float):
    def parse(text: str) -> list:
        values = [kind(p) for p in text.split(",")]
        if len(values) != count:
            raise ValueError(text)
        return values

    parse.__name__ = f"{count} {'whole ' if kind is int else ''}numbers"
    return parse
