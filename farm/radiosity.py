"""Sharing one radiosity pretrace between the strips of a frame.

Radiosity is not repeatable even between two full renders, but strips rendered on their own differ
from a full render by more than that, with a seam under each strip edge: POV-Ray's pretrace walks only
the render area, so every strip pretraces its own rows in its own block layout. What a full render
has and strips lack is the whole-frame pretrace. So a frame cut into strips first gets a pre-pass:
POV-Ray renders the frame with `+RF<file> +RFO` and is stopped as soon as its final pass begins, when
the cache holds every pretrace sample; with several nodes the pre-pass is cut into bands of rows that
they share, each pretracing only its rows as a whole-frame render would, and their caches are joined. Its
strips then load that cache (`+RFI`) through a wrapper scene that includes the user's scene and turns the
strips' own pretrace and extra sampling down (a later `global_settings { radiosity { ... } }` only
overrides the settings it names). Measured on radiosity/cornell and advanced/balcony: strips differ from a
single render as much as two single renders differ from each other, and strip edges show no seam.

In-scene `save_file`/`load_file` are ignored by POV-Ray 3.7; only the command-line options work.
This module is the pure part (texts, the watch over a pre-pass); the node owns processes and files.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

from farm import povtext
from farm.scheduler import STARTUP_SECONDS, Finished
from farm.strips import block_count

MAX_RADIOSITY_CACHE = 256 * 1024 * 1024   # bytes of a frame's radiosity cache file, uncompressed
CACHE_FILE = "povfarm-radiosity.rad"      # relative: it lives in the strip's own (sandboxed) folder
WRAPPER_SCENE = "povfarm-radiosity-wrapper.pov"
PRETRACED, NO_RADIOSITY = "pretraced", "no radiosity"
# A frame's pre-pass is cut into bands of rows (the controller's `pretrace_bands`), leased like strips, so
# that every box pretraces a share. A band is pretraced as a whole-frame render with every other block
# skipped (`+C` from a render state file, farm/rendering/statefile.py), which keeps the frame's block serials,
# and so the jitter a whole-frame pretrace gives those blocks: measured on balcony 640x480, strips loading the
# joined caches of 4 bands differ from single renders 1.00 times as much as single renders differ from each
# other (2 bands: 1.03), where bands cut with +SR/+ER (numbered from 0, jittered otherwise) gave 1.12-1.14,
# as much as one whole-frame pre-pass at another block size (+BS16: 1.19). Bands cost unevenly (balcony,
# four bands: 1.0, 1.2, 4.0 and 4.0 s of CPU) and each pays POV-Ray's start-up, the parse and the photons
# again. A scene's first pre-pass at a size goes out in one folded band per node (`folded_bands`: each as
# much of the frame's top as of its bottom), where pieces are tall enough and every live node folds; else
# two per live node (AUTO_PARTS_PER_NODE) let a box with the cheap sky take another. Once a pre-pass
# of the scene at that size is in, the next goes out in one band per node cut by where its bands' pretrace
# went (`bands_by_cost`, `sweep_costs`; balcony's pre-pass on two boxes then ends at 4.9 s, where four even
# bands took 6.3-7 and two folded ones 5.5-6.0).
# A box pretraces one band at a time (policy.band_waits). Near a band's
# edges its pretrace lacks the samples of the band beside it and takes its own; where every block row is
# beside an edge (cornell 320x256 in four bands of two block rows) strips differ from single renders 1.0-1.5
# times as much as single renders do, so a band is at least MIN_BAND_BLOCKS block rows tall unless the farm
# asks for a number of bands.
AUTO = 0
AUTO_PARTS_PER_NODE = 2
MIN_BAND_BLOCKS = 3
MAX_PARTS = 8
MIN_BAND_WORK = 0.05    # seconds: a band measured at its start-up alone still costs something
SWEPT_FLOOR = 1e-4      # seconds: rows a pretrace swept at once (sky) still cost something
# What a node says when it registers (true) if it can start a strip before its frame's radiosity cache is
# complete and feed it the cache when it is (farm/rendering/cache_feed.py): POV-Ray reads the cache only after
# its start-up and the parse, about 0.6 s of a balcony strip that then run while the pre-pass's last band ends.
NODE_WAITS_FOR_CACHE = "cache_later"
# What a node says when it registers (true) if it pretraces a band of a folded pre-pass as such, its rows and
# their mirror (`band_pieces`): a node from before folded bands would pretrace the upper rows alone.
NODE_FOLDS_BANDS = "folded_bands"
# Decide "no radiosity" only once this share of the frame is rendered with no sample in the cache:
# the cache is written while the pretrace runs, long before that, when radiosity is on.
NO_SAMPLES_AFTER = 0.10


def pretrace_parts(nodes: int, bands: int, block_rows: int = MAX_PARTS * MIN_BAND_BLOCKS) -> int:
    """Into how many bands a frame of `block_rows` rows of render blocks has its radiosity pre-pass cut,
    for a farm of `nodes` live nodes that asks for `bands`: one for a single node (its slots share its
    cores: a second band would only repeat POV-Ray's start-up), else `bands` from 1 to MAX_PARTS, or with
    AUTO two per node, each band at least MIN_BAND_BLOCKS block rows."""
    if nodes <= 1:
        return 1
    if bands == AUTO:
        bands = min(AUTO_PARTS_PER_NODE * nodes, block_rows // MIN_BAND_BLOCKS)
    return max(1, min(bands, MAX_PARTS))


def bands_by_cost(height: int, block: int, parts: int, measured: Sequence[tuple[int, int, float]],
                  fixed: float = STARTUP_SECONDS) -> list[tuple[int, int]]:
    """`parts` bands of a frame's pre-pass that should cost alike, by what the bands of an earlier pre-pass
    of the scene took (`measured`: row_start, row_end, seconds): each band's seconds past its `fixed` ones
    (POV-Ray's start-up) spread evenly over its rows; or, when the nodes timed where each band's pretrace went
    (`sweep_costs`, `fixed` 0), those times over their rows. Equal bands cost unevenly (balcony 640x480 cut at 2/3: 3.5 s and 6.9 s; its
    floor and balcony dearer than its sky), where one band per box cut by cost ends the pre-pass with no box
    waiting for another and no POV-Ray start-up, parse or photons repeated in a box. A cut may fall inside a
    row of blocks (the band then ends at a block of that row: `strips.band_serials`), since one of balcony's
    lower block rows is a second of pretrace. Each band is at least MIN_BAND_BLOCKS block rows tall where the
    frame has as many for every band."""
    parts = max(1, min(parts, block_count(height, block)))
    least = least_band_rows(height, block, parts)
    per_row = [0.0] * height
    for start, end, seconds in measured:
        start, end = max(0, start), min(height, end)
        if end > start:
            density = max(MIN_BAND_WORK if fixed else SWEPT_FLOOR, seconds - fixed) / (end - start)
            per_row[start:end] = [density] * (end - start)
    known = [cost for cost in per_row if cost > 0]
    fill = sum(known) / len(known) if known else 1.0
    totals = list(itertools.accumulate((cost or fill for cost in per_row), initial=0.0))
    cuts = [0]
    for k in range(1, parts):
        target = totals[-1] * k / parts
        choices = range(cuts[-1] + least, height - (parts - k) * least + 1)
        cuts.append(min(choices, key=lambda edge: abs(totals[edge] - target)))
    return list(zip(cuts, [*cuts[1:], height]))


def least_band_rows(height: int, block: int, parts: int) -> int:
    """The fewest rows a band of a pre-pass cut by cost has: MIN_BAND_BLOCKS block rows where the frame has as
    many for each of its `parts` bands, else a block row (or an even share of the rows, if less)."""
    if height >= parts * MIN_BAND_BLOCKS * block:
        return MIN_BAND_BLOCKS * block
    return max(1, min(block, height // parts))


def wrapper_text(scene_name: str) -> str | None:
    """The strips' scene: the user's scene, then its radiosity settings trimmed for a loaded cache.
    None when the name cannot be written as a POV-Ray string."""
    if any(c in scene_name for c in '"\\\n\r'):
        return None
    return (f'#include "{scene_name}"\n'
            "// povfarm: this frame's radiosity cache is loaded (+RFI); no pretrace and no extra samples\n"
            "global_settings { radiosity { always_sample off pretrace_start 1 pretrace_end 1 } }\n")


def trim_cache(data: bytes) -> bytes:
    """The cache up to its last whole line: a pre-pass stopped by a signal may have left a line half
    written, and POV-Ray's cache is one sample per line."""
    end = data.rfind(b"\n")
    return data[:end + 1] if end >= 0 else b""


def merge_caches(parts: list[bytes]) -> bytes:
    """One cache out of the caches of a frame's pre-pass parts: POV-Ray's cache file is one sample per line
    (`C<depth>` and its numbers) with no header, and reading it adds every line to the frame's samples, so
    the merged cache is the parts' whole lines one after the other."""
    return b"".join(trim_cache(part) for part in parts)


def band_costs(measured: Sequence[Finished]) -> list[tuple[int, int, float]]:
    """The costs to cut a pre-pass by (`bands_by_cost`, nothing more to take off) from the bands of an earlier
    one: where the nodes timed their bands' pretrace (`Finished.parts`), those times; a band they could not
    time (its pretrace too short to see: balcony's sky) its seconds past the median fixed part of those they
    timed, spread over its rows (over both pieces of a folded band, by their rows). Without any timed band,
    the bands' seconds past POV-Ray's start-up."""
    timed = [unit for unit in measured if unit.parts]
    if timed:
        fixed = statistics.median(unit.seconds - sum(seconds for _, _, seconds in unit.parts) for unit in timed)
        least = SWEPT_FLOOR
    else:
        fixed, least = STARTUP_SECONDS, MIN_BAND_WORK
    return [part for unit in measured for part in (
        unit.parts or _spread(unit.pieces or ((unit.row_start, unit.row_end),), max(least, unit.seconds - fixed)))]


def _spread(pieces: Sequence[tuple[int, int]], seconds: float) -> list[tuple[int, int, float]]:
    """`seconds` over the pieces of rows, by their rows."""
    rows = sum(end - start for start, end in pieces) or 1
    return [(start, end, seconds * (end - start) / rows) for start, end in pieces]


def sweep_costs(samples: Sequence[tuple[float, int]], ended: float, pieces: Sequence[tuple[int, int]], width: int,
                bin_rows: int) -> list[tuple[int, int, float]]:
    """Where a band's pretrace spent its time: seconds per `bin_rows` rows of each of the band's pieces of
    rows (`band_pieces`, in the order POV-Ray sweeps them), read off POV-Ray's pixel counter (`samples`:
    seconds, pixels of the band pretraced, as the watch saw them; `ended`: when it saw the final pass begin,
    the band swept). The counter sweeps the band's blocks in order, row of blocks after row of blocks, so the
    pixels counted over the width are the rows swept. Measured on balcony 640x480, rows 257-384 alone: 1.25 s
    over their upper half, 1.9 s over the lower, where equal shares of the band's time put the next cut 40
    rows too high. Empty when the watch saw too little."""
    rows = sum(end - start for start, end in pieces)
    if len(samples) < 2 or width < 1 or rows < 1 or bin_rows < 1 or ended < samples[-1][0]:
        return []
    points = [(min(rows, done / width), at) for at, done in samples] + [(float(rows), ended)]
    swept = [points[0]]
    for position, at in points[1:]:      # a counter seen going back (a retry) is no sweep
        if position >= swept[-1][0] and at >= swept[-1][1]:
            swept.append((position, at))

    def time_at(position: float) -> float:
        for (p0, t0), (p1, t1) in zip(swept, swept[1:]):
            if position <= p1:
                return t0 if p1 <= p0 else t0 + (t1 - t0) * max(0.0, position - p0) / (p1 - p0)
        return swept[-1][1]
    bins = []      # (rows swept before the bin, its first row, its end row), piece after piece
    swept_before = 0
    for start, end in pieces:
        bins += [(swept_before + a, start + a, min(end, start + a + bin_rows)) for a in range(0, end - start, bin_rows)]
        swept_before += end - start
    times = [*(time_at(position) for position, _, _ in bins), ended]  # a stall at the end is the last rows'
    return [(first, last, round(t1 - t0, 4)) for (_, first, last), t0, t1 in zip(bins, times, times[1:])]


def folded_bands(height: int, block: int, parts: int) -> list[tuple[int, int]] | None:
    """The bands of a frame's first pre-pass (nothing of the scene measured yet): `parts` bands of the frame
    folded at its middle, each rows [a, b) of its upper half with their mirror [height - b, height - a) below
    (`band_pieces`). Scenes mostly cost more, or less, from top to bottom (balcony: a cheap sky, a dear
    floor), so one folded band per node costs about as much as the next: balcony 640x480 on one core, rows
    0-119 with 360-479 pretraced in 4.67-4.90 s and rows 120-359 in 4.07-4.78 s, as two bands cut by a
    measured cost did (4.3-5.0 s), where a node's two even bands took 5.6-6.1 s (a start-up, parse and
    photons more). None (the frame gets even bands) for fewer than two parts, or where a piece would be under
    MIN_BAND_BLOCKS block rows."""
    if parts < 2 or height < 2 * parts * MIN_BAND_BLOCKS * block:
        return None
    cuts = [round(height * k / (2 * parts)) for k in range(parts)] + [(height + 1) // 2]
    return list(zip(cuts, cuts[1:]))


def band_pieces(height: int, row_start: int, row_end: int, folded: bool) -> list[tuple[int, int]]:
    """The frame's rows a band of a pre-pass pretraces, in the order POV-Ray sweeps them: the band's rows,
    and for a band of a folded pre-pass (`folded_bands`) their mirror in the lower half after them; one
    piece where the two meet in the middle."""
    if not folded:
        return [(row_start, row_end)]
    mirror = (height - row_end, height - row_start)
    if mirror[0] <= row_end:
        return [(row_start, max(row_end, mirror[1]))]
    return [(row_start, row_end), mirror]


class PretraceWatch:
    """Called while a pre-pass POV-Ray runs; True (stop it) once the answer is known: PRETRACED when the
    pixel counter drops back (the pretrace is over and the final pass has begun), NO_RADIOSITY when a
    good part of the frame is rendered and the cache file is still empty. A band of the frame (`band`)
    is never judged early to have no radiosity: its first rows may be sky, with samples further down."""

    def __init__(self, log_path: Path, cache_path: Path, band: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.log_path, self.cache_path, self.band, self._clock = log_path, cache_path, band, clock
        self.samples: list[tuple[float, int]] = []   # (seconds, pixels pretraced) as read: `sweep_costs`
        self.ended: float | None = None              # when the final pass was seen to begin
        self.verdict: str | None = None
        self._offset = 0
        self._pending = b""
        self._last: int | None = None

    def __call__(self) -> bool:
        if self.verdict is None:
            self.verdict = self._judge()
        return self.verdict is not None

    def _judge(self) -> str | None:
        now = self._clock()
        for done, total in self._new_counts():
            if self._last is not None and done < self._last:
                self.ended = now
                return PRETRACED
            self._last = done
            if not self.band and total and done >= total * NO_SAMPLES_AFTER and _size(self.cache_path) == 0:
                return NO_RADIOSITY
        if self._last is not None:
            self.samples.append((now, self._last))
        return None

    def _new_counts(self) -> list[tuple[int, int]]:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return []
        self._offset += len(data)
        text = self._pending + data
        cut = max(text.rfind(b"\r"), text.rfind(b"\n")) + 1   # keep a half-written line for next time
        self._pending = text[cut:]
        return [(int(done), int(total)) for done, total in povtext.PROGRESS.findall(text[:cut])]


def _size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
