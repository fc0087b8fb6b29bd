"""The controller's files beside its database: uploaded bundles and finished images.

Every file is written under a temporary name, fsynced and renamed; a write that
fails removes its temporary file, and what a start finds left by a killed
controller is swept away. Faults name no server paths.
"""

from __future__ import annotations

import logging
import mmap
from pathlib import Path

from farm import atomic
from farm.faults import Code, FarmError

log = logging.getLogger(__name__)

FOLDERS = ("uploads", "bundles", "jobs")


def write_atomically(path: Path, data: bytes, what: str | None = None) -> None:
    """Write, fsync, rename (`farm.atomic`), readable by the controller's user only; a failure is a
    STORAGE fault naming `what` (default: the file's name), never the path."""
    try:
        atomic.write(path, data, atomic.PRIVATE)
    except OSError as err:
        raise _storage(what or path.name, err) from None


def sweep_temporary(data_dir: Path) -> int:
    """At start, before serving: remove temporary files a killed controller left in its data dir (uploads
    being received, bundles and images being written). Returns how many."""
    removed = 0
    for folder in FOLDERS:
        for path in (data_dir / folder).rglob("*" + atomic.TEMPORARY_SUFFIX):
            try:
                path.unlink()
                removed += 1
            except OSError as err:
                log.warning("cannot remove the temporary file %s: %s", path.name, err.strerror)
    if removed:
        log.info("removed %d temporary files left by an earlier run", removed)
    return removed


def _storage(what: str, err: OSError) -> FarmError:
    return FarmError(Code.STORAGE, f"the controller cannot write {what}: {err.strerror or 'write failed'}")


class _MappedFile(mmap.mmap):
    """A read-only file mapping that zipfile accepts as a file."""

    def seekable(self) -> bool:
        return True


class Files:
    """Where bundles and frame images live under the data directory."""

    def __init__(self, data_dir: Path):
        self.bundle_dir = data_dir / "bundles"
        self.image_dir = data_dir / "jobs"

    def bundle(self, digest: str) -> Path:
        return self.bundle_dir / (digest.split(":", 1)[-1] + ".zip")

    def frame_image(self, job_id: int, frame: int, suffix: str = ".png") -> Path:
        """A frame's image (or, with a kind's `suffix`, its result file: farm.jobkinds)."""
        return self.image_dir / str(job_id) / f"frame-{frame:05d}{suffix}"

    def map_bundle(self, digest: str) -> mmap.mmap:
        """A stored bundle as a read-only file mapping: zip checks read only the parts they need, so a large
        bundle is never copied into memory."""
        try:
            with open(self.bundle(digest), "rb") as handle:
                return _MappedFile(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as err:
            raise FarmError(Code.STORAGE, f"the controller cannot read the bundle: "
                                          f"{getattr(err, 'strerror', None) or err}") from None
