"""The controller's files beside its database: uploaded bundles and finished images."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from farm.faults import Code, FarmError


def write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename: a reader or a crash never sees half a file, and no temporary file is left."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):   # the write failed; what matters is the error below
            tmp.unlink()
        # The sentence names the kind of file, never the controller's own paths.
        raise FarmError(Code.STORAGE, f"the controller cannot write {path.suffix[1:] or 'a'} file: "
                                      f"{err.strerror or err}") from None


class Files:
    """Where bundles and frame images live under the data directory."""

    def __init__(self, data_dir: Path):
        self.bundle_dir = data_dir / "bundles"
        self.image_dir = data_dir / "jobs"

    def bundle(self, digest: str) -> Path:
        return self.bundle_dir / (digest.split(":", 1)[-1] + ".zip")

    def frame_image(self, job_id: int, frame: int) -> Path:
        return self.image_dir / str(job_id) / f"frame-{frame:05d}.png"

    def read(self, path: Path, what: str) -> bytes:
        try:
            return path.read_bytes()
        except OSError as err:
            raise FarmError(Code.STORAGE, f"cannot read {what}: {err.strerror or err}") from None
