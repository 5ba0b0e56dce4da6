"""`--engine ray`: the local leaderboard on a real (loopback) Ray cluster, its faults, and its absence.

The cluster is started with `ray start --head` in a session of its own, on 127.0.0.1 only, and every process of
that session is killed in teardown, whatever happens (`ray stop` would kill every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bench import blend_fit, local_lb, ray_engine, tune
from packager.trace import is_tooling, trace_runtime_modules
from zootools.sources import REPO_ROOT

RAY = Path(sys.executable).with_name("ray")
# every Ray address stays 127.0.0.1; no token authentication (a loopback-only cluster of one test session; with a
# ~/.ray/auth_token left by some earlier `ray.init()`, `ray start` would turn it on for the cluster but not the driver)
CLUSTER_ENV = {ray_engine.LOOPBACK_ONLY_ENV: "0", "RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def session_processes(session: int) -> list[tuple[int, str]]:
    """(pid, command) of the live processes in a session (`ps`), zombies left out."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    processes = []
    for line in out.splitlines():
        pid, sid, stat, *args = line.split(None, 3)
        if int(sid) == session and not stat.startswith("Z"):
            processes.append((int(pid), args[0] if args else ""))
    return processes


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs: its address, and its processes' session id."""
    pytest.importorskip("ray")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, **CLUSTER_ENV, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.Popen([str(RAY), "start", "--head", "--num-cpus", "2", "--num-gpus", "0", "--port", str(port),
                              "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--include-dashboard",
                              "false", "--disable-usage-stats"], env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    session = start.pid  # the session leader: gcs, raylet, workers all stay in its session
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out
        yield {"address": f"127.0.0.1:{port}", "session": session}
    finally:
        if start.poll() is None:
            start.kill()
        for _ in range(50):
            alive = session_processes(session)
            if not alive:
                break
            for pid, _ in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not session_processes(session), "Ray processes survived the teardown"


@pytest.fixture
def loopback(monkeypatch):
    for key, value in CLUSTER_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def lb_args(ensemble: Path, cache: Path, out: Path, *extra: str, frames: int = 8) -> list[str]:
    return ["--set", "dfdc", "--ensemble", str(ensemble), "--frames-per-video", str(frames), "--cache", str(cache),
            "--history-file", str(out.with_suffix(".history.jsonl")), "--plot", str(out.with_suffix(".png")),
            "--json", str(out), *extra]


def lb(ensemble: Path, cache: Path, out: Path, *extra: str) -> dict:
    assert local_lb.main(lb_args(ensemble, cache, out, *extra)) == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def local_report(shared, ensemble_path, tmp_path_factory) -> dict:
    """The dfdc sample at 8 frames, scored in this process (`--engine local`): what Ray must reproduce."""
    folder = tmp_path_factory.mktemp("local")
    return lb(ensemble_path, folder / "cache", folder / "local.json")


def assert_same_predictions(report: dict, expected: dict) -> None:
    assert report["n"] == expected["n"] == 4
    for video, reference in zip(report["videos"], expected["videos"]):
        assert video["path"] == reference["path"] and video["error"] == reference["error"]
        for name, value in reference.items():
            if isinstance(value, float):
                assert video[name] == pytest.approx(value, abs=1e-6), (video["path"], name)


def assert_actors_gone(session: int, timeout: float = 30.0) -> None:
    """No pool actor process remains in the cluster once a run has returned; `ray.kill` is asynchronous, so the
    processes get a moment to exit."""
    deadline = time.monotonic() + timeout
    while any("VideoScorer" in args for _, args in session_processes(session)):
        if time.monotonic() > deadline:
            pytest.fail(f"actors outlived the run: {session_processes(session)}")
        time.sleep(0.1)


def cache_entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


@pytest.mark.slow
def test_ray_engine_scores_like_local_and_reruns_from_cache(ray_cluster, ensemble_path, local_report, loopback,
                                                           tmp_path, capsys):
    address = ray_cluster["address"]
    cache = tmp_path / "cache"
    first = lb(ensemble_path, cache, tmp_path / "first.json", "--engine", "ray", "--address", address)
    assert first["engine"] == "ray" and first["computed"] == 4 * 4 and first["failed"] == 0
    assert sum(first["nodes"].values()) == 4 and all("127.0.0.1" in node for node in first["nodes"])
    assert_same_predictions(first, local_report)
    assert first["scores"] == local_report["scores"]
    assert len(cache_entries(cache)) == 16
    assert "per node (engine ray)" in capsys.readouterr().out

    again = lb(ensemble_path, cache, tmp_path / "again.json", "--engine", "ray", "--address", address)
    assert again["computed"] == 0 and again["scores"] == first["scores"]

    # tune: one pool for every frame count; 8 frames is cached, 4 is computed on the cluster
    assert tune.main(["--set", "dfdc", "--ensemble", str(ensemble_path), "--frames", "4,8", "--cache", str(cache),
                      "--png", str(tmp_path / "frames.png"), "--folds", "4", "--engine", "ray",
                      "--address", address, "--dry-run", "--json", str(tmp_path / "tune.json")]) == 0
    out = capsys.readouterr().out
    assert "frames  log loss" in out and "cross-validation over videos" in out
    assert len(cache_entries(cache)) == 32
    # blend fit from the cache alone
    folder = shutil.copytree(ensemble_path.parent, tmp_path / "weights")
    assert blend_fit.main(["--set", "dfdc", "--ensemble", str(folder / "ensemble.json"), "--frames-per-video", "8",
                           "--cache", str(cache), "--folds", "4", "--dry-run", "--engine", "ray",
                           "--address", address]) == 0
    assert "log loss on the fitting data" in capsys.readouterr().out
    assert len(cache_entries(cache)) == 32


class ActorKiller(threading.Thread):
    """Kills the first pool actor seen holding a video: its pid asked from Ray (the actor's `status`, answered
    in its own concurrency group while it scores), then SIGKILL."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed: dict | None = None
        self.stop = threading.Event()

    def run(self):
        import ray

        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
            if not ray.is_initialized():
                continue
            try:
                for name in ray.util.list_named_actors():
                    if not name.startswith("deepfake-lb-"):
                        continue
                    status = ray.get(ray.get_actor(name).status.options(concurrency_group="control").remote(),
                                     timeout=2)
                    if status["video"]:
                        os.kill(status["pid"], signal.SIGKILL)
                        self.killed = status
                        return
            except Exception:  # not started yet, already gone, or the run is shutting down
                continue


@pytest.mark.slow
def test_a_killed_actor_loses_only_its_video(ray_cluster, ensemble_path, local_report, loopback, tmp_path, capsys):
    killer = ActorKiller()
    killer.start()
    try:
        report = lb(ensemble_path, tmp_path / "cache", tmp_path / "fault.json", "--engine", "ray",
                    "--address", ray_cluster["address"], "--workers", "2")
    finally:
        killer.stop.set()
        killer.join(10)
    assert killer.killed is not None, "no actor was seen holding a video"
    err = capsys.readouterr().err
    assert re.search(r"[1-9]\d* actors lost so far, [1-9]\d* videos tried again, 0 failed", err), err
    assert report["failed"] == 0 and sum(report["nodes"].values()) == 4
    assert_same_predictions(report, local_report)
    assert report["scores"] == local_report["scores"]
    assert len(cache_entries(tmp_path / "cache")) == 16
    assert_actors_gone(ray_cluster["session"])


@pytest.mark.slow
def test_ctrl_c_stops_the_cluster_work_and_keeps_what_was_computed(ray_cluster, ensemble_path, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, **CLUSTER_ENV}
    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "bench" / "local_lb.py"),
                                *lb_args(ensemble_path, cache, tmp_path / "run.json", "--engine", "ray", "--address",
                                         ray_cluster["address"], "--workers", "1", frames=32)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               # a signal ignored in this process stays ignored in the child, and Python then
                               # installs no KeyboardInterrupt: Ctrl-C gets its default action back there
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # 32 frames a video: the first video's entry comes seconds before the last, so Ctrl-C lands mid-run
        deadline = time.monotonic() + 240
        while not cache_entries(cache) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "interrupted; every video scored so far is in the cache" in err
    assert not (tmp_path / "run.json").exists()
    kept = cache_entries(cache)
    assert 1 <= len(kept) < 16 and all(json.loads(p.read_text())["frame_scores"] is not None for p in kept)
    assert_actors_gone(ray_cluster["session"])  # the pool is killed, not left scoring


def test_engine_ray_fails_at_once_without_a_cluster(monkeypatch, loopback, tmp_path, capsys):
    pytest.importorskip("ray")
    args = ["--set", "dfdc", "--root", str(tmp_path / "none"), "--cache", str(tmp_path / "cache"),
            "--ensemble", str(tmp_path / "ensemble.json"), "--engine", "ray", "--address", f"127.0.0.1:{free_port()}"]
    started = time.monotonic()
    assert local_lb.main(args) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Ray cluster reachable at 127.0.0.1:" in err, err
    # tune and blend fit share the options and the failure
    assert tune.main(args) == 2 and blend_fit.main(args) == 2
    assert capsys.readouterr().err.count("no Ray cluster reachable") == 2


def test_engine_ray_fails_at_once_without_ray_installed(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["--set", "dfdc", "--root", str(tmp_path / "none"), "--cache", str(tmp_path / "cache"),
            "--ensemble", str(tmp_path / "ensemble.json"), "--engine", "ray"]
    assert local_lb.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ray is not installed" in err and ray_engine.RAY_REQUIREMENT in err, err


@pytest.mark.slow
def test_engine_local_needs_no_ray(monkeypatch, ensemble_path, local_report, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    report = lb(ensemble_path, tmp_path / "cache", tmp_path / "local.json", "--limit", "1")
    assert report["engine"] == "local" and report["computed"] == 4 and report["nodes"] == {}
    assert report["videos"][0]["blend"] == pytest.approx(local_report["videos"][0]["blend"], abs=1e-6)


def test_actor_plan():
    plan = ray_engine.plan_actors
    assert plan([{"CPU": 2}], "auto") == ray_engine.Plan(1, 2, 0)
    assert plan([{"CPU": 2}], "auto", workers=2) == ray_engine.Plan(2, 1, 0)
    assert plan([{"CPU": 2}], "auto", workers=1) == ray_engine.Plan(1, 2, 0)
    assert plan([{"CPU": 16}, {"CPU": 16}], "auto") == ray_engine.Plan(16, 2, 0)
    assert plan([{"CPU": 16}, {"CPU": 16}], "auto", workers=2) == ray_engine.Plan(2, 16, 0)
    assert plan([{"CPU": 16}, {"CPU": 16}], "auto", workers=4) == ray_engine.Plan(4, 8, 0)
    assert plan([{"CPU": 16}, {"CPU": 16}], "auto", workers=3) == ray_engine.Plan(3, 8, 0)
    assert plan([{"CPU": 16}], "auto", cpus_per_actor=4) == ray_engine.Plan(4, 4, 0)
    assert plan([{"CPU": 1}], "auto") == ray_engine.Plan(1, 1, 0)
    # GPUs: one actor per GPU with its share of the node's CPUs; CPU-only nodes take none; --device cpu ignores them
    assert plan([{"CPU": 32, "GPU": 4}, {"CPU": 8}], "auto") == ray_engine.Plan(4, 8, 1)
    assert plan([{"CPU": 32, "GPU": 4}], "auto", workers=2) == ray_engine.Plan(2, 8, 1)
    assert plan([{"CPU": 32, "GPU": 4}], "cpu") == ray_engine.Plan(16, 2, 0)
    with pytest.raises(local_lb.EngineUnavailable, match="no GPU"):
        plan([{"CPU": 8}], "cuda")
    with pytest.raises(local_lb.EngineUnavailable, match="no Ray node has 4 CPUs"):
        plan([{"CPU": 2}], "auto", cpus_per_actor=4)


def test_addresses():
    assert ray_engine.host_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert ray_engine.host_port("ray://head.example:10001") == ("head.example", 10001)
    assert ray_engine.host_port("auto") is None
    assert ray_engine.is_loopback("127.0.0.1") and ray_engine.is_loopback("localhost")
    assert not ray_engine.is_loopback("10.0.0.1")


@pytest.mark.slow
def test_the_kernel_bundle_never_ships_ray():
    kernel_requirements = (REPO_ROOT / "requirements-kernel.txt").read_text().splitlines()
    assert not any(re.match(r"\s*ray\b", line) for line in kernel_requirements)
    assert any(line.strip().startswith("ray==") for line in (REPO_ROOT / "requirements.txt").read_text().splitlines())
    assert is_tooling("bench/ray_engine.py")
    modules = trace_runtime_modules(REPO_ROOT)
    assert "inference/pipeline.py" in modules
    importing_ray = [m for m in modules
                     if re.search(r"^\s*(import ray\b|from ray\b)", (REPO_ROOT / m).read_text(), re.MULTILINE)]
    assert importing_ray == []


def test_progress_without_a_terminal_prints_plain_lines(monkeypatch, capsys):
    monkeypatch.setattr(ray_engine, "PLAIN_PROGRESS_EVERY_S", 0.0)
    progress = ray_engine.Progress(3, "videos")  # pytest's stderr is no terminal: no bar, a line per interval
    progress.update(actors=2)
    progress.update(actors=2, retried=1)
    progress.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(" 67%") or "2/3" in lines[-1], lines
    assert "actors=2, retried=1" in lines[-1] and "video/s" in lines[-1]
