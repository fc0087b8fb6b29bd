"""The viewers' stream: every stored piece framed once, then sent to each viewer of its job.

`viewer.watch` answers one long poll at a time, so each viewer costs the controller a request, a
database read and an XML encoding of the same rows. The stream (`GET /feed`, see farm/server/handler.py) holds
one response open per viewer instead and sends records as they come:

    record = header line (JSON, UTF-8, ending in "\\n") + `size` bytes of payload

- `{"type": "job", "job": {...}, "in_flight": [...]}`: the job's status (as jobs.list
  gives it; {} when there is no job yet) and its units in flight, as viewer.watch gives them. Sent
  first (before the job's pieces: they need its size), then after the pieces of each send when the
  job changed (so "done" comes after the last piece), and first again when a viewer following the
  newest job (job 0) moves to a new one.
- `{"type": "piece", "frame", "row_start", "row_end", "kind", ["width", "height"], "cursor", "size"}`
  + the piece's zlib rows: one frame's final rows, or a preview of its own size, as in viewer.watch.
- `{"type": "piece", "kind": "live", "frame", "left", "top", "right", "bottom", "size"}` + zlib of 8-bit RGB
  rows: a finished block of a unit still rendering (its rectangle inclusive, in image coordinates), only on
  a stream asked with live=1; painted until final rows replace it, never stored (farm/service/live.py).
- `{"type": "ping"}`: nothing happened for a while (keeps idle-closing proxies away).
- `{"type": "end"}`: the watched job has ended and every piece was sent; the stream closes.

A piece's record is built once per job log and shared by every viewer (`FeedLog`); a viewer thread
only writes them, at most once per `pace` seconds. The pace grows with the number of viewers, so
that all of them together cost the controller about SENDS_PER_SECOND sends a second: 4 viewers see
news every 0.1 s, 20 every 0.5 s.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
import time
from typing import Callable, Iterator

from farm.kinds import LIVE
from farm.service.changes import Changes
from farm.service.live import LiveBlocks
from farm.service.views import FEED_BATCH, Views, feed_pieces
from farm.states import ENDED
from farm.store import Store
from farm.wire import record

PACE = 0.1            # least seconds between two sends to one viewer: pieces arriving meanwhile go together
SENDS_PER_SECOND = 40    # ... and about the most for all viewers together, once there are more than 4
FRESH = 0.05          # seconds the pieces read from the store serve every viewer asking
STATUS_FRESH = 0.25   # ... and a job's status (a few queries over all its units: the costlier read), or
                      # the pace when that is longer
KEEPALIVE = 15.0      # seconds of silence before a ping
LOG_BUDGET = 64 * 1024 * 1024    # bytes of framed pieces kept for all jobs together
MAX_STATUSES = 256               # jobs whose status record is kept


PING = record({"type": "ping"})
END = record({"type": "end"})


@dataclasses.dataclass
class _JobLog:
    """A job's framed pieces with done_seq in (first, last], in the order they were stored."""
    first: int
    last: int
    version: tuple[int, int] | None = None
    read_at: float = -1e9
    seqs: list[int] = dataclasses.field(default_factory=list)
    records: list[bytes] = dataclasses.field(default_factory=list)
    size: int = 0
    used: float = 0.0


