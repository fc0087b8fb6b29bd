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
from farm.shear import FINE_BLOCK, Shear, fine_block, pretrace_options, step_for
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
    # Without anti-aliasing: 16-pixel blocks, the same pixels as POV-Ray's own 32.
    done = run_cli("submit", str(scene), "--width", "128", "--height", "96", "--wait", "--output", str(out),
                   "--controller", farm.url)
    assert done.returncode == 0, done.stderr
    assert_same_pixels(out, native_render(scene, 128, 96, [], tmp_path / "native-plain.png"))
    status = farm.client.call("jobs.status", int(done.stdout.strip()))
    assert status["shear"] == step_for(96 // 16) and status["block"] == 16


def test_a_sheared_still_goes_out_in_large_shares_once_measured(tmp_path):
    """The rows of a sheared frame cost alike: no probes of a band, but a first unit of 1/FIRST_WAVE of an even
    share per node, then half of each node's share of what is left, the rows in flight counted (farm.scheduler)."""
    farm, _ = stepped_farm(tmp_path / "data")
    job = submit(farm, write_scene(tmp_path / "scene", "sphere { 0, 1 pigment { rgb 1 } }\n"),
                 width=64, height=480, strips="auto", options=["+BS32"])
    assert farm.call("jobs.status", job)["shear"] == 8
    nodes = [farm.call("nodes.register", f"n{i}", {"povray": "3.7", "slots": 1, "interleave": True})["node_id"]
             for i in range(2)]
    first = [farm.call("nodes.poll", node) for node in nodes]
    # 15 block rows, no speeds known: each node a third of the frame.
    assert [(task["row_start"], task["row_end"], task["shear"]) for task in first] == [(0, 160, 8), (160, 320, 8)]
    assert farm.call("nodes.poll", nodes[0]) == {}      # its one run is busy: nothing ahead before it measured
    for node, task in zip(nodes, first):
        rows = task["row_end"] - task["row_start"]
        farm.call("nodes.complete", node, task["lease"], rows_for(task), scheduler.STARTUP_SECONDS + 0.1 * rows)
    shares = [farm.call("nodes.poll", node) for node in nodes]      # 160 rows left: 80 each, halved to a block
    assert [(task["row_start"], task["row_end"]) for task in shares] == [(320, 352), (352, 384)]
    # Near its unit's end a node's run asks ahead (a poll that does not wait) and gets its next; a spare slot
    # of the node asking (a long poll) gets nothing to render beside it.
    farm.call("nodes.heartbeat", nodes[0], {shares[0]["lease"]: 0.9})
    assert farm.call("nodes.poll", nodes[0], 0.05) == {}
    assert farm.call("nodes.poll", nodes[0])["row_start"] == 384


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
    # ...as its busy run asks ahead; a spare slot of the node asking (a long poll) would start it beside it.
    assert scheduler.next_cut("a", 192, 480, 32, slots, finished, late, even=True, idle_slot=True) is None
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
    assert farm.call("nodes.poll", new)["shear"] == step_for(480 // FINE_BLOCK)
    banded = submit(farm, scene, width=64, height=480, strips="auto")
    assert farm.call("jobs.status", banded)["shear"] == 0
    task = farm.call("nodes.poll", old)
    assert task["job"] == banded and task["shear"] == 0


def test_a_sheared_frame_renders_in_fine_blocks_where_no_pixel_depends_on_them():
    """farm.shear.fine_block: 16-pixel blocks (finer cuts, the same pixels) unless anti-aliasing depends on
    where blocks fall, the user chose the block size, or the frame would have too many blocks. A radiosity
    frame's pre-pass keeps the frame's own blocks (`pretrace_options`); a block the user gave stays."""
    assert fine_block(640, 480, 32, antialias=False, block_given=False) == FINE_BLOCK == 16
    assert fine_block(640, 480, 32, antialias=True, block_given=False) == 32
    assert fine_block(640, 480, 32, antialias=False, block_given=True) == 32
    assert fine_block(8192, 8192, 32, antialias=False, block_given=False) == 32
    assert fine_block(640, 480, 8, antialias=False, block_given=False) == 8
    assert pretrace_options(("+Q9", "+BS16")) == ("+Q9",)
    assert pretrace_options(("+Q9",)) == ("+Q9",)
    assert pretrace_options(("+BS16", "+BS16")) == ("+BS16", "+BS16")   # the user's own block stays
    assert pretrace_options(("Antialias=on", "+BS24")) == ("Antialias=on", "+BS24")


def test_a_sheared_job_without_antialiasing_gets_fine_blocks_in_its_options(tmp_path):
    """The controller adds +BS16 to a sheared job whose pixels cannot change with it; an anti-aliased job,
    and one cut in bands of rows, keep POV-Ray's default blocks."""
    farm, _ = stepped_farm(tmp_path / "data")
    scene = write_scene(tmp_path / "scene", "sphere { 0, 1 pigment { rgb 1 } }\n")
    node = farm.call("nodes.register", "n", {"povray": "3.7", "slots": 1, "interleave": True})["node_id"]
    for options, interleave, block, shear in (([], True, 16, step_for(30)), (["+A0.3"], True, 32, step_for(15)),
                                              ([], False, 32, 0)):
        job = submit(farm, scene, width=64, height=480, strips="auto", options=options, interleave=interleave)
        status = farm.call("jobs.status", job)
        assert (status["block"], status["shear"]) == (block, shear)
        task = farm.call("nodes.poll", node)
        assert task["job"] == job and task["options"] == options + (["+BS16"] if block == 16 else [])
        farm.call("jobs.cancel", job)


def test_a_radiosity_frames_strips_get_fine_blocks_and_its_pre_pass_the_frames_own(tmp_path):
    """A sheared radiosity frame's strips load its cache in 16-pixel blocks, so that two boxes can split it
    evenly, but its pre-pass pretraces in the frame's 32-pixel blocks, each band on whole ones: a
    pretrace's jitter follows its blocks (farm.radiosity)."""
    farm, _ = stepped_farm(tmp_path / "data")
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    nodes = [farm.call("nodes.register", name, {"povray": "3.7", "slots": 1, "interleave": True})["node_id"]
             for name in ("a", "b")]
    job = submit(farm, scene, width=64, height=480, strips="auto")
    status = farm.call("jobs.status", job)
    assert (status["block"], status["shear"]) == (16, step_for(30))
    bands = [farm.call("nodes.poll", node) for node in nodes]
    assert all(task["kind"] == "pretrace" and task["options"] == [] for task in bands)
    assert all(task["row_start"] % 32 == 0 for task in bands)
    # Every node on the controller's box: the frame goes out whole and pretraces itself, in its own blocks.
    alone, _ = stepped_farm(tmp_path / "alone", machine="box")
    alone.call("nodes.register", "c", {"povray": "3.7", "slots": 1, "interleave": True, "machine": "box"})
    job = submit(alone, scene, width=64, height=480, strips="auto")
    assert alone.call("jobs.status", job)["block"] == 32


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 40), st.floats(0.1, 10.0)), min_size=2, max_size=12),
       st.floats(0.2, 5.0))
