"""The node's parts on their own: the typed task read off the wire, the controller's features, and each part
(delivery, uploads, heartbeats, downloads) built from what it uses and stepped without a Node."""

from __future__ import annotations

import threading
import xmlrpc.client

import pytest

from farm.rendering.delivery import Delivery, Uploads, rows_encoding
from farm.rendering.downloads import Downloads
from farm.faults import Code, FarmError
from farm.features import (BUNDLE_RANGES, BZ2_ROWS, COMPLETE_AND_POLL, CURRENT, FEATURES, FILTERED_ROWS,
                           HEARTBEAT_STATS, OLDEST, UNIT_COSTS, Features)
from farm.rendering.heartbeats import Beats, HeartbeatCall, LeaseWatch
from farm.rendering.task import RenderOutcome, Task
from farm.node import profile_line
from farm.kinds import PRETRACE, ROWS
from farm.rows import FILTERED, FILTERED_BZ2, ZLIB, decode_rows, encode_rows

WIRE = {"lease": "7.2.aabbccddeeff", "job": 7, "frame": 3, "frame_last": 5, "strip": 2, "attempt": 1,
        "width": 64, "height": 48, "row_start": 16, "row_end": 32, "bundle": "sha256:" + "ab" * 32,
        "scene": "scenes/s.pov", "options": ["+A0.3", "+UA"], "animation": ["+KFI1", "+KFF9"], "channels": 4,
        "bits": 16, "time_limit": 120.0, "kind": "pretrace", "radiosity_cache": True}
# What a controller from before animations, time limits, unit kinds and radiosity caches sent.
OLDER_WIRE = {name: WIRE[name] for name in ("lease", "job", "frame", "strip", "attempt", "width", "height",
                                            "row_start", "row_end", "bundle", "scene", "options", "channels",
                                            "bits")}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def no_pause(delay: float, ceiling: float) -> float:
    return 0.0


# -- the task --------------------------------------------------------------------------------------------------

def test_a_task_reads_every_member_of_the_wire_struct():
    task = Task.from_wire(WIRE)
    assert (task.lease, task.job, task.frame, task.frame_last, task.strip, task.attempt) == \
        ("7.2.aabbccddeeff", 7, 3, 5, 2, 1)
    assert (task.width, task.height, task.row_start, task.row_end, task.channels, task.bits) == (64, 48, 16, 32, 4, 16)
    assert (task.bundle, task.scene, task.options, task.animation) == \
        (WIRE["bundle"], "scenes/s.pov", ("+A0.3", "+UA"), ("+KFI1", "+KFF9"))
    assert (task.time_limit, task.kind, task.radiosity_cache) == (120.0, PRETRACE, True)
    assert task.frames == range(3, 6) and task.alpha


def test_a_task_from_an_older_controller_gets_the_defaults_its_missing_members_meant():
    task = Task.from_wire(OLDER_WIRE)
    assert task.frame_last == task.frame == 3 and task.frames == range(3, 4)
    assert (task.animation, task.time_limit, task.kind, task.radiosity_cache) == ((), 0.0, ROWS, False)
    assert Task.from_wire({**OLDER_WIRE, "time_limit": 30}).time_limit == 30.0     # an int is a number too


@pytest.mark.parametrize("member, value, said", [
    ("width", "64", "width must be a whole number of at least 1, not '64'"),
    ("width", 0, "width must be a whole number of at least 1, not 0"),
    ("job", True, "job must be a whole number of at least 0, not the boolean true"),
    ("lease", "", "lease must be a non-empty text"),
    ("options", "+A0.3", "options must be an array of texts"),
    ("options", ["+A0.3", 3], "options must be an array of texts"),
    ("channels", 2, "channels must be one of 3, 4, not 2"),
    ("bits", 8.0, "bits must be one of 8, 16, not 8.0"),
    ("time_limit", "soon", "time_limit must be a number of seconds"),
    ("time_limit", -1.0, "time_limit must be a number of seconds"),
    ("radiosity_cache", 1, "radiosity_cache must be a boolean, not 1"),
    ("kind", None, "kind must be a non-empty text, not nil"),
])
def test_a_malformed_task_is_refused_in_one_sentence_naming_the_member(member, value, said):
    with pytest.raises(FarmError) as err:
        Task.from_wire({**WIRE, member: value})
    assert err.value.code is Code.BAD_ARGUMENT
    assert str(err.value).startswith(f"the controller sent a malformed task: {said}")


