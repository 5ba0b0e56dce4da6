"""`python -m packager push` against a stand-in for the Kaggle client (kaggle 2.2.5), every sign-in form of that
client, and its name limits.

The official client exits 0 when the server refuses a request: it only prints an error line, or says tags or a
source are not valid; on an HTTP error it exits 1 with the server's message followed by a hint. The stand-in
reproduces those lines and exit codes (401, 403, 404, 429, a crash of the client), answers each call of a step from
a script (`datasets status` with a state and the current version number; its log of calls is the state), and logs
every call, so the tests can tell that no kernel was pushed after a failed dataset step. The bundles here are
small synthetic ones with a real manifest and real metadata.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from packager import DATASET_METADATA, KERNEL_METADATA, PackagingError
from packager.__main__ import build_parser
from packager.__main__ import main as packager_main
from packager.build import BuildOptions, check_identity, kernel_metadata
from packager.credentials import (
    credential_like_files,
    credential_reason,
    default_owner,
    find_kaggle_credentials,
    kaggle_config_dir,
)
from packager.manifest import write_json, write_manifest
from packager.push import POLL_SECONDS, push

OWNER = "tester"
DATASET_ID, KERNEL_ID = f"{OWNER}/deepfake-kit-bundle", f"{OWNER}/deepfake-kit-inference"

# What kaggle 2.2.5 prints (kaggle/api/kaggle_api_extended.py); it exits 0 after every one of these.
CREATED = f"Your private Dataset is being created. Please check progress at https://www.kaggle.com/datasets/{DATASET_ID}"
VERSIONED = f"Dataset version is being created. Please check progress at https://www.kaggle.com/datasets/{DATASET_ID}"
PUSHED = f"Kernel version 2 successfully pushed.  Please check progress at https://www.kaggle.com/code/{KERNEL_ID}"
SLUG_TAKEN = ('Dataset creation error: The requested slug "deepfake-kit-bundle" is already in use by a dataset. '
              "Please choose another slug.")
VERSION_REFUSED = "Dataset version creation error: See previous output"
KERNEL_REFUSED = "Kernel push error: Notebook not found"
SOURCE_DROPPED = f"The following are not valid dataset sources and could not be added to the kernel: ['{DATASET_ID}']"
SOURCE_WARNING = "Warning: competition_sources ['deepfake-detection-challenge'] are not valid for this account"

# kaggle 2.2.5 on an HTTP error (kaggle/cli.py, format_http_error): the server's message (a JSON error's `message`,
# else requests' status line) on stderr, a blank line, a hint keyed by the status; exit 1. On a 401 only its sign-in
# help, on stdout. On a crash of its own, the exception and a line about --debug.
AUTH_HELP = ["Authentication required to call the Kaggle API.", "",
             "First, you will need a Kaggle account. You can sign up at", "  https://www.kaggle.com/account/login", "",
             "Recommended: log in with OAuth via a web-based authorization flow.",
             "No token to manage; credentials are cached locally for you.", "    kaggle auth login", "",
             "If you'd rather not use OAuth, generate an API token at",
             '  https://www.kaggle.com/settings/api  (click "Generate New Token" under "API")',
             "and supply it to the CLI in one of these ways:", "", "  Option A: Environment variable",
             "    export KAGGLE_API_TOKEN=xxxxxxxxxxxxxx  # token copied from the settings UI", "",
             "  Option B: API token file", "    Save the token to ~/.kaggle/access_token"]
FORBIDDEN_LINE = "403 Client Error: Forbidden for url: https://api.kaggle.com/v1/kernels.KernelsApiService/SaveKernel"
FORBIDDEN = [FORBIDDEN_LINE, "", "You don't have access to this resource.",
             "If this is a competition, you may need to accept its rules first at",
             "  https://www.kaggle.com/competitions/<competition>/rules"]
NOT_FOUND_HINT = ["The resource was not found. Check the spelling of the reference you passed.",
                  "References are usually '<owner>/<slug>', which you can find in the resource's URL.",
                  "To search for one, try 'kaggle search <query>'."]
NOT_FOUND_MESSAGE = "Dataset not found"  # a JSON error: the client prints its message alone, no status
RATE_LIMITED = ["429 Client Error: Too Many Requests for url: "
                "https://api.kaggle.com/v1/datasets.DatasetApiService/GetDatasetStatus", "",
                "You have been rate limited. Wait a little while before retrying."]
CRASHED = ["KeyError: 'status'", "",
           "If this is unexpected, you can re-run with `kaggle --debug [command]` to see the full",
           "traceback. If you think this is a bug, please report it at https://github.com/Kaggle/kaggle-cli/issues"]
INVALID_TAGS = "The following are not valid tags and could not be added to the dataset: ['deepfakes']"
UPLOAD_FAILED = "Upload unsuccessful: wheels.zip"

STAND_IN = """
import json, os, sys
calls, script = os.environ["FAKE_KAGGLE_CALLS"], json.load(open(os.environ["FAKE_KAGGLE_SCRIPT"]))
step = " ".join(sys.argv[1:3])
with open(calls, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
plan = script.get(step, {})
if "answers" in plan:  # one answer per call of this step, the last one repeated
    asked = sum(" ".join(json.loads(line)[:2]) == step for line in open(calls)) - 1
    plan = plan["answers"][min(asked, len(plan["answers"]) - 1)]
if "status" in plan:  # `datasets status`: the bare state, or with --format json one object; no newline after it
    fields = {"status": plan["status"], "current_version_number": plan["version"]}
    print(json.dumps(fields) if "--format" in sys.argv else plan["status"], end="")
for line in plan.get("say", []):
    print(line)
for line in plan.get("err", []):
    print(line, file=sys.stderr)
sys.exit(plan.get("exit", 0))
"""


def state(status: str, version: int) -> dict:
    """One answer of `datasets status`: the dataset's state and current version number."""
    return {"status": status, "version": version}


# Version 1 is on Kaggle before an upload, version 2 after it.
SUCCESS = {"datasets create": {"say": [CREATED]}, "datasets version": {"say": [VERSIONED]},
           "kernels push": {"say": [PUSHED]}, "datasets status": {"answers": [state("ready", 1), state("ready", 2)]}}


class StandIn:
    """The stand-in `kaggle` first on PATH: what it will answer, and the calls it logged."""

    def __init__(self, folder: Path):
        self.script, self.log = folder / "script.json", folder / "calls.jsonl"
        self.answer()

    def answer(self, **steps: dict) -> None:
        """Succeed like the real client, but for the steps given (keyed like "datasets_create")."""
        write_json(self.script, {**SUCCESS, **{name.replace("_", " "): plan for name, plan in steps.items()}})

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.is_file() else []

    def steps(self) -> list[str]:
        return [" ".join(call[:2]) for call in self.calls()]


class FakeClock:
    """time.monotonic and time.sleep for the wait: sleeping only moves the clock."""

    def __init__(self):
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def signed_out(monkeypatch, tmp_path) -> Path:
    """No Kaggle sign-in of any form: an empty home and no KAGGLE_* variables. Returns the home."""
    for name in [name for name in os.environ if name.startswith("KAGGLE_")] + ["XDG_CONFIG_HOME"]:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def client(monkeypatch, tmp_path) -> StandIn:
    folder = tmp_path / "stand-in"
    (folder / "bin").mkdir(parents=True)
    fake = folder / "bin" / "kaggle"
    fake.write_text(f"#!{sys.executable}\n{STAND_IN}")
    fake.chmod(0o755)
    stand_in = StandIn(folder)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_SCRIPT", str(stand_in.script))
    monkeypatch.setenv("FAKE_KAGGLE_CALLS", str(stand_in.log))
    return stand_in


def make_dist(root: Path, **options) -> Path:
    """A small bundle (one data file, kernel.py) with the metadata `build` writes and a matching manifest."""
    dist, build_options = root / "dist", BuildOptions(owner=OWNER, **options)
    (dist / "dataset").mkdir(parents=True)
    (dist / "kernel").mkdir()
    _, dataset_id, kernel_id = check_identity(build_options)
    (dist / "dataset" / "requirements.txt").write_text("numpy\n")
    write_json(dist / "dataset" / DATASET_METADATA,
               {"id": dataset_id, "title": build_options.dataset_title, "licenses": [{"name": "other"}]})
    (dist / "kernel" / "kernel.py").write_text("print('hello')\n")
    write_json(dist / "kernel" / KERNEL_METADATA, kernel_metadata(build_options, kernel_id, dataset_id))
    write_manifest(dist, {"owner": OWNER})
    return dist


@pytest.fixture
def dist(tmp_path) -> Path:
    return make_dist(tmp_path)


def sign_in(home: Path, username: str = OWNER) -> Path:
    """An API key in ~/.kaggle/kaggle.json (the form most users have)."""
    path = home / ".kaggle" / "kaggle.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"username": username, "key": "not-a-real-key"}))
    return path


# ---------------------------------------------------------------------------------------------- the push

STATUS = ["datasets", "status", DATASET_ID, "--format", "json"]


def test_push_waits_until_the_new_version_is_ready_then_pushes_the_kernel(dist, client, signed_out, capsys):
    sign_in(signed_out)
    client.answer(datasets_status={"answers": [state("ready", 1), state("not_yet_persisted", 2),
                                               state("blobs_received", 2), state("ready", 2)]})
    clock = FakeClock()
    assert push(dist, "v2", clock=clock, sleep=clock.sleep) == 0
    assert client.calls() == [
        STATUS, ["datasets", "version", "-p", str(dist / "dataset"), "-m", "v2", "-r", "zip"],
        STATUS, STATUS, STATUS, ["kernels", "push", "-p", str(dist / "kernel")],
    ]
    assert clock.slept == [POLL_SECONDS, POLL_SECONDS]
    out = capsys.readouterr().out
    assert f"signed in with the API key ({signed_out / '.kaggle' / 'kaggle.json'})" in out
    assert VERSIONED in out and PUSHED in out  # the client's own lines are echoed
    assert f"dataset {DATASET_ID} is at version 1 (ready)" in out
    assert f"dataset {DATASET_ID}: 'blobs_received' at version 2; asking again" in out
    assert f"dataset {DATASET_ID} version 2 is ready" in out
    assert f"https://www.kaggle.com/code/{KERNEL_ID} and save it once in the web UI" in out


def test_the_previous_version_ready_is_not_the_new_one(dist, client, signed_out, capsys):
    sign_in(signed_out)
    client.answer(datasets_status={"answers": [state("ready", 1), state("ready", 1), state("ready", 1),
                                               state("ready", 2)]})
    clock = FakeClock()
    assert push(dist, "v2", clock=clock, sleep=clock.sleep) == 0
    assert client.steps() == ["datasets status", "datasets version"] + ["datasets status"] * 3 + ["kernels push"]
    assert clock.slept == [POLL_SECONDS, POLL_SECONDS]
    out = capsys.readouterr().out
    assert f"dataset {DATASET_ID}: 'ready' at version 1, waiting for the version after 1; asking again" in out


def test_first_upload_creates_the_dataset(dist, client, signed_out):
    sign_in(signed_out)
    assert push(dist, "ignored", new=True, sleep=pytest.fail) == 0
    assert client.steps() == ["datasets create", "datasets status", "kernels push"]  # no version before it
    assert client.calls()[0] == ["datasets", "create", "-p", str(dist / "dataset"), "-r", "zip"]


VERSION_STEPS = ["datasets status", "datasets version"]
REFUSED = {
    "slug taken": (True, {"datasets_create": {"say": [SLUG_TAKEN]}}, ["datasets create"],
                   "kaggle datasets create: the server refused it: " + SLUG_TAKEN
                   + " (the slug may be taken; use `python -m packager push` without --new to add a version)"),
    "version refused": (False, {"datasets_version": {"say": [VERSION_REFUSED]}}, VERSION_STEPS,
                        "kaggle datasets version: the server refused it: " + VERSION_REFUSED),
    "invalid tags alone": (False, {"datasets_version": {"say": [INVALID_TAGS]}}, VERSION_STEPS,
                           "kaggle datasets version: the server refused it: " + INVALID_TAGS),
    "kernel refused": (False, {"kernels_push": {"say": [KERNEL_REFUSED]}},
                       VERSION_STEPS + ["datasets status", "kernels push"],
                       "kaggle kernels push: the server refused it: " + KERNEL_REFUSED),
    "dataset source dropped": (True, {"kernels_push": {"say": [SOURCE_DROPPED, PUSHED]}},
                               ["datasets create", "datasets status", "kernels push"],
                               "kaggle kernels push: the server left out a source the notebook needs: "
                               + SOURCE_DROPPED + f" (the new version runs without it; once `kaggle datasets status "
                               f"{DATASET_ID}` says ready"),
    "competition source warning": (False, {"kernels_push": {"say": [SOURCE_WARNING, PUSHED]}},
                                   VERSION_STEPS + ["datasets status", "kernels push"],
                                   "kaggle kernels push: the server left out a source the notebook needs: "
                                   + SOURCE_WARNING),
}


@pytest.mark.parametrize("new, answers, steps, cause", REFUSED.values(), ids=REFUSED)
def test_push_fails_on_every_refusal_the_client_exits_0_on(dist, client, signed_out, capsys, new, answers, steps,
                                                          cause):
    sign_in(signed_out)
    client.answer(**answers)
    with pytest.raises(PackagingError) as raised:
        push(dist, "v2", new=new, sleep=pytest.fail)
    assert str(raised.value).startswith(cause)
    assert "\n" not in str(raised.value)  # one line
    assert client.steps() == steps  # a refused dataset step is never followed by a kernel push
    assert "Next:" not in capsys.readouterr().out


def test_the_cli_exits_non_zero_naming_the_cause(dist, client, signed_out, capsys):
    sign_in(signed_out)
    client.answer(datasets_create={"say": [SLUG_TAKEN]})
    assert packager_main(["push", "--dist", str(dist), "--new"]) == 1
    said = capsys.readouterr()
    assert SLUG_TAKEN in said.out  # echoed as the client printed it
    assert said.err.startswith("packager push: error: kaggle datasets create: the server refused it: ")
    assert client.steps() == ["datasets create"]
    client.answer()
    assert packager_main(["push", "--dist", str(dist), "--wait", "0"]) == 0


SIGNED_OUT_HINT = "(Kaggle refused the credentials: create a new API token at https://www.kaggle.com/settings/api)"
FIRST_UPLOAD_HINT = ("(the dataset does not exist: is this the first upload? then `python -m packager push --new` "
                     "creates it)")
EXITS = {
    "401 on the upload": ({"datasets_version": {"say": AUTH_HELP, "exit": 1}}, VERSION_STEPS,
                          "kaggle datasets version: it failed (exit 1): HTTP 401: Authentication required to call "
                          f"the Kaggle API. {SIGNED_OUT_HINT}"),
    "404 on the upload": ({"datasets_version": {"err": [NOT_FOUND_MESSAGE, "", *NOT_FOUND_HINT], "exit": 1}},
                          VERSION_STEPS, f"kaggle datasets version: it failed (exit 1): HTTP 404: {NOT_FOUND_MESSAGE} "
                                         f"{FIRST_UPLOAD_HINT}"),
    "failed file upload": ({"datasets_version": {"say": ["Starting upload for file wheels.zip"],
                                                 "err": [UPLOAD_FAILED], "exit": 1}},
                           VERSION_STEPS, f"kaggle datasets version: it failed (exit 1): {UPLOAD_FAILED}"),
    "403 on the kernel push": ({"kernels_push": {"err": FORBIDDEN, "exit": 1}},
                               VERSION_STEPS + ["datasets status", "kernels push"],
                               f"kaggle kernels push: it failed (exit 1): {FORBIDDEN_LINE} (You don't have access to "
                               "this resource. If this is a competition, you may need to accept its rules first at "
                               "https://www.kaggle.com/competitions/<competition>/rules)"),
    "client crash on the kernel push": ({"kernels_push": {"err": CRASHED, "exit": 1}},
                                        VERSION_STEPS + ["datasets status", "kernels push"],
                                        "kaggle kernels push: it failed (exit 1): KeyError: 'status' (a crash of the "
                                        "client: `kaggle --debug` shows where)"),
    "401 reading the version": ({"datasets_status": {"say": AUTH_HELP, "exit": 1}}, ["datasets status"],
                                f"kaggle datasets status {DATASET_ID} --format json: it failed: HTTP 401: "
                                f"Authentication required to call the Kaggle API. {SIGNED_OUT_HINT}; nothing was "
                                "uploaded"),
    "no dataset to version": ({"datasets_status": {"err": [NOT_FOUND_MESSAGE, "", *NOT_FOUND_HINT], "exit": 1}},
                              ["datasets status"],
                              f"kaggle datasets status {DATASET_ID} --format json: it failed: HTTP 404: "
                              f"{NOT_FOUND_MESSAGE} {FIRST_UPLOAD_HINT}; nothing was uploaded"),
}


@pytest.mark.parametrize("answers, steps, cause", EXITS.values(), ids=EXITS)
def test_a_non_zero_exit_names_the_error_line_then_the_hint(dist, client, signed_out, answers, steps, cause):
    sign_in(signed_out)
    client.answer(**answers)
    with pytest.raises(PackagingError) as raised:
        push(dist, "v2", sleep=pytest.fail)
    assert str(raised.value) == cause
    assert client.steps() == steps


def test_the_first_upload_hint_is_only_given_where_the_dataset_does_not_exist(dist, client, signed_out):
    sign_in(signed_out)
    for answer in ({"say": AUTH_HELP, "exit": 1}, {"err": [UPLOAD_FAILED], "exit": 1}, {"say": [INVALID_TAGS]},
                   {"say": [VERSION_REFUSED]}, {"err": FORBIDDEN, "exit": 1}):
        client.answer(datasets_version=answer)
        with pytest.raises(PackagingError) as raised:
            push(dist, "v2", sleep=pytest.fail)
        assert "first upload" not in str(raised.value)
    client.answer(datasets_version={"say": ["Dataset version creation error: Dataset does not exist"]})
    with pytest.raises(PackagingError, match="is this the first upload"):
        push(dist, "v2", sleep=pytest.fail)


def test_a_dataset_kaggle_could_not_process_stops_before_the_kernel_push(dist, client, signed_out):
    sign_in(signed_out)
    client.answer(datasets_status={"answers": [state("ready", 1), state("blobs_received", 2), state("failed", 2)]})
    clock = FakeClock()
    with pytest.raises(PackagingError) as raised:
        push(dist, "v2", clock=clock, sleep=clock.sleep)
    assert str(raised.value) == (f"kaggle datasets status {DATASET_ID} --format json: 'failed' at version 2: Kaggle "
                                 "could not process the upload; the kernel was not pushed (upload again: "
                                 "`python -m packager push`)")
    assert client.steps() == VERSION_STEPS + ["datasets status"] * 2


def test_a_dataset_that_never_becomes_ready_times_out_without_a_kernel_push(dist, client, signed_out):
    sign_in(signed_out)
    client.answer(datasets_status={"answers": [state("ready", 1), state("blobs_received", 2)]})
    clock = FakeClock()
    with pytest.raises(PackagingError) as raised:
        push(dist, "v2", wait=25, clock=clock, sleep=clock.sleep)
    assert str(raised.value) == (f"kaggle datasets status {DATASET_ID} --format json: still 'blobs_received' at "
                                 f"version 2 after 25 s (--wait 25); the kernel was not pushed; once `kaggle datasets "
                                 f"status {DATASET_ID}` says ready at a version after 1, run kaggle kernels push -p "
                                 f"{dist / 'kernel'}")
    assert clock.slept == [10, 10, 5]
    assert client.steps() == VERSION_STEPS + ["datasets status"] * 4


SERVER_ERROR = ["503 Server Error: Service Unavailable for url: "
                "https://api.kaggle.com/v1/datasets.DatasetApiService/GetDatasetStatus", "",
                "This is a problem on Kaggle's side, not with your command. Please try again later."]
TRANSIENT = {"connection reset": {"err": ["('Connection aborted.', ConnectionResetError(104, 'Connection reset by "
                                          "peer'))"], "exit": 1},
             "rate limited": {"err": RATE_LIMITED, "exit": 1},
             "server error": {"err": SERVER_ERROR, "exit": 1}}


@pytest.mark.parametrize("answer", TRANSIENT.values(), ids=TRANSIENT)
def test_a_transient_status_error_is_asked_again(dist, client, signed_out, capsys, answer):
    sign_in(signed_out)
    client.answer(datasets_status={"answers": [state("ready", 1), answer, answer, state("ready", 2)]})
    clock = FakeClock()
    assert push(dist, "v2", clock=clock, sleep=clock.sleep) == 0
    assert client.steps() == VERSION_STEPS + ["datasets status"] * 3 + ["kernels push"]
    assert clock.slept == [POLL_SECONDS, POLL_SECONDS]


STATUS_FORBIDDEN = ("403 Client Error: Forbidden for url: "
                    "https://api.kaggle.com/v1/datasets.DatasetApiService/GetDatasetStatus")
PERMANENT = {
    "401": ({"say": AUTH_HELP, "exit": 1},
            f"HTTP 401: Authentication required to call the Kaggle API. {SIGNED_OUT_HINT}"),
    "403": ({"err": [STATUS_FORBIDDEN, *FORBIDDEN[1:]], "exit": 1},
            f"{STATUS_FORBIDDEN} (You don't have access to this resource."),
    "404": ({"err": [NOT_FOUND_MESSAGE, "", *NOT_FOUND_HINT], "exit": 1},
            f"HTTP 404: {NOT_FOUND_MESSAGE} (The resource was not found."),
    "client crash": ({"err": CRASHED, "exit": 1}, "KeyError: 'status' (a crash of the client"),
    "a client without --format": ({"err": ["usage: kaggle [-h] [-v] [-W] {competitions,c,datasets,d} ...",
                                           "kaggle: error: unrecognized arguments: --format json"], "exit": 2},
                                  "kaggle: error: unrecognized arguments: --format json;"),
    "an answer that is not a status": ({"say": ["ready"]},
                                       "not a status: ready (push reads the JSON answer of kaggle==2.2.5);"),
}


@pytest.mark.parametrize("answer, error", PERMANENT.values(), ids=PERMANENT)
def test_a_permanent_status_error_stops_the_wait_at_once(dist, client, signed_out, answer, error):
    sign_in(signed_out)
    client.answer(datasets_status={"answers": [state("ready", 1), answer]})
    with pytest.raises(PackagingError) as raised:
        push(dist, "v2", sleep=pytest.fail)  # the default 30-minute wait: never slept
    message = str(raised.value)
    assert message.startswith(f"kaggle datasets status {DATASET_ID} --format json: it failed: {error}")
    assert message.endswith(f"; not asking again; the kernel was not pushed; once `kaggle datasets status "
                            f"{DATASET_ID}` says ready at a version after 1, run kaggle kernels push -p "
                            f"{dist / 'kernel'}")
    assert client.steps() == VERSION_STEPS + ["datasets status"]


def test_without_credentials_nothing_runs_and_every_sign_in_form_is_named(dist, client, signed_out, capsys):
    assert push(dist, "v2") == 1
    out = capsys.readouterr().out
    assert "no Kaggle credentials: nothing was pushed" in out and "kaggle==2.2.5" in out
    for form in ("KAGGLE_API_TOKEN=", f"{signed_out / '.kaggle' / 'access_token'}", "kaggle.json with username and key",
                 "KAGGLE_USERNAME + KAGGLE_KEY", f"{signed_out / '.kaggle' / 'credentials.json'}", "kaggle auth login"):
        assert form in out
    assert f"kaggle datasets status {DATASET_ID} --format json   # until a new version is ready" in out
    assert client.calls() == []


def test_an_access_token_signs_in_without_an_owner_check(dist, client, signed_out, capsys):
    (signed_out / ".kaggle").mkdir()
    (signed_out / ".kaggle" / "access_token").write_text("KGAT_not_a_real_token\n")
    assert push(dist, "v2", sleep=pytest.fail) == 0
    out = capsys.readouterr().out
    assert f"signed in with the access token ({signed_out / '.kaggle' / 'access_token'})" in out
    assert f"the metadata's owner '{OWNER}' is not checked here" in out
    assert client.steps() == VERSION_STEPS + ["datasets status", "kernels push"]


def test_push_refuses_metadata_of_another_user_of_any_sign_in(dist, client, signed_out):
    in_kaggle_dir(signed_out, "credentials.json", json.dumps({"refresh_token": "r", "username": "someone-else"}))
    with pytest.raises(PackagingError, match=r"belongs to 'tester' but the credentials \(.*credentials\.json\) are "
                                             "'someone-else'"):
        push(dist, "v2")
    assert client.calls() == []


def test_push_names_the_client_to_install_when_it_is_missing(dist, signed_out, monkeypatch, tmp_path):
    sign_in(signed_out)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PackagingError, match=r"not on PATH \(pip install kaggle==2\.2\.5 six\)"):
        push(dist, "v2")


