"""`povfarm viewer`: a window that paints every strip of a render the moment it is stored.

Three parts, each testable on its own:

- `ViewerState` (with `Canvas`) is pure: it applies the controller's `viewer.watch` replies to a
  pixel buffer per frame, and keeps the job, the strips in flight, the node count, the ETA and which
  job to show. No pygame, no network, an injectable clock.
- `Feed` runs the network in threads: one long-polls `viewer.watch` for the job the UI asks for
  (a new thread per request, so switching jobs never waits for a poll to return), one "scout" asks
  now and then for the newest job and the nodes. Everything reaches the UI through one queue; an
  unreachable controller is retried with back-off and reported as ("link", False, text).
- `Window` is the pygame loop (about 30 frames a second): it drains the queue without blocking,
  turns each new strip into pixels once, blits only the rows that changed, and redraws only when
  something changed.

pygame is imported only inside `run_viewer` / `Window`, so the rest of the farm never needs it.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from farm.client import Client, check_url
from farm.faults import Code, FarmError
from farm.images.png import encode_png
from farm.images.raster import Raster, row_size
from farm.kinds import PREVIEW
from farm.retry import RETRY_CEILING, RETRY_FIRST, Outage, duration, grow
from farm.rows import ZLIB, decode_rows

log = logging.getLogger(__name__)

INSTALL_HINT = "the viewer needs pygame; install it with: pip install 'povfarm[viewer]'"

FINISHED = frozenset({"done", "failed", "canceled"})
CURSOR_END = 2**31 - 1          # past every stored strip (XML-RPC ints are 32-bit): "no strips, just the job"
POLL_TIMEOUT = 25.0             # seconds one viewer.watch may wait (the controller caps it at 30)
CHECKER = 8                     # checker square size in pixels
UNRENDERED = (0x2c, 0x36)       # dark checker: rows nobody has rendered yet
TRANSPARENT = (0x9c, 0x70)      # light checker behind the pixels of an RGBA image
NODE_COLOURS = [(255, 184, 0), (0, 200, 255), (255, 84, 168), (120, 232, 80), (186, 140, 255),
                (255, 122, 64), (64, 224, 200), (240, 240, 96)]
LIVE_NODE_STATES = ("idle", "busy")


def checker(width: int, height: int, channels: int, shades: tuple[int, int] = UNRENDERED,
            size: int = CHECKER) -> bytes:
    """An 8-bit grey checkerboard of width x height pixels (RGB, or opaque RGBA)."""
    def tile(value: int) -> bytes:
        return bytes([value] * 3 + [255] * (channels - 3)) * size

    across = -(-width // size)
    even = b"".join(tile(shades[i % 2]) for i in range(across))[:width * channels]
    odd = b"".join(tile(shades[1 - i % 2]) for i in range(across))[:width * channels]
    bands = (even * size, odd * size)
    return b"".join(bands[j % 2] for j in range(-(-height // size)))[:width * channels * height]


class Canvas:
    """One frame: the pixels as rendered (`raw`, what S saves) and an 8-bit copy for the screen.

    `display` holds 8 bits per sample (the high byte of 16-bit samples) with the image's own channels
    (RGB or RGBA); rows not painted yet show a dark checkerboard.
    """

    def __init__(self, width: int, height: int, channels: int, bits: int):
        if channels not in (3, 4) or bits not in (8, 16) or width < 1 or height < 1:
            raise ValueError(f"cannot show a {width}x{height} image with {channels} channels of {bits} bits")
        self.width, self.height, self.channels, self.bits = width, height, channels, bits
        self.row_bytes = row_size(width, channels, bits)
        self.display_row_bytes = width * channels
        self.raw = bytearray(self.row_bytes * height)
        self.display = bytearray(checker(width, height, channels))
        self._painted: list[list[int]] = []     # sorted, merged [start, end) row ranges

    def paint(self, row_start: int, row_end: int, rows: bytes) -> None:
        """Put decoded rows [row_start, row_end) into both buffers."""
        if not 0 <= row_start < row_end <= self.height:
            raise ValueError(f"rows [{row_start}, {row_end}) are outside a {self.height}-row image")
        if len(rows) != (row_end - row_start) * self.row_bytes:
            raise ValueError(f"rows [{row_start}, {row_end}) need {(row_end - row_start) * self.row_bytes} "
                             f"bytes, not {len(rows)}")
        self.raw[row_start * self.row_bytes:row_end * self.row_bytes] = rows
        screen = rows if self.bits == 8 else rows[0::2]     # big-endian: the high byte comes first
        self.display[row_start * self.display_row_bytes:row_end * self.display_row_bytes] = screen
        self._mark(row_start, row_end)

    def paint_preview(self, width: int, height: int, rows: bytes) -> None:
        """Show a whole-frame preview of `width` x `height` pixels (decoded rows, the image's own format),
        scaled up, on the screen buffer only and only where no final row is painted yet: it stands in for
        the rows to come, is never saved, and final rows replace it."""
        size = row_size(width, self.channels, self.bits)
        if len(rows) != size * height:
            raise ValueError(f"a {width}x{height} preview needs {size * height} bytes, not {len(rows)}")
        screen = rows if self.bits == 8 else rows[0::2]
        pixel = self.channels
        columns = [(x * width // self.width) * pixel for x in range(self.width)]
        scaled: dict[int, bytes] = {}
        for start, end in self.missing():
            for y in range(start, end):
                source = y * height // self.height
                if source not in scaled:
                    line = screen[source * width * pixel:(source + 1) * width * pixel]
                    scaled[source] = b"".join(line[offset:offset + pixel] for offset in columns)
                self.display[y * self.display_row_bytes:(y + 1) * self.display_row_bytes] = scaled[source]

    def _mark(self, start: int, end: int) -> None:
        merged: list[list[int]] = []
        for span in sorted([*self._painted, [start, end]]):
            if merged and span[0] <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], span[1])
            else:
                merged.append(list(span))
        self._painted = merged

    @property
    def painted_rows(self) -> int:
        return sum(end - start for start, end in self._painted)

    @property
    def complete(self) -> bool:
        return self._painted == [[0, self.height]]

    def missing(self) -> list[tuple[int, int]]:
        """Row ranges not painted yet."""
        gaps, row = [], 0
        for start, end in self._painted:
            if start > row:
                gaps.append((row, start))
            row = end
        if row < self.height:
            gaps.append((row, self.height))
        return gaps

    def raster(self) -> Raster:
        """The image in its own format (unpainted rows are zero: black, or transparent with alpha)."""
        return Raster(self.width, self.height, self.channels, self.bits, bytes(self.raw))

    def png(self) -> bytes:
        return encode_png(self.raster())


def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _rows_of(strip: dict) -> bytes:
    rows = strip["rows"]
    return rows.data if hasattr(rows, "data") else bytes(rows)


def _decoded(strip: dict[str, Any], expected: int, row_bytes: int, canvas: "Canvas") -> bytes:
    """A feed piece's raw rows, in whichever encoding it came (a ValueError when they do not fit)."""
    return decode_rows(_rows_of(strip), str(strip.get("encoding", ZLIB)), expected, row_bytes,
                       canvas.channels * canvas.bits // 8)


class ViewerState:
    """What the viewer shows, updated from the feed's messages. Pure: no pygame, no network.

    `job` 0 follows the newest job (and switches to a newer one once it has started); a job id pins it.
    Every change of the job to watch starts a new `session`; messages of an older session are ignored,
    so a reply that was in flight when the user switched jobs never paints the wrong image.
    """

    def __init__(self, job: int = 0, clock: Callable[[], float] = time.time, outage: Outage | None = None):
        self.clock = clock
        self.outage = outage                              # said once each way on stderr, with its patience
        self.follow = not job
        self.target: int | None = job or None
        self.session = 1
        self._polled = job          # the job the feed polls this session (0: the newest, whichever it is)
        self.job: dict[str, Any] = {}
        self.frames: dict[int, Canvas] = {}
        self.frame: int | None = None
        self.in_flight: list[dict[str, Any]] = []
        self.received: list[tuple[int, int, int]] = []   # (frame, row_start, row_end) painted, in order
        self.previewed: set[int] = set()                  # frames showing a preview where rows are missing
        self.drained = False                              # the job ended and every strip is painted
        self.nodes_live: int | None = None
        self.nodes_total: int | None = None
        self.link_ok = True
        self.link_error = ""
        self.error = ""                                   # a refusal from the controller (e.g. no such job)
        self.message = ""
        self._message_until = 0.0
        self._colours: dict[str, tuple[int, int, int]] = {}
        self._eta_at = 0.0                                # when the job's "eta" was measured
        self._step = 0
        self._dirty: list[tuple[int, int, int]] = []
        self._full = True
        self.version = 0                                  # bumped on every visible change

    # -- what the network side should do --------------------------------------------------------------

    def wanted(self) -> tuple[int, int]:
        """(session, job id to watch; 0 = the newest).

        Following, the first session polls "the newest job" and stays with the one it found, so adopting
        that job does not change what the feed is asked (which would fetch its strips again)."""
        return self.session, self._polled

    # -- messages --------------------------------------------------------------------------------------

    def handle(self, message: Sequence[Any]) -> None:
        kind = message[0]
        if kind == "feed":
            self.apply_feed(message[1], message[2])
        elif kind == "newest":
            self.apply_newest(message[1])
        elif kind == "nodes":
            self.apply_nodes(message[1])
        elif kind == "jobs":
            self.apply_jobs(message[1])
        elif kind == "link":
            self.set_link(message[1], message[2])
        elif kind == "error":      # session 0: not about one job (the scout's calls)
            if message[1] in (0, self.session) and self.error != message[2]:
                self.error = message[2]
                self.version += 1
        else:
            raise ValueError(f"unknown viewer message {kind!r}")

    def apply_feed(self, session: int, reply: dict[str, Any]) -> bool:
        """Apply one viewer.watch reply. Returns False when it belongs to an older session."""
        if session != self.session:
            return False
        info = reply.get("job") or {}
        if not info:
            return True          # no job yet: keep waiting
        if self.target is None:
            self.target = info["id"]        # following: the session's first reply names the newest job
        elif info["id"] != self.target:
            return False
        if self.job.get("id") != info["id"] or (self.job.get("width"), self.job.get("height")) != (
                info.get("width"), info.get("height")):
            self.frames, self.frame, self.received, self._full = {}, None, [], True
            self.previewed = set()
        self.job = dict(info)
        self._eta_at = self.clock()
        self.error = ""
        for strip in reply.get("strips", []):
            self._apply_strip(strip)
        self.in_flight = [dict(s) for s in reply.get("in_flight", [])]
        for s in self.in_flight:
            self.colour(s["node"])
        self.drained = info.get("state") in FINISHED and not reply.get("strips")
        self._choose_frame()
        self.version += 1
        return True

    def _apply_strip(self, strip: dict[str, Any]) -> None:
        frame, start, end = int(strip["frame"]), int(strip["row_start"]), int(strip["row_end"])
        canvas = self._canvas(frame)
        if strip.get("kind") == PREVIEW:
            self._apply_preview(canvas, frame, strip)
            return
        try:
            rows = _decoded(strip, (end - start) * canvas.row_bytes, canvas.row_bytes, canvas)
            canvas.paint(start, end, rows)
        except ValueError as err:
            log.warning("job %s frame %s rows %s-%s cannot be shown: %s", self.target, frame, start, end, err)
            return
        self.received.append((frame, start, end))
        self._dirty.append((frame, start, end))

    def _apply_preview(self, canvas: Canvas, frame: int, strip: dict[str, Any]) -> None:
        width, height = int(strip["width"]), int(strip["height"])
        try:
            row_bytes = row_size(width, canvas.channels, canvas.bits)
            rows = _decoded(strip, row_bytes * height, row_bytes, canvas)
            canvas.paint_preview(width, height, rows)
        except ValueError as err:
            log.warning("job %s frame %s preview cannot be shown: %s", self.target, frame, err)
            return
        self.previewed.add(frame)
        if frame == self.frame:
            self._full = True

    def _canvas(self, frame: int) -> Canvas:
        canvas = self.frames.get(frame)
        if canvas is None:
            job = self.job
            canvas = self.frames[frame] = Canvas(job["width"], job["height"], job.get("channels", 3),
                                                 job.get("bits", 8))
        return canvas

    def _choose_frame(self) -> None:
        """Show the lowest frame still being rendered; once all are done, the last one."""
        busy = {int(s["frame"]) for s in self.in_flight}
        painted = {f for f, c in self.frames.items() if c.painted_rows or f in self.previewed}
        open_frames = sorted(f for f in busy | painted if f not in self.frames or not self.frames[f].complete)
        if open_frames:
            frame = open_frames[0]
        elif painted:
            frame = max(painted)
        else:
            frame = self.frame or 1
        if frame != self.frame:
            self.frame, self._full = frame, True
        self._canvas(frame)
        for other in [f for f, c in self.frames.items() if f != frame and (c.complete or not c.painted_rows)]:
            del self.frames[other]      # finished frames we no longer show, and empty ones, cost memory only

    def apply_newest(self, info: dict[str, Any]) -> None:
        """The scout's view of the newest job: when following, move on to it once it has started."""
        if not self.follow or not info or self.target is None:
            return      # with no job yet, the feed's own poll of "the newest job" finds it first
        if info["id"] > self.target and info.get("state") != "queued":
            self._switch(info["id"])

    def apply_nodes(self, nodes: Iterable[dict[str, Any]]) -> None:
        nodes = list(nodes)
        live = sum(1 for n in nodes if n.get("state") in LIVE_NODE_STATES)
        if (live, len(nodes)) != (self.nodes_live, self.nodes_total):
            self.nodes_live, self.nodes_total = live, len(nodes)
            self.version += 1

    def set_link(self, ok: bool, text: str) -> None:
        if self.outage is not None and ok:
            self.outage.back()
        elif self.outage is not None:
            self.outage.lost(text)
        if (ok, text if not ok else "") != (self.link_ok, self.link_error):
            self.link_ok, self.link_error = ok, ("" if ok else text)
            self.version += 1

    # -- job navigation ---------------------------------------------------------------------------------

    def step(self, delta: int) -> None:
        """N (+1) or P (-1): wait for the job list (`apply_jobs`) to know where to go."""
        self._step = 1 if delta > 0 else -1

    def apply_jobs(self, jobs: Iterable[dict[str, Any]] | None) -> None:
        step, self._step = self._step, 0
        if not step or jobs is None:
            return
        ids = sorted(int(j["id"]) for j in jobs)
        current = self.target or 0
        if step > 0:
            later = [i for i in ids if i > current]
            if later:
                self.follow = False
                self._switch(later[0])
            else:
                self.follow = True      # past the newest job: follow whatever comes next
                self.say("following the newest job")
        else:
            earlier = [i for i in ids if i < current]
            if earlier:
                self.follow = False
                self._switch(earlier[-1])
            else:
                self.say("this is the first job")

    def _switch(self, job_id: int) -> None:
        self.target = self._polled = job_id
        self.session += 1
        self.job, self.frames, self.frame, self.in_flight, self.received = {}, {}, None, [], []
        self.previewed = set()
        self.drained, self.error, self._full, self._dirty = False, "", True, []
        self.version += 1

    # -- what the window shows --------------------------------------------------------------------------

    def canvas(self) -> Canvas | None:
        """The frame on screen, or None before the job is known."""
        return self.frames.get(self.frame) if self.frame is not None else None

    def take_updates(self) -> tuple[bool, list[tuple[int, int]]]:
        """(redraw the whole image?, row ranges of the shown frame painted since the last call, top to
        bottom, touching ones merged: a read of hundreds of pieces is a few blits, not hundreds)."""
        full, dirty = self._full, self._dirty
        self._full, self._dirty = False, []
        bands: list[tuple[int, int]] = []
        for start, end in sorted((start, end) for frame, start, end in dirty if frame == self.frame):
            if bands and start <= bands[-1][1]:
                bands[-1] = (bands[-1][0], max(bands[-1][1], end))
            else:
                bands.append((start, end))
        return full, bands

    def colour(self, node: str) -> tuple[int, int, int]:
        """A colour per node name, stable for the viewer's lifetime."""
        if node not in self._colours:
            self._colours[node] = NODE_COLOURS[len(self._colours) % len(NODE_COLOURS)]
        return self._colours[node]

    def shown_in_flight(self) -> list[dict[str, Any]]:
        """Strips being rendered in the frame on screen, unless the job is over."""
        if self.job.get("state") in FINISHED:
            return []
        return [s for s in self.in_flight if int(s["frame"]) == self.frame]

    @property
    def finished(self) -> bool:
        """The job ended and every stored strip has been painted."""
        return self.job.get("state") in FINISHED and self.drained

    @property
    def gave_up(self) -> bool:
        """The controller has been out of reach for the whole patience."""
        return self.outage is not None and self.outage.left() == 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.job.get("state") == "done" else 1

    def timing(self, now: float | None = None) -> tuple[float | None, float | None]:
        """(seconds since the job started, estimated seconds left), None when unknown. The estimate is the
        controller's, from the cost per row it measured (counted down since), else from the fraction done."""
        job = self.job
        started = job.get("started") or 0.0
        if not started:
            return None, None
        now = self.clock() if now is None else now
        end = job.get("finished") or now
        elapsed = max(0.0, end - started)
        progress = float(job.get("progress", 0.0))
        if job.get("state") in FINISHED:
            return elapsed, 0.0 if job.get("state") == "done" else None
        if job.get("eta") is not None:
            return elapsed, max(0.0, float(job["eta"]) - max(0.0, now - self._eta_at))
        if progress <= 0.0:
            return elapsed, None
        return elapsed, elapsed * (1.0 - progress) / progress

    def say(self, text: str, seconds: float = 4.0) -> None:
        self.message, self._message_until = text, self.clock() + seconds
        self.version += 1

    def expire_message(self) -> bool:
        if self.message and self.clock() >= self._message_until:
            self.message = ""
            self.version += 1
            return True
        return False

    def status_lines(self, url: str = "", now: float | None = None) -> list[str]:
        """The status bar: job and progress on the first line, time, nodes and connection on the second."""
        job = self.job
        if job:
            percent = f"{float(job.get('progress', 0.0)) * 100:.0f}%"
            first = (f"job {job['id']} {job.get('name', '')} ({job.get('scene', '')})  {job.get('state', '')}  "
                     f"{job.get('strips_done', 0)}/{job.get('strips_total', 0)} strips  {percent}")
            if int(job.get("frames_total", 1)) > 1 and self.frame is not None:
                first += f"  frame {self.frame} ({job.get('frames_done', 0)}/{job['frames_total']} frames done)"
            elapsed, eta = self.timing(now)
            second = f"elapsed {_clock_text(elapsed)}"
            if job.get("state") not in FINISHED:
                second += f"  ETA {_clock_text(eta)}"
        elif self.target:
            first, second = f"job {self.target}: waiting for the controller", ""
        else:
            first, second = "waiting for a job" + (f" at {url}" if url else ""), ""
        parts = [second] if second else []
        if self.nodes_total is not None:
            parts.append(f"{self.nodes_live} node{'s' if self.nodes_live != 1 else ''} live"
                         + (f" of {self.nodes_total}" if self.nodes_total != self.nodes_live else ""))
        parts.append("following the newest job" if self.follow else "pinned (N: next job)")
        if not self.link_ok:
            parts.append("controller unreachable, retrying")
        if self.error:
            parts.append(self.error)
        if self.message and self.message not in parts:
            parts.append(self.message)
        return [first, "  |  ".join(parts)]


class Feed:
    """The network side: long polls for the wanted job and a scout for the newest job and the nodes.

    Results go to `messages` as tuples for `ViewerState.handle`:
    ("feed", session, reply), ("newest", job), ("nodes", [node]), ("jobs", [job] or None),
    ("link", ok, text), ("error", session, text).
    """

    def __init__(self, url: str, poll_timeout: float = POLL_TIMEOUT, scout_interval: float = 1.0,
                 nodes_interval: float = 3.0, rpc_timeout: float = 30.0,
                 make_client: Callable[[float], Client] | None = None):
        self.url = check_url(url)
        # Each thread makes its own client; the argument is the client's timeout in seconds.
        self._make_client = make_client or (lambda timeout: Client(self.url, timeout=timeout))
        self.poll_timeout = poll_timeout
        self.scout_interval = scout_interval
        self.nodes_interval = nodes_interval
        self.rpc_timeout = rpc_timeout
        self.messages: queue.Queue = queue.Queue()
        self.follow = True                      # the scout asks for the newest job only when following
        self._lock = threading.Condition()
        self._want: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._jobs_wanted = threading.Event()
        self._scout_thread: threading.Thread | None = None

    def start(self) -> "Feed":
        self._scout_thread = threading.Thread(target=self._scout, name="viewer-scout", daemon=True)
        self._scout_thread.start()
        return self

    def watch(self, session: int, job: int) -> None:
        """Poll `job` (0: the newest) for `session`; a poll still running for an older one is abandoned."""
        with self._lock:
            if self._want == (session, job):
                return
            self._want = (session, job)
            self._lock.notify_all()
        threading.Thread(target=self._poll, args=(session, job), name=f"viewer-feed-{session}",
                         daemon=True).start()

    @property
    def wanted(self) -> tuple[int, int] | None:
        return self._want

    def request_jobs(self) -> None:
        self._jobs_wanted.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            self._lock.notify_all()

    def _current(self, session: int, job: int) -> bool:
        return self._want == (session, job) and not self._stop.is_set()

    def _pause(self, seconds: float, session: int, job: int) -> None:
        with self._lock:
            self._lock.wait_for(lambda: not self._current(session, job), timeout=seconds)

    def _poll(self, session: int, job: int) -> None:
        """Follow `job` for `session`: on the controller's stream (GET /feed) when it has one, else by
        viewer.watch long polls. Connection trouble is reported and retried with a growing pause."""
        client = self._make_client(self.poll_timeout + self.rpc_timeout)
        state = {"asked": job, "cursor": 0, "streams": True}
        delay = 0.0
        try:
            while self._current(session, job):
                try:
                    finished = (self._follow_stream if state["streams"] else self._follow_polls)(
                        client, session, job, state)
                except FarmError as err:
                    if err.code is Code.UNKNOWN_METHOD and state["streams"]:
                        state["streams"] = False       # an older controller: long polls
                        continue
                    if not self._current(session, job):
                        return
                    self.messages.put(("link", False, str(err)) if err.code is Code.UNREACHABLE
                                      else ("error", session, str(err)))
                    delay = grow(delay, RETRY_FIRST, RETRY_CEILING)
                    self._pause(delay, session, job)
                    continue
                if finished:
                    return
                delay = 0.0
        finally:
            client.close()

    def _follow_polls(self, client: Client, session: int, job: int, state: dict) -> bool:
        """One viewer.watch long poll; True when nothing about the job changes any more."""
        reply = client.call("viewer.watch", state["asked"], state["cursor"], self.poll_timeout)
        self.messages.put(("link", True, ""))
        if not self._current(session, job):
            return True
        self._deliver(session, state, reply)
        return (reply.get("job") or {}).get("state") in FINISHED and not reply["strips"]

    def _follow_stream(self, client: Client, session: int, job: int, state: dict) -> bool:
        """Read the stream until it ends (True: the job ended) or the viewer moves on (True); a broken
        stream raises FarmError, and the caller reconnects from the cursor. The records of one read go
        to the window as one reply, so a send of hundreds of pieces is one message, not hundreds."""
        reads = client.stream("/feed", {"job": state["asked"], "cursor": state["cursor"]},
                              self.poll_timeout + self.rpc_timeout)
        reading = _StreamReading(state["asked"], state["cursor"])
        try:
            self.messages.put(("link", True, ""))
            for records in reads:
                if not self._current(session, job):
                    return True
                for reply in reading.replies(records):
                    self._deliver(session, state, reply)
                if reading.over:
                    return True
            return False
        finally:
            reads.close()

    def _deliver(self, session: int, state: dict, reply: dict) -> None:
        info = reply.get("job") or {}
        if state["asked"] == 0 and info:
            state["asked"] = info["id"]      # the cursor now belongs to this job: stay with it
        state["cursor"] = reply["cursor"]
        self.messages.put(("feed", session, reply))

    def _scout(self) -> None:
        client = self._make_client(self.rpc_timeout)
        next_newest = next_nodes = 0.0
        delay, last_error = 0.0, ""
        try:
            while not self._stop.is_set():
                try:
                    if self._jobs_wanted.is_set():
                        self._jobs_wanted.clear()
                        self.messages.put(("jobs", client.call("jobs.list")))
                    now = time.monotonic()
                    if self.follow and now >= next_newest:
                        reply = client.call("viewer.watch", 0, CURSOR_END, 0)
                        self.messages.put(("newest", reply.get("job") or {}))
                        next_newest = now + self.scout_interval
                    if now >= next_nodes:
                        self.messages.put(("nodes", client.call("nodes.list")))
                        next_nodes = now + self.nodes_interval
                    self.messages.put(("link", True, ""))
                    delay = 0.0
                    due = min(next_newest if self.follow else next_nodes, next_nodes)
                    wait = max(0.05, due - time.monotonic())
                except FarmError as err:
                    if err.code is Code.UNREACHABLE:
                        self.messages.put(("link", False, str(err)))
                    else:
                        if str(err) != last_error:
                            log.warning("viewer: %s", err)
                        self.messages.put(("jobs", None))    # a pending N/P gives up
                        self.messages.put(("error", 0, str(err)))
                    last_error = str(err)
                    wait = delay = grow(delay, RETRY_FIRST, RETRY_CEILING)
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            client.close()


class _StreamReading:
    """Turns the stream's records into viewer.watch replies, one per read rather than one per record:
    the pieces of a read go together under the job's latest status (a job's first status comes before
    its pieces, later ones after them), and the end of the stream is an empty reply of its own, as the
    last long poll was."""

    def __init__(self, asked: int, cursor: int):
        self.asked, self.cursor = asked, cursor
        self.info: dict[str, Any] = {}
        self.in_flight: list[dict[str, Any]] = []
        self.over = False         # the stream ended, or moved on to a job this viewer did not ask for

    def replies(self, records: Iterable[tuple[dict, bytes]]) -> list[dict[str, Any]]:
        pieces: list[dict[str, Any]] = []
        news = False
        for header, payload in records:
            kind = header.get("type")
            if kind == "piece":
                header["rows"] = payload        # the header is the piece (its other fields go unread)
                pieces.append(header)
                self.cursor, news = header["cursor"], True
            elif kind == "job":
                info = header.get("job") or {}
                if info and self.asked and info.get("id") != self.asked:
                    self.over = True        # a newer job: the scout says so, and the viewer decides
                    break
                self.asked = self.asked or info.get("id", 0)
                self.info, self.in_flight, news = info, header.get("in_flight", []), True
            elif kind == "end":
                # A job that had ended before the stream began sent its status first, before its
                # pieces: only the end says that every piece is in.
                self.over = True
                ended = [self._reply(pieces)] if pieces else []
                return ended + [{**self._reply([]), "in_flight": []}]
        return [self._reply(pieces)] if news else []

    def _reply(self, pieces: list[dict[str, Any]]) -> dict[str, Any]:
        return {"job": self.info, "cursor": self.cursor, "strips": pieces, "in_flight": self.in_flight}


# -- the window -------------------------------------------------------------------------------------------

def _import_pygame():
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError:
        raise FarmError(Code.BAD_ARGUMENT, INSTALL_HINT) from None
    return pygame


def write_png(path: Path, data: bytes) -> None:
    """Write a PNG whole or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as err:
        raise FarmError(Code.BAD_ARGUMENT, f"cannot write {path}: {err.strerror or err}") from None


class Window:
    """The pygame window: the image, scaled to fit or 1:1, with the overlay on top."""

    MIN_SIZE = (480, 270)
    STATUS_LINES = 2
    FPS = 30
    BACKGROUND = (20, 20, 24)

    def __init__(self, pygame, state: ViewerState, feed: Feed, *, url: str = "", scale: str | float = "fit",
                 snapshot: Path | None = None, exit_when_done: bool = False, save_dir: Path = Path(".")):
        self.pg = pygame
        self.state, self.feed, self.url = state, feed, url
        self.zoom = 1.0 if scale == "fit" else float(scale)
        self.fit = scale == "fit"
        self.snapshot, self.exit_when_done, self.save_dir = snapshot, exit_when_done, Path(save_dir)
        self.snapshot_written = False
        self.overlay = True
        pygame.display.init()
        pygame.font.init()
        info = pygame.display.Info()
        self.screen = (info.current_w if info.current_w > 0 else 1920, info.current_h if info.current_h > 0 else 1080)
        self.font = pygame.font.Font(None, 20)
        self.small = pygame.font.Font(None, 17)
        self.image = None           # the shown frame at full size, as the screen shows it
        self.view = None            # `image` scaled for the window
        self.view_pos = (0, 0)
        self.scale = 1.0
        self.image_key: tuple | None = None
        self._sized = False
        self.window_size = (0, 0)
        self.dirty = True
        self._shown_version = -1
        self._tick_second = 0
        self._open(self.MIN_SIZE)

    # -- layout ----------------------------------------------------------------------------------------

    def _open(self, size: tuple[int, int]) -> None:
        self.pg.display.set_mode(size, self.pg.RESIZABLE)
        self.window_size = self.pg.display.get_surface().get_size()
        self.dirty = True

    def natural_size(self, width: int, height: int) -> tuple[int, int]:
        """The window for an image: its size (times the zoom), shrunk to fit the screen, not too small, with
        the status bar below it."""
        w, h = width * self.zoom, height * self.zoom
        bar = self.status_height()
        room_w, room_h = self.screen[0] * 0.9, self.screen[1] * 0.85 - bar
        shrink = min(1.0, room_w / w, room_h / h)
        return max(self.MIN_SIZE[0], round(w * shrink)), max(self.MIN_SIZE[1], round(h * shrink) + bar)

    def status_height(self) -> int:
        """Pixels the status bar takes at the bottom of the window: the image is laid out above it."""
        return (self.small.get_linesize() + 3) * self.STATUS_LINES + 6

    def _layout(self) -> None:
        """Recompute the scale and rebuild the scaled view from the full-size image."""
        self.window_size = self.pg.display.get_surface().get_size()
        if self.image is None:
            self.view = None
            return
        w, h = self.image.get_size()
        ww, wh = self.window_size
        wh = max(1, wh - self.status_height())
        self.scale = min(ww / w, wh / h) if self.fit else self.zoom
        vw, vh = max(1, round(w * self.scale)), max(1, round(h * self.scale))
        self.view = self.image if (vw, vh) == (w, h) else self._scaled(self.image, (vw, vh))
        self.view_pos = ((ww - vw) // 2, (wh - vh) // 2)
        self.dirty = True

    def _scaled(self, surface, size):
        if size[0] <= surface.get_width():
            return self.pg.transform.smoothscale(surface, size)
        return self.pg.transform.scale(surface, size)     # enlarging: keep pixels crisp

    # -- pixels ----------------------------------------------------------------------------------------

    def _rows_surface(self, canvas: Canvas, start: int, end: int):
        """The screen pixels of rows [start, end), over the light checker when the image has alpha."""
        pg = self.pg
        data = bytes(canvas.display[start * canvas.display_row_bytes:end * canvas.display_row_bytes])
        rows = pg.image.frombuffer(data, (canvas.width, end - start), "RGBA" if canvas.channels == 4 else "RGB")
        if canvas.channels == 3:
            return rows
        base = pg.image.frombuffer(checker(canvas.width, end - start, 3, TRANSPARENT), rows.get_size(), "RGB")
        base = base.copy()
        base.blit(rows, (0, 0))
        return base

    def sync(self) -> None:
        """Bring the image surfaces up to date with the state: whole image or only the new rows."""
        pg = self.pg
        canvas = self.state.canvas()
        full, bands = self.state.take_updates()
        if canvas is None:
            if self.image is not None:
                self.image, self.view, self.dirty = None, None, True
            return
        key = (self.state.target, self.state.frame, canvas.width, canvas.height)
        if full or self.image is None or key != self.image_key:
            if not self._sized:     # the first image sizes the window; later jobs are fitted into it
                self._open(self.natural_size(canvas.width, canvas.height))
                self._sized = True
            self.image = pg.Surface((canvas.width, canvas.height), 0, 32)
            self.image.blit(self._rows_surface(canvas, 0, canvas.height), (0, 0))
            self.image_key = key
            self._layout()
            return
        for start, end in bands:
            self.image.blit(self._rows_surface(canvas, start, end), (0, start))
            if self.view is not self.image:
                top, bottom = round(start * self.scale), round(end * self.scale)
                if bottom > top:
                    piece = self.image.subsurface((0, start, canvas.width, end - start))
                    self.view.blit(self._scaled(piece, (self.view.get_width(), bottom - top)), (0, top))
            self.dirty = True

    def save_png(self, path: Path) -> bool:
        canvas = self.state.canvas()
        if canvas is None:
            return False
        write_png(path, canvas.png())
        return True

    # -- drawing ---------------------------------------------------------------------------------------

    def draw(self) -> None:
        pg = self.pg
        win = pg.display.get_surface()
        win.fill(self.BACKGROUND)
        if self.view is not None:
            win.blit(self.view, self.view_pos)
        if self.overlay:
            self._draw_in_flight(win)
            self._draw_error(win)
        self._draw_status(win)      # below the image, so it hides nothing
        pg.display.flip()

    def _label(self, win, text: str, pos: tuple[int, int], colour, font=None, background=(0, 0, 0, 170)):
        font = font or self.small
        glyphs = font.render(text, True, colour)
        box = self.pg.Surface((glyphs.get_width() + 8, glyphs.get_height() + 4), self.pg.SRCALPHA)
        box.fill(background)
        box.blit(glyphs, (4, 2))
        win.blit(box, pos)
        return box.get_size()

    def _draw_in_flight(self, win) -> None:
        if self.view is None:
            return
        x, y = self.view_pos
        width = self.view.get_width()
        for strip in self.state.shown_in_flight():
            colour = self.state.colour(strip["node"])
            whole = strip.get("kind") == PREVIEW     # its rows are the preview's own: the whole frame
            top = y + (0 if whole else round(int(strip["row_start"]) * self.scale))
            bottom = y + (self.view.get_height() if whole else round(int(strip["row_end"]) * self.scale))
            rect = self.pg.Rect(x, top, width, max(2, bottom - top))
            self.pg.draw.rect(win, colour, rect, 2)
            doing = {"pretrace": " radiosity pretrace", PREVIEW: " preview"}.get(strip.get("kind", ""), "")
            text = f"{strip['node']}{doing} {float(strip['progress']) * 100:.0f}%"
            self._label(win, text, (x + 4, top + 4), colour)

    def _draw_error(self, win) -> None:
        job = self.state.job
        if job.get("state") not in ("failed", "canceled"):
            return
        title = f"job {job['id']} failed" if job["state"] == "failed" else f"job {job['id']} was canceled"
        lines = [title]
        for raw in (job.get("error") or "").splitlines()[:14]:
            lines.extend(self._wrap(raw, win.get_width() - 60))
        ww, wh = win.get_size()
        height = sum(self.font.get_linesize() + 2 for _ in lines) + 20
        box = self.pg.Surface((ww - 30, min(wh - 60, height)), self.pg.SRCALPHA)
        box.fill((60, 0, 0, 215))
        y = 10
        for i, line in enumerate(lines):
            glyphs = self.font.render(line, True, (255, 220, 220) if i else (255, 255, 255))
            box.blit(glyphs, (15, y))
            y += self.font.get_linesize() + 2
        win.blit(box, (15, 15))

    def _wrap(self, text: str, width: int) -> list[str]:
        words, lines, line = text.split(" "), [], ""
        for word in words:
            candidate = f"{line} {word}" if line else word
            if self.font.size(candidate)[0] > width and line:
                lines.append(line)
                line = word
            else:
                line = candidate
        return [*lines, line]

    def _draw_status(self, win) -> None:
        lines = [line for line in self.state.status_lines(self.url) if line]
        ww, wh = win.get_size()
        step = self.small.get_linesize() + 3
        bar = self.pg.Surface((ww, self.status_height()), self.pg.SRCALPHA)
        bar.fill((0, 0, 0, 185))
        for i, line in enumerate(lines):
            colour = (255, 140, 120) if (i == 1 and not self.state.link_ok) else (235, 235, 235)
            bar.blit(self.small.render(line, True, colour), (8, 4 + i * step))
        win.blit(bar, (0, wh - bar.get_height()))

    # -- the loop --------------------------------------------------------------------------------------

    def handle_key(self, key: int) -> int | None:
        pg, state = self.pg, self.state
        if key in (pg.K_q, pg.K_ESCAPE):
            return state.exit_code if state.finished else 0
        if key == pg.K_s:
            job = state.job
            if not job or state.canvas() is None:
                state.say("nothing to save yet")
            else:
                suffix = f"-frame{state.frame}" if int(job.get("frames_total", 1)) > 1 else ""
                path = self.save_dir / f"povfarm-job{job['id']}{suffix}.png"
                try:
                    self.save_png(path)
                    state.say(f"saved {path}")
                except FarmError as err:
                    state.say(str(err))
        elif key == pg.K_f:
            self.fit = not self.fit
            if not self.fit:
                self.zoom = 1.0
            self._layout()
        elif key == pg.K_o:
            self.overlay = not self.overlay
            self.dirty = True
        elif key in (pg.K_n, pg.K_p):
            state.step(1 if key == pg.K_n else -1)
            self.feed.request_jobs()
        return None

    def drain(self, budget: float = 0.02) -> None:
        """Apply queued messages for at most `budget` seconds, so the window stays responsive."""
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            try:
                message = self.feed.messages.get_nowait()
            except queue.Empty:
                return
            self.state.handle(message)

    def step(self) -> int | None:
        """One turn of the loop; returns an exit code when the viewer should close."""
        pg, state = self.pg, self.state
        for event in pg.event.get():
            if event.type == pg.QUIT:
                return state.exit_code if state.finished else 0
            if event.type == pg.KEYDOWN:
                code = self.handle_key(event.key)
                if code is not None:
                    return code
            elif event.type in (pg.VIDEORESIZE, getattr(pg, "WINDOWSIZECHANGED", -1), pg.VIDEOEXPOSE):
                self.dirty = True
        if pg.display.get_surface().get_size() != self.window_size:
            self._layout()
        self.drain()
        if self.feed.wanted != state.wanted():
            self.feed.watch(*state.wanted())
        self.feed.follow = state.follow
        self.sync()
        if state.finished and not self.snapshot_written and self.snapshot is not None:
            if self.save_png(self.snapshot):
                self.snapshot_written = True
        if state.finished and self.exit_when_done and (self.snapshot is None or self.snapshot_written):
            return state.exit_code
        if self.exit_when_done and state.gave_up:
            log.error("gave up on the controller at %s after the setting patience (%s): %s", self.url,
                      duration(state.outage.limit), state.link_error)
            return 1
        second = int(time.monotonic())
        if second != self._tick_second:         # the clocks in the status bar move once a second
            self._tick_second = second
            state.expire_message()
            if state.job.get("state") not in FINISHED and state.job:
                self.dirty = True
        if state.version != self._shown_version:
            self._shown_version, self.dirty = state.version, True
        title = f"povfarm viewer - job {state.job['id']} {state.job.get('name', '')}" if state.job else \
            "povfarm viewer"
        if title != pg.display.get_caption()[0]:
            pg.display.set_caption(title)
        if self.dirty:
            self.draw()
            self.dirty = False
        return None

    def run(self) -> int:
        clock = self.pg.time.Clock()
        while True:
            code = self.step()
            if code is not None:
                return code
            clock.tick(self.FPS)


def _say(text: str) -> None:
    sys.stderr.write(f"povfarm: {text}\n")
    sys.stderr.flush()


def run_viewer(url: str, job: int = 0, *, snapshot: Path | None = None, exit_when_done: bool = False,
               scale: str | float = "fit", rpc_timeout: float = 30.0,
               make_client: Callable[[float], Client] | None = None, patience: float = 0.0) -> int:
    """`povfarm viewer`: open the window and run until the user quits (or the job ends, if asked).

    `make_client(timeout)` builds a `Client` for the controller (default: a plain one for `url`). An
    outage is said once each way on stderr; with `exit_when_done`, one longer than `patience` seconds
    (0: none) ends the viewer with 1."""
    pygame = _import_pygame()
    check_url(url)
    make_client = make_client or (lambda timeout: Client(url, timeout=timeout))
    try:        # a wrong job id or token is one sentence now; an unreachable controller is retried later
        if job:
            make_client(rpc_timeout).call("jobs.status", job)
        else:
            make_client(rpc_timeout).call("viewer.watch", 0, CURSOR_END, 0)
    except FarmError as err:
        if err.code is not Code.UNREACHABLE:
            raise
    state = ViewerState(job, outage=Outage(url, patience, _say))
    feed = Feed(url, rpc_timeout=rpc_timeout, make_client=make_client).start()
    try:
        try:
            window = Window(pygame, state, feed, url=url, scale=scale, snapshot=snapshot,
                            exit_when_done=exit_when_done)
        except pygame.error as err:
            raise FarmError(Code.BAD_ARGUMENT, f"cannot open a window: {err} (is DISPLAY set?)") from None
        return window.run()
    finally:
        feed.stop()
        pygame.quit()
