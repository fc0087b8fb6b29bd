"""Sheared frames (farm.shear): the layout's geometry, property-tested, and POV-Ray rendering a sheared strip's
blocks alone exactly as in the whole frame."""

from __future__ import annotations

import math
import shutil
import subprocess

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.images.png import decode_png
from farm.rendering.statefile import blocks_file
from farm.shear import Shear, step_for
from farm.strips import block_count
from farm import scheduler
from harness import (SCENES, assert_same_pixels, native_render, needs_povray, rows_for, run_cli, stepped_farm, submit,
                     write_scene)


@st.composite
def frames(draw):
    block = draw(st.sampled_from([1, 2, 3, 4, 8]))
    width = draw(st.integers(1, 40))
    height = draw(st.integers(1, 40))
    bpp = draw(st.sampled_from([3, 4, 6, 8]))
    layout = Shear.of_frame(width, height, block)
    pixels = bytes(draw(st.integers(0, 255)) for _ in range(min(64, width * height * bpp)))
    pixels = (pixels * (width * height * bpp // max(1, len(pixels)) + 1))[:width * height * bpp]
    return layout, bytes((i * 7 + pixels[i]) & 255 for i in range(len(pixels))), bpp


def _cuts(layout: Shear, data) -> list[tuple[int, int]]:
    """Block-aligned ranges covering the frame's rows."""
    edges = sorted(set(data.draw(st.lists(st.integers(1, block_count(layout.height, layout.block) - 1), max_size=5))
                       if block_count(layout.height, layout.block) > 1 else []))
    bounds = [0, *(edge * layout.block for edge in edges), layout.height]
    return list(zip(bounds, bounds[1:]))


def test_the_step_is_coprime_with_the_block_rows_near_their_golden_section():
    assert [step_for(rows) for rows in (0, 1, 2)] == [0, 0, 0]
    for rows in range(3, 200):
        step = step_for(rows)
        assert 0 < step < rows and math.gcd(step, rows) == 1
        assert abs(step - rows / 1.618) <= max(3, rows * 0.1)
    assert step_for(15) == 8      # 640x480 in 32-pixel blocks


@settings(max_examples=150, deadline=None)
@given(frames(), st.data())
def test_strips_of_the_sheared_image_rebuild_the_frame(frame, data):
    """Cut anywhere on block edges, the strips' sheared rows, joined and unsheared, are the frame; their
    blocks are every block of the frame once; and where they lie covers the frame once."""
    layout, pixels, bpp = frame
    row_bytes = layout.width * bpp
    cuts = _cuts(layout, data)
    joined = b"".join(layout.sheared_rows(pixels, row_bytes, bpp, start, end) for start, end in cuts)
    assert layout.unshear(joined, row_bytes, bpp) == pixels
    blocks = [block for start, end in cuts for block in layout.blocks(start, end)]
    assert sorted(blocks) == sorted((column, row) for column in range(layout.columns)
                                    for row in range(block_count(layout.height, layout.block)))
    covered = [0] * (layout.width * layout.height)
    for start, end in cuts:
        for left, top, right, bottom in layout.rectangles(start, end):
            for y in range(top, bottom):
                for x in range(left, right):
                    covered[y * layout.width + x] += 1
    assert set(covered) == {1}


@given(frames(), st.data())
def test_placements_put_a_strips_rows_where_unshear_puts_them(frame, data):
    layout, pixels, bpp = frame
    row_bytes = layout.width * bpp
    start, end = data.draw(st.sampled_from(_cuts(layout, data)))
    rows = layout.sheared_rows(pixels, row_bytes, bpp, start, end)
    canvas = bytearray(len(pixels))
    for target, source, length in layout.placements(start, end, row_bytes, bpp):
        canvas[target:target + length] = rows[source:source + length]
    for left, top, right, bottom in layout.rectangles(start, end):
        for y in range(top, bottom):
            assert canvas[y * row_bytes + left * bpp:y * row_bytes + right * bpp] == \
                pixels[y * row_bytes + left * bpp:y * row_bytes + right * bpp]


def test_a_sheared_row_takes_one_block_from_every_band():
    """640x480 in 32-pixel blocks: each of the sheared image's block rows holds blocks of all 15 bands."""
    layout = Shear.of_frame(640, 480, 32)
    for band in range(15):
        rows = {row for _, row in layout.blocks(band * 32, band * 32 + 32)}
        assert rows == set(range(15))


def test_a_partial_bottom_band_and_a_short_frame_stay_in_place():
    layout = Shear.of_frame(100, 70, 32)      # two whole block rows: too few to shear
    assert layout.step == 0 and layout.source_row(3, 5) == 5
    tall = Shear.of_frame(100, 100, 32)       # three whole rows and a 4-row band that stays
    assert tall.step and tall.source_row(2, 97) == 97 and tall.source_row(1, 0) != 0


@needs_povray
def test_povray_renders_a_sheared_strips_blocks_alone_as_in_the_whole_frame(tmp_path):
    """`+C` beside blocks_file: POV-Ray renders just the strip's blocks, each exactly as the whole frame's
    render has it, and leaves the rest black."""
    scene = SCENES / "advanced/chess2.pov"
    width, height = 96, 80
    layout = Shear.of_frame(width, height, 16)
    shutil.copy(scene, tmp_path / scene.name)

    def render(name: str, extra: list[str]) -> bytes:
        subprocess.run(["povray", f"+I{scene.name}", f"+W{width}", f"+H{height}", "+BS16", "-D", "+FN",
                        f"+O{name}", "+WT1", "+A0.3", *extra], cwd=tmp_path, capture_output=True, check=True,
                       timeout=120)
        return decode_png((tmp_path / name).read_bytes()).pixels

    whole = render("whole.png", [])
    (tmp_path / "part.pov-state").write_bytes(blocks_file(width, height, 16, layout.serials(16, 48)))
    part = render("part.png", ["+C"])
    row_bytes = width * 3
    assert layout.step == 3 and len(set(layout.blocks(16, 48))) == 12
    assert layout.sheared_rows(part, row_bytes, 3, 16, 48) == layout.sheared_rows(whole, row_bytes, 3, 16, 48)
    others = [(column, row) for column in range(layout.columns) for row in range(height // 16)
              if (column, row) not in set(layout.blocks(16, 48))]
    column, row = others[0]
    assert not any(part[(row * 16) * row_bytes + column * 48:(row * 16) * row_bytes + column * 48 + 48])


@needs_povray
def test_a_still_on_two_boxes_is_cut_sheared_and_stitched_exactly(farm, tmp_path):
    """Nodes standing for two boxes: the still is cut into strips of its sheared image, each rendered as
    blocks all over the frame, and the stitched image is POV-Ray's own, bit for bit."""
    farm.start_controller()
    farm.start_node("a", "--machine", "boxA")
    farm.start_node("b", "--machine", "boxB")
    scene = SCENES / "advanced/chess2.pov"
    out = tmp_path / "farm.png"
    done = run_cli("submit", str(scene), "--width", "128", "--height", "96", "--option", "+A0.3", "--wait",
                   "--output", str(out), "--controller", farm.url)
    assert done.returncode == 0, done.stderr
    assert_same_pixels(out, native_render(scene, 128, 96, ["+A0.3"], tmp_path / "native.png"))
    status = farm.client.call("jobs.status", int(done.stdout.strip()))
    assert status["shear"] == step_for(96 // 32) == 2 and status["block"] == 32
    rows = [strip for strip in status["strips"] if strip["kind"] == "rows"]
    assert len(rows) > 1 and len({strip["node"] for strip in rows}) == 2


def test_a_sheared_still_goes_out_in_large_shares_once_measured(tmp_path):
    """The rows of a sheared frame cost alike: no probes of a band, but a first unit of 1/FIRST_WAVE of an even
    share per node, then half of each node's share of what is left, the rows in flight counted (farm.scheduler)."""
    farm, _ = stepped_farm(tmp_path / "data")
    job = submit(farm, write_scene(tmp_path / "scene", "sphere { 0, 1 pigment { rgb 1 } }\n"),
                 width=64, height=480, strips="auto")
    assert farm.call("jobs.status", job)["shear"] == 8
    nodes = [farm.call("nodes.register", f"n{i}", {"povray": "3.7", "slots": 1, "interleave": True})["node_id"]
             for i in range(2)]
    first = [farm.call("nodes.poll", node) for node in nodes]
    # 15 block rows: the first node a third of them, the second a third of the rest, rounded up.
    assert [(task["row_start"], task["row_end"], task["shear"]) for task in first] == [(0, 160, 8), (160, 288, 8)]
    assert farm.call("nodes.poll", nodes[0]) == {}      # its one run is busy: nothing ahead before it measured
    for node, task in zip(nodes, first):
        rows = task["row_end"] - task["row_start"]
        farm.call("nodes.complete", node, task["lease"], rows_for(task), scheduler.STARTUP_SECONDS + 0.1 * rows)
    shares = [farm.call("nodes.poll", node) for node in nodes]      # 192 rows left: 96 each, halved
    assert [(task["row_start"], task["row_end"]) for task in shares] == [(288, 352), (352, 416)]


def test_a_busy_node_gets_its_next_sheared_unit_only_near_the_end_of_its_own():
    """Measured, a node whose one run is busy for longer than AHEAD_SECONDS declines (a second POV-Ray would
    share its cores); in its unit's last seconds it takes its share, as it asks ahead."""
    finished = [scheduler.Finished("a", 0, 64, scheduler.STARTUP_SECONDS + 6.4),
                scheduler.Finished("b", 64, 128, scheduler.STARTUP_SECONDS + 6.4)]      # 0.1 s a row
    slots = {"a": 1, "b": 1}
    early = [scheduler.Running("a", 64, 0.1)]
    assert scheduler.next_cut("a", 192, 480, 32, slots, finished, early, even=True) is None
    late = [scheduler.Running("a", 64, 0.8)]         # 1.3 s in hand: half its share of 288 + 13 rows, less those
    assert scheduler.next_cut("a", 192, 480, 32, slots, finished, late, even=True) == 192 + 64
    assert scheduler.next_cut("b", 192, 480, 32, slots, finished, early, even=True) == 192 + 96
    # A scene whose units cost 4 s each besides tracing: half a share is not worth one, the whole is.
    assert scheduler.next_cut("b", 192, 480, 32, slots, finished, early, overhead=4.0, even=True) == 192 + 160


def test_a_viewer_paints_a_sheared_frame_block_by_block_in_its_places():
    """farm.viewing.canvas with a layout: strips of the sheared image land where the frame has them, the raster
    is the frame, and a live block is shown only where no final block is."""
    from farm.viewing.canvas import Canvas

    layout = Shear.of_frame(40, 40, 8)          # 5x5 blocks, every block row sheared
    frame = bytes((i * 13) & 255 for i in range(40 * 40 * 3))
    canvas = Canvas(40, 40, 3, 8, layout)
    first = layout.sheared_rows(frame, 120, 3, 0, 16)
    canvas.paint(0, 16, first)
    for left, top, right, bottom in layout.rectangles(0, 16):
        assert canvas.display[top * 120 + left * 3:top * 120 + right * 3] == frame[top * 120 + left * 3:top * 120 + right * 3]
    left, top, right, bottom = layout.rectangles(0, 16)[0]
    assert not canvas.paint_block(left, top, right - 1, top + 7, b"\x01" * ((right - left) * 8 * 3))
    open_column = next(rect for rect in layout.rectangles(16, 40) if rect[0] == 0)
    assert canvas.paint_block(0, open_column[1], 7, open_column[1] + 7, b"\x01" * (8 * 8 * 3))
    canvas.paint(16, 40, layout.sheared_rows(frame, 120, 3, 16, 40))
    assert canvas.complete and canvas.raster().pixels == frame and bytes(canvas.display) == frame


def test_a_node_from_before_sheared_frames_never_takes_a_sheared_unit(tmp_path):
    """A node that does not say it renders sheared units would deliver a frame's own rows: it gets none of a
    sheared job's units, and a job submitted while such a node is live is cut in bands of rows."""
    farm, _ = stepped_farm(tmp_path / "data")
    scene = write_scene(tmp_path / "scene", "sphere { 0, 1 pigment { rgb 1 } }\n")
    sheared = submit(farm, scene, width=64, height=480, strips="auto")
    old = farm.call("nodes.register", "old", {"povray": "3.7", "slots": 1})["node_id"]
    assert farm.call("nodes.poll", old) == {}
    assert "can-interleave" in farm.call("jobs.status", sheared)["blocked"]
    new = farm.call("nodes.register", "new", {"povray": "3.7", "slots": 1, "interleave": True})["node_id"]
    assert farm.call("nodes.poll", new)["shear"] == 8
    banded = submit(farm, scene, width=64, height=480, strips="auto")
    assert farm.call("jobs.status", banded)["shear"] == 0
    task = farm.call("nodes.poll", old)
    assert task["job"] == banded and task["shear"] == 0
