"""The farm's history and its disk: purging ended jobs (by hand, or hourly with `purge_after`) with their
images and the bundles no job uses any more, and what the controller's data directory holds.

The store deletes the rows in one transaction (`farm.store.history`); the files go after it, so a crash
between the two leaves files without rows (swept at the next purge of their job's folder), never rows
without files.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Callable

from farm.durations import age_text, parse_age
from farm.faults import Code, FarmError
from farm.service.files import Files
from farm.store import Store
from farm.store.history import PURGE_BATCH, Purged

log = logging.getLogger(__name__)

AUTO_PURGE_PERIOD = 3600.0   # seconds between automatic purges
DISK_FRESH = 10.0            # seconds a measure of the data directory is shown again


class History:
    def __init__(self, store: Store, files: Files, data_dir: Path, purge_after: str,
                 clock: Callable[[], float], forget: Callable[[tuple[int, ...]], None]):
        self._store, self._files, self._data_dir, self._clock, self._forget = store, files, data_dir, clock, forget
        try:
            self.purge_after = parse_age(purge_after) if purge_after.strip() else 0.0
        except ValueError as err:
            raise FarmError(Code.BAD_ARGUMENT, f"setting 'purge_after': {err}") from None
        self._last_auto = float("-inf")
        self._lock = threading.Lock()
        self._disk: tuple[float, dict[str, int]] | None = None

    def purge(self, older_than: float) -> Purged:
        """Delete the jobs that ended more than `older_than` seconds ago, their images, and the bundles
        no job uses that are as old; in batches (`store.history.purge`), each one's files after it."""
        before, jobs, bundles = self._clock() - older_than, [], []
        while True:
            batch = self._store.history.purge(before)
            self._forget(batch.jobs)
            for job_id in batch.jobs:
                _remove(self._files.image_dir / str(job_id))
            for digest in batch.bundles:
                _remove(self._files.bundle(digest))
            jobs += batch.jobs
            bundles += batch.bundles
            if len(batch.jobs) < PURGE_BATCH:
                break
        purged = Purged(tuple(jobs), tuple(bundles))
        if purged.jobs or purged.bundles:
            log.info("purged %d job(s) that ended over %s ago and %d bundle(s) no job uses",
                     len(purged.jobs), age_text(older_than), len(purged.bundles))
            with self._lock:
                self._disk = None
        return purged

    def tick(self) -> None:
        """With `purge_after`, purge once an hour."""
        now = self._clock()
        if self.purge_after and not 0 <= now - self._last_auto < AUTO_PURGE_PERIOD:
            self._last_auto = now
            self.purge(self.purge_after)

    def disk(self) -> dict[str, int]:
        """Bytes the controller keeps: database, images, bundles, uploads being received, all of them;
        and the free and total bytes of the file system they are on."""
        now = self._clock()
        with self._lock:
            if self._disk is not None and 0 <= now - self._disk[0] < DISK_FRESH:
                return self._disk[1]
        database = sum(_size(Path(f"{self._store.path}{suffix}")) for suffix in ("", "-wal", "-shm"))
        measured = {"database": database, "images": _tree_size(self._files.image_dir),
                    "bundles": _tree_size(self._files.bundle_dir), "uploads": _tree_size(self._data_dir / "uploads")}
        measured["total"] = sum(measured.values())
        usage = shutil.disk_usage(self._data_dir)
        measured.update(free=usage.free, capacity=usage.total)
        with self._lock:
            self._disk = (now, measured)
        return measured


def _remove(path: Path) -> None:
    try:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    except OSError as err:
        log.warning("cannot remove %s: %s", path.name, err.strerror or err)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tree_size(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        total += sum(_size(Path(root) / name) for name in names)
    return total
