"""The node daemon: poll the controller, render strips with the real `povray`, send rows back.

A node keeps going through every kind of trouble: an unreachable controller
(it retries with back-off and jitter, holding on to a finished strip until it
is delivered), a broken scene (it reports POV-Ray's message), a crashed or
killed POV-Ray (a failed strip, never a bad image). The first SIGTERM/Ctrl-C
lets the current strip finish; the second stops POV-Ray and hands the lease back.
Scenes are untrusted: POV-Ray runs in the node's `Sandbox` (farm/sandbox.py), and
what goes back to the controller as error text is capped and names no node paths.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, Callable

from farm import __version__, povray
from farm.bundle import cache as bundle
from farm import sandbox as sandboxes
from farm.client import Client, client_for
from farm.config import Config
from farm.faults import Code, FarmError
from farm.hostos import HOST
from farm.kinds import PREVIEW
from farm.probe import probe_povray
from farm.records import RenderOutcome
from farm.render import UnitRenderer
from farm.retry import RETRY_CEILING, grow
from farm.rows import ZLIB

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 4096   # the most error text a node sends for one strip
POLL_WAIT = 20.0         # seconds a poll may wait at the controller for work (it may shorten it)
PREVIEW_FIRST_WAIT = 2.0  # seconds a finished strip may wait for its job's preview, so viewers get that first
# Faults that waiting cannot cure: the token is refused or has the wrong role. Every other fault,
# and an unreachable controller, means back off and try again.
FATAL = frozenset({Code.UNAUTHORIZED, Code.FORBIDDEN})
# Faults a delivery is retried on (the result was not stored); others mean it is no longer wanted.
RETRY_DELIVERY = frozenset({Code.UNREACHABLE, Code.STORAGE, Code.INTERNAL})
# Faults a delivery of rows passes to its caller: an older controller's (no such method, or no such argument).
ROWS_REFUSED = frozenset({Code.UNKNOWN_METHOD, Code.BAD_ARGUMENT})
BROKEN_NODE = "this node cannot render: %s"    # logged at start by a node whose POV-Ray does not run
BUNDLE_ATTEMPTS = 4      # tries at a bundle download (each resuming) before the strip is reported failed


class Node:
    def __init__(self, config: Config, client: Client, runner: Callable[..., povray.ProcessResult] = povray.run_process,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random,
                 sandbox: sandboxes.Sandbox | None = None):
        self.config = config
        self.client = client
        self.runner = runner
        self.clock = clock
        self.rng = rng
        self.strip_root = config.work_dir / "strips"
        self.node_id: str | None = None
        self.heartbeat_interval = config.heartbeat_interval
        self.lease_timeout: float | None = None     # the controller's, once it says (older ones do not)
        self.stopping = threading.Event()   # finish the current strip, then exit
        self.aborting = threading.Event()   # stop POV-Ray now, hand the lease back, exit
        self.povray = sandboxes.resolve_program(config.povray) or config.povray
        self.flavour = povray.flavour_of(config.povray)   # the console povray, or the Windows GUI engine
        # Built once, probing bubblewrap once; raises FarmError when --sandbox bwrap cannot be had.
        self.sandbox = sandbox or sandboxes.build(config.sandbox, self.povray, config.max_memory_mb,
                                                  config.max_output_mb)
        self.version, self.broken = probe_povray(self.povray, self.sandbox, self.flavour, runner,
                                                 cache=config.probe_cache, scratch=config.work_dir / "probe")
        self.renderer = UnitRenderer(
            config, self.povray, self.sandbox, runner, fetch_bundle=lambda digest: self.downloads.fetch(digest),
            fetch_radiosity_cache=lambda task: self.client.call("nodes.radiosity_cache", self.node_id,
                                                                task["lease"]).data,
            watch=lambda task, log_path, when_tracing: _Heartbeat(self, task["lease"], log_path, when_tracing),
            aborting=self.aborting, flavour=self.flavour, slow_link=self.slow_link)
        self.downloads = _Downloads(client, self.renderer.bundles, self.aborting, self._backoff)
        self.delivery = _Delivery(client, lambda: self.node_id, self.renderer, self.stopping, self.aborting,
                                  self._backoff)
        self._registration = threading.Lock()
        self._working: set[str] = set()   # names of the slots that hold a strip right now
        self._fatal: FarmError | None = None
        self._asides: list[threading.Thread] = []   # previews rendering beside the slots
        self.uploads = _Uploads(self, max(1, config.slots))
        self.beats = _Beats(self)
        self._report_stats = hasattr(client, "uploads")
        self._reported_rate = 0.0         # the upload rate the controller last heard

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self, now: bool = False) -> None:
        """Stop after the current strips, or (`now`) stop POV-Ray at once and hand the strips back."""
        if now:
            self.aborting.set()
        self.stopping.set()

    def request_stop(self) -> None:
        if self.stopping.is_set():
            log.warning("second stop request: stopping POV-Ray and handing the strip back")
            self.aborting.set()
        else:
            log.info("stopping after the current strip (interrupt again to stop at once)")
        self.stopping.set()

    def info(self) -> dict[str, Any]:
        info = {"host": socket.gethostname(), "machine": self.config.machine or HOST.machine(),
                "platform": sys.platform, "povfarm": __version__, "cores": os.cpu_count() or 1,
                "threads": self.config.threads or os.cpu_count() or 1, "slots": max(1, self.config.slots),
                "povray": self.version or "", "povray_flavour": self.flavour,
                **self.sandbox.info()}
        if self.broken:
            info["error"] = self.broken
        return info

    def heartbeat(self, progress: dict[str, float]) -> dict[str, Any]:
        """nodes.heartbeat, with the node's measured upload rate when it has one that differs by more than
        a tenth from the one last reported (the controller keeps that; a controller that takes no such
        report is not sent it again)."""
        rate = self.client.uploads.bytes_per_second() if self._report_stats else 0.0
        changed = rate > 0 and abs(rate - self._reported_rate) > 0.1 * self._reported_rate
        stats = [{"upload_bps": float(round(rate))}] if changed else []
        try:
            reply = self.client.call("nodes.heartbeat", self.node_id, progress, *stats)
        except FarmError as err:
            if not stats or err.code is not Code.BAD_ARGUMENT:
                raise
            log.info("the controller takes no upload rate with heartbeats; no longer sending it")
            self._report_stats = False
            return self.client.call("nodes.heartbeat", self.node_id, progress)
        if stats:
            self._reported_rate = rate
        return reply

    @property
    def strips_done(self) -> int:
        """Strips the controller took from this node since it started."""
        return self.delivery.strips_done

    def slow_link(self) -> bool:
        """Whether the node's last large request went up slower than slow_uplink_bps."""
        meter = getattr(self.client, "uploads", None)
        rate = meter.latest() if meter is not None else 0.0
        return 0 < rate < self.config.slow_uplink_bps

    def beat_interval(self) -> float:
        """Seconds between the node's heartbeats while it renders: the controller's heartbeat_interval
        (progress for viewers and the scheduler; a canceled job's POV-Ray stopped soon), unless the node's
        last large request went up slower than slow_uplink_bps. There a heartbeat's kilobyte, headers and
        all, is not free: one goes every slow_heartbeat_interval, but at most every third of the
        controller's lease timeout, so that two heartbeats may be lost before a lease is (a controller
        that does not say its lease timeout gets them every heartbeat_interval)."""
        if not self.lease_timeout or not self.slow_link():
            return self.heartbeat_interval
        return max(self.heartbeat_interval, min(self.config.slow_heartbeat_interval, self.lease_timeout / 3))

    def run(self) -> None:
        """Poll and render with `slots` workers until asked to stop. Several POV-Ray processes at once
        hide each one's idle start-up and shut-down time behind the others' tracing."""
        if self.flavour == povray.PVENGINE:
            log.info("driving POV-Ray for Windows (%s) through INI files and its message streams", self.povray)
        if self.sandbox.warning:
            log.warning("%s", sandboxes.warning_banner(self.sandbox.warning))
        else:
            log.info("POV-Ray runs confined by bubblewrap (%s)", self.sandbox.bwrap)
        if self.broken:
            log.error(BROKEN_NODE, self.broken)
        workers = [threading.Thread(target=self._worker, name=f"slot-{slot + 1}", daemon=True)
                   for slot in range(max(1, self.config.slots))]
        for worker in workers:
            worker.start()
        # Short joins keep the main thread free for signals, and the condition is checked after each one
        # so a stop is seen within one join. Once stopping, wait only for slots that are working on a
        # strip: an idle slot may be parked in a long poll at the controller.
        while busy := [worker for worker in workers if worker.is_alive()
                       and (not self.stopping.is_set() or worker.name in self._working)]:
            busy[0].join(0.05)
        for aside in self._asides:
            aside.join(timeout=10)     # a preview in flight is small: let it deliver
        self.uploads.finish()          # results still on their way go out before the node stops
        if self._fatal is not None:
            raise self._fatal
        log.info("node %s stopped after %d strips", self.node_id, self.strips_done)

    def _worker(self) -> None:
        try:
            self._poll_loop()
        except FarmError as err:   # a refused token: no point in going on
            self._fatal = err
            self.stopping.set()
            self.aborting.set()

    def _poll_loop(self) -> None:
        delay = 0.0
        while not self.stopping.is_set():
            started = self.clock()
            try:
                worked = self.step()
            except FarmError as err:
                if err.code is Code.UNKNOWN_NODE:
                    log.warning("%s", err)
                    self._forget(self.node_id)
                    continue
                if err.code in FATAL:
                    raise
                # Unreachable, a full disk (STORAGE), an internal error, anything else the controller
                # answers: it may be fixed any moment, so wait longer each time and ask again.
                delay = self._backoff(delay, ceiling=RETRY_CEILING)
                log.warning("the controller %s (%s); retrying in %.1f s",
                            "cannot be reached" if err.code is Code.UNREACHABLE else "answered an error",
                            err, delay)
                self.stopping.wait(delay)
                continue
            if worked or self.clock() - started >= 1.0:
                delay = 0.0     # busy, or the controller already waited for work: ask again at once
            else:
                delay = self._backoff(delay, ceiling=self.config.poll_max)
                self.stopping.wait(delay)

    def _backoff(self, delay: float, ceiling: float) -> float:
        """Double the delay up to the ceiling, with +-25% jitter so many nodes do not poll in step."""
        return grow(delay, self.config.poll_min, ceiling, self.rng)

    def register(self) -> str:
        """Register once for all slots; returns the node id."""
        with self._registration:
            if self.node_id is None:
                reply = self.client.call("nodes.register", self.config.name, self.info())
                self.heartbeat_interval = float(reply.get("heartbeat_interval", self.heartbeat_interval))
                self.lease_timeout = float(reply["lease_timeout"]) if "lease_timeout" in reply else None
                self.node_id = reply["node_id"]
                log.info("registered with %s as %s", self.client.url, self.node_id)
            return self.node_id

    def _forget(self, node_id: str | None) -> None:
        """The controller no longer knows this id: the next poll registers again (once, for all slots)."""
        with self._registration:
            if self.node_id == node_id:
                self.node_id = None

    def step(self) -> bool:
        """One poll; render the task if there is one. True when a strip was worked on."""
        node_id = self.node_id or self.register()
        task = self.client.call("nodes.poll", node_id, POLL_WAIT)
        if not task:
            return False
        slot = threading.current_thread().name
        self._working.add(slot)
        try:
            while task:
                if self.stopping.is_set():     # asked to stop while this poll waited: hand the strip back
                    self.delivery.call("nodes.release", task["lease"])
                    break
                if task.get("kind") == PREVIEW:
                    task = self._preview_aside(task, node_id)
                    continue
                task = self.work(task)
        finally:
            self._working.discard(slot)
        return True

    def _preview_aside(self, task: dict[str, Any], node_id: str) -> dict[str, Any]:
        """A preview is small: it renders beside the slot's strips instead of in their place, so it costs the
        job almost nothing (its POV-Ray mostly waits on start-up). Returns the slot's next task, or {}."""
        aside = threading.Thread(target=self.work, args=(task, False), name=f"preview-{task['job']}", daemon=True)
        with self._registration:
            self._asides = [*(thread for thread in self._asides if thread.is_alive()), aside]
        aside.start()
        return self.client.call("nodes.poll", node_id, 0)

    def _preview_first(self, job: int) -> None:
        """Viewers should get a job's preview before its first rows: a strip that beat the preview
        rendering beside it waits for it, at most PREVIEW_FIRST_WAIT seconds."""
        with self._registration:
            asides = [thread for thread in self._asides if thread.name == f"preview-{job}" and thread.is_alive()]
        deadline = time.monotonic() + PREVIEW_FIRST_WAIT
        for thread in asides:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- one strip ---------------------------------------------------------------------------

    def work(self, task: dict[str, Any], take_next: bool = True) -> dict[str, Any] | None:
        """Render one strip and report it. Returns the next task when the controller handed one over
        with the result (only when `take_next`)."""
        lease = task["lease"]
        log.info("job %s strip %s rows %s-%s (attempt %s)", task["job"], task["strip"], task["row_start"],
                 task["row_end"], task["attempt"])
        strip_dir = self.strip_root / f"job{task['job']}-f{task['frame']}-s{task['strip']}-{secrets.token_hex(3)}"
        try:
            outcome = self.renderer.render(task, strip_dir)
        finally:
            self.beats.forget(lease)
            if not self.config.keep_work:
                shutil.rmtree(strip_dir, ignore_errors=True)
        log.info("job %s strip %s rendered: %s after %.2f s", task["job"], task["strip"], outcome.kind,
                 outcome.seconds)
        if outcome.kind == "done" and take_next and not self.stopping.is_set():
            # Off the slot's path: the slot polls for its next strip and renders it while this one goes up.
            self.uploads.put(lease, outcome, task["job"])
            return None
        if outcome.kind == "done":
            if take_next:
                self._preview_first(task["job"])
            return self.delivery.complete(lease, outcome, take_next)
        if outcome.kind == "failed":
            message = self._error_text(outcome.error, strip_dir / "scene")
            log.warning("job %s strip %s failed: %s", task["job"], task["strip"], message)
            self.delivery.call("nodes.fail", lease, message, outcome.scene_error)
        elif outcome.kind == "release":
            self.delivery.call("nodes.release", lease)
        # "dropped": the controller said to stop (job canceled or lease gone); nothing to send.
        return None

    def _error_text(self, text: str, scene_dir: Path) -> str:
        """Error text for the controller: scene paths relative, the node's own folders unnamed,
        at most MAX_ERROR_BYTES."""
        text = text.replace(f"{scene_dir}{os.sep}", "").replace(str(self.config.work_dir), "<work-dir>")
        data = text.encode("utf-8")
        if len(data) <= MAX_ERROR_BYTES:
            return text
        marker = "\n[...]"
        return data[:MAX_ERROR_BYTES - len(marker)].decode("utf-8", "ignore") + marker


