"""The node daemon: poll the controller, render strips with the real `povray`, send rows back.

A node keeps going through every kind of trouble: an unreachable controller
(it retries with back-off and jitter, holding on to a finished strip until it
is delivered), a broken scene (it reports POV-Ray's message), a crashed or
killed POV-Ray (a failed strip, never a bad image). The first SIGTERM/Ctrl-C
lets the current strip finish; the second stops POV-Ray and hands the lease back.
Scenes are untrusted: POV-Ray runs in the node's `Sandbox` (farm/rendering/sandbox.py), and
what goes back to the controller as error text is capped and names no node paths.
"""

from __future__ import annotations

import logging
import random
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from farm import __version__, jobkinds, tags
from farm.radiosity import NODE_FOLDS_BANDS, NODE_WAITS_FOR_CACHE
from farm.rendering import cache_feed, povray
from farm.rendering import sandbox as sandboxes
from farm.client import Client, client_for
from farm.config import Config
from farm.rendering.ahead import Ahead, UnitProgress
from farm.rendering.overlap import Overlap
from farm.rendering.delivery import Delivery, Uploads, rows_encoding
from farm.rendering.downloads import Downloads
from farm.faults import Code, FarmError
from farm.features import CURRENT, FEATURES, LIVE_BLOCKS, Features
from farm.rendering.kindparts import Offered
from farm.rendering.heartbeats import Beats, HeartbeatCall, LeaseWatch
from farm.rendering.live import LiveSender, LiveWatch, unit_reader, warm_previews
from farm.hostos import HOST
from farm.rendering.probe import probe_povray
from farm.rendering.reaper import Reaper
from farm.rendering.render import UnitRenderer, output_path, unnamed
from farm.retry import RETRY_CEILING, grow
from farm.rendering.task import RenderOutcome, Task

log = logging.getLogger(__name__)

