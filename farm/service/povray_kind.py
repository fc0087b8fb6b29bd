"""POV-Ray's kind on the controller (its controller part, farm.jobkinds): a scene rendered into frames.
Its jobs are planned into units of rows (with a frame's radiosity pre-pass and a preview: farm.planning,
farm.service.submission); a frame's remainder is cut as nodes ask (policy.cut_remainder), a preview only
for viewers waits while none watches, a pre-pass is skipped when its frame goes out whole, a preview binds
no build and is not retried; a unit's result is its rows (a pre-pass's: its radiosity cache, which the
frame's strips then load), checked by decoding them; the stitcher copies rows into their frame's canvas
and writes each complete frame as a PNG; viewers get the rows as pieces to paint, and live blocks."""

from __future__ import annotations

import logging
from typing import Any

from farm import builds, policy, radiosity, tags
from farm.animation import Animation
from farm.api import args
from farm.faults import Code, FarmError
from farm.kinds import PRETRACE, PREVIEW, ROWS, PreviewMode, preview_size
from farm.options import preview_options
from farm.radiosity import MAX_RADIOSITY_CACHE, NODE_FOLDS_BANDS, NODE_WAITS_FOR_CACHE, band_pieces
from farm.records import Job, StoredRows, Unit
from farm.meter import Meter
from farm.policy import Queue
from farm.rows import ZLIB, compress_rows, decompress_capped, deflate_bound, split_frames
from farm.shear import pretrace_options
from farm.service.changes import Changes
from farm.service.kindparts import ControllerPart, Leasing, Stored
from farm.service.submission import MAX_SIDE, Submission
from farm.store import PLAIN, Keeping, Store, Worth

log = logging.getLogger(__name__)

# A strip of a frame with a radiosity pre-pass loads its cache and parses the scene again, about a second of
# CPU on balcony, where a row of 32-pixel blocks of its sky traces in 0.1 s: at least two block rows.
CACHE_LOADING_BLOCKS = 2


# Rows complete their frames (a preview never holds one back); a pre-pass is not fed to viewers, and once
# every part of a frame's pre-pass is in, or in flight, the frame's rows that waited for its cache go: a
# node that can wait for the cache starts its strip then (NODE_WAITS_FOR_CACHE), others once it is complete.
_KEEPING = {ROWS: Keeping(completes_frames=True, optional=PREVIEW),
            PRETRACE: Keeping(fed=False, releases_frame=True, releases_early=True)}


