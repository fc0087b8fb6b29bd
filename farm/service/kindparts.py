"""The controller's side of the kind seam (farm.jobkinds, docs/kinds.md): what a kind's controller part
does, the one place the rest of the controller asks for it, and the pieces a kind whose job is one unit
over another job's frames shares (the video, farm.extras.checksums).

The dispatcher, the stitcher, the feed and the API ask `of_job(kind)` or `of_unit(unit kind)` and call the
part; none of them names a kind. So do the store and the leasing rules, through the dispatcher: how a
remainder of rows is cut, whether a unit chosen is still worth leasing (and what becomes of it when not),
whether it binds its frames' build, whether a failed one is retried, how its result is kept. A part holds no state of its own: what it needs of the controller comes
with each call (`farm.service.Services` to submit, the stitcher to assemble).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from farm import jobkinds, limits
from farm.faults import Code, FarmError
from farm.planning import UnitPlan
from farm.meter import Meter
from farm.policy import Queue
from farm.records import Job, JobSpec, StoredRows, Unit
from farm.service.changes import Changes
from farm.service.files import write_atomically
from farm.states import ENDED, JobState
from farm.store import PLAIN, Completion, Keeping, Store, Worth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stored:
    """A unit's result, checked and stored (`ControllerPart.stored`)."""
    job: Job
    unit: Unit
    node_id: str
    data: bytes       # as delivered
    raw: bytes        # as `check_result` returned it
    seconds: float
    done: Completion


@dataclass(frozen=True)
class Leasing:
    """What a kind's part may ask of the controller as a unit of its job is leased (the dispatcher answers)."""
    job: Job
    node_id: str
    machine: str                      # the box the controller runs on (farm.hostos)
    watched: Callable[[], bool]       # whether a viewer watches the job now
    overhead: Callable[[], float]     # the node's fixed seconds per unit of the job, as measured (0: not yet)
    speeds: Callable[[], Mapping[str, float]]   # node name -> speed of one of its runs, from earlier frames
    idle: bool = False                # an idle slot asks (a long poll), not one asking ahead of its unit's end


