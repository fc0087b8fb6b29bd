"""Radiosity across strips: one shared pretrace per frame, so strips match a single render.

Radiosity is not repeatable between two single-process renders, so the bar is statistical: the farm's
image differs from single renders no more than single renders differ from each other, and the rows
next to strip edges differ no more than the other rows (no seam)."""

from __future__ import annotations

import io
import itertools
import signal
import subprocess
import threading
import time
import zipfile
import zlib

import pytest
from hypothesis import example, given, settings, strategies as st
from pathlib import Path
from xmlrpc.client import Binary

from harness import (SCENES, assert_same_pixels, native_render, needs_povray, run_cli, stepped_farm, submit,
                     wait_ended, wait_until, write_scene)
from farm import radiosity, strips
from farm.rendering import povray
from farm.rendering import photons
from farm.rendering.cache_feed import CacheFeed
from farm.rendering.frame_caches import PhotonMaps
from farm.bundle.checking import mentions
from farm.faults import Code, FarmError
from farm.images.png import decode_png
from farm.images.ppm import decode_ppm
from farm.images.raster import Raster
from farm.planning import UnitPlan, with_pretrace
from farm.rows import compress_rows
from farm.scheduler import STARTUP_SECONDS as STARTUP, Finished

CORNELL = SCENES / "radiosity/cornell.pov"


# -- the pure parts --------------------------------------------------------------------------------

def test_split_frames_get_a_pretrace_unit_before_their_first_strip():
    Plan = UnitPlan
    units = [Plan(1, 1, 0, 32), Plan(1, 1, 32, 64), Plan(2, 2, 0, 32), Plan(2, 2, 32, 64)]
    assert with_pretrace(units, 64, True) == [
        Plan(1, 1, 0, 64, "pretrace"), Plan(1, 1, 0, 32), Plan(1, 1, 32, 64),
        Plan(2, 2, 0, 64, "pretrace"), Plan(2, 2, 0, 32), Plan(2, 2, 32, 64)]
    assert with_pretrace(units, 64, False) == units
    whole_frames = [Plan(1, 5, 0, 64), Plan(6, 9, 0, 64)]     # one process renders every row: nothing to share
    assert with_pretrace(whole_frames, 64, True) == whole_frames
    remainder = Plan(1, 1, 0, 64, remainder=True)                # cut at lease time: it will be split
    assert with_pretrace([remainder], 64, True) == [Plan(1, 1, 0, 64, "pretrace"), remainder]


def test_a_frames_pre_pass_is_cut_into_block_aligned_bands_when_the_farm_asks():
    Plan = UnitPlan
    units = [Plan(1, 1, 0, 96, remainder=True)]
    assert with_pretrace(units, 96, True, strips.plan_strips(96, 3)) == [
        Plan(1, 1, 0, 32, "pretrace"), Plan(1, 1, 32, 64, "pretrace"), Plan(1, 1, 64, 96, "pretrace"), units[0]]
    assert with_pretrace(units, 96, True, strips.plan_strips(96, 8, 64)) == [
        Plan(1, 1, 0, 64, "pretrace"), Plan(1, 1, 64, 96, "pretrace"), units[0]]
    assert [radiosity.pretrace_parts(nodes, bands) for nodes, bands in ((0, 4), (1, 4), (2, 4), (2, 1), (3, 99))
            ] == [1, 1, 4, 1, radiosity.MAX_PARTS]                      # one node: nobody to share with
    assert [radiosity.pretrace_parts(nodes, radiosity.AUTO) for nodes in (1, 2, 3, 5)] == [1, 4, 6, radiosity.MAX_PARTS]
    # Bands of at least three block rows unless asked: 480 rows in 32-row blocks take 4, 256 rows 2, 120 rows 1.
    assert [radiosity.pretrace_parts(2, radiosity.AUTO, rows) for rows in (15, 8, 4)] == [4, 2, 1]
    assert radiosity.pretrace_parts(2, 4, 4) == 4


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 600), st.integers(1, 900), st.sampled_from([8, 16, 32, 64]), st.integers(1, 8),
       st.lists(st.floats(0.0, 20.0), min_size=1, max_size=8))