class FeedLog:
    """Framed pieces per job, read from the store once per change of the job however many viewers ask."""

    def __init__(self, store: Store, views: Views, changes: Changes, budget: int = LOG_BUDGET,
                 clock: Callable[[], float] = time.monotonic):
        self._store, self._views, self._changes = store, views, changes
        self._budget, self._clock = budget, clock
        self._logs: dict[int, _JobLog] = {}
        self._status: dict[int, tuple[tuple[int, int], bytes, bool, float]] = {}
        self._lock = threading.Lock()          # the job logs
        self._building = threading.Lock()      # the status records

    def pieces_after(self, job_id: int, cursor: int,
                     complete: bool = False) -> tuple[int, list[bytes], tuple[int, int] | None]:
        """The framed pieces of the job stored after `cursor`, the cursor after them and the job's version
        they reflect. Pieces stored in the last FRESH seconds may wait for the next call, unless
        `complete` (the job has ended)."""
        with self._lock:
            log = self._logs.get(job_id)
            if log is None or cursor < log.first:
                log = self._logs[job_id] = _JobLog(first=cursor, last=cursor)
            version, now = self._changes.version(job_id), self._clock()
            read = log.version != version and (complete or now - log.read_at >= FRESH)
            if read:
                self._read_new(job_id, log)
                log.version, log.read_at = version, now
            log.used = now
            pieces = log.records[bisect.bisect_right(log.seqs, cursor):]
            if read:      # after taking this viewer's pieces: trimming must not skip any of them
                self._keep_within_budget(job_id)
            return max(cursor, log.last), pieces, log.version

    def status(self, job_id: int, fresh: float = STATUS_FRESH) -> tuple[tuple[int, int], bytes, bool]:
        """The job's status record, its version and whether the job has ended: built at most once per
        change and per `fresh` seconds (a job busy with many nodes changes far more often)."""
        with self._building:       # one viewer builds it while the others wait for it, not beside it
            version, now = self._changes.version(job_id), self._clock()
            cached = self._status.get(job_id)
            if cached is not None and (cached[0] == version or now - cached[3] < fresh):
                return cached[:3]
            return self._build_status(job_id, version, now)

    def _build_status(self, job_id: int, version: tuple[int, int], now: float) -> tuple[tuple[int, int], bytes, bool]:
        if job_id:
            job = self._store.jobs.get(job_id)
            status, in_flight = self._views.live_view(job)
        else:
            status, in_flight = {}, []
        built = (version, record({"type": "job", "job": status, "in_flight": in_flight}),
                 status.get("state") in ENDED, now)
        self._status[job_id] = built
        if len(self._status) > MAX_STATUSES:     # forget the jobs nobody watched for longest
            for stale in sorted(self._status, key=lambda job: self._status[job][3])[:len(self._status) // 2]:
                del self._status[stale]
        return built[:3]

    def _read_new(self, job_id: int, log: _JobLog) -> None:
        job = None
        while True:
            stored = self._store.units.stored_after(job_id, log.last, limit=FEED_BATCH)
            if not stored:
                return
            job = job or self._store.jobs.get(job_id)
            for unit in stored:
                for piece in feed_pieces(unit, job):
                    rows = piece.pop("rows")
                    framed = record({"type": "piece", **piece, "cursor": unit.done_seq}, rows)
                    log.seqs.append(unit.done_seq)
                    log.records.append(framed)
                    log.size += len(framed)
            log.last = stored[-1].done_seq
            if len(stored) < FEED_BATCH:
                return

    def _keep_within_budget(self, current: int) -> None:
        """Forget the logs used longest ago (a viewer of such a job reads it again from the store), and
        the front of a log that alone is over half the budget."""
        log = self._logs[current]
        drop, size = 0, log.size
        while size > self._budget // 2 and drop < len(log.records) - 1:
            size -= len(log.records[drop])
            drop += 1
        if drop:      # one slice, not a pop from the front per record
            log.first, log.size = log.seqs[drop - 1], size
            del log.seqs[:drop], log.records[:drop]
        while sum(entry.size for entry in self._logs.values()) > self._budget:
            oldest = min((job for job in self._logs if job != current), key=lambda job: self._logs[job].used,
                         default=None)
            if oldest is None:
                return
            del self._logs[oldest]


class Streams:
    """One viewer's stream as a generator of sends, each a list of records (shared bytes, never copied
    per viewer); the transport writes each send as one HTTP chunk."""

    def __init__(self, store: Store, changes: Changes, log: FeedLog, pace: float = PACE,
                 sends_per_second: float = SENDS_PER_SECOND,
                 keepalive: float = KEEPALIVE, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, live: LiveBlocks | None = None):
        self._store, self._changes, self._log, self._live = store, changes, log, live
        self._pace, self._keepalive, self._clock, self._sleep = pace, keepalive, clock, sleep
        self._sends_per_second = sends_per_second
        self._viewers = 0
        self._count = threading.Lock()

    def pace(self) -> float:
        """Seconds between two sends to one viewer, now: PACE, or longer when so many watch that their
        sends together would pass the budget."""
        return max(self._pace, self._viewers / self._sends_per_second)

    def watch(self, job_id: int, cursor: int, gone: Callable[[], bool],
              live: bool = False) -> Iterator[list[bytes]]:
        """Records for `job_id` (0: follow the newest job) after `cursor`, until the watched job ends or
        `gone()` says the viewer left; with `live`, the live blocks of its units in flight too."""
        with self._count:
            self._viewers += 1
        try:
            yield from self._watch(job_id, cursor, gone, live and self._live is not None)
        finally:
            with self._count:
                self._viewers -= 1

    def _watch(self, job_id: int, cursor: int, gone: Callable[[], bool], live: bool) -> Iterator[list[bytes]]:
        target = job_id or self._store.jobs.newest_id()
        sent_version, live_cursor = None, 0
        quiet_since = sent_at = self._clock()
        while not gone():
            if not job_id and (newest := self._store.jobs.newest_id()) != target:
                target, cursor, sent_version, live_cursor = newest, 0, None, 0
            # No viewer sends more often than the pace, so a status newer than that would go unseen.
            version, status, ended = self._log.status(target, max(STATUS_FRESH, self.pace()))
            cursor, pieces, read = self._log.pieces_after(target, cursor, ended) if target else (cursor, [], version)
            behind = not version == read == self._changes.version(target)    # the shared reads lag a change
            if live and target:
                live_cursor, blocks = self._live_records(target, live_cursor)
                pieces = [*pieces, *blocks]
            # A job's first status goes before its pieces (they need its size); later ones after them,
            # so a viewer never reads "done" before the last pieces.
            if sent_version is None:
                chunk = [status, *pieces]
            else:
                chunk = [*pieces, status] if version != sent_version else pieces
            if chunk:
                sent_version, quiet_since = version, self._clock()
                yield chunk
                sent_at = quiet_since
            if ended and job_id:
                yield [END]
                return
            if self._clock() - quiet_since >= self._keepalive:
                quiet_since = self._clock()
                yield [PING]
            # After a send, not again before `pace` has passed, so that what arrives meanwhile goes out
            # together; also when the shared reads lag a change, as they nearly always do while a job
            # is busy: they catch up within FRESH seconds, and the pace holds all the same.
            if behind:
                self._sleep(max(FRESH, sent_at + self.pace() - self._clock()))
                continue
            self._changes.wait(target, version, self._keepalive, gone)
            self._sleep(max(0.0, sent_at + self.pace() - self._clock()))

    def _live_records(self, job_id: int, cursor: int) -> tuple[int, list[bytes]]:
        """The job's live blocks after `cursor`, framed (for this viewer only: they come and go)."""
        cursor, blocks = self._live.after(job_id, cursor)
        return cursor, [record({"type": "piece", "kind": LIVE, **{key: value for key, value in block.items()
                                                                   if key != "rows"}}, block["rows"])
                        for block in blocks]