class ControllerPart:
    """A kind's controller part. Every method has the behaviour of a kind that has no such thing."""
    result_name = "the result"     # what a refused result is called in the fault ("strip rows", "the video")
    progress_unit = ""     # the kind of unit whose rows measure its job's progress ("": none, done or not)
    # A kind of unit that is no part of its job's work ("": none): left out of its job's unit counts and of
    # the farm's limit of open units, and never holding a frame back (its frames' other units' Keeping.optional).
    uncounted_unit = ""
    preview_unit = ""      # the kind of unit whose state is its job's status `preview` ("": none)
    unbound_units: frozenset[str] = frozenset()   # kinds of unit whose lease binds no build (`binds_frames`)

    def submit(self, services: Any, params: dict) -> int:
        """Queue a job of the kind from `params` (jobs.kind: plain XML-RPC values, checked here); its id."""
        raise FarmError(Code.BAD_ARGUMENT, "this kind of job is not submitted with jobs.kind")

    def task_image(self, unit: Unit, job: Job) -> tuple[int, int, tuple[str, ...]]:
        """The width, height and options a node's task for the unit carries (nodes.poll): the job's."""
        return job.width, job.height, job.options

    def result_limit(self, unit: Unit, job: Job) -> int:
        """The most bytes a unit's result may hold, bounding the request before it is read."""
        raise NotImplementedError

    def check_result(self, unit: Unit, job: Job, data: bytes, encoding: str) -> bytes:
        """A result as it arrives (ValueError, in a sentence, for one that is wrong); what `stored` gets as
        `raw` (POV-Ray's rows inflated, to copy into the frame's canvas)."""
        raise NotImplementedError

    def stored(self, stitcher: Any, work: Changes, result: Stored) -> None:
        """The unit's result is stored: hand the stitcher what it assembles (`frames_ready`)."""

    def sizes_units(self, unit: Unit) -> bool:
        """Whether what the unit cost its node besides its work sizes the job's next units (farm.scheduler)."""
        return False

    def assemble(self, stitcher: Any, job: Job, frame: int) -> None:
        """In the stitcher's maintenance thread: every unit of the frame is stored; write the job's result
        and record it (`store.jobs.finish_frame`), or fail the job."""
        raise NotImplementedError

    def feed_pieces(self, unit: StoredRows, job: Job) -> list[dict[str, Any]]:
        """A stored unit as viewers get it (farm.service.views): pieces of rows, or none."""
        return []

    def source_frame(self, services: Any, job: Job, frame: int) -> Path:
        """A file a unit of the job reads from the farm (nodes.source_frame): a frame of another job."""
        raise FarmError(Code.BAD_ARGUMENT, f"a job of kind {job.kind} reads no frames")

    # -- how its units are leased, kept and failed (the dispatcher asks, for the store and the policy) --

    def worth(self, unit: Unit, queue: Queue, leasing: Leasing) -> Worth:
        """Whether a unit chosen to lease is still worth it, and what becomes of it when not: it is leased."""
        return Worth.LEASE

    def cut(self, unit: Unit, queue: Queue, leasing: Leasing) -> int | None:
        """The end row of the unit a node leases off a remainder (None: left to faster nodes): all of it."""
        return unit.row_end

    def binds_frames(self, unit: Unit) -> bool:
        """Whether leasing the unit binds its frames to its node's build (farm.builds, policy.fits_frames):
        unless its kind of unit is one of `unbound_units`, which is what the store's reads of a frame's build
        go by (a kind declares it there, never by overriding this)."""
        return unit.kind not in self.unbound_units

    def retries(self, unit: Unit) -> bool:
        """Whether a unit that failed (its scene not broken) is tried again, or dropped as its job goes on: tried."""
        return True

    def keeping(self, unit: Unit) -> Keeping:
        """How the store keeps the unit's result (farm.store.Keeping): fed to viewers, completing no frame."""
        return PLAIN

    def sends_live(self, unit: Unit) -> bool:
        """Whether a node sends the unit's finished blocks as it renders, while a viewer watches: as its kind
        declares (`jobkinds.Kind.live_units`, which the node goes by too)."""
        return jobkinds.sends_live(unit.kind)

    def loads_frame_cache(self, store: Store, job: Job, unit: Unit) -> bool:
        """Whether the node fetches a cache its frame's earlier units left (nodes.radiosity_cache): no."""
        return False

    def keeps_costs(self, unit: Unit) -> bool:
        """Whether what the unit's rows cost, as its node measured them, is kept for later jobs: no."""
        return False

    def unit_rows(self, job: Job, unit: Unit) -> list[tuple[int, int]]:
        """The frame's rows the unit covers, as pieces [start, end) in the order its node goes over them: its
        own rows."""
        return [(unit.row_start, unit.row_end)]

    def frame_cache_pending(self, store: Store, job: Job, unit: Unit) -> bool:
        """Whether that cache is not complete yet as the unit is leased (its node waits for it): no."""
        return False

    def frame_cache_stalled(self, store: Store, unit: Unit) -> bool:
        """Whether that cache, not complete yet, waits for a unit still in the queue: the unit's node, which
        may hold the slot that unit needs, should hand it back. No."""
        return False

    def frame_cache(self, store: Store, unit: Unit) -> bytes:
        """That cache, compressed, for the unit's node (BAD_ARGUMENT: there is none)."""
        raise FarmError(Code.BAD_ARGUMENT, f"frame {unit.frame} of job {unit.job} has no cache of its units")

    def declare_metrics(self, meter: Meter) -> None:
        """Declare the kind's own metrics (farm.meter), so a scrape shows them from the start: none."""

    def count_failure(self, meter: Meter, error: str, scene_error: bool) -> None:
        """Count a unit's failure in the kind's own metrics: none."""



def of_job(kind: str) -> ControllerPart:
    """The controller part of kind `kind` (BAD_ARGUMENT for a kind not loaded here)."""
    return jobkinds.part(jobkinds.get(kind).controller)


def of_unit(unit_kind: str) -> ControllerPart:
    """The controller part of the kind whose jobs hold units of `unit_kind`."""
    return jobkinds.part(jobkinds.of_unit(unit_kind).controller)


def binds_frames(unit: Unit) -> bool:
    """Whether leasing the unit binds its frames' build, as its kind says (for `policy.choose_unit`)."""
    return of_unit(unit.kind).binds_frames(unit)


