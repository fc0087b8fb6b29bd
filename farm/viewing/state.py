"""What the viewer shows, updated from the feed's messages: the job, a canvas per frame and which frame is on
screen, the strips in flight, the node count, the ETA and the status bar, and which job to watch. Pure: no
pygame, no network, an injectable clock."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Sequence

from farm.images.raster import row_size
from farm.kinds import PREVIEW, PRETRACE
from farm.retry import Outage
from farm.states import ENDED
from farm.rows import ZLIB, decode_rows, decompress_capped
from farm.shear import Shear
from farm.strips import DEFAULT_BLOCK
from farm.viewing.canvas import Canvas
from farm.viewing.colours import node_colour
from farm.viewing.eta import ShownEta, status_estimate
from farm.viewing.frames import FrameChoice, to_forget

log = logging.getLogger(__name__)

LIVE_NODE_STATES = ("idle", "busy")


def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def strips_text(job: dict[str, Any]) -> str:
    """The strips done: of how many there are so far while the job runs (the farm cuts a frame's rest into
    strips as nodes come for work, so the total grows), of all of them once it has ended."""
    done, total = job.get("strips_done", 0), job.get("strips_total", 0)
    return f"{done}/{total} strips" if job.get("state") in ENDED else f"{done} of {total} strips so far"


def _rows_of(strip: dict) -> bytes:
    rows = strip["rows"]
    return rows.data if hasattr(rows, "data") else bytes(rows)


def _decoded(strip: dict[str, Any], expected: int, row_bytes: int, canvas: "Canvas") -> bytes:
    """A feed piece's raw rows, in whichever encoding it came (a ValueError when they do not fit)."""
    return decode_rows(_rows_of(strip), str(strip.get("encoding", ZLIB)), expected, row_bytes,
                       canvas.channels * canvas.bits // 8)


def _painted_live(canvas_of: Callable[[int], Canvas], block: dict[str, Any], job: int | None) -> list:
    """Paint a finished block of a unit still rendering (shown until its final rows replace it): the row
    band it changed on its frame, [] when it changed nothing."""
    frame, left, top = int(block["frame"]), int(block["left"]), int(block["top"])
    right, bottom = int(block["right"]), int(block["bottom"])
    try:
        rgb = decompress_capped(_rows_of(block), max(0, (right - left + 1) * (bottom - top + 1) * 3))
        shown = canvas_of(frame).paint_block(left, top, right, bottom, rgb)
    except ValueError as err:
        log.warning("job %s frame %s: a live block cannot be shown: %s", job, frame, err)
        return []
    return [(frame, top, bottom + 1)] if shown else []


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
        self.eta = ShownEta()                             # the job's ETA, smoothed and held while unreachable
        self.choice = FrameChoice()                       # which frame of an animation is on screen
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
            self.previewed, self.choice = set(), FrameChoice()
        if self.job.get("id") != info["id"]:
            self.eta = ShownEta()
        self.job = dict(info)
        estimate, guess = status_estimate(self.job, self.clock())
        self.eta.measure(estimate, self.clock(), guess)
        self.error = ""
        for strip in reply.get("strips", []):
            self._apply_strip(strip)
        for block in reply.get("live", []):
            self._dirty += _painted_live(self._canvas, block, self.target)
        self.in_flight = [dict(s) for s in reply.get("in_flight", [])]
        # Every piece is in once the job has ended and the reply brought no more pieces, or (the stream) the
        # status came after them.
        self.drained = info.get("state") in ENDED and (not reply.get("strips") or reply.get("settled", False))
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
        if canvas.layout is not None:
            self._full = self._full or frame == self.frame   # the rows' blocks lie all over the frame
        else:
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
                                                 job.get("bits", 8), self.layout())
        return canvas

    def layout(self) -> Shear | None:
        """How the job's rows lie in its frames (farm.shear); None: in their own places."""
        job = self.job
        if not int(job.get("shear", 0) or 0):
            return None
        return Shear(int(job["width"]), int(job["height"]), int(job.get("block", DEFAULT_BLOCK)), int(job["shear"]))

    def strip_rectangles(self, strip: dict[str, Any]) -> list[tuple[int, int, int, int]]:
        """The frame's rectangles (left, top, right, bottom; half-open) a strip's rows cover: one band, the
        blocks of a sheared frame's strip, a run per column of blocks, or the pieces of a radiosity pre-pass
        band (in the frame's own rows, sheared or not: a folded band's are at its top and bottom)."""
        start, end = int(strip["row_start"]), int(strip["row_end"])
        width = int(self.job.get("width", 0))
        if strip.get("pieces"):
            return [(0, int(top), width, int(bottom)) for top, bottom in strip["pieces"]]
        layout = self.layout() if strip.get("kind") not in (PREVIEW, PRETRACE) else None
        if layout is None or not 0 <= start < end <= layout.height:
            return [(0, start, width, end)]
        return layout.rectangles(start, end)

    def _choose_frame(self) -> None:
        """Show the newest frame with pixels, or the one the user chose (farm/viewing/frames.py)."""
        frame = self.choice.choose(self.frames, self.frame, int(self.job.get("first_frame", 1)), self.clock())
        if frame != self.frame:
            self.frame, self._full = frame, True
            self.version += 1
        self._canvas(frame)
        for other in to_forget(self.frames, frame):
            del self.frames[other]

    def navigate(self, action: str) -> None:
        """A frame key: frames.NEXT, PREVIOUS, PLAY (or pause), FOLLOW; "" moves a playing animation on."""
        if action:
            self.choice.act(action, self.frames, self.frame, self.clock())
        if self.job:
            self._choose_frame()

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
        if ok:
            self.eta.resume(self.clock())
        else:
            self.eta.hold(self.clock())
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
        self.previewed, self.eta, self.choice = set(), ShownEta(), FrameChoice()
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

    @staticmethod
    def colour(node: str) -> tuple[int, int, int]:
        """The node's colour: from its name, the same in every window and on the page."""
        return node_colour(node)

    def shown_in_flight(self) -> list[dict[str, Any]]:
        """Strips being rendered in the frame on screen, unless the job is over."""
        if self.job.get("state") in ENDED:
            return []
        return [s for s in self.in_flight if int(s["frame"]) == self.frame]

    @property
    def finished(self) -> bool:
        """The job ended and every stored strip has been painted."""
        return self.job.get("state") in ENDED and self.drained

    @property
    def gave_up(self) -> bool:
        """The controller has been out of reach for the whole patience."""
        return self.outage is not None and self.outage.left() == 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.job.get("state") == "done" else 1

    def timing(self, now: float | None = None) -> tuple[float | None, float | None]:
        """(seconds since the job started, estimated seconds left), None when unknown. The estimate is
        `eta`'s: the controller's estimates smoothed and counted down since (`status_estimate`)."""
        job = self.job
        started = job.get("started") or 0.0
        if not started:
            return None, None
        now = self.clock() if now is None else now
        end = job.get("finished") or now
        elapsed = max(0.0, end - started)
        if job.get("state") in ENDED:
            return elapsed, 0.0 if job.get("state") == "done" else None
        return elapsed, self.eta.left(now)

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
                     f"{strips_text(job)}  {percent}")
            if int(job.get("frames_total", 1)) > 1 and self.frame is not None:
                first += f"  frame {self.frame} ({job.get('frames_done', 0)}/{job['frames_total']} frames done)"
                first += "  playing" if self.choice.playing else "  stepped (End: newest)" if self.choice.pinned else ""
            elapsed, eta = self.timing(now)
            second = f"elapsed {_clock_text(elapsed)}"
            if job.get("state") not in ENDED:
                second += f"  ETA {_clock_text(eta)}" + (" (stale)" if self.eta.held else "")
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
