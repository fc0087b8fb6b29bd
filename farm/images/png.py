"""PNG files: read as POV-Ray writes them (+FN, +FN16, +UA), written for the farm's results (the same
pixels always give the same bytes), and frames joined into an animated PNG."""

from __future__ import annotations

import struct
import zlib
from typing import Iterable, Sequence

from farm.images.raster import Raster
from farm.images.scanlines import inflate, unfilter_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG colour types we read, mapped to (samples per pixel in the file, channels we return).
# Gray is expanded to RGB so the rest of the farm only ever sees 3 or 4 channels.
_PNG_COLOUR_TYPES = {0: (1, 3), 2: (3, 3), 4: (2, 4), 6: (4, 4)}
_PNG_TYPE_FOR_CHANNELS = {3: 2, 4: 6}


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
    raw = inflate(b"".join(idat), height * (stride + 1), "The PNG image data", exact=True)
    rows = unfilter_rows(raw, stride, bpp)
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
            png_chunk(b"IHDR", ihdr),
            png_chunk(b"IDAT", _compressed_scanlines(raster, level)),
            png_chunk(b"IEND", b""),
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


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


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
    chunks = [png_chunk(b"IHDR", header), png_chunk(b"acTL", struct.pack(">II", len(frame_data), 0))]
    sequence = 0
    for index, data in enumerate(frame_data):
        chunks.append(png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, delay, 1000,
                                                      0, 0)))
        sequence += 1
        if index == 0:
            chunks.append(png_chunk(b"IDAT", data))
        else:
            chunks.append(png_chunk(b"fdAT", struct.pack(">I", sequence) + data))
            sequence += 1
    chunks.append(png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)
