"""`python -m packager push`: the dataset (`-r zip`), then the kernel, with the Kaggle CLI.

Without credentials it prints the commands instead. It refuses a bundle that does not match its manifest, or
whose metadata names another owner than the credentials (metadata pulled from Kaggle carries prefixes, and
ids of another account, that break a re-push).
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from packager import DATASET_DIR, DATASET_METADATA, KERNEL_DIR, KERNEL_METADATA, PLACEHOLDER_OWNER, PackagingError
from packager.credentials import find_kaggle_credentials, kaggle_config_dirs
from packager.manifest import check_files

KAGGLE_ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*)/([a-z0-9]+(?:-[a-z0-9]+)*)")


def commands(dist: Path, message: str, new: bool) -> list[list[str]]:
    dataset, kernel = str(dist / DATASET_DIR), str(dist / KERNEL_DIR)
    upload = (["kaggle", "datasets", "create", "-p", dataset, "-r", "zip"] if new else
              ["kaggle", "datasets", "version", "-p", dataset, "-m", message, "-r", "zip"])
    return [upload, ["kaggle", "kernels", "push", "-p", kernel]]


def check_metadata(dist: Path) -> tuple[str, dict, dict]:
    """The owner all ids agree on, and both metadata files; a PackagingError lists every problem."""
    try:
        dataset_meta = json.loads((dist / DATASET_DIR / DATASET_METADATA).read_text())
        kernel_meta = json.loads((dist / KERNEL_DIR / KERNEL_METADATA).read_text())
    except (OSError, ValueError) as error:
        raise PackagingError(f"cannot read the metadata in {dist}: {error} (run `python -m packager build`)")
    problems, owners = [], set()
    ids = [("dataset id", dataset_meta.get("id")), ("kernel id", kernel_meta.get("id"))]
    ids += [("dataset_sources entry", source) for source in kernel_meta.get("dataset_sources", [])]
    for what, value in ids:
        match = KAGGLE_ID.fullmatch(str(value))
        if not match:
            problems.append(f"{what} {value!r} is not OWNER/slug (metadata pulled from Kaggle can carry prefixes "
                            "that break a re-push: rebuild it with `python -m packager build`)")
        else:
            owners.add(match.group(1))
    if len(owners) > 1:
        problems.append(f"the ids name several owners: {', '.join(sorted(owners))}")
    if dataset_meta.get("id") not in kernel_meta.get("dataset_sources", []):
        problems.append(f"the kernel's dataset_sources {kernel_meta.get('dataset_sources')} lack the dataset "
                        f"{dataset_meta.get('id')!r}")
    if kernel_meta.get("enable_internet") is not False:
        problems.append("kernel-metadata.json must say enable_internet: false (the client defaults it to true)")
    if problems:
        raise PackagingError(f"{dist}: " + "; ".join(problems))
    return owners.pop(), dataset_meta, kernel_meta


def push(dist: Path, message: str, new: bool = False, dry_run: bool = False) -> int:
    dist = dist.resolve()
    check_files(dist)
    owner, dataset_meta, kernel_meta = check_metadata(dist)
    planned = commands(dist, message, new)
    printed = "\n".join("  " + shlex.join(command) for command in planned)
    credentials = find_kaggle_credentials()
    if dry_run or credentials is None:
        if credentials is None:
            print("packager push: no Kaggle credentials (KAGGLE_USERNAME + KAGGLE_KEY, or kaggle.json in "
                  f"{' or '.join(str(d) for d in kaggle_config_dirs())}): nothing was pushed.\n"
                  "Create an API token on kaggle.com (Settings > API), save it as kaggle.json there (chmod 600),\n"
                  "then run `python -m packager push` again (`--new` for the first upload), or run these "
                  "commands yourself:")
        else:
            print("packager push --dry-run: would run")
        print(printed)
        if owner == PLACEHOLDER_OWNER:
            print(f"The metadata's owner is the placeholder {owner!r}: rebuild with --owner YOUR_KAGGLE_USERNAME.")
        print(hints(owner, dataset_meta, kernel_meta, new))
        return 0 if dry_run else 1
    if owner == PLACEHOLDER_OWNER:
        raise PackagingError(f"the metadata's owner is the placeholder {owner!r}: rebuild with "
                             f"--owner {credentials.username}")
    if owner.lower() != credentials.username.lower():
        raise PackagingError(f"the metadata belongs to {owner!r} but the credentials ({credentials.source}) are "
                             f"{credentials.username!r}: rebuild with --owner {credentials.username} (ids of "
                             "another account, or pulled from Kaggle with prefixes, break a push)")
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise PackagingError("the Kaggle CLI is not on PATH (pip install kaggle); the commands are:\n" + printed)
    for command in planned:
        print(f"packager push: {shlex.join(command)}", flush=True)
        process = subprocess.run([kaggle, *command[1:]])
        if process.returncode != 0:
            hint = ("; is this the first upload? then `python -m packager push --new` creates the dataset"
                    if command[1:3] == ["datasets", "version"] else "")
            raise PackagingError(f"{shlex.join(command)} failed (exit {process.returncode}){hint}")
    print(hints(owner, dataset_meta, kernel_meta, new))
    return 0


def hints(owner: str, dataset_meta: dict, kernel_meta: dict, new: bool) -> str:
    kernel_slug = kernel_meta["id"].split("/", 1)[1]
    return "\n".join([
        "Next:",
        f"  - wait until the dataset version is ready: kaggle datasets status {dataset_meta['id']}",
        f"  - open https://www.kaggle.com/code/{owner}/{kernel_slug} and save it once in the web UI (Save Version):",
        "    users report pushed notebooks stay 'not found' until saved there once",
        "  - then submit its submission.csv to the competition from the notebook's page",
    ])
