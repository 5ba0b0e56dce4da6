"""The local leaderboard's inference on a Ray cluster (`--engine ray` of local_lb, tune and blend_fit).

A pool of actors (`VideoScorer`), each with the ensemble loaded once, scores the videos; the driver keeps doing
what it does with the results (metrics, intervals, histograms, history). Each actor scores a video exactly as
`--engine local` does (`lb_cache.video_scores`: the kernel's `Pipeline`, through the prediction cache), so the
numbers are the same; the cache folder must be one every node sees. Results travel back as per-frame scores.

- Pool: one actor per GPU where the cluster has GPUs (with that GPU's share of the node's CPUs), else one per
  `--cpus-per-actor` CPUs (default 2); `--workers N` caps it (and then spreads the CPUs over fewer actors).
- Faults: a video lost with its actor or node (or failing on a node, say an unreadable file) is tried again on
  another actor, `--retries` times, then recorded as failed with the reason (the fallback value, not cached).
  A dead actor is replaced while the cluster has room for it.
- Ctrl-C kills the pool and disconnects; every video already scored is in the cache.

Ray is imported here only, and only for `--engine ray`: it is tooling, never in the kernel bundle.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import sys
import time
import uuid
from collections import Counter, deque
from pathlib import Path

from tqdm import tqdm

from bench.lb_cache import Evaluation, PredictionCache, VideoScores, video_scores
from zootools.sources import REPO_ROOT

log = logging.getLogger("ray_engine")

# The pin, from its one owner: the tooling requirements.
RAY_REQUIREMENT = next(line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                       if line.startswith("ray=="))
DEFAULT_CPUS_PER_ACTOR = 2
TASKS_PER_ACTOR = 2         # one running, one queued: an actor never waits on the driver between videos
NO_ACTOR_TIMEOUT_S = 600.0  # no live actor for this long (the cluster has no room): give up
PROBE_TIMEOUT_S = 3.0
PLAIN_PROGRESS_EVERY_S = 60.0  # without a terminal (a log file, `ray job submit`): one progress line a minute
# Ray picks the node's outward address unless told this; a cluster reached on loopback (or started here) stays on it
LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class EngineUnavailable(RuntimeError):
    """The engine cannot run (Ray not installed, no cluster at the address, no room for an actor, an ensemble the
    actors cannot load): the reason in one line."""


def import_ray(loopback: bool = False):
    """The ray module, or EngineUnavailable saying it is not installed."""
    if loopback:
        os.environ[LOOPBACK_ONLY_ENV] = "0"  # read when ray is first imported; set below when it already is
    try:
        import ray
    except ImportError as error:  # not installed, or blocked (sys.modules["ray"] = None)
        raise EngineUnavailable(f"ray is not installed ({error}); install the tooling requirements "
                                f"(pip install -r requirements.txt, {RAY_REQUIREMENT})") from None
    if loopback:
        try:
            import ray._private.ray_constants as constants

            constants.ENABLE_RAY_CLUSTER = False
        except (ImportError, AttributeError):
            pass
    return ray


def resolve_address(address: str | None) -> str | None:
    """--address, else $RAY_ADDRESS, else None: a local Ray instance started for this run."""
    return address or os.environ.get("RAY_ADDRESS") or None


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT or ray://HOST:PORT; None for `auto` and other forms Ray resolves itself."""
    bare = address.split("://", 1)[-1]
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail at once, in one line, when nothing listens at the address (ray.init would retry for minutes)."""
    target = host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise EngineUnavailable(f"no Ray cluster reachable at {address} ({reason})") from None


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many actors, and what each one holds."""

    actors: int
    cpus: int
    gpus: int

    def describe(self) -> str:
        hold = f"1 GPU and {self.cpus} CPUs" if self.gpus else f"{self.cpus} CPUs"
        return f"{self.actors} actors of {hold}"


