"""The checksums kind on the controller (farm.extras.checksums): a job of one unit after the job whose
frames it lists, its parameters checked, its result checked as it arrives and stored as the job's file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from farm.api import args
from farm.extras.checksums import CHECKSUMS, LINE_BYTES, MAX_FRAMES, Frames, check_listing
from farm.faults import Code, FarmError
from farm.kinds import PreviewMode
from farm.records import Job, JobSpec
from farm.service.kindparts import FileResult, frames_source, queue_one_unit, stored_frame
from farm.strips import DEFAULT_BLOCK

log = logging.getLogger(__name__)

PARAMS = ("job", "priority")


class ChecksumsPart(FileResult):
    result_name = "the checksums"
    max_bytes = MAX_FRAMES * LINE_BYTES

    def submit(self, services: Any, params: dict) -> int:
        """{job (int), priority (int, default 0)}: the list of job `job`'s frames, made when it is done."""
        unknown = sorted(str(name)[:40] for name in params if name not in PARAMS)
        if unknown:
            raise FarmError(Code.BAD_ARGUMENT, f"a checksums job takes job and priority, not {', '.join(unknown)}")
        source = frames_source(services, args.job_id(params.get("job")), CHECKSUMS)
        frames = Frames(source.id, source.first_frame, source.last_frame)
        spec = JobSpec(bundle=source.bundle, scene=source.scene, width=source.width, height=source.height,
                       options=frames.to_options(), channels=3, bits=8,
                       priority=args.whole("priority", params.get("priority", 0), -1000, 1000),
                       name=f"{source.name} checksums", animation=None, block=DEFAULT_BLOCK, pretrace=False,
                       preview=PreviewMode.NEVER, require=(), after=(source.id,), kind=CHECKSUMS)
        job_id = queue_one_unit(services, spec)
        log.info("job %s queued: the checksums of job %s's frames %d-%d", job_id, source.id, frames.first,
                 frames.last)
        return job_id

    def check_file(self, job: Job, data: bytes) -> None:
        check_listing(data, Frames.from_options(job.options))

    def source_frame(self, services: Any, job: Job, frame: int) -> Path:
        frames = Frames.from_options(job.options)
        return stored_frame(services, job, frames.source, frames.frames, frame)


PART = ChecksumsPart()
