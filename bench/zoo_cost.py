"""CPU (or GPU) cost of each model family in the kernel: seconds per video at N frames, by stage.

`python -m bench.zoo_cost [--video PATH] [--frames-per-video 32] [--families meso4,r3d_18,...]` runs the
kernel on one video once per family, with an ensemble of just that model (untrained, seeded weights: the cost
does not depend on the values), and prints the median seconds per stage over `--repeats` runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from inference.pipeline import STAGES, Pipeline
from weights import InputSpec, ModelSpec, arch_config, create_model, load_ensemble, sha256_of
from zootools.sources import REPO_ROOT, shared_dir

# One representative configuration per family, as our users' ensembles run them: the architecture's registered
# input (size, mean, std; timm's pretrained config for timm names), with the clip counts changed where given.
FAMILIES = {
    "meso4": dict(arch="meso4", positive_class="REAL"),
    "efficientnet_b0": dict(arch="timm/efficientnet_b0"),
    "efficientnet_b0_hflip": dict(arch="timm/efficientnet_b0", tta=("hflip",)),
    "xception41": dict(arch="timm/xception41"),
    "r3d_18": dict(arch="r3d_18"),
    "r2plus1d_18": dict(arch="r2plus1d_18"),
    "i3d": dict(arch="i3d", input={"frames": 16}),
    "resnet34_3d": dict(arch="resnet34_3d"),
    "tsm_resnet50": dict(arch="tsm", arch_kwargs={"backbone": "resnet50", "num_segments": 8},
                         input={"stride": 4, "clips": 2}),
    "cnn_lstm_spp": dict(arch="cnn_rnn", arch_kwargs={"backbone": "efficientnet_b0", "spp_levels": [1, 7]},
                         input={"stride": 4, "clips": 2}),
}


def model_spec(name: str, checkpoint: Path, entry: dict) -> ModelSpec:
    """A manifest entry: the architecture's registered kind and input, with `entry["input"]` (an InputSpec, or a
    dict of fields) over them."""
    config = arch_config(entry["arch"])
    given = entry.get("input", {})
    spec_input = given if isinstance(given, InputSpec) else dataclasses.replace(config.input, **given)
    return ModelSpec(name=name, checkpoint=checkpoint.name, sha256=sha256_of(checkpoint),
                     **{"kind": config.kind, **entry, "input": spec_input})


def with_untrained_models(manifest: Path, entries: dict[str, dict], keep_existing: bool = True) -> Path:
    """Add seeded, untrained models (safetensors beside the manifest) to the manifest, in place."""
    ensemble = load_ensemble(manifest)
    specs = list(ensemble.models) if keep_existing else []
    for name, entry in entries.items():
        torch.manual_seed(0)
        model = create_model(entry["arch"], **entry.get("arch_kwargs", {}))
        checkpoint = ensemble.root / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
        specs.append(model_spec(name, checkpoint, entry))
    dataclasses.replace(ensemble, models=tuple(specs)).save(manifest)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "artifacts" / "weights")
    parser.add_argument("--video", type=Path,
                        default=shared_dir() / "data" / "dfdc_sample" / "dfdc_train_part_0" / "brtujopkby.mp4")
    parser.add_argument("--frames-per-video", type=int, default=32)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"seconds per video, median of {args.repeats} ({args.video.name}, {args.frames_per_video} frames, "
          f"{args.device})")
    print(f"{'family':24s}" + "".join(f"{stage:>9s}" for stage in (*STAGES, "total")))
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory() as folder:
            weights = Path(shutil.copytree(args.weights, Path(folder) / "weights"))
            manifest = with_untrained_models(weights / "ensemble.json", {family: FAMILIES[family]},
                                             keep_existing=False)
            runner = Pipeline(manifest, args.device, readers=0)
            runner.process(args.video, args.frames_per_video)  # warm-up: first-call allocations and placement
            runs = [runner.process(args.video, args.frames_per_video).seconds for _ in range(args.repeats)]
            runner.close()
        medians = [statistics.median(run.get(stage, 0.0) for run in runs) for stage in STAGES]
        totals = statistics.median(sum(run.values()) for run in runs)
        print(f"{family:24s}" + "".join(f"{value:9.2f}" for value in (*medians, totals)))


if __name__ == "__main__":
    main()