@example(65, 1, 16, 2, [0.0, 0.0])    # five block rows: too few for two bands of three
def test_pre_pass_bands_cut_by_cost_take_every_block_once_and_cost_alike(height, width, block, parts, costs):
    """radiosity.bands_by_cost: bands in order covering the frame, `parts` of them where the frame has the
    block rows, each at least MIN_BAND_BLOCKS block rows where it has as many for all (else a block row);
    their blocks (strips.band_serials) are every block of the frame once; two bands cost no more than equal
    ones would, where those are as tall as the rules ask."""
    rows = strips.block_count(height, block)
    measured = [(start, end, STARTUP + cost)
                for (start, end), cost in zip(strips.plan_strips(height, len(costs), block), costs)]
    bands = radiosity.bands_by_cost(height, block, parts, measured)
    assert bands[0][0] == 0 and bands[-1][1] == height and len(bands) == min(parts, rows)
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    least = radiosity.least_band_rows(height, block, len(bands))
    assert least >= min(radiosity.MIN_BAND_BLOCKS * block, height // len(bands), block)
    assert all(end - start >= least for start, end in bands)
    serials = [serial for start, end in bands for serial in strips.band_serials(width, height, block, start, end)]
    assert serials == list(range(strips.block_count(width, block) * rows))
    equal = strips.plan_strips(height, 2, block)
    if len(bands) == 2 and all(end - start >= least for start, end in equal):   # a cut the rules allow
        density = [0.0] * height
        for start, end, seconds in measured:
            density[start:end] = [max(radiosity.MIN_BAND_WORK, seconds - STARTUP) / (end - start)] * (end - start)
        def worst(cut):
            return max(sum(band) for band in ([*density[start:end]] for start, end in cut))
        assert worst(bands) <= worst(equal) + 1e-6


def test_a_scenes_next_pre_pass_is_cut_by_what_its_last_ones_bands_took(tmp_path):
    """A one-core box pretraces one band at a time (its spare slot gets nothing while another box may take
    the next); once a pre-pass of the scene at that size is in, the next one goes out in one band per node,
    cut so that they cost alike by what its bands took."""
    farm, store = stepped_farm(tmp_path / "data")
    info = {"povray": "3.7", "slots": 2, "cores": 1, "threads": 1, "interleave": True}
    a, b = (farm.call("nodes.register", name, {**info, "machine": name})["node_id"] for name in ("boxA", "boxB"))
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    job = submit(farm, scene, width=64, height=480, strips="auto")
    first = farm.call("nodes.poll", a)
    assert first["kind"] == "pretrace" and farm.call("nodes.poll", a) == {}     # box A's spare slot
    cost = {0: 0.2, 128: 0.4, 256: 3.0, 384: 3.0}     # rows 0-255 a cheap sky, the rest dear
    measured, task, node = [], first, a
    while task and task["kind"] == "pretrace":
        assert (task["row_start"], task["row_end"]) in strips.plan_strips(480, 4, 32)
        seconds = STARTUP + cost[task["row_start"]]
        farm.call("nodes.complete", node, task["lease"], Binary(compress_rows(b"C1\ta\n")), seconds)
        measured.append((task["row_start"], task["row_end"], seconds))
        node = b if node == a else a
        task = farm.call("nodes.poll", node)
    assert len(measured) == 4
    farm.call("jobs.cancel", job)
    submit(farm, scene, width=64, height=480, strips="auto")
    bands = [farm.call("nodes.poll", node) for node in (a, b)]
    expected = radiosity.bands_by_cost(480, 32, 2, measured)
    assert [(t["kind"], t["row_start"], t["row_end"]) for t in bands] == [("pretrace", *band) for band in expected]
    assert expected[0][1] > 320          # most rows to the band over the cheap sky
    store.close()


def test_a_scenes_next_pre_pass_is_cut_by_where_its_bands_pretrace_went(tmp_path):
    """Bands that say where their pretrace went (`costs`, feature unit_costs) cut the next pre-pass by those
    times, not by their seconds spread evenly: here most of the lower band's cost lies in rows 352-383."""
    farm, store = stepped_farm(tmp_path / "data", pretrace_bands=2)
    info = {"povray": "3.7", "slots": 2, "cores": 1, "threads": 1, "interleave": True}
    a, b = (farm.call("nodes.register", name, {**info, "machine": name})["node_id"] for name in ("boxA", "boxB"))
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    job = submit(farm, scene, width=64, height=480, strips="auto")
    top, bottom = farm.call("nodes.poll", a), farm.call("nodes.poll", b)
    assert [(t["row_start"], t["row_end"]) for t in (top, bottom)] == [(0, 256), (256, 480)]
    sky = [[row, row + 32, 0.1] for row in range(0, 256, 32)]
    floor = [[row, row + 32, {352: 3.0}.get(row, 0.05 if row < 352 else 0.3)] for row in range(256, 480, 32)]
    farm.call("nodes.complete", a, top["lease"], Binary(compress_rows(b"C1\ta\n")), 1.8, "zlib", {}, 0.0, sky)
    farm.call("nodes.complete", b, bottom["lease"], Binary(compress_rows(b"C1\tb\n")), 5.3, "zlib", {}, 0.0, floor)
    farm.call("jobs.cancel", job)
    submit(farm, scene, width=64, height=480, strips="auto")
    bands = [farm.call("nodes.poll", node) for node in (a, b)]
    expected = radiosity.bands_by_cost(480, 32, 2, [tuple(cost) for cost in sky + floor], 0.0)
    assert [(t["row_start"], t["row_end"]) for t in bands] == expected
    assert 360 < expected[0][1] < 376    # evenly spread, the lower band's 5.3 s would have cut near row 336
    store.close()


def test_a_node_says_where_its_bands_pretrace_went_and_the_controller_checks_it(tmp_path):
    farm, store = stepped_farm(tmp_path / "data")
    node = farm.call("nodes.register", "boxA", {"povray": "3.7", "interleave": True})["node_id"]
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    submit(farm, scene, width=64, height=96, strips=3)
    band = farm.call("nodes.poll", node)
    for costs in ([[0, 200, 1.0]], [[10, 5, 1.0]], [[0, 32, -1.0]], [[0, 32]], "0-32"):
        with pytest.raises(FarmError) as refused:
            farm.call("nodes.complete", node, band["lease"], Binary(b""), 1.0, "zlib", {}, 0.0, costs)
        assert refused.value.code is Code.BAD_ARGUMENT
    assert farm.call("nodes.complete", node, band["lease"], Binary(b""), 1.0, "zlib", {}, 0.0, [[0, 96, 0.5]])
    store.close()


@given(st.lists(st.tuples(st.floats(0.01, 2.0), st.integers(0, 3000)), min_size=2, max_size=30),
       st.integers(0, 200), st.integers(1, 300), st.integers(1, 64), st.integers(1, 40))
def test_a_bands_sweep_puts_its_time_on_its_rows_and_nothing_elsewhere(steps, row_start, rows, width, bin_rows):
    at, samples = 0.0, []
    for pause, pixels in steps:
        at += pause
        samples.append((at, min(pixels, rows * width)))
    samples.sort(key=lambda sample: sample[1])
    samples = [(time_, done) for time_, (_, done) in zip(sorted(t for t, _ in samples), samples)]
    costs = radiosity.sweep_costs(samples, at + 1.0, [(row_start, row_start + rows)], width, bin_rows)
    assert [start for start, _, _ in costs] == list(range(row_start, row_start + rows, bin_rows))
    assert costs[-1][1] == row_start + rows and all(seconds >= 0 for _, _, seconds in costs)
    assert abs(sum(seconds for _, _, seconds in costs) - (at + 1.0 - samples[0][0])) < 1e-3 * len(costs) + 1e-6


def test_a_bands_sweep_is_read_off_povrays_pixel_counter(tmp_path):
    """Rows 100-139 of a 10-pixel-wide frame: 10 rows in the first second, 20 in the next half, the last 10 in
    two seconds; the watch saw the counter every so often and the final pass begin at 3.5 s."""
    log, now = tmp_path / "povray.log", [0.0]
    watch = radiosity.PretraceWatch(log, tmp_path / "cache.rad", band=True, clock=lambda: now[0])
    for now[0], done in ((0.0, 0), (1.0, 100), (1.5, 300), (3.5, 40)):
        with open(log, "ab") as out:
            out.write(f"Rendered {done} of 4800 pixels\r".encode())
        watch()
    assert watch.verdict == radiosity.PRETRACED and watch.ended == 3.5
    assert radiosity.sweep_costs(watch.samples, watch.ended, [(100, 140)], 10, 10) == [
        (100, 110, 1.0), (110, 120, 0.25), (120, 130, 0.25), (130, 140, 2.0)]


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 700), st.sampled_from([8, 16, 32, 64]), st.integers(1, 8))
@example(384, 64, 32, 2)      # the least frame that folds in two: pieces of three block rows
@example(481, 10, 16, 3)      # an odd height: the middle row goes to the middle band
def test_folded_bands_take_every_block_once_as_much_of_the_top_as_of_the_bottom(height, width, block, parts):
    """radiosity.folded_bands and band_pieces: `parts` bands, each a piece of the upper half and its mirror
    below (the middle one piece), taking every block of the frame once (strips.band_serials), of rows alike,
    every piece at least MIN_BAND_BLOCKS block rows; None where pieces would be smaller."""
    bands = radiosity.folded_bands(height, block, parts)
    if parts < 2 or height < 2 * parts * radiosity.MIN_BAND_BLOCKS * block:
        assert bands is None
        return
    assert len(bands) == parts and bands[0][0] == 0 and bands[-1][1] == (height + 1) // 2
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    pieces = [radiosity.band_pieces(height, start, end, True) for start, end in bands]
    assert [len(band) for band in pieces] == [2] * (parts - 1) + [1]
    serials = sorted(serial for band in pieces for start, end in band
                     for serial in strips.band_serials(width, height, block, start, end))
    assert serials == list(range(strips.block_count(width, block) * strips.block_count(height, block)))
    rows = [sum(end - start for start, end in band) for band in pieces]
    assert max(rows) - min(rows) <= 3
    assert all(end - start >= radiosity.MIN_BAND_BLOCKS * block for band in pieces for start, end in band)
    assert radiosity.band_pieces(height, 0, 40, False) == [(0, 40)]


