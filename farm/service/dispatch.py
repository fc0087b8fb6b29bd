"""The node-facing rules: registering, leasing units, renewing, storing and failing them.

The decisions (who gets which unit, what a failure means) are `farm.policy`'s;
what is remembered is the store's; this class connects them, checks what nodes
send, and tells long polls and the stitcher what changed.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from farm import jobkinds, policy, scheduler
from farm.config import Config
from farm.faults import Code, FarmError
from farm.meter import Meter
from farm.records import Job, Lease, Unit
from farm.rows import ZLIB, as_stored
from farm.states import UnitState
from farm.service import kindparts
from farm.service.changes import Changes
from farm.service.stitcher import Stitcher
from farm.store import Completion, Keeping, Store, Worth
from farm.unitlog import UnitLog
from farm.wire import LONG_POLL_CAP

log = logging.getLogger(__name__)

MAX_CACHED = 256                          # jobs and leases remembered in memory for the hot path
OVERHEAD_SAMPLES = 5                      # a node's last fixed costs per unit of a job, of which the median counts


class _Recent(OrderedDict):
    """A small least-recently-used map."""

    def __init__(self, size: int):
        super().__init__()
        self._size = size

    def keep(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self._size:
            self.popitem(last=False)
        return value


class Dispatcher:
    def __init__(self, config: Config, store: Store, clock: Callable[[], float], changes: Changes,
                 work: Changes, stitcher: Stitcher, watched: Callable[[int], bool] = lambda job_id: True,
                 meter: Meter | None = None,
                 keep_log: Callable[[Unit, str, str, UnitLog], None] = lambda unit, node, outcome, run: None,
                 machine: str = ""):
        self._config, self._store, self._clock, self._watched = config, store, clock, watched
        self._meter = meter or Meter()
        declare_unit_metrics(self._meter)
        self._keep_log = keep_log     # (unit, node_id, "done"/"failed", the run): POV-Ray's log of a unit
        self._machine = machine    # the box the controller runs on (farm.hostos)
        self._changes, self._work, self._stitcher = changes, work, stitcher
        self._jobs = _Recent(MAX_CACHED)      # what a job fixed at submit never changes: read it once
        self._leased = _Recent(MAX_CACHED)    # lease token -> unit, so a completion looks it up once
        self._set_aside: dict[int, frozenset[str]] = {}   # job -> kinds of unit waiting for a viewer (viewer_came)
        # The store's questions as it leases, answered by the parts: for a slot asking ahead of its unit's
        # end (a poll that does not wait), and for an idle slot (a long poll).
        self._kinds = {False: _KindsAsked(self, idle=False), True: _KindsAsked(self, idle=True)}
        self._choose = functools.partial(policy.choose_unit, binds=kindparts.binds_frames)
        # (job, node) -> the node's last fixed costs per unit of the job (start-up, parse...), as it measured
        # them: units are sized by them (`farm.scheduler`). Kept in memory: after a restart they are learnt again.
        self._overheads = _Recent(MAX_CACHED)
        # Node name -> the speed of one of its POV-Ray runs, learnt from the sheared frames it rendered with
        # others (farm.scheduler.learned_speeds): a sheared frame's first units are sized by them. In memory:
        # one frame on two boxes after a restart learns them again.
        self._speeds: dict[str, float] = {}
        # (job, frame) -> node id -> when its units of a sheared frame ran (stored less POV-Ray's seconds):
        # a unit leased ahead runs beside its node's last one for a while, and summing their seconds
        # would make that node look slower than it is (`scheduler.learned_speeds`).
        self._runs = _Recent(MAX_CACHED)

    def register(self, name: str, info: Mapping[str, Any]) -> str:
        node_id, requeued = self._store.nodes.register(name, dict(info), self._clock())
        self._work.bump()   # an earlier incarnation's leases may have gone back to the queue
        for job_id in set(requeued):
            self._changes.bump(job_id)
        log.info("node %s registered (%s)", node_id, info.get("povray", "unknown POV-Ray"))
        return node_id

    def job(self, job_id: int) -> Job:
        """A job as submitted, for what never changes (size, scene, options, frames), never its state."""
        job = self._jobs.get(job_id)
        return job if job is not None else self._jobs.keep(job_id, self._store.jobs.get(job_id))

    def poll(self, node_id: str, wait: float, gone: Callable[[], bool] = lambda: False) -> tuple[Lease, Job] | None:
        """Lease the node its next unit; with `wait`, wait that long for one to be queued (unless `gone()`
        says the node left)."""
        seen = self._work.version()
        lease = self._lease(node_id, idle=wait > 0)
        if lease is None and wait > 0:
            self._work.wait(0, seen, min(wait, self._config.lease_timeout / 3, LONG_POLL_CAP), gone)
            if gone():
                return None
            lease = self._lease(node_id, idle=True)
        if lease is None:
            return None
        self._leased.keep(lease.token, lease.unit)
        self._changes.bump(lease.unit.job)
        # DEBUG: a busy farm leases hundreds of units a second; "done" lines (INFO) name the node too.
        log.debug("job %s unit %s (rows %s-%s) leased to %s", lease.unit.job, lease.unit.index,
                  lease.unit.row_start, lease.unit.row_end, node_id)
        return lease, self.job(lease.unit.job)

    def _lease(self, node_id: str, idle: bool) -> Lease | None:
        return self._store.units.lease_next(node_id, self._clock(), self._config.lease_timeout,
                                            self._choose, self._kinds[idle])

    def leasing(self, unit: Unit, node_id: str, idle: bool) -> kindparts.Leasing:
        """What the unit's kind may ask as the node leases it (its job, whether watched, the node's overhead,
        the speeds remembered; `idle`: an idle slot asks, not one asking ahead of its unit's end)."""
        return kindparts.Leasing(self.job(unit.job), node_id, self._machine,
                                 functools.partial(self._watched, unit.job),
                                 functools.partial(self._overhead, unit.job, node_id), lambda: self._speeds, idle)

    def _overhead(self, job_id: int, node_id: str) -> float:
        measured = self._overheads.get((job_id, node_id))
        return statistics.median(measured) if measured else 0.0

    def set_aside(self, job_id: int, unit_kind: str) -> None:
        """A unit of the job waits for a viewer (Worth.WAIT): `viewer_came` queues it again."""
        # Replaced whole, never changed in place: `viewer_came`, in another thread, may be reading it.
        self._set_aside[job_id] = self._set_aside.get(job_id, frozenset()) | {unit_kind}

    def viewer_came(self, job_id: int) -> None:
        """A viewer watches the job: units set aside while none did (a preview) are rendered after all (they
        are the first of their job in line), so a viewer that comes after the job started sees them too."""
        for unit_kind in self._set_aside.pop(job_id, ()):
            if self._store.units.queue_set_aside(job_id, unit_kind):
                self._work.bump()

    def loads_frame_cache(self, job: Job, unit: Unit) -> bool:
        """Whether the unit's node fetches what its frame's earlier units left (`frame_cache`)."""
        return kindparts.of_unit(unit.kind).loads_frame_cache(self._store, job, unit)

    def frame_cache_pending(self, job: Job, unit: Unit) -> bool:
        """Whether what the unit's node fetches with `frame_cache` is not complete yet as it is leased."""
        return kindparts.of_unit(unit.kind).frame_cache_pending(self._store, job, unit)

    def live_blocks(self, unit: Unit) -> bool:
        """Whether the unit's node sends its finished blocks as it renders: its kind does, and a viewer watches."""
        return kindparts.of_unit(unit.kind).sends_live(unit) and self._watched(unit.job)

    def heartbeat(self, node_id: str, progress: Mapping[str, float], upload_bps: float | None = None) -> list[str]:
        """Renew the node's leases (and note its upload rate); returns those it must abandon."""
        stale, jobs = self._store.units.heartbeat(node_id, progress, self._clock(), self._config.lease_timeout,
                                                  upload_bps)
        for job_id in jobs:
            self._changes.bump(job_id)
        return stale

    def complete(self, node_id: str, token: str, data: bytes, seconds: float, encoding: str = ZLIB,
                 run: UnitLog | None = None, overhead: float | None = None,
                 costs: tuple[tuple[int, int, float], ...] = ()) -> Completion:
        """Check and store a unit's result (`data` in `encoding`, see farm.rows.ENCODINGS) and its run's log;
        frames it completes go to the stitcher (after the log: a job is never done before its logs are in).
        `overhead`: what the unit cost the node besides tracing, when it says; `costs`: where its seconds went,
        by rows (kept for a radiosity pre-pass: the scene's next is cut by them)."""
        unit = self._unit_of(token)
        job = self.job(unit.job)
        part = kindparts.of_unit(unit.kind)
        data, encoding = _as_stored(part, unit, job, data, encoding)
        raw = _checked_result(part, unit, job, data, encoding)
        covered = part.unit_rows(job, unit)
        if not all(any(first <= start and end <= last for first, last in covered) for start, end, _ in costs):
            raise FarmError(Code.BAD_ARGUMENT, "costs name rows outside the unit's "
                            + ", ".join(f"{first}-{last}" for first, last in covered))
        done = self._store.units.complete(node_id, token, data, seconds, self._clock(), encoding, part.keeping(unit),
                                          costs if part.keeps_costs(unit) else ())
        self._leased.pop(token, None)
        if done.duplicate:
            log.debug("job %s unit %s: %s sent an accepted result again", unit.job, unit.index, node_id)
            return done
        self._meter.count("units_stored_total", kind=unit.kind)
        self._meter.count("stored_bytes_total", len(data), kind=unit.kind)
        if run is not None:
            self._keep_log(done.unit, node_id, "done", run)
        if overhead is not None and part.sizes_units(unit):
            samples = self._overheads.get((job.id, node_id), [])[-(OVERHEAD_SAMPLES - 1):]
            self._overheads.keep((job.id, node_id), [*samples, overhead])
        if job.shear and part.sizes_units(unit):
            now, key = self._clock(), (job.id, unit.frame)
            self._runs.keep(key, self._runs.get(key, {})).setdefault(node_id, []).append((now - seconds, now))
            self._learn_speeds(job, unit.kind, done.complete_frames)
        part.stored(self._stitcher, self._work, kindparts.Stored(job, unit, node_id, data, raw, seconds, done))
        self._changes.bump(job.id)
        return done

    def _learn_speeds(self, job: Job, kind: str, frames: tuple[int, ...]) -> None:
        """Sheared frames of the job are in: what each one's units took tells the nodes' speeds apart (each
        frame once: a frame's units teach nothing more when a later one is in)."""
        if not frames:
            return
        names = {node.id: node.name for node in self._store.nodes.live()}
        for frame in frames:
            finished = [replace(unit, node=names[unit.node])
                        for unit in self._store.units.frame_costs(job.id, frame, kind) if unit.node in names]
            busy = {names[node]: scheduler.union_seconds(runs)
                    for node, runs in self._runs.pop((job.id, frame), {}).items() if node in names}
            self._speeds = scheduler.learned_speeds(self._speeds, finished, busy)
            log.debug("job %s frame %s: node speeds %s", job.id, frame, self._speeds)

    def result_limit(self, token: str) -> int:
        """The most bytes a result for the lease may hold, as its kind says (POV-Ray: its unit's rows, a
        pre-pass its cache, compressed at worst). STALE_LEASE for a lease that is not current."""
        unit = self._unit_of(token)
        return kindparts.of_unit(unit.kind).result_limit(unit, self.job(unit.job))

    def _unit_of(self, token: str) -> Unit:
        unit = self._leased.get(token) or self._store.units.by_lease(token)
        if unit is None:
            raise FarmError(Code.STALE_LEASE, f"lease {token} is unknown; the result was discarded")
        return unit

    def live_job(self, node_id: str, token: str) -> int:
        """The job of the node's current lease `token` (STALE_LEASE when it is not current)."""
        return self._current(node_id, token).job

    def _current(self, node_id: str, token: str) -> Unit:
        """The unit of the node's current lease `token` (STALE_LEASE when it is not current)."""
        unit = self._unit_of(token)
        if unit.node != node_id or unit.state is not UnitState.LEASED:
            raise FarmError(Code.STALE_LEASE, f"lease {token} is no longer current")
        return unit

    def watched_leases(self, node_id: str, tokens: Iterable[str]) -> list[str]:
        """Those of the node's leases `tokens` whose finished blocks a viewer watches (`live_blocks`)."""
        found = []
        for token in tokens:
            unit = self._leased.get(token) or self._store.units.by_lease(token)
            if unit is not None and unit.node == node_id and self.live_blocks(unit):
                found.append(token)
        return found

    def fail(self, node_id: str, token: str, error: str, scene_error: bool, run: UnitLog | None = None) -> None:
        """Record a unit's failure (the rules say whether it is retried or fails its job) and its run's log,
        the log first: whoever sees the job fail finds it."""
        if run is not None:
            self._keep_log(self._current(node_id, token), node_id, "failed", run)
        judge = functools.partial(_judge, error=error, scene_error=scene_error,
                                  max_attempts=self._config.max_attempts, now=self._clock())
        unit, verdict = self._store.units.fail(node_id, token, error, self._clock(), judge)
        self._leased.pop(token, None)
        self._meter.count("units_failed_total", kind=unit.kind)
        kindparts.of_unit(unit.kind).count_failure(self._meter, error, scene_error)
        self._changes.bump(unit.job)
        self._work.bump()
        log.warning("job %s unit %s failed on %s%s: %s", unit.job, unit.index, node_id,
                    " (scene error)" if scene_error else "", error.splitlines()[0] if error else "")
        if verdict.fail_job:
            log.warning("job %s failed: %s", unit.job, verdict.job_error.splitlines()[0])

    def release(self, node_id: str, token: str) -> None:
        unit = self._store.units.release(node_id, token, self._clock())
        self._leased.pop(token, None)
        self._work.bump()
        self._changes.bump(unit.job)

    def frame_cache(self, node_id: str, token: str, wait: float = 0.0,
                    gone: Callable[[], bool] = lambda: False) -> bytes:
        """What the leased unit's frame's earlier units left for it, as its kind gives it (POV-Ray: the
        frame's radiosity cache). With `wait`, waits up to that many seconds of wall clock for it to be
        complete (else NOT_READY). STALE_LEASE for a lease that is not the node's current one."""
        deadline = time.monotonic() + min(wait, LONG_POLL_CAP)   # a long poll's own wall clock, as `poll`'s
        while True:
            unit = self._current_leased(node_id, token)
            part = kindparts.of_unit(unit.kind)
            seen = self._changes.version(unit.job)   # before the question: a change after it wakes the wait
            try:
                return part.frame_cache(self._store, unit)
            except FarmError as err:
                if err.code is Code.NOT_READY and part.frame_cache_stalled(self._store, unit):
                    # Its node's slots may all be waiting so, while what they wait for needs one of them.
                    self.release(node_id, token)
                    raise FarmError(Code.STALE_LEASE, f"lease {token} is handed back: what it waits for waits "
                                                      "for a node") from None
                left = deadline - time.monotonic()
                if err.code is not Code.NOT_READY or left <= 0 or gone():
                    raise
            self._changes.wait(unit.job, seen, left, gone)

    def _current_leased(self, node_id: str, token: str) -> Unit:
        """`_current` read from the store, not the leases remembered in memory: a fetch that waits must see its
        lease expire or be handed back meanwhile."""
        unit = self._store.units.by_lease(token)
        if unit is None or unit.node != node_id or unit.state is not UnitState.LEASED:
            raise FarmError(Code.STALE_LEASE, f"lease {token} is no longer current")
        return unit


