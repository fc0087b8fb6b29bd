"""What long polls wait on: version counters that wake only the waiters a change concerns."""

from __future__ import annotations

import threading
from typing import Callable


class Changes:
    """A version per job, and one for farm-wide changes (a new job, expired leases).

    Viewers wait on their job's version, so only those whose job (or the farm) changed wake up and
    query; nodes wait on the farm-wide version of an instance of their own for queued work. Each job's
    waiters have a condition of their own (on one shared lock): a job storing hundreds of strips a second
    does not wake the viewers of another job hundreds of times a second to find nothing."""

    def __init__(self):
        self._lock = threading.RLock()
        self._farm = 0
        self._jobs: dict[int, int] = {}
        self._waiting: dict[int, list] = {}      # job -> [its condition, how many wait on it]

    def bump(self, job_id: int | None = None) -> None:
        with self._lock:
            if job_id is None:
                self._farm += 1
                self._notify(self._waiting)
            else:
                self._jobs[job_id] = self._jobs.get(job_id, 0) + 1
                if job_id in self._waiting:
                    self._notify([job_id])

    def version(self, job_id: int = 0) -> tuple[int, int]:
        with self._lock:
            return self._farm, self._jobs.get(job_id, 0)

    def wait(self, job_id: int, seen: tuple[int, int], timeout: float,
             gone: Callable[[], bool] = lambda: False) -> None:
        """Return when the job's (or the farm's) version differs from `seen`, when `gone()` says the waiting
        client left (call `wake` then), or after `timeout` seconds."""
        with self._lock:
            entry = self._waiting.setdefault(job_id, [threading.Condition(self._lock), 0])
            entry[1] += 1
            try:
                entry[0].wait_for(lambda: gone() or (self._farm, self._jobs.get(job_id, 0)) != seen, timeout)
            finally:
                entry[1] -= 1
                if not entry[1]:
                    del self._waiting[job_id]

    def wake(self) -> None:
        """Have every waiter look again (its client may have left)."""
        with self._lock:
            self._notify(self._waiting)

    def _notify(self, jobs) -> None:
        for job_id in jobs:
            self._waiting[job_id][0].notify_all()
