"""Files the controller writes: uploaded bundles and stitched images.

An upload arrives either in memory (`xmlrpc.client.Binary`, from a direct
call) or already on disk (`rpc.SpooledBinary`: the RPC layer streamed the
base64 into a temporary file and hashed it on the way), so a large bundle is
never held in memory. Every file is written under a temporary name, fsynced and
renamed; a write that fails removes its temporary file, and faults name no
server paths.
"""

from __future__ import annotations

import logging
import mmap
import os
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import Callable

from farm import bundle
from farm.faults import Code, FarmError
from farm.rpc import SpooledBinary

log = logging.getLogger(__name__)


def write_atomically(path: Path, data: bytes, what: str | None = None) -> None:
    """Write, fsync, rename: a reader or a crash never sees half a file, and a failed write (a full
    disk) leaves no temporary file behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _storage(what or path.name, err) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    except OSError as err:
        _discard(Path(name))
        raise _storage(what or path.name, err) from None


def sweep_temporary(data_dir: Path) -> int:
    """At start, before serving: remove temporary files a killed controller left in its data dir (uploads
    being received, bundles and images being written). Returns how many."""
    removed = 0
    for folder in ("uploads", "bundles", "jobs"):
        for path in (data_dir / folder).rglob("*.tmp"):
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


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        log.error("cannot remove the temporary file %s: %s", path.name, err.strerror)


class _MappedFile(mmap.mmap):
    """A read-only file mapping that zipfile accepts as a file."""

    def seekable(self) -> bool:
        return True


def map_bundle(path: Path) -> mmap.mmap:
    """A stored bundle as a read-only file mapping: zip checks read only the parts they need, so a large
    bundle is never copied into memory."""
    try:
        with open(path, "rb") as handle:
            return _MappedFile(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as err:
        raise FarmError(Code.STORAGE, f"the controller cannot read the bundle: "
                                      f"{getattr(err, 'strerror', None) or err}") from None


def receive_bundle(data: object, path_for: Callable[[str], Path], store, max_bytes: int, now: float) -> str:
    """Check and store an uploaded bundle (zip) once; returns its digest."""
    if isinstance(data, SpooledBinary):
        return _receive_spooled(data, path_for, store, max_bytes, now)
    if not isinstance(data, xmlrpc.client.Binary):
        raise FarmError(Code.BAD_ARGUMENT, "data must be binary (base64) data")
    payload = data.data
    _check_size(len(payload), max_bytes)
    bundle.check_archive(payload, max_total=max_bytes)
    digest = bundle.bundle_hash(payload)
    if not store.has_bundle(digest):
        write_atomically(path_for(digest), payload, "the bundle")
        _record(store, digest, len(payload), now)
    return digest


def _receive_spooled(upload: SpooledBinary, path_for: Callable[[str], Path], store, max_bytes: int,
                     now: float) -> str:
    _check_size(upload.size, max_bytes)
    try:
        with open(upload.path, "rb") as handle:
            bundle.check_archive(handle, max_total=max_bytes)
    except OSError as err:
        raise FarmError(Code.STORAGE, f"the controller cannot read the upload back: {err.strerror}") from None
    digest = bundle.HASH_PREFIX + upload.sha256
    if not store.has_bundle(digest):
        try:
            upload.keep_as(path_for(digest))
        except OSError as err:
            raise _storage("the bundle", err) from None
        _record(store, digest, upload.size, now)
    return digest


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise FarmError(Code.BUNDLE_TOO_LARGE, f"the bundle is {size} bytes; the limit is {max_bytes}")


def _record(store, digest: str, size: int, now: float) -> None:
    store.add_bundle(digest, size, now)
    log.info("stored bundle %s (%d bytes)", digest, size)
