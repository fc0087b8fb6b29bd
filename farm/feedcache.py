"""The viewers' feed, encoded once and served to every viewer.

Twenty viewers of one job used to cost the controller twenty encodings of every strip (base64, XML and
gzip per reply), and a reply for every change of the job (each lease, heartbeat and result), so a busy
farm stored strips several times slower with viewers watching. Three things keep that cost small:

- `Premarshalled`: an XML-RPC value encoded ahead of time. `marshal_response` writes it into a response
  verbatim, so a strip is base64-encoded once, when it is first sent, not once per viewer. Strip rows are
  zlib data already, so a response made mostly of them is not gzipped again (gzip only undoes base64's
  third and costs the controller a compression per viewer).
- `FeedCache.pieces`: each stored strip's feed entries, kept by (job, store sequence), within a byte budget.
- `FeedCache.pace` and `FeedCache.shared`: the viewers of a job are answered in shared "slots". A job only
  one viewer watches gets every change at once; the viewers of a job several watch are answered on the
  ticks of a clock that ticks ten times a second, so each costs at most about ten replies a second however
  fast strips arrive, and sees a change within a tick. Every viewer waiting on the job wakes at the same slot and gets the same job status
  (and, at the same cursor, the same reply), worked out once.
"""

from __future__ import annotations

import collections
import math
import threading
import time
import xmlrpc.client
from typing import Any, Callable

SLOT_INTERVAL = 0.1               # seconds between the reply slots of a job several viewers watch
VIEWER_MEMORY = 1.0               # seconds a viewer counts as watching after it last asked
MAX_CACHED_BYTES = 64 * 1024 * 1024
MAX_SHARED = 4096                 # shared values kept before those of old slots are dropped
_HEAD = b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
_TAIL = b"</param>\n</params>\n</methodResponse>\n"


class Premarshalled(dict):
    """An XML-RPC struct encoded ahead of time (`xml`: the UTF-8 bytes of its `<value>`); to Python
    callers still the dict it was made from. `compressible` is False when it is mostly zlib data."""

    __slots__ = ("xml", "compressible", "_body")

    def __init__(self, value: dict, compressible: bool = True):
        super().__init__(value)
        marshaller = _Marshaller()
        self.xml = marshaller.encode(value)
        self.compressible = compressible and marshaller.compressible
        self._body: Response | None = None

    def response(self) -> "Response":
        """The whole response body with this value as the result, encoded once however often it is sent."""
        if self._body is None:
            self._body = marshal_response(self, whole=False)
        return self._body


class Response(bytes):
    """A response body; `compressible` False means gzip would gain little for its cost."""

    compressible = True


class _Marshaller(xmlrpc.client.Marshaller):
    """The standard marshaller, plus: a `Premarshalled` value is written as it is, and the output is
    collected as bytes (large pre-encoded parts are copied once, never joined into text and encoded)."""

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def __init__(self):
        super().__init__("utf-8", allow_none=False)
        self.compressible = True
        self.verbatim = False

    def _verbatim(self, value: Premarshalled, write: Callable[[Any], Any]) -> None:
        write(value.xml)
        self.verbatim = True
        self.compressible = self.compressible and value.compressible

    dispatch[Premarshalled] = _verbatim

    def encode(self, value: Any, head: bytes = b"", tail: bytes = b"") -> bytes:
        """`head`, the `<value>` of `value` as xmlrpc.client writes it, `tail`, as UTF-8 bytes."""
        chunks: list = []
        self._Marshaller__dump(value, chunks.append)   # the stdlib's writer of one value (name-mangled)
        if not self.verbatim:       # the common case: text only, joined as xmlrpc.client joins it
            return head + "".join(chunks).encode() + tail
        out, text = [head], []
        for chunk in chunks:
            if isinstance(chunk, bytes):
                out.append("".join(text).encode())
                out.append(chunk)
                text = []
            else:
                text.append(chunk)
        out.append("".join(text).encode())
        out.append(tail)
        return b"".join(out)


def marshal_response(result: Any, whole: bool = True) -> Response:
    """The XML-RPC response body for `result` (what xmlrpc.client.dumps makes), Premarshalled parts verbatim."""
    if whole and isinstance(result, Premarshalled):
        return result.response()
    marshaller = _Marshaller()
    body = Response(marshaller.encode(result, _HEAD, _TAIL))
    if not marshaller.compressible:
        body.compressible = False
    return body


