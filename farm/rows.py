"""How a unit's rows travel from the node to the controller and on to the viewers, and are stored.

A node crops its strip's rows from POV-Ray's image and sends them as one zlib stream, raw (ZLIB) or as
PNG scanlines (FILTERED, smaller); the controller decodes them to check and stitch them, and hands them
on to viewers as they came. Every decoder caps its output at the size the unit must have, so a zlib
bomb is refused after expected + 1 bytes. Pure: bytes in, bytes out; every error is a `ValueError`.
"""

from __future__ import annotations

import zlib

from farm.images.scanlines import filter_rows, inflate, unfilter_rows


def compress_rows(data: bytes) -> bytes:
    """zlib-compress strip rows for the wire (black rows shrink to almost nothing)."""
    return zlib.compress(data, 6)


# How a unit's rows travel and are stored. Both are one zlib stream (RFC 1950) of each frame's rows in turn.
ZLIB = "zlib"           # the raw rows as they are
FILTERED = "filtered"   # each row led by a PNG filter type byte and filtered by it (PNG's scanlines); the
                        # first row of each frame is filtered against a row of zeros, as PNG's first row is
ENCODINGS = (ZLIB, FILTERED)


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
    scanlines = inflate(data, expected_len + rows, "The compressed rows", exact=True)
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
    plain = inflate(data, expected_len, "The compressed rows", exact=True)
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
    return inflate(data, expected_len, "The compressed rows", exact=True)


def decompress_capped(data: bytes, limit: int) -> bytes:
    """zlib data of any length up to `limit` bytes (a file shipped whole, like a radiosity cache)."""
    return inflate(data, limit, "The compressed data", exact=False)