def test_remembered_speeds_are_each_nodes_rows_per_second_on_one_scale(units, slower):
    """scheduler.learned_speeds: with nothing remembered, the nodes' speeds stand as their rows per second of
    work; a node made `slower` times slower in every unit ends `slower` times slower; a frame of one node
    teaches nothing; each later frame moves a remembered speed LEARNING of the way to what it measured."""
    finished, row = [], 0
    for node, rows, seconds in units:
        finished.append(scheduler.Finished(node, row, row + rows, scheduler.STARTUP_SECONDS + seconds))
        row += rows
    nodes = {unit.node for unit in finished}
    learned = scheduler.learned_speeds({}, finished)
    if len(nodes) < 2:
        assert learned == {}
        return
    rates = {node: sum(u.rows for u in finished if u.node == node) / sum(u.seconds - scheduler.STARTUP_SECONDS
                                                                           for u in finished if u.node == node)
             for node in nodes}
    first, *others = sorted(nodes)
    for node in others:
        assert math.isclose(learned[node] / learned[first], rates[node] / rates[first], rel_tol=1e-6)
    slowed = [scheduler.Finished(u.node, u.row_start, u.row_end, scheduler.STARTUP_SECONDS
                                 + (u.seconds - scheduler.STARTUP_SECONDS) * (slower if u.node == first else 1.0))
              for u in finished]
    again = scheduler.learned_speeds(learned, slowed)
    for node in others:     # part of the way from the remembered ratio to the one measured now
        before, measured, after = (learned[node] / learned[first], slower * rates[node] / rates[first],
                                   again[node] / again[first])
        assert min(before, measured) - 1e-9 <= after <= max(before, measured) + 1e-9
        assert math.isclose(before, after, rel_tol=1e-9) == math.isclose(slower, 1.0, rel_tol=1e-9)
    assert scheduler.learned_speeds(learned, [u for u in finished if u.node == first]) == learned


