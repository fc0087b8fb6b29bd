"""Tests for strip geometry (farm.strips), the image codecs (farm.images) and the rows on the wire (farm.rows)."""

from __future__ import annotations

import bz2
import io
import os
import random
import shutil
import struct
import subprocess
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from farm.images.png import PNG_SIGNATURE, decode_png, encode_png
from farm.images.ppm import decode_ppm
from farm.images.raster import Raster
from farm.images.scanlines import _SwarMasks, filter_rows, unfilter_rows
from farm.rows import (ENCODINGS, FILTERED, FILTERED_BZ2, ZLIB, as_stored, compress_rows, decode_rows, decompress_rows,
                       encode_rows, split_frames)
from farm.strips import crop_rows, plan_strips, povray_row_options, stitch

FORMATS = [(c, b) for c in (3, 4) for b in (8, 16)]


# --------------------------------------------------------------------------- helpers


@st.composite
def rasters(draw, channels=None, bits=None, max_side=12):
    """Random rasters; rows are often all zero or repeats, as in partial renders."""
    channels = channels or draw(st.sampled_from([3, 4]))
    bits = bits or draw(st.sampled_from([8, 16]))
    width = draw(st.integers(1, max_side))
    height = draw(st.integers(1, max_side))
    size = width * channels * bits // 8
    rows = []
    for _ in range(height):
        kind = draw(st.sampled_from(["zero", "random", "repeat"]))
        if kind == "zero" or (kind == "repeat" and not rows):
            rows.append(bytes(size))
        elif kind == "repeat":
            rows.append(rows[-1])
        else:
            rows.append(draw(st.binary(min_size=size, max_size=size)))
    return Raster(width, height, channels, bits, b"".join(rows))


def _filter_row(kind: int, row: bytes, prev: bytes, bpp: int) -> bytes:
    """Straight from the PNG spec, byte by byte: the reference the decoder must invert."""
    out = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pred = [0, a, b, (a + b) // 2, _paeth(a, b, c)][kind]
        out.append((x - pred) & 255)
    return bytes(out)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def reference_png(
    width, height, colour_type, bits, rows, filters, interlace=0, extra_chunks=()
) -> bytes:
    """A PNG written with the given per-row filters (our encoder only uses None)."""
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    bpp = max(1, samples * bits // 8)
    raw = bytearray()
    prev = bytes(len(rows[0]))
    for row, kind in zip(rows, filters):
        raw.append(kind)
        raw += _filter_row(kind, row, prev, bpp)
        prev = row
    ihdr = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, interlace)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + b"".join(extra_chunks)
        + _chunk(b"IDAT", zlib.compress(bytes(raw)))
        + _chunk(b"IEND", b"")
    )


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + length
    return kinds


def pov_rows_rule(options: list[str], height: int) -> tuple[int, int]:
    """POV-Ray's documented rule, as 0-based half-open rows [start, end)."""
    start_v = float(options[0][3:])
    end_v = float(options[1][3:])
    first = int(height * start_v) + 1 if 0 <= start_v < 1 else int(start_v)
    last = int(height * end_v) if 0 <= end_v <= 1 else int(end_v)
    return first - 1, last


# --------------------------------------------------------------------------- Raster


def test_raster_validates_and_freezes():
    r = Raster(2, 1, 3, 16, bytearray(12))
    assert isinstance(r.pixels, bytes) and r.row_bytes == 12
    bad = [(2, 1, 3, 8, bytes(5)), (0, 1, 3, 8, b""), (1, 1, 1, 8, b"\0"), (1, 1, 3, 12, bytes(3))]
    for args in bad:
        with pytest.raises(ValueError):
            Raster(*args)


# --------------------------------------------------------------------------- geometry


