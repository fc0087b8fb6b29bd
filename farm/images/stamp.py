"""What POV-Ray 3.7 writes into its image files beside the pixels, for the files `povfarm render` writes:
PNG's gAMA, sRGB, sBIT, oFFs, tIME and tEXt chunks, PPM's comment lines, Targa 2.0's extension area and
JPEG's comment (measured from Debian's povray 3.7.0.10 and read in its source, base/image/*.cpp).

The gamma recorded is the file gamma (`File_Gamma`, sRGB unless given) as a scene of `#version 3.7`
has it; a scene of an older version makes POV-Ray record other values (its pixels are the same).
"""

from __future__ import annotations

import dataclasses
import struct
import time

from farm.images.png import PNG_SIGNATURE, png_chunk

SRGB = "srgb"
SRGB_APPROXIMATE = 2.2          # the gamma POV-Ray records for sRGB where a file holds only a number
_PNG_HEADER_END = len(PNG_SIGNATURE) + 25      # the signature and IHDR: the chunks go right after it
_TGA_EXTENSION_SIZE = 495
_TGA_DENOMINATOR = 6553         # POV-Ray's fixed denominator for Targa's gamma, so that 10.0 fits


@dataclasses.dataclass(frozen=True)
class Stamp:
    """The render's metadata: `software` as POV-Ray names itself ("POV-Ray 3.7.0.10"), the `platform` it
    was built for ("" unknown), the file gamma (SRGB or a number) and when (UTC, seconds)."""
    software: str
    platform: str = ""
    gamma: str | float = SRGB
    when: float = 0.0

    @property
    def utc(self) -> time.struct_time:
        return time.gmtime(self.when)

    def render_date(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%SZ", self.utc)

    def comments(self) -> list[str]:
        return [f"Platform: {self.platform}"] if self.platform else []

    def decoding_gamma(self) -> float:
        return SRGB_APPROXIMATE if self.gamma == SRGB else float(self.gamma)


def file_gamma(options: list[str] | tuple[str, ...]) -> str | float:
    """The file gamma a job's options ask for (the last File_Gamma= wins), else sRGB."""
    found: str | float = SRGB
    for option in options:
        key, _, value = option.partition("=")
        if key.lower() == "file_gamma":
            found = SRGB if value.strip().lower() == SRGB else float(value)
    return found


def stamp_png(png: bytes, stamp: Stamp, channels: int, bits: int) -> bytes:
    """The farm's PNG (signature, IHDR, IDAT..., IEND) with POV-Ray's chunks after IHDR, in its order."""
    if png[12:16] != b"IHDR":
        raise ValueError("The PNG does not start with its IHDR chunk.")
    chunks = [png_chunk(b"gAMA", struct.pack(">I", int(100000 / stamp.decoding_gamma() + 0.5)))]
    if stamp.gamma == SRGB:
        chunks.append(png_chunk(b"sRGB", b"\x00"))                     # perceptual
    chunks.append(png_chunk(b"sBIT", bytes([bits]) * channels))
    chunks.append(png_chunk(b"oFFs", b"\x00" * 9))
    utc = stamp.utc
    chunks.append(png_chunk(b"tIME", struct.pack(">HBBBBB", utc.tm_year, utc.tm_mon, utc.tm_mday, utc.tm_hour,
                                                  utc.tm_min, utc.tm_sec)))
    chunks.append(png_chunk(b"tEXt", b"Software\x00" + stamp.software.encode("latin-1", "replace")))
    comment = "".join(f"{line}\n" for line in [f"Render Date: {stamp.render_date()}", *stamp.comments()])
    chunks.append(png_chunk(b"tEXt", b"Comment\x00" + comment.encode("latin-1", "replace")))
    return png[:_PNG_HEADER_END] + b"".join(chunks) + png[_PNG_HEADER_END:]


def ppm_comments(stamp: Stamp) -> bytes:
    """The comment lines POV-Ray puts after a PPM's `P6`."""
    lines = [f"Software: {stamp.software}", f"Render Date: {stamp.render_date()}", *stamp.comments()]
    return "".join(f"# {line}\n" for line in lines).encode("latin-1", "replace")


def jpeg_comment(stamp: Stamp) -> bytes:
    """The JPEG COM segment's text as POV-Ray writes it."""
    lines = [f"Render Date: {stamp.render_date()}", f"Software: {stamp.software}", *stamp.comments()]
    return "".join(f"{line}\n" for line in lines).encode("latin-1", "replace")


def tga_extension(stamp: Stamp, alpha: bool, offset: int) -> bytes:
    """Targa 2.0's extension area and footer, for a file whose image data ends at `offset`."""
    area = bytearray(_TGA_EXTENSION_SIZE)
    struct.pack_into("<H", area, 0, _TGA_EXTENSION_SIZE)
    for index, line in enumerate(stamp.comments()[:4]):
        _text_into(area, 43 + 81 * index, line, 81)
    utc = stamp.utc
    struct.pack_into("<6H", area, 367, utc.tm_mon, utc.tm_mday, utc.tm_year, utc.tm_hour, utc.tm_min, utc.tm_sec)
    _text_into(area, 426, stamp.software, 41)
    area[469] = ord(" ")                       # version letter: POV-Ray fills no version but a blank
    struct.pack_into("<HH", area, 478, int(_TGA_DENOMINATOR * stamp.decoding_gamma()), _TGA_DENOMINATOR)
    area[490] = 18                             # scan line table offset, as POV-Ray writes it
    area[494] = 3 if alpha else 0              # straight (non-premultiplied) alpha
    footer = struct.pack("<II", offset, 0) + b"TRUEVISION-XFILE.\x00"
    return bytes(area) + footer


def _text_into(area: bytearray, at: int, text: str, size: int) -> None:
    data = text.encode("latin-1", "replace")[:size - 1]
    area[at:at + len(data)] = data