# ---------------------------------------------------------------------------------------------- sign-in forms

def in_kaggle_dir(home: Path, name: str, text: str) -> Path:
    (home / ".kaggle").mkdir(exist_ok=True)
    (home / ".kaggle" / name).write_text(text)
    return home / ".kaggle" / name


def in_folder(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


API_KEY = json.dumps({"username": OWNER, "key": "k"})
OAUTH = json.dumps({"refresh_token": "r", "username": OWNER})


def token_variable(home, env):
    env.setenv("KAGGLE_API_TOKEN", "KGAT_x")


def token_variable_naming_a_file(home, env):
    env.setenv("KAGGLE_API_TOKEN", str(in_folder(home, "token", "KGAT_x") / "token"))


def token_file(home, env):
    in_kaggle_dir(home, "access_token", "KGAT_x\n")


def token_txt_file(home, env):
    in_kaggle_dir(home, "access_token.txt", "KGAT_x")


def kaggle_json(home, env):
    in_kaggle_dir(home, "kaggle.json", API_KEY)


def kaggle_json_in_config_dir(home, env):
    env.setenv("KAGGLE_CONFIG_DIR", str(in_folder(home / "cfg", "kaggle.json", API_KEY)))


def kaggle_json_in_xdg_config(home, env):
    in_folder(home / ".config" / "kaggle", "kaggle.json", API_KEY)


def username_and_key_variables(home, env):
    env.setenv("KAGGLE_USERNAME", OWNER)
    env.setenv("KAGGLE_KEY", "k")


def key_variable_completing_kaggle_json(home, env):
    in_kaggle_dir(home, "kaggle.json", json.dumps({"username": OWNER}))
    env.setenv("KAGGLE_KEY", "k")


def oauth_credentials(home, env):
    in_kaggle_dir(home, "credentials.json", OAUTH)


FORMS = [
    (token_variable, ("access token", "$KAGGLE_API_TOKEN", None)),
    (token_variable_naming_a_file, ("access token", "$KAGGLE_API_TOKEN (the file {home}/token)", None)),
    (token_file, ("access token", "{home}/.kaggle/access_token", None)),
    (token_txt_file, ("access token", "{home}/.kaggle/access_token.txt", None)),
    (kaggle_json, ("API key", "{home}/.kaggle/kaggle.json", OWNER)),
    (kaggle_json_in_config_dir, ("API key", "{home}/cfg/kaggle.json", OWNER)),
    (kaggle_json_in_xdg_config, ("API key", "{home}/.config/kaggle/kaggle.json", OWNER)),
    (username_and_key_variables, ("API key", "$KAGGLE_USERNAME and $KAGGLE_KEY", OWNER)),
    (key_variable_completing_kaggle_json, ("API key", "{home}/.kaggle/kaggle.json and $KAGGLE_KEY", OWNER)),
    (oauth_credentials, ("OAuth", "{home}/.kaggle/credentials.json", OWNER)),
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the client uses XDG_CONFIG_HOME on Linux only")
@pytest.mark.parametrize("setup, expected", FORMS, ids=[setup.__name__ for setup, _ in FORMS])
def test_every_sign_in_form_of_the_client_is_found(signed_out, monkeypatch, setup, expected):
    assert find_kaggle_credentials() is None
    setup(signed_out, monkeypatch)
    found = find_kaggle_credentials()
    form, source, username = expected
    assert (found.form, found.source, found.username) == (form, source.format(home=signed_out), username)


def blank_token_file(home, env):
    in_kaggle_dir(home, "access_token", "\n")


def token_variable_naming_an_empty_file(home, env):
    env.setenv("KAGGLE_API_TOKEN", str(in_folder(home, "token", "") / "token"))


def token_file_in_config_dir(home, env):
    # kagglesdk 0.1.38 reads access_token from ~/.kaggle only: $KAGGLE_CONFIG_DIR does not move it
    env.setenv("KAGGLE_CONFIG_DIR", str(in_folder(home / "cfg", "access_token", "KGAT_x")))


def kaggle_json_without_a_key(home, env):
    in_kaggle_dir(home, "kaggle.json", json.dumps({"username": OWNER}))


def kaggle_json_that_is_not_json(home, env):
    in_kaggle_dir(home, "kaggle.json", "username=tester")


def xdg_kaggle_json_beside_a_kaggle_dir(home, env):
    (home / ".kaggle").mkdir()  # the client then reads ~/.kaggle/kaggle.json only
    in_folder(home / ".config" / "kaggle", "kaggle.json", API_KEY)


def oauth_without_a_refresh_token(home, env):
    in_kaggle_dir(home, "credentials.json", json.dumps({"username": OWNER}))


IGNORED = [blank_token_file, token_variable_naming_an_empty_file, token_file_in_config_dir, kaggle_json_without_a_key,
           kaggle_json_that_is_not_json, xdg_kaggle_json_beside_a_kaggle_dir, oauth_without_a_refresh_token]


@pytest.mark.parametrize("setup", IGNORED, ids=[setup.__name__ for setup in IGNORED])
def test_what_the_client_does_not_sign_in_with_is_not_credentials(signed_out, monkeypatch, setup):
    setup(signed_out, monkeypatch)
    assert find_kaggle_credentials() is None


def test_the_client_s_order_decides_which_sign_in_is_used(signed_out, monkeypatch):
    oauth_credentials(signed_out, monkeypatch)
    assert find_kaggle_credentials().form == "OAuth"
    kaggle_json(signed_out, monkeypatch)
    assert find_kaggle_credentials().form == "API key"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_x")
    assert find_kaggle_credentials().form == "access token"


def test_the_config_dir_and_the_default_owner(signed_out, monkeypatch):
    xdg = signed_out / ".config" / "kaggle"
    assert kaggle_config_dir() == xdg and default_owner() is None
    in_kaggle_dir(signed_out, "credentials.json", '{"refresh_token": "r", "username": "oauth-user"}')
    assert kaggle_config_dir() == signed_out / ".kaggle" and default_owner() == "oauth-user"
    in_kaggle_dir(signed_out, "kaggle.json", '{"username": "json-user"}')
    assert default_owner() == "json-user"
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    assert default_owner() == "env-user"
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(signed_out / "cfg"))
    assert kaggle_config_dir() == signed_out / "cfg"


def test_every_sign_in_file_is_kept_out_of_bundles(tmp_path):
    for name in ("kaggle.json", "access_token", "access_token.txt", "credentials.json", ".kaggle/anything"):
        assert credential_reason(name), name
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("secret")
    (tmp_path / "kernel.py").write_text("")
    assert credential_like_files(tmp_path) == sorted(["kaggle.json", "access_token", "access_token.txt",
                                                      "credentials.json", ".kaggle/anything"])


# ---------------------------------------------------------------------------------------------- names

NAMES = {
    "dataset slug of 5": ({"dataset_slug": "kit-b"}, "dataset slug 'kit-b' has 5 characters; Kaggle takes 6 to 50"),
    "dataset slug of 51": ({"dataset_slug": "a" * 51}, f"dataset slug '{'a' * 51}' has 51 characters"),
    "dataset title of 5": ({"dataset_title": "Kit b"}, "dataset title 'Kit b' has 5 characters; Kaggle takes 6 to 50"),
    "kernel title of 4": ({"kernel_title": "Runs"}, "kernel slug 'runs' has 4 characters; Kaggle takes 5 to 50; "
                                                    "kernel title 'Runs' has 4 characters; Kaggle takes 5 to 50"),
    "kernel slug not a slug": ({"kernel_slug": "Deepfake_kit"}, "kernel slug 'Deepfake_kit' must be lowercase"),
    "owner": ({"owner": "a/b"}, "owner 'a/b' is not a Kaggle username"),
    "accelerator": ({"accelerator": "T4 x2"}, "accelerator 'T4 x2' is not a Kaggle machine shape"),
}


@pytest.mark.parametrize("options, message", NAMES.values(), ids=NAMES)
def test_build_refuses_names_the_client_refuses(options, message):
    with pytest.raises(PackagingError) as raised:
        check_identity(BuildOptions(**{"owner": OWNER, **options}))
    assert message in str(raised.value)


def test_the_shortest_names_the_client_takes_build_and_push(tmp_path, capsys):
    dist = make_dist(tmp_path, dataset_slug="kit-bu", dataset_title="Kit bu", kernel_title="Infer")
    assert push(dist, "v2", dry_run=True) == 0
    assert "kaggle kernels push" in capsys.readouterr().out


def test_push_refuses_metadata_with_names_the_client_refuses(dist):
    metadata = dist / "dataset" / DATASET_METADATA
    write_json(metadata, {**json.loads(metadata.read_text()), "title": "Kit"})
    write_manifest(dist, {"owner": OWNER})
    with pytest.raises(PackagingError, match="dataset title 'Kit' has 3 characters; Kaggle takes 6 to 50"):
        push(dist, "v2", dry_run=True)


def test_the_accelerator_becomes_the_machine_shape(tmp_path):
    default = kernel_metadata(BuildOptions(owner=OWNER), KERNEL_ID, DATASET_ID)
    assert "machine_shape" not in default and default["enable_gpu"] is True
    shaped = json.loads((make_dist(tmp_path, accelerator="NvidiaTeslaT4") / "kernel" / KERNEL_METADATA).read_text())
    assert shaped == {**default, "machine_shape": "NvidiaTeslaT4"}
    assert build_parser().parse_args(["build", "--accelerator", "NvidiaTeslaT4"]).accelerator == "NvidiaTeslaT4"
    assert build_parser().parse_args(["push", "--wait", "60"]).wait == 60
