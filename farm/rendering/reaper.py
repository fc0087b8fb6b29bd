"""POV-Ray processes that outlive their unit, kept until they end.

A unit is rendered when its image is complete (farm/rendering/finished.py), a few tenths of a second before
its POV-Ray exits: its rows go up and its slot moves on while the process winds down. The reaper keeps those
processes: its one thread waits for them within the unit's own time limit, stops the process group of one
that overruns it (SIGTERM, then SIGKILL), logs an exit that is not 0 (WARNING, with the job and unit), and only
then runs what waited for the process to end (the unit's folder removed: `after`). When the node stops,
`finish` waits for them; once the node aborts, they are stopped at once.

The same thread starts those processes (`popen`): on Linux a child started with a parent-death signal gets it
when the *thread* that started it ends, and a unit's thread ends with its unit, before its POV-Ray does.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from farm.hostos import HOST, Host
from farm.rendering.povray import signal_name, stop_group

log = logging.getLogger(__name__)

REAP_EVERY = 0.05   # seconds between two looks at the kept processes


@dataclasses.dataclass
class Kept:
    process: subprocess.Popen
    deadline: float | None      # when its unit's time limit runs out (clock), None for none
    label: str                  # "job J strip S", for the log
    folder: Path                # the unit's folder, whose removal waits for the process
    since: float                # when its work was complete (clock)
    stopping: bool = False


class Reaper:
    def __init__(self, aborting: threading.Event | None = None, host: Host = HOST,
                 clock: Callable[[], float] = time.monotonic):
        self.aborting = aborting or threading.Event()
        self.host, self.clock = host, clock
        self._changed = threading.Condition()
        self._calls: list[Callable[[], None]] = []
        self._kept: list[Kept] = []
        self._after: dict[Path, list[Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        """subprocess.Popen(*args, **kwargs), called in the reaper's thread (which outlives every unit)."""
        future: Future = Future()

        def start() -> None:
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except Exception as err:    # raised in the caller's thread, as Popen's own
                future.set_exception(err)
        with self._changed:
            self._calls.append(start)
            self._changed.notify_all()
        self._running()
        return future.result()

    def adopt(self, process: subprocess.Popen, deadline: float | None, label: str, folder: Path) -> None:
        """Keep `process` (its work done) until it ends; `deadline`: when to stop it (clock), None for never."""
        with self._changed:
            self._kept.append(Kept(process, deadline, label, folder, self.clock()))
            self._changed.notify_all()
        self._running()

    def after(self, folder: Path, action: Callable[[], None]) -> None:
        """Run `action` once no kept process works in `folder`: now, or when the last one there has ended."""
        with self._changed:
            if any(kept.folder == folder for kept in self._kept):
                self._after.setdefault(folder, []).append(action)
                return
        action()

    def lingering(self) -> int:
        """How many processes are kept now."""
        with self._changed:
            return len(self._kept)

    def finish(self, timeout: float | None = None) -> bool:
        """Wait until every kept process has ended (stopped, once `aborting` is set); False on a timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._kept, timeout)

    def _running(self) -> None:
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._calls or self._kept)
                calls, self._calls = self._calls, []
            for call in calls:
                call()
            self._reap()
            with self._changed:
                if not self._calls and self._kept:
                    self._changed.wait(REAP_EVERY)

    def _reap(self) -> None:
        with self._changed:
            kept = list(self._kept)
        for item in kept:
            code = item.process.poll()
            if code is not None:
                self._ended(item, code)
            elif not item.stopping and (self.aborting.is_set() or
                                        (item.deadline is not None and self.clock() > item.deadline)):
                item.stopping = True    # the group stopped beside this thread, which goes on reaping
                if not self.aborting.is_set():
                    log.warning("%s: POV-Ray did not exit within the unit's time limit after its image was "
                                "complete; stopping it", item.label)
                threading.Thread(target=stop_group, args=(item.process, self.host), name="reaper-stop",
                                 daemon=True).start()

    def _ended(self, item: Kept, code: int) -> None:
        """Log how a kept process ended, run what waited for it, and only then let it go (so `finish` returns
        with its folder removed)."""
        self._log_end(item, code)
        while True:
            with self._changed:
                last = not any(kept.folder == item.folder for kept in self._kept if kept is not item)
                actions = self._after.pop(item.folder, []) if last else []
                if not actions:
                    self._kept.remove(item)
                    self._changed.notify_all()
                    return
            for action in actions:
                try:
                    action()
                except Exception:
                    log.exception("%s: cleaning up after POV-Ray failed", item.label)

    def _log_end(self, item: Kept, code: int) -> None:
        seconds = self.clock() - item.since
        if code == 0:
            log.info("%s: POV-Ray exited %.2f s after its image was complete", item.label, seconds)
        elif item.stopping and self.aborting.is_set():
            log.info("%s: POV-Ray stopped with the node, after its image was complete", item.label)
        else:
            how = f"by signal {-code} {signal_name(-code)}" if code < 0 else f"with code {code}"
            log.warning("%s: POV-Ray exited %s %.2f s after its image was complete (its unit was taken as "
                        "rendered)", item.label, how, seconds)
