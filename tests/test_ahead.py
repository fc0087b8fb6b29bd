"""One unit asked for ahead per slot (farm/rendering/ahead.py): leased with the same fencing as any other, so
nothing is lost and nothing counted twice, also when the node holding it dies before starting it."""

from __future__ import annotations

import signal

import pytest

from harness import (SCENES, assert_same_pixels, native_render, needs_povray, register_node, rows_for,
                     submit, wait_ended, wait_until, write_scene)
from farm.faults import Code, FarmError
from farm.rendering.ahead import UnitProgress, remaining, unit_progress
from farm.rendering.task import Task

MEDIASKY = SCENES / "advanced/mediasky.pov"       # ~13 s at 320x240 on one thread: strips take seconds


def test_what_is_left_of_a_unit_comes_from_povrays_progress(tmp_path):
    log = tmp_path / "povray.log"
    assert unit_progress(log, 1) is None and remaining(3.0, None) == float("inf")
    log.write_text("Parsing...\n")
    assert unit_progress(log, 1) is None
    log.write_text("Rendering frame 1 of 4\nRendered 10 of 100 pixels (10%)\rRendered 50 of 100 pixels (50%)")
    assert unit_progress(log, 1) == 0.5
    assert unit_progress(log, 4) == pytest.approx(0.5 / 4)
    log.write_text("Rendering frame 3 of 4\nRendered 50 of 100 pixels (50%)")
    assert unit_progress(log, 4) == pytest.approx(2.5 / 4)
    assert remaining(6.0, 0.75) == pytest.approx(2.0) and remaining(6.0, 1.0) == 0.0


def test_a_strip_loading_a_radiosity_cache_counts_its_pretrace_pass_as_half_of_it(tmp_path):
    """POV-Ray counts its pixels again in each pass: a strip loading its frame's cache pretraces first (to
    99% of its pixels), then renders. Its pretrace's 99% is half the unit, and the final pass the rest."""
    log = tmp_path / "povray.log"
    progress = UnitProgress(log, passes=2)
    for text, expected in (("Parsing...\n", None), ("Rendered 30 of 100 pixels (30%)", 0.15),
                           ("Rendered 99 of 100 pixels (99%)", 0.495),
                           ("Rendered 99 of 100 pixels (99%)\rRendered 10 of 100 pixels (10%)", 0.55),
                           ("Rendered 80 of 100 pixels (80%)", 0.9), ("Rendered 5 of 100 pixels (5%)", 0.525)):
        log.write_text(text)
        assert progress() == (None if expected is None else pytest.approx(expected))
    plain = UnitProgress(log)                        # one pass: POV-Ray's count as it stands
    log.write_text("Rendered 99 of 100 pixels (99%)")
    assert plain() == 0.99
    strip = Task(lease="l", job=1, frame=1, strip=2, attempt=1, width=8, height=8, row_start=0, row_end=8,
                 bundle="b", scene="s.pov", options=(), channels=3, bits=8, frame_last=1, radiosity_cache=True)
    assert UnitProgress.of_task(strip, log).passes == 2
    assert UnitProgress.of_task(strip, log).at(log) == pytest.approx(0.495)      # as a heartbeat reads it


def test_a_unit_leased_ahead_and_never_started_is_reclaimed_by_its_lease_and_counted_once(stepped, tmp_path):
    job = submit(stepped, write_scene(tmp_path / "scene"), width=4, height=128, strips=4)
    ahead_node = register_node(stepped, "ahead")
    current = stepped.call("nodes.poll", ahead_node)
    leased_ahead = stepped.call("nodes.poll", ahead_node, 0)      # asked for while `current` renders
    assert current["strip"] != leased_ahead["strip"]
    # The node's heartbeats renew the unit not yet started at progress 0, like the one rendering.
    stepped.clock_.now += 20
    assert stepped.call("nodes.heartbeat", ahead_node, {current["lease"]: 0.5, leased_ahead["lease"]: 0.0}) \
        .get("stop", []) == []
    stepped.clock_.now += 20
    stepped.tick()
    assert {s["state"] for s in stepped.call("jobs.status", job)["strips"]
            if s["index"] in (current["strip"], leased_ahead["strip"])} == {"leased"}
    # Then the node dies: both leases run out, and both units go to the other node.
    stepped.clock_.now += 31
    stepped.tick()
    other = register_node(stepped, "other")
    taken = []
    while task := stepped.call("nodes.poll", other, 0):
        taken.append(task["strip"])
        stepped.call("nodes.complete", other, task["lease"], rows_for(task, 5), 1.0)
    assert sorted(taken) == [0, 1, 2, 3]
    with pytest.raises(FarmError) as late:       # fenced: the node was presumed dead, its token is stale
        stepped.call("nodes.complete", ahead_node, leased_ahead["lease"], rows_for(leased_ahead, 9), 1.0)
    assert late.value.code is Code.UNKNOWN_NODE
    again = register_node(stepped, "ahead")      # back, under a new id: the old lease is still refused
    with pytest.raises(FarmError) as late:
        stepped.call("nodes.complete", again, leased_ahead["lease"], rows_for(leased_ahead, 9), 1.0)
    assert late.value.code is Code.STALE_LEASE
    stepped.settle()
    status = stepped.call("jobs.status", job)
    assert status["state"] == "done" and status["strips_done"] == 4
    by_index = {s["index"]: s for s in status["strips"]}
    assert by_index[leased_ahead["strip"]]["attempts"] == 2 and by_index[current["strip"]]["attempts"] == 2


def test_a_node_asking_ahead_for_nothing_stays_busy(stepped, tmp_path):
    submit(stepped, write_scene(tmp_path / "scene"), width=4, height=32, strips=1)
    node = register_node(stepped, "n")
    assert stepped.call("nodes.poll", node)
    assert stepped.call("nodes.poll", node, 0) == {}
    assert {n["name"]: n["state"] for n in stepped.call("nodes.list")}["n"] == "busy"


@needs_povray
def test_a_node_killed_holding_a_unit_leased_ahead_its_unit_is_rendered_elsewhere(farm, tmp_path, monkeypatch):
    monkeypatch.setenv("POVFARM_ASK_AHEAD", "1000")     # ask ahead as soon as POV-Ray's progress shows
    # Leases renewed every 2 s: a unit held ahead goes up to two intervals unrenewed between two units.
    farm.start_controller("--lease-timeout", "8")
    victim = farm.start_node("victim")
    job = submit(farm.client, MEDIASKY, width=320, height=240, strips=4)

    def held_by_victim():
        held = [s for s in farm.client.call("jobs.status", job)["strips"]
                if s["state"] == "leased" and s["node"].startswith("victim")]
        return held if len(held) == 2 else None
    held = wait_until(held_by_victim, timeout=120, what="the victim to lease a strip ahead")
    assert "leased ahead" in farm.log("victim")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    farm.start_node("survivor")

    final = wait_ended(farm.client, job)
    assert final["state"] == "done", final["error"]
    by_index = {s["index"]: s for s in final["strips"]}
    assert all(by_index[s["index"]]["attempts"] == 2 for s in held)
    assert all(s["state"] == "done" for s in final["strips"]) and final["strips_done"] == 4
    assert "leased ahead" in farm.log("survivor")
    fetched = tmp_path / "farm.png"
    fetched.write_bytes(farm.client.call("jobs.fetch", job).data)
    assert_same_pixels(fetched, native_render(MEDIASKY, 320, 240, [], tmp_path / "native.png", once=True))
