"""How a unit's rows travel from the node to the controller and on to the viewers, and are stored.

A node crops its strip's rows from POV-Ray's image and sends them as one zlib stream, raw (ZLIB) or as
PNG scanlines (FILTERED, smaller), or on a slow uplink as PNG scanlines in a bz2 stream (FILTERED_BZ2,
smaller still); the controller decodes them to check and stitch them, keeps them as zlib (`as_stored`) and
hands them on to viewers so. Every decoder caps its output at the size the unit must have, so a zlib or
bz2 bomb is refused after expected + 1 bytes. Pure: bytes in, bytes out; every error is a `ValueError`.
"""

from __future__ import annotations

import zlib
from typing import Iterable

from farm.images.scanlines import filter_rows, inflate, unfilter_rows, unpack

try:
    import bz2
except ImportError:       # a Python built without libbz2: its node sends zlib, its controller does not list bz2
    bz2 = None            # type: ignore[assignment]


def compress_rows(data: bytes) -> bytes:
    """zlib-compress strip rows for the wire (black rows shrink to almost nothing)."""
    return zlib.compress(data, 6)


# How a unit's rows travel and are stored: one stream of each frame's rows in turn. Stored and relayed as zlib
# (RFC 1950), ZLIB or FILTERED.
ZLIB = "zlib"           # the raw rows as they are
FILTERED = "filtered"   # each row led by a PNG filter type byte and filtered by it (PNG's scanlines); the
                        # first row of each frame is filtered against a row of zeros, as PNG's first row is
# FILTERED's scanlines in a bz2 stream, for a slow uplink: a sheared frame's rows (farm.shear) hold blocks from
# all over the frame side by side, which deflate codes a tenth larger than the frame's own rows (chess2 640x480
# in two halves: 415 KB against 377); bz2's block sort does not mind (369 KB, a PNG's size), for about deflate
# level 6's CPU, a third of level 9's. Only on the way up: the controller stores it as FILTERED (`as_stored`).
FILTERED_BZ2 = "filtered-bz2"
ENCODINGS = (ZLIB, FILTERED, *((FILTERED_BZ2,) if bz2 is not None else ()))   # what a node may deliver
STORED = (ZLIB, FILTERED)                                                     # what is kept and relayed
BZ2_LEVEL = 9           # 900-kB blocks: a 640x480 frame's scanlines in one


def encode_rows(raw: bytes, encoding: str, row_bytes: int, bpp: int, frames: int = 1, level: int = 6) -> bytes:
    """A unit's rows for the wire: `frames` frames of whole rows in turn, in `encoding` (one of ENCODINGS;
    `level`: deflate's)."""
    if encoding == ZLIB:
        return zlib.compress(raw, level)
    if encoding not in ENCODINGS:
        raise ValueError(f"Unknown row encoding {encoding!r}.")
    if frames <= 0 or len(raw) % frames:
        raise ValueError(f"{len(raw)} bytes do not split into {frames} frames.")
    size = len(raw) // frames
    scanlines = (filter_rows(raw[start:start + size], row_bytes, bpp) for start in range(0, len(raw), size))
    if encoding == FILTERED_BZ2:
        return bz2.compress(b"".join(scanlines), BZ2_LEVEL)
    return _deflated(scanlines, level)


def _deflated(scanlines: Iterable[bytes], level: int) -> bytes:
    """FILTERED: scanlines deflated with Z_FILTERED, as PNG encoders do: filtered rows are mostly small values,
    which short matches code worse than Huffman codes alone (chess2 at level 9: 0.5% fewer bytes than the
    default)."""
    packer = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_FILTERED)
    return b"".join(packer.compress(part) for part in scanlines) + packer.flush()


def as_stored(data: bytes, encoding: str, expected_len: int, row_bytes: int) -> tuple[bytes, str]:
    """(data, encoding) as the controller keeps and relays a unit's delivered rows: FILTERED_BZ2's scanlines
    deflated (level 6) as FILTERED, the others as they came. `expected_len`: the raw rows' bytes."""
    if encoding != FILTERED_BZ2:
        return data, encoding
    return _deflated([_unbzip(data, _scanline_bytes(expected_len, row_bytes))], 6), FILTERED


def recode_rows(data: bytes, encoding: str, to: str, expected_len: int, row_bytes: int, bpp: int,
                frames: int = 1) -> bytes:
    """A unit's rows in `encoding` as the same rows in `to` (deflate level 6)."""
    return encode_rows(decode_rows(data, encoding, expected_len, row_bytes, bpp, frames), to, row_bytes, bpp, frames)


def decode_rows(data: bytes, encoding: str, expected_len: int, row_bytes: int, bpp: int, frames: int = 1) -> bytes:
    """Inverse of `encode_rows`, refusing anything but exactly `expected_len` bytes of raw rows (the
    output is capped while inflating, as in `decompress_rows`)."""
    if encoding == ZLIB:
        return decompress_rows(data, expected_len)
    if encoding not in ENCODINGS:
        raise ValueError(f"Unknown row encoding {encoding!r}.")
    if row_bytes <= 0 or frames <= 0 or expected_len % (row_bytes * frames):
        raise ValueError(f"{expected_len} bytes are not whole rows of {frames} frames.")
    length = _scanline_bytes(expected_len, row_bytes)
    scanlines = (_unbzip(data, length) if encoding == FILTERED_BZ2
                 else inflate(data, length, "The compressed rows", exact=True))
    size = len(scanlines) // frames
    return b"".join(unfilter_rows(scanlines[start:start + size], row_bytes, bpp)
                    for start in range(0, len(scanlines), size))


def split_frames(data: bytes, encoding: str, expected_len: int, row_bytes: int, frames: int) -> list[bytes]:
    """A unit's rows of `frames` frames as one stream per frame, in the same encoding (each frame's
    scanlines stand alone, so nothing is unfiltered on the way)."""
    if frames <= 0 or row_bytes <= 0 or expected_len % (row_bytes * frames):
        raise ValueError(f"{expected_len} bytes are not whole rows of {frames} frames.")
    if encoding not in STORED:
        raise ValueError(f"Unknown stored row encoding {encoding!r}.")
    if encoding == FILTERED:
        expected_len = _scanline_bytes(expected_len, row_bytes)
    plain = inflate(data, expected_len, "The compressed rows", exact=True)
    size = len(plain) // frames
    return [zlib.compress(plain[start:start + size], 6) for start in range(0, len(plain), size)]


def _scanline_bytes(expected_len: int, row_bytes: int) -> int:
    """The bytes of the scanlines of `expected_len` bytes of raw rows: a filter type byte more per row."""
    if row_bytes <= 0 or expected_len % row_bytes:
        raise ValueError(f"{expected_len} bytes are not whole rows of {row_bytes} bytes.")
    return expected_len + expected_len // row_bytes


def _unbzip(data: bytes, length: int) -> bytes:
    """One whole bz2 stream of exactly `length` bytes, else a ValueError; capped as `inflate` is."""
    if bz2 is None:
        raise ValueError(f"Unknown row encoding {FILTERED_BZ2!r}: this Python has no bz2.")
    return unpack(bz2.BZ2Decompressor(), "bz2", data, length, "The compressed rows", exact=True)


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
    return inflate(data, expected_len, "The compressed rows", exact=True)


def decompress_capped(data: bytes, limit: int) -> bytes:
    """zlib data of any length up to `limit` bytes (a file shipped whole, like a radiosity cache)."""
    return inflate(data, limit, "The compressed data", exact=False)
