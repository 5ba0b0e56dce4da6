"""`python -m zootools import SOURCE CHECKPOINT`: bring a DFDC team's trained checkpoint into the ensemble.

The steps, each a function the tests call on its own (module in brackets):

1. `read_checkpoint` (reading): `.pth`, `.pt`, `.model`, extension-less files (the format is sniffed, not guessed
   from the name) and `.safetensors`. Pickles are read only with `torch.load(weights_only=True)` and an allowlist
   of numpy's scalar and array reconstructors for plain numeric dtypes (the 1st place's `bce_best`, \\WM/'s `logs`);
   any other class in the pickle (an object array's included) refuses the file, and nothing in it runs.
2. `unwrap` (reading): the state dict inside `{"state_dict": ...}`, `{"model": ...}` (and `net`,
   `model_state_dict`) or a plain dict of tensors.
3. `choose_arch` (variants) and `recognised_arch` (keymaps): NTech's temporal, polimi's attention / siamese-tuned
   EfficientNets (with their B-variant) and \\WM/'s WS-DAN models are found by their keys.
4. `map_keys` (keymaps): the source's renames onto the target architecture (`module.` and the other wrapper prefixes
   stripped, unused heads dropped, heads renamed, lukemelas' efficientnet_pytorch keys onto timm's
   `tf_efficientnet_bN`, the stage layout read from timm's model itself).
5. `import_checkpoint` (importer, with efficientnet_check): fp16 cast to fp32, `num_classes` from the head, a
   strict load into `weights.create_model(arch, **arch_kwargs)`, for efficientnet_pytorch checkpoints a numerical
   check against the source library at the entry's input size, then `NAME.safetensors` beside the manifest and the
   manifest entry (the source's preset from `zootools.presets`, overridden by flags), written only once all of this
   passed: a refusal writes nothing.

Every refusal is an `ImportRefused` (a `WeightsError`) with a one-line reason. `cli` holds the command line.
"""
from zootools.importing.efficientnet_check import baked_padding_differences, check_lukemelas
from zootools.importing.importer import ImportResult, import_checkpoint
from zootools.importing.keymaps import map_keys
from zootools.importing.reading import ImportRefused, read_checkpoint, unwrap

__all__ = ["ImportRefused", "ImportResult", "baked_padding_differences", "check_lukemelas", "import_checkpoint",
           "map_keys", "read_checkpoint", "unwrap"]
