"""Interleaved strips: a still's render blocks laid out so that every strip holds a little of the whole frame.

A frame's rows cost very unevenly (stackertransp's 32-row bands run from 0.01 to 2.3 s of CPU), so strips
of rows are a gamble on two boxes: a strip cut blind into dear rows is one box's tail, and cutting finer
pays POV-Ray's start-up and the parse again for every strip. POV-Ray renders any set of its render blocks
in one process, each block exactly as in the whole frame (`+C` beside a render state file that lists the
other blocks as done, farm/rendering/statefile.py), so the farm cuts strips of a *sheared* image instead:
column of blocks `c` is rotated up by `c * step` block rows, and a strip of the sheared image's rows takes
one block from every column, each from another band of the frame. Its cost is then close to its share of
the frame's (measured: stackertransp 640x480 in two checkerboard halves, one POV-Ray each on one core, took
1.03-1.04 of `+WT2` on the same two cores, where two halves of rows took 1.5), so a few large strips balance.

Only whole blocks move: the bottom band of a frame whose height is not a multiple of the block size stays
where it is (its blocks are shorter than the others). Everything that stores or relays a job's rows (the
scheduler, the store, the stitcher's canvas, the viewers' rows) speaks of the sheared image's rows; its
pixels take their place in the frame when an image is written or shown (`unshear`, `placements`).

Pure: no I/O. Rows are 0-based, ranges half-open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from farm.options import validate_options
from farm.strips import block_count, continue_fits

# The render block of a sheared frame whose pixels do not depend on where blocks fall (see `fine_block`): twice
# as many block rows as POV-Ray's default 32 lets two boxes' first strips split a frame evenly (640x480 has 15
# rows of 32: halves of 8 and 7 rows left one box 14% more to do), at no cost in CPU (stackertransp's sheared
# halves took 12.15 s at 16 against 12.27 s at 32).
FINE_BLOCK = 16

# The capability tag of a node that renders sheared units (it says "interleave" when it registers): a sheared
# job needs it, so a node from before sheared frames, which would deliver a frame's own rows, never takes one.
NODE_TAG = "can-interleave"


def needed_tags(require: tuple[str, ...], step: int) -> tuple[str, ...]:
    """The tags a node must have to render a job requiring `require` whose frames are sheared at `step`."""
    return (*require, NODE_TAG) if step else require


def fine_block(width: int, height: int, block: int, antialias: bool, block_given: bool) -> int:
    """The render block for a sheared `width` x `height` frame rendered with `block`: FINE_BLOCK where no pixel
    can change with it. Anti-aliasing (method 1 samples its neighbours inside a block) depends on where blocks
    fall; so does a radiosity pretrace (each block's jitter follows its serial), which is why a frame's
    pre-pass keeps the frame's own blocks (`pretrace_options`) while its strips, loading the cache, take fine
    ones (balcony 640x480: 1.01 times the natives' spread either way). A block size the user chose is kept,
    and so is one whose frame would have too many blocks to render in part (`continue_fits`)."""
    fine = block > FINE_BLOCK and not (antialias or block_given)
    return FINE_BLOCK if fine and continue_fits(width, height, FINE_BLOCK) else block


def fine_block_option(block: int) -> str:
    """The option that gives a sheared job its fine block, appended to the job's options at submit."""
    return f"+BS{block}"


def pretrace_options(options: tuple[str, ...]) -> tuple[str, ...]:
    """A job's options for its radiosity pre-pass: without the fine block the farm appended (`fine_block`),
    so that the pretrace lays out the frame's blocks, and jitters them, as a single render does."""
    if options and options[-1] == fine_block_option(FINE_BLOCK) and not validate_options(options[:-1]).block_given:
        return options[:-1]
    return options


def step_for(block_rows: int) -> int:
    """The rotation per column for a frame of `block_rows` whole block rows: coprime to it, so a sheared row
    meets every band of the frame, and near its golden section, so neighbouring columns draw on bands far
    apart. 0 (no shear) with fewer than three block rows."""
    if block_rows < 3:
        return 0
    guess = round(block_rows / ((1 + math.sqrt(5)) / 2))
    for distance in range(block_rows):
        for step in (guess - distance, guess + distance):
            if 0 < step < block_rows and math.gcd(step, block_rows) == 1:
                return step
    return 1


@dataclass(frozen=True)
class Shear:
    """The sheared layout of a `width` x `height` frame in `block`-pixel render blocks; `step` 0 is none."""
    width: int
    height: int
    block: int
    step: int

    @classmethod
    def of_frame(cls, width: int, height: int, block: int) -> Shear:
        if width < 1 or height < 1 or block < 1:
            raise ValueError(f"a {width}x{height} frame in {block}-pixel blocks")
        return cls(width, height, block, step_for(height // block))

    @property
    def block_rows(self) -> int:
        """Whole block rows: those that move."""
        return self.height // self.block

    @property
    def columns(self) -> int:
        return block_count(self.width, self.block)

    def source_row(self, column: int, row: int) -> int:
        """The frame's pixel row that row `row` of the sheared image holds in column of blocks `column`."""
        band, within = divmod(row, self.block)
        if not self.step or band >= self.block_rows:
            return row
        return (band + column * self.step) % self.block_rows * self.block + within

    def blocks(self, row_start: int, row_end: int) -> Iterator[tuple[int, int]]:
        """(column, frame block row) of every render block the sheared rows [row_start, row_end) hold; the
        range starts on a block edge and ends on one or at the bottom."""
        if not 0 <= row_start < row_end <= self.height or row_start % self.block:
            raise ValueError(f"rows [{row_start}, {row_end}) of a {self.height}-row frame in {self.block}-row blocks")
        for band in range(row_start // self.block, block_count(row_end, self.block)):
            for column in range(self.columns):
                yield column, self.source_row(column, band * self.block) // self.block

    def serials(self, row_start: int, row_end: int) -> set[int]:
        """POV-Ray's serial numbers (left to right, top to bottom) of the blocks those rows hold."""
        return {row * self.columns + column for column, row in self.blocks(row_start, row_end)}

    def _columns(self, bpp: int) -> list[tuple[int, int, int]]:
        """(column, first byte, end byte) of every column of blocks within a row."""
        return [(column, column * self.block * bpp, min(self.width, (column + 1) * self.block) * bpp)
                for column in range(self.columns)]

    def sheared_rows(self, frame: bytes, row_bytes: int, bpp: int, row_start: int, row_end: int) -> bytes:
        """Rows [row_start, row_end) of the sheared image, from the frame's pixels (rows of `row_bytes`)."""
        if not self.step:
            return bytes(frame[row_start * row_bytes:row_end * row_bytes])
        out = bytearray((row_end - row_start) * row_bytes)
        for source, target, length in self.placements(row_start, row_end, row_bytes, bpp):
            out[target:target + length] = frame[source:source + length]
        return bytes(out)

    def unshear(self, sheared: bytes, row_bytes: int, bpp: int) -> bytes:
        """The frame's pixels from the whole sheared image."""
        if not self.step:
            return bytes(sheared)
        out = bytearray(len(sheared))
        for target, source, length in self.placements(0, self.height, row_bytes, bpp):
            out[target:target + length] = sheared[source:source + length]
        return bytes(out)

    def placements(self, row_start: int, row_end: int, row_bytes: int, bpp: int) -> Iterator[tuple[int, int, int]]:
        """Where the bytes of sheared rows [row_start, row_end) go in the frame, one pixel row of one column
        at a time: (the frame's byte offset, the offset in those rows' bytes, the length)."""
        columns = self._columns(bpp)
        for row in range(row_start, row_end):
            at = (row - row_start) * row_bytes
            for column, first, end in columns:
                yield self.source_row(column, row) * row_bytes + first, at + first, end - first

    def rectangles(self, row_start: int, row_end: int) -> list[tuple[int, int, int, int]]:
        """The frame's rectangles (left, top, right, bottom; half-open) that sheared rows [row_start, row_end)
        cover: per column of blocks, one or two runs of rows (two where the rotation wraps)."""
        rects = []
        for column in range(self.columns):
            left, right = column * self.block, min(self.width, (column + 1) * self.block)
            tops = sorted(self.source_row(column, row) for row in range(row_start, row_end))
            run_start = previous = tops[0]
            for top in tops[1:]:
                if top != previous + 1:
                    rects.append((left, run_start, right, previous + 1))
                    run_start = top
                previous = top
            rects.append((left, run_start, right, previous + 1))
        return rects
