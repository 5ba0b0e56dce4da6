"""Edited copies of an ensemble manifest for benchmarks and tests, pointing at the original weights."""
from __future__ import annotations

import hashlib
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


def apply_options(data: dict, options: list[str]) -> None:
    """Apply `section.key=value` settings to a manifest's JSON: `decode.deblocking=false`, `detector.every=1`;
    `models.key=value` sets it on every model. A value is read as JSON, else taken as a string."""
    for option in options:
        path, separator, text = option.partition("=")
        section, _, key = path.partition(".")
        if not separator or not key or section not in data and section not in ("decode", "tracks", "blend"):
            raise ValueError(f"--option {option!r}: expected SECTION.KEY=VALUE, SECTION one of {sorted(data)}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        for entry in data["models"] if section == "models" else [data.setdefault(section, {})]:
            entry[key] = value


def with_options(manifest: Path, options: list[str], folder: Path) -> Path:
    """The manifest itself without options, else an edited copy kept under `folder`, named by what it holds."""
    if not options:
        return manifest
    identity = hashlib.sha256(json.dumps([str(Path(manifest).resolve()), options]).encode()).hexdigest()[:16]
    target = folder / identity
    target.mkdir(parents=True, exist_ok=True)
    return manifest_copy(manifest, target, lambda data: apply_options(data, options))
