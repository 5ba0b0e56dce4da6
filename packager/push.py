"""`python -m packager push`: the dataset (`-r zip`), a wait until Kaggle has processed it, then the kernel, with
the Kaggle client (kaggle==2.2.5).

That client exits 0 when the server refuses a request: it only prints "Dataset creation error: ...", "Kernel push
error: ...", that tags or a source are "not valid". So push reads what each command prints, stops at the first
such line or non-zero exit and names the cause (on an exit, the error line, not the hint the client prints after
it: packager/client_output.py). The kernel is pushed only once `kaggle datasets status` says ready for a version
after the one read before the upload; a permanent error of that command stops the wait at once. Without
credentials it prints the commands instead. It refuses a bundle that does not match its manifest, names the
client would refuse, and metadata whose owner is not the signed-in user (metadata pulled from Kaggle carries
prefixes, and ids of another account, that break a re-push).
"""
from __future__ import annotations

import codecs
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from packager import DATASET_DIR, DATASET_METADATA, KERNEL_DIR, KERNEL_METADATA, PLACEHOLDER_OWNER, PackagingError
from packager.client_output import MISSING, ClientError, output_lines, read_error
from packager.credentials import KaggleCredentials, find_kaggle_credentials, sign_in_forms
from packager.manifest import check_files

CLIENT = "kaggle==2.2.5"
INSTALL = "pip install kaggle==2.2.5 six"  # the client imports six without declaring it
KAGGLE_ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9_-]*)/([a-z0-9]+(?:-[a-z0-9]+)*)")
# Lengths the client checks before uploading (dataset slug and title 6+, kernel slug and title 5+); 50 is Kaggle's
# maximum for slugs and titles.
NAME_LIMITS = {"dataset slug": (6, 50), "dataset title": (6, 50), "kernel slug": (5, 50), "kernel title": (5, 50)}
DEFAULT_WAIT = 1800.0  # seconds: Kaggle unpacks and indexes a few GB of wheels before the dataset is ready
POLL_SECONDS = 10.0
# `datasets status` prints the server's state lowercased: not_yet_persisted, blobs_received, ..., reprocessing while
# Kaggle processes an upload, then ready, failed or deleted.
READY, FAILED = "ready", ("failed", "deleted")
# What the client prints, still exiting 0, when the server refused the request. The bundle's metadata names no
# tags, so the invalid-tags line only shows when the server refused the version for another reason: the client
# then prints that line alone.
REFUSALS = ("Dataset creation error", "Dataset version creation error", "Kernel push error",
            "are not valid tags and could not be added to the dataset")
SLUG_TAKEN = "the slug may be taken; use `python -m packager push` without --new to add a version"
FIRST_UPLOAD = "the dataset does not exist: is this the first upload? then `python -m packager push --new` creates it"
SIGNED_OUT = "Kaggle refused the credentials: create a new API token at https://www.kaggle.com/settings/api"

Clock = Callable[[], float]
Sleep = Callable[[float], None]


def commands(dist: Path, message: str, new: bool) -> list[list[str]]:
    """The dataset upload and the kernel push, as the user would type them."""
    dataset, kernel = str(dist / DATASET_DIR), str(dist / KERNEL_DIR)
    upload = (["kaggle", "datasets", "create", "-p", dataset, "-r", "zip"] if new else
              ["kaggle", "datasets", "version", "-p", dataset, "-m", message, "-r", "zip"])
    return [upload, ["kaggle", "kernels", "push", "-p", kernel]]


def name_problems(names: dict[str, str]) -> list[str]:
    """What the Kaggle client or site would refuse among these names (keyed as NAME_LIMITS)."""
    problems = []
    for what, value in names.items():
        low, high = NAME_LIMITS[what]
        if not low <= len(value) <= high:
            problems.append(f"{what} {value!r} has {len(value)} characters; Kaggle takes {low} to {high}")
    return problems


def check_metadata(dist: Path) -> tuple[str, dict, dict]:
    """The owner all ids agree on, and both metadata files; a PackagingError lists every problem."""
    try:
        dataset_meta = json.loads((dist / DATASET_DIR / DATASET_METADATA).read_text())
        kernel_meta = json.loads((dist / KERNEL_DIR / KERNEL_METADATA).read_text())
    except (OSError, ValueError) as error:
        raise PackagingError(f"cannot read the metadata in {dist}: {error} (run `python -m packager build`)")
    problems, owners = [], set()
    names = {"dataset title": str(dataset_meta.get("title", "")), "kernel title": str(kernel_meta.get("title", ""))}
    ids = [("dataset id", dataset_meta.get("id")), ("kernel id", kernel_meta.get("id"))]
    ids += [("dataset_sources entry", source) for source in kernel_meta.get("dataset_sources", [])]
    for what, value in ids:
        match = KAGGLE_ID.fullmatch(str(value))
        if not match:
            problems.append(f"{what} {value!r} is not OWNER/slug (metadata pulled from Kaggle can carry prefixes "
                            "that break a re-push: rebuild it with `python -m packager build`)")
            continue
        owners.add(match.group(1))
        if what in ("dataset id", "kernel id"):
            names[what.replace(" id", " slug")] = match.group(2)
    problems += name_problems(names)
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