class PovrayPart(ControllerPart):
    result_name = "strip rows"
    progress_unit = ROWS          # progress is rows rendered
    uncounted_unit = PREVIEW      # a preview is no strip of the image
    preview_unit = PREVIEW
    unbound_units = frozenset({PREVIEW})   # a preview is never part of the image: it goes anywhere
    waits_for = {ROWS: PRETRACE}  # a frame's rows wait for its radiosity pre-pass: their strips load its cache

    def submit(self, services: Any, params: dict) -> int:
        """jobs.submit's spec (jobs.kind "povray" takes the same)."""
        return services.submissions.submit(submission(params), self.waits_for)

    def task_image(self, unit: Unit, job: Job) -> tuple[int, int, tuple[str, ...]]:
        if unit.kind == PREVIEW:
            # The preview's own size, no anti-aliasing and no radiosity: a node that does not know the kind
            # renders it as ordinary rows, and that is all it is.
            return (*preview_size(job.width, job.height), preview_options(job.options, job.pretrace))
        if unit.kind == PRETRACE:
            return job.width, job.height, pretrace_options(job.options)   # the frame's own blocks (farm.shear)
        return job.width, job.height, job.options

    def result_limit(self, unit: Unit, job: Job) -> int:
        """Its unit's rows (a pre-pass: its cache) compressed at worst."""
        if unit.kind == PRETRACE:
            return deflate_bound(MAX_RADIOSITY_CACHE)
        return deflate_bound(unit.scanline_bytes(job))

    def check_result(self, unit: Unit, job: Job, data: bytes, encoding: str) -> bytes:
        """The unit's raw rows, inflated (and unfiltered) to check them (a pre-pass's cache is only checked)."""
        if unit.kind == PRETRACE:
            if encoding != ZLIB:
                raise ValueError("a radiosity cache travels as plain zlib.")
            if data:
                decompress_capped(data, MAX_RADIOSITY_CACHE)
            return b""
        return unit.decode(job, data, encoding)

    def stored(self, stitcher: Any, work: Changes, result: Stored) -> None:
        job, unit = result.job, result.unit
        if unit.kind == PRETRACE:
            work.bump()   # the frame's units were waiting for this
            log.info("job %s frame %s radiosity pre-pass done by %s in %.2fs (rows %d-%d: %s)", job.id, unit.frame,
                     result.node_id, result.seconds, unit.row_start + 1, unit.row_end,
                     "cache shared" if result.data else "no radiosity samples")
        elif unit.kind == PREVIEW:   # for viewers only: it never reaches the frame's image
            log.info("job %s frame %s preview done by %s in %.2fs", job.id, unit.frame, result.node_id,
                     result.seconds)
        else:
            log.info("job %s unit %s done by %s in %.2fs", job.id, unit.index, result.node_id, result.seconds)
            stitcher.add_rows(job, unit, result.raw)
            if result.done.complete_frames:
                stitcher.frames_ready(job.id, result.done.complete_frames)
            elif job.shear:
                # A node declined while its sheared units were unmeasured or in hand (scheduler._even_cut),
                # its idle slot parked in a long poll: with this unit in, the rest may be cut for it now.
                work.bump()

    def sizes_units(self, unit: Unit) -> bool:
        return unit.kind == ROWS

    def assemble(self, stitcher: Any, job: Job, frame: int) -> None:
        stitcher.stitch_frame(job, frame)

    def worth(self, unit: Unit, queue: Queue, leasing: Leasing) -> Worth:
        """A preview only for viewers waits while none watches; a frame's radiosity pre-pass is done without
        a cache when the frame goes out whole (policy.pretrace_worth_it): its one render makes its own; a band
        of it waits for a box whose runs are not all pretracing the frame's other bands (policy.band_waits).
        A strip of a frame whose pre-pass is not all in goes only to a node that can wait for the cache, and
        to none while a band of it is back in the queue (it waits until that band is leased again)."""
        if unit.kind == PREVIEW:
            watched = leasing.job.preview is not PreviewMode.WATCHED or leasing.watched()
            return Worth.LEASE if watched else Worth.WAIT
        if unit.kind == PRETRACE and not policy.pretrace_worth_it(queue, unit, ROWS, leasing.watched(),
                                                                  leasing.machine):
            return Worth.EMPTY
        if unit.kind == PRETRACE and policy.band_waits(queue, unit, leasing.node_id):
            return Worth.DECLINE
        if unit.kind == PRETRACE and leasing.job.fold and not _node_says(queue, leasing.node_id, NODE_FOLDS_BANDS):
            return Worth.DECLINE    # a node from before folded bands would pretrace the band's upper rows alone
        if unit.kind == ROWS and leasing.job.pretrace and queue.frame_kind_queued(unit.job, unit.frame, PRETRACE):
            return Worth.HOLD       # a band of its pre-pass went back to the queue: that goes first
        if unit.kind == ROWS and leasing.job.pretrace and queue.frame_kind_open(unit.job, unit.frame, PRETRACE) \
                and not _waits_for_cache(queue, leasing.node_id):
            return Worth.DECLINE    # its cache is not complete yet, and this node cannot wait for it
        return Worth.LEASE

    def cut(self, unit: Unit, queue: Queue, leasing: Leasing) -> int | None:
        """The guided cut of a frame's remainder (farm.scheduler): from its measured units, the live slots
        and the node's measured overhead; finer while a viewer watches; strips that load a radiosity cache
        at least CACHE_LOADING_BLOCKS block rows; a sheared frame's (farm.shear) in shares that cost alike."""
        least = CACHE_LOADING_BLOCKS if leasing.job.pretrace else 1
        return policy.cut_remainder(queue, unit, leasing.node_id, leasing.job.block, leasing.watched(),
                                    leasing.machine, leasing.overhead(), least, even=bool(leasing.job.shear),
                                    known=leasing.speeds(), idle_slot=leasing.idle)

    def retries(self, unit: Unit) -> bool:
        return unit.kind != PREVIEW     # a preview only helps early on: not worth a retry, never worth the job

    def keeping(self, unit: Unit) -> Keeping:
        return _KEEPING.get(unit.kind, PLAIN)

    def loads_frame_cache(self, store: Store, job: Job, unit: Unit) -> bool:
        """A strip of a frame whose radiosity pre-pass left a cache (or is still rendering) loads it."""
        return job.pretrace and unit.kind == ROWS and (
            store.units.has_frame_result(job.id, unit.frame, PRETRACE)
            or store.units.frame_kind_open(job.id, unit.frame, PRETRACE))

    def keeps_costs(self, unit: Unit) -> bool:
        """A pre-pass band's pretrace by rows: the scene's next pre-pass is cut by it."""
        return unit.kind == PRETRACE

    def unit_rows(self, job: Job, unit: Unit) -> list[tuple[int, int]]:
        """A band of a folded pre-pass covers its mirror rows too (farm.radiosity.band_pieces)."""
        return band_pieces(job.height, unit.row_start, unit.row_end, job.fold and unit.kind == PRETRACE)

    def frame_cache_pending(self, store: Store, job: Job, unit: Unit) -> bool:
        """A strip leased while a part of its frame's radiosity pre-pass is still rendering."""
        return job.pretrace and unit.kind == ROWS and store.units.frame_kind_open(job.id, unit.frame, PRETRACE)

    def frame_cache_stalled(self, store: Store, unit: Unit) -> bool:
        """A band of the frame's pre-pass went back to the queue (its node died or failed it) while a strip
        waits for the cache: the strip's node, whose slots may all be waiting so, should take the band."""
        return unit.kind == ROWS and store.units.frame_kind_queued(unit.job, unit.frame, PRETRACE)

    def frame_cache(self, store: Store, unit: Unit) -> bytes:
        """The frame's radiosity cache; when its pre-pass was cut into bands, their caches merged. NOT_READY
        while a part of the pre-pass is still rendering; BAD_ARGUMENT when it left none (a strip leased before
        is then handed back and leased again to render without one)."""
        if store.units.frame_kind_open(unit.job, unit.frame, PRETRACE):
            raise FarmError(Code.NOT_READY, f"frame {unit.frame} of job {unit.job}: its radiosity pre-pass is "
                                            "still rendering")
        caches = store.units.frame_results(unit.job, unit.frame, PRETRACE)
        if not caches:
            raise FarmError(Code.BAD_ARGUMENT, f"frame {unit.frame} of job {unit.job} has no radiosity cache")
        if len(caches) == 1:
            return caches[0]
        # Each part of the frame's pre-pass pretraced a band of it: the strips load all their samples.
        merged = radiosity.merge_caches([decompress_capped(cache, MAX_RADIOSITY_CACHE) for cache in caches])
        if len(merged) > MAX_RADIOSITY_CACHE:
            raise FarmError(Code.BAD_ARGUMENT, f"frame {unit.frame} of job {unit.job} has a radiosity cache of "
                                               f"{len(merged)} bytes, more than the {MAX_RADIOSITY_CACHE} a node takes")
        return compress_rows(merged)

    def declare_metrics(self, meter: Meter) -> None:
        meter.declare("povray_failures_total", "counter", "Units POV-Ray failed, by how it failed.",
                      labels=[(("kind", kind),) for kind in policy.FAILURE_KINDS])

    def count_failure(self, meter: Meter, error: str, scene_error: bool) -> None:
        """How POV-Ray failed, from its node's words."""
        meter.count("povray_failures_total", kind=policy.failure_kind(error, scene_error))

    def feed_pieces(self, unit: StoredRows, job: Job) -> list[dict[str, Any]]:
        """One piece per frame, each its own zlib stream in the encoding the node delivered (the compact
        filtered form from current nodes). A preview's piece carries the preview's own size."""
        if unit.kind == PREVIEW:
            width, height = preview_size(job.width, job.height)
            return [{"frame": unit.frame, "row_start": unit.row_start, "row_end": unit.row_end, "rows": unit.data,
                     "kind": PREVIEW, "width": width, "height": height, "encoding": unit.encoding}]
        if unit.frame == unit.frame_last:
            return [{"frame": unit.frame, "row_start": unit.row_start, "row_end": unit.row_end, "rows": unit.data,
                     "kind": ROWS, "encoding": unit.encoding}]
        frames = unit.frame_last - unit.frame + 1
        pieces = split_frames(unit.data, unit.encoding, frames * (unit.row_end - unit.row_start) * job.row_bytes,
                              job.row_bytes, frames)
        return [{"frame": frame, "row_start": unit.row_start, "row_end": unit.row_end, "rows": rows,
                 "kind": ROWS, "encoding": unit.encoding}
                for frame, rows in zip(range(unit.frame, unit.frame_last + 1), pieces)]