def test_a_folded_bands_sweep_puts_its_time_on_its_rows_and_their_mirror():
    """Rows 0-19 and then 80-99 of a 10-pixel-wide frame, 200 pixels each: the counter's first 200 pixels are
    the upper piece's, the next 200 the lower's."""
    samples = [(0.0, 0), (1.0, 100), (2.0, 200), (3.0, 300)]
    assert radiosity.sweep_costs(samples, 5.0, radiosity.band_pieces(100, 0, 20, True), 10, 10) == [
        (0, 10, 1.0), (10, 20, 1.0), (80, 90, 1.0), (90, 100, 2.0)]


def test_an_untimed_folded_band_spreads_its_seconds_over_both_pieces():
    timed = Finished("a", 0, 120, 3.5, parts=((0, 120, 0.5), (360, 480, 2.5)), pieces=((0, 120), (360, 480)))
    sky = Finished("b", 120, 240, 0.9, pieces=((120, 240), (240, 360)))    # too quick to time: 0.4 s past 0.5
    assert radiosity.band_costs([timed, sky]) == [(0, 120, 0.5), (360, 480, 2.5), (120, 240, 0.2), (240, 360, 0.2)]
    untimed = [Finished("a", 0, 120, STARTUP + 2.0, pieces=((0, 120), (360, 480))), Finished("b", 120, 240, 0.2)]
    assert radiosity.band_costs(untimed) == [(0, 120, 1.0), (360, 480, 1.0), (120, 240, radiosity.MIN_BAND_WORK)]


def test_caches_of_a_pre_pass_cut_into_bands_merge_into_one_list_of_samples():
    assert radiosity.merge_caches([b"C1\t1\nC1\t2\n", b"", b"C1\t3\nC1\t4"]) == b"C1\t1\nC1\t2\nC1\t3\n"


def test_a_frames_strips_wait_for_every_band_of_its_pre_pass_and_load_their_caches_merged(tmp_path):
    farm, store = stepped_farm(tmp_path / "data", pretrace_bands=4)
    a, b = (farm.call("nodes.register", name, {"povray": "3.7", "slots": 1, "machine": name,
                                                 "interleave": True})["node_id"]
            for name in ("boxA", "boxB"))
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    job = submit(farm, scene, width=4, height=96, strips="auto")
    first, second = farm.call("nodes.poll", a), farm.call("nodes.poll", b)     # two boxes, two bands at once
    assert [(t["kind"], t["row_start"], t["row_end"]) for t in (first, second)] == [
        ("pretrace", 0, 32), ("pretrace", 32, 64)]
    farm.call("nodes.complete", a, first["lease"], Binary(compress_rows(b"C1\ta\n")), 1.0)
    third = farm.call("nodes.poll", a)
    assert (third["kind"], third["row_start"], third["row_end"]) == ("pretrace", 64, 96)
    farm.call("nodes.complete", a, third["lease"], Binary(b""), 1.0)       # no samples in its rows
    assert farm.call("nodes.poll", a) == {}                                 # the strips wait for the last band
    farm.call("nodes.complete", b, second["lease"], Binary(compress_rows(b"C1\tb\n")), 1.0)
    strip = farm.call("nodes.poll", a)
    assert strip["kind"] == "rows" and strip["radiosity_cache"]
    cache = farm.call("nodes.radiosity_cache", a, strip["lease"])
    assert zlib.decompress(cache.data) == b"C1\ta\nC1\tb\n"
    assert farm.call("jobs.status", job)["state"] == "rendering"
    store.close()


