"""A node's bundles: downloaded (resuming a cut-short download), checked against their hash and
`checking.check_archive`, unpacked once into a `BundleCache`, and copied afresh for each strip.

The node never packs a bundle, so it does not import `packing`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable

from farm.bundle.checking import MEMBER_CHUNK, check_archive, open_zip
from farm.bundle.rules import MAX_FILES, MAX_TOTAL_BYTES, bundle_hash, parse_digest
from farm.faults import Code, FarmError

log = logging.getLogger(__name__)

_PARTIAL = ".partial-"          # marks temporary unpack directories
_STALE_PARTIAL_SECONDS = 3600
_DOWNLOAD = ".download"           # a bundle's bytes gathering while it is downloaded
# A cut-short download is kept this long after its last byte came, for a retry or a restarted node to
# resume; older, its job is most likely over, and a later one starts afresh.
STALE_DOWNLOAD_SECONDS = 24 * 3600


def unpack(data: bytes, dest: Path, expected_hash: str,
           max_files: int = MAX_FILES, max_total: int = MAX_TOTAL_BYTES) -> None:
    """Verify and extract a bundle into dest, which must not exist yet.

    Extraction goes into a temporary sibling directory that is renamed to dest
    at the end, so dest is either absent or complete, even after a crash.
    Raises FileExistsError (and discards its work) if dest exists by then.
    """
    parse_digest(expected_hash)
    actual = bundle_hash(data)
    if actual != expected_hash:
        raise FarmError(Code.BAD_BUNDLE, f"the bundle's hash is {actual}, expected {expected_hash}")
    names = check_archive(data, max_files, max_total)
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_PARTIAL}", dir=dest.parent))
    try:
        with open_zip(data, max_files) as archive:
            _extract(archive, names, tmp, max_total)
        _rename_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("unpacked %s (%s files) into %s", expected_hash, len(names), dest)


def _extract(archive: zipfile.ZipFile, names: list[str], into: Path, max_total: int) -> None:
    """Write the checked members under `into`, stopping once max_total real bytes are out."""
    written = 0
    for info, name in zip(archive.infolist(), names):
        target = into.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as out, archive.open(info) as member:
                while chunk := member.read(MEMBER_CHUNK):
                    written += len(chunk)
                    if written > max_total:
                        raise FarmError(Code.BUNDLE_TOO_LARGE,
                                        f"the bundle unpacks to more than {max_total} bytes")
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
            raise FarmError(Code.BAD_BUNDLE, f"bundle member {name!r} is corrupt ({exc})") from None


def _rename_into_place(tmp: Path, dest: Path) -> None:
    try:
        os.rename(tmp, dest)   # atomic; refuses a non-empty dest on POSIX, any dest on Windows
    except OSError:
        if dest.exists():
            raise FileExistsError(f"{dest} already exists") from None
        raise


class BundleCache:
    """A node's cache of unpacked bundles under a directory: <dir>/<hex>/ .

    Entries only ever appear by atomic rename, so a directory named by a hash
    is always complete. Threads of one process take a lock per digest, so each
    bundle is fetched once; separate processes sharing the directory may both
    fetch, and the one that loses the rename throws its copy away.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._remove_stale_partials()
        self.sweep_downloads()

    def path_for(self, digest: str) -> Path:
        """Where the bundle with this hash lives (whether or not it is there yet)."""
        return self.directory / parse_digest(digest)

    def ensure(self, digest: str, fetch: Callable[[], bytes]) -> Path:
        """Return the unpacked directory, calling fetch() only when it is not cached yet."""
        path = self.path_for(digest)
        if path.is_dir():
            return path
        with self._lock_for(digest):
            if path.is_dir():           # another thread finished it while we waited
                return path
            log.info("fetching bundle %s", digest)
            self.sweep_downloads()
            try:
                unpack(fetch(), path, digest)
            except FileExistsError:
                log.debug("bundle %s appeared meanwhile (another process); keeping that copy", digest)
        return path

    def download_path(self, digest: str) -> Path:
        """Where a bundle's bytes gather while it is downloaded (kept when the download is cut short)."""
        return self.directory / f"{parse_digest(digest)}{_DOWNLOAD}"

    def sweep_downloads(self) -> None:
        """Remove cut-short downloads nothing will resume: those no byte was added to for
        STALE_DOWNLOAD_SECONDS, and those of a bundle that is here unpacked after all. Run when the cache
        opens (a node starts) and before each new download."""
        cutoff = time.time() - STALE_DOWNLOAD_SECONDS
        for entry in self.directory.glob(f"*{_DOWNLOAD}"):
            try:
                if entry.stat().st_mtime < cutoff or (self.directory / entry.name[:-len(_DOWNLOAD)]).is_dir():
                    log.info("removing the unfinished download %s", entry)
                    entry.unlink()
            except OSError as err:   # gone meanwhile (another process swept it), or not ours to remove
                log.debug("cannot remove %s: %s", entry, err)

    def _lock_for(self, digest: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(digest, threading.Lock())

    def _remove_stale_partials(self) -> None:
        """Clear temporary directories left by a crash (old ones only: another process may be busy)."""
        cutoff = time.time() - _STALE_PARTIAL_SECONDS
        for entry in self.directory.iterdir():
            try:
                if _PARTIAL in entry.name and entry.stat().st_mtime < cutoff:
                    log.info("removing stale partial bundle %s", entry)
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue


DOWNLOAD_CHUNK = 2 * 1024 * 1024   # bytes per ranged request: what an interrupted download loses at most


def download_resuming(part: Path, digest: str, fetch_range: Callable[[int], tuple[int, bytes]]) -> bytes:
    """A bundle's bytes, fetched range by range into the file `part`, starting where an earlier download
    into it stopped (a dropped link, a restarted node). `fetch_range(offset)` returns (the bundle's size,
    bytes from offset). The hash is checked at the end; a part file that turns out wrong is removed, so
    the next try starts afresh."""
    parse_digest(digest)
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab") as out:
        offset = out.tell()
        if offset:
            log.info("resuming the download of bundle %s at byte %d", digest, offset)
        while True:
            size, data = fetch_range(offset)
            if offset + len(data) > size or (not data and offset < size):
                part.unlink(missing_ok=True)
                raise FarmError(Code.BAD_BUNDLE, f"the controller sent bytes {offset}..{offset + len(data)} of "
                                                 f"bundle {digest}, which has {size}")
            out.write(data)
            out.flush()
            offset += len(data)
            if offset >= size:
                break
    data = part.read_bytes()
    part.unlink(missing_ok=True)
    actual = bundle_hash(data)
    if actual != digest:
        raise FarmError(Code.BAD_BUNDLE, f"the downloaded bundle's hash is {actual}, expected {digest}")
    return data


def copy_for_render(bundle_dir: Path, dest: Path) -> Path:
    """Copy an unpacked bundle into a fresh per-strip directory and return it.

    Real copies, never hard links: a scene may write files (#fopen, Parse_String)
    and the cached bundle must stay pristine for the next strip.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    shutil.copytree(bundle_dir, dest, symlinks=False, copy_function=shutil.copyfile, dirs_exist_ok=True)
    return dest
