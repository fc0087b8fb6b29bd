"""Riding out trouble with the controller: one policy for every client that waits on it.

- `grow`: the next of a series of delays that double from a first one up to a ceiling (with jitter, so
  many nodes do not call in step). Nodes poll and retry with it; clients and viewers retry with it.
- `Outage`: when an outage began, said once when it begins and once when it ends, and whether it has
  outlasted the patience (`Config.patience`).
- `Patience`: runs a call, retrying it while the controller cannot be reached, under an `Outage`; and
  watches a job that no live node can render, for as long as the same patience.

All of it is pure: the clock, the sleep and the random numbers are injected, so tests step time.
A controller that has not answered this client yet is not retried: a wrong URL, or a controller that is
not running, is said at once. Faults that are answers (no such job, a forbidden call) never are.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from farm.faults import Code, FarmError

RETRY_FIRST = 0.5        # seconds: the first wait before calling an unreachable controller again
RETRY_CEILING = 10.0     # seconds: the longest wait between attempts while the controller is in trouble

T = TypeVar("T")


def grow(delay: float, first: float, ceiling: float, rng: Callable[[], float] | None = None) -> float:
    """The delay after `delay` (0 for the first): doubled, at least `first`, at most `ceiling`; with `rng`,
    within +-25% of that, so that many callers spread out."""
    base = min(max(delay * 2, first), ceiling)
    return base if rng is None else base * (0.75 + 0.5 * rng())


def duration(seconds: float) -> str:
    """Seconds as a person says them: "40 s", "15 min", "1 h 30 min"."""
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours and minutes else f"{hours} h" if hours else f"{minutes} min"


class Outage:
    """A client's outages of its controller: each said once as it begins (`lost`) and once as it ends
    (`back`). `limit` seconds (0: none) is how long one may last before the client gives up."""

    def __init__(self, url: str, limit: float, say: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic):
        self.url, self.limit, self._say, self.clock = url, limit, say, clock
        self._since: float | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def lost(self, reason: str) -> None:
        if self._since is None:
            self._since = self.clock()
            reason = reason.removeprefix(f"cannot reach the controller at {self.url}: ")
            bound = f"for up to {duration(self.limit)}" if self.limit else "until it answers"
            self._say(f"lost the controller at {self.url} ({reason}); retrying {bound}")

    def back(self) -> None:
        if self._since is not None:
            self._say(f"reconnected to the controller at {self.url} after {duration(self.clock() - self._since)}")
            self._since = None

    def left(self) -> float | None:
        """Seconds the current outage may still last (None: no limit or no outage; 0: over the limit)."""
        if self._since is None or not self.limit:
            return None
        return max(0.0, self.limit - (self.clock() - self._since))


class Patience:
    """Calls that ride out an unreachable controller, and a job's wait for a node that can render it.

    `call(attempt)` returns `attempt()`; while it raises UNREACHABLE (after the controller answered this
    client once, see `reached`) it is tried again after growing delays, for up to `outage.limit` seconds.
    `sleep(seconds)` waits; a true return (a stop was asked) ends the retrying with the last fault."""

    def __init__(self, outage: Outage, sleep: Callable[[float], Any] = time.sleep,
                 rng: Callable[[], float] | None = None, reached: bool = False,
                 first: float = RETRY_FIRST, ceiling: float = RETRY_CEILING):
        self.outage, self._sleep, self._rng = outage, sleep, rng
        self.reached = reached
        self._first, self._ceiling = first, ceiling
        self._blocked = ""                     # the job's reason, as last seen
        self._blocked_since = 0.0

    def call(self, attempt: Callable[[], T]) -> T:
        delay = 0.0
        while True:
            try:
                result = attempt()
            except FarmError as err:
                if err.code is not Code.UNREACHABLE or not self.reached:
                    raise
                self.outage.lost(str(err))
                left = self.outage.left()
                if left == 0.0:
                    raise FarmError(Code.UNREACHABLE, f"{err}; gave up after {duration(self.outage.limit)} of "
                                                      f"retrying (setting: patience)") from None
                delay = grow(delay, self._first, self._ceiling, self._rng)
                if self._sleep(delay if left is None else min(delay, left)):
                    raise
                continue
            self.reached = True
            self.outage.back()
            return result

    def blocked(self, reason: str) -> bool:
        """Note a job's `blocked` reason ("" when a live node can take it) each time its status is seen.
        True when it differs from the last one seen: a reason to say, or that the job can go on."""
        if reason == self._blocked:
            return False
        if not self._blocked:
            self._blocked_since = self.outage.clock()
        self._blocked = reason
        return True

    def blocked_too_long(self) -> bool:
        """Whether the job has been blocked (for whatever reasons) for the whole patience."""
        limit = self.outage.limit
        return bool(self._blocked) and bool(limit) and self.outage.clock() - self._blocked_since >= limit


class Patient:
    """A client whose calls ride out outages under one `Patience`. Only for calls that may safely be sent
    twice (reads, waits, fetches): a submit whose reply was lost may have queued its job."""

    def __init__(self, client: Any, patience: Patience):
        self.client, self.patience = client, patience

    @property
    def url(self) -> str:
        return self.client.url

    def call(self, method: str, *args: Any) -> Any:
        return self.patience.call(lambda: self.client.call(method, *args))

    def close(self) -> None:
        self.client.close()