def check_owner(owner: str, credentials: KaggleCredentials) -> None:
    """The metadata's owner must be the signed-in user: ids of another account break a push."""
    if owner == PLACEHOLDER_OWNER:
        raise PackagingError(f"the metadata's owner is the placeholder {owner!r}: rebuild with "
                             f"--owner {credentials.username or 'YOUR_KAGGLE_USERNAME'}")
    if credentials.username is None:
        print(f"packager push: the {credentials.form} ({credentials.source}) names its user only to the server: "
              f"the metadata's owner {owner!r} is not checked here", flush=True)
    elif owner.lower() != credentials.username.lower():
        raise PackagingError(f"the metadata belongs to {owner!r} but the credentials ({credentials.source}) are "
                             f"{credentials.username!r}: rebuild with --owner {credentials.username} (ids of "
                             "another account, or pulled from Kaggle with prefixes, break a push)")


def run_client(command: list[str]) -> tuple[int, str]:
    """Run one client command, echoing what it prints as it comes (stderr merged); its exit status and output."""
    # Unbuffered, or the client's lines would only show when it exits.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = []
    for chunk in iter(lambda: process.stdout.read1(65536), b""):
        pieces.append(decoder.decode(chunk))
        sys.stdout.write(pieces[-1])
        sys.stdout.flush()
    pieces.append(decoder.decode(b"", final=True))
    return process.wait(), "".join(pieces)


def failure(command: list[str], returncode: int, output: str, dataset_id: str) -> str | None:
    """The one-line cause when a client command failed, though it may have exited 0; None when it succeeded."""
    lines = output_lines(output)
    refused = next((line for line in lines if any(refusal in line for refusal in REFUSALS)), None)
    dropped = next((line for line in lines if "not valid" in line.lower() and "source" in line.lower()), None)
    error = read_error(output) if returncode != 0 else None
    hint = client_hint(error) if error else None
    if refused:
        cause = f"the server refused it: {refused}"
    elif dropped:
        cause = f"the server left out a source the notebook needs: {dropped}"
        hint = (f"the new version runs without it; once `kaggle datasets status {dataset_id}` says ready (and the "
                f"competition's rules are accepted by this account), push again: {shlex.join(command)}")
    elif returncode != 0:
        cause = f"it failed (exit {returncode})" + (f": {error}" if error else "")
    else:
        return None
    if command[1:3] == ["datasets", "version"] and dataset_missing(refused, error):
        hint = FIRST_UPLOAD
    elif command[1:3] == ["datasets", "create"] and refused and "already in use" in refused:
        hint = SLUG_TAKEN
    return f"{shlex.join(command[:3])}: {cause}" + (f" ({hint})" if hint else "")


def client_hint(error: ClientError) -> str | None:
    """What to do about a client error: the client's own hint, but for a 401, whose help lists every sign-in."""
    return SIGNED_OUT if error.status == 401 else error.hint


def dataset_missing(refused: str | None, error: ClientError | None) -> bool:
    """Whether the server said the dataset does not exist (a 404, or a refusal saying so)."""
    return error.missing if error else bool(refused and MISSING.search(refused))


def run_step(kaggle: str, command: list[str], dataset_id: str) -> None:
    """Run one client command; a PackagingError naming the cause when it failed."""
    print(f"packager push: {shlex.join(command)}", flush=True)
    returncode, output = run_client([kaggle, *command[1:]])
    cause = failure(command, returncode, output, dataset_id)
    if cause:
        raise PackagingError(cause)


class DatasetStatus(NamedTuple):
    state: str | None    # the server's state, lowercased (`READY`, one of FAILED, or one still processing)
    version: int | None  # the dataset's current version number
    error: ClientError | None = None  # why the command gave no state


