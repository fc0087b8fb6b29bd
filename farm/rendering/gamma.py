"""POV-Ray 3.7's output encoding: the renderer's float colours -> the integers its image file holds.

The renderer hands the front end colours in the scene's *working* gamma space (`assumed_gamma`), as
32-bit floats R G B filter transmit, premultiplied by opacity. When POV-Ray writes a PNG (or PPM, TGA) it
transcodes every channel from the working gamma to the *file* gamma (`File_Gamma`, sRGB by default) and
quantises it; with `+UA` it also un-premultiplies. This module does the same, step for step, so that
pixels decoded from the render state file (`farm/rendering/statefile.py`) come out as the integers of the image
POV-Ray writes at the end. Read from POV-Ray 3.7.0.10's source: `base/image/colourspace.cpp` (the gamma
curves and how `TranscodingGammaCurve::Get` folds two of them into one), `base/image/encoding.{h,cpp}`
(`IntEncode`, `GetEncodedRGBValue`, `GetEncodedRGBAValue`), `base/image/png.cpp` (which curve the PNG
writer uses), `frontend/renderfrontend.h` (`CreateView`: a scene of `#version` 3.6 or older without
`assumed_gamma` gets no gamma handling at all) and `backend/parser/parse.cpp` (a 3.7 scene without it gets
`assumed_gamma 1.0`).

POV-Ray computes in 32-bit floats (`powf`, each product rounded to float); so do we where a rounding can
move a value across a quantisation step: each channel is quantised by bisecting a table of the exact
float32 thresholds of the emulated curve. What we cannot reproduce: dithering (`Dither=on`, `+TH`: off
by default, and the farm allows neither), grayscale output, bit depths other than 8 and 16, and the rare
case where glibc's `powf` and a correctly rounded power differ in the last bit right at a threshold.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from array import array
from bisect import bisect_right
from functools import lru_cache, partial
from operator import itemgetter
from typing import Callable, Union

GammaSpec = Union[float, str, None]   # a decoding gamma such as 2.2, "srgb", or None (see Encoding)

_FLOAT32 = struct.Struct("f")
_BITS32 = struct.Struct("I")
_POSITIVE_INFINITY_BITS = 0x7F800000
ALPHA_EPSILON = 1.0e-6                 # what POV-Ray divides by when a pixel's alpha is 0
_GREY = (0.297, 0.589, 0.114)          # POV-Ray's RED/GREEN/BLUE_INTENSITY (base/types.h)


def f32(value: float) -> float:
    """The float32 nearest to value, as a Python float: one C `float` rounding."""
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def _powf(base: float, exponent: float) -> float:
    return f32(math.pow(base, exponent)) if base > 0.0 else 0.0


@dataclasses.dataclass(frozen=True)
class Curve:
    """One of POV-Ray's simple gamma curves: neutral, a power law (by its float32 *encoding* exponent,
    1/gamma), or sRGB's transfer function. encode() maps linear to encoded, decode() back."""
    kind: str                 # "neutral", "power" or "srgb"
    exponent: float = 1.0     # power law: encoded = linear ** exponent

    @classmethod
    def parse(cls, spec: float | str) -> "Curve":
        """A gamma as POV-Ray reads `assumed_gamma` or `File_Gamma`: a decoding gamma (2.2) or "srgb"."""
        if isinstance(spec, str):
            if spec.strip().lower() == "srgb":
                return SRGB
            spec = float(spec)
        if not spec > 0.0 or math.isinf(spec):
            raise ValueError(f"a gamma must be a positive number or 'srgb', not {spec!r}")
        return cls.power(f32(1.0 / f32(spec)))

    @classmethod
    def power(cls, exponent: float) -> "Curve":
        # PowerLawGammaCurve::GetByEncodingGamma: within 1% of 1 is no curve at all
        return NEUTRAL if abs(1.0 - exponent) <= 0.01 else cls("power", exponent)

    @property
    def decoding_gamma(self) -> float:
        """ApproximateDecodingGamma(), which POV-Ray's fold of two power laws divides."""
        if self.kind == "power":
            return f32(1.0 / self.exponent)
        return 2.2 if self.kind == "srgb" else 1.0

    def encode(self, x: float) -> float:
        if self.kind == "power":
            return _powf(x, self.exponent)
        if self.kind == "srgb":
            if x <= _SRGB_LINEAR_LIMIT:
                return f32(x * _SRGB_SLOPE)
            return f32(f32(_SRGB_SCALE * _powf(x, _SRGB_EXPONENT)) - _SRGB_OFFSET)
        return x

    def decode(self, x: float) -> float:
        if self.kind == "power":
            return _powf(x, f32(1.0 / self.exponent))
        if self.kind == "srgb":
            if x < _SRGB_ENCODED_LIMIT:
                return f32(x / _SRGB_SLOPE)
            return _powf(f32(f32(x + _SRGB_OFFSET) / _SRGB_SCALE), _SRGB_DECODE_EXPONENT)
        return x


