"""Strip geometry and the pixels that travel between node and controller.

A job's image is cut into horizontal strips. A node renders one strip with
POV-Ray (which always writes a full-size image, black outside the strip),
decodes that image, crops the strip's rows and sends them zlib-compressed; the
controller checks and stitches the strips and writes the final PNG.

Everything here is pure: bytes in, bytes out, no I/O and no state. Every error
is a `ValueError` with a sentence; callers turn it into a fault code.

Row numbers are 0-based and ranges half-open (`[start, end)`) everywhere except
in `povray_row_options`, which speaks POV-Ray's 1-based dialect.
"""

from __future__ import annotations

import enum
import itertools
import struct
import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from farm.faults import shown

DEFAULT_BLOCK = 32  # POV-Ray's default render block size (+BS)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG colour types we read, mapped to (samples per pixel in the file, channels we return).
# Gray is expanded to RGB so the rest of the farm only ever sees 3 or 4 channels.
_PNG_COLOUR_TYPES = {0: (1, 3), 2: (3, 3), 4: (2, 4), 6: (4, 4)}
_PNG_TYPE_FOR_CHANNELS = {3: 2, 4: 6}


@dataclass(frozen=True)
class Raster:
    """An uncompressed image: rows top to bottom, no padding or filter bytes.

    16-bit samples are big-endian (as in PNG and PPM), so a raster's pixels can
    be written into either format without touching them.
    """

    width: int
    height: int
    channels: int  # 3 = RGB, 4 = RGBA
    bits: int  # 8 or 16 bits per sample
    pixels: bytes

    def __post_init__(self) -> None:
        _check_format(self.width, self.height, self.channels, self.bits)
        if not isinstance(self.pixels, bytes):
            # Freeze bytearrays/memoryviews so a Raster really is immutable.
            object.__setattr__(self, "pixels", bytes(self.pixels))
        expected = self.row_bytes * self.height
        if len(self.pixels) != expected:
            raise ValueError(
                f"A {self.width}x{self.height} raster with {self.channels} channels at "
                f"{self.bits} bits needs {expected} bytes of pixels, not {len(self.pixels)}."
            )

    @property
    def row_bytes(self) -> int:
        """Bytes in one row of pixels."""
        return row_size(self.width, self.channels, self.bits)