def test_a_task_missing_a_member_every_controller_sends_is_refused():
    for member in OLDER_WIRE:
        with pytest.raises(FarmError) as err:
            Task.from_wire({name: value for name, value in WIRE.items() if name != member})
        assert str(err.value) == f"the controller sent a malformed task: it has no {member}"
    with pytest.raises(FarmError, match="a task must be a struct, not an array of 0 value"):
        Task.from_wire([])


# -- the controller's features ---------------------------------------------------------------------------------

def test_features_come_from_the_reply_and_a_reply_without_the_list_means_the_oldest():
    assert Features.of_reply({"node_id": "n1", "features": list(FEATURES)}) == CURRENT
    assert Features.of_reply({"node_id": "n1"}) == OLDEST
    assert Features.of_reply({"features": "all"}) == OLDEST
    listed = Features.of_reply({"features": [FILTERED_ROWS, "teleport", 3]})
    assert FILTERED_ROWS in listed and COMPLETE_AND_POLL not in listed and "teleport" in listed.names
    assert not any(feature in OLDEST for feature in FEATURES)


def test_the_controller_lists_its_features_on_register_and_to_api_version(tmp_path):
    from farm import api
    from farm.config import Config
    from farm.service import Services
    from farm.store import Store

    store = Store(tmp_path / "farm.store.db")
    try:
        methods = {name: method for name, (method, _) in api.build(Services(Config(), store, Clock())).items()}
        assert methods["nodes.register"]("n1", {"povray": "3.7"})["features"] == list(FEATURES)
        assert methods["api.version"]()["features"] == list(FEATURES)
    finally:
        store.close()


# -- delivery --------------------------------------------------------------------------------------------------

class Recorder:
    """A client that notes its calls and answers each from `answers` (a value, or a FarmError to raise)."""

    url = "http://127.0.0.1:9"

    def __init__(self, **answers):
        self.answers, self.calls = answers, []

    def call(self, method, *args):
        self.calls.append((method, *args))
        answer = self.answers.get(method.replace(".", "_"), True)
        if isinstance(answer, list):
            answer = answer.pop(0)
        if isinstance(answer, FarmError):
            raise answer
        return answer


def delivery(client, features=CURRENT, stopping=None) -> Delivery:
    return Delivery(client, lambda: "n1-abcd", lambda: features, stopping or threading.Event(),
                    threading.Event(), no_pause)


def filtered_outcome() -> RenderOutcome:
    return RenderOutcome("done", rows=b"filtered", seconds=0.5, encoding=FILTERED,
                         as_zlib=lambda: b"plain")


@pytest.mark.parametrize("features, payload", [
    (CURRENT, (b"cache", 2.5, ZLIB, {}, 0.0, [[0, 32, 0.25], [32, 40, 1.0]])),
    (Features(CURRENT.names - {UNIT_COSTS}), (b"cache", 2.5)),
])
def test_a_pre_pass_band_says_where_its_pretrace_went_to_a_controller_that_takes_it(features, payload):
    """A band's `costs` go after placeholders for the encoding, log and overhead it lacks; an older controller
    gets none of it."""
    client = Recorder()
    outcome = RenderOutcome("done", rows=b"cache", seconds=2.5, costs=((0, 32, 0.25), (32, 40, 1.0)))
    delivery(client, features).complete("lease", outcome, take_next=False)
    assert client.calls == [("nodes.complete", "n1-abcd", "lease", *payload)]