NEUTRAL = Curve("neutral")
SRGB = Curve("srgb")
_SRGB_LINEAR_LIMIT, _SRGB_ENCODED_LIMIT = f32(0.0031308), f32(0.04045)
_SRGB_SLOPE, _SRGB_SCALE, _SRGB_OFFSET = f32(12.92), f32(1.055), f32(0.055)
_SRGB_EXPONENT, _SRGB_DECODE_EXPONENT = f32(1.0 / f32(2.4)), f32(2.4)


def transcoding(working: Curve, file: Curve) -> Callable[[float], float]:
    """The one curve POV-Ray applies from working to file gamma (TranscodingGammaCurve::Get), folded the
    way it folds them, since each fold rounds differently."""
    if working.kind == "neutral":
        return file.encode
    if working == file:
        return NEUTRAL.encode
    if working.kind == "power" and file.kind in ("neutral", "power"):
        # decode by one power, encode by another: one power law, rounded once
        return Curve.power(f32(working.decoding_gamma / file.decoding_gamma)).encode
    return lambda x: file.encode(working.decode(x))


def _quantiser(curve: Callable[[float], float], top: int) -> Callable[[float], int]:
    """IntEncode(g, x, max) = floor(clip(g(x), 0, 1) * max + 0.5), every step in float32."""
    scale = float(top)

    def quantise(x: float) -> int:
        y = curve(x)
        y = 0.0 if not y > 0.0 else min(y, 1.0)
        return math.floor(f32(f32(y * scale) + 0.5))
    return quantise


def _as_float(bits: int) -> float:
    return _FLOAT32.unpack(_BITS32.pack(bits))[0]


def _as_bits(x: float) -> int:
    return _BITS32.unpack(_FLOAT32.pack(x))[0]


def _first_reaching(quantise: Callable[[float], int], level: int, guess: float) -> float:
    """The smallest non-negative float32 that quantises to `level` or more, found by walking the float32
    grid from a guess (exact, as long as the emulated curve never decreases)."""
    bits = min(max(_as_bits(f32(min(max(guess, 0.0), 3.0e38))), 0), _POSITIVE_INFINITY_BITS)
    step = 1
    while bits > 0 and quantise(_as_float(bits)) >= level:   # too high: gallop down
        bits, step = max(bits - step, 0), step * 2
    low, high = bits, None
    step = 1
    while high is None:                                        # gallop up to a value that reaches it
        probe = min(low + step, _POSITIVE_INFINITY_BITS)
        if quantise(_as_float(probe)) >= level:
            high = probe
        elif probe == _POSITIVE_INFINITY_BITS:
            return math.inf
        else:
            low, step = probe, step * 2
    if quantise(_as_float(low)) >= level:
        return _as_float(low)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if quantise(_as_float(middle)) >= level else (middle, high)
    return _as_float(high)


