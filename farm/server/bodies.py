"""Request and response bodies on the server: reading a body within its deadline, places for heavy calls,
budgets of bytes shared by all requests, uploads decoded into temporary files, and files streamed back."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from farm.faults import Code, FarmError
from farm.wire import CHUNK, BadBody, Base64Value, Busy

log = logging.getLogger(__name__)

SPOOL_SUFFIX = ".tmp"


class Gates:
    """Bounded places for heavy methods (uploads, results, ranged fetches): a call waits a little for
    one, then is refused as busy, so that many at once queue instead of each taking memory and disk."""

    def __init__(self, gates: Iterable[tuple[frozenset[str], int]], wait: float):
        self._wait = wait
        self._places: dict[str, threading.BoundedSemaphore] = {}
        for methods, places in gates:
            semaphore = threading.BoundedSemaphore(places)
            self._places.update(dict.fromkeys(methods, semaphore))

    @contextlib.contextmanager
    def enter(self, method: str | None) -> Iterator[None]:
        places = self._places.get(method or "")
        if places is None:
            yield
            return
        if not places.acquire(timeout=self._wait):
            log.info("too many %s calls at once; refusing one", method)
            raise Busy(f"the controller is running as many {method} calls as it allows at once; "
                        f"try again in a few seconds")
        try:
            yield
        finally:
            places.release()


class Budget:
    """Bytes that all requests' upload files may hold on disk at once."""

    def __init__(self, total: int):
        self.total = total
        self._left = total
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if size > self._left:
                return False
            self._left -= size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self._left += size


def body_chunks(rfile: BinaryIO, length: int, on_end: Callable[[], None]) -> Iterable[bytes]:
    """The body as it arrives, `length` bytes in chunks; `on_end` once it is all in."""
    left = length
    while left:
        chunk = rfile.read(min(CHUNK, left))
        if not chunk:
            raise BadBody("the request body was cut short")
        left -= len(chunk)
        yield chunk
    on_end()


@dataclasses.dataclass
class SpooledBinary:
    """A base64 argument streamed to a file: its path, size and SHA-256 (hex). The file belongs to the
    request and is removed when it ends, unless the method moved it with `keep_as`."""
    path: Path
    size: int
    sha256: str

    def keep_as(self, target: Path) -> None:
        """Make the file durable under `target` (fsync, rename); the request no longer removes it."""
        with open(self.path, "rb") as handle:
            os.fsync(handle.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, target)


class FileReply:
    """A method's result that is a file's bytes (base64 on the wire), or a range of them, streamed from
    disk as it is sent, never held in memory whole."""

    _OPEN = b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value>"
    _CLOSE = b"</value>\n</param>\n</params>\n</methodResponse>\n"
    _HEAD = _OPEN + b"<base64>\n"
    _TAIL = b"\n</base64>" + _CLOSE
    _STEP = 3 * CHUNK          # a multiple of 3: each piece encodes without padding

    def __init__(self, handle: BinaryIO, size: int, head: bytes = _HEAD, tail: bytes = _TAIL):
        """`size` bytes of `handle` from where it stands, between `head` and `tail`."""
        self._handle, self.size = handle, size
        self._start = handle.tell()
        self._head, self._tail = head, tail

    @classmethod
    def open(cls, path: Path, what: str) -> "FileReply":
        """The file at `path`; STORAGE (naming `what`, not the path) when it cannot be read."""
        handle = cls._open(path, what)
        return cls(handle, os.fstat(handle.fileno()).st_size)

    @classmethod
    def open_range(cls, path: Path, what: str, offset: int, length: int) -> "FileReply":
        """Up to `length` bytes of the file at `path` from `offset`, as the struct {size: int, the whole
        file's bytes; data: base64, those bytes}."""
        handle = cls._open(path, what)
        size = os.fstat(handle.fileno()).st_size
        if offset > size:
            handle.close()
            raise FarmError(Code.BAD_ARGUMENT, f"offset {offset} is past the end of {what} ({size} bytes)")
        handle.seek(offset)
        head = cls._OPEN + (b"<struct>\n<member>\n<name>size</name>\n<value><int>%d</int></value>\n</member>\n"
                            b"<member>\n<name>data</name>\n<value><base64>\n" % size)
        tail = b"\n</base64></value>\n</member>\n</struct>" + cls._CLOSE
        return cls(handle, min(length, size - offset), head, tail)

    @staticmethod
    def _open(path: Path, what: str) -> BinaryIO:
        try:
            return open(path, "rb")
        except OSError as err:
            raise FarmError(Code.STORAGE, f"the controller cannot read {what}: {err.strerror}") from None

    @property
    def length(self) -> int:
        return len(self._head) + 4 * -(-self.size // 3) + len(self._tail)

    def pieces(self) -> Iterable[bytes]:
        yield self._head
        left = self.size
        while left > 0:
            data = self._handle.read(min(self._STEP, left))
            if not data:
                raise OSError("the file was cut short while it was sent")
            left -= len(data)
            yield base64.b64encode(data)
        yield self._tail

    @property
    def data(self) -> bytes:
        """The bytes, like `xmlrpc.client.Binary.data` (for callers in the same process)."""
        try:
            self._handle.seek(self._start)
            return self._handle.read(self.size)
        finally:
            self.close()

    def close(self) -> None:
        self._handle.close()


class Spool(Base64Value):
    """A base64 value decoded into a temporary file, hashed on the way."""

    def __init__(self, directory: Path | None, limit: int, budget: Budget):
        super().__init__(limit, budget, "uploads")
        try:
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix="upload-", suffix=SPOOL_SUFFIX, dir=directory)
        except OSError as err:
            raise FarmError(Code.STORAGE, f"the controller could not store the upload: "
                                          f"{err.strerror or 'cannot create a file'}") from None
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._error: OSError | None = None

    def _keep(self, data: bytes) -> None:
        self._hash.update(data)
        if self._error is None:
            try:
                self._file.write(data)
            except OSError as err:
                self._error = err   # read the rest of the body, then say so

    def finish(self) -> SpooledBinary:
        self._last()
        try:
            self._file.close()
        except OSError as err:
            self._error = self._error or err
        if self._error is not None:
            raise FarmError(Code.STORAGE, f"the controller could not store the upload: "
                                          f"{self._error.strerror or 'write failed'}")
        return SpooledBinary(self.path, self.size, self._hash.hexdigest())

    def abandon(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                pass

    def discard(self) -> None:
        """The request is over: the file goes (unless the method moved it) and its bytes leave the budget."""
        super().discard()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            log.error("cannot remove a temporary upload: %s", err.strerror)


def sweep_spool(directory: Path | None) -> None:
    """Remove upload files a killed controller left behind."""
    if directory is None or not directory.is_dir():
        return
    for path in directory.glob(f"upload-*{SPOOL_SUFFIX}"):
        path.unlink(missing_ok=True)


