"""Names that look like credentials never enter a bundle, and where Kaggle's own credentials come from."""
from __future__ import annotations

import fnmatch
import json
import os
import sys
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
    form: str                # the sign-in the Kaggle client will use: "access token", "API key" or "OAuth"
    source: str              # where it was found (never the secret itself)
    username: str | None     # None for an access token: only the server knows whose it is


def kaggle_config_dir() -> Path:
    """Where the Kaggle client (2.2.5) reads kaggle.json: $KAGGLE_CONFIG_DIR, else ~/.kaggle when that folder
    exists, else (on Linux) $XDG_CONFIG_HOME/kaggle."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    legacy = Path.home() / ".kaggle"
    if legacy.exists() or not sys.platform.startswith("linux"):
        return legacy
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"


def sign_in_forms() -> list[str]:
    """Every way the Kaggle client signs in, in the order it tries them, with this machine's paths."""
    kaggle_dir = Path.home() / ".kaggle"
    return [
        "KAGGLE_API_TOKEN=TOKEN (or the path of a file holding it)",
        f"an access token file: {kaggle_dir / 'access_token'} (or access_token.txt)",
        f"kaggle.json with username and key in {kaggle_config_dir()} ($KAGGLE_CONFIG_DIR moves it)",
        "KAGGLE_USERNAME + KAGGLE_KEY (each also completes a kaggle.json that lacks it)",
        f"OAuth: {kaggle_dir / 'credentials.json'}, written by `kaggle auth login`",
    ]


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`, or {} when it is missing, unreadable or not an object (the client skips it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def token_in(path: Path) -> bool:
    """Whether `path` is a file holding a non-blank token (the client ignores an empty one)."""
    try:
        return path.is_file() and bool(path.read_text().strip())
    except OSError:
        return False


def find_access_token() -> KaggleCredentials | None:
    """$KAGGLE_API_TOKEN (a token, or a file holding one), else ~/.kaggle/access_token(.txt)."""
    value = os.environ.get("KAGGLE_API_TOKEN")
    if value and not Path(value).exists():
        return KaggleCredentials("access token", "$KAGGLE_API_TOKEN", None)
    if value and token_in(Path(value)):
        return KaggleCredentials("access token", f"$KAGGLE_API_TOKEN (the file {value})", None)
    # kagglesdk reads these two from ~/.kaggle only: $KAGGLE_CONFIG_DIR does not move them
    for path in (Path.home() / ".kaggle" / "access_token", Path.home() / ".kaggle" / "access_token.txt"):
        if token_in(path):
            return KaggleCredentials("access token", str(path), None)
    return None


def find_api_key() -> KaggleCredentials | None:
    """A username and a key, each from its KAGGLE_* variable or else from kaggle.json, as the client merges them."""
    path = kaggle_config_dir() / "kaggle.json"
    config = read_json_object(path)
    found: dict[str, tuple[str, str]] = {}
    for name in ("username", "key"):
        variable = f"KAGGLE_{name.upper()}"
        if os.environ.get(variable):
            found[name] = (os.environ[variable], f"${variable}")
        elif config.get(name):
            found[name] = (str(config[name]), str(path))
    if len(found) < 2:
        return None
    places = dict.fromkeys(place for _, place in found.values())  # ordered and without repeats
    return KaggleCredentials("API key", " and ".join(places), found["username"][0])


def find_oauth() -> KaggleCredentials | None:
    """~/.kaggle/credentials.json with a refresh token, as `kaggle auth login` writes it."""
    path = Path.home() / ".kaggle" / "credentials.json"
    data = read_json_object(path)
    if not data.get("refresh_token"):
        return None
    return KaggleCredentials("OAuth", str(path), str(data["username"]) if data.get("username") else None)


def find_kaggle_credentials() -> KaggleCredentials | None:
    """The sign-in the Kaggle client will use, tried in its order (access token, API key, OAuth); None without."""
    for find in (find_access_token, find_api_key, find_oauth):
        credentials = find()
        if credentials:
            return credentials
    return None


def default_owner() -> str | None:
    """$KAGGLE_USERNAME, else the username of kaggle.json or of the OAuth credentials (no key needed for this)."""
    names = (os.environ.get("KAGGLE_USERNAME"), read_json_object(kaggle_config_dir() / "kaggle.json").get("username"),
             read_json_object(Path.home() / ".kaggle" / "credentials.json").get("username"))
    return next((str(name) for name in names if name), None)
