"""Live blocks on the node: the finished blocks of POV-Ray's render state file, sent up while it renders.

`StateFileReader` reads the blocks POV-Ray appended to `<output>.pov-state` since the last read (an mmap,
decoded from the last whole message: a message still being written waits for the next read) and encodes
them as viewers paint them: 8-bit RGB rows, zlib. `FramesReader` does it for a run of animation frames:
each frame has a state file of its own, and a frame the run has finished is sent whole from its image,
since the run's rows go up only after its last frame. `LiveSender` sends them with `nodes.live` from a
thread of its own, so the render never waits for the network: what is queued is bounded (blocks beyond it
are dropped: the final rows replace them anyway) and so is the share of the node's measured uplink it uses.

Whether a lease's blocks are wanted is the controller's word: the task's `live`, each `nodes.live` reply,
and each heartbeat's reply (`live`: the leases a viewer watches now). A lease a viewer starts watching
later is read again from its first block, so a viewer that joins late sees what is already rendered.

The scene's working gamma is not in the state file. POV-Ray's stderr says when it is off ("assumed_gamma
not specified, so gamma_correction is turned off": a scene of #version 3.6 or older) or 1.0 (a 3.7 scene
without it); otherwise it is read from the scene's text (`assumed_gamma N` in its global_settings, the
first one found), and taken to be 1.0 when it is not there (set in an include file, or by a macro). The
blocks are a preview only, so a wrong guess costs a wrongly bright preview, never the image.
"""

from __future__ import annotations

import logging
import mmap
import queue
import re
import threading
import time
import zlib
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable

from farm.faults import FarmError
from farm.images.png import decode_png
from farm.images.ppm import decode_ppm
from farm.images.raster import Raster
from farm.rendering.finished import STATE_SUFFIX, numbered
from farm.rendering.gamma import Encoding, GammaSpec
from farm.rendering.statefile import HEADER_SIZE, read_blocks
from farm.rendering.task import Task
from farm.wire import Binary

log = logging.getLogger(__name__)

# Seconds between two reads of the state file. Four slots reading every 0.3 s left a viewer of clockd (frames
# of a third of a second) without new pixels for 0.3-0.5 s at a time; reads that find nothing cost a stat.
READ_EVERY = 0.15
WATCH_EVERY = 0.3            # seconds between two looks at the unit's own watch (heartbeats, stop), watched or not
FIRST_READ_EVERY = 0.05      # ... until its first blocks are found: the first pixels come as soon as they can
# POV-Ray's front end polls its way through its start (fixed sleeps, not work): its first block comes 0.28-0.29 s
# after it starts whatever the box, 9% of clockd's job; within this window a look for it waits for it.
FIRST_BLOCK_DUE = (0.25, 0.5)
DUE_READ_EVERY = 0.005
QUEUE_BYTES = 512 * 1024     # bytes of blocks waiting to go up, per node
UPLINK_SHARE = 0.25          # of the node's measured upload rate, at most, for live blocks
BLOCKS_PER_CALL = 256        # nodes.live takes at most this many
KEPT_LEASES = 64             # leases whose watched-or-not the sender remembers
LEVEL = 6

# The working gammas of most scenes: a 3.7 scene's own (1.0), the assumed_gamma of older scenes (2.2), and
# gamma handling off (a scene of #version 3.6 or older that sets none).
COMMON_GAMMAS = (1.0, 2.2, None)

GAMMA_OFF = "assumed_gamma not specified, so gamma_correction is turned off"
GAMMA_ONE = ("assumed_gamma not specified in this POV-Ray 3.7 or later scene",
             "A version of 3.7 or greater was specified in an INI file")
_ASSUMED = re.compile(r"\bassumed_gamma\s+(srgb\b|[0-9]*\.?[0-9]+)", re.IGNORECASE)


def scene_gamma(stderr: str, scene_text: str) -> GammaSpec:
    """The scene's working gamma as POV-Ray's stderr and the scene's text tell it (see the module)."""
    if GAMMA_OFF in stderr:
        return None
    if any(words in stderr for words in GAMMA_ONE):
        return 1.0
    found = _ASSUMED.search(re.sub(r"//[^\n]*", "", scene_text))
    if found is None:
        return 1.0
    value = found.group(1).lower()
    return value if value == "srgb" else (float(value) if float(value) > 0 else 1.0)


