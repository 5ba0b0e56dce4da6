"""python -m packager build | verify | push  (see packager/__init__.py and docs/packaging.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packager import PackagingError
from packager.build import DEFAULT_DATASET_SLUG, DEFAULT_DATASET_TITLE, DEFAULT_KERNEL_TITLE, BuildOptions, build
from packager.push import DEFAULT_WAIT, push
from packager.wheels import TARGETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m packager", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    b = commands.add_parser("build", help="make dist/dataset and dist/kernel")
    b.add_argument("--ensemble", type=Path, default=None,
                   help="ensemble manifest (default: $DEEPFAKE_ENSEMBLE, else artifacts/weights/ensemble.json)")
    b.add_argument("--python-version", default=BuildOptions.python_version, metavar="X.Y",
                   help="the Python of the target image (default: this interpreter's, %(default)s)")
    b.add_argument("--target", choices=TARGETS, default="gpu",
                   help="gpu (default; onnxruntime-gpu, enable_gpu true) or cpu")
    b.add_argument("--out", type=Path, default=Path("dist"))
    b.add_argument("--owner", default=None,
                   help="Kaggle username (default: $KAGGLE_USERNAME, else kaggle.json's, else the OAuth "
                        "credentials', else a placeholder)")
    b.add_argument("--dataset-slug", default=DEFAULT_DATASET_SLUG)
    b.add_argument("--dataset-title", default=DEFAULT_DATASET_TITLE)
    b.add_argument("--kernel-slug", default=None, help="default: the kernel title as a slug")
    b.add_argument("--kernel-title", default=DEFAULT_KERNEL_TITLE)
    b.add_argument("--license", default="other", help="dataset license name (default: %(default)s)")
    b.add_argument("--accelerator", default=None, metavar="SHAPE",
                   help="machine_shape in kernel-metadata.json, e.g. NvidiaTeslaT4 (default: Kaggle's choice)")
    b.add_argument("--wheel-cache", type=Path, default=None,
                   help="persistent wheel cache (default: $PACKAGER_WHEEL_CACHE, else artifacts/cache/wheels)")
    b.add_argument("--find-links", type=Path, action="append", default=[], metavar="DIR",
                   help="also look for wheels in DIR (pip --find-links); repeatable")
    b.add_argument("--no-index", action="store_true", help="use only --find-links folders (pip --no-index)")
    b.add_argument("--refresh", action="store_true", help="resolve the pins again even if cached")
    b.add_argument("--image-packages", type=Path, default=None, metavar="FILE",
                   help="the Kaggle image's `pip list --format=freeze`: ship wheels only for the pins it does not "
                        "satisfy and what they need beyond it (default: every wheel)")
    b.add_argument("--repo", type=Path, default=BuildOptions.repo, help=argparse.SUPPRESS)
    b.add_argument("--requirements", type=Path, default=None, help=argparse.SUPPRESS)

    v = commands.add_parser("verify", help="check the bundle and run it like Kaggle: fresh venv, offline")
    v.add_argument("dist", type=Path, nargs="?", default=Path("dist"))
    v.add_argument("--videos", type=Path, default=None,
                   help="sample videos (default: synthetic clips from bench.samples)")
    v.add_argument("--ensemble", type=Path, default=None,
                   help="ensemble of the reference run "
                        "(default: $DEEPFAKE_ENSEMBLE, else artifacts/weights/ensemble.json)")
    v.add_argument("--device", choices=("auto", "cpu"), default="auto",
                   help="cpu hides GPUs from both runs (CUDA_VISIBLE_DEVICES=)")
    v.add_argument("--keep", action="store_true", help="keep the work folder (venv, input/, working/)")
    v.add_argument("--check-only", action="store_true",
                   help="only the cheap checks: manifest hashes and an offline pip resolution")
    v.add_argument("--tolerance", type=float, default=1e-6)
    v.add_argument("--image", type=Path, default=None, metavar="FILE",
                   help="the image's `pip list --format=freeze`: seed the venv with its versions of the pins "
                        "(from the indexes, before the network is blocked), as the Kaggle image has them")
    v.add_argument("--repo", type=Path, default=BuildOptions.repo, help=argparse.SUPPRESS)

    p = commands.add_parser("push", help="upload the dataset and push the kernel with the Kaggle CLI")
    p.add_argument("--dist", type=Path, default=Path("dist"))
    p.add_argument("--message", "-m", default="packager build", help="dataset version notes")
    p.add_argument("--new", action="store_true", help="create the dataset (first upload) instead of a version")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--wait", type=float, default=DEFAULT_WAIT, metavar="S",
                   help="seconds to wait for the dataset to be ready before the kernel push (default: %(default)g)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "build":
            index_args = ["--no-index"] if args.no_index else []
            for folder in args.find_links:
                index_args += ["--find-links", str(folder.resolve())]
            build(BuildOptions(
                out=args.out, ensemble=args.ensemble, python_version=args.python_version, target=args.target,
                owner=args.owner, dataset_slug=args.dataset_slug, dataset_title=args.dataset_title,
                kernel_slug=args.kernel_slug, kernel_title=args.kernel_title, license=args.license,
                repo=args.repo, requirements=args.requirements, wheel_cache=args.wheel_cache,
                index_args=index_args, refresh=args.refresh, accelerator=args.accelerator,
                image_packages=args.image_packages))
            return 0
        if args.command == "verify":
            from packager.verify import VerifyOptions, verify

            verify(VerifyOptions(dist=args.dist, videos=args.videos, ensemble=args.ensemble, device=args.device,
                                 keep=args.keep, check_only=args.check_only, tolerance=args.tolerance,
                                 repo=args.repo, image=args.image))
            return 0
        return push(args.dist, args.message, new=args.new, dry_run=args.dry_run, wait=args.wait)
    except PackagingError as error:
        print(f"packager {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
