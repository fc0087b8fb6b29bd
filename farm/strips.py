"""Strip geometry: which rows of a frame each strip holds, how POV-Ray is told to render them, and how
the rows of a frame's strips are cut out of a render and joined again.

A job's image is cut into horizontal strips. A node renders one strip with POV-Ray (which always writes a
full-size image, black outside the strip), decodes that image (`farm.images`), crops the strip's rows and
sends them (`farm.rows`); the controller checks and stitches the strips and writes the final PNG. How a
job is cut into units of work is `farm.planning`.

Everything here is pure: no I/O and no state. Every error is a `ValueError` with a sentence; callers
turn it into a fault code.

Row numbers are 0-based and ranges half-open (`[start, end)`) everywhere except in
`povray_row_options`, which speaks POV-Ray's 1-based dialect.
"""

from __future__ import annotations

from typing import Iterable

from farm.images.raster import Raster, check_format, row_size

DEFAULT_BLOCK = 32  # POV-Ray's default render block size (+BS)


def block_count(height: int, block: int) -> int:
    """Render blocks of `block` rows it takes to cover `height` rows (the last one may be partial)."""
    return -(-height // block)


# POV-Ray reads a skipped block's message in about 11 us (65,536 of them, a 4096x4096 frame in 16-pixel blocks:
# 0.7 s more than the same rows with +SR/+ER): past this many blocks a frame's rows are not worth it.
CONTINUE_MAX_BLOCKS = 100_000


def continue_fits(width: int, height: int, block: int) -> bool:
    """Whether a frame of this size is worth rendering in part from a continue_file (its blocks are few enough)."""
    return block >= 1 and block_count(width, block) * block_count(height, block) <= CONTINUE_MAX_BLOCKS


def band_serials(width: int, height: int, block: int, row_start: int, row_end: int) -> range:
    """The render blocks (serials, left to right and top to bottom from 0) of a band of a frame's radiosity
    pre-pass over rows [row_start, row_end): a row that is no block edge stands for the block that far
    across its row of blocks, so bands cut anywhere take every block once (farm.radiosity.bands_by_cost).
    Block-aligned rows take whole rows of blocks."""
    across = block_count(width, block)
    total = across * block_count(height, block)
    end = total if row_end >= height else min(total, row_end * across // block)
    return range(min(total, row_start * across // block), end)


def plan_strips(height: int, count: int, block: int = DEFAULT_BLOCK) -> list[tuple[int, int]]:
    """0-based half-open row ranges [start, end) covering 0..height in order, no gaps/overlaps.

    Every internal edge is a multiple of `block`: POV-Ray's render blocks are
    aligned to the top of the render area, and method-1 anti-aliasing depends on
    where they fall, so only block-aligned strips stitch bit-exactly. Strips are
    as even as possible in whole blocks (bigger ones first); the last strip may
    be partial. `count` is clamped to [1, ceil(height/block)].
    """
    if height < 1:
        raise ValueError(f"The image height must be at least 1, not {height}.")
    if count < 1:
        raise ValueError(f"The strip count must be at least 1, not {count}.")
    if block < 1:
        raise ValueError(f"The block size must be at least 1, not {block}.")
    blocks = block_count(height, block)
    count = min(count, blocks)
    per_strip, extra = divmod(blocks, count)
    strips = []
    start = 0
    for i in range(count):
        end = min(height, start + (per_strip + (i < extra)) * block)
        strips.append((start, end))
        start = end
    return strips


def povray_row_options(start: int, end: int, height: int) -> list[str]:
    """POV-Ray options selecting 0-based rows [start, end): e.g. ['+SR33', '+ER64'].

    POV-Ray reads a start value 0 <= v < 1 and an end value 0 <= v <= 1 as a
    fraction of the height (first row int(H*v)+1, last row int(H*v)), so '+ER1'
    means the whole image. 1-based start values are always >= 1, so they are
    never fractions; only an end at row 1 needs care: a fraction v with
    int(H*v) == 1, for which 1.5/H has half a row of margin either way.
    """
    if height < 1:
        raise ValueError(f"The image height must be at least 1, not {height}.")
    if not 0 <= start < end <= height:
        raise ValueError(
            f"Rows [{start}, {end}) are not a non-empty range inside an image {height} rows high."
        )
    if end == 1 and height > 1:
        # Fixed-point with len(str(H)) + 3 decimals keeps the rounding error far
        # below the half-row margin and avoids exponent notation.
        end_value = f"{1.5 / height:.{len(str(height)) + 3}f}"
    else:
        end_value = str(end)  # for height 1, '+ER1' means "all of it", which is row 1
    return [f"+SR{start + 1}", f"+ER{end_value}"]


def crop_rows(raster: Raster, start: int, end: int) -> bytes:
    """Raw pixel bytes of rows [start, end)."""
    if not 0 <= start < end <= raster.height:
        raise ValueError(
            f"Rows [{start}, {end}) are not a non-empty range inside an image "
            f"{raster.height} rows high."
        )
    size = raster.row_bytes
    return raster.pixels[start * size : end * size]


def stitch(
    width: int, height: int, channels: int, bits: int, pieces: Iterable[tuple[int, int, bytes]]
) -> Raster:
    """Join strips (start, end, row bytes), given in any order, into one raster.

    The pieces must tile rows 0..height exactly; a gap, an overlap or a piece of
    the wrong byte length is a ValueError that names the rows.
    """
    check_format(width, height, channels, bits)
    size = row_size(width, channels, bits)
    ordered = sorted(pieces, key=lambda piece: (piece[0], piece[1]))
    covered = 0
    for start, end, rows in ordered:
        if not 0 <= start < end <= height:
            raise ValueError(
                f"Strip rows [{start}, {end}) are not a non-empty range inside an image "
                f"{height} rows high."
            )
        if start > covered:
            raise ValueError(f"Rows [{covered}, {start}) are missing between strips.")
        if start < covered:
            raise ValueError(
                f"Strip rows [{start}, {end}) overlap rows already covered up to row {covered}."
            )
        if len(rows) != (end - start) * size:
            raise ValueError(
                f"Strip rows [{start}, {end}) have {len(rows)} bytes, expected "
                f"{(end - start) * size}."
            )
        covered = end
    if covered < height:
        raise ValueError(f"Rows [{covered}, {height}) are missing at the bottom.")
    return Raster(width, height, channels, bits, b"".join(rows for _, _, rows in ordered))
