"""Live blocks: a watched unit's finished blocks go from POV-Ray's render state file through the node and the
controller to viewers, before its final rows; they are never the image."""

from __future__ import annotations

import io
import threading
import time
import zlib
from array import array

import pytest
from PIL import Image

from farm.kinds import LIVE
from farm.rendering.gamma import Encoding
from farm.rendering import gamma
from farm.rendering.live import (COMMON_GAMMAS, DUE_READ_EVERY, FIRST_BLOCK_DUE, FIRST_READ_EVERY, READ_EVERY,
                                 WATCH_EVERY, FramesReader, LiveSender, LiveWatch, StateFileReader, scene_gamma,
                                 warm_previews)
from farm.rendering.statefile import read_blocks
from farm.service.live import LiveBlocks
from farm.viewing import frames
from farm.viewing.state import ViewerState
from tests.harness import SCENES, assert_same_pixels, native_render, submit, wait_until
from tests.test_statefile import state_file

CLOCKD = SCENES / "animations/clockd/clockd.pov"


@pytest.mark.parametrize("stderr, text, expected", [
    ("Warning: assumed_gamma not specified, so gamma_correction is turned off", "assumed_gamma 2.2", None),
    ("assumed_gamma not specified in this POV-Ray 3.7 or later scene", "", 1.0),
    ("", "global_settings { assumed_gamma 2.2 }", 2.2),
    ("", "global_settings {\n  // assumed_gamma 1.8\n  assumed_gamma srgb }", "srgb"),
    ("", "#include \"gamma.inc\"", 1.0),
])
def test_the_scenes_gamma_from_stderr_then_its_text_then_1(stderr, text, expected):
    assert scene_gamma(stderr, text) == expected


def test_the_common_gammas_preview_tables_are_built_ahead_so_a_first_block_only_looks_them_up():
    warm_previews()
    built = gamma._preview_table.cache_info().misses
    for working in COMMON_GAMMAS:
        Encoding(working).preview(array("f", [0.25, 0.5, 0.75, 0.0, 0.0]))
    assert gamma._preview_table.cache_info().misses == built


def test_the_reader_sends_each_block_once_as_8_bit_rgb_and_skips_a_torn_tail(tmp_path):
    data = state_file("chess2")
    blocks, end = read_blocks(data)
    path, log_path = tmp_path / "strip.pov-state", tmp_path / "povray.log"
    log_path.write_text("")
    (tmp_path / "s.pov").write_text("global_settings { assumed_gamma 2.2 }")
    reader = StateFileReader(path, log_path, tmp_path / "s.pov", frame=3)
    assert reader() == []                       # no file yet
    path.write_bytes(data[:end - 100])          # the last message torn
    first = reader()
    assert len(first) == len(blocks) - 1
    path.write_bytes(data[:end])
    last = reader()
    assert len(last) == 1 and reader() == []
    block = blocks[-1]
    assert (last[0]["frame"], last[0]["left"], last[0]["top"]) == (3, block.left, block.top)
    assert zlib.decompress(last[0]["rows"]) == Encoding(2.2).preview(block.pixels)


@pytest.mark.parametrize("frames, name, expected", [
    (range(1, 2), "strip.pov-state", 1),       # +KFI1 +KFF1: a still to POV-Ray, no number
    (range(7, 8), "strip07.pov-state", 7),     # one frame of a longer animation: numbered
    (range(2, 4), "strip.pov-state", None),    # a run of frames never reads an unnumbered file
])
def test_a_run_of_frames_reads_the_state_file_povray_names_for_it(tmp_path, frames, name, expected):
    data = state_file("chess2")
    (tmp_path / "povray.log").write_text("")
    (tmp_path / "s.pov").write_text("global_settings { assumed_gamma 2.2 }")
    (tmp_path / name).write_bytes(data)
    reader = FramesReader(tmp_path / "strip.ppm", tmp_path / "povray.log", tmp_path / "s.pov", frames)
    blocks = reader()
    assert {block["frame"] for block in blocks} == ({expected} if expected else set())
    assert reader() == []


