"""The XML-RPC edge of the controller: a threaded HTTP/1.1 server that is safe to expose.

Memory and threads per request are bounded by design:
- Every request must carry `Authorization: Bearer <token>`; it is checked (in
  constant time) before the body is read: wrong or missing gets HTTP 401.
- The body limit is decided from the headers alone, before a byte of the body is
  read: each role has a small limit for any method, and only the methods named
  large (`bundles.upload` for a submit token, results for a node token) may send
  more, when the client names the method in `X-Povfarm-Method` (the parsed call
  must then be that method). `Content-Length` must be plain digits and appear once.
- The body is read in chunks: gzip is inflated as it arrives with a running cap
  (and nothing may follow its end), XML is parsed by expat as it arrives, refusing
  any DTD (whatever the document's encoding), nesting deeper than a limit, and text
  beyond the small limit. Base64 values are decoded as they arrive, never held as
  text. A large method's one large value has a limit of its own: an upload goes
  straight to a temporary file (SHA-256 computed on the way; per role, and all
  such files together within a budget), a node's result is held up to what its
  unit's rows can be (the method's `rpc_value_limit`); everything else in the
  call counts against the small limit. Temporary files go when the request ends.
- Heavy methods (uploads, results, ranged fetches) have a bounded number of places:
  a call waits a little for one, then gets 503 with Retry-After, as when the upload
  budget is spent.
- Connections (`farm.admission`): a new connection waits in a lobby (one
  selector, no thread) until it sends something, and must send its request
  headers within a few seconds; until it has shown a valid token it counts in a
  bounded pending pool where a newcomer pushes out the oldest; a valid token
  takes a seat by role (nodes' seats are their own; view and submit are capped
  per peer address too), else 503 with Retry-After. A long poll ends when its
  client disconnects (`departure_watch`). TLS handshakes run in the
  connection's own thread. The loops that accept, reap and watch are
  supervised: restarted when they fail, the process ended if they keep failing.
- `bundles.fetch`, `bundles.fetch_range` and `jobs.fetch` answer with a `FileReply`,
  streamed from disk.
- The dispatcher turns `FarmError` into a Fault with its code (server paths
  hidden), anything unexpected into INTERNAL plus a logged traceback;
  `allow_dotted_names` and multicall are never enabled.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import errno
import functools
import hashlib
import http
import inspect
import ipaddress
import logging
import os
import re
import select
import socket
import socketserver
import ssl
import tempfile
import threading
import time
import urllib.parse
import uuid
import xml.parsers.expat
import xmlrpc.client
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from farm import __version__, web
from farm.admission import RETRY_AFTER, Connection, Connections, Quotas
from farm.auth import roles_of
from farm.faults import Code, FarmError
from farm.hostos import HOST
from farm.supervise import Supervisor

log = logging.getLogger(__name__)

ANY_ROLE = frozenset({"submit", "node", "view"})
METHOD_HEADER = "X-Povfarm-Method"      # the method a client calls, so limits are known before the body
CHUNK = 64 * 1024
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
SPOOL_SUFFIX = ".tmp"
_current = threading.local()            # the connection this thread serves


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body: int = 400 * 1024 * 1024      # bytes of a large method's body, also after decompression
    role_body: tuple[tuple[str, int], ...] = (("view", 64 * 1024), ("submit", 1024 * 1024),
                                              ("node", 1024 * 1024))   # any method, per role
    large_methods: frozenset[str] = frozenset()    # methods that may send up to max_body
    spooled_methods: frozenset[str] = frozenset()  # their base64 argument is streamed to a file...
    role_spool: tuple[tuple[str, int], ...] = ()   # ...of at most this many bytes, per role (none: no file)
    max_spool: int = 1 << 30               # bytes all requests' files may hold at once
    max_held: int = 1 << 30                # bytes all requests' other large values may hold at once
    spool_dir: Path | None = None          # where those files go (default: the system's temp dir)
    gates: tuple[tuple[frozenset[str], int], ...] = ()   # heavy methods, and how many may run at once
    gate_wait: float = 5.0                 # seconds a heavy call waits for its turn before a 503
    hidden_paths: tuple[str, ...] = ()     # server paths that faults never show
    max_depth: int = 256                   # XML elements nested in a call
    header_timeout: float = 5.0            # seconds for a request's headers to arrive
    request_timeout: float = 60.0          # seconds to receive one whole request (headers and body)
    idle_timeout: float = 120.0            # an idle keep-alive connection is closed after this
    handshake_timeout: float = 10.0
    quotas: Quotas = Quotas()              # connections by stage, role and peer (farm.admission)

    def small_body(self, roles: Iterable[str]) -> int:
        return _most(self.role_body, roles)

    def spool_size(self, roles: Iterable[str]) -> int:
        """The most bytes one request of these roles may write to a file (0: it may not)."""
        return _most(self.role_spool, roles)


def _most(table: tuple[tuple[str, int], ...], roles: Iterable[str]) -> int:
    sizes = dict(table)
    return max((sizes.get(role, 0) for role in roles), default=0)


def client_gone() -> bool:
    """In a method: whether the client of the request this thread serves has disconnected (a long
    poll then stops waiting). False outside a request or where it cannot be told."""
    record = getattr(_current, "record", None)
    if record is None:
        return False
    try:
        fd = record.sock.fileno()
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, select.POLLIN | getattr(select, "POLLRDHUP", 0))
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):
        return False
    if not events:
        return False
    flags = events[0][1]
    if flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)):
        return True
    try:   # readable: data (a pipelined request) or the end of the stream
        return socket.socket.recv(record.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class _Departures:
    """One thread watches the sockets of requests waiting in long polls (Linux epoll, for the end of the
    stream only) and wakes a waiter whose client disconnects, so a waiting poll costs nothing until then."""

    _EVENTS = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)

    def __init__(self):
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._waiting: dict[int, Callable[[], None]] = {}
        Supervisor().start("departures", self._run)

    def watch(self, fd: int, wake: Callable[[], None]) -> bool:
        with self._lock:
            try:
                self._epoll.register(fd, self._EVENTS)
            except OSError:
                return False
            self._waiting[fd] = wake
            return True

    def unwatch(self, fd: int) -> None:
        with self._lock:
            if self._waiting.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except OSError:
                    pass

    def _run(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                with self._lock:        # never held while waking: the waker takes the waiter's lock
                    wake = self._waiting.pop(fd, None)
                    if wake is not None:
                        self._epoll.unregister(fd)
                if wake is not None:
                    wake()


_departures: _Departures | None = None
_departures_lock = threading.Lock()


def _departure_watcher() -> _Departures | None:
    global _departures
    if not hasattr(select, "epoll"):
        return None
    with _departures_lock:
        if _departures is None:
            _departures = _Departures()
        return _departures


@contextlib.contextmanager
def departure_watch(wake: Callable[[], None]) -> Iterator[Callable[[], bool]]:
    """Around a long poll's wait: `wake` is called (from another thread) if the client of the request this
    thread serves disconnects; yields a function that says whether it has. Outside a request, or without
    epoll, it only tells when asked."""
    record = getattr(_current, "record", None)
    watcher = _departure_watcher() if record is not None else None
    fd = record.sock.fileno() if record is not None else -1
    departed = threading.Event()

    def fired() -> None:
        departed.set()
        wake()
    if watcher is None or fd < 0 or not watcher.watch(fd, fired):
        yield client_gone
        return
    try:
        yield departed.is_set      # a flag: waiters check it on every wake-up, so it must be cheap
    finally:
        watcher.unwatch(fd)


# -- reading a body ------------------------------------------------------------------------------

class _TooLarge(Exception):
    """The body (after decompression) is over its limit."""


class _BadBody(Exception):
    """The body cannot be read (corrupt compression, cut short)."""


class _Busy(Exception):
    """The controller has no room for this request now (heavy calls, upload files): try again soon."""


class _Gates:
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
            raise _Busy(f"the controller is running as many {method} calls as it allows at once; "
                        f"try again in a few seconds")
        try:
            yield
        finally:
            places.release()


class _Budget:
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


def _body_chunks(rfile: BinaryIO, length: int, on_end: Callable[[], None]) -> Iterable[bytes]:
    """The body as it arrives, `length` bytes in chunks; `on_end` once it is all in."""
    left = length
    while left:
        chunk = rfile.read(min(CHUNK, left))
        if not chunk:
            raise _BadBody("the request body was cut short")
        left -= len(chunk)
        yield chunk
    on_end()


def _inflated(chunks: Iterable[bytes], limit: int) -> Iterable[bytes]:
    """gzip data inflated as it arrives, never more than `limit` bytes in all (a gzip bomb stops there)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    try:
        for chunk in chunks:
            while chunk:
                if inflater.eof:
                    raise _BadBody("data follows the end of the gzip body")
                out = inflater.decompress(chunk, CHUNK)
                total += len(out)
                if total > limit:
                    raise _TooLarge(f"the decompressed body is over the limit of {limit} bytes")
                if out:
                    yield out
                chunk = inflater.unconsumed_tail or inflater.unused_data
        out = inflater.flush(limit - total + 1)
        if len(out) + total > limit:
            raise _TooLarge(f"the decompressed body is over the limit of {limit} bytes")
        if out:
            yield out
    except zlib.error:
        raise _BadBody("the gzip body is corrupt") from None
    if not inflater.eof:
        raise _BadBody("the gzip body is cut short")


