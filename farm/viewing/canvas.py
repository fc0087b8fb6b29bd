"""The pixels of one frame as the viewer holds them: the rows as rendered (what S saves) and an 8-bit copy for
the screen, with a checkerboard where nothing is rendered yet and a scaled-up preview standing in for the rows
to come. Pure: no pygame, no network."""

from __future__ import annotations

from farm.images.png import encode_png
from farm.images.raster import Raster, row_size
from farm.shear import Shear

CHECKER = 8                     # checker square size in pixels
UNRENDERED = (0x2c, 0x36)       # dark checker: rows nobody has rendered yet
TRANSPARENT = (0x9c, 0x70)      # light checker behind the pixels of an RGBA image


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

    def __init__(self, width: int, height: int, channels: int, bits: int, layout: Shear | None = None):
        """`layout`: the rows painted are those of the frame's sheared image (farm.shear): `raw` holds them
        so, the screen shows each block in its place."""
        if channels not in (3, 4) or bits not in (8, 16) or width < 1 or height < 1:
            raise ValueError(f"cannot show a {width}x{height} image with {channels} channels of {bits} bits")
        self.width, self.height, self.channels, self.bits = width, height, channels, bits
        self.layout = layout if layout is not None and layout.step else None
        # Of a sheared frame: which blocks' pixels are final, by the frame's pixel row and column of blocks.
        self._final = bytearray(height * layout.columns) if self.layout is not None else None
        self.row_bytes = row_size(width, channels, bits)
        self.display_row_bytes = width * channels
        self.raw = bytearray(self.row_bytes * height)
        self.display = bytearray(checker(width, height, channels))
        self._painted: list[list[int]] = []     # sorted, merged [start, end) row ranges
        self.shown_live = False                 # a live block or a preview is on the screen buffer

    def paint(self, row_start: int, row_end: int, rows: bytes) -> None:
        """Put decoded rows [row_start, row_end) into both buffers."""
        if not 0 <= row_start < row_end <= self.height:
            raise ValueError(f"rows [{row_start}, {row_end}) are outside a {self.height}-row image")
        if len(rows) != (row_end - row_start) * self.row_bytes:
            raise ValueError(f"rows [{row_start}, {row_end}) need {(row_end - row_start) * self.row_bytes} "
                             f"bytes, not {len(rows)}")
        self.raw[row_start * self.row_bytes:row_end * self.row_bytes] = rows
        screen = rows if self.bits == 8 else rows[0::2]     # big-endian: the high byte comes first
        if self.layout is None:
            self.display[row_start * self.display_row_bytes:row_end * self.display_row_bytes] = screen
        else:
            columns, block_bytes = self.layout.columns, self.layout.block * self.channels
            for target, source, length in self.layout.placements(row_start, row_end, self.display_row_bytes,
                                                                 self.channels):
                self.display[target:target + length] = screen[source:source + length]
                row, first = divmod(target, self.display_row_bytes)
                self._final[row * columns + first // block_bytes] = 1
        self._mark(row_start, row_end)

    def _open(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> list[tuple[int, int, int]]:
        """(row, first pixel, end pixel) of the runs of pixels no final row is painted in yet, within rows
        [top, bottom) and columns [left, right)."""
        right = self.width if right is None else right
        if self.layout is None:
            return [(y, left, right) for start, end in self.missing() for y in range(max(start, top), min(end, bottom))]
        block, columns, runs = self.layout.block, self.layout.columns, []
        for y in range(top, bottom):
            for column in range(left // block, -(-right // block)):
                if not self._final[y * columns + column]:
                    runs.append((y, max(left, column * block), min(right, (column + 1) * block)))
        return runs

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
        for y, first, end in self._open(0, self.height):
            source = y * height // self.height
            if source not in scaled:
                line = screen[source * width * pixel:(source + 1) * width * pixel]
                scaled[source] = b"".join(line[offset:offset + pixel] for offset in columns)
            offset = y * self.display_row_bytes
            self.display[offset + first * pixel:offset + end * pixel] = scaled[source][first * pixel:end * pixel]
        self.shown_live = True

    def paint_block(self, left: int, top: int, right: int, bottom: int, rgb: bytes) -> bool:
        """Show a live block (8-bit RGB rows of the inclusive rectangle) on the screen buffer only, in the
        rows no final row is painted in yet: like the preview, it is never saved. False when it was not
        shown (final rows are there already)."""
        if not (0 <= left <= right < self.width and 0 <= top <= bottom < self.height):
            raise ValueError(f"block ({left}, {top})-({right}, {bottom}) is outside a {self.width}x{self.height} image")
        width = right - left + 1
        if len(rgb) != width * (bottom - top + 1) * 3:
            raise ValueError(f"a {width}-pixel-wide block of {bottom - top + 1} rows needs more than {len(rgb)} bytes")
        shown = False
        for y, first, end in self._open(top, bottom + 1, left, right + 1):
            line = rgb[((y - top) * width + first - left) * 3:((y - top) * width + end - left) * 3]
            if self.channels == 4:     # opaque: the block is what POV-Ray composited so far
                line = b"".join(line[x:x + 3] + b"\xff" for x in range(0, len(line), 3))
            offset = y * self.display_row_bytes + first * self.channels
            self.display[offset:offset + (end - first) * self.channels] = line
            shown = True
        self.shown_live = self.shown_live or shown
        return shown

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
    def has_pixels(self) -> bool:
        """Anything rendered is on the screen buffer: final rows, live blocks or a preview."""
        return bool(self._painted) or self.shown_live

    @property
    def size(self) -> int:
        """Bytes the frame holds."""
        return len(self.raw) + len(self.display)

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
        pixels = bytes(self.raw) if self.layout is None else \
            self.layout.unshear(bytes(self.raw), self.row_bytes, self.channels * self.bits // 8)
        return Raster(self.width, self.height, self.channels, self.bits, pixels)

    def png(self) -> bytes:
        return encode_png(self.raster())