class _Delivery:
    """Results going to the controller: retried while it cannot store them, and sent the way an older
    controller takes them (nodes.complete without the next task, rows as plain zlib) once it says so."""

    def __init__(self, client: Client, node_id: Callable[[], str | None], renderer: UnitRenderer,
                 stopping: threading.Event, aborting: threading.Event, backoff: Callable[..., float]):
        self.client, self.node_id, self.renderer = client, node_id, renderer
        self.stopping, self.aborting, self.backoff = stopping, aborting, backoff
        self.strips_done = 0              # strips the controller took
        self._combined_calls = True       # nodes.complete_and_poll, until a controller says it has none

    def call(self, method: str, lease: str, *args: Any, passing: frozenset = frozenset({Code.UNKNOWN_METHOD})) -> Any:
        """Send a result, retrying while the controller is unreachable. Returns the reply, or None if it
        was refused. Faults in `passing` raise (an unknown method, an older controller: the caller picks
        another)."""
        delay = 0.0
        while True:
            try:
                return self.client.call(method, self.node_id(), lease, *args)
            except FarmError as err:
                if err.code in passing:
                    raise
                if err.code not in RETRY_DELIVERY:
                    log.warning("%s for lease %s refused: %s", method, lease, err)
                    return None
                if self.aborting.is_set():
                    log.error("giving up on %s for lease %s: %s", method, lease, err)
                    return None
                # Not stored (the controller is unreachable, or its disk is full...): keep the result
                # until it is, or until the lease has gone elsewhere (then the controller says so).
                delay = self.backoff(delay, ceiling=RETRY_CEILING)
                log.warning("%s for lease %s: %s; retrying delivery in %.1f s", method, lease, err, delay)
                self.aborting.wait(delay)

    def complete(self, lease: str, outcome: RenderOutcome, take_next: bool = True) -> dict[str, Any] | None:
        """Deliver a unit's rows and, unless stopping, take the next task in the same round trip. A controller
        that refuses the rows' encoding (one that predates it: a fault for the argument count) gets them
        as plain zlib, and from then on every unit is rendered into plain zlib."""
        rows, encoding = outcome.rows, outcome.encoding
        if encoding != ZLIB and self.renderer.encoding == ZLIB and outcome.as_zlib is not None:
            rows, encoding = outcome.as_zlib(), ZLIB     # rendered before the node learnt it
        try:
            return self._send_rows(lease, rows, outcome.seconds, encoding, take_next)
        except FarmError as err:
            if err.code is not Code.BAD_ARGUMENT or encoding == ZLIB or outcome.as_zlib is None:
                log.warning("nodes.complete for lease %s refused: %s", lease, err)
                return None
            refused = err
        try:
            reply = self._send_rows(lease, outcome.as_zlib(), outcome.seconds, ZLIB, take_next)
        except FarmError:     # not the encoding, then: the rows themselves are refused
            log.warning("nodes.complete for lease %s refused: %s", lease, refused)
            return None
        log.info("the controller refused %s rows (%s) and took them as plain zlib; sending plain zlib from now on",
                 encoding, refused)
        self.renderer.encoding = ZLIB
        return reply

    def _send_rows(self, lease: str, rows: bytes, seconds: float, encoding: str,
                   take_next: bool) -> dict[str, Any] | None:
        """nodes.complete_and_poll (half the requests per strip, and the slot never waits for a poll between
        strips) or nodes.complete. Raises BAD_ARGUMENT; other refusals return None."""
        payload: tuple = (xmlrpc.client.Binary(rows), seconds)
        if encoding != ZLIB:
            payload += (encoding,)
        if take_next and self._combined_calls and not self.stopping.is_set():
            try:
                reply = self.call("nodes.complete_and_poll", lease, *payload, passing=ROWS_REFUSED)
            except FarmError as err:
                if err.code is not Code.UNKNOWN_METHOD:
                    raise
                log.info("the controller predates nodes.complete_and_poll; delivering with nodes.complete")
                self._combined_calls = False
            else:
                if reply is not None:
                    self.strips_done += 1
                return reply or None
        if self.call("nodes.complete", lease, *payload, passing=ROWS_REFUSED) is not None:
            self.strips_done += 1
        return None


