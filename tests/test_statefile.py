"""farm.rendering.statefile and farm.rendering.gamma against real render state files and the images POV-Ray wrote in the
same runs (tests/fixtures/statefile, made by make.py there), and against truncated and random bytes."""

from __future__ import annotations

import gzip
import json
import mmap
import struct
import subprocess
import time
import zlib
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import SCENES, native_render, needs_povray

from farm.rendering import gamma
from farm.rendering.gamma import Encoding
from farm.images.ppm import decode_ppm
from farm.rendering.statefile import (HEADER_SIZE, SIGNATURE, Block, Spots, continue_file,
                                     read_blocks, read_pieces)
from farm.strips import continue_fits

FIXTURES = Path(__file__).parent / "fixtures" / "statefile"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def state_file(name: str) -> bytes:
    return gzip.decompress((FIXTURES / f"{name}.pov-state.gz").read_bytes())


def encoding_of(name: str) -> tuple[Encoding, bool]:
    spec = MANIFEST[name]["encoding"]
    return (Encoding(spec["assumed_gamma"], spec.get("file_gamma", "srgb"), spec.get("bits", 8)),
            spec.get("alpha", False))


def read_png(data: bytes) -> tuple[int, int, int, int, list[bytes]]:
    """width, height, samples per pixel, bits, rows: just enough PNG for POV-Ray's RGB/RGBA 8/16-bit."""
    position, idat, header = 8, b"", None
    while position < len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    width, height, bits, colour_type = header
    samples = {2: 3, 6: 4}[colour_type]
    pixel_bytes = samples * bits // 8
    raw, rows, previous = zlib.decompress(idat), [], bytearray(width * pixel_bytes)
    for y in range(height):
        line = raw[y * (len(previous) + 1):(y + 1) * (len(previous) + 1)]
        row = _unfilter(line[0], bytearray(line[1:]), previous, pixel_bytes)
        rows.append(bytes(row))
        previous = row
    return width, height, samples, bits, rows