def test_a_scenes_first_pre_pass_goes_out_in_one_folded_band_per_node(tmp_path):
    """Nothing of the scene measured yet: each of two boxes gets one band of the frame folded at its middle
    (`fold`), a quarter of its top with the mirror quarter of its bottom, or its middle half; its node's
    costs may name the mirror rows, no others. A node from before folded bands is declined them, and while
    one is live the pre-pass goes out in even bands. The next pre-pass is cut by cost, unfolded."""
    farm, store = stepped_farm(tmp_path / "data")
    info = {"povray": "3.7", "slots": 2, "cores": 1, "threads": 1, "interleave": True,
            radiosity.NODE_FOLDS_BANDS: True}
    a, b = (farm.call("nodes.register", name, {**info, "machine": name})["node_id"] for name in ("boxA", "boxB"))
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    job = submit(farm, scene, width=64, height=480, strips="auto")
    bands = [farm.call("nodes.poll", node) for node in (a, b)]
    assert [(t["kind"], t["row_start"], t["row_end"], t["fold"]) for t in bands] == [
        ("pretrace", 0, 120, True), ("pretrace", 120, 240, True)]
    costs = [[[0, 120, 0.5], [360, 480, 3.0]], [[120, 240, 1.0], [240, 360, 1.5]]]
    with pytest.raises(FarmError) as refused:
        farm.call("nodes.complete", a, bands[0]["lease"], Binary(b""), 4.0, "zlib", {}, 0.0, costs[1])
    assert refused.value.code is Code.BAD_ARGUMENT
    for node, task, cost in zip((a, b), bands, costs):
        farm.call("nodes.complete", node, task["lease"], Binary(compress_rows(b"C1\ta\n")), 4.0, "zlib", {}, 0.0,
                  cost)
    farm.call("jobs.cancel", job)
    job = submit(farm, scene, width=64, height=480, strips="auto")
    bands = [farm.call("nodes.poll", node) for node in (a, b)]
    expected = radiosity.bands_by_cost(480, 32, 2, [tuple(part) for cost in costs for part in cost], 0.0)
    assert [(t["row_start"], t["row_end"], t["fold"]) for t in bands] == [(*band, False) for band in expected]
    assert 300 < expected[0][1] < 400
    farm.call("jobs.cancel", job)
    job = submit(farm, scene, width=64, height=960, strips="auto")     # a new size: nothing measured
    old = farm.call("nodes.register", "old", {"povray": "3.7", "slots": 1, "machine": "old", "interleave": True})
    assert farm.call("nodes.poll", old["node_id"]) == {}         # the bands are folded: not for it
    assert farm.call("nodes.poll", a)["fold"]
    farm.call("jobs.cancel", job)
    submit(farm, scene, width=64, height=1920, strips="auto")    # with it live: even bands, two per node
    band = farm.call("nodes.poll", b)
    assert (band["row_start"], band["row_end"], band["fold"]) == (0, 320, False)
    store.close()


def _two_band_farm(tmp_path):
    """A stepped farm of boxes A and B (which can wait for a cache) and an older node, with a radiosity job
    whose pre-pass' two bands A and B have leased."""
    farm, store = stepped_farm(tmp_path / "data", pretrace_bands=2)
    a, b, old = (farm.call("nodes.register", name, {"povray": "3.7", "slots": 2, "machine": name, "interleave": True,
                                                     **({radiosity.NODE_WAITS_FOR_CACHE: True} if name != "old" else {})}
                           )["node_id"] for name in ("boxA", "boxB", "old"))
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    submit(farm, scene, width=4, height=96, strips="auto")
    bands = farm.call("nodes.poll", a), farm.call("nodes.poll", b)
    assert [(t["kind"], t["row_start"], t["row_end"]) for t in bands] == [("pretrace", 0, 64), ("pretrace", 64, 96)]
    return farm, store, (a, b, old), bands


def test_a_node_that_can_wait_starts_its_strip_while_the_pre_pass_renders(tmp_path):
    """Once every band of a frame's pre-pass is leased, a node that registered `cache_later` leases a strip
    with `cache_pending`: its cache is NOT_READY until the last band is in, and a fetch that waits gets the
    bands merged as soon as it is. A node that cannot wait gets nothing until then."""
    farm, store, (a, b, old), (first, second) = _two_band_farm(tmp_path)
    assert farm.call("nodes.poll", old) == {}                     # it could only load an incomplete cache
    strip = farm.call("nodes.poll", a)
    assert strip["kind"] == "rows" and strip["radiosity_cache"] and strip["cache_pending"]
    farm.call("nodes.complete", a, first["lease"], Binary(compress_rows(b"C1\ta\n")), 1.0)
    with pytest.raises(FarmError) as refused:
        farm.call("nodes.radiosity_cache", a, strip["lease"])
    assert refused.value.code is Code.NOT_READY
    fetched = {}
    waiting = threading.Thread(target=lambda: fetched.update(
        cache=farm.call("nodes.radiosity_cache", a, strip["lease"], 20.0)))
    waiting.start()
    time.sleep(0.2)
    assert waiting.is_alive()                                     # it waits for the last band...
    farm.call("nodes.complete", b, second["lease"], Binary(compress_rows(b"C1\tb\n")), 1.0)
    waiting.join(5)
    assert zlib.decompress(fetched["cache"].data) == b"C1\ta\nC1\tb\n"   # ...and gets both, merged
    later = farm.call("nodes.poll", old)                          # the cache is complete: any node now
    assert later["kind"] == "rows" and later["radiosity_cache"] and not later["cache_pending"]
    store.close()


