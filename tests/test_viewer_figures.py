"""The figures the viewers show beside the image: the ETA (smoothed, held while the controller is out of
reach), a node's colour (from its name), the strips counted while the job is cut, the progress of a
canceled job. (The pygame window's own layout is tested in test_viewer.py.)"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from harness import register_node, submit
from farm.viewing.colours import PALETTE, node_colour
from farm.viewing.eta import SMOOTHING, ShownEta
from farm.viewing.state import ViewerState, strips_text
from test_viewer import job_info, reply

seconds = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False)
gaps = st.floats(min_value=0.01, max_value=60.0, allow_nan=False)


# -- the ETA ---------------------------------------------------------------------------------------------

@given(seconds, gaps)
def test_the_first_estimate_is_shown_as_it_is_then_counted_down(estimate, later):
    eta = ShownEta()
    assert eta.left(0.0) is None
    eta.measure(estimate, 100.0)
    assert eta.left(100.0) == estimate
    assert eta.left(100.0 + later) == pytest.approx(max(0.0, estimate - later))


@given(seconds, seconds, gaps)
def test_an_estimate_moves_the_eta_by_the_share_its_wait_earns(first, second, wait):
    eta = ShownEta()
    eta.measure(first, 0.0)
    before = eta.left(wait)
    eta.measure(second, wait)
    after = eta.left(wait)
    kept = math.exp(-wait / SMOOTHING)       # the share of the gap left
    assert after == pytest.approx(second + kept * (before - second), abs=1e-6)
    assert min(before, second) - 1e-6 <= after <= max(before, second) + 1e-6


@given(seconds, seconds, gaps, st.integers(min_value=2, max_value=20))
def test_a_burst_of_replies_moves_it_no_further_than_one_after_the_same_wait(first, second, wait, burst):
    one, many = ShownEta(), ShownEta()
    first += wait           # not counted down to 0 before the wait is over
    one.measure(first, 0.0)
    many.measure(first, 0.0)
    one.measure(second, wait)
    for i in range(1, burst + 1):
        many.measure(second + wait * (1 - i / burst), wait * i / burst)   # the same estimate, counted down
    assert many.left(wait) == pytest.approx(one.left(wait), abs=1e-6)


@given(seconds, gaps)
def test_estimates_that_agree_with_the_countdown_leave_it_as_it_is(estimate, wait):
    eta = ShownEta()
    eta.measure(estimate + wait, 0.0)
    eta.measure(estimate, wait)
    assert eta.left(wait) == pytest.approx(estimate, abs=1e-6)


def test_the_swings_of_a_new_job_are_smoothed():
    eta, shown = ShownEta(), []
    for at, estimate in [(0.0, 50.0), (1.5, 26.0), (3.0, 36.0)]:      # as the controller said them
        eta.measure(estimate, at)
        shown.append(eta.left(at))
    assert shown[0] == 50.0
    steps = [abs(b - a) for a, b in zip(shown, shown[1:])]
    assert max(steps) < 7.0, shown          # not 24 s down then 10 s up


@given(seconds, seconds, gaps)
def test_a_guess_from_the_fraction_done_gives_way_to_the_first_measured_estimate(guess, measured, wait):
    eta = ShownEta()
    eta.measure(guess, 0.0, guess=True)
    eta.measure(guess / 2, wait, guess=True)      # guesses are smoothed among themselves
    eta.measure(measured, 2 * wait)
    assert eta.left(2 * wait) == measured
    eta.measure(measured + 100.0, 3 * wait, guess=True)    # a guess after it is smoothed, not taken as it is
    assert eta.left(3 * wait) < measured + 100.0


@given(seconds, gaps, gaps)
def test_a_held_eta_stands_still_and_counts_down_on_from_there(estimate, held, after):
    eta = ShownEta()
    eta.measure(estimate, 0.0)
    eta.hold(1.0)
    frozen = eta.left(1.0)
    assert eta.held and eta.left(1.0 + held) == frozen
    eta.resume(1.0 + held)
    assert not eta.held and eta.left(1.0 + held + after) == pytest.approx(max(0.0, frozen - after))


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_viewer_holds_its_eta_and_says_so_while_the_controller_is_out_of_reach():
    clock = Clock(110.0)
    state = ViewerState(1, clock=clock)
    state.handle(("feed", 1, reply(job_info(started=100.0, progress=0.5, eta=40.0))))
    clock.now = 115.0
    state.handle(("link", False, "cannot reach the controller"))
    clock.now = 135.0
    assert state.timing()[1] == 35.0 and "ETA 0:35 (stale)" in state.status_lines()[1]
    state.handle(("link", True, ""))
    clock.now = 140.0
    assert state.timing()[1] == 30.0 and "(stale)" not in state.status_lines()[1]


def test_a_new_job_starts_its_own_eta():
    clock = Clock(110.0)
    state = ViewerState(0, clock=clock)
    state.handle(("feed", 1, reply(job_info(1, started=100.0, eta=400.0))))
    state.handle(("jobs", None))
    state._switch(2)
    state.handle(("feed", 2, reply(job_info(2, started=105.0, eta=20.0))))
    assert state.timing()[1] == 20.0


# -- colours and counts ------------------------------------------------------------------------------------

@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=8, unique=True))
def test_a_nodes_colour_comes_from_its_name_whatever_order_the_nodes_are_met_in(names):
    first, second = ViewerState(), ViewerState()
    forwards = [first.colour(name) for name in names]
    backwards = [second.colour(name) for name in reversed(names)]
    assert forwards == list(reversed(backwards))
    assert all(colour in PALETTE for colour in forwards)


def test_two_usual_node_names_get_different_colours():
    assert node_colour("boxA") != node_colour("boxB") and node_colour("n1") != node_colour("n2")


def test_the_strips_of_a_running_job_are_counted_so_far():
    assert strips_text({"state": "rendering", "strips_done": 3, "strips_total": 8}) == "3 of 8 strips so far"
    assert strips_text({"state": "done", "strips_done": 14, "strips_total": 14}) == "14/14 strips"


def test_a_canceled_job_keeps_the_progress_it_had(stepped, scene):
    job = submit(stepped, scene)                # 8x64 in two strips of 32 rows
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    stepped.call("nodes.heartbeat", n, {task["lease"]: 0.5})
    before = stepped.call("jobs.status", job)["progress"]
    assert before == 0.25
    stepped.call("jobs.cancel", job)
    status = stepped.call("jobs.status", job)
    assert status["state"] == "canceled" and status["progress"] == before