def encode_block(block, encoding: Encoding, frame: int) -> dict[str, Any]:
    """A decoded block as nodes.live sends it: a preview, so its samples may be one level off the image's
    (`Encoding.preview`, a third of the CPU of the exact levels: a watched animation's blocks cost its
    nodes 0.4 s of CPU a 3-s job, and a node's own work holds its live blocks back on a busy box)."""
    return {"frame": frame, "left": block.left, "top": block.top, "right": block.right, "bottom": block.bottom,
            "rows": zlib.compress(encoding.preview(block.pixels), LEVEL)}


def warm_previews() -> None:
    """Build the preview tables of the common working gammas now (about 15 ms of CPU each, kept for the
    node's life): built when a node's first watched unit finds its first blocks, they held the farm's first
    pixels back 30-50 ms, five units starting at once each waiting for the node's CPU."""
    for gamma in COMMON_GAMMAS:
        Encoding(gamma).preview(array("f"))


class StateFileReader:
    """The new blocks of one POV-Ray run's state file, each call (nothing before it exists)."""

    waiting = False      # nothing comes from it after its last block: the unit's final rows follow

    def __init__(self, state_path: Path, log_path: Path, scene_path: Path, frame: int):
        self.state_path, self.log_path, self.scene_path, self.frame = state_path, log_path, scene_path, frame
        self.offset = 0
        self.encoding: Encoding | None = None
        self.broken = False

    def __call__(self) -> list[dict[str, Any]]:
        if self.broken:
            return []
        try:
            with open(self.state_path, "rb") as file:
                size = file.seek(0, 2)
                if size < HEADER_SIZE or size <= self.offset:
                    return []
                with mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as data:
                    blocks, self.offset = read_blocks(data, self.offset)
        except FileNotFoundError:
            return []     # not yet, or the render ended (it deletes the file)
        except (OSError, ValueError) as err:
            log.warning("live blocks off for this unit: the render state file is unreadable: %s", err)
            self.broken = True
            return []
        if blocks and self.encoding is None:
            self.encoding = Encoding(scene_gamma(_text(self.log_path), _text(self.scene_path)))
        return [encode_block(block, self.encoding, self.frame) for block in blocks]

    def rewind(self) -> None:
        """Read from the first block again (a viewer joined)."""
        self.offset = 0


class FramesReader:
    """The new blocks of a run of animation frames, each call: the frame being rendered from its own state
    file (`strip07.pov-state` beside `strip07.ppm`; `strip.pov-state` beside `strip.ppm` for an animation
    of one frame, which POV-Ray renders as a still), and each frame the run has finished whole (the unit's
    rows of it), from its image, as one block: the run's final rows go up only after its last frame, and
    POV-Ray takes a few tenths of a second to exit after that one."""

    def __init__(self, output: Path, log_path: Path, scene_path: Path, frames: range, rows: range | None = None):
        """`rows`: the unit's rows of each frame (all of them by default)."""
        self.output, self.log_path, self.scene_path, self.frames = output, log_path, scene_path, frames
        self.rows = rows
        self.current: StateFileReader | None = None
        self.sent: set[int] = set()         # finished frames sent whole
        self.waiting = False                # a frame has ended and its image is not sent yet

    def __call__(self) -> list[dict[str, Any]]:
        states = self._files(STATE_SUFFIX)
        blocks: list[dict[str, Any]] = []
        rendering = max((frame for frame in states if frame in self.frames), default=None)
        if rendering is not None and (self.current is None or self.current.frame != rendering):
            self.current = StateFileReader(states[rendering], self.log_path, self.scene_path, rendering)
        if self.current is not None:
            blocks += self.current()
        # A frame's image is written when the frame ends (one that does not decode whole yet waits).
        images = self._files(self.output.suffix)
        for frame in self.frames:
            if frame not in self.sent and frame in images and frame not in states:
                blocks += self._whole(frame, images[frame])
        self.waiting = self.current is not None and self.current.frame not in states.keys() | self.sent
        return blocks

    def _files(self, suffix: str) -> dict[int, Path]:
        """The run's files by frame. An animation of one frame from 0 to 0 or 1 to 1 (`+KFI1 +KFF1`) is a
        still to POV-Ray (its front end's rule): its files carry no frame number (`strip.pov-state`)."""
        found = numbered(self.output.parent, self.output.stem, suffix)
        if not found and len(self.frames) == 1:
            path = self.output.with_suffix(suffix)
            return {self.frames[0]: path} if path.exists() else {}
        return found

    def _whole(self, frame: int, path: Path) -> list[dict[str, Any]]:
        try:
            data = path.read_bytes()
            raster = decode_png(data) if path.suffix == ".png" else decode_ppm(data)
        except (OSError, ValueError) as err:
            log.debug("frame %s is not readable yet: %s", frame, err)
            return []
        self.sent.add(frame)
        rows = self.rows or range(raster.height)
        rgb, stride = rgb8(raster), raster.width * 3
        return [{"frame": frame, "left": 0, "top": rows.start, "right": raster.width - 1, "bottom": rows.stop - 1,
                 "rows": zlib.compress(rgb[rows.start * stride:rows.stop * stride], LEVEL)}]

    def rewind(self) -> None:
        self.sent.clear()
        if self.current is not None:
            self.current.rewind()


