"""Targa files, as POV-Ray writes them with +FT and +FC: written by `povfarm render` when POV-Ray's
options ask for Targa output."""

from __future__ import annotations

import itertools
import struct

from farm.images.raster import Raster
from farm.images.stamp import Stamp, tga_extension

_TGA_FOOTER = b"\x00" * 8 + b"TRUEVISION-XFILE.\x00"


def encode_tga(raster: Raster, rle: bool = False, stamp: Stamp | None = None) -> bytes:
    """A Targa file of an 8-bit raster, as POV-Ray writes with +FT (uncompressed, image type 2) or +FC
    (run-length encoded, type 10): top-left origin, BGR or BGRA, 8 alpha bits when RGBA, and the
    TGA 2.0 footer, after POV-Ray's extension area when there is a `stamp`. RLE packets never cross a
    row, as the TGA 2.0 specification asks (the same packets as POV-Ray's)."""
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
    if stamp is None:
        return header + body + _TGA_FOOTER
    return header + body + tga_extension(stamp, raster.channels == 4, len(header) + len(body))


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
