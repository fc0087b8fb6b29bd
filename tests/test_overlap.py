"""A slot's next unit started while its current one ends (farm/rendering/overlap.py): at most one unit
overlaps the current one, each keeps its own lease, so pixels stay exact and every strip is counted once, also
when the node dies holding two units at work."""

from __future__ import annotations

import signal
import threading
from types import SimpleNamespace

from harness import (SCENES, assert_same_pixels, native_render, needs_povray, submit, wait_ended, wait_until)
from farm.faults import Code, FarmError
from farm.kinds import PREVIEW, ROWS
from farm.rendering.overlap import Overlap, starts_now

MEDIASKY = SCENES / "advanced/mediasky.pov"       # ~13 s at 320x240 on one thread: strips take seconds


def test_the_next_unit_starts_only_in_hand_and_within_the_lead():
    assert starts_now(0.5, 0.8, True) and starts_now(0.8, 0.8, True)
    assert not starts_now(0.9, 0.8, True)             # too early: the current unit has more than the lead left
    assert not starts_now(0.1, 0.8, False)            # nothing leased ahead yet
    assert not starts_now(0.0, 0.0, True)             # overlap = 0: never
    assert not starts_now(float("inf"), 0.8, True)    # POV-Ray has not begun to trace


class FakeAhead:
    def __init__(self, tasks):
        self.tasks = list(tasks)

    def ready(self):
        return bool(self.tasks)

    def take(self):
        return self.tasks.pop(0) if self.tasks else None


class Slot:
    """A slot's loop over fake units: each one shows it is near its end at once, and ends when told."""

    def __init__(self, tmp_path, count, lead, handed=None, kinds=None, fails=()):
        self.tasks = [SimpleNamespace(lease=f"l{n}", kind=(kinds or {}).get(n, ROWS), job=1, strip=n, frame=1,
                                      frame_last=1, radiosity_cache=False, sheared_part=False) for n in range(count)]
        self.end = {task.lease: threading.Event() for task in self.tasks}
        self.running, self.most, self.released, self.worked = set(), 0, [], []
        self.lock, self.handed, self.tmp_path = threading.Lock(), handed or {}, tmp_path
        self.overlap = Overlap(self.work, FakeAhead(self.tasks[1:]), lead, threading.Event(),
                               self.released.append, None, clock=lambda: 0.0)
        self.returned, self.fails, self.raised = [], fails, []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        task = self.tasks[0]
        try:
            while task is not None:
                task = self.overlap.next_after(task)
                self.returned.append(task)
        except FarmError as err:
            self.raised.append(err)

    def work(self, overlap, task, ended):
        log = self.tmp_path / f"{task.lease}.log"
        log.write_text("Rendered 99 of 100 pixels (99%)")
        watch = overlap.watching(task, log, lambda: False)
        with self.lock:
            self.running.add(task.lease)
            self.worked.append(task.lease)
            self.most = max(self.most, len(self.running))
        while not self.end[task.lease].wait(0.01):
            watch()
        with self.lock:
            self.running.discard(task.lease)
        if task.lease in self.fails:
            raise FarmError(Code.UNREACHABLE, "down")
        return self.handed.get(task.lease), 1.0

    def now_running(self, *leases):
        wait_until(lambda: self.running == set(leases), timeout=10, what=f"{leases} to run")


def test_a_slot_starts_its_next_unit_as_the_current_one_ends_and_never_more_than_one(tmp_path):
    slot = Slot(tmp_path, 4, lead=0.8)
    slot.now_running("l0", "l1")         # l1 started while l0 ends
    slot.end["l1"].set()                 # l1 ends first: the slot still waits for l0 before starting l2
    wait_until(lambda: "l1" not in slot.running, timeout=10, what="l1 to end")
    assert slot.running == {"l0"} and "l2" not in slot.worked
    slot.end["l0"].set()
    slot.now_running("l2", "l3")         # l2 started at once (no unit overlapped it), then l3 beside it
    slot.end["l2"].set()
    slot.end["l3"].set()
    slot.thread.join(10)
    assert not slot.thread.is_alive() and slot.worked == ["l0", "l1", "l2", "l3"]
    assert slot.most == 2 and slot.released == []


def test_without_overlap_a_slot_runs_one_unit_at_a_time(tmp_path):
    slot = Slot(tmp_path, 3, lead=0.0)
    for lease in ("l0", "l1", "l2"):
        slot.now_running(lease)
        slot.end[lease].set()
    slot.thread.join(10)
    assert slot.most == 1 and slot.worked == ["l0", "l1", "l2"]


