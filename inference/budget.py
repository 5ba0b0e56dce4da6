"""Keep a run inside its time limit: measure the rate, step down the work per video, skip what cannot finish."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from inference.pipeline import Job, VideoResult

KAGGLE_TIME_LIMIT = 9 * 3600
# Kaggle's own start-up before the process, a video in flight at the deadline and writing the file come out of the
# same 9 hours (the budget counts from the process's start: the interpreter, imports and install are in it).
KAGGLE_SAFETY_MARGIN = 30 * 60

log = logging.getLogger(__name__)


def budget_levels(frames: int, optional: frozenset[str]) -> list[tuple[int, frozenset[str]]]:
    """(frames, models dropped) per level, from the configured run to the cheapest allowed."""
    levels = [(frames, frozenset())]
    for fewer in (frames // 2, frames // 4):
        fewer = max(fewer, min(frames, 8))
        if fewer < levels[-1][0]:
            levels.append((fewer, frozenset()))
    if optional:
        levels.append((levels[-1][0], optional))
    return levels


class TimeBudget:
    """Keeps the run inside `seconds` (from `started`, on `clock`: kernel.py gives the process's start, as Kaggle
    counts) by projecting its finish from the measured rate.

    When the projection overshoots it steps down one level, in this order, and never back up: half the frames,
    a quarter of the frames (at least 8), then also without the models the manifest marks optional. A video
    whose turn comes when the videos in flight plus it would not finish in time gets the fallback unread.
    """

    def __init__(self, seconds: float | None, started: float, total: int, frames: int, models: list[str],
                 optional: list[str], clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.started, self.total = seconds, started, total
        self.clock = clock
        self.scoring_started = clock()  # the first batch's rate counts from here: start-up is no video's cost
        self.models = frozenset(models)
        self.levels = budget_levels(frames, frozenset(optional))
        self.level = 0
        self.planned = self.done = 0
        self.rate: float | None = None  # seconds per video at the current level, between completions
        self.first_rate: float | None = None  # a pessimistic stand-in (warm-up included) until `rate` is known
        self._level_marks: list[tuple[float, int]] = []  # (time, videos) per finished batch

    @property
    def deadline(self) -> float:
        return self.started + self.seconds

    def plan(self, path: Path) -> Job:
        """The job for the next video at the current level, or a skipped job past the point of no return."""
        frames, dropped = self.levels[self.level]
        job = Job(path, frames, self.models - dropped if dropped else None, budget_level=self.level)
        in_flight = self.planned - self.done
        self.planned += 1
        rate = self.rate or self.first_rate
        if self.seconds is not None and rate is not None:
            if self.clock() + (in_flight + 1) * rate > self.deadline:
                job.skip = f"time budget of {self.seconds:.0f} s exhausted"
        return job

    def record(self, results: list[VideoResult]) -> None:
        """A batch of videos finished: update the rate and step down a level when the finish would be late.

        The rate is the time between batches over the videos they held, counting only videos planned at the
        current level; the first such batch only starts the clock (it holds the warm-up, or the switch).
        """
        now = self.clock()
        self.done += len(results)
        measured = sum(r.budget_level == self.level and not r.skipped for r in results)
        if not measured:
            return
        self._level_marks.append((now, measured))
        if len(self._level_marks) < 2:
            if self.rate is None:  # until measured, the first batch's time with its warm-up bounds the rate
                self.first_rate = (now - self.scoring_started) / measured
            return
        start = self._level_marks[0][0]
        self.rate = (now - start) / sum(count for _, count in self._level_marks[1:])
        if self.seconds is None or self.level + 1 >= len(self.levels):
            return
        projected = now + (self.total - self.done) * self.rate
        if projected > self.deadline:
            self.level += 1
            frames, dropped = self.levels[self.level]
            log.warning("projected finish %.0f s after the start is past the budget of %.0f s: now %d frames%s",
                        projected - self.started, self.seconds, frames,
                        f" without {', '.join(sorted(dropped))}" if dropped else "")
            self._level_marks = []