def _parts() -> list[ControllerPart]:
    return [jobkinds.part(kind.controller) for kind in list(jobkinds.KINDS.values())]


def uncounted_units() -> tuple[str, ...]:
    """Every loaded kind's `uncounted_unit`: the kinds of unit the farm's limit of open units leaves out, and
    that hold no frame back when the stitcher looks for complete frames (after a restart too)."""
    return tuple(sorted({part.uncounted_unit for part in _parts()} - {""}))


def unbound_units() -> tuple[str, ...]:
    """Every loaded kind's `unbound_units`: the kinds of unit the queue's view of a frame's build leaves out."""
    return tuple(sorted({unit for part in _parts() for unit in part.unbound_units}))


# -- a job over another job's frames, with one unit whose result is one file ------------------------

def frames_source(services: Any, source_id: int, kind: str) -> Job:
    """The job whose frames a new job of `kind` reads: one that has frames (or will). UNKNOWN_JOB for no
    such job; BAD_ARGUMENT for one that failed or was canceled, or whose result is not frames."""
    source = services.store.jobs.get(source_id)
    if source.state in ENDED and source.state is not JobState.DONE:
        raise FarmError(Code.BAD_ARGUMENT, f"job {source_id} is {source.state.value}: it has no frames to "
                                           f"make a {kind} of")
    if source.kind != jobkinds.POVRAY:
        raise FarmError(Code.BAD_ARGUMENT, f"job {source.id} is a {source.kind}, not frames to make a {kind} of")
    return source


def queue_one_unit(services: Any, spec: JobSpec) -> int:
    """Store a job of one unit (of the kind's one kind of unit) and wake whoever waits; its id."""
    unit_kind = jobkinds.get(spec.kind).units[0]
    limits.check_units(spec, 1, services.store.units.open_count(uncounted_units()))
    job_id = services.store.jobs.create(spec, [UnitPlan(1, 1, 0, spec.height, unit_kind)], services.clock())
    services.changes.bump()
    services.work.bump()
    return job_id


def stored_frame(services: Any, job: Job, source: int, frames: range, frame: int) -> Path:
    """The stored image of frame `frame` of job `source`, which `job` reads (frames `frames`)."""
    if frame not in frames:
        raise FarmError(Code.BAD_ARGUMENT, f"job {job.id} reads frames {frames.start}-{frames.stop - 1}, "
                                           f"not frame {frame}")
    stored = services.store.jobs.frame(source, frame)
    if stored is None or not stored.path:
        raise FarmError(Code.JOB_NOT_DONE, f"frame {frame} of job {source} is not written")
    return services.files.frame_image(source, frame)


class FileResult(ControllerPart):
    """A kind whose job's one unit hands in one file, stored as the job's result (its kind's suffix)."""
    max_bytes = 0

    def result_limit(self, unit: Unit, job: Job) -> int:
        return self.max_bytes

    def check_result(self, unit: Unit, job: Job, data: bytes, encoding: str) -> bytes:
        if len(data) > self.max_bytes:
            raise ValueError(f"it is {len(data)} bytes; the limit is {self.max_bytes}")
        self.check_file(job, data)
        return b""

    def check_file(self, job: Job, data: bytes) -> None:
        """ValueError for a file that is not what the kind makes."""

    def stored(self, stitcher: Any, work: Changes, result: Stored) -> None:
        log.info("job %s %s (%d bytes) done by %s in %.2fs", result.job.id, result.job.kind, len(result.data),
                 result.node_id, result.seconds)
        stitcher.frames_ready(result.job.id, (result.unit.frame,))

    def assemble(self, stitcher: Any, job: Job, frame: int) -> None:
        store = stitcher.store
        stored = store.units.stored_for_frame(job.id, frame, jobkinds.get(job.kind).units[0])
        if not stored:
            store.jobs.fail(job.id, f"the {job.kind} unit's result is missing", stitcher.clock())
            return
        path = stitcher.files.frame_image(job.id, frame, jobkinds.result_suffix(job.kind))
        write_atomically(path, stored[0].data, f"the {job.kind}")
        if store.jobs.finish_frame(job.id, frame, str(path), stitcher.clock()):
            log.info("job %s done: %s", job.id, path)