def test_delivery_sends_filtered_rows_and_takes_the_next_task_from_a_current_controller():
    client = Recorder(nodes_complete_and_poll=WIRE)
    assert delivery(client).complete("1.1.aa", filtered_outcome()) == WIRE
    ((method, node_id, lease, rows, seconds, encoding),) = client.calls
    assert (method, node_id, lease, rows, seconds, encoding) == \
        ("nodes.complete_and_poll", "n1-abcd", "1.1.aa", b"filtered", 0.5, FILTERED)


def test_delivery_to_a_controller_without_the_features_sends_plain_zlib_with_complete():
    client = Recorder()
    sender = delivery(client, features=OLDEST)
    assert sender.complete("1.1.aa", filtered_outcome()) is None
    ((method, _, _, rows, seconds),) = client.calls      # no encoding argument: plain zlib
    assert (method, rows, seconds) == ("nodes.complete", b"plain", 0.5) and sender.strips_done == 1


def test_delivery_retries_while_the_result_is_not_stored_and_drops_it_when_refused():
    unreachable = FarmError(Code.UNREACHABLE, "down")
    client = Recorder(nodes_complete=[unreachable, FarmError(Code.STORAGE, "disk full"), True])
    sender = delivery(client)
    assert sender.complete("1.1.aa", filtered_outcome(), take_next=False) is None
    assert [call[0] for call in client.calls] == ["nodes.complete"] * 3 and sender.strips_done == 1
    refused = Recorder(nodes_complete=FarmError(Code.STALE_LEASE, "gone"))
    dropping = delivery(refused)
    assert dropping.complete("1.1.aa", filtered_outcome(), take_next=False) is None
    assert len(refused.calls) == 1 and dropping.strips_done == 0


def test_a_stopping_node_delivers_without_taking_another_task():
    stopping = threading.Event()
    stopping.set()
    client = Recorder()
    delivery(client, stopping=stopping).complete("1.1.aa", filtered_outcome())
    assert [call[0] for call in client.calls] == ["nodes.complete"]


def test_rows_are_filtered_only_where_the_bytes_may_cost():
    """PNG's filters take 3-4x the CPU of plain zlib for 0.7x its bytes: worth it on a slow uplink or one not
    measured yet, not on a fast one, and never for a controller that does not take them. Packed by bz2 for a
    controller that takes it, plain deflate for one that does not."""
    slow_bps = 500_000
    no_bz2 = Features(frozenset(FEATURES) - {BZ2_ROWS})
    assert rows_encoding(CURRENT, 0.0, slow_bps) == FILTERED_BZ2        # not measured yet
    assert rows_encoding(CURRENT, 125_000.0, slow_bps) == FILTERED_BZ2
    assert rows_encoding(no_bz2, 125_000.0, slow_bps) == FILTERED
    assert rows_encoding(CURRENT, 50_000_000.0, slow_bps) == ZLIB
    assert rows_encoding(Features(frozenset(FEATURES) - {FILTERED_ROWS, BZ2_ROWS}), 0.0, slow_bps) == ZLIB


def test_bz2_rows_go_as_zlib_to_a_controller_that_does_not_take_them():
    """Rows packed before the node learnt what its controller takes (it registered again with an older one)."""
    client = Recorder(nodes_complete=True)
    raw = bytes(range(24)) * 4
    outcome = RenderOutcome("done", rows=encode_rows(raw, FILTERED_BZ2, 24, 3), seconds=1.0, encoding=FILTERED_BZ2,
                            as_zlib=lambda: encode_rows(raw, ZLIB, 24, 3))
    delivery(client, features=Features(frozenset(FEATURES) - {BZ2_ROWS})).complete("1.1.aa", outcome, False)
    (method, args), = [(call[0], call[1:]) for call in client.calls]
    assert method == "nodes.complete" and decode_rows(bytes(args[2]), ZLIB, len(raw), 24, 3) == raw
    assert len(args) == 4                                  # plain zlib, the encoding left unsaid


# -- uploads and heartbeats ------------------------------------------------------------------------------------