def test_a_nodes_units_that_ran_side_by_side_count_their_time_once():
    """scheduler.learned_speeds with `busy`: a unit leased ahead ran beside its node's last one for a while;
    the node's work is at most the time any of its units ran (union_seconds), less one start-up, so it does
    not look slower than a node whose units ran one after the other."""
    assert scheduler.union_seconds([(0.0, 2.0), (1.0, 3.0), (5.0, 6.0)]) == 4.0
    assert scheduler.union_seconds([]) == 0.0
    start = scheduler.STARTUP_SECONDS
    finished = [scheduler.Finished("a", 0, 100, start + 2.0), scheduler.Finished("a", 100, 200, start + 2.0),
                scheduler.Finished("b", 200, 400, start + 4.0)]
    alike = scheduler.learned_speeds({}, finished)
    assert math.isclose(alike["a"], alike["b"])
    overlapped = scheduler.learned_speeds({}, finished, {"a": start + 3.0, "b": start + 4.0})
    assert math.isclose(overlapped["a"] / overlapped["b"], 4.0 / 3.0)


def test_known_speeds_give_each_run_its_whole_share_of_a_sheared_frame_at_once():
    """With every live node's speed remembered, a sheared frame's first units split it by them, one unit per
    run: no further unit parses the scene again. A node not known yet, or a split that whole block rows
    cannot make even, brings back the cautious first wave."""
    slots = {"a": 1, "b": 1}
    known = {"a": 2.0, "b": 1.0}
    first = scheduler.next_cut("a", 0, 480, 16, slots, [], [], even=True, known=known)
    assert first == 320
    assert scheduler.next_cut("b", 320, 480, 16, slots, [], [scheduler.Running("a", 320, 0.1)], even=True,
                              known=known) == 480
    assert scheduler.next_cut("a", 0, 480, 16, {**slots, "c": 1}, [], [], even=True, known=known) == 112
    # 15 block rows of 32 on two boxes alike split 8 and 7, one box's tail: smaller units share them out.
    assert scheduler.next_cut("a", 0, 480, 32, slots, [], [], even=True, known={"a": 1.0, "b": 1.0}) == 160


def test_the_farm_remembers_node_speeds_from_one_sheared_frame_for_the_next(tmp_path):
    """Two nodes render a sheared still in units of measured speed; the dispatcher learns their speeds, and
    the next sheared still goes out in one unit per node, split by them."""
    farm, _ = stepped_farm(tmp_path / "data")
    scene = write_scene(tmp_path / "scene", "sphere { 0, 1 pigment { rgb 1 } }\n")
    nodes = [farm.call("nodes.register", name, {"povray": "3.7", "slots": 1, "interleave": True})["node_id"]
             for name in ("fast", "slow")]
    seconds_per_row = {nodes[0]: 0.01, nodes[1]: 0.02}
    first = submit(farm, scene, width=64, height=480, strips="auto")
    while True:
        tasks = [(node, farm.call("nodes.poll", node)) for node in nodes]
        tasks = [(node, task) for node, task in tasks if task]
        if not tasks:
            break
        for node, task in tasks:
            rows = task["row_end"] - task["row_start"]
            farm.call("nodes.complete", node, task["lease"], rows_for(task),
                      scheduler.STARTUP_SECONDS + seconds_per_row[node] * rows)
    farm.settle()
    assert farm.call("jobs.status", first)["state"] == "done"
    submit(farm, scene, width=64, height=480, strips="auto")
    shares = [farm.call("nodes.poll", node) for node in nodes]
    assert [(task["row_start"], task["row_end"]) for task in shares] == [(0, 320), (320, 480)]  # 2:1