PART = PovrayPart()


def _waits_for_cache(queue: Queue, node_id: str) -> bool:
    """Whether the node can start a strip before its frame's radiosity cache is complete."""
    return _node_says(queue, node_id, NODE_WAITS_FOR_CACHE)


def _node_says(queue: Queue, node_id: str, ability: str) -> bool:
    """Whether the live node said it has `ability` (true under that name in its info) when it registered."""
    return any(node.id == node_id and node.says(ability) for node in queue.live_nodes())


def submission(spec: dict) -> Submission:
    """A POV-Ray job's spec (jobs.submit), checked as it came over the wire."""
    options = spec.get("options", [])
    if not isinstance(options, list):
        raise FarmError(Code.BAD_ARGUMENT, "options must be a list of POV-Ray options")
    strips: Any = spec.get("strips", "auto")
    if strips != "auto":
        strips = args.whole("strips", strips, 1, 1024)
    scene = args.text("scene", spec.get("scene"), 1000)
    return Submission(
        bundle=args.text("bundle", spec.get("bundle"), 100), scene=scene,
        width=args.whole("width", spec.get("width"), 1, MAX_SIDE),
        height=args.whole("height", spec.get("height"), 1, MAX_SIDE),
        options=tuple(options), bits=args.whole("bits", spec.get("bits", 8), 8, 16),
        priority=args.whole("priority", spec.get("priority", 0), -1000, 1000),
        name=args.text("name", spec.get("name", scene.rsplit("/", 1)[-1].rsplit(".", 1)[0] or scene), 200),
        animation=Animation.from_spec(spec["animation"]) if spec.get("animation") else None,
        strips=strips, radiosity_prepass=args.flag("radiosity_prepass", spec.get("radiosity_prepass", True)),
        interleave=args.flag("interleave", spec.get("interleave", True)),
        preview=_preview_mode(spec.get("preview", "auto")),
        require=_tags("require", spec.get("require", [])), prefer=_tags("prefer", spec.get("prefer", [])),
        after=_job_ids(spec.get("after", [])), povray=_pin(spec.get("povray_version", "")))


def _pin(value: Any) -> str:
    try:
        return builds.check_pin(value)
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, str(err)) from None


def _job_ids(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise FarmError(Code.BAD_ARGUMENT, "after must be a list of job ids")
    return tuple(args.job_id(job) for job in value)


def _tags(what: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise FarmError(Code.BAD_ARGUMENT, f"{what} must be a list of node tags")
    return tags.parse(value, what)


def _preview_mode(value: Any) -> PreviewMode:
    try:
        return PreviewMode.parse(value)
    except ValueError as err:
        raise FarmError(Code.BAD_ARGUMENT, str(err)) from None
