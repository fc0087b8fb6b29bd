"""A node's results on their way to the controller: sent the way the controller takes them, retried while it
cannot store them, and uploaded beside the slots' renders so a slow uplink never holds a slot idle."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from farm.client import Client
from farm.faults import Code, FarmError
from farm.features import (BZ2_ROWS, COMPLETE_AND_POLL, FILTERED_ROWS, SCENE_FILES, UNIT_COSTS, UNIT_LOGS,
                           UNIT_OVERHEAD, Features)
from farm.retry import RETRY_CEILING
from farm.rendering.task import RenderOutcome
from farm.rows import ENCODINGS, FILTERED, FILTERED_BZ2, ZLIB

log = logging.getLogger(__name__)

# Faults a delivery is retried on (the result was not stored); others mean it is no longer wanted.
RETRY_DELIVERY = frozenset({Code.UNREACHABLE, Code.STORAGE, Code.INTERNAL})


def rows_encoding(features: Features, uplink_bps: float, slow_bps: float) -> str:
    """How a node encodes a unit's rows: PNG's row filters (a PNG's bytes on the wire, for 3-4x the CPU of
    plain zlib's 1.4x) where the bytes may cost, when the controller takes them and the uplink is not known to
    be fast (`uplink_bps`: the slowest of its last three large requests, 0 before one: the bytes of a link
    just become slow cost more than the filters' CPU on a busy one), packed by bz2 where both ends have it
    (farm.rows.FILTERED_BZ2: a sheared frame's rows in a PNG's bytes, not a tenth more). On a fast uplink the
    CPU counts more: filtering a watched animation's frames held its live blocks back on a busy box."""
    if uplink_bps >= slow_bps:
        return ZLIB
    for encoding in (FILTERED_BZ2, FILTERED):
        if encoding in ENCODINGS and takes(features, encoding):
            return encoding
    return ZLIB


def takes(features: Features, encoding: str) -> bool:
    """Whether a controller with `features` takes rows in `encoding`."""
    return {FILTERED: FILTERED_ROWS in features, FILTERED_BZ2: BZ2_ROWS in features}.get(encoding, encoding == ZLIB)


class Delivery:
    """Results going to the controller: retried while it cannot store them, and sent the way its features
    say it takes them (nodes.complete_and_poll or nodes.complete; filtered rows or plain zlib)."""

    def __init__(self, client: Client, node_id: Callable[[], str | None], features: Callable[[], Features],
                 stopping: threading.Event, aborting: threading.Event, backoff: Callable[[float, float], float]):
        """`backoff(delay, ceiling)`: the next pause before a retry."""
        self.client, self.node_id, self.features = client, node_id, features
        self.stopping, self.aborting, self.backoff = stopping, aborting, backoff
        self.strips_done = 0              # strips the controller took

    def call(self, method: str, lease: str, *args: Any) -> Any:
        """Send a result, retrying while the controller is unreachable. Returns the reply, or None if it
        was refused."""
        delay = 0.0
        while True:
            try:
                return self.client.call(method, self.node_id(), lease, *args)
            except FarmError as err:
                if err.code not in RETRY_DELIVERY:
                    log.warning("%s for lease %s refused: %s", method, lease, err)
                    return None
                if self.aborting.is_set():
                    # The node is being stopped: the lease runs out at the controller and the unit goes
                    # to another node, so nothing is lost and nothing needs a person's attention.
                    log.warning("stopping: gave up on %s for lease %s: %s", method, lease, err)
                    return None
                # Not stored (the controller is unreachable, or its disk is full...): keep the result
                # until it is, or until the lease has gone elsewhere (then the controller says so).
                delay = self.backoff(delay, RETRY_CEILING)
                log.warning("%s for lease %s: %s; retrying delivery in %.1f s", method, lease, err, delay)
                self.aborting.wait(delay)

    def complete(self, lease: str, outcome: RenderOutcome, take_next: bool = True) -> dict[str, Any] | None:
        """Deliver a unit's rows and, unless stopping, take the next task in the same round trip
        (nodes.complete_and_poll: half the requests per strip, and the slot never waits for a poll between
        strips). Returns that task's wire struct, or None."""
        features = self.features()
        if outcome.files and SCENE_FILES in features:      # while the lease is current: before the rows
            self.call("nodes.scene_files", lease, outcome.files)
        rows, encoding = outcome.rows, outcome.encoding
        if not takes(features, encoding) and outcome.as_zlib is not None:
            rows, encoding = outcome.as_zlib(), ZLIB     # rendered before the node learnt it
        payload = self._payload(rows, encoding, outcome)
        if take_next and COMPLETE_AND_POLL in features and not self.stopping.is_set():
            reply = self.call("nodes.complete_and_poll", lease, *payload)
            if reply is not None:
                self.strips_done += 1
            return reply or None
        if self.call("nodes.complete", lease, *payload) is not None:
            self.strips_done += 1
        return None

    def _payload(self, rows: bytes, encoding: str, outcome: RenderOutcome) -> tuple:
        """nodes.complete's arguments after the lease: the optional ones up to the last this result has, a
        placeholder in the place of any before it that it lacks (an empty struct for the log, an overhead of 0:
        a pre-pass has none)."""
        features = self.features()
        optional = [encoding if encoding != ZLIB else None,
                    outcome.log.to_wire() if self._sends_log(outcome) else None,
                    # units of the job are sized by it
                    round(outcome.overhead, 3) if UNIT_OVERHEAD in features and outcome.overhead is not None else None,
                    [list(cost) for cost in outcome.costs] if UNIT_COSTS in features and outcome.costs else None]
        while optional and optional[-1] is None:
            optional.pop()
        placeholders = (ZLIB, {}, 0.0)
        return (rows, outcome.seconds,     # bytes: base64 on the wire
                *(given if given is not None else placeholders[place] for place, given in enumerate(optional)))

    def fail(self, lease: str, outcome: RenderOutcome, message: str) -> None:
        """Report a failed unit, with POV-Ray's log where the controller keeps logs."""
        log_struct = (outcome.log.to_wire(),) if self._sends_log(outcome) else ()
        self.call("nodes.fail", lease, message, outcome.scene_error, *log_struct)

    def _sends_log(self, outcome: RenderOutcome) -> bool:
        return outcome.log is not None and UNIT_LOGS in self.features()


class Uploads:
    """Finished units on their way to the controller while the slots render on. A slot waits only when `limit`
    results are already waiting: then the uplink, not POV-Ray, is what holds the node back. As many go up at
    once as `together()` says: one on a slow uplink, which they would only share (each arriving later than
    one at a time), more on a fast one, where each costs a round trip more than its bytes (camera2 behind
    150 ms: a box's last two frames went up one after the other and the job ended 0.3 s later). Their leases
    are renewed with the slots' heartbeats (progress 1.0), and between uploads when no slot is rendering."""

    def __init__(self, limit: int, deliver: Callable[[str, RenderOutcome], Any], before: Callable[[int], None],
                 heartbeat: Callable[[dict[str, float]], dict[str, Any]], clock: Callable[[], float],
                 beat_interval: Callable[[], float], together: Callable[[], int] = lambda: 1):
        """`deliver(lease, outcome)` sends one result; `before(job)` is called before a job's result goes
        up (its preview goes first); `heartbeat(progress)` renews leases (nodes.heartbeat's reply);
        `together()`: how many results may go up at once now (at most `limit`)."""
        self.deliver, self.before, self.heartbeat = deliver, before, heartbeat
        self.clock, self.beat_interval, self.together = clock, beat_interval, together
        self.limit = max(1, limit)
        self._queue: queue.Queue = queue.Queue(self.limit)
        self._pending: dict[str, float] = {}    # lease -> when it was last renewed
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        self._sending = 0
        # Each sender keeps its thread, and with it the client's keep-alive connection for that thread: a new
        # connection would cost a round trip of its own.
        self._threads: list[threading.Thread] = []

    def put(self, lease: str, outcome: RenderOutcome, job: int) -> None:
        with self._lock:
            self._pending[lease] = self.clock()
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            if len(self._threads) < self.limit:
                thread = threading.Thread(target=self._run, name=f"uploads-{len(self._threads) + 1}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._queue.put((lease, outcome, job))

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def renewed(self, leases: list[str], stop: list[str]) -> None:
        """A heartbeat carried these leases; the controller no longer wants those in `stop`."""
        now = self.clock()
        with self._lock:
            for lease in leases:
                if lease in self._pending:
                    self._pending[lease] = now if lease not in stop else -1.0

    def finish(self) -> None:
        """Wait until every result has been delivered (or given up)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            with self._turn:      # a sender takes a result only in its turn: the rest wait in the bounded queue
                while self._sending >= min(self.limit, max(1, self.together())):
                    self._turn.wait()
                self._sending += 1
            try:
                self._send(*self._queue.get())
            finally:
                with self._turn:
                    self._sending -= 1
                    self._turn.notify()

    def _send(self, lease: str, outcome: RenderOutcome, job: int) -> None:
        try:
            self.before(job)
            self._renew_waiting()
            with self._lock:
                wanted = self._pending.get(lease, 0.0) >= 0
            if wanted:
                sent = self.clock()
                self.deliver(lease, outcome)
                log.info("job %s lease %s delivered in %.3f s", job, lease, self.clock() - sent)
            else:
                log.info("lease %s was withdrawn before its result went up; dropped", lease)
        except Exception:   # noqa: BLE001 - one bad result must not stop every later upload
            log.exception("delivering lease %s failed; its lease will expire", lease)
        finally:
            with self._lock:
                self._pending.pop(lease, None)
            self._queue.task_done()

    def _renew_waiting(self) -> None:
        """Renew the leases of waiting results that no heartbeat renewed lately (no slot is rendering)."""
        since = self.clock() - self.beat_interval()
        with self._lock:
            stale = [lease for lease, when in self._pending.items() if 0 <= when < since]
        if not stale:
            return
        try:
            reply = self.heartbeat({lease: 1.0 for lease in stale})
        except FarmError as err:
            log.warning("heartbeat for results waiting to go up failed: %s", err)
            return
        self.renewed(stale, reply.get("stop", []))
