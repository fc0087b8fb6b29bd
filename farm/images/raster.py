"""An uncompressed image, as every codec of the farm reads or writes it."""

from __future__ import annotations

from dataclasses import dataclass


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
        check_format(self.width, self.height, self.channels, self.bits)
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


def check_format(width: int, height: int, channels: int, bits: int) -> None:
    """A ValueError unless the farm holds images of this size and format."""
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"The image {name} must be a positive integer, not {value!r}.")
    if channels not in (3, 4):
        raise ValueError(f"An image must have 3 (RGB) or 4 (RGBA) channels, not {channels!r}.")
    if bits not in (8, 16):
        raise ValueError(f"Samples must be 8 or 16 bits, not {bits!r}.")