def unit_reader(output: Path, log_path: Path, scene_path: Path, task: Task) -> StateFileReader | FramesReader:
    """The reader of a unit's blocks: POV-Ray writes `output` (its state file beside it), its stderr to
    `log_path`, and renders `scene_path`."""
    if task.animation:
        return FramesReader(output, log_path, scene_path, task.frames, range(task.row_start, task.row_end))
    return StateFileReader(output.with_suffix(STATE_SUFFIX), log_path, scene_path, task.frame)


def rgb8(raster: Raster) -> bytes:
    """The raster's pixels as 8-bit RGB (the high byte of 16-bit samples, alpha dropped)."""
    pixels = raster.pixels if raster.bits == 8 else raster.pixels[0::2]
    if raster.channels == 3:
        return bytes(pixels)
    out = bytearray(raster.width * raster.height * 3)
    for channel in range(3):
        out[channel::3] = pixels[channel::4]
    return bytes(out)


def _text(path: Path) -> str:
    try:
        return path.read_text("utf-8", "replace")
    except OSError:
        return ""


class LiveSender:
    """Sends queued blocks with nodes.live, one call at a time, from a daemon thread of its own."""

    def __init__(self, send: Callable[[str, list], dict], rate: Callable[[], float],
                 clock: Callable[[], float] = time.monotonic, slow: Callable[[], bool] = lambda: True):
        """`send(lease, blocks)`: the nodes.live call; `rate()`: the node's measured upload rate (0: none);
        `slow()`: whether the node's uplink is slow (Node.slow_link), where blocks take at most UPLINK_SHARE."""
        self._send, self._rate, self._clock, self._slow = send, rate, clock, slow
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._queued = 0
        self._watched: dict[str, bool] = {}     # the latest leases begun -> whether a viewer watches
        self._rewind: set[str] = set()          # leases to read again from their first block
        self._thread: threading.Thread | None = None

    def start(self, lease: str, watched: bool) -> None:
        """A lease begins rendering, watched or not as its task says."""
        with self._lock:
            self._rewind.discard(lease)
            self._note(lease, watched)

    def _note(self, lease: str, watched: bool) -> None:
        self._watched[lease] = watched
        while len(self._watched) > KEPT_LEASES:
            del self._watched[next(iter(self._watched))]

    def heard(self, leases: Iterable[str], watched: Iterable[str]) -> None:
        """A heartbeat's reply: of the `leases` it renewed, `watched` are watched now and the rest are not.
        A lease watched again is read again from its first block."""
        watched = set(watched)
        with self._lock:
            for lease in leases:
                if lease in self._watched:
                    if lease in watched and not self._watched[lease]:
                        self._rewind.add(lease)
                    self._watched[lease] = lease in watched

    def ended(self, lease: str) -> None:
        """The lease's render is over: its final rows replace its blocks, so those still queued are dropped
        (on a slow uplink they would go up in front of the rows)."""
        with self._lock:
            self._note(lease, False)

    def wanted(self, lease: str) -> bool:
        with self._lock:
            return self._watched.get(lease, True)

    def rewound(self, lease: str) -> bool:
        """Whether the lease is to be read again from its first block (said once)."""
        with self._lock:
            if lease not in self._rewind:
                return False
            self._rewind.discard(lease)
            return True

    def offer(self, lease: str, blocks: list[dict[str, Any]]) -> None:
        """Queue a lease's new blocks; never waits (blocks over the bound are dropped)."""
        with self._lock:
            kept = []
            for block in blocks:
                if self._queued + len(block["rows"]) > QUEUE_BYTES:
                    break
                self._queued += len(block["rows"])
                kept.append(block)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="live-blocks", daemon=True)
                self._thread.start()
        if len(kept) < len(blocks):
            log.debug("live blocks: %s dropped, the queue is full", len(blocks) - len(kept))
        if kept:
            self._queue.put((lease, kept))

    def _run(self) -> None:
        while True:
            lease, blocks = self._queue.get()
            while not self._queue.empty() and len(blocks) < BLOCKS_PER_CALL:   # what came meanwhile, together
                more_lease, more = self._queue.get_nowait()
                if more_lease != lease:
                    self._queue.put((more_lease, more))
                    break
                blocks += more
            blocks, rest = blocks[:BLOCKS_PER_CALL], blocks[BLOCKS_PER_CALL:]
            if rest:
                self._queue.put((lease, rest))
            size, started = sum(len(block["rows"]) for block in blocks), self._clock()
            sent = self._call(lease, blocks)
            with self._lock:
                self._queued -= size
            if sent:
                self._pace(size, started)

    def _pace(self, size: int, started: float) -> None:
        """On a slow uplink, wait so that blocks take at most UPLINK_SHARE of it: the rest is the rows' and the
        heartbeats'. Not on a fast one, whose measured rate is mostly the two ends' own work (on a busy box a
        quarter of it held clockd's blocks back 0.1-0.25 s after each call)."""
        rate = self._rate()
        if rate > 0 and self._slow():
            time.sleep(max(0.0, size / (UPLINK_SHARE * rate) - (self._clock() - started)))

    def _call(self, lease: str, blocks: list[dict[str, Any]]) -> bool:
        """Send the blocks if their lease is still watched; whether they went up."""
        if not self.wanted(lease):
            return False
        try:
            reply = self._send(lease, [{**block, "rows": Binary(block["rows"])} for block in blocks])
        except FarmError as err:
            log.debug("live blocks of lease %s not sent: %s", lease, err)
            return False
        if isinstance(reply, dict) and reply.get("live") is False:
            with self._lock:
                self._note(lease, False)
        return True


