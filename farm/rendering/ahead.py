"""One unit asked for ahead per slot: while a slot's POV-Ray nears the end of its unit, the node leases the
slot's next unit, so no round trip to the controller stands between two units.

The unit is leased like any other (the same lease token, renewed with the node's heartbeats at progress 0
until it starts), so a unit leased ahead and never started, its node dead, goes back to the queue when its
lease runs out, and is counted once like any other. It is asked for late, when what is left of the unit
running is about `lead` seconds (plus two of the last round trips) by POV-Ray's progress: a unit leased
early would be cut by the scheduler as if the node were free, and kept from a node that is.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

from farm.faults import FarmError
from farm.rendering import povray
from farm.rendering.task import Task

log = logging.getLogger(__name__)

TAIL_BYTES = 16384      # of POV-Ray's stderr read for its progress: the current frame's lines are in it
_FRAME = re.compile(rb"Rendering frame (\d+) of (\d+)")


def unit_progress(log_path: Path, frames: int) -> float | None:
    """How far POV-Ray is through a unit of `frames` frames (0..1), from its stderr; None before it traces."""
    fraction = povray.progress_fraction(log_path)
    if fraction is None or frames <= 1:
        return fraction
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            found = _FRAME.findall(handle.read())
    except OSError:
        return None
    if not found:
        return None
    index, count = (int(n) for n in found[-1])
    return (index - 1 + fraction) / max(1, count)


RESTARTED = 0.2     # a reading this much below the last: POV-Ray began its next pass over the rows


class UnitProgress:
    """How far a unit is (0..1), read from POV-Ray's stderr on each call. POV-Ray counts its "Rendered N of
    M pixels" again from 0 in each pass over the rows: a strip loading its frame's radiosity cache makes a
    pretrace pass before the final one (farm.radiosity), whose 99% is half the unit, not the whole (read as
    the whole, a balcony strip one second in asked for the slot's next unit 5 s ahead, and took the frame's
    last rows from a box that was free before it). Each reading far below the last starts the next pass;
    `passes` share the unit evenly. A unit of a sheared frame (farm.shear) renders `share` of the frame's
    pixels, which POV-Ray counts against the whole frame's."""

    def __init__(self, log_path: Path, frames: int = 1, passes: int = 1, share: float = 1.0):
        self.log_path, self.frames, self.passes, self.share = log_path, frames, max(1, passes), share
        self._pass, self._last = 0, 0.0

    @classmethod
    def of_task(cls, task: Task, log_path: Path) -> UnitProgress:
        share = (task.row_end - task.row_start) / task.height if task.sheared_part else 1.0
        return cls(log_path, task.frame_last - task.frame + 1, 2 if task.radiosity_cache else 1, share)

    def at(self, _log_path: Path) -> float | None:
        """The reading, as a heartbeat's progress reader is asked (farm.rendering.heartbeats.LeaseWatch)."""
        return self()

    def __call__(self) -> float | None:
        fraction = unit_progress(self.log_path, self.frames)
        if fraction is not None and self.share < 1.0:
            fraction = min(1.0, fraction / self.share)
        if fraction is None or self.passes == 1:
            return fraction
        if fraction < self._last - RESTARTED:
            self._pass = min(self._pass + 1, self.passes - 1)
        self._last = fraction
        return (self._pass + fraction) / self.passes


def remaining(elapsed: float, progress: float | None) -> float:
    """Seconds a unit `progress` of the way through after `elapsed` seconds has left, at its pace so far
    (start-up and parse count in that pace, so this errs long: the next unit is asked for rather late)."""
    if progress is None or progress <= 0:
        return float("inf")
    return elapsed * (1.0 - min(progress, 1.0)) / progress


class Ahead:
    """A slot's next unit, asked for once per unit while the current one renders (`watching`), handed over
    when it ends (`take`)."""

    def __init__(self, poll: Callable[[], dict[str, Any] | None], hold: Callable[[str], None], lead: float,
                 stopping: threading.Event, clock: Callable[[], float] = time.monotonic):
        """`poll()` leases a unit without waiting (its wire struct, or None); `hold(lease)` has the node's
        heartbeats renew a lease not yet started; `lead`: seconds before the unit's end to ask (0: never)."""
        self.poll, self.hold, self.lead, self.stopping, self.clock = poll, hold, lead, stopping, clock
        self.round_trip = 0.0
        self._thread: threading.Thread | None = None
        self._task: Task | None = None

    def watching(self, task: Task, log_path: Path, watch: Callable[[], bool],
                 progress: UnitProgress | None = None) -> Callable[[], bool]:
        """`watch` (what the runner calls while POV-Ray works), asking for the next unit when this one nears
        its end, by `progress` (the unit's reader its node shares; one of its own by default)."""
        if self.lead <= 0:
            return watch
        started, progress = self.clock(), progress or UnitProgress.of_task(task, log_path)
        asked = threading.Event()    # once per unit: the next may be taken (and started) before this one ends

        def checked() -> bool:
            if self._thread is None and not asked.is_set() and not self.stopping.is_set():
                left = remaining(self.clock() - started, progress())
                if left <= self.lead + 2 * self.round_trip:
                    asked.set()
                    self._thread = threading.Thread(target=self._ask, name=f"{threading.current_thread().name}"
                                                    "-ahead", daemon=True)
                    self._thread.start()
            return watch()
        return checked

    def _ask(self) -> None:
        sent = self.clock()
        try:
            reply = self.poll()
        except FarmError as err:   # the slot polls as usual once its unit is done
            log.info("asking for the next unit ahead failed: %s", err)
            return
        self.round_trip = self.clock() - sent
        if reply:
            try:
                task = Task.from_wire(reply)
            except FarmError as err:
                log.warning("the unit leased ahead is malformed: %s", err)
                return
            self.hold(task.lease)
            self._task = task
            log.info("job %s strip %s leased ahead (%.2f s round trip)", task.job, task.strip, self.round_trip)

    def ready(self) -> bool:
        """Whether a unit leased ahead is in hand (`take` returns it at once)."""
        return self._task is not None

    def take(self) -> Task | None:
        """The unit leased ahead (waiting for the request in flight), or None; ready to ask again."""
        if self._thread is not None:
            self._thread.join()
        task, self._task, self._thread = self._task, None, None
        return task
