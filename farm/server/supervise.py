"""Long-lived threads that restart when they fail, and a process that exits when one cannot.

A controller whose accepting or maintenance thread died would stay up and serve nothing, which is worse than
a crash: a service manager (systemd's `Restart=`) restarts a process that exits, never one that hangs. So
each such thread runs its loop under `Supervisor.start`: an unexpected exception is logged with its traceback
and the loop starts again after a short pause; a loop that keeps failing (more than `max_failures` times
within `window` seconds) is given up on, and `give_up` (by default: exit the process with status 70,
EX_SOFTWARE) is called.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

log = logging.getLogger(__name__)

EXIT_SOFTWARE = 70      # sysexits.h: an internal software error


def exit_process(name: str) -> None:
    """The default for a loop that cannot go on: the process ends, so whatever started it can restart it."""
    log.critical("the %s thread keeps failing; exiting (status %d) so that the controller is restarted",
                 name, EXIT_SOFTWARE)
    logging.shutdown()
    os._exit(EXIT_SOFTWARE)   # noqa: SLF001 - other threads may hold locks; a clean exit could hang


class Supervisor:
    """Runs loops in daemon threads and restarts them when they raise. `clock`, `sleep` and `give_up` are
    injected so that a test can run a failing loop without waiting or exiting."""

    def __init__(self, max_failures: int = 5, window: float = 60.0, pause: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 give_up: Callable[[str], None] = exit_process):
        self.max_failures, self.window, self.pause = max_failures, window, pause
        self._clock, self._sleep, self._give_up = clock, sleep, give_up
        self.restarts: dict[str, int] = {}

    def start(self, name: str, loop: Callable[[], None]) -> threading.Thread:
        """`loop` in a thread of that name; it ends when `loop` returns."""
        thread = threading.Thread(target=self.run, args=(name, loop), name=name, daemon=True)
        thread.start()
        return thread

    def run(self, name: str, loop: Callable[[], None]) -> None:
        """Call `loop` until it returns; restart it after each failure, give up after too many."""
        failures: list[float] = []
        while True:
            try:
                loop()
                return
            except Exception:  # noqa: BLE001 - any failure of a long-lived loop is logged and survived
                now = self._clock()
                failures = [at for at in failures if now - at < self.window] + [now]
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if len(failures) > self.max_failures:
                    log.exception("the %s thread failed %d times within %.0f s", name, len(failures),
                                  self.window)
                    self._give_up(name)
                    return
                log.exception("the %s thread failed; restarting it", name)
                self._sleep(self.pause * len(failures))