def row_size(width: int, channels: int, bits: int) -> int:
    """Bytes in one row of `width` pixels (e.g. to know what a strip should decompress to)."""
    return width * channels * (bits // 8)


def _check_format(width: int, height: int, channels: int, bits: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"The image {name} must be a positive integer, not {value!r}.")
    if channels not in (3, 4):
        raise ValueError(f"An image must have 3 (RGB) or 4 (RGBA) channels, not {channels!r}.")
    if bits not in (8, 16):
        raise ValueError(f"Samples must be 8 or 16 bits, not {bits!r}.")


# --------------------------------------------------------------------------- geometry


def _block_count(height: int, block: int) -> int:
    return -(-height // block)


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
    blocks = _block_count(height, block)
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


# --------------------------------------------------------------------------- PPM


def decode_ppm(data: bytes) -> Raster:
    """Decode a binary PPM (P6) as POV-Ray writes it with +FP or +FP16.

    The header may carry '#' comment lines (POV-Ray puts the software, date and
    platform there). maxval 255 gives 8-bit samples, 65535 16-bit big-endian.
    """
    data = bytes(data)
    if not data.startswith(b"P6"):
        raise ValueError("The image is not a binary PPM (it does not start with 'P6').")
    pos = 2
    fields = []
    for name in ("width", "height", "maxval"):
        pos = _skip_ppm_space(data, pos)
        start = pos
        while pos < len(data) and data[pos : pos + 1].isdigit():
            pos += 1
        if pos == start:
            raise ValueError(f"The PPM header is malformed: no {name} at byte {start}.")
        fields.append(int(data[start:pos]))
    # Exactly one whitespace byte separates the header from the samples.
    if pos >= len(data) or data[pos] not in b" \t\r\n":
        raise ValueError("The PPM header is malformed or truncated after the maxval.")
    pos += 1
    width, height, maxval = fields
    if maxval == 255:
        bits = 8
    elif maxval == 65535:
        bits = 16
    else:
        raise ValueError(f"PPM maxval {maxval} is not supported (only 255 and 65535).")
    if width < 1 or height < 1:
        raise ValueError(f"The PPM has an empty size ({width}x{height}).")
    expected = row_size(width, 3, bits) * height
    body = data[pos:]
    if len(body) != expected:
        what = "truncated" if len(body) < expected else "followed by extra bytes"
        raise ValueError(
            f"The {width}x{height} PPM is {what}: {len(body)} bytes of samples, "
            f"expected {expected}."
        )
    return Raster(width, height, 3, bits, body)


def _skip_ppm_space(data: bytes, pos: int) -> int:
    """Skip whitespace and '#' comments (to the end of their line)."""
    while pos < len(data):
        ch = data[pos]
        if ch in b" \t\r\n\v\f":
            pos += 1
        elif ch == ord("#"):
            while pos < len(data) and data[pos] not in b"\r\n":
                pos += 1
        else:
            break
    return pos


# --------------------------------------------------------------------------- PNG decoding


def decode_png(data: bytes) -> Raster:
    """Decode a non-interlaced PNG as POV-Ray writes it with +FN / +FN16 (+UA for RGBA).

    Reads colour types 2 (RGB) and 6 (RGBA) and expands 0 (gray) and 4 (gray +
    alpha) to RGB/RGBA; bit depth 8 or 16; all five filter types. Every chunk's
    CRC is checked; ancillary chunks (text, gamma, tRNS, ...) are ignored.
    """
    data = bytes(data)
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("The image is not a PNG (bad signature).")
    header: tuple[int, int, int, int] | None = None
    idat: list[bytes] = []
    for kind, body in _png_chunks(data):
        if header is None:
            if kind != b"IHDR":
                raise ValueError("The PNG does not start with an IHDR chunk.")
            header = _parse_ihdr(body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif kind == b"IHDR":
            raise ValueError("The PNG has more than one IHDR chunk.")
        elif kind[0] & 0x20 == 0 and kind != b"PLTE":
            # Uppercase first letter = critical: we must not silently skip it.
            raise ValueError(f"The PNG has an unknown critical chunk {kind!r}.")
        # PLTE in an RGB image is only a suggested palette, and ancillary chunks
        # do not change the pixels we return, so both are skipped.
    else:
        raise ValueError("The PNG is truncated: it has no IEND chunk.")
    assert header is not None  # the loop always sees IHDR first or raises
    width, height, colour_type, bits = header
    if not idat:
        raise ValueError("The PNG has no IDAT chunk.")
    file_samples, channels = _PNG_COLOUR_TYPES[colour_type]
    bpp = file_samples * bits // 8  # bytes per pixel, the filters' left neighbour distance
    stride = width * bpp
    raw = _inflate(b"".join(idat), height * (stride + 1), "The PNG image data", exact=True)
    rows = _unfilter(raw, height, stride, bpp)
    if file_samples != channels:
        rows = _gray_to_rgb(rows, file_samples, bits // 8)
    return Raster(width, height, channels, bits, rows)


def _png_chunks(data: bytes) -> Iterable[tuple[bytes, bytes]]:
    """Yield (type, body) for each chunk after the signature, checking length and CRC."""
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("The PNG is truncated inside a chunk header.")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"The PNG is truncated inside its {kind!r} chunk.")
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[pos + 4 : end]) != crc:
            raise ValueError(f"The PNG's {kind!r} chunk has a bad CRC (the file is corrupt).")
        yield kind, data[pos + 8 : end]
        pos = end + 4


def _parse_ihdr(body: bytes) -> tuple[int, int, int, int]:
    if len(body) != 13:
        raise ValueError("The PNG's IHDR chunk has the wrong length.")
    width, height, bits, colour_type, compression, filter_method, interlace = struct.unpack(
        ">IIBBBBB", body
    )
    if width < 1 or height < 1 or width >= 2**31 or height >= 2**31:
        raise ValueError(f"The PNG has an invalid size {width}x{height}.")
    if colour_type == 3:
        raise ValueError("Palette PNGs (colour type 3) are not supported.")
    if colour_type not in _PNG_COLOUR_TYPES:
        raise ValueError(f"The PNG has an invalid colour type {colour_type}.")
    if bits not in (8, 16):
        raise ValueError(f"PNG bit depth {bits} is not supported (only 8 and 16).")
    if compression != 0 or filter_method != 0:
        raise ValueError("The PNG uses an unknown compression or filter method.")
    if interlace != 0:
        raise ValueError("Interlaced PNGs are not supported.")
    return width, height, colour_type, bits


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> bytes:
    """Undo the per-row PNG filters; returns the rows without their filter bytes.

    POV-Ray's partial renders are mostly black rows and libpng filters them as
    all-zero bytes, so zero rows take a shortcut; None rows are a plain slice.
    """
    zero = bytes(stride)
    masks = _SwarMasks(stride)
    out: list[bytes] = []
    prev = zero
    pos = 0
    for y in range(height):
        kind = raw[pos]
        row = raw[pos + 1 : pos + 1 + stride]
        pos += stride + 1
        if kind == 0:
            cur = row
        elif kind > 4:
            raise ValueError(f"The PNG row {y} has an invalid filter type {kind}.")
        elif row == zero and (kind == 2 or prev == zero):
            # Up adds nothing to the row above; the other filters predict from
            # zero neighbours (Paeth picks the left one, which is zero too).
            cur = prev
        elif kind == 2:
            cur = masks.add(row, prev)
        elif kind == 1 or (kind == 4 and prev == zero):
            cur = masks.running_sum(row, bpp)  # Sub; Paeth over a zero row is Sub too
        elif kind == 3:
            cur = _unfilter_average(row, prev, bpp)
        else:
            cur = _unfilter_paeth(row, prev, bpp)
        out.append(cur)
        prev = cur
    return b"".join(out)


class _SwarMasks:
    """Byte-wise addition mod 256 of whole rows with one big-integer operation.

    Adding the low 7 bits of every byte can't carry into the next byte; the top
    bits are then added without carry by XOR. This is Python-speed per row
    rather than per byte.
    """

    def __init__(self, length: int):
        self.length = length
        self.low7 = int.from_bytes(b"\x7f" * length, "big")
        self.top = int.from_bytes(b"\x80" * length, "big")

    def add(self, a: bytes, b: bytes) -> bytes:
        x = int.from_bytes(a, "big")
        y = int.from_bytes(b, "big")
        return self._add(x, y).to_bytes(self.length, "big")

    def _add(self, x: int, y: int) -> int:
        return ((x & self.low7) + (y & self.low7)) ^ ((x ^ y) & self.top)

    def running_sum(self, row: bytes, bpp: int) -> bytes:
        """Undo PNG's Sub filter: each byte plus the reconstructed byte `bpp` to its left, mod 256. A
        running sum per byte lane by doubling: after the step that adds the row shifted by k pixels, each
        byte holds the sum of the 2k nearest bytes of its lane ending at it, so log2(pixels) whole-row
        additions do it (a fifth of the time of a running sum byte by byte, 17 us for 640 RGB pixels)."""
        total, shift, bits = int.from_bytes(row, "big"), 8 * bpp, 8 * len(row)
        while shift < bits:
            total = self._add(total, total >> shift)      # big-endian: the left neighbours are higher
            shift *= 2
        return total.to_bytes(self.length, "big")


def _unfilter_average(row: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray(row)
    for i in range(bpp):
        out[i] = (out[i] + (prev[i] >> 1)) & 255
    for i in range(bpp, len(out)):
        out[i] = (out[i] + ((out[i - bpp] + prev[i]) >> 1)) & 255
    return bytes(out)


def _unfilter_paeth(row: bytes, prev: bytes, bpp: int) -> bytes:
    out = bytearray(row)
    for i in range(bpp):  # no left neighbour: the predictor is the byte above
        out[i] = (out[i] + prev[i]) & 255
    for i in range(bpp, len(out)):
        a = out[i - bpp]
        b = prev[i]
        c = prev[i - bpp]
        # pa, pb, pc of the spec, rewritten without p = a + b - c.
        pa = b - c
        pb = a - c
        pc = pa + pb
        if pa < 0:
            pa = -pa
        if pb < 0:
            pb = -pb
        if pc < 0:
            pc = -pc
        if pa <= pb and pa <= pc:
            pred = a
        elif pb <= pc:
            pred = b
        else:
            pred = c
        out[i] = (out[i] + pred) & 255
    return bytes(out)


def _gray_to_rgb(rows: bytes, file_samples: int, sample_bytes: int) -> bytes:
    """Expand gray (1 sample) to RGB, or gray+alpha (2 samples) to RGBA."""
    in_pixel = file_samples * sample_bytes
    out_samples = 3 if file_samples == 1 else 4
    out_pixel = out_samples * sample_bytes
    pixels = len(rows) // in_pixel
    out = bytearray(pixels * out_pixel)
    for k in range(sample_bytes):  # each byte of the gray sample goes to R, G and B
        gray = rows[k::in_pixel]
        for channel in range(3):
            out[channel * sample_bytes + k :: out_pixel] = gray
    if file_samples == 2:
        for k in range(sample_bytes):
            out[3 * sample_bytes + k :: out_pixel] = rows[sample_bytes + k :: in_pixel]
    return bytes(out)


def decode_image(data: bytes) -> Raster:
    """Decode a PNG or a P6 PPM, telling them apart by their first bytes."""
    if data[:8] == PNG_SIGNATURE:
        return decode_png(data)
    if data[:2] == b"P6":
        return decode_ppm(data)
    raise ValueError("The image is neither a PNG nor a binary PPM.")


# --------------------------------------------------------------------------- rows


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
    _check_format(width, height, channels, bits)
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


# --------------------------------------------------------------------------- PNG encoding


def encode_png(raster: Raster, level: int = 6) -> bytes:
    """A PNG of the raster: IHDR, IDAT, IEND only, filter None, zlib at `level`.

    No time or text chunks, so the same pixels always give the same bytes (the
    farm can hash and compare results).
    """
    if not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"The PNG compression level must be 0..9, not {level!r}.")
    ihdr = struct.pack(
        ">IIBBBBB",
        raster.width,
        raster.height,
        raster.bits,
        _PNG_TYPE_FOR_CHANNELS[raster.channels],
        0,  # deflate
        0,  # adaptive filtering method (we always pick None per row)
        0,  # not interlaced
    )
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", ihdr),
            _png_chunk(b"IDAT", _compressed_scanlines(raster, level)),
            _png_chunk(b"IEND", b""),
        )
    )