def capped_gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip data, refusing output over `limit` bytes (a gzip bomb) or a broken stream."""
    try:
        return b"".join(_inflated([data], limit))
    except (_TooLarge, _BadBody) as err:
        raise ValueError(str(err)) from None


# -- parsing -------------------------------------------------------------------------------------

class _Refused(Exception):
    """The XML is not an acceptable XML-RPC document."""


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


class _Base64:
    """Decodes a base64 value as its text arrives, `limit` bytes at most: never its text whole. With a
    budget, the bytes it keeps count against it (shared with other requests) until `discard`."""

    def __init__(self, limit: int, budget: _Budget | None = None, what: str = "values"):
        self._limit = limit
        self._budget, self._taken, self._what = budget, 0, what
        self._pending = b""
        self.size = 0

    def feed(self, text: str) -> None:
        data = self._pending + "".join(text.split()).encode("ascii", "replace")
        cut = len(data) - len(data) % 4
        self._pending = data[cut:]
        if cut:
            self._decode(data[:cut])

    def _decode(self, text: bytes) -> None:
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise _Refused("a base64 value is malformed") from None
        self.size += len(data)
        if self.size > self._limit:
            raise _TooLarge(f"a base64 value is over the limit of {self._limit} bytes")
        if self._budget is not None:
            if not self._budget.take(len(data)):
                if self.size > self._budget.total:   # it would not fit even alone
                    raise _TooLarge(f"a base64 value is over the limit of {self._budget.total} bytes")
                raise _Busy(f"the controller is receiving as many {self._what} as it has room for; try again "
                            f"in a few seconds")
            self._taken += len(data)
        self._keep(data)

    def _keep(self, data: bytes) -> None:
        raise NotImplementedError

    def _last(self) -> None:
        if self._pending:
            self._decode(self._pending + b"=" * (-len(self._pending) % 4))
            self._pending = b""

    def finish(self) -> Any:
        raise NotImplementedError

    def abandon(self) -> None:
        pass

    def discard(self) -> None:
        """The request is over: what the value held leaves the budget."""
        self.abandon()
        if self._budget is not None:
            self._budget.give(self._taken)
        self._taken = 0


class _Held(_Base64):
    """A base64 value decoded into memory."""

    def __init__(self, limit: int, budget: _Budget | None = None):
        super().__init__(limit, budget, "results")
        self._parts: list[bytes] = []

    def _keep(self, data: bytes) -> None:
        self._parts.append(data)

    def finish(self) -> xmlrpc.client.Binary:
        self._last()
        data, self._parts = b"".join(self._parts), []
        return xmlrpc.client.Binary(data)


class _Spool(_Base64):
    """A base64 value decoded into a temporary file, hashed on the way."""

    def __init__(self, directory: Path | None, limit: int, budget: _Budget):
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


class _CallReader(xmlrpc.client.Unmarshaller):
    """xmlrpc's unmarshaller with bounds: nesting depth, and bytes held in memory, as text or as base64
    values (decoded as they arrive, never held as text). A call's large value is its first base64
    parameter: `large(method, the parameters before it)` gives its decoder, with a limit of its own (or
    None: it is like any other); every other value counts against `max_text`."""

    def __init__(self, max_depth: int, max_text: int,
                 large: Callable[[str | None, tuple], _Base64 | None] | None):
        super().__init__(use_datetime=False, use_builtin_types=False)
        self._depth = 0
        self._max_depth = max_depth
        self._text_left = max_text
        self._large = large
        self._base64: _Base64 | None = None
        self._counted = False       # whether the value being decoded counts against max_text

    def start(self, tag, attrs):
        self._depth += 1
        if self._depth > self._max_depth:
            raise _Refused(f"the call is nested more than {self._max_depth} elements deep")
        super().start(tag, attrs)
        if tag == "base64":
            self._base64 = self._decoder()

    def _decoder(self) -> _Base64:
        if self._large is not None and not self._marks:     # a parameter, not inside an array or struct
            large, self._large = self._large, None           # one per call
            decoder = large(self.getmethodname(), tuple(self._stack))
            if decoder is not None:
                self._counted = False
                return decoder
        self._counted = True
        return _Held(max(self._text_left, 0))

    def data(self, text):
        if self._base64 is not None:
            self._base64.feed(text)
            return
        self._text_left -= len(text)
        if self._text_left < 0:
            raise _TooLarge("the call holds more text than its limit")
        super().data(text)

    def end(self, tag):
        self._depth -= 1
        if tag == "base64" and self._base64 is not None:
            value, self._base64 = self._base64, None
            if self._counted:
                self._text_left -= value.size
            self.append(value.finish())
            self._value = False
            return None
        return super().end(tag)

    def abandon(self) -> None:
        if self._base64 is not None:
            self._base64.abandon()


def _refuse_dtd(*_args) -> None:
    raise _Refused("XML declarations (DOCTYPE, ENTITY) are not accepted")


def _safe_expat(target: xmlrpc.client.Unmarshaller):
    """An expat parser that refuses any DTD, entity declaration or external reference, whatever the
    document's encoding (expat decodes first, so UTF-16 tricks meet the same handlers)."""
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = True
    parser.buffer_size = CHUNK
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.UnparsedEntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    parser.StartElementHandler = target.start
    parser.EndElementHandler = target.end
    parser.CharacterDataHandler = target.data
    target.xml(None, None)
    return parser


