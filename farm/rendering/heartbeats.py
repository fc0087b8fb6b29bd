"""A node's heartbeats: its leases renewed, its slots' progress reported, a withdrawn lease's POV-Ray stopped.

Three parts, each built from what it uses: `HeartbeatCall` sends one `nodes.heartbeat`, `Beats` makes one
request per interval carry every slot's lease and the results waiting to go up, and a `LeaseWatch` is what
the runner calls while POV-Ray works on one lease.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any, Callable

from farm.rendering import povray
from farm.client import Client
from farm.faults import FarmError
from farm.features import HEARTBEAT_STATS, Features

log = logging.getLogger(__name__)


class HeartbeatCall:
    """nodes.heartbeat, with the node's measured upload rate when the controller takes one (its features) and
    the rate differs by more than a tenth from the one last reported (the controller keeps that)."""

    def __init__(self, client: Client, node_id: Callable[[], str | None], features: Callable[[], Features]):
        self.client, self.node_id, self.features = client, node_id, features
        self._meter = getattr(client, "uploads", None)   # a client that measures no uploads reports no rate
        self._reported_rate = 0.0                        # the upload rate the controller last heard

    def __call__(self, progress: dict[str, float]) -> dict[str, Any]:
        measured = self._meter is not None and HEARTBEAT_STATS in self.features()
        rate = self._meter.bytes_per_second() if measured else 0.0
        changed = rate > 0 and abs(rate - self._reported_rate) > 0.1 * self._reported_rate
        stats = [{"upload_bps": float(round(rate))}] if changed else []
        reply = self.client.call("nodes.heartbeat", self.node_id(), progress, *stats)
        if stats:
            self._reported_rate = rate
        return reply


class Beats:
    """One heartbeat request per interval for the whole node: every slot's lease and progress, and the
    results waiting to go up, in one call. On a slow uplink each request costs, headers and all, about
    as much as a kilobyte of pixels."""

    def __init__(self, send: Callable[[dict[str, float]], dict[str, Any]], clock: Callable[[], float],
                 interval: Callable[[], float], waiting: Callable[[], list[str]],
                 renewed: Callable[[list[str], list[str]], None]):
        """`waiting`: the leases of results waiting to go up; `renewed(waiting, stop)` hears what became of them."""
        self.send, self.clock, self.interval, self.waiting, self.renewed = send, clock, interval, waiting, renewed
        self._lock = threading.Lock()
        self._progress: dict[str, float] = {}
        self._stop: set[str] = set()
        self._last = -math.inf

    def report(self, lease: str, progress: float) -> bool:
        """Note a slot's progress, send the node's heartbeat when one is due; True when `lease` must stop."""
        now = self.clock()
        with self._lock:
            self._progress[lease] = progress
            due = now - self._last >= self.interval()
            if due:
                self._last = now
                waiting = self.waiting()
                beat = {**{pending: 1.0 for pending in waiting}, **self._progress}
        if due:
            try:
                reply = self.send(beat)
            except FarmError as err:
                # Keep rendering: the result may still be accepted when the controller returns.
                log.warning("heartbeat failed: %s", err)
                return False
            stop = reply.get("stop", [])
            self.renewed(waiting, stop)
            with self._lock:
                self._stop = set(stop)
        with self._lock:
            return lease in self._stop

    def hold(self, lease: str) -> None:
        """A lease the node holds but has not started (leased ahead): renewed at progress 0 until it starts."""
        with self._lock:
            self._progress.setdefault(lease, 0.0)

    def forget(self, lease: str) -> None:
        """The slot is done with this lease (rendered, failed or dropped)."""
        with self._lock:
            self._progress.pop(lease, None)


REPORTS_PER_BEAT = 4     # a lease's progress is noted this often per heartbeat interval


class LeaseWatch:
    """Called by the runner while POV-Ray works on one lease: notes its progress several times per heartbeat
    interval (the heartbeat goes when `Beats` says one is due) and says when to stop (the node is aborting, or
    the controller withdrew the lease). Noting it only once per interval let the node's heartbeat wait almost
    two intervals when this watch's rhythm trailed the last heartbeat's (another unit's, just ended): with
    3-second leases and 2-second heartbeats a lease ran out under a unit at work."""

    def __init__(self, lease: str, log_path: Path, report: Callable[[str, float], bool], clock: Callable[[], float],
                 interval: Callable[[], float], aborting: threading.Event,
                 when_tracing: Callable[[Path], None] | None = None,
                 progress: Callable[[Path], float | None] | None = None):
        self.lease, self.log_path, self.report = lease, log_path, report
        self.clock, self.interval, self.aborting, self.when_tracing = clock, interval, aborting, when_tracing
        self.progress = progress or povray.progress_fraction   # how far the unit is, from its log
        self.last = clock()

    def __call__(self) -> bool:
        if self.aborting.is_set():
            return True
        if self.when_tracing is not None:
            self.when_tracing(self.log_path)
        now = self.clock()
        if now - self.last < self.interval() / REPORTS_PER_BEAT:
            return False
        self.last = now
        progress = round(self.progress(self.log_path) or 0.0, 3)   # "0.421", not 17 digits
        if self.report(self.lease, progress):
            log.info("the controller withdrew lease %s (job canceled or failed); stopping POV-Ray", self.lease)
            return True
        return False