@given(st.integers(1, 5000), st.integers(1, 300), st.integers(1, 64))
def test_plan_strips_properties(height, count, block):
    plan = plan_strips(height, count, block)
    blocks = -(-height // block)
    assert len(plan) == min(count, blocks)
    assert plan[0][0] == 0 and plan[-1][1] == height
    for (s0, e0), (s1, _) in zip(plan, plan[1:]):
        assert e0 == s1  # in order, no gap, no overlap
        assert e0 % block == 0  # internal edges on render block boundaries
    assert all(s < e for s, e in plan)
    sizes = [-(-(e - s) // block) for s, e in plan]  # in blocks, last one maybe partial
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # bigger ones first


def test_plan_strips_examples_and_errors():
    assert plan_strips(480, 4) == [(0, 128), (128, 256), (256, 384), (384, 480)]
    assert plan_strips(100, 10) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert plan_strips(1, 5) == [(0, 1)]
    assert plan_strips(10, 3, block=1) == [(0, 4), (4, 7), (7, 10)]
    for args in [(0, 1), (10, 0), (10, 1, 0)]:
        with pytest.raises(ValueError):
            plan_strips(*args)


@given(st.data())
def test_povray_row_options_round_trip(data):
    height = data.draw(st.integers(1, 100_000))
    start = data.draw(st.integers(0, height - 1))
    end = data.draw(st.integers(start + 1, min(height, start + 5000)))
    assert pov_rows_rule(povray_row_options(start, end, height), height) == (start, end)


def test_povray_row_options_first_row_every_height():
    # Only "rows [0, 1)" needs a fraction; check it for every height the notes ask for.
    for height in range(1, 100_001):
        opts = povray_row_options(0, 1, height)
        assert "e" not in opts[1]
        assert pov_rows_rule(opts, height) == (0, 1), height


def test_povray_row_options_examples_and_errors():
    assert povray_row_options(32, 64, 480) == ["+SR33", "+ER64"]
    assert povray_row_options(0, 480, 480) == ["+SR1", "+ER480"]
    assert povray_row_options(0, 1, 1) == ["+SR1", "+ER1"]
    for args in [(0, 0, 10), (5, 4, 10), (-1, 3, 10), (0, 11, 10), (0, 1, 0)]:
        with pytest.raises(ValueError):
            povray_row_options(*args)


# --------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("channels,bits", FORMATS)
@given(data=st.data())
@settings(max_examples=40)
def test_png_round_trip(channels, bits, data):
    raster = data.draw(rasters(channels, bits))
    png = encode_png(raster)
    assert decode_png(png) == raster
    assert png_chunks(png) == [b"IHDR", b"IDAT", b"IEND"]
    assert encode_png(raster) == png  # deterministic


@pytest.mark.parametrize("channels,mode", [(3, "RGB"), (4, "RGBA")])
@given(data=st.data())
@settings(max_examples=30)
def test_pillow_reads_our_8bit_png(channels, mode, data):
    raster = data.draw(rasters(channels, 8))
    with Image.open(io.BytesIO(encode_png(raster, level=1))) as im:
        assert im.mode == mode and im.size == (raster.width, raster.height)
        assert im.tobytes() == raster.pixels


@pytest.mark.parametrize("channels,mode", [(3, "RGB"), (4, "RGBA")])
def test_pillow_opens_our_16bit_png(channels, mode):
    rng = random.Random(channels)
    raster = Raster(7, 5, channels, 16, rng.randbytes(7 * 5 * channels * 2))
    png = encode_png(raster, level=9)
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        assert im.size == (7, 5) and im.mode == mode
        assert im.tobytes() == raster.pixels[0::2]  # Pillow keeps the high bytes
    assert decode_png(png) == raster


def _expand_gray(rows: bytes, samples: int, sample_bytes: int) -> bytes:
    out = bytearray()
    step = samples * sample_bytes
    for i in range(0, len(rows), step):
        gray = rows[i : i + sample_bytes]
        out += gray * 3 + rows[i + sample_bytes : i + step]
    return bytes(out)


@pytest.mark.parametrize("colour_type", [0, 2, 4, 6])
@pytest.mark.parametrize("bits", [8, 16])
@given(data=st.data())
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
def test_decode_png_all_filters(colour_type, bits, data):
    samples = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    width = data.draw(st.integers(1, 9))
    height = data.draw(st.integers(1, 9))
    size = width * samples * bits // 8
    row = st.one_of(st.just(bytes(size)), st.binary(min_size=size, max_size=size))
    rows = data.draw(st.lists(row, min_size=height, max_size=height))
    filters = data.draw(st.lists(st.integers(0, 4), min_size=height, max_size=height))
    png = reference_png(width, height, colour_type, bits, rows, filters)
    raster = decode_png(png)
    pixels = b"".join(rows)
    if samples in (1, 2):
        pixels = _expand_gray(pixels, samples, bits // 8)
    assert raster.channels == (4 if samples in (2, 4) else 3)
    assert (raster.width, raster.height, raster.bits) == (width, height, bits)
    assert raster.pixels == pixels


@pytest.mark.parametrize(
    "mode,channels", [("L", 3), ("LA", 4), ("I;16", 3), ("RGB", 3), ("RGBA", 4)]
)
def test_decode_png_written_by_pillow(mode, channels):
    # Pillow picks its own (adaptive) filters, independent of our reference encoder.
    rng = random.Random(mode)
    pixel_bytes = len(Image.new(mode, (1, 1)).tobytes())
    im = Image.frombytes(mode, (37, 23), rng.randbytes(37 * 23 * pixel_bytes))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    raster = decode_png(buf.getvalue())
    assert raster.channels == channels and (raster.width, raster.height) == (37, 23)
    if mode == "I;16":  # little-endian in Pillow, big-endian in PNG
        raw = im.tobytes()
        big = bytes(b for i in range(0, len(raw), 2) for b in (raw[i + 1], raw[i]))
        assert raster.bits == 16 and raster.pixels == _expand_gray(big, 1, 2)
    elif mode in ("L", "LA"):
        assert raster.pixels == _expand_gray(im.tobytes(), len(mode), 1)
    else:
        assert raster.pixels == im.tobytes()


def _small_png() -> bytes:
    return encode_png(Raster(3, 2, 3, 8, bytes(range(18))))


def test_decode_png_rejects_bad_files():
    good = _small_png()
    rows = [bytes(3)]
    iend = _chunk(b"IEND", b"")
    plte = [_chunk(b"PLTE", bytes(3))]
    unknown = [_chunk(b"ABCD", b"")]
    ihdr_1x1 = good[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    cases = [
        (b"\x89PNG\r\n\x1a\x00" + good[8:], "signature"),
        (good[:-5] + bytes([good[-5] ^ 1]) + good[-4:], "bad CRC"),
        (reference_png(1, 1, 2, 8, rows, [0], interlace=1), "Interlaced"),
        (reference_png(1, 1, 3, 8, [b"\0"], [0], extra_chunks=plte), "Palette"),
        (reference_png(1, 1, 2, 4, [b"\0\0"], [0]), "bit depth 4"),
        (ihdr_1x1 + _chunk(b"IDAT", zlib.compress(b"\x05" + bytes(3))) + iend, "filter type 5"),
        (ihdr_1x1 + _chunk(b"IDAT", zlib.compress(bytes(3))) + iend, "expected 4"),
        (reference_png(1, 1, 2, 8, [bytes(3)] * 2, [0, 0]), "more than"),
        (good[: good.index(b"IEND") - 4], "no IEND"),
        (reference_png(1, 1, 2, 8, rows, [0], extra_chunks=unknown), "critical chunk"),
        (ihdr_1x1 + iend, "no IDAT"),
        (good[:8] + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 1, 8, 2, 0, 0, 0)), "invalid size"),
        (good[:8] + _chunk(b"IDAT", b"") + good[8:], "does not start with an IHDR"),
    ]
    for data, words in cases:
        with pytest.raises(ValueError, match=words):
            decode_png(data)
    # Cut anywhere: always a ValueError, never another exception.
    for cut in range(len(good)):
        with pytest.raises(ValueError):
            decode_png(good[:cut])


def test_decode_png_skips_ancillary_chunks():
    rows = [bytes([1, 2, 3])]
    text = _chunk(b"tEXt", b"Software\0POV-Ray") + _chunk(b"gAMA", struct.pack(">I", 45455))
    assert decode_png(reference_png(1, 1, 2, 8, rows, [0], extra_chunks=[text])).pixels == rows[0]


def test_encode_png_level():
    raster = Raster(4, 4, 4, 8, bytes(64))
    assert decode_png(encode_png(raster, level=0)) == raster
    for level in (-1, 10, 1.5):
        with pytest.raises(ValueError):
            encode_png(raster, level=level)


# --------------------------------------------------------------------------- PPM


def test_decode_ppm_with_comments_and_16_bits():
    header = b"P6\n# Software: POV-Ray\n# Render Date: today\n2 1\n# late\n255\n"
    r = decode_ppm(header + bytes(range(6)))
    assert (r.width, r.height, r.channels, r.bits, r.pixels) == (2, 1, 3, 8, bytes(range(6)))
    r16 = decode_ppm(b"P6 1 2 65535\r" + bytes(range(12)))
    assert (r16.bits, r16.height, r16.pixels) == (16, 2, bytes(range(12)))
    assert decode_ppm(b"P6 1 1 255\n" + b"abc").pixels == b"abc"


def test_decode_ppm_rejects_bad_files():
    for data in [
        b"P3 1 1 255\n" + bytes(3),
        b"P6 1 1 1000\n" + bytes(6),
        b"P6 1 1 255\n" + bytes(2),
        b"P6 1 1 255\n" + bytes(4),
        b"P6 1 x 255\n" + bytes(3),
        b"P6 0 1 255\n",
        b"P6 1 1 255",
        b"P6 # comment to the end",
    ]:
        with pytest.raises(ValueError):
            decode_ppm(data)


# --------------------------------------------------------------------------- crop and stitch


@given(rasters(max_side=40), st.integers(1, 8), st.integers(1, 8), st.randoms())
def test_stitch_shuffled_strips(raster, count, block, rnd):
    plan = plan_strips(raster.height, count, block)
    pieces = [(s, e, crop_rows(raster, s, e)) for s, e in plan]
    rnd.shuffle(pieces)
    assert stitch(raster.width, raster.height, raster.channels, raster.bits, pieces) == raster


def test_crop_rows():
    raster = Raster(1, 3, 3, 8, bytes(range(9)))
    assert crop_rows(raster, 1, 3) == bytes(range(3, 9))
    for start, end in [(0, 0), (2, 1), (-1, 1), (0, 4)]:
        with pytest.raises(ValueError):
            crop_rows(raster, start, end)


@pytest.mark.parametrize(
    "pieces,words",
    [
        ([(0, 2, bytes(6)), (3, 4, bytes(3))], "[2, 3) are missing"),
        ([(0, 2, bytes(6)), (1, 4, bytes(9))], "[1, 4) overlap"),
        ([(0, 2, bytes(6)), (2, 4, bytes(5))], "[2, 4) have 5 bytes"),
        ([(0, 2, bytes(6))], "[2, 4) are missing"),
        ([(1, 4, bytes(9))], "[0, 1) are missing"),
        ([(0, 5, bytes(15))], "[0, 5)"),
        ([(0, 4, bytes(12)), (0, 4, bytes(12))], "overlap"),
        ([], "[0, 4) are missing"),
    ],
)
def test_stitch_errors_name_rows(pieces, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace(")", r"\)")):
        stitch(1, 4, 3, 8, pieces)


# --------------------------------------------------------------------------- the wire


@given(st.binary(max_size=5000))
def test_compress_round_trip(data):
    assert decompress_rows(compress_rows(data), len(data)) == data


def test_decompress_refuses_a_bomb_quickly():
    packer = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(50)) + packer.flush()  # 50 MB of zeros
    assert len(bomb) < 100_000
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="more than"):
        decompress_rows(bomb, 1000)
    assert time.perf_counter() - t0 < 0.5


def test_decompress_rejects_wrong_data():
    packed = compress_rows(b"abcdef")
    for data, expected in [
        (packed, 5),  # too long
        (packed, 7),  # too short
        (packed[:-3], 6),  # truncated
        (packed + b"x", 6),  # trailing bytes
        (b"not zlib", 6),
        (b"", 0),
    ]:
        with pytest.raises(ValueError):
            decompress_rows(data, expected)
    assert decompress_rows(compress_rows(b""), 0) == b""
    with pytest.raises(ValueError):
        decompress_rows(packed, -1)


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _png_filter(kind, row, prev, bpp):
    """PNG's filters as the specification writes them, one byte at a time."""
    left = lambda i, r: r[i - bpp] if i >= bpp else 0  # noqa: E731
    predict = [lambda i: 0, lambda i: left(i, row), lambda i: prev[i],
               lambda i: (left(i, row) + prev[i]) >> 1, lambda i: _paeth(left(i, row), prev[i], left(i, prev))]
    return bytes((row[i] - predict[kind](i)) & 255 for i in range(len(row)))


@given(rasters(max_side=10), st.booleans())
def test_filter_rows_round_trip_and_picks_the_smallest_filter(raster, all_filters):
    bpp = raster.channels * raster.bits // 8
    size = raster.row_bytes
    scanlines = filter_rows(raster.pixels, size, bpp, all_filters)
    assert len(scanlines) == raster.height * (size + 1)
    assert unfilter_rows(scanlines, size, bpp) == raster.pixels
    prev = bytes(size)
    for y in range(raster.height):
        row = raster.pixels[y * size:(y + 1) * size]
        kind, body = scanlines[y * (size + 1)], scanlines[y * (size + 1) + 1:(y + 1) * (size + 1)]
        assert body == _png_filter(kind, row, prev, bpp)
        kinds = range(5 if all_filters else 3)
        cost = [sum(min(v, 256 - v) for v in _png_filter(k, row, prev, bpp)) for k in kinds]
        assert cost[kind] == min(cost)
        prev = row


@given(st.integers(1, 8), st.integers(1, 300), st.randoms(use_true_random=False))
def test_sub_rows_are_undone_exactly_as_the_specification_adds_them_back(bpp, pixels, rng):
    """The Sub filter undone by doubling equals the specification's byte-at-a-time running sum, for any
    pixel size and row length (a row of one pixel included)."""
    row = bytes(rng.randrange(256) for _ in range(bpp * pixels))
    expected = bytearray(row)
    for i in range(bpp, len(expected)):
        expected[i] = (expected[i] + expected[i - bpp]) & 255
    assert _SwarMasks(len(row)).running_sum(row, bpp) == bytes(expected)
    assert unfilter_rows(b"\x01" + row, len(row), bpp) == bytes(expected)


@given(rasters(max_side=8), st.integers(1, 3), st.sampled_from(ENCODINGS))
def test_encoded_rows_round_trip_per_frame(raster, frames, encoding):
    """A unit's frames in turn, each filtered on its own: both encodings give back the exact rows, and a
    frame's filtered rows do not depend on the frame before."""
    bpp = raster.channels * raster.bits // 8
    raw = raster.pixels * frames
    data = encode_rows(raw, encoding, raster.row_bytes, bpp, frames)
    assert decode_rows(data, encoding, len(raw), raster.row_bytes, bpp, frames) == raw
    if encoding == FILTERED:
        one = zlib.decompress(encode_rows(raster.pixels, encoding, raster.row_bytes, bpp))
        assert zlib.decompress(data) == one * frames


def test_decode_rows_refuses_wrong_data():
    raw = bytes(range(24)) * 4                     # 4 rows of 8 RGB pixels... of 24 bytes
    data = encode_rows(raw, FILTERED, 24, 3)
    with pytest.raises(ValueError, match="expected"):
        decode_rows(data, FILTERED, len(raw) - 24, 24, 3)
    with pytest.raises(ValueError, match="filter type"):
        decode_rows(zlib.compress(b"\x07" + bytes(24)), FILTERED, 24, 24, 3)
    with pytest.raises(ValueError, match="encoding"):
        decode_rows(data, "gzip", len(raw), 24, 3)
    with pytest.raises(ValueError, match="more than"):   # a bomb stops at the cap
        decode_rows(zlib.compress(bytes(10**7)), FILTERED, len(raw), 24, 3)


def test_bz2_rows_are_checked_as_strictly_and_kept_as_filtered():
    """A slow uplink's rows (bz2 of PNG scanlines): a bomb stops at the cap, a torn or padded stream is refused,
    and the controller keeps them as the same scanlines deflated (FILTERED), byte for byte what a node
    sending FILTERED at level 6 would have sent."""
    raw = bytes(range(24)) * 4
    data = encode_rows(raw, FILTERED_BZ2, 24, 3, frames=2)
    assert decode_rows(data, FILTERED_BZ2, len(raw), 24, 3, frames=2) == raw
    for bad, words in ((bz2.compress(bytes(10**7)), "more than"), (data[:-5], "truncated|not valid"),
                       (data + b"x", "trailing"), (b"BZh9 not bz2", "not valid"), (zlib.compress(raw), "not valid")):
        with pytest.raises(ValueError, match=words):
            decode_rows(bad, FILTERED_BZ2, len(raw), 24, 3)
    stored, encoding = as_stored(data, FILTERED_BZ2, len(raw), 24)
    assert (stored, encoding) == (encode_rows(raw, FILTERED, 24, 3, frames=2), FILTERED)
    assert as_stored(b"as it came", ZLIB, len(raw), 24) == (b"as it came", ZLIB)
    with pytest.raises(ValueError, match="stored"):
        split_frames(data, FILTERED_BZ2, len(raw), 24, 2)


# --------------------------------------------------------------------------- real POV-Ray

SCENE = """
camera { location <0, 1, -4> look_at <0, 0.5, 0> }
light_source { <3, 5, -4> rgb 1 }
background { rgb <0.2, 0.3, 0.5> }
plane { y, 0 pigment { checker rgb 1 rgb <0.1, 0.4, 0.1> scale 0.5 } }
sphere { <0, 0.8, 0>, 0.8
  pigment { gradient y color_map { [0 rgb <1, 0.2, 0>] [1 rgb <0, 0.3, 1>] } translate -0.5 }
  finish { specular 0.6 }
}
"""
W, H = 64, 48
AA_STRIPS = plan_strips(H, 2)  # [(0, 32), (32, 48)]: one block-aligned internal edge


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Run every POV-Ray render the tests need at once (each is ~0.6 s of mostly idle time)."""
    if shutil.which("povray") is None:
        pytest.skip("POV-Ray is not installed (no 'povray' on PATH)")
    tmp = tmp_path_factory.mktemp("pov")
    (tmp / "scene.pov").write_text(SCENE)
    jobs = {
        "full.ppm": ["+FP"],
        "full.png": ["+FN"],
        "alpha.png": ["+FN", "+UA"],
        "full16.ppm": ["+FP16"],
        "full16.png": ["+FN16"],
        "part.png": ["+FN", *povray_row_options(16, 32, H)],
        "row0.ppm": ["+FP", *povray_row_options(0, 1, H)],
        "aa.png": ["+FN", "+A0.3"],
        **{
            f"aa{i}.png": ["+FN", "+A0.3", *povray_row_options(s, e, H)]
            for i, (s, e) in enumerate(AA_STRIPS)
        },
    }
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["HOME"] = str(tmp)  # no user config; the system INI only adds the display, and -D wins
    procs = {
        name: subprocess.Popen(
            ["povray", "-D", f"+W{W}", f"+H{H}", *opts, f"+O{tmp / name}", "scene.pov"],
            cwd=tmp,  # so no stray ./povray.ini is picked up
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, opts in jobs.items()
    }
    out = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"povray for {name} failed: {err.decode(errors='replace')}"
        out[name] = (tmp / name).read_bytes()
    return out


def _pillow(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_povray_8bit_ppm_png_and_pillow_agree(renders):
    ppm = decode_ppm(renders["full.ppm"])
    png = decode_png(renders["full.png"])
    assert (ppm.width, ppm.height, ppm.channels, ppm.bits) == (W, H, 3, 8)
    assert ppm == png
    assert png.pixels == _pillow(renders["full.png"]).convert("RGB").tobytes()
    assert any(png.pixels)


def test_povray_alpha_png(renders):
    raster = decode_png(renders["alpha.png"])
    assert (raster.channels, raster.bits) == (4, 8)
    im = _pillow(renders["alpha.png"])
    assert im.mode == "RGBA" and raster.pixels == im.tobytes()


def test_povray_16bit(renders):
    ppm = decode_ppm(renders["full16.ppm"])
    png = decode_png(renders["full16.png"])
    assert (ppm.bits, png.bits, png.channels) == (16, 16, 3)
    assert ppm == png
    eight = decode_png(renders["full.png"]).pixels
    high = png.pixels[0::2]
    assert max(abs(a - b) for a, b in zip(high, eight)) <= 1


def _rows(raster: Raster) -> list[bytes]:
    return [crop_rows(raster, y, y + 1) for y in range(raster.height)]


def test_povray_partial_render_matches_full(renders):
    full = _rows(decode_png(renders["full.png"]))
    part = _rows(decode_png(renders["part.png"]))
    black = bytes(len(full[0]))
    for y in range(H):
        assert part[y] == (full[y] if 16 <= y < 32 else black), f"row {y}"
    # The fractional '+ER' for "first row only" renders exactly row 0.
    row0 = _rows(decode_ppm(renders["row0.ppm"]))
    assert row0[0] == full[0] and row0[0] != black
    assert all(r == black for r in row0[1:])


def test_povray_antialiased_strips_stitch_exactly(renders):
    full = decode_png(renders["aa.png"])
    pieces = [
        (s, e, crop_rows(decode_png(renders[f"aa{i}.png"]), s, e))
        for i, (s, e) in enumerate(AA_STRIPS)
    ]
    # Through the wire format, as a node would send them.
    pieces = [(s, e, decompress_rows(compress_rows(rows), len(rows))) for s, e, rows in pieces]
    stitched = stitch(W, H, 3, 8, reversed(pieces))
    assert stitched == full
    assert decode_png(encode_png(stitched)) == full
