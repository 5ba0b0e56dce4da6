"""The local leaderboard's memory: one JSON line per run (time, set, config, commit, scores) and a ranking of them."""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import warnings
from datetime import datetime
from pathlib import Path

from bench.metrics import Scores, format_metric, format_table
from zootools.sources import REPO_ROOT

CONFIG_SUMMARY_WIDTH = 48


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """Short HEAD hash of `repo`, with '+dirty' when it has uncommitted changes; None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = bool(git("status", "--porcelain").strip())
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + "+dirty" if dirty else commit


def _scores_as_json(scores: Scores) -> dict:
    """Scores as a plain dict; NaN becomes null so every line stays strict JSON."""
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        return [clean(item) for item in value] if isinstance(value, (tuple, list)) else value

    return {key: clean(value) for key, value in dataclasses.asdict(scores).items()}


def append_run(path: Path, set_name: str, config: dict, scores: dict[str, Scores], repo: Path = REPO_ROOT) -> dict:
    """Append one run (scores keyed by row name, e.g. each model and 'blend') to the history file; return the record."""
    # per-method rows cover subsets of the set, so the largest row is the whole set
    n = max((s.n for s in scores.values()), default=0)
    record = {
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "set": set_name,
        "n": n,
        "config": config,
        "commit": git_commit(repo),
        "scores": {name: _scores_as_json(s) for name, s in scores.items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    return record


def load_runs(path: Path) -> list[dict]:
    """Every run recorded in the history file (none if it does not exist); corrupt lines are skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    runs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            run = json.loads(line)
        except json.JSONDecodeError as error:
            warnings.warn(f"{path}:{number}: skipping corrupt history line ({error})", stacklevel=2)
            continue
        if not isinstance(run, dict) or not isinstance(run.get("scores"), dict):
            warnings.warn(f"{path}:{number}: skipping history line that is not a run record", stacklevel=2)
            continue
        runs.append(run)
    return runs


def _config_summary(config: dict) -> str:
    text = ", ".join(f"{key}={value}" for key, value in config.items())
    return text if len(text) <= CONFIG_SUMMARY_WIDTH else text[: CONFIG_SUMMARY_WIDTH - 3] + "..."


def leaderboard(runs: list[dict], set_name: str | None = None, row: str = "blend") -> str:
    """Past runs ranked by the log loss of score row `row` (best first), optionally only those on `set_name`."""
    ranked = sorted(
        (run for run in runs
         if (set_name is None or run.get("set") == set_name)
         and isinstance(run["scores"].get(row, {}).get("log_loss"), (int, float))),
        key=lambda run: run["scores"][row]["log_loss"],
    )
    if not ranked:
        where = f" on set {set_name!r}" if set_name else ""
        return f"no runs with a {row!r} score{where}"
    header = ["rank", "time", "set", "n", "commit", "log loss", "AUC", "config"]
    body = [
        [
            str(rank),
            str(run.get("time", "-"))[:16].replace("T", " "),
            str(run.get("set", "-")),
            str(run.get("n", "-")),
            run.get("commit") or "-",
            format_metric(run["scores"][row]["log_loss"]),
            format_metric(run["scores"][row].get("auc")),
            _config_summary(run.get("config") or {}),
        ]
        for rank, run in enumerate(ranked, start=1)
    ]
    return format_table(header, body, align="rllrlrrl")
