"""The video kind on the controller: a video job submitted after its animation, its one unit's result
(an MP4 the node made) checked when it arrives and stored as the job's file, and the animation's frames
handed to the node that encodes them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from farm import limits
from farm.faults import Code, FarmError
from farm.jobkinds import VIDEO, capability, result_suffix
from farm.kinds import PreviewMode
from farm.planning import UnitPlan
from farm.records import Job, JobSpec
from farm.service.changes import Changes
from farm.service.files import Files, write_atomically
from farm.states import ENDED, JobState
from farm.store import Store
from farm.strips import DEFAULT_BLOCK
from farm.video import MAX_VIDEO_BYTES, VideoParams

log = logging.getLogger(__name__)

_MP4_BOX = b"ftyp"    # an MP4 (ISO base media file) starts with its file-type box: size, then "ftyp"


def spec_for(source: Job, fps: float, crf: int, priority: int) -> JobSpec:
    """The video job of an animation job: its frames at `fps` with x264's `crf`, after that job, on a node
    offering the video kind. BAD_ARGUMENT for a job that is itself a video."""
    if source.kind == VIDEO:
        raise FarmError(Code.BAD_ARGUMENT, f"job {source.id} is a video, not frames to make one of")
    params = VideoParams(source.id, source.first_frame, source.last_frame, fps, crf)
    return JobSpec(bundle=source.bundle, scene=source.scene, width=source.width, height=source.height,
                   options=params.to_options(), channels=3, bits=8, priority=priority,
                   name=f"{source.name} video", animation=None, block=DEFAULT_BLOCK, pretrace=False,
                   preview=PreviewMode.NEVER, require=(capability(VIDEO),), after=(source.id,), kind=VIDEO)


class Videos:
    def __init__(self, store: Store, files: Files, changes: Changes, work: Changes, clock: Callable[[], float]):
        self._store, self._files, self._changes, self._work, self._clock = store, files, changes, work, clock

    def submit(self, source_id: int, fps: float, crf: int, priority: int = 0) -> int:
        """Queue a video of job `source_id`'s frames; it runs when that job is done. UNKNOWN_JOB for no
        such job; BAD_ARGUMENT for one that failed or was canceled (it has no frames to encode)."""
        source = self._store.jobs.get(source_id)
        if source.state in ENDED and source.state is not JobState.DONE:
            raise FarmError(Code.BAD_ARGUMENT, f"job {source_id} is {source.state.value}: it has no frames to "
                                               "make a video of")
        spec = spec_for(source, fps, crf, priority)
        limits.check_units(spec, 1, self._store.units.open_count())
        job_id = self._store.jobs.create(spec, [UnitPlan(1, 1, 0, spec.height, VIDEO)], self._clock())
        self._changes.bump()
        self._work.bump()
        log.info("job %s queued: a video of job %s's frames %d-%d at %s fps", job_id, source_id,
                 source.first_frame, source.last_frame, f"{fps:g}")
        return job_id

    def source_frame(self, job: Job, frame: int) -> Path:
        """The stored image of a frame the video job `job` encodes (for the node running its unit)."""
        params = VideoParams.from_options(job.options)
        if frame not in params.frames:
            raise FarmError(Code.BAD_ARGUMENT, f"job {job.id} encodes frames {params.first}-{params.last}, "
                                               f"not frame {frame}")
        stored = self._store.jobs.frame(params.source, frame)
        if stored is None or not stored.path:
            raise FarmError(Code.JOB_NOT_DONE, f"frame {frame} of job {params.source} is not written")
        return self._files.frame_image(params.source, frame)


def check_result(data: bytes) -> None:
    """A video unit's result as it arrives: an MP4 file within the size limit (ValueError otherwise)."""
    if len(data) > MAX_VIDEO_BYTES:
        raise ValueError(f"it is {len(data)} bytes; the limit is {MAX_VIDEO_BYTES}")
    if data[4:8] != _MP4_BOX:
        raise ValueError("it is not an MP4 file")


def assemble(store: Store, files: Files, job: Job, frame: int, now: float) -> None:
    """The video unit is stored: its file becomes the job's result, and the job is done."""
    stored = store.units.stored_for_frame(job.id, frame, VIDEO)
    if not stored:
        store.jobs.fail(job.id, "the video unit's result is missing", now)
        return
    path = files.frame_image(job.id, frame, result_suffix(VIDEO))
    write_atomically(path, stored[0].data, "the video")
    if store.jobs.finish_frame(job.id, frame, str(path), now):
        log.info("job %s done: %s", job.id, path)