MAX_ERROR_BYTES = 4096   # the most error text a node sends for one strip
POLL_WAIT = 20.0         # seconds a poll may wait at the controller for work (it may shorten it)
ASIDE_FIRST_WAIT = 2.0   # seconds a finished unit may wait for its job's unit aside (a preview), so viewers get that first
# Faults that waiting cannot cure: the token is refused or has the wrong role. Every other fault,
# and an unreachable controller, means back off and try again.
FATAL = frozenset({Code.UNAUTHORIZED, Code.FORBIDDEN})
BROKEN_NODE = "this node cannot render: %s"    # logged at start by a node whose POV-Ray does not run


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
        # What registering tells the node (until then it expects a controller of its own version).
        self.node_id: str | None = None
        self.heartbeat_interval = config.heartbeat_interval
        self.lease_timeout: float | None = None     # the controller's, once it says (older ones do not)
        self.features: Features = CURRENT
        self.stopping = threading.Event()   # finish the current strip, then exit
        self.aborting = threading.Event()   # stop POV-Ray now, hand the lease back, exit
        self.povray = sandboxes.resolve_program(config.povray) or config.povray
        self.flavour = povray.flavour_of(config.povray)   # the console povray, or the Windows GUI engine
        # Built once, probing bubblewrap once; raises FarmError when --sandbox bwrap cannot be had.
        self.sandbox = sandbox or sandboxes.build(config.sandbox, self.povray, config.max_memory_mb,
                                                  config.max_output_mb, nice=config.render_nice)
        self.reaper = Reaper(self.aborting)   # POV-Ray processes whose unit ended with its image, until they exit
        self.version, self.broken = probe_povray(self.povray, self.sandbox, self.flavour, runner,
                                                 cache=config.probe_cache, scratch=config.work_dir / "probe")
        self.renderer = UnitRenderer(
            config, self.povray, self.sandbox, runner, fetch_bundle=lambda digest: self.downloads.fetch(digest),
            fetch_radiosity_cache=lambda task, wait: self.client.call(
                "nodes.radiosity_cache", self.node_id, task.lease, *((wait,) if wait > 0 else ())).data,
            watch=lambda task, log_path, when_tracing: self.lease_watch(task.lease, log_path, when_tracing, task),
            aborting=self.aborting, flavour=self.flavour, slow_link=self.slow_link,
            rows_encoding=lambda: rows_encoding(self.features, self.uplink(worst=True), config.slow_uplink_bps),
            reaper=self.reaper)
        self.offered = Offered(config, self.broken)   # its kinds of job, and their runners
        self.kinds = self.offered.names
        node_id, features = (lambda: self.node_id), (lambda: self.features)
        self.downloads = Downloads(client, self.renderer.bundles, features, self.aborting, self._backoff)
        self.delivery = Delivery(client, node_id, features, self.stopping, self.aborting, self._backoff)
        self._registration = threading.Lock()
        self._working: set[str] = set()   # names of the slots that hold a strip right now
        self._fatal: FarmError | None = None
        self._asides: list[threading.Thread] = []   # previews rendering beside the slots
        self._slot = threading.local()      # a unit's Ahead and Overlap, and when its slot's last unit ended
        heartbeat = HeartbeatCall(client, node_id, features)
        self.uploads = Uploads(max(1, config.slots), deliver=lambda lease, outcome: self.delivery.complete(
            lease, outcome, False), before=self._aside_first, heartbeat=heartbeat, clock=clock,
            beat_interval=self.beat_interval, together=self._uploads_together)
        self.beats = Beats(self._heartbeat(heartbeat), clock, self.beat_interval, self.uploads.pending,
                           self.uploads.renewed)
        meter = getattr(client, "uploads", None)
        self.live_sender = LiveSender(lambda lease, blocks: client.call("nodes.live", self.node_id, lease, blocks),
                                      getattr(meter, "bytes_per_second", lambda: 0.0), clock, self.slow_link)

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

    @property
    def cores(self) -> int:
        """The cores the controller plans for: the setting, else those this process may run on."""
        return self.config.cores if self.config.cores > 0 else HOST.usable_cores()

    def info(self) -> dict[str, Any]:
        info = {"host": socket.gethostname(), "machine": self.config.machine or HOST.machine(),
                "platform": sys.platform, "povfarm": __version__, "cores": self.cores,
                "threads": self.config.threads or self.cores, "slots": max(1, self.config.slots),
                "povray": self.version or "", "povray_flavour": self.flavour,
                "tags": list(tags.parse(self.config.tags, "setting 'tags'")),
                "kinds": list(self.kinds), "interleave": True,   # it renders sheared units (farm.shear)
                NODE_WAITS_FOR_CACHE: cache_feed.available(self.flavour == povray.CONSOLE),
                NODE_FOLDS_BANDS: True,     # it pretraces a folded pre-pass's band whole (Task.band_pieces)
                **self.sandbox.info()}
        if self.broken and not self.offered.without_povray:
            info["error"] = self.broken
        return info

    @property
    def strips_done(self) -> int:
        """Strips the controller took from this node since it started."""
        return self.delivery.strips_done

    def lease_watch(self, lease: str, log_path: Path, when_tracing: Callable[[Path], None] | None = None,
                    task: Task | None = None,
                    progress: Callable[[Path], float | None] | None = None) -> Callable[[], bool]:
        """What the runner calls while POV-Ray works on `lease`: True when it must stop. For rows a viewer
        watches (now, or from a later heartbeat on), it also sends the render state file's new blocks up
        (farm/rendering/live.py). `progress(log_path)`: how far the unit is (default: POV-Ray's log read)."""
        # One progress reader for heartbeats, ask-ahead and overlap: one count of POV-Ray's passes from all readings.
        unit = UnitProgress.of_task(task, log_path) if task is not None else None
        watch = LeaseWatch(lease, log_path, self.beats.report, self.clock, self.beat_interval, self.aborting,
                           when_tracing, progress or (unit.at if unit is not None else None))
        if task is None or not jobkinds.sends_live(task.kind) or LIVE_BLOCKS not in self.features:
            return self._ahead_of(task, log_path, watch, unit)
        self.live_sender.start(lease, task.live)
        strip_dir, output = log_path.parent, output_path(task, log_path.parent)
        scene = strip_dir / "scene" / task.scene
        reader = unit_reader(output, log_path, scene, task)
        return LiveWatch(lease, self._ahead_of(task, log_path, watch, unit), reader, self.live_sender, self.clock)

    def _ahead_of(self, task: Task | None, log_path: Path, watch: Callable[[], bool],
                  unit: UnitProgress | None) -> Callable[[], bool]:
        """The watch, asking for the slot's next unit as this one nears its end (farm/rendering/ahead.py)."""
        ahead, overlap = getattr(self._slot, "ahead", None), getattr(self._slot, "overlap", None)
        if overlap is not None and task is not None:
            watch = overlap.watching(task, log_path, watch, unit)
        return watch if ahead is None or task is None else ahead.watching(task, log_path, watch, unit)

    def _heartbeat(self, call: Callable[[dict], dict]) -> Callable[[dict], dict]:
        """The heartbeat call, its reply's `live` (the leases a viewer watches now) heard by the live sender."""
        def beat(progress: dict[str, float]) -> dict[str, Any]:
            reply = call(progress)
            if isinstance(reply.get("live"), list):
                self.live_sender.heard(progress, reply["live"])
            return reply
        return beat

    def uplink(self, worst: bool = False) -> float:
        """Bytes/s of the fastest (or the slowest) of the node's last three large requests (0 before one)."""
        meter = getattr(self.client, "uploads", None)
        return 0.0 if meter is None else meter.recent_worst() if worst else meter.recent_best()

    def _uploads_together(self) -> int:
        """How many results go up at once: one until every one of the last three large requests went up fast
        (a link just become slow shows at once; results side by side on it would only share it), then as many
        as the node has slots."""
        return self.config.slots if self.uplink(worst=True) >= self.config.slow_uplink_bps else 1

    def slow_link(self) -> bool:
        """Whether the node's last three large requests all went up slower than slow_uplink_bps."""
        return 0 < self.uplink() < self.config.slow_uplink_bps

    def beat_interval(self) -> float:
        """Seconds between the node's heartbeats while it renders: the controller's heartbeat_interval
        (progress for viewers and the scheduler; a canceled job's POV-Ray stopped soon), or on an uplink
        slower than slow_uplink_bps (a heartbeat's kilobyte is not free there) slow_heartbeat_interval.
        Either way at most a third of the controller's lease timeout, so that two heartbeats may be late or
        lost before a lease is (a 3-s lease with 2-s heartbeats was lost to one beat late under load). A
        controller that does not say its lease timeout gets them every heartbeat_interval."""
        if not self.lease_timeout:
            return self.heartbeat_interval
        third = self.lease_timeout / 3
        fast = min(self.heartbeat_interval, third)
        return max(fast, min(self.config.slow_heartbeat_interval, third)) if self.slow_link() else fast

    def run(self) -> None:
        """Poll and render with `slots` workers until asked to stop. Several POV-Ray processes at once
        hide each one's idle start-up and shut-down time behind the others' tracing."""
        say_how_it_runs(self)
        if not self.broken:
            threading.Thread(target=warm_previews, name="warm-previews", daemon=True).start()
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
        if lingering := self.reaper.lingering():   # rendered units' POV-Ray processes exit (stopped: aborting)
            log.info("waiting for %d POV-Ray process(es) whose units are rendered to exit", lingering)
        self.reaper.finish()
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
                delay = self._backoff(delay, RETRY_CEILING)
                log.warning("the controller %s (%s); retrying in %.1f s",
                            "cannot be reached" if err.code is Code.UNREACHABLE else "answered an error",
                            err, delay)
                self.stopping.wait(delay)
                continue
            if worked or self.clock() - started >= 1.0:
                delay = 0.0     # busy, or the controller already waited for work: ask again at once
            else:
                delay = self._backoff(delay, self.config.poll_max)
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
                self.features = Features.of_reply(reply)
                self.node_id = reply["node_id"]
                log.info("registered with %s as %s", self.client.url, self.node_id)
                missing = [feature for feature in FEATURES if feature not in self.features]
                if missing:
                    log.info("the controller does not list %s (an older version): doing without",
                             ", ".join(missing))
            return self.node_id

    def _forget(self, node_id: str | None) -> None:
        """The controller no longer knows this id: the next poll registers again (once, for all slots)."""
        with self._registration:
            if self.node_id == node_id:
                self.node_id = None

    def step(self) -> bool:
        """One poll; render the task if there is one. True when a strip was worked on."""
        node_id = self.node_id or self.register()
        asked = self.clock()
        task = _task(self.downloads.poll(node_id, POLL_WAIT))
        if task is None or self.clock() - asked >= 1.0:
            self._slot.ended = None      # the slot waited for work, not for the controller
        if task is None:
            return False
        slot = threading.current_thread().name
        self._working.add(slot)
        ahead = Ahead(lambda: self.downloads.poll(node_id, 0), self.beats.hold,
                      self.config.ask_ahead, self.stopping, self.clock)
        overlap = Overlap(self._unit_of_slot, ahead, self.config.overlap, self.stopping, self._release,
                          getattr(self._slot, "ended", None), self.clock)
        try:
            while task is not None:
                if isinstance(task, Task) and self.stopping.is_set():   # asked to stop while this poll waited
                    self._release(task)
                    task = ahead.take()
                    continue
                if isinstance(task, Task) and jobkinds.runs_aside(task.kind):
                    task = self._render_aside(task, node_id)
                    continue
                task = overlap.next_after(task)    # a unit started early, leased ahead, handed back, or None
        finally:
            overlap.close(task)
            self._working.discard(slot)
            self._slot.ended = overlap.ended
        return True

    def _unit_of_slot(self, overlap: Overlap, task: Task, ended: float | None) -> tuple[Task | None, float | None]:
        """Node.work as a slot's unit thread runs it (farm/rendering/overlap.py): with the slot's look-ahead and
        overlap, and when its previous unit ended (None: it overlapped it); returns what work handed back and
        when this unit ended."""
        self._slot.ahead, self._slot.overlap, self._slot.ended = overlap.ahead, overlap, ended
        return self.work(task), getattr(self._slot, "ended", None)

    def _release(self, task: Task) -> None:
        """Hand a task back unworked (a stop, or two next units of which one is kept)."""
        self.beats.forget(task.lease)
        self.delivery.call("nodes.release", task.lease)

    def _render_aside(self, task: Task, node_id: str) -> Task | None:
        """A unit its kind renders aside (POV-Ray's preview) is small: beside the slot's units, not in their
        place, it costs the job almost nothing (it mostly waits on start-up). Returns the slot's next task."""
        aside = threading.Thread(target=self.work, args=(task, False), name=f"aside-{task.job}", daemon=True)
        with self._registration:
            self._asides = [*(thread for thread in self._asides if thread.is_alive()), aside]
        aside.start()
        return _task(self.downloads.poll(node_id, 0))

    def _aside_first(self, job: int) -> None:
        """Viewers should get a job's preview before its first rows: a unit that beat the unit rendering
        aside waits for it, at most ASIDE_FIRST_WAIT seconds."""
        with self._registration:
            asides = [thread for thread in self._asides if thread.name == f"aside-{job}" and thread.is_alive()]
        deadline = time.monotonic() + ASIDE_FIRST_WAIT
        for thread in asides:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- one strip ---------------------------------------------------------------------------

    def work(self, task: Task, take_next: bool = True) -> Task | None:
        """Render one strip and report it. Returns the next task when the controller handed one over
        with the result (only when `take_next`)."""
        lease = task.lease
        log.info("job %s strip %s rows %s-%s (attempt %s)", task.job, task.strip, task.row_start, task.row_end,
                 task.attempt)
        strip_dir = self.strip_root / f"job{task.job}-f{task.frame}-s{task.strip}-{secrets.token_hex(3)}"
        started = self.clock()
        try:
            outcome = self.offered.runner_for(self, task.kind).render(task, strip_dir)
        finally:
            self.beats.forget(lease)
            self.live_sender.ended(lease)     # its rows replace its blocks: those still queued are dropped
            if not self.config.keep_work:   # once its POV-Ray has exited (farm/rendering/reaper.py)
                self.reaper.after(strip_dir, lambda: shutil.rmtree(strip_dir, ignore_errors=True))
        log.info("job %s strip %s rendered: %s after %.2f s", task.job, task.strip, outcome.kind, outcome.seconds)
        if outcome.kind == "done" and take_next:
            log.info("%s", profile_line(task, outcome, self.clock() - started,
                                        started - (getattr(self._slot, "ended", None) or started)))
            self._slot.ended = self.clock()
        if outcome.kind == "done" and take_next and not self.stopping.is_set():
            # Off the slot's path: the slot polls for its next strip and renders it while this one goes up.
            self.uploads.put(lease, outcome, task.job)
            return None
        if outcome.kind == "done":
            if take_next:
                self._aside_first(task.job)
            return _task(self.delivery.complete(lease, outcome, take_next))
        if outcome.kind == "failed":
            message = error_text(outcome.error, strip_dir / "scene", self.config.work_dir)
            log.warning("job %s strip %s failed: %s", task.job, task.strip, message)
            self.delivery.fail(lease, outcome, message)
        elif outcome.kind == "release":
            self.delivery.call("nodes.release", lease)
        # "dropped": the controller said to stop (job canceled or lease gone); nothing to send.
        return None