def _compressed_scanlines(raster: Raster, level: int) -> bytes:
    """The zlib stream of a PNG image: every row prefixed with filter type None."""
    # Feed the compressor in batches of rows so big images are not copied whole.
    size = raster.row_bytes
    pixels = memoryview(raster.pixels)
    packer = zlib.compressobj(level)
    parts = []
    batch = max(1, (1 << 20) // (size + 1))
    for first in range(0, raster.height, batch):
        last = min(raster.height, first + batch)
        chunk = b"".join(
            b"\x00" + pixels[y * size : (y + 1) * size] for y in range(first, last)
        )
        parts.append(packer.compress(chunk))
    parts.append(packer.flush())
    return b"".join(parts)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


# --------------------------------------------------------------------------- the wire


def compress_rows(data: bytes) -> bytes:
    """zlib-compress strip rows for the wire (black rows shrink to almost nothing)."""
    return zlib.compress(data, 6)


# How a unit's rows travel and are stored. Both are one zlib stream (RFC 1950) of each frame's rows in turn.
ZLIB = "zlib"           # the raw rows as they are
FILTERED = "filtered"   # each row led by a PNG filter type byte and filtered by it (PNG's scanlines); the
                        # first row of each frame is filtered against a row of zeros, as PNG's first row is
ENCODINGS = (ZLIB, FILTERED)


def filter_rows(raw: bytes, row_bytes: int, bpp: int, all_filters: bool = False) -> bytes:
    """PNG scanlines of `raw` (whole rows of `row_bytes`): per row the filter whose output has the least
    sum of absolute values taken as signed bytes, the heuristic of libpng and the PNG specification.
    Deflate then finds the smooth gradients of a render far smaller.

    The candidates are None, Sub and Up unless `all_filters` (Average and Paeth too): the controller
    undoes Sub and Up a whole row at a time, but Average and Paeth a byte at a time in Python, about
    0.18 s of the controller's CPU per 640x480 frame against 33 ms, for 1.4% fewer bytes (chess2)."""
    if row_bytes <= 0 or len(raw) % row_bytes:
        raise ValueError(f"{len(raw)} bytes are not whole rows of {row_bytes} bytes.")
    lanes = _Lanes(row_bytes, bpp, all_filters)
    out: list[bytes] = []
    prev = bytes(row_bytes)
    for start in range(0, len(raw), row_bytes):
        row = raw[start:start + row_bytes]
        out.append(lanes.best(row, prev))
        prev = row
    return b"".join(out)


def unfilter_rows(scanlines: bytes, row_bytes: int, bpp: int) -> bytes:
    """Inverse of `filter_rows`: the raw rows (a ValueError for a bad filter type or length)."""
    if len(scanlines) % (row_bytes + 1):
        raise ValueError(f"{len(scanlines)} bytes are not whole filtered rows of {row_bytes} bytes.")
    return _unfilter(scanlines, len(scanlines) // (row_bytes + 1), row_bytes, bpp)


_ABS_SIGNED = bytes(min(v, 256 - v) for v in range(256))   # |byte as a signed value|


class _Lanes:
    """The five PNG filters of one row at once, with whole-row big-integer arithmetic (SWAR): bytes in
    8-bit lanes for the byte-wise ones, 16-bit lanes for Paeth's comparisons. Python speed per row, not
    per byte."""

    def __init__(self, length: int, bpp: int, all_filters: bool = False):
        self.length, self.bpp, self.all_filters = length, bpp, all_filters
        self.masks = _SwarMasks(length)
        self.ones8 = int.from_bytes(b"\x01" * length, "big")
        self.all8 = (1 << (8 * length)) - 1
        self.seven = int.from_bytes(b"\x7f" * length, "big")
        self.ones16 = int.from_bytes(b"\x00\x01" * length, "big")
        self.bias16 = self.ones16 << 10            # 1024 in every 16-bit lane: keeps lanes positive
        self.zero_left = bytes(bpp)

    def best(self, row: bytes, prev: bytes) -> bytes:
        left = (self.zero_left + row[:-self.bpp])[:self.length]
        up_left = (self.zero_left + prev[:-self.bpp])[:self.length]
        candidates = (
            (0, row),
            (1, self.sub(row, left)),
            (2, self.sub(row, prev)),
        )
        if self.all_filters:
            candidates += ((3, self.sub(row, self.average(left, prev))),
                           (4, self.sub(row, self.paeth(left, prev, up_left))))
        kind, best = min(candidates, key=lambda item: sum(item[1].translate(_ABS_SIGNED)))
        return bytes((kind,)) + best

    def sub(self, a: bytes, b: bytes) -> bytes:
        """(a - b) mod 256, byte by byte: a plus the two's complement of b."""
        negated = self.masks.add((int.from_bytes(b, "big") ^ self.all8).to_bytes(self.length, "big"),
                                 self.ones8.to_bytes(self.length, "big"))
        return self.masks.add(a, negated)

    def average(self, a: bytes, b: bytes) -> bytes:
        """floor((a + b) / 2), byte by byte, without a carry between bytes."""
        x, y = int.from_bytes(a, "big"), int.from_bytes(b, "big")
        return ((x & y) + (((x ^ y) >> 1) & self.seven)).to_bytes(self.length, "big")

    def paeth(self, a: bytes, b: bytes, c: bytes) -> bytes:
        """PNG's Paeth predictor byte by byte: of left a, above b, upper left c, the one nearest a + b - c
        (ties: a, then b)."""
        a16, b16, c16 = self._widen(a), self._widen(b), self._widen(c)
        pa = self._abs(b16 + self.bias16 - c16)                 # |p - a| = |b - c|
        pb = self._abs(a16 + self.bias16 - c16)                 # |p - b| = |a - c|
        pc = self._abs(a16 + b16 + self.bias16 - c16 - c16)     # |p - c| = |a + b - 2c|
        take_a = self._not_less(pb, pa) & self._not_less(pc, pa)
        take_b = (take_a ^ self.ones16) & self._not_less(pc, pb)
        take_c = self.ones16 ^ take_a ^ take_b
        chosen = (a16 & take_a * 0xFFFF) | (b16 & take_b * 0xFFFF) | (c16 & take_c * 0xFFFF)
        return chosen.to_bytes(2 * self.length, "big")[1::2]

    def _widen(self, data: bytes) -> int:
        wide = bytearray(2 * self.length)
        wide[1::2] = data
        return int.from_bytes(wide, "big")

    def _abs(self, biased: int) -> int:
        """|v - 1024| in every 16-bit lane, for lanes holding 1024 +- 1023."""
        positive = (biased >> 10) & self.ones16       # 1 where v >= 1024
        negative = positive ^ self.ones16
        return ((biased & positive * 0xFFFF) - (positive << 10)) + ((negative << 10) - (biased & negative * 0xFFFF))

    def _not_less(self, x: int, y: int) -> int:
        """1 in every 16-bit lane where x >= y (lanes 0..1023)."""
        return ((x + self.bias16 - y) >> 10) & self.ones16


def encode_rows(raw: bytes, encoding: str, row_bytes: int, bpp: int, frames: int = 1, level: int = 6) -> bytes:
    """A unit's rows for the wire: `frames` frames of whole rows in turn, in `encoding` (ZLIB or FILTERED)."""
    if encoding == ZLIB:
        return zlib.compress(raw, level)
    if encoding != FILTERED:
        raise ValueError(f"Unknown row encoding {encoding!r}.")
    if frames <= 0 or len(raw) % frames:
        raise ValueError(f"{len(raw)} bytes do not split into {frames} frames.")
    size = len(raw) // frames
    # Z_FILTERED, as PNG encoders deflate scanlines: filtered rows are mostly small values, which short
    # matches code worse than Huffman codes alone (chess2 at level 9: 0.5% fewer bytes than the default).
    packer = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_FILTERED)
    parts = [packer.compress(filter_rows(raw[start:start + size], row_bytes, bpp))
             for start in range(0, len(raw), size)]
    return b"".join(parts) + packer.flush()


def recode_rows(data: bytes, encoding: str, to: str, expected_len: int, row_bytes: int, bpp: int,
                frames: int = 1) -> bytes:
    """A unit's rows in `encoding` as the same rows in `to` (deflate level 6)."""
    return encode_rows(decode_rows(data, encoding, expected_len, row_bytes, bpp, frames), to, row_bytes, bpp, frames)


def decode_rows(data: bytes, encoding: str, expected_len: int, row_bytes: int, bpp: int, frames: int = 1) -> bytes:
    """Inverse of `encode_rows`, refusing anything but exactly `expected_len` bytes of raw rows (the
    output is capped while inflating, as in `decompress_rows`)."""
    if encoding == ZLIB:
        return decompress_rows(data, expected_len)
    if encoding != FILTERED:
        raise ValueError(f"Unknown row encoding {encoding!r}.")
    if row_bytes <= 0 or frames <= 0 or expected_len % (row_bytes * frames):
        raise ValueError(f"{expected_len} bytes are not whole rows of {frames} frames.")
    rows = expected_len // row_bytes
    scanlines = _inflate(data, expected_len + rows, "The compressed rows", exact=True)
    size = len(scanlines) // frames
    return b"".join(unfilter_rows(scanlines[start:start + size], row_bytes, bpp)
                    for start in range(0, len(scanlines), size))


def split_frames(data: bytes, encoding: str, expected_len: int, row_bytes: int, frames: int) -> list[bytes]:
    """A unit's rows of `frames` frames as one stream per frame, in the same encoding (each frame's
    scanlines stand alone, so nothing is unfiltered on the way)."""
    if frames <= 0 or row_bytes <= 0 or expected_len % (row_bytes * frames):
        raise ValueError(f"{expected_len} bytes are not whole rows of {frames} frames.")
    if encoding not in ENCODINGS:
        raise ValueError(f"Unknown row encoding {encoding!r}.")
    if encoding == FILTERED:
        expected_len += expected_len // row_bytes   # a filter type byte per row
    plain = _inflate(data, expected_len, "The compressed rows", exact=True)
    size = len(plain) // frames
    return [zlib.compress(plain[start:start + size], 6) for start in range(0, len(plain), size)]


def deflate_bound(size: int) -> int:
    """The most bytes zlib may make of `size` bytes, at any level and memory setting (zlib's
    deflateBound when its settings are unknown)."""
    return size + ((size + 7) >> 3) + ((size + 63) >> 6) + 5 + 6


def decompress_rows(data: bytes, expected_len: int) -> bytes:
    """Inverse of compress_rows, refusing anything but exactly `expected_len` bytes.

    The output is capped while inflating, so a zlib bomb costs at most
    expected_len + 1 bytes of memory before it is refused.
    """
    if expected_len < 0:
        raise ValueError(f"The expected length cannot be negative ({expected_len}).")
    return _inflate(data, expected_len, "The compressed rows", exact=True)


def decompress_capped(data: bytes, limit: int) -> bytes:
    """zlib data of any length up to `limit` bytes (a file shipped whole, like a radiosity cache)."""
    return _inflate(data, limit, "The compressed data", exact=False)


def _inflate(data: bytes, limit: int, what: str, exact: bool) -> bytes:
    inflater = zlib.decompressobj()
    try:
        # One byte over the limit is enough to know the data is too long;
        # max_length=0 would mean "unlimited", which the +1 also avoids.
        out = inflater.decompress(data, limit + 1)
    except zlib.error as err:
        raise ValueError(f"{what} are not valid zlib data ({err}).") from None
    if len(out) > limit:
        raise ValueError(f"{what} decompress to more than the expected {limit} bytes.")
    if not inflater.eof:
        raise ValueError(f"{what} are truncated: the zlib stream does not end.")
    if inflater.unused_data:
        raise ValueError(f"{what} have trailing bytes after the end of the zlib stream.")
    if exact and len(out) != limit:
        raise ValueError(f"{what} decompress to {len(out)} bytes, expected {limit}.")
    return out


ROWS, PRETRACE = "rows", "pretrace"   # kinds of unit: pixel rows, or a frame's radiosity pre-pass
PREVIEW = "preview"   # a quick low-resolution render of a whole frame, for viewers only: never stitched
PREVIEW_SCALE = 8     # a preview is 1/PREVIEW_SCALE of the frame's width and height


class PreviewMode(str, enum.Enum):
    """When a job's first frame gets a preview."""
    ALWAYS = "always"     # whoever watches (a viewer may be opened after the job starts)
    WATCHED = "watched"   # when a viewer watches the job as its first frame starts: nobody else sees it
    NEVER = "never"

    @classmethod
    def parse(cls, value: object) -> "PreviewMode":
        """From a setting or a submission: a mode's name, "auto" (WATCHED), or yes/no in any usual form."""
        if isinstance(value, bool):
            return cls.ALWAYS if value else cls.NEVER
        text = str(value).strip().lower()
        words = {"auto": cls.WATCHED, "true": cls.ALWAYS, "yes": cls.ALWAYS, "on": cls.ALWAYS, "1": cls.ALWAYS,
                 "false": cls.NEVER, "no": cls.NEVER, "off": cls.NEVER, "0": cls.NEVER}
        if text in words:
            return words[text]
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"preview must be auto, always or never, not {shown(value)}") from None