def test_uploads_deliver_in_order_after_the_jobs_preview_and_drop_a_withdrawn_lease():
    clock, delivered, previews, beats = Clock(), [], [], []
    may_start = threading.Event()

    def deliver(lease, outcome):
        assert may_start.wait(10)
        delivered.append(lease)

    uploads = Uploads(2, deliver, before=previews.append, heartbeat=lambda progress: beats.append(progress) or {},
                      clock=clock, beat_interval=lambda: 2.0)
    uploads.put("1.1.aa", filtered_outcome(), 7)
    uploads.put("2.1.bb", filtered_outcome(), 8)
    assert sorted(uploads.pending()) == ["1.1.aa", "2.1.bb"]
    uploads.renewed(["2.1.bb"], stop=["2.1.bb"])          # a heartbeat's reply: the controller withdrew it
    may_start.set()
    uploads.finish()
    assert delivered == ["1.1.aa"] and previews == [7, 8] and uploads.pending() == [] and beats == []


def test_uploads_renew_the_leases_of_results_that_waited_longer_than_a_beat():
    clock, beats = Clock(), []
    uploading, gate = threading.Event(), threading.Event()

    def deliver(lease, outcome):
        uploading.set()
        assert gate.wait(10)

    uploads = Uploads(2, deliver, before=lambda job: None,
                      heartbeat=lambda progress: beats.append(progress) or {"stop": []}, clock=clock,
                      beat_interval=lambda: 2.0)
    uploads.put("1.1.aa", filtered_outcome(), 1)
    assert uploading.wait(10)                           # the first goes up (slowly)
    uploads.put("2.1.bb", filtered_outcome(), 1)
    clock.now += 5.0                                    # and no slot renews the second's lease meanwhile
    gate.set()
    uploads.finish()
    assert beats == [{"2.1.bb": 1.0}]


def test_uploads_go_up_together_as_many_as_the_link_allows():
    """Two results that end together go up at once on a fast link (each would otherwise wait the other's round
    trip), one at a time where `together` says the uplink is slow."""
    for together, most in ((2, 2), (1, 1)):
        at_once, most_seen, lock, gate = [0], [0], threading.Lock(), threading.Event()

        def deliver(lease, outcome):
            with lock:
                at_once[0] += 1
                most_seen[0] = max(most_seen[0], at_once[0])
            gate.wait(0.3)
            with lock:
                at_once[0] -= 1

        uploads = Uploads(2, deliver, before=lambda job: None, heartbeat=lambda progress: {}, clock=Clock(),
                          beat_interval=lambda: 2.0, together=lambda: together)
        uploads.put("1.1.aa", filtered_outcome(), 1)
        uploads.put("2.1.bb", filtered_outcome(), 1)
        uploads.finish()
        assert most_seen[0] == most and uploads.pending() == []


def test_the_upload_rate_leaves_out_the_round_trip_of_a_far_controller():
    """A 70-kB result over a fast link 150 ms each way took 0.31 s, 0.30 of it the trip: its rate is that of
    its bytes, so the link is not taken for a slow one; over a slow link the bytes' time remains."""
    from farm.client import UploadMeter

    far, slow = UploadMeter(), UploadMeter()
    assert far.recent_best() == 0.0
    for seconds in (0.30, 0.35, 0.302):         # small calls: the round trip (a busy moment is not the least)
        far.round_trip(seconds)
    far.record(70_000, 0.31)
    assert far.recent_best() > 500_000
    slow.round_trip(0.01)
    slow.record(70_000, 0.57)                   # 1 Mbit/s
    assert 110_000 < slow.recent_best() < 130_000
    near = UploadMeter()
    near.record(70_000, 0.31)                   # no small call seen yet: the whole time counts
    assert near.recent_best() == pytest.approx(70_000 / 0.31)


def test_one_heartbeat_per_interval_carries_every_lease_and_the_results_waiting():
    clock, sent, heard = Clock(), [], []

    def send(progress):
        sent.append(dict(progress))
        return {"stop": ["b"]}

    beats = Beats(send, clock, lambda: 2.0, waiting=lambda: ["w"], renewed=lambda leases, stop: heard.append(
        (leases, stop)))
    assert beats.report("a", 0.25) is False and sent == [{"w": 1.0, "a": 0.25}]
    assert beats.report("b", 0.5) is True and len(sent) == 1          # withdrawn in the reply that came
    clock.now += 2.0
    beats.forget("b")
    beats.report("a", 0.5)
    assert sent[1] == {"w": 1.0, "a": 0.5} and heard == [(["w"], ["b"])] * 2