def read_xmlrpc(chunks: Iterable[bytes], max_depth: int = 256, max_text: int = 1 << 62,
                large: Callable[[str | None, tuple], _Base64 | None] | None = None) -> tuple[tuple, str | None]:
    """(params, method name) of an XML-RPC call or response fed in chunks (`large`: see _CallReader).
    Raises `xmlrpc.client.Fault` for a fault response, ValueError for anything else that is not
    acceptable XML-RPC."""
    reader = _CallReader(max_depth, max_text, large)
    parser = _safe_expat(reader)
    try:
        for chunk in chunks:
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
        return reader.close(), reader.getmethodname()
    except (_Refused, xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError) as err:
        raise ValueError(str(err) or "not a well-formed XML-RPC document") from None
    except (TypeError, AttributeError, IndexError, KeyError, OverflowError) as err:
        # The unmarshaller meets malformed structure (a member without a name, ...).
        raise ValueError(f"not a well-formed XML-RPC document ({type(err).__name__})") from None
    finally:
        reader.abandon()


# -- the handler ---------------------------------------------------------------------------------

class RequestHandler(SimpleXMLRPCRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive: nodes poll over one connection
    rpc_paths = ("/", "/RPC2")
    # Only gzip what is worth it: a task or a status is a few KB of XML, and compressing every one costs
    # the controller more CPU than the bytes saved (the stdlib's default is 1,400 bytes).
    encode_threshold = 8192
    server_version = f"povfarm/{__version__}"    # the Server header (RPC and web page): not Python's version

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s %s", self.address_string(), format % args)

    @property
    def record(self) -> Connection:
        return _current.record

    def handle_one_request(self) -> None:
        """Wait for the next request (a new connection: until its header deadline; a trusted one: the
        idle timeout), then give its headers and the whole request their deadlines to arrive."""
        limits, connections = self.server.limits, self.server.connections
        if self.record.trusted:
            connections.deadline(self.record, None)
            self.connection.settimeout(limits.idle_timeout)
            try:
                if not self.rfile.peek(1):
                    self.close_connection = True
                    return
            except (OSError, ValueError):
                self.close_connection = True
                return
            connections.deadline(self.record, limits.header_timeout)
        self.connection.settimeout(limits.request_timeout)
        self._started = time.monotonic() if self.record.trusted else self.record.opened
        try:
            super().handle_one_request()
        except (OSError, ValueError):     # cut off by the reaper, or the client went away
            self.close_connection = True

    def _refuse(self, status: http.HTTPStatus, message: str, close: bool = True, fault: Code | None = None,
                retry_after: int | None = None) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if fault is not None:
            self.send_header(FAULT_HEADER, str(int(fault)))    # the fault code a client can branch on
        if status is http.HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="povfarm"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _refused_seat(self, roles: frozenset[str], stream: bool = False) -> bool:
        """Seat the connection by its token's role; if there is no seat, answer 503 with Retry-After."""
        reason = self.server.connections.seat(self.record, roles, stream)
        if reason is None:
            return False
        self._refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, f"the controller is busy: {reason}; retry later",
                     retry_after=RETRY_AFTER)
        return True

    def _roles(self) -> frozenset[str]:
        values = self.headers.get_all("Authorization") or []
        if len(values) != 1:
            return frozenset()
        scheme, _, token = values[0].partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return frozenset()
        return roles_of(token.strip(), self.server.tokens)

    def do_GET(self) -> None:
        """A stream (needs a token), else the farm's page and its static files (they hold no data)."""
        target = urllib.parse.urlsplit(self.path)
        stream = self.server.streams.get(target.path)
        if stream is None:
            web.serve(self)
            return
        roles = self._roles()
        if not roles & stream.roles:
            self._refuse(http.HTTPStatus.UNAUTHORIZED if not roles else http.HTTPStatus.FORBIDDEN,
                         "a valid bearer token is required" if not roles else "this token may not watch")
            return
        if self._refused_seat(roles, stream=True):
            return
        try:
            chunks = stream.function(urllib.parse.parse_qs(target.query, max_num_fields=16))
        except (FarmError, ValueError) as err:    # ValueError: more query fields than allowed
            code = err.code if isinstance(err, FarmError) else Code.BAD_ARGUMENT
            self._refuse(http.HTTPStatus.BAD_REQUEST, str(err), fault=code)
            return
        self._send_stream(chunks)

    def _write_chunk(self, parts: list[bytes]) -> None:
        """One HTTP chunk of the parts. On a plain socket in one gathering write: the pieces are shared
        by every viewer and never copied for one, and the thread gives up the GIL once per send, not
        once per piece. TLS has no gathering write: the parts are joined."""
        data = [b"%x\r\n" % sum(len(part) for part in parts), *parts, b"\r\n"]
        self.wfile.flush()
        if isinstance(self.connection, ssl.SSLSocket) or not hasattr(self.connection, "sendmsg"):
            self.wfile.write(b"".join(data))
            self.wfile.flush()
        else:
            _send_gathered(self.connection, data)

    def _send_stream(self, chunks: Iterator[list[bytes]]) -> None:
        """A long response in HTTP chunks, each written as it comes. No reaper deadline: a viewer that
        stops reading is cut off by the socket's timeout on a write."""
        self.server.connections.deadline(self.record, None)
        self.close_connection = True
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-Type", STREAM_TYPE)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for parts in chunks:
                self._write_chunk(parts)
            self.wfile.write(b"0\r\n\r\n")
        except OSError as err:
            log.debug("stream to %s ended: %s", self.client_address[0], err)
        except FarmError as err:       # e.g. the database failed: the viewer reconnects and resumes
            log.warning("stream to %s broken off: %s", self.client_address[0], err)
        except Exception:
            log.exception("stream to %s broken off by an unexpected error", self.client_address[0])
        finally:
            chunks.close()

    def do_POST(self) -> None:
        if not self.is_rpc_path_valid():
            self._refuse(http.HTTPStatus.NOT_FOUND, "not found")
            return
        roles = self._roles()
        if not roles:
            self._refuse(http.HTTPStatus.UNAUTHORIZED, "a valid bearer token is required")
            return
        if self._refused_seat(roles):
            return
        left = self.server.limits.request_timeout - (time.monotonic() - self._started)
        self.server.connections.deadline(self.record, max(left, 0.0))
        declared = self.headers.get(METHOD_HEADER)
        limit = self.server.body_limit(roles, declared)
        length = self._content_length(limit)
        if length is None:
            return
        with contextlib.ExitStack() as self._held:   # a heavy call's place, until its answer is sent
            response = self._answer(length, limit, roles, declared)
            if response is not None:
                self._reply(response)

    def _reply(self, response: bytes | FileReply) -> None:
        if isinstance(response, FileReply):
            self._send_file(response)
            return
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-Type", "text/xml")
        if self.encode_threshold is not None and len(response) > self.encode_threshold \
                and "gzip" in self.accept_encodings() and getattr(response, "compressible", True):
            response = xmlrpc.client.gzip_encode(response)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)

    def _send_file(self, reply: FileReply) -> None:
        try:
            self.send_response(http.HTTPStatus.OK)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(reply.length))
            self.end_headers()
            for piece in reply.pieces():
                self.wfile.write(piece)
        except OSError as err:
            log.warning("sending a file to %s failed: %s", self.client_address[0], err)
            self.close_connection = True
        finally:
            reply.close()

    def _answer(self, length: int, limit: int, roles: frozenset[str],
                declared: str | None) -> bytes | FileReply | None:
        """Read, parse and run the call; the response body, or None when an HTTP error was sent."""
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip"):
            self._refuse(http.HTTPStatus.NOT_IMPLEMENTED, f"Content-Encoding {encoding} is not supported")
            return None
        # Once the body is in, a slow method is fine: the request deadline ends there.
        chunks = _body_chunks(self.rfile, length, lambda: self.server.connections.deadline(self.record, None))
        if encoding == "gzip":
            chunks = _inflated(chunks, limit)
        values: list[_Base64] = []
        try:
            if self.server.may_call(roles, declared):   # a heavy one waits for its place before its body
                self._held.enter_context(self.server.gates.enter(declared))
            return self._run(chunks, limit, roles, declared, values)
        except _TooLarge as err:
            self._refuse(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(err))
        except _BadBody as err:
            self._refuse(http.HTTPStatus.BAD_REQUEST, str(err))
        except _Busy as err:
            self._refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, str(err), retry_after=RETRY_AFTER)
        finally:
            for value in values:       # a request's files never outlive it (a method keeping one moved it)
                value.discard()
        return None

    def _run(self, chunks: Iterable[bytes], limit: int, roles: frozenset[str], declared: str | None,
             values: list[_Base64]) -> bytes | FileReply:
        server = self.server
        # A large method's one large value has a limit of its own: everything else in it is small.
        max_text = server.limits.small_body(roles) if declared in server.limits.large_methods else limit
        try:
            params, method = read_xmlrpc(chunks, server.limits.max_depth, max_text,
                                         functools.partial(self._large_value, declared, roles, values))
        except (ValueError, FarmError, xmlrpc.client.Fault) as err:
            return self._refused_call(err, chunks)
        if declared is not None and declared != method:
            return server.dump_fault(FarmError(
                Code.BAD_REQUEST, f"the call is to {method}, not {declared} as its header says").to_fault())
        if declared is None:     # a heavy method's place, for a caller that did not name it
            self._held.enter_context(server.gates.enter(method))
        return server.dispatch(method, params, roles)

    def _large_value(self, declared: str | None, roles: frozenset[str], values: list[_Base64],
                     method: str | None, before: tuple) -> _Base64 | None:
        """The decoder of a declared large method's large value: a file (an upload, for a role that may
        write one), or memory up to the method's own limit for it (a result: its unit's rows); either
        within the budget all requests share for them."""
        server, limits = self.server, self.server.limits
        if method != declared or not server.may_call(roles, method) or method not in limits.large_methods:
            return None
        if method in limits.spooled_methods and limits.spool_size(roles):
            values.append(_Spool(limits.spool_dir, limits.spool_size(roles), server.spool_budget))
        else:
            values.append(_Held(server.value_limit(method, before), server.held_budget))
        return values[-1]

    def _refused_call(self, err: Exception, chunks: Iterable[bytes]) -> bytes:
        """The fault for a call that could not be read (malformed, or STORAGE while spooling), after
        reading (and inflating) the rest of the body within its limits: a body over them is still a 413."""
        if isinstance(err, FarmError) and err.code is Code.STORAGE:
            log.warning("request from %s refused: %s", self.client_address[0], err)
        elif isinstance(err, FarmError):
            log.info("request from %s refused: %s", self.client_address[0], err)
        else:
            log.info("malformed request from %s: %s", self.client_address[0], err)
        for _ in chunks:
            pass
        fault = err if isinstance(err, FarmError) else FarmError(
            Code.BAD_REQUEST, f"the request is not acceptable XML-RPC: {err}")
        return self.server.dump_fault(self.server.hide_paths(fault.to_fault()))

    def _content_length(self, limit: int) -> int | None:
        if "Transfer-Encoding" in self.headers:
            self._refuse(http.HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length")
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._refuse(http.HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return None
        if len(values) > 1 or not _CONTENT_LENGTH.fullmatch(values[0]):
            self._refuse(http.HTTPStatus.BAD_REQUEST, "Content-Length must appear once, as decimal digits")
            return None
        length = int(values[0])
        if length > limit:
            self._refuse(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"the request body is over the limit of {limit} bytes for this token and method")
            return None
        return length


# -- the server ----------------------------------------------------------------------------------

def sweep_spool(directory: Path | None) -> None:
    """Remove upload files a killed controller left behind."""
    if directory is None or not directory.is_dir():
        return
    for path in directory.glob(f"upload-*{SPOOL_SUFFIX}"):
        path.unlink(missing_ok=True)


def _send_gathered(sock: socket.socket, parts: list[bytes]) -> None:
    """sendall for a list of buffers, with sendmsg: what a partial send left goes in the next call."""
    views = [memoryview(part) for part in parts if part]
    while views:
        sent = sock.sendmsg(views[:512])    # IOV_MAX is 1024 on Linux
        while sent:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0], sent = views[0][sent:], 0


_SCARCE = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
STREAM_TYPE = "application/x-povfarm-feed"
FAULT_HEADER = "X-Povfarm-Fault"


@dataclasses.dataclass(frozen=True)
class _Stream:
    function: Callable[[dict[str, list[str]]], Iterator[list[bytes]]]
    roles: frozenset[str]


class RPCServer(socketserver.ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024    # many nodes and viewers connect at once; the default 5 drops them

    def __init__(self, address: tuple[str, int], tokens: dict[str, str],
                 tls: ssl.SSLContext | None = None, limits: Limits = Limits(),
                 supervisor: Supervisor | None = None):
        self.tokens = tokens
        self.tls = tls
        self.limits = limits
        HOST.raise_open_files_limit()
        sweep_spool(limits.spool_dir)
        self.connections = Connections(limits.quotas, limits.header_timeout, self._start_thread, supervisor)
        self.gates = _Gates(limits.gates, limits.gate_wait)
        self.spool_budget = _Budget(limits.max_spool)
        self.held_budget = _Budget(limits.max_held)
        self._methods: dict[str, Callable[..., Any]] = {}
        self._value_limits: dict[str, Callable[[tuple], int]] = {}
        self._roles: dict[str, frozenset[str]] = {}
        self._signatures: dict[str, inspect.Signature] = {}
        self._encoded: dict[str, tuple[Any, bytes]] = {}   # shared method -> (its last result, encoded)
        self.streams: dict[str, _Stream] = {}
        super().__init__(address, requestHandler=RequestHandler, logRequests=False,
                         allow_none=False, use_builtin_types=False)
        self.register_function(self._list_methods, "system.listMethods", ANY_ROLE)
        self.register_function(self._method_help, "system.methodHelp", ANY_ROLE)

    def body_limit(self, roles: frozenset[str], declared: str | None) -> int:
        """The most a request may send, from its headers alone: the role's small limit, unless it names
        a large method its role may call."""
        if declared in self.limits.large_methods and self.may_call(roles, declared):
            return self.limits.max_body
        return self.limits.small_body(roles)

    def may_call(self, roles: frozenset[str], method: str | None) -> bool:
        return bool(roles & self._roles.get(method or "", frozenset()))

    def value_limit(self, method: str, before: tuple) -> int:
        """The most bytes a large method's large value may hold, from the parameters before it (the
        method's `rpc_value_limit`, which may also raise FarmError), else the body limit."""
        limit = self._value_limits.get(method)
        if limit is None:
            return self.limits.max_body
        try:
            return limit(before)
        except FarmError:
            raise
        except Exception:
            raise FarmError(Code.INTERNAL, self._internal_fault(method).faultString) from None

    # -- connections ---------------------------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, Any]:
        """accept(), which fails while the process is out of descriptors or memory: pause a moment then,
        or the accepting loop would spin on the listening socket it cannot empty."""
        try:
            return super().get_request()
        except OSError as err:
            if err.errno in _SCARCE:
                log.error("cannot accept a connection: %s", os.strerror(err.errno))
                time.sleep(0.1)
            raise

    def handle_error(self, request, client_address) -> None:
        """An unexpected error in one connection: logged, never printed, never fatal to the others."""
        log.exception("error while serving %s", client_address[0] if client_address else "a client")

    def process_request(self, request, client_address) -> None:
        """A new connection waits in the lobby (no thread) until it sends something."""
        self.connections.admit(request, client_address[0])

    def _start_thread(self, record: Connection) -> None:
        request = record.sock
        try:
            client_address = request.getpeername()
        except OSError:
            client_address = (record.peer, 0)
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address, record),
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError:     # no thread to be had: drop this one, keep accepting
            log.error("cannot start a thread for a connection from %s", record.peer)
            self.connections.release(record)
            self.shutdown_request(request)

    def _serve_connection(self, request, client_address, record: Connection) -> None:
        _current.record = record
        try:
            if self.tls is not None:
                request.settimeout(self.limits.handshake_timeout)
                try:
                    request = record.sock = self.tls.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as err:
                    log.info("TLS handshake with %s failed: %s", client_address[0], err)
                    return
            self.RequestHandlerClass(request, client_address, self)
        except (OSError, ValueError) as err:
            log.debug("connection from %s ended: %s", client_address[0], err)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            _current.record = None
            self.connections.release(record)
            self.shutdown_request(request)

    def server_close(self) -> None:
        self.connections.stop()
        super().server_close()

    # -- methods -------------------------------------------------------------------------------

    def register_function(self, function: Callable[..., Any] | None = None, name: str | None = None,
                          roles: Iterable[str] = ANY_ROLE):
        name = name or function.__name__
        self._methods[name] = function
        self._roles[name] = frozenset(roles)
        self._signatures[name] = inspect.signature(function)
        limit = getattr(function, "rpc_value_limit", None)   # a method of the same object, by name
        if limit is not None:
            self._value_limits[name] = getattr(function.__self__, limit)
        return function

    def register_stream(self, path: str, function: Callable[[dict[str, list[str]]], Iterator[list[bytes]]],
                        roles: Iterable[str]) -> None:
        """Serve `GET path` to the roles as a long chunked response: `function(query)` returns a generator
        of sends (lists of bytes, each send one HTTP chunk), or raises FarmError (HTTP 400 with its
        sentence and fault code) for bad query arguments."""
        self.streams[path] = _Stream(function, frozenset(roles))

    def _list_methods(self) -> list[str]:
        """system.listMethods() -> [str]: every method name."""
        return sorted(self._methods)

    def _method_help(self, name: str) -> str:
        """system.methodHelp(name: str) -> str: the method's documentation and the roles that may call it."""
        if name not in self._methods:
            raise FarmError(Code.UNKNOWN_METHOD, f"there is no method {name!r}")
        roles = ", ".join(sorted(self._roles[name]))
        return f"{method_help(name, self._methods[name])}\nRoles: {roles}."

    def dispatch_request(self, data: bytes, roles: frozenset[str]) -> bytes:
        """One XML-RPC request body in, one response body out; never raises."""
        try:
            params, method = read_xmlrpc([data], self.limits.max_depth)
        except (ValueError, xmlrpc.client.Fault) as err:
            log.info("malformed request: %s", err)
            return self.dump_fault(FarmError(Code.BAD_REQUEST, f"the request is not acceptable XML-RPC: {err}"
                                             ).to_fault())
        response = self.dispatch(method, params, roles)
        if isinstance(response, FileReply):
            try:
                return b"".join(response.pieces())
            finally:
                response.close()
        return response

    def dispatch(self, method: str | None, params: tuple, roles: frozenset[str]) -> bytes | FileReply:
        """Run a parsed call; the response body (or a file to stream as it). Never raises."""
        if not isinstance(method, str):
            return self.dump_fault(FarmError(Code.BAD_REQUEST, "the request names no method").to_fault())
        try:
            result = self._call(method, params, roles)
        except xmlrpc.client.Fault as fault:
            return self.dump_fault(self.hide_paths(fault))
        if isinstance(result, FileReply):
            return result
        try:
            return self._encode(method, result)
        except (TypeError, OverflowError, RecursionError):
            return self.dump_fault(self._internal_fault(method))

    def _encode(self, method: str, result: Any) -> bytes:
        """The response carrying `result`. A method marked shared (`farm.api.rpc`) returns the very same
        object while its answer is unchanged, so the bytes made for it last time serve again: twenty pages
        listing fifty jobs every two seconds cost one encoding, not twenty."""
        last = self._encoded.get(method)
        if last is not None and last[0] is result:
            return last[1]
        body = xmlrpc.client.dumps((result,), methodresponse=True, allow_none=False).encode()
        if getattr(self._methods[method], "rpc_shared", False):
            self._encoded[method] = (result, body)
        return body

    def _marshaled_dispatch(self, data, dispatch_method=None, path=None):
        # Only reachable without the handler above; never without roles.
        return self.dispatch_request(data, frozenset())

    def hide_paths(self, fault: xmlrpc.client.Fault) -> xmlrpc.client.Fault:
        """The fault without the server's own paths (its data directory): clients need not know them."""
        text = fault.faultString
        for path in self.limits.hidden_paths:
            text = text.replace(path, "<data-dir>")
        return xmlrpc.client.Fault(fault.faultCode, text)

    @staticmethod
    def dump_fault(fault: xmlrpc.client.Fault) -> bytes:
        return xmlrpc.client.dumps(fault, methodresponse=True).encode()

    def _call(self, method: str, params: tuple, roles: frozenset[str]) -> Any:
        try:
            function = self._methods.get(method)
            if function is None:
                raise FarmError(Code.UNKNOWN_METHOD, f"there is no method {method!r}")
            if not roles & self._roles[method]:
                raise FarmError(Code.FORBIDDEN, f"a {'/'.join(sorted(roles))} token may not call {method}")
            try:
                self._signatures[method].bind(*params)
            except TypeError:
                raise FarmError(Code.BAD_ARGUMENT,
                                f"{method}{self._signatures[method]} called with {len(params)} arguments") from None
            return function(*params)
        except FarmError as err:
            raise err.to_fault() from None
        except Exception:
            raise self._internal_fault(method) from None

    @staticmethod
    def _internal_fault(method: str) -> xmlrpc.client.Fault:
        """Log the traceback under a short reference the caller can quote."""
        ref = uuid.uuid4().hex[:8]
        log.exception("internal error in %s (ref %s)", method, ref)
        return FarmError(Code.INTERNAL, f"internal error in {method} (ref {ref}); see the controller log"
                         ).to_fault()


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def server_tls_context(cert: str, key: str) -> ssl.SSLContext | None:
    """A server TLS context from a certificate chain and key, or None for plain HTTP."""
    if not cert and not key:
        return None
    if not (cert and key):
        raise FarmError(Code.BAD_ARGUMENT, "TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot load the TLS certificate or key: {err}") from None
    return context


_PARAM = re.compile(r"^@param (\w+): ([^,\n]+)", re.MULTILINE)
_RETURN = re.compile(r"^@return: ([^,:\n]+)", re.MULTILINE)


def method_help(name: str, function: Callable[..., Any]) -> str:
    """A method's documentation headed by its signature, read from its `@param name: type` and
    `@return: type` lines: `jobs.status(job: int) -> struct`."""
    doc = inspect.getdoc(function) or ""
    if doc.startswith(name):
        return doc
    params = ", ".join(f"{param}: {kind.strip()}" for param, kind in _PARAM.findall(doc))
    returns = _RETURN.search(doc)
    return f"{name}({params}) -> {returns.group(1).strip() if returns else 'nothing'}\n{doc}"
