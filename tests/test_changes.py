"""Versions that long polls wait on: a change wakes only the waiters it concerns."""

from __future__ import annotations

import threading
import time

from farm.service.changes import Changes
from harness import wait_until


class Waiter:
    """A thread waiting on one job's version, counting how often it was woken to look."""

    def __init__(self, changes: Changes, job_id: int, timeout: float = 10.0):
        self.looks, self.left = 0, threading.Event()
        seen = changes.version(job_id)

        def gone() -> bool:
            self.looks += 1
            return self.left.is_set()

        self.thread = threading.Thread(target=changes.wait, args=(job_id, seen, timeout, gone))
        self.thread.start()
        # Waiting: it looked once at the start.
        wait_until(lambda: self.looks, timeout=5, interval=0.001, what="the waiter to look once")

    def returned(self, within: float = 5.0) -> bool:
        self.thread.join(within)
        return not self.thread.is_alive()


def test_a_jobs_changes_wake_its_own_waiters_only():
    changes = Changes()
    other, mine = Waiter(changes, 1), Waiter(changes, 2)
    for _ in range(200):
        changes.bump(1)
    assert other.returned()
    time.sleep(0.05)      # long enough for a wrong wake-up to show
    assert mine.looks == 1 and mine.thread.is_alive()      # never woken by job 1's changes
    changes.bump(2)
    assert mine.returned()


def test_a_farm_wide_change_and_a_departure_wake_every_waiter():
    changes = Changes()
    waiters = [Waiter(changes, job) for job in (1, 2, 3)]
    changes.bump()
    assert all(waiter.returned() for waiter in waiters)
    left = Waiter(changes, 4)
    left.left.set()
    changes.wake()
    assert left.returned()


def test_many_waiters_of_one_job_and_a_timeout():
    changes = Changes()
    waiters = [Waiter(changes, 7) for _ in range(5)]
    changes.bump(7)
    assert all(waiter.returned() for waiter in waiters)
    started = time.monotonic()
    changes.wait(7, changes.version(7), 0.05)       # nothing changes: back after the timeout
    assert time.monotonic() - started >= 0.05
    assert not changes._waiting                       # nobody waits: no condition is kept
