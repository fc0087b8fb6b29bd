"""Binary PPM (P6) files, as POV-Ray writes them with +FP and +FP16: read from a node's render, written
by `povfarm render` when POV-Ray's options ask for PPM output."""

from __future__ import annotations

from farm.images.raster import Raster, row_size


def decode_ppm(data: bytes) -> Raster:
    """Decode a binary PPM (P6) as POV-Ray writes it with +FP or +FP16.

    The header may carry '#' comment lines (POV-Ray puts the software, date and
    platform there). maxval 255 gives 8-bit samples, 65535 16-bit big-endian.
    """
    data = bytes(data)
    width, height, bits, pos = ppm_header(data)
    expected = row_size(width, 3, bits) * height
    body = data[pos:]
    if len(body) != expected:
        what = "truncated" if len(body) < expected else "followed by extra bytes"
        raise ValueError(
            f"The {width}x{height} PPM is {what}: {len(body)} bytes of samples, "
            f"expected {expected}."
        )
    return Raster(width, height, 3, bits, body)


def ppm_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bits, where the samples start) of a binary PPM's header at the start of `data`;
    ValueError when it is not one, or is cut short."""
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
    return width, height, bits, pos


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


def encode_ppm(raster: Raster, comments: bytes = b"") -> bytes:
    """A binary PPM (P6) of the raster, as POV-Ray writes with +FP / +FP16: maxval 255 or 65535,
    16-bit samples big-endian, `comments` ('# ...' lines) after the P6. PPM has no alpha channel, so an
    RGBA raster loses its alpha."""
    pixels = raster.pixels if raster.channels == 3 else _drop_alpha(raster)
    maxval = 255 if raster.bits == 8 else 65535
    return b"P6\n%s%d %d\n%d\n" % (comments, raster.width, raster.height, maxval) + pixels


def _drop_alpha(raster: Raster) -> bytes:
    sample = raster.bits // 8
    pixel = 4 * sample
    out = bytearray(raster.width * raster.height * 3 * sample)
    for k in range(3 * sample):
        out[k :: 3 * sample] = raster.pixels[k::pixel]
    return bytes(out)
