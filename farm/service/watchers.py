"""Which jobs viewers are watching now: the scheduler cuts finer and previews are rendered only for them.

A viewer watches through the feed stream (watched for as long as the stream is open) or through
`viewer.watch` long polls (watched for a while after each call: the next call comes within a poll's
timeout). Job 0 stands for "the newest job", which a viewer that follows the farm watches.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

from farm.wire import LONG_POLL_CAP

NEWEST = 0
# Seconds a viewer.watch call counts: longer than a long poll is held, so a viewer that polls again as soon
# as its poll returns stays watching.
POLL_MEMORY = LONG_POLL_CAP + 15.0


class Watchers:
    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self._lock = threading.Lock()
        self._streams: dict[int, int] = {}     # job (or NEWEST) -> open streams
        self._polled: dict[int, float] = {}    # job (or NEWEST) -> when a long poll last asked

    def polled(self, job_id: int) -> None:
        """A viewer.watch call for `job_id` (NEWEST: the newest job)."""
        with self._lock:
            self._polled[job_id] = self._clock()

    @contextlib.contextmanager
    def streaming(self, job_id: int) -> Iterator[None]:
        """A feed stream of `job_id` (NEWEST: the newest job), open for the `with` block."""
        with self._lock:
            self._streams[job_id] = self._streams.get(job_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._streams[job_id] -= 1
                if not self._streams[job_id]:
                    del self._streams[job_id]

    def watched(self, job_id: int, newest: Callable[[], int]) -> bool:
        """Whether a viewer watches `job_id`, by its id or by following the newest job (`newest()` is
        asked only when some viewer follows)."""
        with self._lock:
            if self._watching(job_id):
                return True
            if not self._watching(NEWEST):
                return False
        return newest() == job_id

    def _watching(self, key: int) -> bool:
        if self._streams.get(key):
            return True
        asked = self._polled.get(key)
        if asked is None:
            return False
        if self._clock() - asked > POLL_MEMORY:
            del self._polled[key]
            return False
        return True
