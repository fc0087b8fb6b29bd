"""Finished frames become images off the RPC path.

Nodes hand in units; the RPC thread that stores a unit copies its rows into the
frame's canvas (rows it has just inflated to check them anyway) and, when the
unit completes frames, queues them here. The maintenance thread drains the
queue: it encodes and writes each frame's PNG and records it, and viewers and
`jobs.wait` hear of it the moment it is written. No node waits for a frame to be
stitched.

A frame whose canvas is incomplete (the controller restarted while it rendered,
or canvases were over their memory budget) is stitched from the stored units
instead, each unit inflated once for all the frames it holds.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from farm import strips
from farm.faults import FarmError
from farm.images.png import encode_png
from farm.images.raster import Raster
from farm.kinds import ROWS
from farm.records import Job, StoredRows, Unit
from farm.service import kindparts
from farm.service.changes import Changes
from farm.service.files import Files, write_atomically
from farm.store import Store

log = logging.getLogger(__name__)

CANVAS_BUDGET = 256 * 1024 * 1024   # bytes of frames being filled in memory at once


@dataclass
class _Canvas:
    pixels: bytearray
    rows_filled: int = 0


@dataclass
class _Queue:
    frames: list[tuple[int, int]] = field(default_factory=list)
    wake: threading.Event = field(default_factory=threading.Event)


class Stitcher:
    def __init__(self, store: Store, files: Files, changes: Changes, clock: Callable[[], float],
                 budget: int = CANVAS_BUDGET):
        self._store, self._files, self._changes, self._clock = store, files, changes, clock
        self._budget = budget
        self._canvases: dict[tuple[int, int], _Canvas] = {}
        self._used = 0
        self._lock = threading.Lock()
        self._queue = _Queue()
        self._unpacked = _LastUnit()   # within a drain: the last stored unit inflated

    # -- what a kind's part assembling a job's result reads (farm.service.kindparts) ------------

    @property
    def store(self) -> Store:
        return self._store

    @property
    def files(self) -> Files:
        return self._files

    def clock(self) -> float:
        return self._clock()

    # -- from RPC threads ---------------------------------------------------------------------

    def add_rows(self, job: Job, unit: Unit, raw: bytes) -> None:
        """Copy a stored unit's rows (every frame's in turn) into its frames' canvases."""
        size = (unit.row_end - unit.row_start) * job.row_bytes
        frame_bytes = job.height * job.row_bytes
        with self._lock:
            for offset, frame in enumerate(unit.frames):
                canvas = self._canvas(job.id, frame, frame_bytes)
                if canvas is None:
                    continue
                canvas.pixels[unit.row_start * job.row_bytes:unit.row_end * job.row_bytes] = \
                    raw[offset * size:(offset + 1) * size]
                canvas.rows_filled += unit.row_end - unit.row_start

    def _canvas(self, job_id: int, frame: int, size: int) -> _Canvas | None:
        canvas = self._canvases.get((job_id, frame))
        if canvas is None and self._used + size <= self._budget:
            canvas = self._canvases[(job_id, frame)] = _Canvas(bytearray(size))
            self._used += size
        return canvas

    def frames_ready(self, job_id: int, frames: tuple[int, ...]) -> None:
        """Every unit of these frames is stored: have them written."""
        with self._lock:
            self._queue.frames.extend((job_id, frame) for frame in frames)
        self._queue.wake.set()

    def wake(self) -> None:
        """Have the maintenance thread look now (it is stopping, say)."""
        self._queue.wake.set()

    # -- in the maintenance thread ------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Until frames are queued, or `timeout` seconds."""
        self._queue.wake.wait(timeout)

    def drain(self) -> None:
        """Write every queued frame, and any complete frame not written yet (after a restart, or one
        whose write failed before)."""
        self._queue.wake.clear()
        with self._lock:
            queued, self._queue.frames = self._queue.frames, []
        pending = set(queued) | set(self._store.jobs.complete_frames(kindparts.uncounted_units()))
        self._unpacked = _LastUnit()
        for job_id, frame in sorted(pending):
            try:
                self._finish(job_id, frame)
            except FarmError as err:   # the units are stored; a later drain writes the frame
                log.error("job %s frame %s not written yet: %s", job_id, frame, err)
        self._unpacked = _LastUnit()
        self._drop_canvases_of_ended_jobs()

    def _finish(self, job_id: int, frame: int) -> None:
        job = self._store.jobs.get(job_id)
        if job.ended:
            return
        kindparts.of_job(job.kind).assemble(self, job, frame)   # POV-Ray's: stitch_frame
        self._changes.bump(job_id)

    def stitch_frame(self, job: Job, frame: int) -> None:
        """POV-Ray's assembly (farm.service.povray_kind): the frame's rows, from its canvas or else from the
        stored units, written as its PNG."""
        try:
            raster = self._raster(job, frame, self._unpacked)
        except ValueError as err:
            log.error("job %s frame %s cannot be stitched: %s", job.id, frame, err)
            self._store.jobs.fail(job.id, f"frame {frame} cannot be stitched: {err}", self._clock())
            return
        path = self._files.frame_image(job.id, frame)
        write_atomically(path, encode_png(raster))
        self._release(job.id, frame)
        if self._store.jobs.finish_frame(job.id, frame, str(path), self._clock()):
            log.info("job %s done: %s", job.id, path)

    def _raster(self, job: Job, frame: int, unpacked: "_LastUnit") -> Raster:
        """The frame's image: its rows in their places (those of a sheared frame back in the frame's own)."""
        with self._lock:
            canvas = self._canvases.get((job.id, frame))
        if canvas is not None and canvas.rows_filled == job.height:
            raster = Raster(job.width, job.height, job.channels, job.bits, bytes(canvas.pixels))
        else:
            pieces = [(piece.row_start, piece.row_end, unpacked.frame_rows(job, piece, frame))
                      for piece in self._store.units.stored_for_frame(job.id, frame, ROWS)]
            raster = strips.stitch(job.width, job.height, job.channels, job.bits, pieces)
        if not job.shear:
            return raster
        bpp = job.channels * job.bits // 8
        return Raster(job.width, job.height, job.channels, job.bits,
                      job.layout.unshear(raster.pixels, raster.row_bytes, bpp))

    def _release(self, job_id: int, frame: int) -> None:
        with self._lock:
            canvas = self._canvases.pop((job_id, frame), None)
            if canvas is not None:
                self._used -= len(canvas.pixels)

    def _drop_canvases_of_ended_jobs(self) -> None:
        with self._lock:
            jobs = {job_id for job_id, _ in self._canvases}
        for job_id in jobs:
            if not self._store.jobs.exists(job_id) or self._store.jobs.get(job_id).ended:   # ended, or purged
                with self._lock:
                    for key in [key for key in self._canvases if key[0] == job_id]:
                        self._used -= len(self._canvases.pop(key).pixels)


class _LastUnit:
    """The last stored unit inflated, kept while its frames are stitched one after another."""

    def __init__(self):
        self._key: tuple | None = None
        self._raw = b""

    def frame_rows(self, job: Job, piece: StoredRows, frame: int) -> bytes:
        key = (job.id, piece.frame, piece.frame_last, piece.row_start)
        if key != self._key:
            self._key, self._raw = key, piece.raw(job)
        return piece.frame_rows(self._raw, frame)
