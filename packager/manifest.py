"""File hashes, deterministic JSON, and the bundle manifest (every file's relative path, sha256 and size)."""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packager import BUNDLE_MANIFEST, DATASET_DIR, FORMAT, KERNEL_DIR, PackagingError
from packager.credentials import credential_reason


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_many(paths: list[Path]) -> list[str]:
    """Hashes of many files, a few threads at a time (hashlib releases the GIL on large buffers)."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(sha256_file, paths))


def dump_json(data) -> str:
    """The one JSON form the packager writes: sorted keys, two-space indent, ASCII, final newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def write_json(path: Path, data) -> None:
    """Write through a new file and a rename: never into an existing file (which may be a hard link)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(dump_json(data))
    os.replace(temporary, path)


def list_files(root: Path) -> list[str]:
    """Every regular file under root as a sorted POSIX relative path (symlinks are refused, not followed)."""
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise PackagingError(f"{relative}: symbolic links are not bundled")
            files.append(relative)
    return sorted(files)


def manifest_path(dist: Path) -> Path:
    return dist / DATASET_DIR / BUNDLE_MANIFEST


def bundle_files(dist: Path) -> list[str]:
    """The files of dist/dataset and dist/kernel (relative to dist/), but the bundle manifest itself."""
    files = []
    for part in (DATASET_DIR, KERNEL_DIR):
        if (dist / part).is_dir():
            files.extend(f"{part}/{relative}" for relative in list_files(dist / part))
    return [p for p in files if p != f"{DATASET_DIR}/{BUNDLE_MANIFEST}"]


def file_entries(dist: Path, known: dict[str, str] | None = None) -> list[dict]:
    """path (relative to dist/), sha256 and size of every file of the bundle but the manifest itself.

    `known` holds hashes just checked by the caller (wheels from the cache, checkpoints against their
    manifest), so several GB are not hashed twice. A credential-like name anywhere is an error.
    """
    known = known or {}
    paths = bundle_files(dist)
    for relative in paths:
        reason = credential_reason(relative)
        if reason:
            raise PackagingError(f"refusing to bundle {relative}: it looks like a credential ({reason})")
    unknown = [p for p in paths if p not in known]
    digests = {**known, **dict(zip(unknown, sha256_many([dist / p for p in unknown])))}
    return [{"path": p, "sha256": digests[p], "size": (dist / p).stat().st_size} for p in paths]


def write_manifest(dist: Path, info: dict, known: dict[str, str] | None = None) -> dict:
    manifest = {"format": FORMAT, **info, "files": file_entries(dist, known)}
    write_json(manifest_path(dist), manifest)
    return manifest


def read_manifest(dist: Path) -> dict:
    path = manifest_path(dist)
    if not path.is_file():
        raise PackagingError(f"{path} is missing: not a bundle built by `python -m packager build`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise PackagingError(f"{path} is not valid JSON: {error}") from error
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), list):
        raise PackagingError(f"{path}: unknown bundle manifest format {manifest.get('format')!r}")
    return manifest


def check_files(dist: Path, manifest: dict | None = None, *, allow_extra: bool = False) -> dict:
    """Every file the manifest lists is present with its size and sha256, and (unless allow_extra) nothing else.

    Cheap checks first (presence, size) so a missing file is reported before any hashing; every problem is
    listed, each naming its file. Returns the manifest.
    """
    manifest = manifest or read_manifest(dist)
    entries = {entry["path"]: entry for entry in manifest["files"]}
    problems = []
    for relative, entry in sorted(entries.items()):
        path = dist / relative
        if not path.is_file():
            problems.append(f"missing: {relative}")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"wrong size: {relative} ({path.stat().st_size} bytes, manifest says {entry['size']})")
    if not problems:
        names = sorted(entries)
        for relative, digest in zip(names, sha256_many([dist / n for n in names])):
            if digest != entries[relative]["sha256"]:
                problems.append(f"sha256 mismatch: {relative} ({digest}, manifest says {entries[relative]['sha256']})")
    extra = [p for p in bundle_files(dist) if p not in entries]
    if extra and not allow_extra:
        problems.extend(f"not in the manifest: {relative}" for relative in extra)
    if problems:
        raise PackagingError(f"bundle {dist} does not match {manifest_path(dist)}:\n  " + "\n  ".join(problems))
    return manifest