def declare_unit_metrics(meter: Meter) -> None:
    kinds = [(("kind", unit),) for kind in jobkinds.KINDS.values() for unit in kind.units]
    meter.declare("units_stored_total", "counter", "Units whose results were stored, by kind (rows: strips).",
                  labels=kinds)
    meter.declare("stored_bytes_total", "counter", "Bytes of results stored (compressed), by kind of unit.",
                  labels=kinds)
    meter.declare("units_failed_total", "counter", "Units whose node reported a failure, by kind.", labels=kinds)
    for kind in jobkinds.KINDS.values():
        jobkinds.part(kind.controller).declare_metrics(meter)


class _KindsAsked:
    """The store's questions about a unit it leases (farm.store.units.UnitKinds), answered by the unit's
    kind's part (kindparts) with what the dispatcher knows."""

    def __init__(self, dispatcher: Dispatcher, idle: bool):
        self._dispatcher, self._idle = dispatcher, idle

    def worth(self, unit: Unit, queue: policy.Queue, node_id: str) -> Worth:
        worth = kindparts.of_unit(unit.kind).worth(unit, queue, self._dispatcher.leasing(unit, node_id, self._idle))
        if worth is Worth.WAIT:
            self._dispatcher.set_aside(unit.job, unit.kind)
        return worth

    def cut(self, unit: Unit, queue: policy.Queue, node_id: str) -> int | None:
        return kindparts.of_unit(unit.kind).cut(unit, queue, self._dispatcher.leasing(unit, node_id, self._idle))

    def binds_frames(self, unit: Unit) -> bool:
        return kindparts.binds_frames(unit)

    def keeping(self, unit: Unit) -> Keeping:
        return kindparts.of_unit(unit.kind).keeping(unit)

    @property
    def unbound_units(self) -> tuple[str, ...]:
        return kindparts.unbound_units()


def _judge(unit: Unit, failed_on: frozenset, live: frozenset, *, error: str, scene_error: bool,
           max_attempts: int, now: float):
    return policy.after_failure(unit, error, scene_error, max_attempts, failed_on, live, now,
                                retried=kindparts.of_unit(unit.kind).retries(unit))


def _as_stored(part: kindparts.ControllerPart, unit: Unit, job: Job, data: bytes, encoding: str) -> tuple[bytes, str]:
    """A result as it is checked, kept and relayed: rows packed for a slow uplink (bz2) as FILTERED, which every
    viewer decodes (farm.rows.as_stored)."""
    try:
        return as_stored(data, encoding, unit.raw_bytes(job), unit.row_bytes(job))
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"{part.result_name} rejected: {err}") from None


def _checked_result(part: kindparts.ControllerPart, unit: Unit, job: Job, data: bytes, encoding: str) -> bytes:
    """The result as its kind checks it (POV-Ray: the raw rows, inflated and unfiltered to check them)."""
    try:
        return part.check_result(unit, job, data, encoding)
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"{part.result_name} rejected: {err}") from None