class LiveWatch:
    """The runner's check while POV-Ray renders a watched unit (the runner calls it every FIRST_READ_EVERY
    seconds): every READ_EVERY seconds (FIRST_READ_EVERY until the first blocks are found, and while a
    finished frame's image is awaited) the state file's new blocks go to the sender; the unit's own watch
    (heartbeats, the next unit asked for ahead, whether to stop) is asked as seldom as for a
    unit nobody watches (WATCH_EVERY), and its answer kept between. While POV-Ray's first block is due
    (FIRST_BLOCK_DUE after the watch began, with POV-Ray), a look that finds nothing looks again every
    DUE_READ_EVERY until it comes: a step's look just before the block cost the first pixels a step (0.34-0.41 s
    against 0.28-0.31)."""

    def __init__(self, lease: str, watch: Callable[[], bool], reader: StateFileReader | FramesReader,
                 sender: LiveSender, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.lease, self.watch, self.reader, self.sender, self.clock = lease, watch, reader, sender, clock
        self.sleep = sleep
        self._started = self._last = self._watched = clock()
        self._found = self._stop = False

    def __call__(self) -> bool:
        now = self.clock()
        every = READ_EVERY if self._found and not self.reader.waiting else FIRST_READ_EVERY
        if now - self._last >= every and self.sender.wanted(self.lease):
            self._last = now
            if self.sender.rewound(self.lease):
                self.reader.rewind()
            blocks = self.reader() or self._first_when_due(now)
            if blocks:
                self._found = True
                self.sender.offer(self.lease, blocks)
        if now - self._watched >= WATCH_EVERY:
            self._watched, self._stop = now, self.watch()
        return self._stop

    def _first_when_due(self, now: float) -> list[dict[str, Any]]:
        """The first blocks, waited for while they are due (none otherwise). The runner waits meanwhile: in
        the first half second of a POV-Ray run there is nothing else to look at."""
        blocks: list[dict[str, Any]] = []
        while not (self._found or blocks) and FIRST_BLOCK_DUE[0] <= now - self._started < FIRST_BLOCK_DUE[1]:
            self.sleep(DUE_READ_EVERY)
            now = self.clock()
            blocks = self.reader()
        return blocks