def test_a_strip_waiting_for_a_band_that_went_back_to_the_queue_is_handed_back_for_it(tmp_path):
    """A band's node hands it back while another node's strip waits for the cache: that node's slots may all
    be waiting so, so its strip is handed back (STALE_LEASE to the waiting fetch) and its next poll takes the
    band before the strips."""
    farm, store, (a, b, old), (first, second) = _two_band_farm(tmp_path)
    farm.call("nodes.complete", a, first["lease"], Binary(compress_rows(b"C1\ta\n")), 1.0)
    strip = farm.call("nodes.poll", a)
    assert strip["cache_pending"]
    fetched = {}

    def fetch():
        try:
            farm.call("nodes.radiosity_cache", a, strip["lease"], 20.0)
        except FarmError as err:
            fetched["code"] = err.code
    waiting = threading.Thread(target=fetch)
    waiting.start()
    time.sleep(0.2)
    farm.call("nodes.release", b, second["lease"])               # box B stops
    waiting.join(5)
    assert fetched == {"code": Code.STALE_LEASE}
    again = farm.call("nodes.poll", a)
    assert (again["kind"], again["row_start"], again["row_end"]) == ("pretrace", 64, 96)
    later = farm.call("nodes.poll", a)          # every band in flight again: the strips go again
    assert later["kind"] == "rows" and later["cache_pending"]
    store.close()


def test_a_strip_leased_before_a_pre_pass_that_left_no_cache_renders_without_one(tmp_path):
    """The bands find no radiosity: the strip that waited is refused its cache (BAD_ARGUMENT), hands its
    lease back (the node's `release`), and is leased again to render the scene as it is."""
    farm, store, (a, b, old), bands = _two_band_farm(tmp_path)
    strip = farm.call("nodes.poll", a)
    assert strip["cache_pending"]
    for node, band in zip((a, b), bands):
        farm.call("nodes.complete", node, band["lease"], Binary(b""), 1.0)
    with pytest.raises(FarmError) as refused:
        farm.call("nodes.radiosity_cache", a, strip["lease"], 1.0)
    assert refused.value.code is Code.BAD_ARGUMENT
    farm.call("nodes.release", a, strip["lease"])
    again = farm.call("nodes.poll", old)
    assert (again["row_start"], again["row_end"]) == (strip["row_start"], strip["row_end"])
    assert not again["radiosity_cache"] and not again["cache_pending"]
    store.close()


def test_the_wrapper_includes_the_scene_and_refuses_names_it_cannot_quote():
    text = radiosity.wrapper_text("cornell.pov")
    assert text.startswith('#include "cornell.pov"\n') and "always_sample off" in text
    assert radiosity.wrapper_text('a"b.pov') is None and radiosity.wrapper_text("a\\b.pov") is None


def test_a_cache_cut_by_a_signal_keeps_whole_lines():
    assert radiosity.trim_cache(b"C2\t1\t2\nC2\t3\t4\nC2\t5") == b"C2\t1\t2\nC2\t3\t4\n"
    assert radiosity.trim_cache(b"C2\t5") == b""


def test_the_watch_stops_a_pretrace_when_the_final_pass_begins(tmp_path):
    log, cache = tmp_path / "povray.log", tmp_path / "cache.rad"
    watch = radiosity.PretraceWatch(log, cache)
    cache.write_bytes(b"C2\t1\n")
    log.write_bytes(b"Rendered 48 of 1000 pixels (4%)\rRendered 900 of 1000 pi")
    assert not watch()
    with open(log, "ab") as handle:                   # the rest of the line, then the counter drops
        handle.write(b"xels (90%)\rRendered 990 of 1000 pixels\rRendered 64 of 1000 pixels (6%)\r")
    assert watch() and watch.verdict == radiosity.PRETRACED


def test_the_watch_sees_a_scene_without_radiosity(tmp_path):
    log, cache = tmp_path / "povray.log", tmp_path / "cache.rad"
    cache.write_bytes(b"")                            # POV-Ray creates the file, and writes nothing
    watch, band = radiosity.PretraceWatch(log, cache), radiosity.PretraceWatch(log, cache, band=True)
    log.write_bytes(b"Rendered 50 of 1000 pixels (5%)\n")
    assert not watch() and not band()
    with open(log, "ab") as handle:
        handle.write(b"Rendered 150 of 1000 pixels (15%)\n")
    assert watch() and watch.verdict == radiosity.NO_RADIOSITY
    assert not band()                                 # a band's first rows may be sky: it goes on