def say_how_it_runs(node: Node) -> None:
    """The node's start-up messages: how POV-Ray is driven and confined, and which kinds it cannot run."""
    if node.flavour == povray.PVENGINE:
        log.info("driving POV-Ray for Windows (%s) through INI files and its message streams", node.povray)
    if node.sandbox.warning:
        log.warning("%s", sandboxes.warning_banner(node.sandbox.warning))
    else:
        log.info("POV-Ray runs confined by bubblewrap (%s)", node.sandbox.bwrap)
    for missing in node.offered.missing_programs():
        log.warning("%s", missing)
    if node.broken and node.offered.without_povray:
        log.info("POV-Ray does not run here (%s); this node runs %s jobs only", node.broken, ", ".join(node.kinds))
    elif node.broken:
        log.error(BROKEN_NODE, node.broken)


def error_text(text: str, scene_dir: Path, work_dir: Path) -> str:
    """Error text for the controller: the node's own folders unnamed (`render.unnamed`), at most
    MAX_ERROR_BYTES."""
    data = unnamed(text, scene_dir, work_dir).encode("utf-8")
    if len(data) <= MAX_ERROR_BYTES:
        return data.decode("utf-8")
    marker = "\n[...]"
    return data[:MAX_ERROR_BYTES - len(marker)].decode("utf-8", "ignore") + marker