def test_each_frame_of_a_run_goes_whole_once_its_image_is_written_the_last_too_cut_to_the_unit_s_rows(tmp_path):
    """POV-Ray exits a few tenths of a second after a run's last frame: its image goes up before the rows."""
    data = state_file("chess2")
    (tmp_path / "povray.log").write_text("")
    (tmp_path / "s.pov").write_text("global_settings { assumed_gamma 2.2 }")
    pixels = bytes(range(4 * 6 * 3))
    reader = FramesReader(tmp_path / "strip.ppm", tmp_path / "povray.log", tmp_path / "s.pov", range(1, 3),
                          rows=range(2, 5))
    for frame in (1, 2):
        state = tmp_path / f"strip{frame}.pov-state"
        state.write_bytes(data)
        assert {block["frame"] for block in reader()} == {frame} and not reader.waiting
        state.unlink()                          # the frame is done: its image comes next
        assert reader() == [] and reader.waiting
        (tmp_path / f"strip{frame}.ppm").write_bytes(b"P6\n4 6\n255\n" + pixels[:-1])    # still being written
        assert reader() == [] and reader.waiting
        (tmp_path / f"strip{frame}.ppm").write_bytes(b"P6\n4 6\n255\n" + pixels)
        [whole] = reader()
        assert (whole["frame"], whole["left"], whole["top"], whole["right"], whole["bottom"]) == (frame, 0, 2, 3, 4)
        assert zlib.decompress(whole["rows"]) == pixels[2 * 12:5 * 12] and not reader.waiting
        assert reader() == []


class BlocksFrom:
    """A unit's reader on a fake clock `now` ([seconds]): no blocks before `first`; each read noted in `reads`."""
    waiting = False

    def __init__(self, now: list[float], first: float):
        self.now, self.first, self.reads = now, first, []

    def __call__(self):
        self.reads.append(self.now[0])
        return [{"rows": b"x"}] if self.now[0] >= self.first else []


def test_a_watched_unit_is_read_often_but_its_own_watch_is_asked_as_seldom_as_an_unwatched_one_s():
    """The runner calls the check every FIRST_READ_EVERY seconds for a watched unit: the state file is read
    that often until its first blocks, then every READ_EVERY; heartbeats and the rest every WATCH_EVERY."""
    now, asked = [0.0], []
    reader = BlocksFrom(now, 0.19)
    reads = reader.reads
    sender = LiveSender(lambda lease, blocks: {"live": True}, lambda: 0.0)
    sender.start("a", True)
    check = LiveWatch("a", lambda: asked.append(now[0]) or now[0] >= 1.0, reader, sender, lambda: now[0])
    steps = [k * (FIRST_READ_EVERY + 1e-6) for k in range(1, round(1.2 / FIRST_READ_EVERY) + 1)]   # 1.2 s of calls
    stops = []
    for step in steps:
        now[0] = step
        stops.append(check())
    first = next(i for i, step in enumerate(steps) if step >= 0.19)
    assert reads[:first + 1] == pytest.approx(steps[:first + 1], abs=1e-3)     # every call until the first blocks
    assert all(b - a >= READ_EVERY for a, b in zip(reads[first:], reads[first + 1:]))
    assert len(asked) == 4 and all(b - a >= WATCH_EVERY for a, b in zip(asked, asked[1:]))
    assert stops[-1] and stops.index(True) == len(steps) - 1     # asked at 1.2 s: the first answer after 1.0 s


def test_while_povrays_first_block_is_due_a_look_that_finds_nothing_waits_for_it():
    """POV-Ray's first block comes 0.28-0.29 s after its start (its front end's fixed polls): a look at 0.25 s
    looks again every DUE_READ_EVERY until it comes, and the block goes up at 0.29 s, not at a runner's step;
    outside FIRST_BLOCK_DUE a look is one read."""
    now, offered = [0.0], []
    reader = BlocksFrom(now, 0.29)
    reads = reader.reads

    def sleep(seconds):
        now[0] += seconds
    sender = LiveSender(lambda lease, blocks: {"live": True}, lambda: 0.0)
    sender.start("a", True)
    sender.offer = lambda lease, blocks: offered.append(now[0])
    check = LiveWatch("a", lambda: False, reader, sender, lambda: now[0], sleep)
    for step in range(1, 8):                       # the runner's calls, FIRST_READ_EVERY apart
        now[0] = max(now[0], step * (FIRST_READ_EVERY + 1e-6))
        check()
    assert [round(t, 3) for t in reads[:4]] == [0.05, 0.1, 0.15, 0.2]          # one read a look before it is due
    assert offered == [pytest.approx(0.29, abs=DUE_READ_EVERY + 1e-6)]
    assert FIRST_BLOCK_DUE[0] <= 0.29 < FIRST_BLOCK_DUE[1]


