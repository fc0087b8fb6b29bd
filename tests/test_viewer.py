"""The live viewer: its pure model, its feed against a real controller, its pygame window in dummy
video mode, and `povfarm viewer` painting a real render."""

from __future__ import annotations

import importlib.util
import os
import queue
import subprocess
import sys
import time
import xmlrpc.client
import zlib

import pytest

from harness import ROOT, SCENES, farm_argv, needs_povray, run_cli, wait_until
from farm.client import Client
from farm.images.png import decode_png
from farm.images.raster import row_size
from farm.rows import FILTERED, encode_rows
from farm.viewing import frames
from farm.viewing.canvas import CHECKER, TRANSPARENT, UNRENDERED, Canvas, checker
from farm.viewing.feed import Feed
from farm.viewing.state import ViewerState

HAS_PYGAME = importlib.util.find_spec("pygame") is not None
needs_pygame = pytest.mark.skipif(not HAS_PYGAME, reason="the viewer window needs pygame "
                                  "(pip install 'povfarm[viewer]')")
WINEGLASS = SCENES / "advanced/wineglass.pov"
DUMMY_VIDEO = {"SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}


# -- helpers ---------------------------------------------------------------------------------------------

def job_info(job_id: int = 1, width: int = 16, height: int = 8, state: str = "rendering", **extra) -> dict:
    info = {"id": job_id, "name": f"job{job_id}", "scene": "s.pov", "state": state, "progress": 0.0,
            "width": width, "height": height, "strips_total": 2, "strips_done": 0, "strips_leased": 0,
            "frames_total": 1, "frames_done": 0, "priority": 0, "error": "", "channels": 3, "bits": 8,
            "submitted": 100.0, "started": 100.0 if state != "queued" else 0.0, "finished": 0.0}
    info.update(extra)
    return info


def strip(rows: bytes, start: int, end: int, frame: int = 1) -> dict:
    return {"frame": frame, "row_start": start, "row_end": end, "rows": xmlrpc.client.Binary(zlib.compress(rows))}


def reply(job: dict, strips_=(), in_flight=(), cursor: int = 0) -> dict:
    return {"job": job, "cursor": cursor, "strips": list(strips_), "in_flight": list(in_flight)}


def fill(width: int, rows: int, value: int, channels: int = 3, bits: int = 8) -> bytes:
    return bytes([value]) * row_size(width, channels, bits) * rows


class Clock:
    def __init__(self, now: float = 110.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the pure model ----------------------------------------------------------------------------------------

def test_the_viewer_loads_pygame_only_when_its_window_opens():
    """Its model and feed run without a display, and the rest of the farm never needs pygame."""
    probe = ("import sys; import farm.viewer, farm.viewing.window; "
             "print('pygame' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def test_checker_alternates_squares_and_has_the_right_size():
    board = checker(20, 12, 3)
    assert len(board) == 20 * 12 * 3
    pixel = lambda x, y: board[(y * 20 + x) * 3]  # noqa: E731
    assert pixel(0, 0) == UNRENDERED[0] and pixel(CHECKER, 0) == UNRENDERED[1]
    assert pixel(0, CHECKER) == UNRENDERED[1] and pixel(CHECKER, CHECKER) == UNRENDERED[0]
    rgba = checker(5, 3, 4)
    assert len(rgba) == 5 * 3 * 4 and rgba[3::4] == bytes([255]) * 15


def test_canvas_paints_rows_and_knows_what_is_missing():
    canvas = Canvas(4, 10, 3, 8)
    assert canvas.missing() == [(0, 10)] and not canvas.complete
    canvas.paint(6, 10, fill(4, 4, 200))
    canvas.paint(0, 3, fill(4, 3, 100))
    assert canvas.missing() == [(3, 6)] and canvas.painted_rows == 7
    canvas.paint(3, 6, fill(4, 3, 150))
    assert canvas.complete and canvas.missing() == []
    expected = fill(4, 3, 100) + fill(4, 3, 150) + fill(4, 4, 200)
    assert canvas.raster().pixels == expected and bytes(canvas.display) == expected
    assert decode_png(canvas.png()).pixels == expected
    with pytest.raises(ValueError):
        canvas.paint(8, 11, fill(4, 3, 1))
    with pytest.raises(ValueError):
        canvas.paint(0, 2, fill(4, 1, 1))


def test_a_radiosity_pre_pass_band_is_outlined_on_its_own_rows_even_in_a_sheared_frame():
    """A band's pieces are the frame's rows (a folded band's at its top and bottom), never sheared rows."""
    state = ViewerState()
    job = job_info(width=64, height=128, strips_total=2, shear=3, block=16)
    band = {"frame": 1, "row_start": 0, "row_end": 32, "node": "n1", "progress": 0.5, "kind": "pretrace",
            "pieces": [[0, 32], [96, 128]]}
    state.handle(("feed", 1, reply(job, in_flight=[band])))
    assert state.strip_rectangles(band) == [(0, 0, 64, 32), (0, 96, 64, 128)]
    assert state.strip_rectangles({**band, "pieces": None}) == [(0, 0, 64, 32)]
    assert len(state.strip_rectangles({**band, "pieces": None, "kind": "rows"})) > 1    # a sheared strip's blocks


def test_canvas_shows_the_high_bytes_of_16_bit_samples_and_keeps_all_of_them():
    canvas = Canvas(2, 1, 4, 16)
    rows = bytes([0x12, 0x34, 0xAB, 0xCD, 0xFF, 0x00, 0x80, 0x01] * 2)
    canvas.paint(0, 1, rows)
    assert bytes(canvas.display) == bytes([0x12, 0xAB, 0xFF, 0x80] * 2)
    assert canvas.raster().pixels == rows and canvas.raster().bits == 16


def test_state_paints_each_reply_and_tracks_strips_in_flight():
    state = ViewerState()
    assert state.wanted() == (1, 0) and state.follow
    job = job_info(width=8, height=64, strips_total=2)
    state.handle(("feed", 1, reply(job, in_flight=[{"frame": 1, "row_start": 0, "row_end": 32, "node": "n1",
                                                    "progress": 0.25}])))
    assert state.target == 1 and state.frame == 1
    assert state.canvas().missing() == [(0, 64)]
    assert [s["node"] for s in state.shown_in_flight()] == ["n1"]
    full, bands = state.take_updates()
    assert full and bands == []

    state.handle(("feed", 1, reply(dict(job, strips_done=1), [strip(fill(8, 32, 9), 32, 64)],
                                   in_flight=[{"frame": 1, "row_start": 0, "row_end": 32, "node": "n2",
                                               "progress": 0.5}], cursor=7)))
    assert state.received == [(1, 32, 64)]
    assert state.take_updates() == (False, [(32, 64)])
    assert state.canvas().missing() == [(0, 32)]
    assert [s["node"] for s in state.shown_in_flight()] == ["n2"]
    assert state.colour("n1") != state.colour("n2") and state.colour("n1") == state.colour("n1")
    assert not state.finished

    state.handle(("feed", 1, reply(dict(job, state="done", progress=1.0, finished=130.0),
                                   [strip(fill(8, 32, 5), 0, 32)], cursor=9)))
    assert state.canvas().complete and not state.finished   # a reply with strips may not be the last
    assert state.shown_in_flight() == []
    state.handle(("feed", 1, reply(dict(job, state="done", progress=1.0, finished=130.0), cursor=9)))
    assert state.finished and state.exit_code == 0
    assert state.canvas().raster().pixels == fill(8, 32, 5) + fill(8, 32, 9)


def test_the_pieces_of_one_reply_are_blitted_as_few_bands_top_to_bottom():
    state = ViewerState()
    job = job_info(width=8, height=160, strips_total=5)
    state.handle(("feed", 1, reply(job)))
    state.take_updates()
    pieces = [strip(fill(8, 32, v), start, start + 32) for v, start in ((1, 64), (2, 0), (3, 128), (4, 32))]
    state.handle(("feed", 1, reply(job, pieces, cursor=4)))
    assert state.take_updates() == (False, [(0, 96), (128, 160)])
    assert state.received == [(1, 64, 96), (1, 0, 32), (1, 128, 160), (1, 32, 64)]     # in arrival order


def test_a_preview_is_shown_scaled_up_at_once_and_final_rows_replace_it():
    state = ViewerState()
    job = job_info(width=8, height=16)
    preview = bytes([10, 10, 10, 20, 20, 20]) + bytes([30, 30, 30, 40, 40, 40])     # 2x2 pixels
    piece = dict(strip(preview, 0, 2), kind="preview", width=2, height=2)
    state.handle(("feed", 1, reply(job, [piece])))
    canvas = state.canvas()
    assert state.take_updates()[0]                           # the whole image is repainted
    assert canvas.display[:12] == bytes([10] * 12) and canvas.display[12:24] == bytes([20] * 12)
    assert canvas.display[8 * 24:8 * 24 + 3] == bytes([30] * 3)   # the lower half: the lower preview row
    assert canvas.missing() == [(0, 16)] and state.received == []  # still no final row
    assert not any(canvas.raw)                                      # S never saves preview pixels
    state.handle(("feed", 1, reply(job, [strip(fill(8, 8, 77), 0, 8)])))
    assert canvas.display[:24] == bytes([77] * 24) and canvas.display[8 * 24:8 * 24 + 3] == bytes([30] * 3)
    assert state.take_updates() == (False, [(0, 8)])


def live_block(left, top, right, bottom, value, frame=1):
    rgb = bytes([value]) * ((right - left + 1) * (bottom - top + 1) * 3)
    return {"frame": frame, "left": left, "top": top, "right": right, "bottom": bottom,
            "rows": xmlrpc.client.Binary(zlib.compress(rgb))}


def test_live_blocks_paint_over_the_preview_where_no_final_rows_are_and_final_rows_replace_them():
    state = ViewerState()
    job = job_info(width=8, height=16)
    state.handle(("feed", 1, reply(job, [strip(fill(8, 4, 77), 0, 4)])))
    canvas = state.canvas()
    state.take_updates()
    state.handle(("feed", 1, {**reply(job), "live": [live_block(2, 2, 3, 5, 50)]}))
    assert state.take_updates() == (False, [(2, 6)])
    assert canvas.display[2 * 24 + 6:2 * 24 + 12] == bytes([77] * 6)       # final rows stay
    assert canvas.display[4 * 24 + 6:4 * 24 + 12] == bytes([50] * 6)       # below them: the block
    assert canvas.display[4 * 24:4 * 24 + 6] != bytes([50] * 6)            # beside it: unrendered
    assert canvas.missing() == [(4, 16)] and not any(canvas.raw[4 * 24:])   # S never saves live pixels
    state.handle(("feed", 1, reply(job, [strip(fill(8, 4, 9), 4, 8)])))
    assert canvas.display[4 * 24 + 6:4 * 24 + 12] == bytes([9] * 6) and state.take_updates() == (False, [(4, 8)])
    state.handle(("feed", 1, {**reply(job), "live": [live_block(0, 4, 1, 5, 50)]}))   # late: not shown
    assert canvas.display[4 * 24:4 * 24 + 6] == bytes([9] * 6) and state.take_updates() == (False, [])


def test_a_streams_live_records_reach_the_window_without_moving_its_cursor():
    job = job_info(3, width=8, height=8)
    rgb = zlib.compress(bytes([60]) * 2 * 2 * 3)
    live = ({"type": "piece", "kind": "live", "frame": 1, "left": 0, "top": 0, "right": 1, "bottom": 1,
             "size": len(rgb)}, rgb)
    state = ViewerState(3)
    replies = streamed([status_record(job), live, ({"type": "end", "size": 0}, b"")], state, per_read=2)
    assert replies[0][2]["cursor"] == 0 and len(replies[0][2]["live"]) == 1
    assert state.canvas().display[:6] == bytes([60] * 6) and state.received == []


def test_filtered_rows_of_16_bit_rgba_are_unfiltered_before_they_are_painted():
    state = ViewerState()
    job = job_info(width=5, height=8, channels=4, bits=16)
    pixels = bytes((i * 37 + (i // 40) * 11) & 255 for i in range(8 * 5 * 8))
    piece = dict(strip(b"", 0, 8), encoding=FILTERED,
                 rows=xmlrpc.client.Binary(encode_rows(pixels, FILTERED, 5 * 8, 8)))
    state.handle(("feed", 1, reply(job, [piece])))
    assert state.canvas().raster().pixels == pixels
    assert state.received == [(1, 0, 8)]


def test_following_keeps_polling_the_job_it_found():
    state = ViewerState()
    state.handle(("feed", 1, reply(job_info(4), [strip(fill(16, 4, 1), 0, 4)], cursor=3)))
    assert state.target == 4 and state.wanted() == (1, 0)   # the same poll goes on: no strip comes twice
    state.handle(("feed", 1, reply(job_info(4), [strip(fill(16, 4, 2), 4, 8)], cursor=5)))
    assert state.received == [(1, 0, 4), (1, 4, 8)]


def test_a_corrupt_strip_is_skipped_not_fatal():
    state = ViewerState(1)
    bad = {"frame": 1, "row_start": 0, "row_end": 4, "rows": xmlrpc.client.Binary(b"not zlib")}
    short = strip(fill(16, 3, 1), 4, 8)
    state.handle(("feed", 1, reply(job_info(), [bad, short])))
    assert state.received == [] and state.canvas().painted_rows == 0


def test_replies_of_an_older_session_never_paint():
    state = ViewerState()
    state.handle(("feed", 1, reply(job_info(1))))
    state.handle(("newest", job_info(2, state="rendering")))
    assert state.wanted() == (2, 2) and state.job == {}
    state.handle(("feed", 1, reply(job_info(1), [strip(fill(16, 8, 1), 0, 8)])))
    assert state.received == [] and state.canvas() is None
    state.handle(("feed", 2, reply(job_info(2), [strip(fill(16, 8, 2), 0, 8)])))
    assert state.received == [(1, 0, 8)] and state.job["id"] == 2


def test_following_moves_to_a_newer_job_once_it_starts():
    state = ViewerState()
    state.handle(("newest", job_info(1)))
    assert state.target is None        # with no job yet the feed's own poll finds it
    state.handle(("feed", 1, reply(job_info(1))))
    state.handle(("newest", job_info(2, state="queued")))
    assert state.target == 1           # queued: keep showing the job that renders
    state.handle(("newest", job_info(2, state="rendering")))
    assert state.target == 2 and state.session == 2
    pinned = ViewerState(1)
    pinned.handle(("feed", 1, reply(job_info(1))))
    pinned.handle(("newest", job_info(5, state="rendering")))
    assert pinned.target == 1


def test_next_and_previous_job_by_id():
    state = ViewerState(3)
    state.handle(("feed", 1, reply(job_info(3))))
    jobs = [job_info(i) for i in (1, 3, 4, 7)]
    state.step(+1)
    state.handle(("jobs", jobs))
    assert state.target == 4 and not state.follow
    state.step(+1)
    state.handle(("jobs", jobs))
    assert state.target == 7
    state.step(+1)
    state.handle(("jobs", jobs))
    assert state.target == 7 and state.follow and "following" in state.message
    state.step(-1)
    state.handle(("jobs", jobs))
    assert state.target == 4 and not state.follow
    state.step(-1)
    state.step(-1)                     # steps do not pile up: one move per answer
    state.handle(("jobs", jobs))
    state.handle(("jobs", jobs))
    assert state.target == 3
    state.step(-1)
    state.handle(("jobs", jobs))
    state.step(-1)
    state.handle(("jobs", jobs))
    assert state.target == 1 and "first job" in state.message
    state.handle(("jobs", jobs))       # a job list nobody asked for changes nothing
    assert state.target == 1


def test_elapsed_and_eta_from_the_job_times_and_progress():
    clock = Clock(110.0)
    state = ViewerState(1, clock=clock)
    state.handle(("feed", 1, reply(job_info(state="queued"))))
    assert state.timing() == (None, None)
    state.handle(("feed", 1, reply(job_info(started=100.0, progress=0.0))))
    assert state.timing() == (10.0, None)
    state.handle(("feed", 1, reply(job_info(started=100.0, progress=0.25))))
    assert state.timing() == (10.0, 30.0)
    clock.now = 120.0
    assert state.timing() == (20.0, 20.0)       # counted down until the next status says more
    lines = state.status_lines()
    assert "job 1 job1 (s.pov)  rendering  0 of 2 strips so far  25%" in lines[0]
    assert "elapsed 0:20  ETA 0:20" in lines[1]
    state.handle(("feed", 1, reply(job_info(state="done", progress=1.0, finished=150.0))))
    assert state.timing() == (50.0, 0.0) and "ETA" not in state.status_lines()[1]
    state.handle(("feed", 1, reply(job_info(state="failed", finished=105.0, error="Parse Error"))))
    assert state.timing() == (5.0, None) and state.exit_code == 1


def test_the_eta_is_the_controllers_measured_estimate_counted_down():
    clock = Clock(110.0)
    state = ViewerState(1, clock=clock)
    state.handle(("feed", 1, reply(job_info(started=100.0, progress=0.9, eta=42.0))))   # not 10 * 0.1 / 0.9
    assert state.timing() == (10.0, 42.0)
    clock.now = 120.0
    assert state.timing() == (20.0, 32.0) and "ETA 0:32" in state.status_lines()[1]
    clock.now = 200.0
    assert state.timing() == (100.0, 0.0)


def test_following_the_newest_job_is_said_once():
    state = ViewerState()
    state.handle(("feed", 1, reply(job_info(7))))
    state.step(+1)
    state.handle(("jobs", [job_info(7)]))        # N past the newest job: follow it
    assert state.follow and state.message == "following the newest job"
    assert state.status_lines()[1].count("following the newest job") == 1


def test_status_bar_shows_nodes_and_an_unreachable_controller():
    state = ViewerState()
    assert state.status_lines("http://x:1")[0] == "waiting for a job at http://x:1"
    state.handle(("nodes", [{"state": "idle"}, {"state": "busy"}, {"state": "offline"}]))
    state.handle(("link", False, "cannot reach the controller"))
    line = state.status_lines()[1]
    assert "2 nodes live of 3" in line and "controller unreachable" in line
    state.handle(("link", True, ""))
    assert "unreachable" not in state.status_lines()[1]
    before = state.version
    state.handle(("link", True, ""))
    state.handle(("nodes", [{"state": "idle"}, {"state": "busy"}, {"state": "offline"}]))
    assert state.version == before     # nothing changed: nothing to redraw


def test_an_outage_is_said_once_each_way_and_ends_the_viewer_only_after_its_patience():
    from farm.retry import Outage

    now, said = [0.0], []
    state = ViewerState(outage=Outage("http://x:1", 60, said.append, clock=lambda: now[0]))
    for _ in range(3):       # both of the feed's threads fail, again and again
        state.handle(("link", False, "cannot reach the controller at http://x:1: Connection refused"))
        now[0] += 20
    assert len(said) == 1 and said[0].startswith("lost the controller at http://x:1") and state.gave_up
    state.handle(("link", True, ""))
    state.handle(("link", True, ""))
    assert said[1:] == ["reconnected to the controller at http://x:1 after 60 s"] and not state.gave_up


def test_an_animation_shows_the_newest_frame_with_pixels_and_its_finished_frames_step_and_play():
    clock = Clock()
    state = ViewerState(1, clock=clock)
    job = job_info(frames_total=3, height=8, first_frame=1)
    first = {"frame": 1, "row_start": 0, "row_end": 8, "node": "a", "progress": 0.5}
    second = {"frame": 2, "row_start": 0, "row_end": 8, "node": "b", "progress": 0.1}
    state.handle(("feed", 1, reply(job, in_flight=[second, first])))
    assert state.frame == 1 and [s["node"] for s in state.shown_in_flight()] == ["a"]
    state.handle(("feed", 1, reply(dict(job, frames_done=1), [strip(fill(16, 8, 1), 0, 8, frame=1)],
                                   in_flight=[second])))
    assert state.frame == 1            # frame 2 has no pixels yet: never an empty frame
    job["frames_done"] = 1
    state.handle(("feed", 1, dict(reply(job, in_flight=[second]), live=[live_block(0, 0, 15, 3, 9, frame=2)])))
    assert state.frame == 2 and "frame 2 (1/3 frames done)" in state.status_lines()[0]
    state.navigate(frames.PREVIOUS)
    assert state.frame == 1 and state.canvas().raster().pixels == fill(16, 8, 1)     # kept for stepping
    assert "stepped" in state.status_lines()[0]
    state.handle(("feed", 1, dict(reply(job), live=[live_block(0, 0, 15, 3, 7, frame=3)])))
    assert state.frame == 1            # stepped: new pixels elsewhere do not move it
    state.navigate(frames.PLAY)
    shown = []
    for _ in range(4):
        clock.now += frames.PLAY_EVERY
        state.navigate("")
        shown.append(state.frame)
    assert shown == [2, 3, 1, 2] and "playing" in state.status_lines()[0]
    state.navigate(frames.FOLLOW)
    assert state.frame == 3
    state.handle(("feed", 1, reply(dict(job, frames_done=2), [strip(fill(16, 8, 2), 0, 8, frame=2)])))
    assert state.frame == 3 and set(state.frames) == {1, 2, 3}
    assert [f for f, _, _ in state.received] == [1, 2]


def test_frames_beyond_the_memory_budget_are_forgotten_lowest_first_never_the_one_shown():
    class Frame:
        def __init__(self, has_pixels):
            self.has_pixels, self.size = has_pixels, 10
    held = {1: Frame(True), 2: Frame(True), 3: Frame(False), 4: Frame(True), 5: Frame(False)}
    assert frames.to_forget(held, shown=5, budget=30) == [3, 1]
    assert frames.to_forget(held, shown=1, budget=20) == [3, 5, 2]


# -- the feed against a real controller ----------------------------------------------------------------------

def view_clients(farm):
    """What `povfarm viewer` gets from the configuration: clients with the controller's view token."""
    from farm.auth import read_token_file

    token = read_token_file(farm.token_file)["view"]
    return lambda timeout: Client(farm.url, timeout=timeout, token=token)


def _drain(feed: Feed, state: ViewerState, until, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if feed.wanted != state.wanted():
            feed.watch(*state.wanted())
        feed.follow = state.follow
        try:
            state.handle(feed.messages.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError("the feed went quiet") from None
        assert time.monotonic() < deadline, "timed out"


class StreamClient:
    """A client whose stream sends `records`, `per_read` of them to each read."""

    def __init__(self, records, per_read=1):
        self.records, self.per_read = records, per_read

    def call(self, method):
        assert method == "api.version"
        return {"api": 1, "server": "povfarm", "features": ["feed_stream"]}

    def stream(self, path, query, timeout):
        for start in range(0, len(self.records), self.per_read):
            yield self.records[start:start + self.per_read]

    def close(self):
        pass


def piece_record(frame, start, end, cursor, rows):
    return ({"type": "piece", "frame": frame, "row_start": start, "row_end": end, "kind": "rows",
             "cursor": cursor, "size": len(rows)}, rows)


def status_record(job, in_flight=()):
    return ({"type": "job", "job": job, "in_flight": list(in_flight), "size": 0}, b"")


def streamed(records, state, per_read=1):
    feed = Feed("http://127.0.0.1:1", make_client=lambda timeout: StreamClient(records, per_read))
    feed._want = state.wanted()
    feed._poll(*state.wanted())              # in this thread: the stream ends, so does the poll
    messages = []
    while not feed.messages.empty():
        messages.append(feed.messages.get())
        state.handle(messages[-1])
    return [m for m in messages if m[0] == "feed"]


@pytest.mark.parametrize("per_read", [1, 3])
def test_a_job_that_ended_before_the_viewer_opened_is_finished_once_its_pieces_are_in(per_read):
    """What the controller sends for a job that ended before the viewer opened: its status first, then
    its pieces, then the end; read a record at a time or all at once."""
    job = job_info(3, width=8, height=32, state="done", progress=1.0, finished=130.0)
    rows = zlib.compress(fill(8, 32, 7))
    state = ViewerState(3)
    streamed([status_record(job), piece_record(1, 0, 32, 1, rows), ({"type": "end", "size": 0}, b"")], state,
             per_read)
    assert state.canvas().complete and state.finished and state.exit_code == 0


def test_the_pieces_of_one_read_reach_the_window_as_one_message_in_order():
    job = job_info(3, width=8, height=64, progress=0.5)
    later = {**job, "progress": 1.0, "state": "done"}
    first, second = zlib.compress(fill(8, 32, 7)), zlib.compress(fill(8, 32, 9))
    state = ViewerState(3)
    replies = streamed([status_record(job), piece_record(1, 0, 32, 5, first), piece_record(1, 32, 64, 6, second),
                        status_record(later), ({"type": "end", "size": 0}, b"")], state, per_read=4)
    assert [len(reply["strips"]) for _, _, reply in replies] == [2, 0]     # one read, then the end
    assert [s["row_start"] for s in replies[0][2]["strips"]] == [0, 32] and replies[0][2]["cursor"] == 6
    assert replies[0][2]["job"]["state"] == "done" and replies[1][2]["cursor"] == 6
    assert state.canvas().complete and state.finished and state.received == [(1, 0, 32), (1, 32, 64)]


def test_a_stream_that_moves_to_another_job_delivers_the_pieces_before_it_and_stops():
    job, newer = job_info(3, width=8, height=64), job_info(4, width=8, height=64)
    rows = zlib.compress(fill(8, 32, 7))
    state = ViewerState(3)
    replies = streamed([status_record(job), piece_record(1, 0, 32, 5, rows), status_record(newer),
                        piece_record(1, 0, 32, 1, rows)], state, per_read=4)
    assert len(replies) == 1 and replies[0][2]["job"]["id"] == 3 and len(replies[0][2]["strips"]) == 1
    assert state.received == [(1, 0, 32)]


class PollClient:
    """A controller from before the feature list (and the stream): api.version lists nothing, viewer.watch
    answers `replies` in turn."""

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def call(self, method, *args):
        self.calls.append(method)
        if method == "api.version":
            return {"api": 1, "server": "povfarm 0.8.0"}
        assert method == "viewer.watch"
        return self.replies.pop(0)

    def stream(self, path, query, timeout):
        raise AssertionError("the viewer opened a stream the controller does not list")

    def close(self):
        pass


def test_a_viewer_follows_a_controller_without_the_feed_stream_by_long_polls_asking_once():
    job = job_info(3, width=8, height=64)
    first, second = zlib.compress(fill(8, 32, 7)), zlib.compress(fill(8, 32, 9))
    pieces = [{"frame": 1, "row_start": start, "row_end": start + 32, "kind": "rows",
               "rows": xmlrpc.client.Binary(rows)} for start, rows in ((0, first), (32, second))]
    client = PollClient([reply(job, pieces[:1], cursor=1),
                         reply(dict(job, state="done", progress=1.0, finished=130.0), pieces[1:], cursor=2),
                         reply(dict(job, state="done", progress=1.0, finished=130.0), cursor=2)])
    state = ViewerState(3)
    feed = Feed("http://127.0.0.1:1", make_client=lambda timeout: client)
    feed._want = state.wanted()
    feed._poll(*state.wanted())              # in this thread: the job ends, so does the poll
    while not feed.messages.empty():
        state.handle(feed.messages.get())
    assert client.calls == ["api.version", "viewer.watch", "viewer.watch", "viewer.watch"]
    assert state.canvas().complete and state.finished and state.received == [(1, 0, 32), (1, 32, 64)]


def test_the_feed_reports_an_unreachable_controller_and_reconnects(farm):
    from farm.auth import create_token_file

    create_token_file(farm.token_file)                 # the controller will use these tokens
    feed = Feed(farm.url, poll_timeout=2, make_client=view_clients(farm)).start()   # nobody listens yet
    state = ViewerState()
    try:
        _drain(feed, state, lambda: not state.link_ok, timeout=10)
        assert "controller unreachable" in state.status_lines()[1]
        farm.start_controller()
        _drain(feed, state, lambda: state.link_ok and state.nodes_total == 0, timeout=20)
        assert "unreachable" not in state.status_lines()[1]
    finally:
        feed.stop()


@needs_povray
def test_a_viewer_joining_mid_render_gets_every_strip_once(farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1")
    farm.start_node("n2")
    submitted = run_cli("submit", str(WINEGLASS), "--width", "320", "--height", "240", "--strips", "8",
                        "--option", "+A0.3", "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)
    status = wait_until(lambda: (s := farm.client.call("jobs.status", job_id))["strips_done"] >= 2 and s,
                        timeout=60, interval=0.02, what="two strips")
    assert status["state"] == "rendering", "the job ended before the viewer joined"

    state = ViewerState(job_id)
    feed = Feed(farm.url, make_client=view_clients(farm)).start()
    try:
        _drain(feed, state, lambda: state.finished)
    finally:
        feed.stop()
    keys = [(frame, start) for frame, start, _ in state.received]
    assert len(keys) == len(set(keys)) == 8, state.received
    assert state.canvas().complete and state.exit_code == 0
    fetched = decode_png(farm.client.call("jobs.fetch", job_id).data)
    assert state.canvas().raster() == fetched


# -- the window, in dummy video mode ------------------------------------------------------------------------

class FakeFeed:
    def __init__(self):
        self.messages: queue.Queue = queue.Queue()
        self.wanted = None
        self.follow = True
        self.jobs_requested = 0

    def watch(self, session: int, job: int) -> None:
        self.wanted = (session, job)

    def request_jobs(self) -> None:
        self.jobs_requested += 1


@pytest.fixture
def window(monkeypatch, tmp_path):
    if not HAS_PYGAME:
        pytest.skip("the viewer window needs pygame (pip install 'povfarm[viewer]')")
    for key, value in DUMMY_VIDEO.items():
        monkeypatch.setenv(key, value)
    from farm.viewing.window import Window, import_pygame

    pygame = import_pygame()
    made = []

    def make(state: ViewerState, **kwargs):
        feed = FakeFeed()
        win = Window(pygame, state, feed, save_dir=tmp_path, **kwargs)
        made.append(win)
        return win, feed

    yield make
    pygame.quit()


def _image_area(win) -> bytes:
    pg = win.pg
    x, y = win.view_pos
    w, h = win.view.get_size()
    return pg.image.tostring(pg.display.get_surface().subsurface((x, y, w, h)), "RGB")


def _press(win, key) -> int | None:
    win.pg.event.post(win.pg.event.Event(win.pg.KEYDOWN, key=key, mod=0, unicode="", scancode=0))
    return win.step()


def test_the_window_paints_strips_row_by_row_and_saves_the_image(window, tmp_path):
    state = ViewerState(1)
    win, feed = window(state)
    pg = win.pg
    job = job_info(width=64, height=32)
    top, bottom = bytes(range(64 * 3)) * 16, bytes(reversed(range(64 * 3))) * 16
    feed.messages.put(("feed", 1, reply(job, [strip(top, 0, 16)],
                                        in_flight=[{"frame": 1, "row_start": 16, "row_end": 32, "node": "n1",
                                                    "progress": 0.4}])))
    assert win.step() is None
    assert feed.wanted == (1, 1)
    # A small image is enlarged to fit, above the status bar, which covers none of it.
    bar_top = win.window_size[1] - win.status_height()
    assert win.fit and win.view.get_size() == (round(64 * win.scale), round(32 * win.scale)) and win.scale > 6
    assert win.view_pos[1] + win.view.get_height() <= bar_top
    assert _press(win, pg.K_f) is None and not win.fit             # 1:1
    assert _press(win, pg.K_o) is None and not win.overlay         # the image alone
    shown = _image_area(win)
    assert shown[:len(top)] == top and shown[len(top):] == checker(64, 16, 3)

    feed.messages.put(("feed", 1, reply(dict(job, state="done", progress=1.0, finished=101.0),
                                        [strip(bottom, 16, 32)])))
    win.step()
    assert _image_area(win) == top + bottom
    assert _press(win, pg.K_s) is None and "saved" in state.message
    assert decode_png((tmp_path / "povfarm-job1.png").read_bytes()).pixels == top + bottom

    assert _press(win, pg.K_f) is None and win.fit                 # back to fit, and the overlay
    assert _press(win, pg.K_o) is None and win.overlay
    assert _press(win, pg.K_n) is None and feed.jobs_requested == 1
    size = pg.display.get_surface().get_size()
    state.handle(("jobs", [{"id": 1}, {"id": 2}]))                   # N: on to job 2, of another size
    feed.messages.put(("feed", 2, reply(job_info(2, width=300, height=20), [strip(fill(300, 20, 9), 0, 20)])))
    win.step()
    assert state.target == 2 and win.image.get_size() == (300, 20)
    assert pg.display.get_surface().get_size() == size                # the same window, the image fitted in
    assert _press(win, pg.K_q) == 0


def test_the_window_composites_alpha_over_a_checker_and_shows_a_failure(window, tmp_path):
    snapshot = tmp_path / "snap.png"
    state = ViewerState(1)
    win, feed = window(state, snapshot=snapshot, exit_when_done=True, scale=1)
    job = job_info(width=16, height=16, channels=4, state="failed", error="File 's.pov' line 4: Parse Error")
    clear_then_red = (bytes([0, 0, 0, 0]) * 16 + bytes([255, 0, 0, 255]) * 16) * 4
    feed.messages.put(("feed", 1, reply(job, [strip(clear_then_red, 0, 8)])))
    assert win.step() is None            # the job failed, but one more reply confirms nothing is left
    feed.messages.put(("feed", 1, reply(job)))
    assert win.step() == 1
    win.overlay = False
    win.draw()
    shown = _image_area(win)
    assert shown[:3] == bytes([TRANSPARENT[0]] * 3)      # transparent: the light checker shows
    assert shown[16 * 3:17 * 3] == bytes([255, 0, 0])    # opaque red
    assert shown[8 * 16 * 3:8 * 16 * 3 + 3] == bytes([UNRENDERED[1]] * 3)   # not rendered (row 8: odd band)
    saved = decode_png(snapshot.read_bytes())
    assert saved.channels == 4 and saved.pixels[:len(clear_then_red)] == clear_then_red
    win.overlay = True
    win.draw()                           # the error box and status bar draw without trouble


# -- the command -------------------------------------------------------------------------------------------

HIDE_PYGAME = ("import sys; sys.modules['pygame'] = None; from farm.cli import main; "
               "sys.exit(main(sys.argv[1:]))")


def _counting_set_mode(pygame, monkeypatch) -> list:
    opened = []
    set_mode = pygame.display.set_mode
    monkeypatch.setattr(pygame.display, "set_mode",
                        lambda *args, **kw: opened.append(args) or set_mode(*args, **kw))
    return opened


@pytest.mark.parametrize("known", [True, False])
def test_the_window_is_opened_once_and_not_again_when_the_first_image_comes(window, monkeypatch, known):
    from farm.viewing.window import import_pygame

    opened = _counting_set_mode(import_pygame(), monkeypatch)
    win, feed = window(ViewerState(1), image_size=(320, 240) if known else None)
    size = win.pg.display.get_surface().get_size()
    assert size == win.natural_size(*((320, 240) if known else win.USUAL_IMAGE))
    feed.messages.put(("feed", 1, reply(job_info(width=320, height=240))))
    win.step()
    assert win.image.get_size() == (320, 240) and len(opened) == 1
    assert win.pg.display.get_surface().get_size() == size


def test_the_previews_label_is_clear_of_the_first_strips(window, monkeypatch):
    win, feed = window(ViewerState(1), image_size=(320, 240))
    in_flight = [{"frame": 1, "row_start": 0, "row_end": 60, "node": "view", "progress": 0.0, "kind": "preview"},
                 {"frame": 1, "row_start": 0, "row_end": 60, "node": "boxB", "progress": 0.0, "kind": "rows"}]
    feed.messages.put(("feed", 1, reply(job_info(width=320, height=240), in_flight=in_flight)))
    labels = []
    label = win._label
    monkeypatch.setattr(win, "_label", lambda w, text, pos, *a, **k: labels.append((text, pos)) or label(w, text, pos, *a, **k))
    win.step()
    (preview, (px, py)), (strip, (sx, sy)) = sorted(labels, key=lambda item: "preview" not in item[0])
    assert preview == "view preview 0%" and strip == "boxB 0%"
    assert py == sy and px >= sx + win.small.size(strip)[0] + 8      # beside it, not over it
    assert px + win.small.size(preview)[0] + 8 <= win.view_pos[0] + win.view.get_width()


def test_without_pygame_the_viewer_says_how_to_install_it():
    result = subprocess.run([sys.executable, "-c", HIDE_PYGAME, "viewer", "--controller", "http://127.0.0.1:9"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "pip install 'povfarm[viewer]'" in result.stderr and "Traceback" not in result.stderr
    helped = subprocess.run([sys.executable, "-c", HIDE_PYGAME, "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert helped.returncode == 0 and "viewer" in helped.stdout


@needs_pygame
@needs_povray
def test_viewer_snapshot_of_a_real_render_equals_the_fetched_png(farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1")
    farm.start_node("n2")
    snapshot = tmp_path / "out.png"
    env = {**os.environ, **DUMMY_VIDEO}
    viewer = subprocess.Popen(farm_argv("viewer", "--snapshot", str(snapshot), "--exit-when-done",
                                        "--controller", farm.url),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)   # the viewer is up and waiting for a job before there is one
        submitted = run_cli("submit", str(WINEGLASS), "--width", "160", "--height", "120", "--strips", "4",
                            "--controller", farm.url)
        assert submitted.returncode == 0, submitted.stderr
        job_id = int(submitted.stdout)
        out, err = viewer.communicate(timeout=120)
    finally:
        if viewer.poll() is None:
            viewer.kill()
            viewer.wait()
    assert viewer.returncode == 0, err
    fetched = tmp_path / "fetched.png"
    assert run_cli("fetch", str(job_id), "--output", str(fetched), "--controller", farm.url).returncode == 0
    assert decode_png(snapshot.read_bytes()) == decode_png(fetched.read_bytes())

    # A failed job: the viewer pinned to it exits 1 at once; an unknown job is one sentence.
    broken = tmp_path / "broken" / "broken.pov"
    broken.parent.mkdir()
    broken.write_text('camera { location <0, 1, -3> look_at 0 }\nsphere { 0, 1 pigment { rgb 1 }\nbox { 0, 1 }\n')
    failed = run_cli("submit", str(broken), "--width", "64", "--height", "48", "--wait", "--controller", farm.url)
    assert failed.returncode == 1
    failed_id = int(failed.stdout)
    shown = run_cli("viewer", str(failed_id), "--exit-when-done", "--controller", farm.url, env=env, timeout=60)
    assert shown.returncode == 1, shown.stderr
    unknown = run_cli("viewer", "999", "--controller", farm.url, env=env, timeout=60)
    assert unknown.returncode == 1 and "there is no job 999" in unknown.stderr
    assert unknown.stderr.strip().count("\n") == 0
    refused = run_cli("viewer", "--controller", farm.url, env={**env, "POVFARM_TOKEN": "wrong"}, timeout=60)
    assert refused.returncode == 1 and "token" in refused.stderr and refused.stderr.strip().count("\n") == 0


def test_a_status_after_the_last_pieces_in_the_same_read_settles_them_without_an_end():
    """Following the newest job, the stream sends no end: a "done" status that came after the last pieces
    in the same read (a live block's wake-up can gather them) finishes the viewer all the same; the
    stream's first status, sent before the pieces, never does."""
    from farm.viewing.feed import _StreamReading
    job = job_info(3, width=8, height=32)
    done = {**job, "state": "done", "progress": 1.0, "finished": 130.0}
    rows = zlib.compress(fill(8, 32, 7))
    reading, state = _StreamReading(0, 0), ViewerState()
    for reply_ in reading.replies([status_record(done), piece_record(1, 0, 32, 1, rows)]):
        state.handle(("feed", 1, reply_))
    assert not state.finished                          # an ended job's first status comes before its pieces
    reading, state = _StreamReading(0, 0), ViewerState()
    for reply_ in reading.replies([status_record(job), piece_record(1, 0, 32, 1, rows), status_record(done)]):
        state.handle(("feed", 1, reply_))
    assert state.canvas().complete and state.finished