def _unfilter(kind: int, row: bytearray, above: bytearray, step: int) -> bytearray:
    for i in range(len(row)):
        left = row[i - step] if i >= step else 0
        up, corner = above[i], above[i - step] if i >= step else 0
        if kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
        else:
            predictor = (0, left, up, (left + up) // 2)[kind]
        row[i] = (row[i] + predictor) & 0xFF
    return row


def difference(name: str) -> tuple[list[float], list[int], int]:
    """Decoded blocks against the final PNG: mean and max difference per channel in 0..255, and how many
    pixels were compared. The blocks must tile the rendered rows exactly once."""
    encoding, alpha = encoding_of(name)
    width, height, samples, bits, png_rows = read_png((FIXTURES / f"{name}.png").read_bytes())
    blocks, _ = read_blocks(state_file(name))
    assert samples == (4 if alpha else 3)     # +UA always writes RGBA, transparent pixels or not
    per_sample = bits // 8
    totals, peaks, covered = [0.0] * samples, [0] * samples, set()
    for block in blocks:
        for y, row in enumerate(block.rows(encoding, alpha)):
            start = block.left * samples * per_sample
            expected = png_rows[block.top + y][start:start + len(row)]
            decoded, wanted = _values(row, per_sample), _values(expected, per_sample)
            for index, (a, b) in enumerate(zip(decoded, wanted)):
                d = abs(a - b) * 255 / (2 ** bits - 1)
                totals[index % samples] += d
                peaks[index % samples] = max(peaks[index % samples], round(d))
            for x in range(block.left, block.right + 1):
                assert (x, block.top + y) not in covered
                covered.add((x, block.top + y))
    first, last = MANIFEST[name]["encoding"].get("rows", [0, height - 1])
    assert covered == {(x, y) for x in range(width) for y in range(first, last + 1)}
    return [t / len(covered) for t in totals], peaks, len(covered)


def _values(row: bytes, per_sample: int) -> list[int]:
    return list(row) if per_sample == 1 else list(struct.unpack(f">{len(row) // 2}H", row))


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_decoded_blocks_are_the_pixels_povray_wrote(name):
    mean, peak, pixels = difference(name)
    print(f"{name}: {pixels} px, mean {[round(m, 4) for m in mean]}, max {peak}")
    assert max(peak) == 0, f"{name}: mean {mean}, max {peak}"


def test_without_the_scenes_gamma_the_pixels_are_off():
    """What the issue measured with value x 255: the gamma matters."""
    blocks, _ = read_blocks(state_file("chess2"))
    right, naive = Encoding(2.2), Encoding(None)
    assert any(b.rows(right) != b.rows(naive) for b in blocks)


def test_a_strip_has_its_blocks_in_image_coordinates():
    blocks, _ = read_blocks(state_file("chess2_strip"))
    assert (blocks[0].left, blocks[0].top, blocks[0].right, blocks[0].bottom) == (0, 16, 15, 31)
    assert {b.top for b in blocks} == {16, 32} and max(b.bottom for b in blocks) == 39
    assert all(b.serial is not None for b in blocks)


def test_alpha_rows_have_four_samples_and_a_transparent_background():
    blocks, _ = read_blocks(state_file("wtorus_alpha"))
    rows = blocks[0].rows(Encoding(2.2), alpha=True)
    assert len(rows) == blocks[0].height and len(rows[0]) == blocks[0].width * 4
    assert rows[0][3] == 0
    opacity = [a for block in blocks for row in block.rows(Encoding(2.2), alpha=True) for a in row[3::4]]
    assert 0 < sum(1 for a in opacity if 0 < a < 255)    # anti-aliased edges: un-premultiplied


def test_radiosity_pretrace_comes_first_as_preview_spots():
    pieces, _ = read_pieces(state_file("cornell_radiosity"))
    assert isinstance(pieces[0], Spots) and pieces[0].size > 1
    spots = [p for p in pieces if isinstance(p, Spots)]
    assert all(0 <= x < 48 and 0 <= y < 36 for s in spots for x, y in zip(s.positions[::2], s.positions[1::2]))
    assert len(spots[0].colours(Encoding(1.0))) == len(spots[0]) * 3
    kinds = [type(p) for p in pieces]
    assert Spots not in kinds[kinds.index(Block):]      # the pretrace ends before the first block


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_the_file_read_as_it_grew(name):
    """Every size the file had while POV-Ray wrote it, read in turn from the last offset: the same blocks
    as the whole file at the end."""
    data, blocks, offset = state_file(name), [], 0
    for _, size in MANIFEST[name]["sizes_while_growing"]:
        new, offset = read_pieces(data[:size], offset)
        blocks += new
        assert offset <= size   # a copy taken while POV-Ray was writing a message ends inside it
    assert _keys(blocks) == _keys(read_pieces(data)[0])


def test_a_memory_map_of_the_file_works(tmp_path):
    path = tmp_path / "out.pov-state"
    path.write_bytes(state_file("chess2"))
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        blocks, end = read_blocks(mapped, HEADER_SIZE)
    assert len(blocks) == 6 and end == path.stat().st_size


def _keys(pieces) -> list[tuple]:
    return [(type(p).__name__, p.pixels.tobytes(), getattr(p, "top", None), getattr(p, "left", None))
            for p in pieces]


FULL = {name: state_file(name) for name in ("torus_linear", "cornell_radiosity")}
FULL_PIECES = {name: _keys(read_pieces(data)[0]) for name, data in FULL.items()}


@given(st.sampled_from(sorted(FULL)), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_truncation_decodes_to_a_prefix(name, draw):
    data = FULL[name]
    cut = draw.draw(st.integers(0, len(data)))
    pieces, end = read_pieces(data[:cut])
    assert _keys(pieces) == FULL_PIECES[name][:len(pieces)]
    assert end <= cut and (end == cut or cut - end < len(data))
    rest, final = read_pieces(data, end)
    assert _keys(pieces + rest) == FULL_PIECES[name] and final == len(data)


@given(st.binary(max_size=2000), st.booleans())
@settings(max_examples=500, deadline=None)
def test_random_bytes_raise_only_value_error(junk, with_header):
    data = (SIGNATURE + bytes(HEADER_SIZE - len(SIGNATURE)) + junk) if with_header else junk
    try:
        read_pieces(data)
    except ValueError:
        pass


@given(st.lists(st.tuples(st.integers(HEADER_SIZE, 64879), st.integers(0, 255)), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_corrupted_files_raise_only_value_error(changes):
    data = bytearray(FULL["torus_linear"])
    for position, value in changes:
        data[position] = value
    try:
        pieces, _ = read_pieces(bytes(data))
    except ValueError:
        return
    assert all(isinstance(p, (Block, Spots)) for p in pieces)


def test_corrupt_files_are_named_in_a_sentence():
    data = state_file("torus_linear")
    with pytest.raises(ValueError, match="not a POV-Ray render state file"):
        read_blocks(b"GIF89a" + data[6:])
    with pytest.raises(ValueError, match="version"):
        read_blocks(data[:28] + b"0002" + data[32:])
    with pytest.raises(ValueError, match="no POVMS message at byte 512"):
        read_blocks(data[:HEADER_SIZE] + b"garbage!" + data[HEADER_SIZE + 8:])
    with pytest.raises(ValueError, match="inside the render state file's header"):
        read_blocks(data, 100)
    with pytest.raises(ValueError, match="outside"):
        read_blocks(data[:1000], 5000)
    assert read_blocks(data[:HEADER_SIZE - 1]) == ([], 0)
    assert read_blocks(data[:HEADER_SIZE]) == ([], HEADER_SIZE)


def test_a_compressed_message_decodes_like_a_raw_one():
    """POVMS can also write GZIP messages (not POV-Ray's Unix build): size, 'GZIP', inflated size, zlib."""
    data = state_file("torus_linear")
    size = struct.unpack_from(">i", data, HEADER_SIZE + 12)[0]
    body = data[HEADER_SIZE + 20:HEADER_SIZE + 20 + size]
    packed = zlib.compress(body)
    message = b"POVRAYMS" + struct.pack(">ii4si", 0x370, len(packed), b"GZIP", size) + packed
    blocks, end = read_blocks(data[:HEADER_SIZE] + message)
    assert _keys(blocks) == FULL_PIECES["torus_linear"][:1] and end == HEADER_SIZE + len(message)


# -- the encoding ----------------------------------------------------------------------------------

CURVES = [(1.0, "srgb"), (2.2, "srgb"), ("srgb", "srgb"), (2.2, 1.8), (1.0, 2.2), (2.2, 1.0), ("srgb", 2.2)]


@given(st.sampled_from(CURVES), st.floats(-0.5, 3.0, width=32))
@settings(max_examples=1000, deadline=None)
def test_the_threshold_tables_quantise_as_povray_does(curves, value):
    working, file = gamma.Curve.parse(curves[0]), gamma.Curve.parse(curves[1])
    quantise = gamma._quantiser(gamma.transcoding(working, file), 255)
    pixels = array("f", [value, value, value, 0.0, 0.0])
    assert Encoding(*curves).encode(pixels) == bytes([quantise(value)] * 3)


@given(st.sampled_from(CURVES + [(None, "srgb")]), st.lists(st.floats(width=32, allow_nan=False), min_size=5,
                                                          max_size=40).map(lambda v: v[:len(v) // 5 * 5]))
@settings(max_examples=500, deadline=None)
def test_a_preview_is_within_one_level_of_the_image(curves, values):
    """Live blocks are previews: their 8-bit samples, looked up by each float's top 16 bits, may be one
    level off the image's, never more, and come in the image's order (R G B per pixel)."""
    pixels = array("f", values)
    exact, preview = Encoding(*curves).encode(pixels), Encoding(*curves).preview(pixels)
    assert len(preview) == len(exact) and all(abs(a - b) <= 1 for a, b in zip(preview, exact))


def test_a_real_blocks_preview_is_mostly_the_image():
    blocks, _ = read_blocks(state_file("chess2"))
    exact = b"".join(b"".join(block.rows(Encoding(2.2))) for block in blocks)
    preview = b"".join(Encoding(2.2).preview(block.pixels) for block in blocks)
    assert sum(a == b for a, b in zip(preview, exact)) > 0.85 * len(exact)      # 89.8%


def test_povray_folds_two_power_laws_into_one_and_equal_curves_into_none():
    assert gamma.transcoding(gamma.SRGB, gamma.SRGB) == gamma.NEUTRAL.encode
    two_two, one_eight = gamma.Curve.parse(2.2), gamma.Curve.parse(1.8)
    folded = gamma.transcoding(two_two, one_eight).__self__   # a bound Curve.encode
    assert folded.kind == "power" and abs(folded.exponent - 2.2 / 1.8) < 1e-6
    assert gamma.transcoding(gamma.NEUTRAL, one_eight).__self__ == one_eight
    assert gamma.Curve.parse(1.005) == gamma.NEUTRAL


def test_unsupported_settings_are_refused():
    with pytest.raises(ValueError, match="8 and 16 bits"):
        Encoding(bits=12)
    with pytest.raises(ValueError, match="positive number"):
        Encoding(assumed_gamma=-1)


def test_decoding_is_fast_enough_to_follow_a_render():
    """A node reads new blocks every few hundred ms: decoding and encoding a 32x32 block must take a
    small part of that (the report quotes the measured rate)."""
    data = state_file("chess2")
    encoding = Encoding(2.2)
    encoding.thresholds()
    started = time.perf_counter()
    for _ in range(20):
        blocks, _ = read_blocks(data)
    decoding = 20 * len(blocks) / (time.perf_counter() - started)
    started = time.perf_counter()
    for block in blocks * 5:
        block.rows(encoding)
    encoding_rate = 5 * len(blocks) / (time.perf_counter() - started)
    started = time.perf_counter()
    for block in blocks * 5:
        encoding.preview(block.pixels)
    preview_rate = 5 * len(blocks) / (time.perf_counter() - started)
    print(f"decode {decoding:.0f} blocks/s, to 8-bit rows {encoding_rate:.0f} blocks/s, previews {preview_rate:.0f}")
    assert decoding > 500 and encoding_rate > 50 and preview_rate > 50


def test_a_continue_file_skips_every_block_outside_the_band():
    """continue_file: one message per block outside the rows, each holding only its serial in the whole
    frame (row-major), which the reader passes over as POV-Ray's image handler does."""
    data = continue_file(100, 70, 32, [(32, 64)])      # blocks of 4 across, 3 down: the band is the middle row
    assert data[:len(SIGNATURE)] == SIGNATURE and len(data) > HEADER_SIZE
    assert read_pieces(data) == ([], len(data))
    assert _skipped_serials(data) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert read_pieces(continue_file(64, 64, 32, [(0, 64)])) == ([], HEADER_SIZE)   # the whole frame: none skipped
    # A band of a folded pre-pass: its rows at the top and their mirror at the bottom.
    assert _skipped_serials(continue_file(32, 128, 32, [(0, 32), (96, 128)])) == [1, 2]
    with pytest.raises(ValueError):
        continue_file(64, 64, 32, [(32, 96)])
    # A frame of very many blocks is not worth it: POV-Ray reads every skipped block's message.
    assert continue_fits(4096, 4096, 16) and not continue_fits(8192, 8192, 16) and not continue_fits(64, 64, 0)


def _skipped_serials(data: bytes) -> list[int]:
    """The serials of the blocks a render state file says are done, in its order."""
    serials, position = [], HEADER_SIZE
    while position < len(data):
        size = struct.unpack_from(">i", data, position + 12)[0]
        serials.append(struct.unpack_from(">i", data, position + 20 + size - 4)[0])   # PiId is last
        position += 20 + size
    return serials


@needs_povray
def test_povray_continuing_from_a_continue_file_renders_only_the_band(tmp_path):
    """POV-Ray's `+C` with continue_file renders the band's blocks alone, exactly as a whole render does
    (chess2 with anti-aliasing, whose strips are bit-identical only on their render blocks' grid), and
    leaves the rest black."""
    width, height, band = 96, 96, (32, 64)
    native = tmp_path / "native.ppm"
    native_render(SCENES / "advanced/chess2.pov", width, height, ["+A0.3"], native, "P", once=True)
    out = tmp_path / "band.ppm"
    out.with_suffix(".pov-state").write_bytes(continue_file(width, height, 32, [band]))
    done = subprocess.run(["povray", "+Ichess2.pov", f"+W{width}", f"+H{height}", "+A0.3", "-D", "+FP", "+C",
                           f"+O{out}"], cwd=SCENES / "advanced", capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    whole, banded = decode_ppm(native.read_bytes()), decode_ppm(out.read_bytes())
    stride = width * 3
    rows = slice(band[0] * stride, band[1] * stride)
    assert banded.pixels[rows] == whole.pixels[rows]
    assert not any(banded.pixels[:band[0] * stride]) and not any(banded.pixels[band[1] * stride:])
