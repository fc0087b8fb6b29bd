"""A slot's next unit started before its current one ends: POV-Ray spends about 0.6 s of wall time at its
start and a few tenths at its end polling, with almost no CPU, so when the slot's next unit is in hand
(leased ahead, farm/rendering/ahead.py) and what is left of the current one is about `lead` seconds by its
progress, the slot starts the next unit's POV-Ray at once. Its idle start-up then passes while the current
one traces its last rows and shuts down; for those moments a one-thread box runs two processes.

Nothing else changes: each unit keeps its own lease (renewed by the node's heartbeats, stopped by a cancel
or an abort through its own watch) and is delivered as it would have been. At most one unit overlaps the
current one per slot: the slot starts a unit only while it waits for the one before it, and it waits for
that one to end before it looks at the next. Each unit runs in a thread of its own; the slot's thread only
starts them and waits.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable

from farm.faults import FarmError
from farm.kinds import PREVIEW
from farm.rendering.ahead import Ahead, UnitProgress, remaining
from farm.rendering.task import Task

log = logging.getLogger(__name__)


def starts_now(left: float, lead: float, next_in_hand: bool) -> bool:
    """Whether a slot starts its next unit now: it is in hand and the current one has at most `lead` s left."""
    return lead > 0 and next_in_hand and left <= lead


class Unit:
    """One unit at work in a thread of its own: what `work` handed back (or raised), and the moment the slot
    may start the next (`near`, set too when the unit ends)."""

    def __init__(self, task: Task):
        self.task = task
        self.near = threading.Event()
        self.handed: Task | None = None
        self.ended: float | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    @property
    def lease(self) -> str:
        return self.task.lease


class Overlap:
    """A slot's units from one poll on: `next_after(task)` works it (or waits for a unit already started) and
    returns the slot's next, a Task leased ahead or a Unit already started."""

    def __init__(self, work: Callable[["Overlap", Task, float | None], tuple[Task | None, float | None]],
                 ahead: Ahead, lead: float, stopping: threading.Event, release: Callable[[Task], None],
                 ended: float | None, clock: Callable[[], float] = time.monotonic):
        """`work(overlap, task, ended)` works a unit in the calling thread (`ended`: when the slot's previous
        unit ended, None when it overlapped it) and returns what it handed back and when it ended;
        `release(task)` hands a surplus task back; `lead`: seconds before the current unit's end to start the
        next (0: never)."""
        self.work, self.ahead, self.lead, self.stopping, self.release = work, ahead, lead, stopping, release
        self.ended, self.clock = ended, clock
        self._units: dict[str, Unit] = {}
        self._lock = threading.Lock()

    def watching(self, task: Task, log_path: Path, watch: Callable[[], bool],
                 progress: UnitProgress | None = None) -> Callable[[], bool]:
        """`watch`, telling the slot when this unit is near enough its end to start the next one, by `progress`
        (the unit's reader its node shares; one of its own by default)."""
        with self._lock:
            unit = self._units.get(task.lease)
        if unit is None or self.lead <= 0:
            return watch
        started, progress = self.clock(), progress or UnitProgress.of_task(task, log_path)

        def checked() -> bool:
            if not unit.near.is_set() and self.ahead.ready():
                left = remaining(self.clock() - started, progress())
                if starts_now(left, self.lead, True):
                    unit.near.set()
            return watch()
        return checked

    def next_after(self, task: Task | Unit) -> Task | Unit | None:
        """Work `task` to its end (a Unit is already at work) and return the slot's next: a unit started while
        this one ended, a task leased ahead, or None. Of two next tasks (one handed back with a result, one
        leased ahead) one is kept, the other released."""
        unit = task if isinstance(task, Unit) else self._start(task, self.ended)
        unit.near.wait()
        following: Task | Unit | None = None
        if unit.thread.is_alive() and not self.stopping.is_set():
            ready = self.ahead.take()
            if ready is not None and ready.kind != PREVIEW:
                following = self._start(ready, None)
                log.info("job %s strip %s started while strip %s ends", ready.job, ready.strip, unit.task.strip)
            else:
                following = ready
        self._join(unit)
        if following is None:
            following = self.ahead.take()
        if unit.handed is not None and following is not None:
            surplus = unit.handed if isinstance(following, Unit) else following
            self.release(surplus)
            following = following if isinstance(following, Unit) else unit.handed
        else:
            following = unit.handed or following
        if unit.error is not None:      # the slot raises it (after the unit it started, which is current)
            self.close(following)
            if isinstance(following, Task):
                try:
                    self.release(following)
                except FarmError as err:
                    log.info("job %s strip %s not handed back: %s", following.job, following.strip, err)
            raise unit.error
        return following

    def close(self, following: Task | Unit | None) -> None:
        """The slot leaves: a unit it started early finishes (it is a current strip); a task is left alone."""
        if isinstance(following, Unit) and following.thread.is_alive():
            self._join(following)
            if following.error is not None:
                log.warning("job %s strip %s: %s", following.task.job, following.task.strip, following.error)

    def _start(self, task: Task, ended: float | None) -> Unit:
        unit = Unit(task)
        with self._lock:
            self._units[task.lease] = unit

        def run() -> None:
            try:
                unit.handed, unit.ended = self.work(self, task, ended)
            except BaseException as err:      # the slot raises it, as if it had worked the unit itself
                unit.error = err
            finally:
                unit.near.set()
        name = threading.current_thread().name
        unit.thread = threading.Thread(target=run, name=f"{name}-unit", daemon=True)
        unit.thread.start()
        return unit

    def _join(self, unit: Unit) -> None:
        unit.thread.join()
        with self._lock:
            self._units.pop(unit.lease, None)
        if unit.ended is not None:
            self.ended = unit.ended