def test_a_bundle_mentions_radiosity_in_its_scene_or_includes(tmp_path):
    def zipped(files: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return buffer.getvalue()
    assert mentions(zipped({"s.pov": b"#include \"l.inc\"", "l.inc": b"global_settings{radiosity{}}"}),
                           b"radiosity", "s.pov")
    assert not mentions(zipped({"s.pov": b"sphere{0,1}", "t.png": b"radiosity"}), b"radiosity", "s.pov")
    # a word cut across two read chunks is still found
    assert mentions(zipped({"s.pov": b"x" * (65536 - 4) + b"radiosity"}), b"radiosity", "s.pov")


# -- real renders ----------------------------------------------------------------------------------

def _load(path: Path) -> Raster:
    data = path.read_bytes()
    return decode_png(data) if path.suffix == ".png" else decode_ppm(data)


def _difference(a: Raster, b: Raster, edge_rows: set[int]) -> dict[str, float]:
    """Mean and max absolute difference over all channels, and the mean in edge rows and other rows."""
    stride = a.width * a.channels
    row_means, worst = [], 0
    for y in range(a.height):
        diffs = [abs(p - q) for p, q in zip(a.pixels[y * stride:(y + 1) * stride],
                                            b.pixels[y * stride:(y + 1) * stride])]
        row_means.append(sum(diffs) / len(diffs))
        worst = max(worst, max(diffs))
    edge = [row_means[y] for y in sorted(edge_rows)]
    other = [m for y, m in enumerate(row_means) if y not in edge_rows]
    return {"mean": sum(row_means) / len(row_means), "max": worst,
            "edge": sum(edge) / len(edge), "other": sum(other) / len(other)}


def _average(results: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in results) / len(results)


NOISE = 1.3   # radiosity is a random process: room for the spread of a statistic over a few renders
BANDS_NOISE = 2.0   # a pre-pass cut into bands of two block rows: see the test of a node killed in one


@needs_povray
def test_strips_of_a_radiosity_scene_match_single_renders_and_show_no_seam(tmp_path):
    """cornell.pov at 160x120 in 4 strips on 2 nodes, twice, against 5 single-process renders.
    Measured here: farm vs single mean 0.29-0.37 over runs of this test, 1.00-1.25 times the singles'
    own 0.28-0.32 (about 1.1 typically), largest differences 24-32 both ways, strip-edge rows 0.17-0.27
    against 0.28-0.38 elsewhere. Strips rendered independently (--no-radiosity-prepass) score 0.49-0.53
    with edge rows at 0.58: a seam, and this test fails them."""
    width, height, strip_count = 160, 120, 4
    singles = [_load(native_render(CORNELL, width, height, [], tmp_path / f"single{i}.ppm", "P"))
               for i in range(5)]
    farms = []
    for run in range(2):
        out = tmp_path / f"farm{run}.png"
        done = run_cli("render", str(CORNELL), "--nodes", "2", "--width", str(width), "--height", str(height),
                       "--strips", str(strip_count), "--output", str(out))
        assert done.returncode == 0, done.stderr
        farms.append(_load(out))
    edges = [end for _, end in strips.plan_strips(height, strip_count)][:-1]
    edge_rows = {row for edge in edges for row in (edge - 1, edge)}   # the rows on both sides of each edge

    between_singles = [_difference(a, b, edge_rows) for a, b in itertools.combinations(singles, 2)]
    farm_vs_single = [_difference(farm, single, edge_rows) for farm in farms for single in singles]
    report = (f"farm vs single: mean {_average(farm_vs_single, 'mean'):.3f} max "
              f"{max(r['max'] for r in farm_vs_single)}, edge rows {_average(farm_vs_single, 'edge'):.3f} "
              f"other rows {_average(farm_vs_single, 'other'):.3f}; single vs single: mean "
              f"{_average(between_singles, 'mean'):.3f} max {max(r['max'] for r in between_singles)}")
    print(report)
    assert _average(farm_vs_single, "mean") <= NOISE * _average(between_singles, "mean"), report
    assert max(r["max"] for r in farm_vs_single) <= NOISE * max(r["max"] for r in between_singles), report
    # No seam: the rows along strip edges differ no more than the others.
    assert _average(farm_vs_single, "edge") <= _average(farm_vs_single, "other"), report


PHOTONS_AND_RADIOSITY = """global_settings { radiosity { pretrace_start 0.08 pretrace_end 0.04 count 40 }
                  photons { spacing 0.05 } }
camera { location <0, 2, -5> look_at 0 }
light_source { <3, 5, -3> rgb 1 }
plane { y, -1 pigment { rgb 0.8 } }
sphere { 0, 1 pigment { rgbf <1, 1, 1, 0.9> } interior { ior 1.5 } photons { target refraction on } }
"""


@needs_povray
def test_a_nodes_band_of_the_pre_pass_shoots_the_photon_map_its_strips_load(farm, tmp_path):
    """On two boxes, each pretraces a band of the frame and shoots its photon map as it does; the box's
    strips, in the sheared job's fine blocks, load that map instead of shooting it again."""
    scene = tmp_path / "scene.pov"
    scene.write_text(PHOTONS_AND_RADIOSITY)
    farm.start_controller()
    for name in ("boxA", "boxB"):
        farm.start_node(name, "--machine", name, "--cores", "1")
    wait_until(lambda: len(farm.client.call("nodes.list")) == 2, what="both nodes to register")
    done = run_cli("submit", str(scene), "--width", "320", "--height", "240", "--output", str(tmp_path / "out.png"),
                   "--controller", farm.url)
    assert done.returncode == 0, done.stderr
    assert farm.log("controller").count("radiosity pre-pass done by") == 2
    for name in ("boxA", "boxB"):     # each box a band (policy.band_waits), then strips
        log = farm.log(name)
        assert "radiosity pre-pass of rows" in log and "photon map loaded" in log and " photons shot" not in log, log


@needs_povray
def test_a_scene_that_only_mentions_radiosity_is_rendered_exactly(tmp_path):
    """The word alone makes the farm run a pre-pass; the pre-pass finds radiosity off, and the strips
    render the untouched scene: bit-identical to POV-Ray's own render."""
    scene = tmp_path / "plain.pov"
    scene.write_text("// radiosity is off in this scene: global_settings { radiosity { } } stays a comment\n"
                     + (SCENES / "advanced/wineglass.pov").read_text(errors="replace"))
    for part in (SCENES / "advanced").glob("*.inc"):
        (tmp_path / part.name).write_bytes(part.read_bytes())
    out = tmp_path / "farm.png"
    done = run_cli("render", str(scene), "--nodes", "2", "--width", "160", "--height", "120", "--strips", "3",
                   "--output", str(out), "--log-level", "INFO")
    assert done.returncode == 0, done.stderr
    assert "no radiosity samples" in done.stderr
    assert_same_pixels(out, native_render(scene, 160, 120, [], tmp_path / "native.png"))


@needs_povray
def test_povray_loads_a_saved_cache_into_a_strip_through_the_wrapper(tmp_path):
    """POV-Ray itself: a cache saved by a full-frame run loads into a strip (+RFI) through the wrapper."""
    work = tmp_path / "scene"
    work.mkdir()
    (work / "cornell.pov").write_bytes(CORNELL.read_bytes())
    (work / radiosity.WRAPPER_SCENE).write_text(radiosity.wrapper_text("cornell.pov"))
    base = ["povray", "+W64", "+H48", "-D", f"+L{CORNELL.parent}", f"+RF{radiosity.CACHE_FILE}"]
    subprocess.run([*base, "+Icornell.pov", "+RFO", "-F"], cwd=work, check=True, capture_output=True, timeout=120)
    assert (work / radiosity.CACHE_FILE).stat().st_size > 0
    strips_run = {}
    for load in ("+RFI", "-RFI"):
        strips_run[load] = subprocess.run([*base, f"+I{radiosity.WRAPPER_SCENE}", load, "+SR17", "+ER32", "+FP",
                                           "+Os.ppm"], cwd=work, capture_output=True, text=True, timeout=120)
        assert strips_run[load].returncode == 0, strips_run[load].stderr
    loaded = povray.render_statistics(strips_run["+RFI"].stderr)
    alone = povray.render_statistics(strips_run["-RFI"].stderr)
    # The cache did the work: the strip reused its samples and calculated (almost) none of its own.
    assert loaded["radiosity_reused"] > 0
    assert loaded["radiosity_calculated"] * 10 <= alone["radiosity_calculated"], (loaded, alone)
    assert povray.sharing_report(loaded).startswith("radiosity samples")


@needs_povray
def test_a_cache_fed_through_a_fifo_after_povray_parsed_renders_the_same_pixels(tmp_path):
    """POV-Ray opens its cache after the parse and waits on a FIFO for its writer: a strip started before its
    cache is complete renders bit-identical to one that found the cache file, and the wait is measured."""
    work = tmp_path / "scene"
    work.mkdir()
    (work / "cornell.pov").write_bytes(CORNELL.read_bytes())
    (work / radiosity.WRAPPER_SCENE).write_text(radiosity.wrapper_text("cornell.pov"))
    base = ["povray", "+W64", "+H48", "-D", f"+L{CORNELL.parent}"]
    saved = tmp_path / "saved.rca"
    subprocess.run([*base, "+Icornell.pov", f"+RF{saved}", "+RFO", "-F"], cwd=work, check=True, capture_output=True,
                   timeout=120)
    strip = [*base, f"+I{radiosity.WRAPPER_SCENE}", f"+RF{radiosity.CACHE_FILE}", "+RFI", "+SR17", "+ER32", "+FP"]
    (work / radiosity.CACHE_FILE).write_bytes(saved.read_bytes())
    subprocess.run([*strip, "+Ofile.ppm"], cwd=work, check=True, capture_output=True, timeout=120)
    (work / radiosity.CACHE_FILE).unlink()

    def fetch(ended):
        time.sleep(1.0)        # the last band of the pre-pass is still rendering
        return saved
    feed = CacheFeed(work / radiosity.CACHE_FILE, fetch, "test strip")
    try:
        subprocess.run([*strip, "+Ofifo.ppm"], cwd=work, check=True, capture_output=True, timeout=120)
    finally:
        feed.close()
    assert not feed.failed() and not (work / radiosity.CACHE_FILE).exists()
    assert _load(work / "fifo.ppm") == _load(work / "file.ppm")
    assert 0.3 < feed.waited < 1.0


def test_a_strip_waiting_for_its_cache_never_keeps_the_nodes_band_waiting_for_the_photon_map(tmp_path):
    """A strip whose POV-Ray waits for the frame's radiosity cache publishes nothing until the cache comes; if
    it were the frame's photon publisher, the node's band of the pre-pass (whose cache it waits for) would
    wait for the map. So it shoots the map for itself, leaving the lock free; once a map is in, it loads it."""
    maps = PhotonMaps(tmp_path / "maps")
    maps.directory.mkdir()
    text = "global_settings { photons { spacing 0.05 } }\nsphere { 0, 1 }\n"
    scene = tmp_path / "waiting.pov"
    scene.write_text(text)
    with maps.shared("1-1", scene, publish=False) as publisher:
        assert publisher is None and scene.read_text() == text
        assert maps._lock("1-1").acquire(blocking=False)        # free for the band
        maps._lock("1-1").release()
    band = tmp_path / "band.pov"
    band.write_text(text)
    with maps.shared("1-1", band) as publisher:
        assert publisher is not None and "save_file" in band.read_text()
        publisher.produced.write_bytes(b"photons")
    with maps.shared("1-1", scene, publish=False) as publisher:
        assert publisher is None and "load_file" in scene.read_text()
        assert (tmp_path / photons.PHOTON_FILE).read_bytes() == b"photons"


def test_a_cache_that_cannot_be_had_stops_the_strip_and_its_reader_is_never_fed(tmp_path):
    """The lease is gone while POV-Ray waits on the FIFO: the feed says failed (the run stops POV-Ray), keeps
    the reader waiting rather than feed it nothing, and `close` ends it all and takes the FIFO away."""
    def fetch(ended):
        raise FarmError(Code.STALE_LEASE)
    feed = CacheFeed(tmp_path / radiosity.CACHE_FILE, fetch, "test strip")
    read = {}
    reader = threading.Thread(target=lambda: read.update(data=(tmp_path / radiosity.CACHE_FILE).read_bytes()),
                              daemon=True)
    reader.start()
    wait_until(feed.failed, timeout=5, what="the feed to fail")
    assert feed.error.code is Code.STALE_LEASE and feed.waited == 0.0
    time.sleep(0.1)
    assert reader.is_alive()       # POV-Ray is not fed an empty cache to render with
    feed.close()                   # as when POV-Ray is stopped
    reader.join(5)
    assert read == {"data": b""} and not (tmp_path / radiosity.CACHE_FILE).exists()


@needs_povray
def test_a_scenes_first_pre_pass_in_folded_bands_matches_single_renders_and_shows_no_seam(farm, tmp_path):
    """cornell 128x384 on two nodes, nothing of it measured: its pre-pass goes out in one folded band per node
    (rows 0-95 with 288-383, and 96-287). Strips loading the joined caches differ from single renders no more
    than those differ from each other, and no more beside the bands' edges than elsewhere (at 64 pixels
    across, four rows beside the edges were too few to say: their ratio to the rest moved 0.7-1.2 between
    single renders)."""
    width, height = 128, 384
    farm.start_controller()
    farm.start_node("boxA", "--machine", "boxA")
    farm.start_node("boxB", "--machine", "boxB")
    wait_until(lambda: len(farm.client.call("nodes.list")) == 2, what="both nodes to register")
    job = submit(farm.client, CORNELL, width=width, height=height, strips=3)
    final = wait_ended(farm.client, job)
    assert final["state"] == "done", final["error"]
    assert sorted((s["row_start"], s["row_end"]) for s in final["strips"] if s["kind"] == "pretrace") == [
        (0, 96), (96, 192)]
    assert "pre-pass of rows 1-96, 289-384" in farm.log("boxA") + farm.log("boxB")
    _assert_like_single_renders(farm.client, job, tmp_path, width, height, (96, 288), NOISE)


@needs_povray
def test_a_node_killed_during_its_band_of_the_pretrace_loses_nothing(farm, tmp_path, monkeypatch):
    """Two nodes share the frame's pretrace; one dies holding a band. Its lease runs out, the other node
    pretraces that band again, and the strips load every band's samples."""
    monkeypatch.setenv("POVFARM_PRETRACE_BANDS", "4")
    farm.start_controller("--lease-timeout", "3")
    victim = farm.start_node("victim")
    farm.start_node("survivor")
    wait_until(lambda: len(farm.client.call("nodes.list")) == 2, what="both nodes to register")
    job = submit(farm.client, CORNELL, width=320, height=256, strips=2)

    def victim_band():
        return [s for s in farm.client.call("jobs.status", job)["strips"]
                if s["kind"] == "pretrace" and s["state"] == "leased" and s["node"].startswith("victim")]
    band = wait_until(victim_band, what="the victim to lease a band of the pretrace")[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    cut_short = [s for s in farm.client.call("jobs.status", job)["strips"] if s["index"] == band["index"]][0]

    final = wait_ended(farm.client, job)
    assert final["state"] == "done", final["error"]
    bands = [s for s in final["strips"] if s["kind"] == "pretrace"]
    assert len(bands) == 4 and all(s["state"] == "done" for s in bands)
    if cut_short["state"] == "leased":                 # killed before it delivered: pretraced again
        again = [s for s in bands if s["index"] == band["index"]][0]
        assert again["attempts"] == 2 and again["node"].startswith("survivor")
    assert "radiosity samples" in farm.log("survivor")  # its strips loaded the merged cache
    # Bands pretrace their blocks as a whole-frame render does (the same block serials, +C), but here four
    # bands of two block rows each (asked for: the default would cut two) leave no block row away from a
    # band's edge, where a band lacks its neighbour's samples and takes its own: measured 1.0-1.5 times the
    # singles' own spread, held to BANDS_NOISE. And seam-free: beside the edges of strips and bands no
    # worse, against the rest of the image, than single renders are.
    _assert_like_single_renders(farm.client, job, tmp_path, 320, 256, (64, 128, 192), BANDS_NOISE)


def _assert_like_single_renders(client, job: int, tmp_path: Path, width: int, height: int, edges: tuple[int, ...],
                                noise: float) -> None:
    """The job's image of cornell differs from three single renders no more than `noise` times as much as they
    differ from each other, and beside `edges` (the rows on both sides of each) no worse, against the rest
    of the image, than single renders are (NOISE): no seam."""
    image = tmp_path / "farm.png"
    image.write_bytes(client.call("jobs.fetch", job).data)
    singles = [_load(native_render(CORNELL, width, height, [], tmp_path / f"single{i}.ppm", "P")) for i in range(3)]
    rows = {row for edge in edges for row in (edge - 1, edge)}
    between = [_difference(a, b, rows) for a, b in itertools.combinations(singles, 2)]
    against = [_difference(_load(image), single, rows) for single in singles]
    report = f"farm vs single {against}; single vs single {between}"
    print(f"farm vs single {_average(against, 'mean'):.3f}, single vs single {_average(between, 'mean'):.3f}")
    assert _average(against, "mean") <= noise * _average(between, "mean"), report
    assert (_average(against, "edge") / _average(against, "other")
            <= NOISE * _average(between, "edge") / _average(between, "other")), report


def test_a_frame_that_goes_out_whole_sets_every_band_of_its_pre_pass_aside(tmp_path):
    farm, store = stepped_farm(tmp_path / "data", machine="box", pretrace_bands=4)   # nodes on the controller's box
    a, b = (farm.call("nodes.register", name, {"povray": "3.7", "slots": 2, "machine": "box", "interleave": True,
                                                "cores": 2, "threads": 2})["node_id"] for name in ("a", "b"))
    scene = write_scene(tmp_path / "scene", "global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    job = submit(farm, scene, width=4, height=128, strips="auto")
    task = farm.call("nodes.poll", a)
    assert (task["kind"], task["row_start"], task["row_end"], task["radiosity_cache"]) == ("rows", 0, 128, False)
    bands = [s for s in farm.call("jobs.status", job)["strips"] if s["kind"] == "pretrace"]
    assert len(bands) == 4 and all(s["state"] == "done" for s in bands)   # set aside, none rendered
    assert farm.call("nodes.poll", b) == {}
    store.close()