def test_the_controller_keeps_blocks_of_units_in_flight_and_forgets_them_with_their_final_rows():
    now = [0.0]
    live = LiveBlocks(stale_after=30.0, clock=lambda: now[0])
    block = {"frame": 0, "left": 0, "top": 0, "right": 1, "bottom": 1, "rows": b"x"}
    live.add(1, "a", [block, block])
    live.add(1, "b", [block])
    live.add(2, "c", [block])
    assert live.after(1, 0) == (3, [block] * 3)          # a late viewer: everything in flight
    assert live.after(1, 2) == (3, [block])
    live.drop("a")
    assert live.after(1, 0) == (3, [block])
    now[0] = 31.0                                         # "b" went silent: its lease expired
    assert live.after(1, 0) == (3, [])


def test_a_block_sent_again_replaces_the_one_kept():
    live = LiveBlocks(stale_after=30.0, clock=lambda: 0.0)
    first, again = ({"frame": 1, "left": 0, "top": 0, "right": 1, "bottom": 1, "rows": rows} for rows in (b"a", b"b"))
    live.add(1, "a", [first])
    live.add(1, "a", [again])
    assert live.after(1, 0) == (2, [again])


def test_the_sender_hears_from_heartbeats_which_leases_are_watched_and_rewinds_one_watched_again():
    sender = LiveSender(lambda lease, blocks: {"live": True}, lambda: 0.0)
    sender.start("a", False)
    sender.start("b", True)
    assert not sender.wanted("a") and sender.wanted("b")
    sender.heard(["a", "b", "gone"], ["a"])
    assert sender.wanted("a") and not sender.wanted("b")
    assert sender.rewound("a") and not sender.rewound("a") and not sender.rewound("b")


def test_the_sender_never_waits_and_stops_when_the_job_is_no_longer_watched():
    sent, release = [], threading.Event()

    def send(lease, blocks):
        release.wait(10)
        sent.append((lease, len(blocks)))
        return {"live": False}
    sender = LiveSender(send, lambda: 0.0)
    block = {"frame": 0, "left": 0, "top": 0, "right": 0, "bottom": 0, "rows": b"y" * 1000}
    started = time.monotonic()
    for _ in range(1000):                       # 1 MB: over the queue's bound
        sender.offer("a", [block])
    assert time.monotonic() - started < 1.0
    release.set()
    wait_until(lambda: not sender.wanted("a"), what="the sender to hear the job is not watched")
    assert sum(count for _, count in sent) <= 600


@pytest.mark.parametrize("slow, least_gap", [(True, 0.15), (False, 0.0)])
def test_blocks_take_a_quarter_of_a_slow_uplink_and_a_fast_one_as_it_comes(slow, least_gap):
    """Measured at 20 kB/s: where the node calls that a slow uplink (under its slow_uplink_bps), 1 kB of blocks
    waits 1000 / (0.25 x 20,000) = 0.2 s before the next call; where it does not, the next goes at once."""
    sent = []

    def send(lease, blocks):
        sent.append(time.monotonic())
        return {"live": True}
    sender = LiveSender(send, lambda: 2e4, slow=lambda: slow)
    block = {"frame": 0, "left": 0, "top": 0, "right": 0, "bottom": 0, "rows": b"y" * 1000}
    sender.start("a", True)
    sender.offer("a", [block])
    wait_until(lambda: len(sent) == 1, what="the first call")
    sender.offer("a", [block])
    wait_until(lambda: len(sent) == 2, what="the second call")
    assert sent[1] - sent[0] >= least_gap and (least_gap or sent[1] - sent[0] < 0.15)


def test_blocks_still_queued_when_their_unit_ends_are_dropped_in_front_of_its_rows():
    sent, calling, release = [], threading.Event(), threading.Event()

    def send(lease, blocks):
        calling.set()
        release.wait(10)
        sent.append((lease, len(blocks)))
        return {"live": True}
    sender = LiveSender(send, lambda: 1e6)
    block = {"frame": 0, "left": 0, "top": 0, "right": 0, "bottom": 0, "rows": b"y" * 100}
    sender.start("a", True)
    sender.start("b", True)
    sender.offer("a", [block])
    wait_until(calling.is_set, what="the first call")
    for _ in range(10):
        sender.offer("a", [block])
    sender.ended("a")                           # a's render is over: its final rows go up now
    sender.offer("b", [block])
    release.set()
    wait_until(lambda: ("b", 1) in sent, what="b's block sent")
    assert sent == [("a", 1), ("b", 1)]