def test_a_task_handed_back_with_a_result_is_released_when_the_next_unit_already_started(tmp_path):
    handed = SimpleNamespace(lease="handed", kind=ROWS, job=1, strip=9, frame=1, frame_last=1, radiosity_cache=False,
                             sheared_part=False)
    slot = Slot(tmp_path, 2, lead=0.8, handed={"l0": handed})
    slot.now_running("l0", "l1")
    slot.end["l0"].set()
    wait_until(lambda: slot.released, timeout=10, what="the surplus task to be released")
    assert slot.released == [handed] and slot.running == {"l1"}
    slot.end["l1"].set()
    slot.thread.join(10)


def test_a_preview_leased_ahead_is_not_started_early_but_handed_to_the_slot(tmp_path):
    slot = Slot(tmp_path, 2, lead=0.8, kinds={1: PREVIEW})
    slot.now_running("l0")
    slot.end["l0"].set()
    wait_until(lambda: slot.returned, timeout=10, what="the slot's loop to return the preview")
    assert slot.returned[0] is slot.tasks[1]          # the task itself, for the slot to render aside
    slot.end["l1"].set()
    slot.thread.join(10)


def test_a_unit_that_raises_ends_the_slots_loop_after_the_unit_it_started_early(tmp_path):
    slot = Slot(tmp_path, 3, lead=0.8, fails={"l0"})
    slot.now_running("l0", "l1")
    slot.end["l0"].set()
    wait_until(lambda: slot.running == {"l1"}, timeout=10, what="l0 to end")
    assert not slot.raised                    # l1 is a current strip: the slot waits for it
    slot.end["l1"].set()
    slot.thread.join(10)
    assert [err.code for err in slot.raised] == [Code.UNREACHABLE] and slot.worked == ["l0", "l1"]


@needs_povray
def test_two_nodes_overlapping_units_give_exact_pixels_and_count_each_strip_once(farm, tmp_path, monkeypatch):
    # Lease ahead and start the next unit as soon as POV-Ray's progress shows: every unit overlaps.
    monkeypatch.setenv("POVFARM_ASK_AHEAD", "1000")
    monkeypatch.setenv("POVFARM_OVERLAP", "1000")
    farm.start_controller()
    farm.start_node("a")
    farm.start_node("b")
    job = submit(farm.client, MEDIASKY, width=320, height=240, strips=6)
    final = wait_ended(farm.client, job)
    assert final["state"] == "done", final["error"]
    assert final["strips_done"] == 6 and all(s["attempts"] == 1 for s in final["strips"])
    assert "started while" in farm.log("a") + farm.log("b")
    fetched = tmp_path / "farm.png"
    fetched.write_bytes(farm.client.call("jobs.fetch", job).data)
    assert_same_pixels(fetched, native_render(MEDIASKY, 320, 240, [], tmp_path / "native.png", once=True))


@needs_povray
def test_a_node_killed_with_two_units_at_work_loses_nothing(farm, tmp_path, monkeypatch):
    monkeypatch.setenv("POVFARM_ASK_AHEAD", "1000")
    monkeypatch.setenv("POVFARM_OVERLAP", "1000")
    farm.start_controller("--lease-timeout", "8")
    victim = farm.start_node("victim")
    job = submit(farm.client, MEDIASKY, width=320, height=240, strips=4)
    wait_until(lambda: "started while" in farm.log("victim"), timeout=120, what="the victim to overlap two units")
    held = [s["index"] for s in farm.client.call("jobs.status", job)["strips"]
            if s["state"] == "leased" and s["node"].startswith("victim")]
    assert len(held) >= 2
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    farm.start_node("survivor")

    final = wait_ended(farm.client, job)
    assert final["state"] == "done", final["error"]
    assert all(s["state"] == "done" for s in final["strips"]) and final["strips_done"] == 4
    by_index = {s["index"]: s for s in final["strips"]}
    assert all(by_index[index]["attempts"] == 2 for index in held)
    fetched = tmp_path / "farm.png"
    fetched.write_bytes(farm.client.call("jobs.fetch", job).data)
    assert_same_pixels(fetched, native_render(MEDIASKY, 320, 240, [], tmp_path / "native.png", once=True))

