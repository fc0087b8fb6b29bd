"""The files scenes write (`#fopen`), kept per job: each unit's arrive from its node (farm.scenefiles), and
of each name the version from the unit POV-Ray would have written last is kept, in one zip beside the
job's frames, bounded by farm.scenefiles' limits; a name beyond them is left out with a warning."""

from __future__ import annotations

import logging
import threading

from farm import scenefiles
from farm.service.files import Files, write_atomically

log = logging.getLogger(__name__)

FILE_NAME = "scene-files.zip"


class WrittenFiles:
    def __init__(self, files: Files):
        self._files = files
        self._lock = threading.Lock()

    def add(self, job_id: int, data: bytes) -> None:
        """A unit's files (checked: BAD_ARGUMENT when malformed or beyond the bounds), merged in."""
        new = scenefiles.unpack(data)
        if not new:
            return
        path = self._files.image_dir / str(job_id) / FILE_NAME
        with self._lock:
            kept = scenefiles.unpack(path.read_bytes()) if path.exists() else {}
            merged, left_out = scenefiles.merge(kept, new)
            if left_out:
                log.warning("job %s: the scene wrote more than %s files or %s bytes; left out %s", job_id,
                            scenefiles.MAX_FILES, scenefiles.MAX_BYTES, scenefiles.shown(left_out))
            if merged != kept:
                write_atomically(path, scenefiles.pack_kept(merged), f"the files job {job_id}'s scene wrote")

    def get(self, job_id: int) -> bytes:
        path = self._files.image_dir / str(job_id) / FILE_NAME
        with self._lock:
            return path.read_bytes() if path.exists() else b""