def preview_size(width: int, height: int) -> tuple[int, int]:
    """The size of a frame's preview: 1/PREVIEW_SCALE of each side, at least 1x1."""
    return max(1, width // PREVIEW_SCALE), max(1, height // PREVIEW_SCALE)


@dataclass(frozen=True)
class UnitPlan:
    """A unit of work as planned at submit: rows [row_start, row_end) of frames first_frame..last_frame,
    rendered by one POV-Ray process. kind ROWS delivers those rows; PRETRACE is a frame's radiosity
    pre-pass, whose rows are the whole frame and whose result is the radiosity cache; PREVIEW is a
    frame's preview, whose rows are those of the preview's own (smaller) image. A `remainder` is not
    rendered as planned: each lease cuts the next unit off it (`farm.scheduler`)."""
    first_frame: int
    last_frame: int
    row_start: int
    row_end: int
    kind: str = ROWS
    remainder: bool = False

    def splits_frame(self, height: int) -> bool:
        return self.remainder or (self.row_start, self.row_end) != (0, height)


def plan_units(height: int, first_frame: int, last_frame: int, slots: int, strips: int | str = "auto",
               block: int = DEFAULT_BLOCK, runs_per_slot: int = 2) -> list[UnitPlan]:
    """Units of work for frames first..last, for a farm with `slots` POV-Ray slots in all.

    With an explicit strip count every frame is split into that many strips. Otherwise a still, or
    fewer frames than slots, gets one remainder unit per frame, cut into strips as nodes ask for work
    (`farm.scheduler`); with more frames than slots, whole frames are the units, in runs of consecutive
    frames that one POV-Ray process renders (+SF/+EF) so its start-up cost is paid once per run;
    `runs_per_slot` runs per slot let faster nodes take more of the frames."""
    frames = last_frame - first_frame + 1
    if frames < 1:
        raise ValueError("the frame range is empty")
    slots = max(1, slots)
    if strips == "auto" and (frames == 1 or frames < slots) and _block_count(height, block) > 1:
        return [UnitPlan(frame, frame, 0, height, remainder=True) for frame in range(first_frame, last_frame + 1)]
    if strips != "auto" or frames == 1 or frames < slots:
        count = int(strips) if strips != "auto" else 1
        rows = plan_strips(height, count, block)
        return [UnitPlan(frame, frame, start, end) for frame in range(first_frame, last_frame + 1)
                for start, end in rows]
    runs = min(frames, slots * runs_per_slot)
    base, extra = divmod(frames, runs)
    units, frame = [], first_frame
    for index in range(runs):
        size = base + (1 if index < extra else 0)
        units.append(UnitPlan(frame, frame + size - 1, 0, height))
        frame += size
    return units


def with_pretrace(units: Sequence[UnitPlan], height: int, pretrace: bool) -> list[UnitPlan]:
    """The units, where `pretrace` asks for it with a radiosity pre-pass unit (the whole frame's rows)
    just before the first strip of every frame cut into strips: strips of one frame must share one
    radiosity cache to match a single render. A unit with a frame's every row needs none."""
    planned: list[UnitPlan] = []
    for unit in units:
        if pretrace and unit.splits_frame(height) and (not planned or planned[-1].first_frame != unit.first_frame):
            planned.append(UnitPlan(unit.first_frame, unit.first_frame, 0, height, PRETRACE))
        planned.append(unit)
    return planned


def with_preview(units: Sequence[UnitPlan], width: int, height: int, preview: bool) -> list[UnitPlan]:
    """The units, where `preview` asks for it with a preview unit of the first frame ahead of all of them:
    a viewer sees the whole picture coarsely within seconds, long before the first strip is in."""
    if not preview or not units:
        return list(units)
    first = min(unit.first_frame for unit in units)
    return [UnitPlan(first, first, 0, preview_size(width, height)[1], PREVIEW), *units]


def encode_apng(frames: Sequence[Raster], delay_ms: int = 100, level: int = 6) -> bytes:
    """An animated PNG of equally sized frames (each shown `delay_ms`), playing forever.
    Browsers play it; viewers without APNG support show the first frame."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    first = frames[0]
    shape = (first.width, first.height, first.channels, first.bits)
    if any((f.width, f.height, f.channels, f.bits) != shape for f in frames):
        raise ValueError("all frames of an animation must have the same size and format")
    header = struct.pack(">IIBBBBB", first.width, first.height, first.bits, _PNG_TYPE_FOR_CHANNELS[first.channels],
                         0, 0, 0)
    return _apng(header, [_compressed_scanlines(frame, level) for frame in frames], delay_ms)


def apng_from_pngs(pngs: Sequence[bytes], delay_ms: int = 100) -> bytes:
    """The same animation from the frames' PNG files, without decoding them: each frame's compressed
    image data is carried over as it is."""
    if not pngs:
        raise ValueError("an animation needs at least one frame")
    headers, datas = [], []
    for png in pngs:
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError("A frame is not a PNG file.")
        chunks = list(_png_chunks(png))
        headers.append(next((body for kind, body in chunks if kind == b"IHDR"), b""))
        _parse_ihdr(headers[-1])
        datas.append(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    if any(header != headers[0] for header in headers):
        raise ValueError("all frames of an animation must have the same size and format")
    return _apng(headers[0], datas, delay_ms)


def _apng(header: bytes, frame_data: Sequence[bytes], delay_ms: int) -> bytes:
    width, height = struct.unpack_from(">II", header)
    delay = max(1, min(int(delay_ms), 65535))
    chunks = [_png_chunk(b"IHDR", header), _png_chunk(b"acTL", struct.pack(">II", len(frame_data), 0))]
    sequence = 0
    for index, data in enumerate(frame_data):
        chunks.append(_png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, delay, 1000,
                                                      0, 0)))
        sequence += 1
        if index == 0:
            chunks.append(_png_chunk(b"IDAT", data))
        else:
            chunks.append(_png_chunk(b"fdAT", struct.pack(">I", sequence) + data))
            sequence += 1
    chunks.append(_png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


# --------------------------------------------------------------------------- other file formats


def encode_ppm(raster: Raster) -> bytes:
    """A binary PPM (P6) of the raster, as POV-Ray writes with +FP / +FP16: maxval 255 or 65535,
    16-bit samples big-endian. PPM has no alpha channel, so an RGBA raster loses its alpha."""
    pixels = raster.pixels if raster.channels == 3 else _drop_alpha(raster)
    maxval = 255 if raster.bits == 8 else 65535
    return b"P6\n%d %d\n%d\n" % (raster.width, raster.height, maxval) + pixels


def _drop_alpha(raster: Raster) -> bytes:
    sample = raster.bits // 8
    pixel = 4 * sample
    out = bytearray(raster.width * raster.height * 3 * sample)
    for k in range(3 * sample):
        out[k :: 3 * sample] = raster.pixels[k::pixel]
    return bytes(out)


_TGA_FOOTER = b"\x00" * 8 + b"TRUEVISION-XFILE.\x00"


def encode_tga(raster: Raster, rle: bool = False) -> bytes:
    """A Targa file of an 8-bit raster, as POV-Ray writes with +FT (uncompressed, image type 2) or +FC
    (run-length encoded, type 10): top-left origin, BGR or BGRA, 8 alpha bits when RGBA, and the
    TGA 2.0 footer. RLE packets never cross a row, as the TGA 2.0 specification asks."""
    if raster.bits != 8:
        raise ValueError("Targa files hold 8 bits per channel; the image has 16.")
    depth = 8 * raster.channels
    descriptor = 0x20 | (8 if raster.channels == 4 else 0)   # top-left origin, alpha bits
    header = struct.pack("<BBBHHBHHHHBB", 0, 0, 10 if rle else 2, 0, 0, 0, 0, 0,
                         raster.width, raster.height, depth, descriptor)
    body = _to_bgr(raster)
    if rle:
        size = raster.row_bytes
        body = b"".join(_rle_row(body[y * size : (y + 1) * size], raster.channels)
                        for y in range(raster.height))
    return header + body + _TGA_FOOTER


def _to_bgr(raster: Raster) -> bytes:
    out = bytearray(raster.pixels)
    step = raster.channels
    out[0::step], out[2::step] = raster.pixels[2::step], raster.pixels[0::step]
    return bytes(out)


def _rle_row(row: bytes, pixel: int) -> bytes:
    """One row as TGA packets: a run of 2+ equal pixels is a run packet, the rest raw packets (<= 128)."""
    pixels = [row[i : i + pixel] for i in range(0, len(row), pixel)]
    out, raw = bytearray(), []

    def flush_raw() -> None:
        while raw:
            chunk = raw[:128]
            del raw[:128]
            out.append(len(chunk) - 1)
            out.extend(b"".join(chunk))

    for value, group in itertools.groupby(pixels):
        count = len(list(group))
        if count == 1:
            raw.append(value)
            continue
        flush_raw()
        while count:
            run = min(count, 128)
            out.append(0x80 | (run - 1))
            out.extend(value)
            count -= run
    flush_raw()
    return bytes(out)


def decode_tga(data: bytes) -> Raster:
    """Decode an uncompressed (type 2) or RLE (type 10) true-colour Targa file of 24 or 32 bits."""
    data = bytes(data)
    if len(data) < 18:
        raise ValueError("The Targa file is truncated (no header).")
    id_len, cmap_type, kind = data[0], data[1], data[2]
    width, height, depth, descriptor = struct.unpack("<HHBB", data[12:18])
    if cmap_type or kind not in (2, 10) or depth not in (24, 32):
        raise ValueError(f"Targa image type {kind} at {depth} bits is not supported (only true colour).")
    channels = depth // 8
    total = width * height * channels
    pos = 18 + id_len
    if kind == 2:
        body = data[pos : pos + total]
    else:
        out = bytearray()
        while len(out) < total:
            if pos >= len(data):
                raise ValueError("The Targa file is truncated.")
            head = data[pos]
            count = (head & 0x7F) + 1
            if head & 0x80:
                out += data[pos + 1 : pos + 1 + channels] * count
                pos += 1 + channels
            else:
                out += data[pos + 1 : pos + 1 + count * channels]
                pos += 1 + count * channels
        body = bytes(out[:total])
    if len(body) != total:
        raise ValueError("The Targa file is truncated.")
    size = width * channels
    rows = [body[y * size : (y + 1) * size] for y in range(height)]
    if not descriptor & 0x20:
        rows.reverse()     # bottom-left origin
    raster = Raster(width, height, channels, 8, b"".join(rows))
    return Raster(width, height, channels, 8, _to_bgr(raster))
