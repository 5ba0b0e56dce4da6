"""Names that look like credentials never enter a bundle, and where Kaggle's own credentials come from."""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# File names (matched case-insensitively against the base name) that hold or often hold secrets.
CREDENTIAL_NAMES = (
    "kaggle.json", ".env", ".env.*", "*.env", ".envrc", "*token*", "*secret*", "*credential*", "*password*",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.asc", "*.gpg",
    ".netrc", "_netrc", ".pypirc", ".git-credentials", ".htpasswd", ".npmrc", ".dockercfg",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "authorized_keys", "known_hosts",
)
# Folders whose whole content is private.
CREDENTIAL_DIRS = (".kaggle", ".ssh", ".aws", ".gnupg", ".docker", ".azure", ".gcloud", ".git")


def credential_reason(path: str | PurePosixPath) -> str | None:
    """Why this (relative) path looks like a credential, or None when it does not."""
    parts = PurePosixPath(str(path).replace(os.sep, "/")).parts
    for folder in parts[:-1]:
        if folder.lower() in CREDENTIAL_DIRS:
            return f"inside a {folder}/ folder"
    name = parts[-1].lower() if parts else ""
    for pattern in CREDENTIAL_NAMES:
        if fnmatch.fnmatchcase(name, pattern):
            return f"name matches {pattern!r}"
    return None


def credential_like_files(folder: Path) -> list[str]:
    """Relative paths of the credential-like files anywhere under `folder` (sorted)."""
    found = []
    if folder.is_dir():
        for path in folder.rglob("*"):
            relative = path.relative_to(folder).as_posix()
            if path.is_file() and credential_reason(relative):
                found.append(relative)
    return sorted(found)


@dataclass(frozen=True)
class KaggleCredentials:
    username: str
    source: str  # where they were found (never the key itself)


def kaggle_config_dirs() -> list[Path]:
    """Where the Kaggle CLI looks for kaggle.json: $KAGGLE_CONFIG_DIR, else ~/.kaggle, else ~/.config/kaggle."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"])]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [Path.home() / ".kaggle", xdg / "kaggle"]


def find_kaggle_credentials() -> KaggleCredentials | None:
    """KAGGLE_USERNAME + KAGGLE_KEY, else kaggle.json with both a username and a key; None without them."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return KaggleCredentials(os.environ["KAGGLE_USERNAME"], "the KAGGLE_USERNAME and KAGGLE_KEY variables")
    for folder in kaggle_config_dirs():
        path = folder / "kaggle.json"
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("username") and config.get("key"):
            return KaggleCredentials(str(config["username"]), str(path))
    return None


def default_owner() -> str | None:
    """$KAGGLE_USERNAME, else the username of kaggle.json (the key is not needed for this)."""
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    for folder in kaggle_config_dirs():
        try:
            config = json.loads((folder / "kaggle.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("username"):
            return str(config["username"])
    return None