def dataset_status(kaggle: str, dataset_id: str) -> DatasetStatus:
    """`kaggle datasets status --format json`: the state and the current version, or why it gave none."""
    process = subprocess.run([kaggle, *status_command(dataset_id)[1:]], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    if process.returncode != 0:
        return DatasetStatus(None, None, read_error(process.stdout) or ClientError("(nothing printed)", None, None))
    # The JSON is the last thing printed (no newline after it); a warning about the client's version may precede.
    answer = next((line for line in reversed(output_lines(process.stdout)) if line.startswith("{")), "")
    try:
        fields = json.loads(answer)
        return DatasetStatus(str(fields["status"]).lower(), int(fields["current_version_number"]))
    except (ValueError, KeyError, TypeError):
        printed = output_lines(process.stdout)
        return DatasetStatus(None, None, ClientError(f"not a status: {printed[-1] if printed else '(nothing)'}",
                                                     None, f"push reads the JSON answer of {CLIENT}"))


def status_command(dataset_id: str) -> list[str]:
    return ["kaggle", "datasets", "status", dataset_id, "--format", "json"]


def version_before_upload(kaggle: str, dataset_id: str) -> int:
    """The dataset's current version number, read before `datasets version` so the wait knows the new one."""
    status = dataset_status(kaggle, dataset_id)
    if status.error is None:
        print(f"packager push: dataset {dataset_id} is at version {status.version} ({status.state})", flush=True)
        return status.version
    hint = FIRST_UPLOAD if status.error.missing else client_hint(status.error)
    raise PackagingError(f"{shlex.join(status_command(dataset_id))}: it failed: {status.error}"
                         + (f" ({hint})" if hint else "") + "; nothing was uploaded")


def wait_until_ready(kaggle: str, dataset_id: str, previous: int | None, then: list[str], wait: float, clock: Clock,
                     sleep: Sleep) -> None:
    """Poll the dataset's status until a version after `previous` is ready; a PackagingError when Kaggle failed
    it, the status command fails for good, or `wait` seconds ran out."""
    asked, started = shlex.join(status_command(dataset_id)), clock()
    by_hand = (f"the kernel was not pushed; once `kaggle datasets status {dataset_id}` says ready"
               + (f" at a version after {previous}" if previous is not None else "") + f", run {shlex.join(then)}")
    while True:
        status = dataset_status(kaggle, dataset_id)
        new = previous is None or (status.version or 0) > previous
        if status.state == READY and new:
            print(f"packager push: dataset {dataset_id} version {status.version} is ready", flush=True)
            return
        if status.state in FAILED and new:
            raise PackagingError(f"{asked}: {status.state!r} at version {status.version}: Kaggle could not process "
                                 "the upload; the kernel was not pushed (upload again: `python -m packager push`)")
        if status.error and not status.error.transient:
            hint = client_hint(status.error)
            raise PackagingError(f"{asked}: it failed: {status.error}" + (f" ({hint})" if hint else "")
                                 + f"; not asking again; {by_hand}")
        answer = str(status.error) if status.error else f"{status.state!r} at version {status.version}"
        waited = clock() - started
        if waited >= wait:
            raise PackagingError(f"{asked}: still {answer} after {waited:.0f} s (--wait {wait:g}); {by_hand}")
        waiting_for = "" if new or status.error else f", waiting for the version after {previous}"
        print(f"packager push: dataset {dataset_id}: {answer}{waiting_for}; asking again in {POLL_SECONDS:g} s "
              f"({waited:.0f} of {wait:g} s)", flush=True)
        sleep(min(POLL_SECONDS, wait - waited))


def push(dist: Path, message: str, new: bool = False, dry_run: bool = False, wait: float = DEFAULT_WAIT,
         clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> int:
    """Upload the dataset, wait (up to `wait` seconds) until Kaggle says it is ready, then push the kernel."""
    dist = dist.resolve()
    check_files(dist)
    owner, dataset_meta, kernel_meta = check_metadata(dist)
    upload, kernel_push = commands(dist, message, new)
    printed = "\n".join([f"  {shlex.join(upload)}",
                         f"  {shlex.join(status_command(dataset_meta['id']))}   # until a new version is ready",
                         f"  {shlex.join(kernel_push)}"])
    credentials = find_kaggle_credentials()
    if dry_run or credentials is None:
        if credentials is None:
            forms = "\n".join(f"  - {form}" for form in sign_in_forms())
            print(f"packager push: no Kaggle credentials: nothing was pushed. The Kaggle client ({CLIENT}) signs "
                  f"in with any of:\n{forms}\nCreate an API token on kaggle.com (Settings > API) for one of them, "
                  "then run `python -m packager push` again (`--new` for the first upload), or run these commands "
                  "yourself:")
        else:
            print(f"packager push --dry-run: signed in with the {credentials.form} ({credentials.source}); "
                  "would run")
        print(printed)
        if owner == PLACEHOLDER_OWNER:
            print(f"The metadata's owner is the placeholder {owner!r}: rebuild with --owner YOUR_KAGGLE_USERNAME.")
        print(hints(owner, kernel_meta))
        return 0 if dry_run else 1
    check_owner(owner, credentials)
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise PackagingError(f"the Kaggle client is not on PATH ({INSTALL}); the commands are:\n" + printed)
    print(f"packager push: signed in with the {credentials.form} ({credentials.source})", flush=True)
    # Kaggle may still say ready for the previous version right after the upload: the wait needs its number.
    previous = None if new else version_before_upload(kaggle, dataset_meta["id"])
    run_step(kaggle, upload, dataset_meta["id"])
    wait_until_ready(kaggle, dataset_meta["id"], previous, kernel_push, wait, clock, sleep)
    run_step(kaggle, kernel_push, dataset_meta["id"])
    print(hints(owner, kernel_meta))
    return 0


def hints(owner: str, kernel_meta: dict) -> str:
    kernel_slug = kernel_meta["id"].split("/", 1)[1]
    return "\n".join([
        "Next:",
        f"  - open https://www.kaggle.com/code/{owner}/{kernel_slug} and save it once in the web UI (Save Version):",
        "    users report pushed notebooks stay 'not found' until saved there once",
        "  - then submit its submission.csv to the competition from the notebook's page",
    ])
