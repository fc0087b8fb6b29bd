"""Units cut at lease time (farm.scheduler): pure properties, then the store cutting remainders for real
through the controller's API with a fake clock (no POV-Ray)."""

from __future__ import annotations

import random
import xmlrpc.client

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from farm import scheduler
from farm.bundle.packing import pack, plan_bundle
from farm.faults import Code, FarmError
from farm.images.png import decode_png
from farm.kinds import PreviewMode
from farm.scheduler import next_cut
from farm.store import Store

from harness import Clock, Stepped, rows_for, stepped_farm, submit, write_scene


def simulate(height: int, block: int, speeds: dict[str, float], row_cost, jitter=None):
    """Nodes (one slot each, `speeds`) lease units off one frame's remainder until nothing is left, each
    node asking when it is free, as the controller would see it. Returns (node, start, end, began, ended)
    per unit. A node that declines asks again when the next unit finishes."""
    start, free = 0, {name: 0.0 for name in speeds}
    done: list[scheduler.Finished] = []
    running: dict[str, tuple[int, int, float, float]] = {}
    units = []
    while start < height:
        now = min(free.values())
        for name, (a, b, began, ended) in list(running.items()):
            if ended <= now:
                done.append(scheduler.Finished(name, a, b, ended - began))
                del running[name]
        asking = min(free, key=lambda name: (free[name], name))
        in_flight = [scheduler.Running(name, b - a, min(1.0, (now - began) / (ended - began)))
                     for name, (a, b, began, ended) in running.items()]
        end = next_cut(asking, start, height, block, {name: 1 for name in speeds}, done, in_flight)
        if end is None:
            later = [ended for _, _, _, ended in running.values() if ended > now]
            assert later, "every slot declined: the frame would starve"
            free[asking] = min(later)
            continue
        seconds = scheduler.STARTUP_SECONDS + sum(row_cost(y) for y in range(start, end)) / speeds[asking]
        seconds *= jitter(len(units)) if jitter else 1.0
        running[asking] = (start, end, now, now + seconds)
        units.append((asking, start, end, now, now + seconds))
        free[asking] = now + seconds
        start = end
    return units


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 3000), block=st.sampled_from([1, 8, 16, 32, 64]), data=st.data())
def test_every_row_once_edges_on_blocks_and_nothing_starves(height, block, data):
    speeds = {f"n{i}": speed for i, speed in enumerate(
        data.draw(st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]), min_size=1, max_size=12)))}
    bands = data.draw(st.lists(st.floats(0.0, 0.05), min_size=1, max_size=10))
    units = simulate(height, block, speeds, lambda y: bands[y * len(bands) // height],
                     jitter=lambda i: 1 + (i % 5 - 2) / 20)
    pieces = sorted((a, b) for _, a, b, _, _ in units)
    assert pieces[0][0] == 0 and pieces[-1][1] == height
    assert all(x[1] == y[0] for x, y in zip(pieces, pieces[1:]))        # no gap, no overlap
    assert all(a % block == 0 and a < b for a, b in pieces)              # block edges, never empty
    assert len(units) <= -(-height // block)                             # at most one lease per block


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(8, 200), slots=st.integers(1, 16), cost=st.floats(0.001, 0.1))
def test_units_shrink_toward_the_end(blocks, slots, cost):
    """Equal nodes, even rows: after the first probes, every unit is no larger than the one before."""
    units = simulate(blocks * 32, 32, {f"n{i}": 1.0 for i in range(slots)}, lambda y: cost)
    sizes = [b - a for _, a, b, _, _ in units][slots:]
    floor = -(-int(scheduler.MIN_UNIT_SECONDS / cost) // 32) * 32      # a unit is never less work than this
    assert all(later <= max(earlier, floor * 2) for earlier, later in zip(sizes, sizes[1:])), sizes


def test_first_probes_then_large_units_then_small_ones_to_the_fast_nodes():
    # chess2 at 640x480: 15 blocks, 2 nodes x 2 slots, nothing measured yet: one block each to begin.
    assert next_cut("a", 0, 480, 32, {"a": 2, "b": 2}, [], []) == 32
    # A lone node has no speed to tell apart: no probe, a third of the frame (its slots share its cores).
    assert next_cut("a", 0, 480, 32, {"a": 2}, [], []) == 160
    with pytest.raises(ValueError):
        next_cut("a", 5, 480, 32, {"a": 2}, [], [])      # not on a block edge
    assert next_cut("a", 448, 480, 32, {"a": 1}, [scheduler.Finished("a", 0, 32, 9.0)], []) == 480
    # Slow, middling and fast nodes on rows that cost unevenly (dear in the middle, as chess2).
    profile = [0.47, 0.57, 1.68, 4.05, 3.85, 5.86, 4.69, 3.48, 2.88, 3.19, 2.57, 2.32, 1.58, 1.65, 1.81]
    height = 128 * 32
    speeds = {f"n{i:02d}": (0.5, 1.0, 2.0)[i % 3] for i in range(16)}
    units = simulate(height, 32, speeds, lambda y: 0.25 * profile[y * 15 // height] / 2.84)
    makespan = max(ended for *_, ended in units)
    work = sum(0.25 * profile[y * 15 // height] / 2.84 for y in range(height))
    ideal = work / sum(speeds.values()) + scheduler.STARTUP_SECONDS + 0.25 * 32
    assert makespan <= 1.03 * ideal
    last = sorted(units, key=lambda unit: unit[3])[-len(speeds):]
    assert all(speeds[name] >= 1.0 for name, *_ in last[-3:])             # the very last go to fast nodes


def test_node_speeds_are_told_apart_from_the_cost_of_their_rows():
    profile = [0.5, 0.6, 1.7, 4.0, 3.9, 5.9, 4.7, 3.5]
    speeds = {f"n{i}": (0.5, 1.0, 2.0)[i % 3] for i in range(9)}
    units = simulate(64 * 32, 32, speeds, lambda y: 0.1 * profile[y * 8 // 2048])
    measured, _ = scheduler.node_speeds([scheduler.Finished(n, a, b, e - s) for n, a, b, s, e in units])
    mean = sum(speeds.values()) / len(speeds)
    assert all(measured[name] == pytest.approx(speed / mean, rel=0.25) for name, speed in speeds.items())


def test_short_units_timed_without_povrays_shut_down_do_not_hand_one_node_the_rest():
    """A node's unit ends with its image: its time holds POV-Ray's start-up (about 0.4 s) but no shut-down. Two
    one-block probes of a cheap sky, 0.62 s each, leave the rest of the frame to both boxes, not all of it to the
    first to ask (as when 0.6 s was taken off each: their rows looked all but free)."""
    finished = [scheduler.Finished("a", 0, 32, 0.62), scheduler.Finished("b", 32, 64, 0.62)]
    for running in ([], [scheduler.Running("b", 32, 0.0)]):
        cut = scheduler.next_cut("a", 64, 480, 32, {"a": 2, "b": 2}, finished, running)
        assert cut is not None and cut < 480
    # One probe of the sky measured (0.19 s of tracing): 1.5 s of work at its cost would be most of the frame.
    # Measured just above the cut, the unit is at most the node's share of what is left (two slots of four:
    # half), the rest left to the others; measured further up, with the rows between still rendering, the
    # cost is a guess and the unit the guided third of that share (two blocks), not a blind tail.
    running = [scheduler.Running("a", 32, 0.3), scheduler.Running("b", 32, 0.5), scheduler.Running("b", 32, 0.4)]
    for overhead in (0.0, 0.39):
        assert scheduler.next_cut("a", 160, 480, 32, {"a": 2, "b": 2}, [scheduler.Finished("a", 128, 160, 0.59)],
                                  running, overhead=overhead) == 320
        assert scheduler.next_cut("a", 160, 480, 32, {"a": 2, "b": 2}, [scheduler.Finished("a", 0, 32, 0.59)],
                                  running, overhead=overhead) == 224


def test_a_node_asking_ahead_leaves_the_last_rows_to_a_slot_that_frees_sooner():
    """The frame's last three blocks, dear: node a asks ahead while both its slots render (the sooner ends
    in about 1.3 s), node b's slot ends in about 0.2 s. Taken by a, b's slot would idle to the end; a
    declines, and takes them itself when it has a slot free."""
    finished = [scheduler.Finished("b", 0, 64, 1.2), scheduler.Finished("a", 64, 128, 1.2),
                scheduler.Finished("b", 128, 192, 1.5), scheduler.Finished("a", 192, 256, 2.5)]
    a_busy = [scheduler.Running("a", 64, 0.1), scheduler.Running("a", 32, 0.5)]
    b_busy = [scheduler.Running("b", 64, 0.9)]
    slots = {"a": 2, "b": 2}
    assert scheduler.next_cut("a", 384, 480, 32, slots, finished, a_busy + b_busy) is None
    assert scheduler.next_cut("b", 384, 480, 32, slots, finished, a_busy + b_busy) is not None
    assert scheduler.next_cut("a", 384, 480, 32, slots, finished, a_busy[:1] + b_busy) is not None


def test_the_time_left_comes_from_the_measured_cost():
    assert scheduler.seconds_left(320, [], {"a": 2}) is None
    start_up = scheduler.STARTUP_SECONDS
    finished = [scheduler.Finished("a", 0, 32, start_up + 3.2), scheduler.Finished("a", 32, 64, start_up + 3.2)]
    assert scheduler.seconds_left(320, finished, {"a": 2}) == pytest.approx(320 * 0.1 / 2 + start_up)
    assert scheduler.seconds_left(0, finished, {"a": 2}) == 0.0
    assert scheduler.seconds_left(10, finished, {}) is None


def _lone_box(height: int, block: int, runs: int, finishes) -> list[int]:
    """Slots of one box ask in turn; before each ask, `finishes` says whether the oldest running unit
    ended. Returns the sizes leased, checking each answer."""
    start, running, units = 0, [], []
    for finish_one in finishes:
        if start >= height:
            break
        if finish_one and running:
            running.pop(0)
        end = next_cut("a", start, height, block, {"a": runs}, [], [scheduler.Running("a", r, 0.5) for r in running],
                       box_runs=runs)
        if end is None:
            assert len(running) >= runs            # a slot declines only while enough run
            continue
        assert end > start and (end % block == 0 or end == height) and len(running) < runs
        units.append(end - start)
        running.append(end - start)
        start = end
    assert start == height
    return units


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 3000), block=st.sampled_from([1, 8, 32]), runs=st.integers(1, 4),
       order=st.lists(st.booleans(), max_size=40))
def test_one_box_unwatched_every_row_once_never_more_processes_than_it_needs(height, block, runs, order):
    _lone_box(height, block, runs, [*order, *[True] * (height // block + runs + 2)])
    # Asked by every slot at once, the frame goes out in one unit per process the box keeps busy.
    assert len(_lone_box(height, block, runs, [False] * runs)) == min(runs, -(-height // block))


def test_the_processes_that_keep_a_box_busy():
    assert scheduler.runs_to_keep_busy(cores=2, threads=2, slots=2) == 1       # POV-Ray's own threads use them
    assert scheduler.runs_to_keep_busy(cores=2, threads=2, slots=4) == 1       # two nodes on one box: no more
    assert scheduler.runs_to_keep_busy(cores=8, threads=1, slots=16) == 8      # one-thread POV-Rays: one per core
    assert scheduler.runs_to_keep_busy(cores=8, threads=2, slots=3) == 3       # never more than it has slots
    assert scheduler.runs_to_keep_busy(cores=2, threads=1, slots=2) == 2


def _node(name: str, machine: str, slots: int = 2, cores: int = 2, threads: int = 2):
    from farm.records import Node
    from farm.states import NodeState
    info = {"machine": machine, "slots": slots, "cores": cores, "threads": threads}
    return Node(name, name, NodeState.IDLE, info, 0.0, 0.0, 0, 0, "", "")


def test_nodes_on_one_machine_are_one_box_and_unknown_machines_are_boxes_of_their_own():
    from farm.policy import lone_box_runs
    assert lone_box_runs([_node("a", "m1")], here="m1") == 1
    assert lone_box_runs([_node("a", "m1"), _node("b", "m1", threads=1)], here="m1") == 2
    assert lone_box_runs([_node("a", "m1"), _node("b", "m2")], here="m1") == 0    # two boxes: balance them
    assert lone_box_runs([_node("a", ""), _node("b", "")], here="") == 0        # nodes that do not say
    assert lone_box_runs([_node("a", "m1", slots=8, cores=8, threads=1)], here="m1") == 8
    # A lone node on another box sends a whole frame after rendering it: cut it smaller.
    assert lone_box_runs([_node("a", "m2")], here="m1") == 0


def test_the_machine_is_the_running_kernel(tmp_path):
    from farm.hostos import Host
    boot = tmp_path / "boot_id"
    boot.write_text("4f1c5d1e-0d9a-4a57-9a55-3c1e0b3f8e21\n")
    assert Host("linux").machine(boot) == Host("linux").machine(boot) != ""
    other = tmp_path / "other"
    other.write_text("0b8f2a34-7e3c-4d5e-8f1a-2b3c4d5e6f70\n")
    assert Host("linux").machine(other) != Host("linux").machine(boot)
    assert Host("win32").machine(boot) == "" and Host("linux").machine(tmp_path / "missing") == ""


# -- the store cutting remainders, through the API ---------------------------------------------------------

def _stepped(tmp_path, max_attempts: int = 3, machine: str = "") -> tuple[Stepped, Store]:
    return stepped_farm(tmp_path / "data", max_attempts=max_attempts, machine=machine)


def _submit(stepped: Stepped, scene_dir, **spec) -> int:
    """A job 4 pixels wide, cut as the farm decides unless `spec` says, in bands of rows (the guided plan's
    own rules; a sheared frame's: test_a_sheared_still_goes_out_in_whole_shares_once_measured)."""
    return submit(stepped, write_scene(scene_dir, "sphere { 0, 1 pigment { rgb 1 } }\n"),
                  **{"width": 4, "strips": "auto", "interleave": False, **spec})


def test_a_still_is_cut_when_nodes_ask_large_first_and_handed_back_rows_go_first(tmp_path):
    farm, store = _stepped(tmp_path)
    job = _submit(farm, tmp_path / "scene", height=480)
    assert farm.call("jobs.status", job)["strips_total"] == 1           # one remainder, nothing cut yet
    nodes = [farm.call("nodes.register", f"n{i}", {"povray": "3.7", "slots": 2})["node_id"] for i in range(2)]
    first = farm.call("nodes.poll", nodes[0])
    second = farm.call("nodes.poll", nodes[1])
    # Nothing measured yet: a one-block probe each.
    assert (first["row_start"], first["row_end"], second["row_start"], second["row_end"]) == (0, 32, 32, 64)
    farm.call("nodes.release", nodes[0], first["lease"])                 # handed back: it goes before the rest
    again = farm.call("nodes.poll", nodes[0])
    assert (again["row_start"], again["row_end"], again["strip"]) == (0, 32, first["strip"])
    farm.call("nodes.complete", nodes[0], again["lease"], rows_for(again, 1), scheduler.STARTUP_SECONDS + 3.2)   # 0.1 s a row
    farm.call("nodes.complete", nodes[1], second["lease"], rows_for(second, 2), scheduler.STARTUP_SECONDS + 3.2)
    # The time left at the measured cost: 416 rows at 0.1 s over 4 slots, plus a start-up.
    assert farm.call("jobs.status", job)["eta"] == pytest.approx(416 * 0.1 / 4 + scheduler.STARTUP_SECONDS, abs=0.1)
    # Measured: 0.1 s a row on both nodes; 13 blocks left over 2 nodes: a third of a half first.
    sizes = []
    while True:
        name = nodes[len(sizes) % 2]
        task = farm.call("nodes.poll", name)
        if not task:
            break
        sizes.append(task["row_end"] - task["row_start"])
        farm.call("nodes.complete", name, task["lease"], rows_for(task, 3),
                  scheduler.STARTUP_SECONDS + 0.1 * sizes[-1])
    assert sum(sizes) == 480 - 64 and sizes[0] == 32 * round(416 / 2 / 3 / 32) and all(s % 32 == 0 for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    farm.settle()
    status = farm.call("jobs.status", job)
    assert status["state"] == "done" and status["strips_total"] == status["strips_done"] == 2 + len(sizes)
    image = decode_png(farm.call("jobs.fetch", job).data)
    assert image.pixels == bytes([1]) * 32 * 12 + bytes([2]) * 32 * 12 + bytes([3]) * 416 * 12
    store.close()



def test_a_watched_jobs_eta_refits_its_cost_model_every_few_seconds_not_on_every_status(tmp_path, monkeypatch):
    """Viewers of a busy job have its status built several times a second; the node speeds behind its ETA
    are fitted again only every ETA_REFIT seconds, while the rows left count at once."""
    from farm.service import views

    farm, store = _stepped(tmp_path)
    job = _submit(farm, tmp_path / "scene", height=480)
    n = farm.call("nodes.register", "n", {"povray": "3.7"})["node_id"]
    fits = []
    fit = scheduler.overall_model
    monkeypatch.setattr(scheduler, "overall_model",
                        lambda finished: (fits.append(len(finished)) if finished else None) or fit(finished))

    def store_one() -> None:
        task = farm.call("nodes.poll", n)
        seconds = scheduler.STARTUP_SECONDS + 0.1 * (task["row_end"] - task["row_start"])
        farm.call("nodes.complete", n, task["lease"], rows_for(task, 1), seconds)

    assert "eta" not in farm.call("jobs.status", job)                         # nothing measured yet
    store_one()
    first = farm.call("jobs.status", job)["eta"]
    store_one()
    assert farm.call("jobs.status", job)["eta"] < first and fits == [1]      # fewer rows left, the same fit
    farm.clock_.now += views.ETA_REFIT
    farm.call("jobs.status", job)
    assert fits == [1, 2]
    store.close()

def _box_node(farm: Stepped, name: str, threads: int = 2) -> str:
    return farm.call("nodes.register", name, {"povray": "3.7", "slots": 2, "machine": "box", "cores": 2,
                                               "threads": threads})["node_id"]


def test_on_one_box_an_unwatched_frame_goes_out_whole_and_a_watched_one_is_cut_finer(tmp_path):
    farm, store = _stepped(tmp_path, machine="box")   # the nodes run on the controller's box
    a, b = _box_node(farm, "a"), _box_node(farm, "b")
    alone = _submit(farm, tmp_path / "scene", height=480)
    whole = farm.call("nodes.poll", a)
    assert (whole["row_start"], whole["row_end"]) == (0, 480)            # one POV-Ray on all cores
    assert farm.call("nodes.poll", b) == {}
    farm.call("nodes.complete", a, whole["lease"], rows_for(whole, 1), 5.0)
    assert farm.call("jobs.status", alone)["strips_done"] == 1
    farm.call("viewer.watch", 0, 0, 0)                                   # someone follows the farm
    watched = _submit(farm, tmp_path / "scene2", height=480)
    task = farm.call("nodes.poll", a)
    assert task["job"] == watched and task["row_end"] - task["row_start"] < 240   # guided: smaller first units
    farm.clock_.now += 60                                                # the viewer left long ago
    assert farm.call("nodes.poll", b) == {}                              # one runs already: enough for the box
    farm.call("nodes.complete", a, task["lease"], rows_for(task, 2), 5.0)
    rest = farm.call("nodes.poll", a)
    assert (rest["row_start"], rest["row_end"]) == (task["row_end"], 480)
    store.close()


def test_on_one_box_of_one_thread_nodes_an_unwatched_frame_goes_to_one_process_per_core(tmp_path):
    farm, store = _stepped(tmp_path, machine="box")   # the nodes run on the controller's box
    a, b = _box_node(farm, "a", threads=1), _box_node(farm, "b", threads=1)
    _submit(farm, tmp_path / "scene", height=480)
    first, second = farm.call("nodes.poll", a), farm.call("nodes.poll", b)
    assert (first["row_start"], first["row_end"], second["row_start"], second["row_end"]) == (0, 256, 256, 480)
    store.close()


def test_a_radiosity_frame_that_goes_out_whole_skips_the_shared_pre_pass(tmp_path):
    farm, store = _stepped(tmp_path, machine="box")   # the nodes run on the controller's box
    a = _box_node(farm, "a")
    scene = tmp_path / "scene" / "s.pov"
    scene.parent.mkdir()
    scene.write_text("global_settings { radiosity { } }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    digest = farm.call("bundles.upload", xmlrpc.client.Binary(pack(plan_bundle(scene))))
    spec = {"bundle": digest, "scene": "s.pov", "width": 4, "height": 96, "preview": False}
    alone = farm.call("jobs.submit", spec)
    task = farm.call("nodes.poll", a)
    assert (task["kind"], task["row_start"], task["row_end"]) == ("rows", 0, 96)   # a single render, no pre-pass
    assert not task.get("radiosity_cache")
    farm.call("nodes.complete", a, task["lease"], rows_for(task, 1), 5.0)
    farm.settle()
    assert farm.call("jobs.status", alone)["state"] == "done"
    farm.call("viewer.watch", 0, 0, 0)                                   # watched: strips, so a shared pre-pass
    farm.call("jobs.submit", spec)
    assert farm.call("nodes.poll", a)["kind"] == "pretrace"
    store.close()


def test_a_preview_in_auto_mode_is_rendered_only_when_a_viewer_watches(tmp_path):
    farm, store = _stepped(tmp_path)
    n = farm.call("nodes.register", "n", {"povray": "3.7", "slots": 2})["node_id"]
    unwatched = _submit(farm, tmp_path / "scene", height=64, preview="auto", strips=1)
    task = farm.call("nodes.poll", n)
    assert task["kind"] == "rows"                                        # nobody would see a preview
    assert farm.call("jobs.status", unwatched)["preview"] == "waiting"   # ... until a viewer comes
    farm.call("nodes.complete", n, task["lease"], rows_for(task, 1), 1.0)
    assert farm.call("jobs.status", unwatched)["preview"] == "canceled"  # its frame is done: no need
    farm.call("viewer.watch", 0, 0, 0)
    watched = _submit(farm, tmp_path / "scene2", height=64, strips=1, preview="auto")
    assert farm.call("nodes.poll", n)["kind"] == "preview"
    always = _submit(farm, tmp_path / "scene3", height=64, preview=True, strips=1, priority=1)
    farm.clock_.now += 60
    assert (farm.call("nodes.poll", n)["job"], farm.call("jobs.status", always)["preview"]) == (always, "leased")
    with pytest.raises(FarmError) as bad:
        _submit(farm, tmp_path / "scene4", height=64, preview="sometimes")
    assert bad.value.code == Code.BAD_ARGUMENT and "auto, always or never" in str(bad.value)
    assert store.jobs.get(watched).preview is PreviewMode.WATCHED
    spec = {"bundle": store.jobs.get(watched).bundle, "scene": "s.pov", "width": 4, "height": 64}
    assert store.jobs.get(farm.call("jobs.submit", spec)).preview is PreviewMode.WATCHED   # the default
    store.close()


@pytest.mark.parametrize("follows", [False, True])
def test_a_preview_set_aside_while_nobody_watched_is_rendered_for_a_viewer_who_comes_later(tmp_path, follows):
    farm, store = _stepped(tmp_path)
    n = farm.call("nodes.register", "n", {"povray": "3.7", "slots": 2})["node_id"]
    job = _submit(farm, tmp_path / "scene", height=64, preview="auto", strips=2)
    first = farm.call("nodes.poll", n)
    assert first["kind"] == "rows" and farm.call("jobs.status", job)["preview"] == "waiting"
    farm.call("viewer.watch", 0 if follows else job, 0, 0)              # a viewer comes: by id, or following
    assert farm.call("jobs.status", job)["preview"] == "queued"
    assert farm.call("nodes.poll", n)["kind"] == "preview"               # first in line, before the rest
    store.close()


def test_the_preview_setting_reads_the_usual_words():
    mode = PreviewMode
    assert [mode.parse(v) for v in ("auto", "ALWAYS", "never", "on", "no", True, False, "watched")] == [
        mode.WATCHED, mode.ALWAYS, mode.NEVER, mode.ALWAYS, mode.NEVER, mode.ALWAYS, mode.NEVER, mode.WATCHED]
    with pytest.raises(ValueError):
        mode.parse("maybe")


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_leases_failures_and_expiries_render_every_row_exactly_once(tmp_path_factory, seed):
    """Several jobs (stills and a two-frame job) on nodes of different slot counts, with units handed
    back, failing and expiring at random: every job finishes, every row stored exactly once."""
    rnd = random.Random(seed)
    farm, store = _stepped(tmp_path_factory.mktemp("farm"), max_attempts=100)   # failures never end a job here
    slots = [rnd.randint(1, 3) for _ in range(3)]

    def start_nodes() -> list[str]:      # (again: the earlier incarnations' leases go back to the queue)
        return [farm.call("nodes.register", f"n{i}", {"povray": "3.7", "slots": n})["node_id"]
                for i, n in enumerate(slots)]

    def time_passes() -> None:           # every lease expires, every node went silent and comes back
        farm.clock_.now += 40
        farm.tick()
        names[:], held[:] = start_nodes(), []

    names, held = start_nodes(), []
    jobs = {_submit(farm, tmp_path_factory.mktemp("scene"), height=rnd.randint(1, 400),
                    options=[f"+BS{rnd.choice([8, 16, 32])}"], priority=rnd.randint(0, 2)) for _ in range(2)}
    jobs.add(_submit(farm, tmp_path_factory.mktemp("scene"), height=rnd.randint(40, 200),
                     animation={"first": 1, "last": 2}))   # fewer frames than slots: a remainder each
    assert any(u.remainder for job in jobs for u in store.units.of_job(job))
    for _ in range(2000):
        if held and rnd.random() < 0.5:
            name, task = held.pop(rnd.randrange(len(held)))
            luck = rnd.random()
            if luck < 0.1:
                farm.call("nodes.release", name, task["lease"])
            elif luck < 0.15:
                farm.call("nodes.fail", name, task["lease"], "killed by signal 9", False)
            elif luck < 0.17:
                time_passes()
            else:
                farm.call("nodes.complete", name, task["lease"], rows_for(task, task["job"]), 1.0)
        else:
            name = rnd.choice(names)
            task = farm.call("nodes.poll", name)
            if task:
                held.append((name, task))
            elif not held:
                time_passes()                              # only retry pauses left: let them end
        farm.settle()
        if all(farm.call("jobs.status", job)["state"] == "done" for job in jobs):
            break
    for job in jobs:
        status = farm.call("jobs.status", job)
        assert status["state"] == "done", status
        for frame in range(1, status["frames_total"] + 1):
            pieces = sorted((u.row_start, u.row_end) for u in store.units.of_job(job)
                            if u.state.value == "done" and u.frame == frame)
            assert pieces[0][0] == 0 and pieces[-1][1] == status["height"]
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))   # exactly once
            image = decode_png(farm.call("jobs.fetch", job, frame).data)
            assert image.pixels == bytes([job]) * len(image.pixels)
    store.close()


def test_a_job_is_watched_while_a_stream_is_open_or_shortly_after_a_long_poll():
    from farm.service.watchers import NEWEST, POLL_MEMORY, Watchers
    clock = Clock()
    watchers = Watchers(clock)
    asked = []

    def newest() -> int:
        asked.append(1)
        return 7

    assert not watchers.watched(7, newest) and not asked              # nobody follows: newest() not asked
    with watchers.streaming(7), watchers.streaming(7):
        assert watchers.watched(7, newest) and not watchers.watched(8, newest)
    assert not watchers.watched(7, newest)
    watchers.polled(NEWEST)
    assert watchers.watched(7, newest) and not watchers.watched(6, newest)
    clock.now += POLL_MEMORY + 1
    assert not watchers.watched(7, newest)


def test_a_lone_node_on_another_box_gets_a_frame_cut_smaller_so_its_uploads_overlap_its_rendering(tmp_path):
    farm, store = _stepped(tmp_path, machine="controller-box")
    a = _box_node(farm, "a")                                            # machine "box": not the controller's
    _submit(farm, tmp_path / "scene", height=480)
    first = farm.call("nodes.poll", a)
    assert first["row_end"] - first["row_start"] < 480
    store.close()


@settings(max_examples=60, deadline=None)
@given(blocks=st.integers(1, 200), slots=st.integers(1, 8), cost=st.floats(0.001, 0.1),
       overhead=st.floats(0.0, 5.0), done=st.integers(1, 100))
@example(blocks=120, slots=1, cost=0.001, overhead=1.0, done=1)   # a first unit faster than the model reads it
def test_a_unit_traces_at_least_a_few_times_its_nodes_fixed_cost_unless_it_takes_the_rest(blocks, slots, cost,
                                                                                       overhead, done):
    """A scene whose parse (or start-up, or cache load) is dear gets fewer, larger units: each traces at least
    OVERHEAD_RATIO times the fixed cost its node measured, or it is what is left of the frame."""
    height, start = (blocks + done) * 32, done * 32
    finished = [scheduler.Finished("a", 0, start, scheduler.STARTUP_SECONDS + cost * start)]
    end = next_cut("a", start, height, 32, {"a": slots}, finished, [], overhead=overhead)
    assert end is not None and start < end <= height and (end % 32 == 0 or end == height)
    # By the cost the farm measured (a unit's work is at least 0.05 s: tiny first units read slower).
    per_row = 1 / scheduler.model(finished, start).rate("a")
    traced = (end - start) * per_row
    assert end == height or traced >= scheduler.OVERHEAD_RATIO * overhead - 32 * per_row / 2 - 1e-9
    # Never smaller than without the measured overhead.
    assert end >= next_cut("a", start, height, 32, {"a": slots}, finished, [])


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 40 * 32), least=st.integers(1, 4), slots=st.integers(1, 4), data=st.data())
def test_no_unit_is_cut_smaller_than_the_least_blocks_asked_unless_that_is_all_that_is_left(height, least, slots,
                                                                                              data):
    """`least_blocks` (a strip that loads a radiosity cache: two block rows) holds for probes and measured
    cuts alike, and no remainder under it is left behind."""
    start = data.draw(st.integers(0, (height - 1) // 32)) * 32
    finished = [scheduler.Finished("b", 0, start, 1.0)] if start else []
    end = next_cut("a", start, height, 32, {"a": slots, "b": 1}, finished, [], least_blocks=least)
    assert end is not None and start < end <= height
    blocks_taken, blocks_left = -(-(end - start) // 32), -(-(height - start) // 32)
    assert blocks_taken >= min(least, blocks_left)
    assert end == height or -(-(height - end) // 32) >= least


def test_a_node_that_says_its_units_cost_much_besides_tracing_gets_larger_ones(tmp_path):
    sizes = {}
    for overhead in (None, 3.0):
        farm, store = stepped_farm(tmp_path / f"data{overhead}")
        _submit(farm, tmp_path / f"scene{overhead}", height=32 * 40)
        nodes = [farm.call("nodes.register", name, {"povray": "3.7", "slots": 1})["node_id"] for name in "ab"]
        for name in nodes:
            task = farm.call("nodes.poll", name)
            extra = () if overhead is None else ("zlib", {}, overhead)
            farm.call("nodes.complete", name, task["lease"], rows_for(task, 1),
                      scheduler.STARTUP_SECONDS + 0.01 * (task["row_end"] - task["row_start"]), *extra)
        task = farm.call("nodes.poll", nodes[0])
        sizes[overhead] = task["row_end"] - task["row_start"]
        store.close()
    # 0.01 s a row: the guided plan alone cuts a third of the node's half of what is left (5 blocks); 4 x 3 s
    # of tracing is 1200 rows, more than that half (about 496 rows), so the node takes its half (in blocks).
    assert sizes[None] == 160 and 448 <= sizes[3.0] <= 512, sizes