def test_a_viewer_watching_before_the_submit_gets_live_blocks_before_the_first_final_rows(farm, tmp_path):
    """chess2 on two nodes of one thread each, followed with viewer.watch from before the submit."""
    farm.start_controller()
    farm.start_node("n1")
    farm.start_node("n2")
    viewer = farm.client_as("view")
    wait_until(lambda: len(farm.client.call("nodes.list")) == 2, what="two nodes")
    scene, width, height = SCENES / "advanced/chess2.pov", 192, 144
    moments: dict[str, list[float]] = {"rows": [], LIVE: []}
    blocks = []
    first: dict[str, float] = {}
    reply = viewer.call("viewer.watch", 0, 0, 0.0, 0)
    cursor, live_cursor, job_id = reply["cursor"], reply["live_cursor"], None
    submitted = time.monotonic()
    job_id = submit(farm.client, scene, width=width, height=height, strips=4, options=["+A0.3"], preview=False)
    while True:
        reply = viewer.call("viewer.watch", job_id, cursor, 10.0, live_cursor)
        now = time.monotonic() - submitted
        cursor, live_cursor = reply["cursor"], reply["live_cursor"]
        rows = [piece for piece in reply["strips"] if piece["kind"] == "rows"]
        for kind, pieces in (("rows", rows), (LIVE, reply["live"])):
            if pieces:
                moments[kind].append(now)
                first.setdefault(kind, now)
        for block in reply["live"]:
            size = (block["right"] - block["left"] + 1) * (block["bottom"] - block["top"] + 1) * 3
            assert len(zlib.decompress(block["rows"].data)) == size
            blocks.append(block)
        if reply["job"].get("state") in ("done", "failed", "canceled"):
            break
    assert reply["job"]["state"] == "done", reply["job"]
    assert LIVE in first and first[LIVE] < first["rows"], first
    print(f"\nfirst live pixels {first[LIVE]:.2f}s, first final rows {first['rows']:.2f}s after the submit; "
          f"moments with new pixels: {len(set(moments['rows']) | set(moments[LIVE]))} "
          f"(final rows alone: {len(moments['rows'])})")
    out = tmp_path / "out.png"
    out.write_bytes(farm.client.call("jobs.fetch", job_id).data)
    native = native_render(scene, width, height, ["+A0.3"], tmp_path / "native.png")
    assert_same_pixels(out, native)
    # The live blocks were the final pixels already (the scene's gamma read from its text).
    with Image.open(native) as image:
        rgb = image.convert("RGB")
    differences = []
    for block in blocks:
        box = (block["left"], block["top"], block["right"] + 1, block["bottom"] + 1)
        expected, got = rgb.crop(box).tobytes(), zlib.decompress(block["rows"].data)
        differences += [abs(a - b) for a, b in zip(expected, got)]
    assert sum(differences) / len(differences) < 1.0


def test_a_viewer_that_joins_late_gets_the_blocks_already_rendered_of_the_unit_in_flight(farm, monkeypatch):
    """No viewer when the unit is leased (its task says unwatched); one joins at a third of it: the next
    heartbeat's reply tells the node, which sends the strip's blocks from its first, before its final rows."""
    monkeypatch.setenv("POVFARM_HEARTBEAT_INTERVAL", "0.5")
    farm.start_controller()
    farm.start_node("n1")
    wait_until(lambda: farm.client.call("nodes.list"), what="the node")
    job_id = submit(farm.client, SCENES / "advanced/chess2.pov", width=256, height=192, strips=2,
                    options=["+A0.3"], preview=False)

    def rendering():
        strips = [s for s in farm.client.call("jobs.status", job_id)["strips"] if s["state"] == "leased"]
        return strips[0] if strips and strips[0]["progress"] >= 0.3 else None
    unit = wait_until(rendering, what="a third of the first strip rendered unwatched")
    viewer = farm.client_as("view")
    cursor, live_cursor, tops = 0, 0, set()
    while True:
        reply = viewer.call("viewer.watch", job_id, cursor, 10.0, live_cursor)
        cursor, live_cursor = reply["cursor"], reply["live_cursor"]
        tops |= {block["top"] for block in reply["live"] if block["frame"] == unit["frame"]}
        if any(strip["row_start"] == unit["row_start"] for strip in reply["strips"]):
            break
        assert reply["job"]["state"] not in ("done", "failed", "canceled"), reply["job"]
    assert unit["row_start"] in tops, (unit, sorted(tops))     # its first blocks, rendered before the viewer came