def _size(piece: Premarshalled) -> int:
    """Bytes a cached piece holds: its XML and the raw data it still carries for Python callers."""
    return len(piece.xml) + sum(len(v.data) for v in piece.values() if isinstance(v, xmlrpc.client.Binary))


class FeedCache:
    """Pre-encoded feed entries per stored strip, and the shared reply slots of each job's viewers."""

    def __init__(self, interval: float = SLOT_INTERVAL, max_bytes: int = MAX_CACHED_BYTES,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.interval = interval
        self.max_bytes = max_bytes
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._pieces: collections.OrderedDict[tuple[int, int], list[Premarshalled]] = collections.OrderedDict()
        self._bytes = 0
        self._slots: dict[int, float] = {}                    # job -> its latest reply slot
        self._viewers: dict[int, dict[int, float]] = {}      # job -> {server thread: when it last asked}
        self._shared: dict[tuple, tuple[float, Any]] = {}     # key -> (slot, value)

    def pieces(self, job_id: int, seq: int, make: Callable[[], list[dict]]) -> list[Premarshalled]:
        """The feed entries of the strip stored as `seq`, encoded on first use (`make` gives them raw)."""
        key = (job_id, seq)
        with self._lock:
            cached = self._pieces.get(key)
            if cached is not None:
                self._pieces.move_to_end(key)
                return cached
        encoded = [Premarshalled(piece, compressible=False) for piece in make()]
        size = sum(_size(piece) for piece in encoded)
        with self._lock:
            if key not in self._pieces:
                self._pieces[key] = encoded
                self._bytes += size
                while self._bytes > self.max_bytes and len(self._pieces) > 1:
                    _, old = self._pieces.popitem(last=False)
                    self._bytes -= sum(_size(piece) for piece in old)
        return encoded

    def pace(self, job_id: int) -> float:
        """Wait for the job's next reply slot and return it: now when one viewer watches the job, else the
        next tick of a clock that ticks every `interval`, which every viewer of the job waking before it
        shares (viewers that come back at different times still meet at ticks). Viewers are told apart by
        the server thread that serves their connection (one per connection)."""
        with self._lock:
            now = self.clock()
            seen = self._viewers.setdefault(job_id, {})
            seen[threading.get_ident()] = now
            if len(seen) > 1:
                for viewer, when in list(seen.items()):
                    if now - when > VIEWER_MEMORY:
                        del seen[viewer]
            if len(seen) <= 1:
                slot = now
            else:
                slot = max(self._slots.get(job_id, 0.0), (math.floor(now / self.interval) + 1) * self.interval)
                self._slots[job_id] = slot
        if slot > now:
            self.sleep(slot - now)
        return slot

    def shared(self, key: tuple, slot: float, make: Callable[[], Any]) -> Any:
        """One value per key and slot (a job's status, a reply at a cursor): made by the first viewer of
        the slot that asks while the others of that slot wait for it. Values of earlier slots are dropped
        as slots pass; a viewer late for its slot makes its own."""
        with self._lock:
            while True:
                kept = self._shared.get(key)
                if kept is None or kept[0] != slot:
                    break
                if not isinstance(kept[1], threading.Event):
                    return kept[1]
                pending = kept[1]
                self._lock.release()
                try:
                    pending.wait(10.0)
                finally:
                    self._lock.acquire()
            mine = threading.Event()
            if kept is None or kept[0] < slot:
                self._shared[key] = (slot, mine)
        made: Any = mine            # stands for "nothing made" should make() raise
        try:
            made = make()
        finally:
            with self._lock:
                if self._shared.get(key) == (slot, mine):
                    if made is mine:
                        del self._shared[key]
                    else:
                        self._shared[key] = (slot, made)
                mine.set()
                self._trim()
        return made

    def _trim(self) -> None:
        if len(self._shared) > MAX_SHARED:
            newest = max(when for when, _ in self._shared.values())
            self._shared = {k: v for k, v in self._shared.items() if v[0] >= newest - 1.0}

    def forget(self, job_id: int) -> None:
        """Drop a job's slots and replies (its pieces age out of the byte budget)."""
        with self._lock:
            self._slots.pop(job_id, None)
            self._viewers.pop(job_id, None)
            self._shared = {k: v for k, v in self._shared.items() if k[1] != job_id}