@lru_cache(maxsize=16)
def _thresholds(working: Curve, file: Curve, top: int) -> tuple[float, ...]:
    """thresholds[k - 1] is the smallest float that POV-Ray writes as k (1 <= k <= top), so the integer
    for x is bisect_right(thresholds, x)."""
    curve = transcoding(working, file)
    quantise = _quantiser(curve, top)
    inverse = transcoding(file, working)   # only a first guess for the walk
    return tuple(_first_reaching(quantise, level, inverse((level - 0.5) / top))
                 for level in range(1, top + 1))


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How POV-Ray writes a render's colours to its image file.

    assumed_gamma: the scene's `assumed_gamma` (2.2, 1.0, "srgb"); None when the scene sets none and its
      `#version` is below 3.7, where POV-Ray turns gamma handling off (then `File_Gamma` is ignored). A
      scene of `#version 3.7` without it works in 1.0, and so does an older one rendered with `+MV3.7`.
      POV-Ray tells which on stderr: "assumed_gamma not specified, so gamma_correction is turned off"
      (None), "assumed_gamma not specified in this POV-Ray 3.7 or later scene" or "A version of 3.7 or
      greater was specified in an INI file" (1.0); an explicit value is not reported.
    file_gamma: `File_Gamma` (default sRGB). bits: 8, or 16 for `+FN16`.
    """
    assumed_gamma: GammaSpec = 1.0
    file_gamma: float | str = "srgb"
    bits: int = 8

    def __post_init__(self) -> None:
        if self.bits not in (8, 16):
            raise ValueError(f"only 8 and 16 bits per channel are supported, not {self.bits}")
        Curve.parse(self.file_gamma)
        if self.assumed_gamma is not None:
            Curve.parse(self.assumed_gamma)

    @property
    def top(self) -> int:
        return (1 << self.bits) - 1

    def thresholds(self) -> tuple[float, ...]:
        if self.assumed_gamma is None:
            return _thresholds(NEUTRAL, NEUTRAL, self.top)
        return _thresholds(Curve.parse(self.assumed_gamma), Curve.parse(self.file_gamma), self.top)

    def preview(self, pixels: array) -> bytes:
        """Pixels as R G B filter transmit floats -> 8-bit RGB for a preview (live blocks) at a fraction of
        `encode`'s cost: each sample is looked up by its float's top 16 bits (sign, exponent and 7 bits of
        mantissa), within one level of `encode` (a level's threshold may fall inside the 1/128 of a value
        that those bits leave open)."""
        table = _preview_table(dataclasses.replace(self, bits=8).thresholds())
        high = array("H", pixels.tobytes())[_HIGH_HALF::2]
        rgb = array("H", bytes(len(high) // 5 * 6))
        for channel in range(3):
            rgb[channel::3] = high[channel::5]
        return bytes(itemgetter(*rgb)(table)) if rgb else b""

    def encode(self, pixels: array, alpha: bool = False) -> bytes:
        """Pixels as R G B filter transmit floats -> the image file's samples, interleaved R G B (A),
        one byte per sample at 8 bits, two big-endian bytes at 16 (as in a PNG row)."""
        red, green, blue, transmit = pixels[0::5], pixels[1::5], pixels[2::5], pixels[4::5]
        level = partial(bisect_right, self.thresholds())
        if alpha:
            red, green, blue, opacity = _unpremultiplied(red, green, blue, transmit)
            channels = [red, green, blue, [_linear_level(a, self.top) for a in opacity]]
        else:
            channels = [red, green, blue]
        samples = [0] * (len(red) * len(channels))
        for index, channel in enumerate(channels):
            samples[index::len(channels)] = channel if index == 3 else list(map(level, channel))
        if self.bits == 8:
            return bytes(samples)
        wide = array("H", samples)
        if wide.itemsize == 2 and _LITTLE_ENDIAN:
            wide.byteswap()
        return wide.tobytes()


_LITTLE_ENDIAN = array("H", [1]).tobytes() == b"\x01\x00"
_HIGH_HALF = 1 if _LITTLE_ENDIAN else 0     # which 16-bit half of a native float32 holds its sign and exponent


@lru_cache(maxsize=8)
def _preview_table(thresholds: tuple[float, ...]) -> tuple[int, ...]:
    """table[h] is the level of the float32 in the middle of those whose top 16 bits are h (the first of
    them when h is an infinity's: the others are not numbers)."""
    middles = array("f", array("I", ((high << 16) | (0 if high & 0x7F80 == 0x7F80 else 0x8000)
                                     for high in range(1 << 16))).tobytes())
    return tuple(map(partial(bisect_right, thresholds), middles))


def _linear_level(x: float, top: int) -> int:
    # IntEncode(x, max) without a curve: alpha is never gamma-encoded
    x = 0.0 if not x > 0.0 else min(x, 1.0)
    return math.floor(f32(f32(x * top) + 0.5))


def _rounded(values: list[float]) -> list[float]:
    """Each value rounded to float32 (in bulk, which is what makes the emulation affordable)."""
    return array("f", values).tolist()


def _unpremultiplied(red: array, green: array, blue: array, transmit: array) -> tuple[list, ...]:
    """GetEncodedRGBAValue for an image stored premultiplied (as POV-Ray's always is) written to a file
    that is not (PNG): alpha goes through the image's filter/transmit (1 - (1 - (1 - t))), a colour
    brighter than its alpha raises the alpha (keeping highlights on glass), then colour / alpha."""
    opacity = _rounded([1.0 - t for t in _rounded([1.0 - t for t in _rounded([1.0 - t for t in transmit])])])
    grey = _rounded([_GREY[0] * r + _GREY[1] * g + _GREY[2] * b for r, g, b in zip(red, green, blue)])
    opacity = [min(1.0, bright) if bright > a else a for a, bright in zip(opacity, grey)]
    divisors = [a if a != 0.0 else f32(ALPHA_EPSILON) for a in opacity]
    return (_rounded([r / d for r, d in zip(red, divisors)]),
            _rounded([g / d for g, d in zip(green, divisors)]),
            _rounded([b / d for b, d in zip(blue, divisors)]), opacity)
