"""The video kind on the controller (its controller part, farm.jobkinds): a video job submitted after its
animation, its one unit's result (an MP4 the node made) checked when it arrives and stored as the job's
file, and the animation's frames handed to the node that encodes them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from farm.api import args
from farm.jobkinds import VIDEO, capability
from farm.kinds import PreviewMode
from farm.records import Job, JobSpec
from farm.service.kindparts import FileResult, frames_source, queue_one_unit, stored_frame
from farm.strips import DEFAULT_BLOCK
from farm.video import DEFAULT_CRF, DEFAULT_FPS, MAX_CRF, MAX_FPS, MAX_VIDEO_BYTES, VideoParams

log = logging.getLogger(__name__)

_MP4_BOX = b"ftyp"    # an MP4 (ISO base media file) starts with its file-type box: size, then "ftyp"


def spec_for(source: Job, fps: float, crf: int, priority: int) -> JobSpec:
    """The video job of an animation job: its frames at `fps` with x264's `crf`, after that job, on a node
    offering the video kind."""
    params = VideoParams(source.id, source.first_frame, source.last_frame, fps, crf)
    return JobSpec(bundle=source.bundle, scene=source.scene, width=source.width, height=source.height,
                   options=params.to_options(), channels=3, bits=8, priority=priority,
                   name=f"{source.name} video", animation=None, block=DEFAULT_BLOCK, pretrace=False,
                   preview=PreviewMode.NEVER, require=(capability(VIDEO),), after=(source.id,), kind=VIDEO)


class VideoPart(FileResult):
    result_name = "the video"
    max_bytes = MAX_VIDEO_BYTES

    def submit(self, services: Any, params: dict) -> int:
        """Queue a video of job `params["job"]`'s frames (jobs.video's spec); it runs when that job is done.
        UNKNOWN_JOB for no such job; BAD_ARGUMENT for one that failed, was canceled or is itself a video."""
        source = frames_source(services, args.job_id(params.get("job")), VIDEO)
        fps = args.number("fps", params.get("fps", DEFAULT_FPS), 0.001, MAX_FPS)
        crf = args.whole("crf", params.get("crf", DEFAULT_CRF), 0, MAX_CRF)
        spec = spec_for(source, fps, crf, args.whole("priority", params.get("priority", 0), -1000, 1000))
        job_id = queue_one_unit(services, spec)
        log.info("job %s queued: a video of job %s's frames %d-%d at %s fps", job_id, source.id,
                 source.first_frame, source.last_frame, f"{fps:g}")
        return job_id

    def check_file(self, job: Job, data: bytes) -> None:
        if data[4:8] != _MP4_BOX:
            raise ValueError("it is not an MP4 file")

    def source_frame(self, services: Any, job: Job, frame: int) -> Path:
        """The stored image of a frame the video job `job` encodes (for the node running its unit)."""
        params = VideoParams.from_options(job.options)
        return stored_frame(services, job, params.source, params.frames, frame)


PART = VideoPart()