def test_a_lease_watch_stops_povray_when_the_node_aborts_or_the_lease_is_withdrawn(tmp_path):
    clock, aborting, reports = Clock(), threading.Event(), []
    withdrawn = {"b"}

    def report(lease, progress):
        reports.append((lease, progress))
        return lease in withdrawn

    log_path = tmp_path / "povray.log"
    log_path.write_text("Rendered 25 of 100 pixels\n")
    watch_a = LeaseWatch("a", log_path, report, clock, lambda: 2.0, aborting)
    watch_b = LeaseWatch("b", log_path, report, clock, lambda: 2.0, aborting)
    assert watch_a() is False and reports == []                        # not an interval yet
    clock.now += 2.0
    assert watch_a() is False and reports == [("a", 0.25)]
    assert watch_b() is True
    aborting.set()
    assert watch_a() is True


def test_a_unit_started_just_before_anothers_last_heartbeat_keeps_the_node_beating_every_interval(tmp_path):
    clock, sent = Clock(), []
    beats = Beats(lambda progress: sent.append(clock.now) or {"stop": []}, clock, lambda: 2.0, lambda: [],
                  lambda waiting, stop: None)
    log_path = tmp_path / "povray.log"
    log_path.write_text("Rendered 25 of 100 pixels\n")
    watch_b = LeaseWatch("b", log_path, beats.report, clock, lambda: 2.0, threading.Event())
    clock.now += 0.1
    beats.report("a", 1.0)              # unit a's last heartbeat, then a ends; only b's watch is called now
    for _ in range(100):
        clock.now = round(clock.now + 0.1, 3)
        watch_b()
    gaps = [later - earlier for earlier, later in zip(sent, sent[1:])]
    assert len(sent) >= 4 and max(gaps) <= 2.0 * 1.25 + 1e-9, sent


def test_a_heartbeat_carries_the_upload_rate_only_to_a_controller_that_takes_it():
    from farm.client import UploadMeter

    class Metered(Recorder):
        def __init__(self):
            super().__init__(nodes_heartbeat={"stop": []})
            self.uploads = UploadMeter()

    current, older = Metered(), Metered()
    for client in (current, older):
        client.uploads.record(100_000, 0.8)
    HeartbeatCall(current, lambda: "n1", lambda: CURRENT)({"a": 0.5})
    HeartbeatCall(older, lambda: "n1", lambda: Features(frozenset(FEATURES) - {HEARTBEAT_STATS}))({"a": 0.5})
    assert current.calls == [("nodes.heartbeat", "n1", {"a": 0.5}, {"upload_bps": 125_000.0})]
    assert older.calls == [("nodes.heartbeat", "n1", {"a": 0.5})]


# -- downloads -------------------------------------------------------------------------------------------------

def test_a_controller_without_ranges_sends_the_whole_bundle_in_one_reply(tmp_path):
    from farm.bundle.cache import BundleCache

    client = Recorder(bundles_fetch=xmlrpc.client.Binary(b"zip"))
    downloads = Downloads(client, BundleCache(tmp_path / "bundles"), lambda: OLDEST, threading.Event(), no_pause)
    assert downloads.fetch("sha256:" + "ab" * 32) == b"zip"
    assert client.calls == [("bundles.fetch", "sha256:" + "ab" * 32)]
    assert BUNDLE_RANGES in CURRENT


def test_a_strips_wait_for_its_radiosity_cache_shows_as_waiting_in_its_profile_not_as_the_nodes_work():
    task = Task.from_wire(WIRE)
    outcome = RenderOutcome("done", seconds=10.0, stages={"parse": 0.3, "trace": 9.2}, cache_wait=4.0)
    line = profile_line(task, outcome, 14.25, 0.5)
    assert "waited 4.500 s" in line and "start-up 0.500" in line and line.endswith("node 0.250 s")