def profile_line(task: Task, outcome: RenderOutcome, seconds: float, waited: float) -> str:
    """Where a unit's time went on the node, in one line (bench/run.py reads it): the slot's wait for it since
    its previous unit (and its POV-Ray's for the frame's radiosity cache), POV-Ray's start-up and each stage it
    reports, and the node's own part (the scene made ready, the rows encoded)."""
    stages = outcome.stages
    start_up = max(0.0, outcome.seconds - sum(stages.values()))
    waited, seconds = waited + outcome.cache_wait, seconds - outcome.cache_wait
    return (f"job {task.job} strip {task.strip} profile: waited {waited:.3f} s, POV-Ray {outcome.seconds:.3f} s "
            f"(start-up {start_up:.3f}, parse {stages.get('parse', 0.0) + stages.get('bounding', 0.0):.3f}, "
            f"photons {stages.get('photons', 0.0):.3f}, radiosity {stages.get('radiosity', 0.0):.3f}, "
            f"trace {stages.get('trace', 0.0):.3f}), node {max(0.0, seconds - outcome.seconds):.3f} s")


def _task(reply: dict[str, Any] | None) -> Task | None:
    """The task in a poll's reply, or None for {} (no work)."""
    return Task.from_wire(reply) if reply else None


def run_node(config: Config) -> int:
    """The `povfarm node` command: run until SIGTERM/Ctrl-C (twice to stop at once)."""
    node = Node(config, client_for(config, "node"))

    def on_signal(signum, frame):
        node.request_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    node.run()
    return 0
