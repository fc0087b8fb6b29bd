"""What long polls wait on: version counters that wake only the waiters a change concerns."""

from __future__ import annotations

import threading
from typing import Callable


class Changes:
    """A version per job, and one for farm-wide changes (a new job, expired leases).

    Viewers wait on their job's version, so only those whose job (or the farm) changed wake up and
    query; nodes wait on the farm-wide version of an instance of their own for queued work."""

    def __init__(self):
        self._condition = threading.Condition()
        self._farm = 0
        self._jobs: dict[int, int] = {}

    def bump(self, job_id: int | None = None) -> None:
        with self._condition:
            if job_id is None:
                self._farm += 1
            else:
                self._jobs[job_id] = self._jobs.get(job_id, 0) + 1
            self._condition.notify_all()

    def version(self, job_id: int = 0) -> tuple[int, int]:
        with self._condition:
            return self._farm, self._jobs.get(job_id, 0)

    def wait(self, job_id: int, seen: tuple[int, int], timeout: float,
             gone: Callable[[], bool] = lambda: False) -> None:
        """Return when the job's (or the farm's) version differs from `seen`, when `gone()` says the waiting
        client left (call `wake` then), or after `timeout` seconds."""
        with self._condition:
            self._condition.wait_for(lambda: gone() or (self._farm, self._jobs.get(job_id, 0)) != seen, timeout)

    def wake(self) -> None:
        """Have every waiter look again (its client may have left)."""
        with self._condition:
            self._condition.notify_all()