class _Uploads:
    """Finished units on their way to the controller, one at a time (they share the node's uplink), while
    the slots render on. A slot waits only when `limit` results are already waiting: then the uplink, not
    POV-Ray, is what holds the node back. Their leases are renewed with the slots' heartbeats (progress
    1.0), and between uploads when no slot is rendering."""

    def __init__(self, node: Node, limit: int):
        self.node = node
        self._queue: queue.Queue = queue.Queue(limit)
        self._pending: dict[str, float] = {}    # lease -> when it was last renewed
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, lease: str, outcome: RenderOutcome, job: int) -> None:
        with self._lock:
            self._pending[lease] = self.node.clock()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="uploads", daemon=True)
                self._thread.start()
        self._queue.put((lease, outcome, job))

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._pending)

    def renewed(self, leases: list[str], stop: list[str]) -> None:
        """A heartbeat carried these leases; the controller no longer wants those in `stop`."""
        now = self.node.clock()
        with self._lock:
            for lease in leases:
                if lease in self._pending:
                    self._pending[lease] = now if lease not in stop else -1.0

    def finish(self) -> None:
        """Wait until every result has been delivered (or given up)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            lease, outcome, job = self._queue.get()
            try:
                self.node._preview_first(job)     # the job's preview, rendering beside, goes up first
                self._renew_waiting()
                with self._lock:
                    wanted = self._pending.get(lease, 0.0) >= 0
                if wanted:
                    self.node.delivery.complete(lease, outcome, False)
                else:
                    log.info("lease %s was withdrawn before its result went up; dropped", lease)
            except FarmError as err:   # an unknown method or the like: the lease will expire
                log.warning("nodes.complete for lease %s failed: %s", lease, err)
            except Exception:   # noqa: BLE001 - one bad result must not stop every later upload
                log.exception("delivering lease %s failed; its lease will expire", lease)
            finally:
                with self._lock:
                    self._pending.pop(lease, None)
                self._queue.task_done()

    def _renew_waiting(self) -> None:
        """Renew the leases of waiting results that no heartbeat renewed lately (no slot is rendering)."""
        since = self.node.clock() - self.node.beat_interval()
        with self._lock:
            stale = [lease for lease, when in self._pending.items() if 0 <= when < since]
        if not stale:
            return
        try:
            reply = self.node.heartbeat({lease: 1.0 for lease in stale})
        except FarmError as err:
            log.warning("heartbeat for results waiting to go up failed: %s", err)
            return
        self.renewed(stale, reply.get("stop", []))


class _Downloads:
    """Scene bundles coming down from the controller, in ranges that resume where a cut-short download
    stopped: on an unreachable controller it tries a few times more, and what it got is kept on disk (in
    the node's bundle cache) for the next try."""

    def __init__(self, client: Client, cache: bundle.BundleCache, aborting: threading.Event,
                 backoff: Callable[..., float]):
        self.client, self.cache, self.aborting, self.backoff = client, cache, aborting, backoff

    def fetch(self, digest: str) -> bytes:
        """The bundle's bytes; raises the last FarmError when every try failed (or the node is aborting)."""
        part = self.cache.download_path(digest)
        delay, attempt = 0.0, 1
        while True:
            try:
                return bundle.download_resuming(part, digest, lambda offset: self._range(digest, offset))
            except FarmError as err:
                if err.code is Code.UNKNOWN_METHOD:   # a controller without ranges: the whole bundle at once
                    return self.client.call("bundles.fetch", digest).data
                if err.code is not Code.UNREACHABLE or attempt >= BUNDLE_ATTEMPTS or self.aborting.is_set():
                    raise
                delay = self.backoff(delay, ceiling=RETRY_CEILING)
                log.warning("downloading bundle %s: %s; resuming in %.1f s", digest, err, delay)
            attempt += 1
            self.aborting.wait(delay)

    def _range(self, digest: str, offset: int) -> tuple[int, bytes]:
        reply = self.client.call("bundles.fetch_range", digest, offset, bundle.DOWNLOAD_CHUNK)
        return int(reply["size"]), reply["data"].data


class _Heartbeat:
    """Called by the runner while POV-Ray works: renews the lease, reports progress, says when to stop."""

    def __init__(self, node: Node, lease: str, log_path: Path,
                 watch: Callable[[Path], None] | None = None):
        self.node, self.lease, self.log_path, self.watch = node, lease, log_path, watch
        self.last = node.clock()

    def __call__(self) -> bool:
        if self.node.aborting.is_set():
            return True
        if self.watch is not None:
            self.watch(self.log_path)
        now = self.node.clock()
        if now - self.last < self.node.beat_interval():
            return False
        self.last = now
        progress = round(povray.progress_fraction(self.log_path) or 0.0, 3)   # "0.421", not 17 digits
        if self.node.beats.report(self.lease, progress):
            log.info("the controller withdrew lease %s (job canceled or failed); stopping POV-Ray", self.lease)
            return True
        return False


class _Beats:
    """One heartbeat request per interval for the whole node: every slot's lease and progress, and the
    results waiting to go up, in one call. On a slow uplink each request costs, headers and all, about
    as much as a kilobyte of pixels."""

    def __init__(self, node: Node):
        self.node = node
        self._lock = threading.Lock()
        self._progress: dict[str, float] = {}
        self._stop: set[str] = set()
        self._last = -math.inf

    def report(self, lease: str, progress: float) -> bool:
        """Note a slot's progress, send the node's heartbeat when one is due; True when `lease` must stop."""
        now = self.node.clock()
        with self._lock:
            self._progress[lease] = progress
            due = now - self._last >= self.node.beat_interval()
            if due:
                self._last = now
                waiting = self.node.uploads.pending()
                beat = {**{pending: 1.0 for pending in waiting}, **self._progress}
        if due:
            try:
                reply = self.node.heartbeat(beat)
            except FarmError as err:
                # Keep rendering: the result may still be accepted when the controller returns.
                log.warning("heartbeat failed: %s", err)
                return False
            stop = reply.get("stop", [])
            self.node.uploads.renewed(waiting, stop)
            with self._lock:
                self._stop = set(stop)
        with self._lock:
            return lease in self._stop

    def forget(self, lease: str) -> None:
        """The slot is done with this lease (rendered, failed or dropped)."""
        with self._lock:
            self._progress.pop(lease, None)


def run_node(config: Config) -> int:
    """The `povfarm node` command: run until SIGTERM/Ctrl-C (twice to stop at once)."""
    node = Node(config, client_for(config, "node"))

    def on_signal(signum, frame):
        node.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node.run()
    return 0
