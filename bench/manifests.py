"""Edited copies of an ensemble manifest for benchmarks and tests, pointing at the original weights."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from weights.manifest import FILE_FIELDS


def manifest_copy(manifest: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    """Write folder/ensemble.json: the manifest with absolute file paths (the weights stay where they are),
    changed in place by `edit(data)`."""
    data = json.loads(Path(manifest).read_text())
    for entry in [data["detector"], *data["models"]]:
        for key, _ in FILE_FIELDS:
            if entry.get(key):
                entry[key] = str(Path(manifest).parent.resolve() / entry[key])
    edit(data)
    copy = folder / "ensemble.json"
    copy.write_text(json.dumps(data))
    return copy