def plan_actors(nodes: list[dict[str, float]], device: str, workers: int | None = None,
                cpus_per_actor: int | None = None) -> Plan:
    """The pool for the nodes' resources ({"CPU": n, "GPU": n} each): one actor per GPU where there are GPUs
    (unless --device cpu), else one per `cpus_per_actor` CPUs; `workers` caps the count, and without an explicit
    `cpus_per_actor` a capped CPU pool gives each actor as many CPUs as still lets `workers` of them fit."""
    if workers is not None and workers < 1:
        raise EngineUnavailable(f"--workers must be at least 1, got {workers}")
    if cpus_per_actor is not None and cpus_per_actor < 1:
        raise EngineUnavailable(f"--cpus-per-actor must be at least 1, got {cpus_per_actor}")
    gpu_nodes = [n for n in nodes if int(n.get("GPU", 0)) >= 1]
    if device == "cuda" and not gpu_nodes:
        raise EngineUnavailable("--device cuda, but the Ray cluster has no GPU")
    if gpu_nodes and device != "cpu":
        cpus = cpus_per_actor or max(1, min(int(n.get("CPU", 0)) // int(n["GPU"]) for n in gpu_nodes))
        room = sum(min(int(n["GPU"]), int(n.get("CPU", 0)) // cpus) for n in gpu_nodes)
        if room < 1:
            raise EngineUnavailable(f"no GPU node has {cpus} CPUs for an actor (--cpus-per-actor)")
        return Plan(min(room, workers or room), cpus, 1)

    def room_for(cpus: int) -> int:
        return sum(int(n.get("CPU", 0)) // cpus for n in nodes)

    cpus = cpus_per_actor or DEFAULT_CPUS_PER_ACTOR
    if cpus_per_actor is None:
        largest = max((int(n.get("CPU", 0)) for n in nodes), default=0)
        cpus = min(cpus, max(1, largest))  # a node smaller than the default still takes one actor
        while workers and room_for(cpus + 1) >= workers:
            cpus += 1
        while workers and cpus > 1 and room_for(cpus) < workers:
            cpus -= 1
    room = room_for(cpus)
    if room < 1:
        raise EngineUnavailable(f"no Ray node has {cpus} CPUs for an actor (the nodes: {nodes})")
    return Plan(min(room, workers or room), cpus, 0)


def node_label() -> str:
    """How the summary names this node: its IP address (and host name where it differs)."""
    import ray

    address, host = ray.util.get_node_ip_address(), socket.gethostname()
    return address if host in (address, "localhost") else f"{host} ({address})"


class VideoScorer:
    """A Ray actor: the kernel's pipeline, loaded once, scoring one video per call through the prediction cache.

    `cpus` bounds its inference threads (onnxruntime, torch) so that the actors of a node share its cores instead
    of each spreading over all of them."""

    def __init__(self, manifest: str, device: str, cpus: int):
        import torch

        from inference.pipeline import Pipeline

        torch.set_num_threads(cpus)
        self.pipeline = Pipeline(Path(manifest), device, readers=0, cores=cpus)
        self.caches: dict[str, PredictionCache] = {}
        self.node = node_label()
        self.video: str | None = None

    def ready(self) -> dict:
        return {"node": self.node, "pid": os.getpid(), "device": str(self.pipeline.accelerator.device)}

    def status(self) -> dict:
        """The video it holds now (None when idle) and its process: answered at once, in the `control` group."""
        return {"node": self.node, "pid": os.getpid(), "video": self.video}

    def score(self, path: str, frames_per_video: int, cache_folder: str) -> dict:
        """One video: the entries the cache holds, the kernel's pipeline for the models it lacks (written back)."""
        self.video = path
        try:
            if cache_folder not in self.caches:
                self.caches[cache_folder] = PredictionCache(Path(cache_folder))
            cache = self.caches[cache_folder]
            pipeline = self.pipeline

            def compute(missing: set[str]):
                return pipeline.process(Path(path), frames_per_video, missing)

            scores = video_scores(Path(path), pipeline.ensemble, frames_per_video, cache, compute)
            return {"node": self.node, **dataclasses.asdict(scores)}
        finally:
            self.video = None


@dataclasses.dataclass
class Actor:
    handle: object
    name: str
    node: str = "?"
    pid: int = 0
    inflight: set = dataclasses.field(default_factory=set)


class RayEngine:
    """The driver's side: the actor pool, the work queue, retries, progress and the per-node counts."""

    def __init__(self, ray, manifest: Path, device: str, plan: Plan, retries: int):
        self.ray = ray
        self.plan = plan
        self.retries = retries
        self.device = device if plan.gpus else "cpu"
        self.manifest = str(Path(manifest).resolve())
        self.actor_class = ray.remote(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=0, max_task_retries=0,
                                      concurrency_groups={"control": 1})(VideoScorer)
        self.prefix = f"deepfake-lb-{uuid.uuid4().hex[:8]}"
        self.spawned = 0
        self.spawn_budget = plan.actors * (retries + 2)  # replacements for dead actors, bounded
        self.live: list[Actor] = []
        self.starting: dict[object, Actor] = {}  # ready() ref -> actor still loading the ensemble
        self.lost_actors = 0
        self.last_loss = ""
        for _ in range(plan.actors):
            self.spawn()

    @classmethod
    def connect(cls, address: str | None, manifest: Path, device: str = "auto", workers: int | None = None,
                cpus_per_actor: int | None = None, retries: int = 2) -> RayEngine:
        """Connect to the cluster (or start a local instance) and start the pool; EngineUnavailable, in one line,
        when Ray is missing, the address answers nothing, or the cluster has no room for an actor."""
        if retries < 0:
            raise EngineUnavailable(f"--retries must be at least 0, got {retries}")
        address = resolve_address(address)
        target = host_port(address) if address else None
        ray = import_ray(loopback=address is None or (target is not None and is_loopback(target[0])))
        if address:
            probe(address)
        if ray.is_initialized():
            ray.shutdown()
        try:
            ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                     configure_logging=True, log_to_driver=True)
        except Exception as error:  # version mismatch, a port that is not Ray's, ...
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise EngineUnavailable(f"cannot connect to Ray at {address or 'a local instance'}: {first}") from None
        try:
            nodes = [{k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")}
                     for n in ray.nodes() if n.get("Alive")]
            plan = plan_actors(nodes, device, workers, cpus_per_actor)
            print(f"ray: {len(nodes)} nodes at {address or 'a local instance'}; {plan.describe()}", file=sys.stderr)
            return cls(ray, manifest, device, plan, retries)
        except BaseException:
            ray.shutdown()
            raise

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill the pool (its in-flight videos with it) and disconnect; a local instance started here stops."""
        for actor in [*self.live, *self.starting.values()]:
            try:
                self.ray.kill(actor.handle, no_restart=True)
            except Exception:  # already dead
                pass
        self.live, self.starting = [], {}
        self.ray.shutdown()

    def spawn(self) -> bool:
        if self.spawned >= self.spawn_budget:
            return False
        name = f"{self.prefix}-{self.spawned}"
        self.spawned += 1
        handle = self.actor_class.options(name=name).remote(self.manifest, self.device, self.plan.cpus)
        actor = Actor(handle, name)
        self.starting[handle.ready.remote()] = actor
        return True

    def lose(self, actor: Actor, error: BaseException) -> None:
        """An actor died (or became unreachable): drop it, and start a replacement while the budget allows."""
        if actor not in self.live:
            return
        self.live.remove(actor)
        self.lost_actors += 1
        self.last_loss = one_line(error)
        log.warning("ray: actor %s on %s (pid %s) lost: %s", actor.name, actor.node, actor.pid, self.last_loss)
        try:
            self.ray.kill(actor.handle, no_restart=True)
        except Exception:
            pass
        self.spawn()

    def evaluate(self, videos, frames_per_video: int, cache: PredictionCache, ensemble) -> Evaluation:
        """Every video scored on the pool (through the cache), in the order given: what `local_lb.evaluate`
        returns, plus the videos per node and the videos that failed on every try."""
        sweep = Sweep(list(videos), frames_per_video, str(Path(cache.folder).resolve()), self.retries,
                      Progress(len(videos), f"videos ({self.plan.describe()})"))
        started = time.monotonic()
        first_ready: float | None = None
        alone_since = started
        try:
            while not sweep.finished():
                self.dispatch(sweep)
                if self.live:
                    alone_since = time.monotonic()
                    first_ready = first_ready or alone_since
                else:
                    self.check_pool(alone_since)
                self.collect(sweep)
                sweep.progress.refresh(actors=len(self.live))
        finally:
            sweep.progress.close()
        now = time.monotonic()
        print(f"ray: {len(videos)} videos in {now - started:.1f} s, {now - (first_ready or started):.1f} s after the "
              f"first actor was ready; {self.lost_actors} actors lost so far, {sweep.retried()} videos tried "
              f"again, {len(sweep.failed)} failed", file=sys.stderr)
        return sweep.evaluation(ensemble)

    def dispatch(self, sweep: Sweep) -> None:
        """Hand queued videos to the live actors, up to TASKS_PER_ACTOR each."""
        for actor in self.live:
            while sweep.queue and len(actor.inflight) < TASKS_PER_ACTOR:
                index = sweep.queue.popleft()
                ref = actor.handle.score.remote(str(sweep.videos[index].path), sweep.frames, sweep.cache_folder)
                sweep.inflight[ref] = (actor, index)
                actor.inflight.add(ref)

    def check_pool(self, alone_since: float) -> None:
        """With no live actor: start a replacement, or give up (EngineUnavailable) when none is left or none could
        start for NO_ACTOR_TIMEOUT_S."""
        if not self.starting and not self.spawn():
            raise EngineUnavailable(f"every Ray actor died ({self.lost_actors} lost, no replacement left); "
                                    f"last: {self.last_loss}")
        if time.monotonic() - alone_since > NO_ACTOR_TIMEOUT_S:
            raise EngineUnavailable(f"no Ray actor could start for {NO_ACTOR_TIMEOUT_S:.0f} s: the cluster "
                                    f"has no room for {self.plan.describe()}")

    def collect(self, sweep: Sweep) -> None:
        """Wait up to a second for results and started actors; a video whose actor died or raised is retried."""
        from ray.exceptions import RayActorError

        ready, rest = self.ray.wait([*sweep.inflight, *self.starting], num_returns=1, timeout=1.0)
        if ready and rest:  # and whatever else is done by now
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            if ref in self.starting:
                self.started(ref, self.starting.pop(ref))
                continue
            actor, index = sweep.inflight.pop(ref)
            actor.inflight.discard(ref)
            try:
                result = self.ray.get(ref)
            except RayActorError as error:  # the actor (or its node) died: its videos go elsewhere
                self.lose(actor, error)
                sweep.retry(index, one_line(error))
                continue
            except Exception as error:  # raised on the actor, e.g. the file is missing on that node
                sweep.retry(index, f"on {actor.node}: {one_line(error)}")
                continue
            sweep.nodes[result.pop("node")] += 1
            sweep.done[index] = VideoScores(**result)
            sweep.progress.update(actors=len(self.live), retried=sweep.retried())

    def started(self, ref, actor: Actor) -> None:
        from ray.exceptions import RayActorError

        try:
            info = self.ray.get(ref)
        except RayActorError as error:
            if error.actor_init_failed:  # the same everywhere (a manifest the node cannot read, ...): stop
                raise EngineUnavailable(f"a Ray actor could not load the ensemble: {one_line(error, last=True)}"
                                        ) from None
            self.lost_actors += 1
            self.last_loss = one_line(error)
            self.spawn()
            return
        actor.node, actor.pid = info["node"], info["pid"]
        self.live.append(actor)


@dataclasses.dataclass
class Sweep:
    """One `evaluate` call: the videos at one frame count, the queue, the tries, what is done, failed, in flight."""

    videos: list
    frames: int
    cache_folder: str
    retries: int
    progress: Progress
    queue: deque = dataclasses.field(default_factory=deque)
    attempts: Counter = dataclasses.field(default_factory=Counter)
    done: dict = dataclasses.field(default_factory=dict)       # index -> VideoScores
    failed: dict = dataclasses.field(default_factory=dict)     # index -> why
    nodes: Counter = dataclasses.field(default_factory=Counter)  # videos scored per node
    inflight: dict = dataclasses.field(default_factory=dict)   # ref -> (actor, index)

    def __post_init__(self):
        self.queue.extend(range(len(self.videos)))

    def finished(self) -> bool:
        return len(self.done) + len(self.failed) == len(self.videos)

    def retried(self) -> int:
        return sum(self.attempts.values())

    def retry(self, index: int, reason: str) -> None:
        """Queue a video again at the front, or after `retries` tries give it up with the reason."""
        self.attempts[index] += 1
        if self.attempts[index] > self.retries:
            self.failed[index] = f"failed on the Ray cluster after {self.attempts[index]} tries: {reason}"
            log.warning("ray: %s %s", self.videos[index].path.name, self.failed[index])
            self.progress.update(retried=self.retried())
        else:
            self.queue.appendleft(index)

    def evaluation(self, ensemble) -> Evaluation:
        """The results in the videos' order; a video that failed on every try gets no scores and its reason, like
        the kernel's fallback (not cached, so a rerun retries it)."""
        evaluation = Evaluation(list(self.videos), [], [], [], computed=0, nodes=dict(sorted(self.nodes.items())),
                                failed=len(self.failed))
        for index in range(len(self.videos)):
            if index in self.done:
                evaluation.add(self.done[index])
            else:
                evaluation.add(VideoScores({m.name: {"frame_scores": [], "error": self.failed[index], "seconds": {}}
                                            for m in ensemble.models}, 0, {}))
        return evaluation


class Progress:
    """Videos done / total, rate and ETA for the whole cluster: a tqdm bar on a terminal, else a line a minute."""

    def __init__(self, total: int, description: str):
        self.bar = tqdm(total=total, desc=description, unit="video", disable=None, dynamic_ncols=True)
        self.total = total
        self.plain = self.bar.disable
        self.started = self.last_line = time.monotonic()
        self.count = 0
        self.postfix: dict[str, int] = {}

    def update(self, **postfix: int) -> None:
        self.count += 1
        self.bar.update(1)
        self.refresh(**postfix)

    def refresh(self, **postfix: int) -> None:
        if postfix and {**self.postfix, **postfix} != self.postfix:
            self.postfix.update(postfix)
            self.bar.set_postfix(self.postfix, refresh=False)
        now = time.monotonic()
        if self.plain and now - self.last_line >= PLAIN_PROGRESS_EVERY_S:
            self.last_line = now
            print(tqdm.format_meter(self.count, self.total, now - self.started, unit="video",
                                    postfix=", ".join(f"{k}={v}" for k, v in self.postfix.items()) or None),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def one_line(error: BaseException, last: bool = False) -> str:
    """An exception as one line: its type and its first (or last, for a wrapped traceback) non-empty line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = (lines[-1] if last else lines[0]) if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