def test_an_animation_paints_the_frame_being_rendered_live_and_its_run_s_finished_frames_can_be_stepped(farm):
    """clockd, 6 frames in two runs of 3 on one node, followed from before the submit: the frame being
    rendered comes block by block, and the run's frames it moved past come whole, before the run's final
    rows; a viewer's state always shows a frame with pixels and steps back to the finished ones."""
    farm.start_controller()
    farm.start_node("n1")
    viewer = farm.client_as("view")
    wait_until(lambda: farm.client.call("nodes.list"), what="the node")
    width, height = 240, 180
    reply = viewer.call("viewer.watch", 0, 0, 0.0, 0)
    cursor, live_cursor = reply["cursor"], reply["live_cursor"]
    job_id = submit(farm.client, CLOCKD, width=width, height=height, strips="auto", options=["+A0.3"],
                    animation={"first": 1, "last": 6, "initial_clock": 0.0, "final_clock": 1.0, "cyclic": True})
    state = ViewerState(job_id)
    whole, partial, rows_seen, empty_shown, stepped = {}, set(), set(), [], []
    while True:
        reply = viewer.call("viewer.watch", job_id, cursor, 10.0, live_cursor)
        cursor, live_cursor = reply["cursor"], reply["live_cursor"]
        for block in reply["live"]:
            if (block["top"], block["bottom"], block["right"]) == (0, height - 1, width - 1):
                whole.setdefault(block["frame"], (zlib.decompress(block["rows"].data), set(rows_seen)))
            else:
                partial.add(block["frame"])
        rows_seen |= {strip["frame"] for strip in reply["strips"]}
        state.handle(("feed", state.session, reply))
        if any(canvas.has_pixels for canvas in state.frames.values()) and not state.canvas().has_pixels:
            empty_shown.append(state.frame)
        if reply["live"] and len([f for f, c in state.frames.items() if c.has_pixels]) > 1 and not stepped:
            newest = state.frame
            state.navigate(frames.PREVIOUS)
            stepped.append((newest, state.frame, state.canvas().has_pixels))
            state.navigate(frames.FOLLOW)
        if reply["job"].get("state") in ("done", "failed", "canceled"):
            break
    assert reply["job"]["state"] == "done", reply["job"]
    assert partial, "no frame was painted block by block"
    assert not empty_shown, empty_shown
    assert stepped and stepped[0][1] < stepped[0][0] and stepped[0][2], stepped
    # Frames 1, 2, 4 and 5 came whole before their run's final rows, and the runs' last frames (3, 6) too when
    # a read caught their image before POV-Ray exited; they are the final frames' pixels.
    assert {1, 2, 4, 5} <= set(whole) <= set(range(1, 7)), sorted(whole)
    for frame in whole:
        pixels, rows_before = whole[frame]
        assert frame not in rows_before
        with Image.open(io.BytesIO(farm.client.call("jobs.fetch", job_id, frame).data)) as image:
            assert image.convert("RGB").tobytes() == pixels


def test_an_animation_of_one_frame_paints_live_too(farm):
    """`+KFI1 +KFF1` is a still to POV-Ray: its state file has no frame number, and the node reads it."""
    farm.start_controller()
    farm.start_node("n1")
    viewer = farm.client_as("view")
    wait_until(lambda: farm.client.call("nodes.list"), what="the node")
    reply = viewer.call("viewer.watch", 0, 0, 0.0, 0)
    cursor, live_cursor = reply["cursor"], reply["live_cursor"]
    job_id = submit(farm.client, SCENES / "advanced/chess2.pov", width=192, height=144, strips=2,
                    options=["+A0.3"], animation={"first": 1, "last": 1})
    live, rows = [], []
    while True:
        reply = viewer.call("viewer.watch", job_id, cursor, 10.0, live_cursor)
        cursor, live_cursor = reply["cursor"], reply["live_cursor"]
        live += [block["frame"] for block in reply["live"] if not rows]
        rows += [strip["frame"] for strip in reply["strips"] if strip["kind"] == "rows"]
        if reply["job"].get("state") in ("done", "failed", "canceled"):
            break
    assert reply["job"]["state"] == "done", reply["job"]
    assert live and set(live) == {1}, live       # blocks of frame 1, before its first final rows
