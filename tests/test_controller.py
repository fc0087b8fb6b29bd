"""The controller's rules, stepped with a fake clock, and its RPC surface over loopback."""

from __future__ import annotations

import http.client
import os
import xmlrpc.client

import pytest

from farm.bundle.packing import pack, plan_bundle
from farm.client import Client
from farm.config import Config
from farm import policy
from farm.faults import Code, FarmError
from farm.images.png import decode_png
from farm.images.raster import row_size
from farm.kinds import PREVIEW, ROWS, preview_size
from farm.planning import UnitPlan, plan_units, with_preview
from farm.rows import FILTERED, ZLIB, compress_rows, decode_rows, decompress_rows, encode_rows
from farm.store import Store
from harness import Clock, Stepped, register_node, rows_for, submit, wait_until


def test_a_job_runs_to_a_stitched_png(stepped, scene):
    job = submit(stepped, scene)
    n = register_node(stepped)
    for done, value in enumerate((10, 20), start=1):
        task = stepped.call("nodes.poll", n)
        assert task["row_end"] - task["row_start"] == 32
        stepped.call("nodes.complete", n, task["lease"], rows_for(task, value), 0.5)
        assert stepped.call("jobs.status", job)["strips_done"] == done
    assert stepped.call("nodes.poll", n) == {}
    # The node that delivered the last strip did not wait for the stitch: the frame is written off the
    # RPC path, by the maintenance thread's stitcher.
    assert stepped.call("jobs.status", job)["state"] == "rendering"
    stepped.settle()
    status = stepped.call("jobs.status", job)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["strips_done"] == 2
    image = decode_png(stepped.call("jobs.fetch", job).data)
    assert image.pixels == bytes([10]) * 32 * 24 + bytes([20]) * 32 * 24


def test_expired_lease_goes_back_and_a_late_result_is_refused(stepped, scene):
    job = submit(stepped, scene, strips=1)
    slow, fast = register_node(stepped, "slow"), register_node(stepped, "fast")
    first = stepped.call("nodes.poll", slow)
    stepped.clock_.now += 31          # the slow node went silent
    stepped.call("nodes.heartbeat", fast, {})  # the fast one did not
    stepped.tick()
    second = stepped.call("nodes.poll", fast)
    assert second["strip"] == first["strip"] and second["attempt"] == 2
    with pytest.raises(FarmError) as late:
        stepped.call("nodes.complete", slow, first["lease"], rows_for(first, 1), 1.0)
    assert late.value.code in (Code.STALE_LEASE, Code.UNKNOWN_NODE)
    stepped.call("nodes.complete", fast, second["lease"], rows_for(second, 2), 1.0)
    # Re-sending an accepted result is harmless; the image keeps the accepted rows.
    stepped.call("nodes.complete", fast, second["lease"], rows_for(second, 3), 1.0)
    stepped.settle()
    nodes = {entry["name"]: entry for entry in stepped.call("nodes.list")}
    assert nodes["fast"]["strips_done"] == 1 and nodes["slow"]["strips_done"] == 0   # counted once
    assert set(decode_png(stepped.call("jobs.fetch", job).data).pixels) == {2}


def test_heartbeat_renews_the_lease(stepped, scene):
    submit(stepped, scene, strips=1)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    for _ in range(5):
        stepped.clock_.now += 20
        assert stepped.call("nodes.heartbeat", n, {task["lease"]: 0.5}) == {"stop": [], "live": []}
        stepped.tick()
    assert stepped.call("jobs.status", 1)["strips"][0]["progress"] == 0.5
    stepped.call("nodes.complete", n, task["lease"], rows_for(task), 1.0)
    assert stepped.call("jobs.status", 1)["strips"][0]["state"] == "done"


def test_scene_error_fails_the_job_at_once(stepped, scene):
    job = submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    stepped.call("nodes.fail", n, task["lease"], "File 's.pov' line 1: Parse Error: oops", True)
    status = stepped.call("jobs.status", job)
    assert status["state"] == "failed" and "line 1: Parse Error" in status["error"]
    assert stepped.call("nodes.poll", n) == {}
    with pytest.raises(FarmError) as err:
        stepped.call("jobs.fetch", job)
    assert err.value.code is Code.JOB_NOT_DONE


def test_a_strip_that_keeps_failing_fails_the_job_after_the_retry_limit(stepped, scene):
    job = submit(stepped, scene, strips=1)
    nodes = [register_node(stepped, f"n{i}") for i in range(3)]
    for attempt, n in enumerate(nodes, start=1):
        task = stepped.call("nodes.poll", n)
        assert task["attempt"] == attempt
        stepped.call("nodes.fail", n, task["lease"], f"killed by signal 9 (try {attempt})", False)
    status = stepped.call("jobs.status", job)
    assert status["state"] == "failed" and "failed 3 times" in status["error"] and "try 3" in status["error"]


def test_a_lone_failing_node_is_held_back_so_a_healthy_node_can_take_the_strip(stepped, scene):
    job = submit(stepped, scene, strips=1)
    broken = register_node(stepped, "broken")
    task = stepped.call("nodes.poll", broken)
    stepped.call("nodes.fail", broken, task["lease"], "killed by signal 11", False)
    assert stepped.call("nodes.poll", broken) == {}          # held back for a moment...
    healthy = register_node(stepped, "healthy")
    again = stepped.call("nodes.poll", healthy)               # ...which a node joining meanwhile uses
    assert again["strip"] == task["strip"] and again["attempt"] == 2
    stepped.call("nodes.complete", healthy, again["lease"], rows_for(again), 1.0)
    stepped.settle()
    assert stepped.call("jobs.status", job)["state"] == "done"


def test_a_lone_failing_node_retries_after_growing_pauses_then_fails_the_job(stepped, scene):
    job = submit(stepped, scene, strips=1)
    n = register_node(stepped, "broken")
    for attempt in range(1, 4):
        task = stepped.call("nodes.poll", n)
        assert task["attempt"] == attempt
        stepped.call("nodes.fail", n, task["lease"], f"crash {attempt}", False)
        if attempt < 3:
            assert stepped.call("jobs.status", job)["state"] == "rendering"
            assert stepped.call("nodes.poll", n) == {}
            stepped.clock_.now += policy.retry_pause(attempt)
    status = stepped.call("jobs.status", job)
    assert status["state"] == "failed" and "failed 3 times" in status["error"] and "crash 3" in status["error"]


def test_cancel_tells_the_node_to_stop(stepped, scene):
    job = submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    stepped.call("jobs.cancel", job)
    assert stepped.call("nodes.heartbeat", n, {task["lease"]: 0.1}) == {"stop": [task["lease"]], "live": []}
    with pytest.raises(FarmError) as err:
        stepped.call("nodes.complete", n, task["lease"], rows_for(task), 1.0)
    assert err.value.code is Code.STALE_LEASE
    assert stepped.call("jobs.status", job)["state"] == "canceled"


def test_wrong_sized_rows_are_refused(stepped, scene):
    submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    with pytest.raises(FarmError) as err:
        stepped.call("nodes.complete", n, task["lease"], xmlrpc.client.Binary(compress_rows(b"short")), 1.0)
    assert err.value.code is Code.BAD_ARGUMENT


def test_higher_priority_first_then_first_come(stepped, scene):
    low = submit(stepped, scene, strips=1)
    high = submit(stepped, scene, strips=1, priority=5)
    n = register_node(stepped)
    assert stepped.call("nodes.poll", n)["job"] == high
    assert stepped.call("nodes.poll", n)["job"] == low


def test_a_new_priority_reorders_the_queue(stepped, scene):
    first = submit(stepped, scene, strips=1)
    second = submit(stepped, scene, strips=1)
    stepped.call("jobs.set_priority", second, 3)
    assert stepped.call("jobs.status", second)["priority"] == 3
    assert stepped.call("nodes.poll", register_node(stepped))["job"] == second
    with pytest.raises(FarmError) as err:
        stepped.call("jobs.set_priority", first, 5000)
    assert err.value.code is Code.BAD_ARGUMENT


def test_a_restarted_node_gives_its_leases_back(stepped, scene):
    submit(stepped, scene, strips=1)
    first = stepped.call("nodes.poll", register_node(stepped, "box"))
    again = stepped.call("nodes.poll", register_node(stepped, "box"))     # same name registers again after a crash
    assert again["strip"] == first["strip"] and again["attempt"] == 2


def test_restart_keeps_jobs_and_finished_strips(tmp_path, scene):
    config = Config(data_dir=tmp_path / "data")
    clock = Clock()
    store = Store(config.data_dir / "db.sqlite3")
    stepped = Stepped(config, store, clock)
    job = submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    stepped.call("nodes.complete", n, task["lease"], rows_for(task, 5), 1.0)
    in_flight = stepped.call("nodes.poll", n)
    store.close()

    reopened = Stepped(config, Store(config.data_dir / "db.sqlite3"), clock)
    reopened.services.recover()
    assert reopened.call("jobs.status", job)["strips_done"] == 1
    # The lease in flight survives the restart and its node can still deliver; the frame is stitched from
    # the stored strips (the first one's rows were delivered before the restart).
    reopened.call("nodes.complete", n, in_flight["lease"], rows_for(in_flight, 6), 1.0)
    reopened.settle()
    assert reopened.call("jobs.status", job)["state"] == "done"
    pixels = decode_png(reopened.call("jobs.fetch", job).data).pixels
    assert pixels == bytes([5]) * 32 * 24 + bytes([6]) * 32 * 24


@pytest.mark.parametrize("spec, code", [
    ({"width": 0}, Code.BAD_ARGUMENT),
    ({"width": "wide"}, Code.BAD_ARGUMENT),
    ({"height": 100000}, Code.BAD_ARGUMENT),
    ({"strips": 0}, Code.BAD_ARGUMENT),
    ({"bits": 12}, Code.BAD_ARGUMENT),
    ({"options": ["+O/tmp/x.png"]}, Code.BAD_OPTION),
    ({"options": ["Pre_Scene_Command=touch /tmp/x"]}, Code.BAD_OPTION),
    ({"scene": "other.pov"}, Code.BAD_ARGUMENT),
    ({"bundle": "sha256:00"}, Code.UNKNOWN_BUNDLE),
])
def test_bad_job_specs_are_refused_with_a_code(stepped, scene, spec, code):
    with pytest.raises(FarmError) as err:
        submit(stepped, scene, **spec)
    assert err.value.code is code


# -- over the wire ---------------------------------------------------------------------------------

def as_user(server) -> Client:
    return Client(server.url, timeout=10, token=server.tokens["submit"])


def test_faults_travel_as_codes_and_sentences(server):
    client = as_user(server)
    assert client.call("api.version")["api"] == 1
    for method, args, code in [
        ("jobs.status", (42,), Code.UNKNOWN_JOB),
        ("jobs.status", ("42",), Code.BAD_ARGUMENT),
        ("jobs.status", (), Code.BAD_ARGUMENT),
        ("no.such", (), Code.UNKNOWN_METHOD),
        ("nodes.poll", ("ghost",), Code.FORBIDDEN),
        ("system.multicall", ([],), Code.UNKNOWN_METHOD),
    ]:
        with pytest.raises(FarmError) as err:
            client.call(method, *args)
        assert err.value.code is code, (method, err.value)
    assert "jobs.submit" in client.call("system.listMethods")
    assert "bundle" in client.call("system.methodHelp", "jobs.submit")


def test_every_public_method_is_documented(server):
    client = as_user(server)
    for name in client.call("system.listMethods"):
        assert name.split(".")[0] in ("api", "bundles", "farm", "jobs", "nodes", "system", "viewer")
        text = client.call("system.methodHelp", name)
        assert text.startswith(name) and " -> " in text.splitlines()[0], name
        if not name.startswith("system."):
            assert "@return:" in text, name


def test_malformed_xml_is_a_bad_request_not_a_traceback(server):
    host, port = server.server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("POST", "/RPC2", body=b"<methodCall><methodName>jobs.list", headers={
        "Content-Type": "text/xml", "Authorization": f"Bearer {server.tokens['view']}"})
    body = connection.getresponse().read()
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(body)
    assert fault.value.faultCode == Code.BAD_REQUEST
    assert "Error" not in fault.value.faultString and "<class" not in fault.value.faultString
    assert as_user(server).call("jobs.list") == []


def test_an_unexpected_error_is_internal_with_a_reference(server, monkeypatch):
    def boom():
        raise ZeroDivisionError("secret detail")
    server.server._methods["jobs.list"] = boom
    with pytest.raises(FarmError) as err:
        as_user(server).call("jobs.list")
    assert err.value.code is Code.INTERNAL
    assert "ZeroDivision" not in str(err.value) and "secret" not in str(err.value) and "ref" in str(err.value)


def filtered_rows(task: dict, pixels: bytes) -> xmlrpc.client.Binary:
    row_bytes = row_size(task["width"], task["channels"], task["bits"])
    frames = task["frame_last"] - task["frame"] + 1
    return xmlrpc.client.Binary(encode_rows(pixels, FILTERED, row_bytes, task["channels"], frames))


def test_filtered_and_plain_deliveries_both_stitch_exactly_and_the_feed_ships_them_as_stored(stepped, scene):
    """A current node sends PNG-filtered rows and says so; an older node's plain zlib rows are still
    taken. The image is exact either way, and viewers get each strip in the form it was delivered."""
    job = submit(stepped, scene)
    n = register_node(stepped)
    gradient = bytes((x * 7 + y * 3) & 255 for y in range(32) for x in range(24))
    first, second = stepped.call("nodes.poll", n), stepped.call("nodes.poll", n)
    delivered = filtered_rows(first, gradient)
    stepped.call("nodes.complete", n, first["lease"], delivered, 0.5, FILTERED)
    stepped.call("nodes.complete", n, second["lease"], rows_for(second, 9), 0.5)
    stepped.settle()
    assert decode_png(stepped.call("jobs.fetch", job).data).pixels == gradient + bytes([9]) * 32 * 24
    feed = stepped.call("viewer.watch", job, 0, 0)
    by_start = {piece["row_start"]: piece for piece in feed["strips"]}
    assert by_start[first["row_start"]]["encoding"] == FILTERED
    assert by_start[first["row_start"]]["rows"].data == delivered.data
    assert by_start[second["row_start"]]["encoding"] == ZLIB


def test_a_filtered_delivery_that_does_not_fit_or_names_no_known_encoding_is_refused(stepped, scene):
    submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    plain = rows_for(task, 3)
    for rows, encoding in [(plain, FILTERED), (plain, "png"), (filtered_rows(task, bytes(32 * 24)), "zlib")]:
        with pytest.raises(FarmError) as err:
            stepped.call("nodes.complete", n, task["lease"], rows, 1.0, encoding)
        assert err.value.code is Code.BAD_ARGUMENT
    assert stepped.call("nodes.complete", n, task["lease"], filtered_rows(task, bytes(32 * 24)), 1.0, "filtered")


def test_an_animation_unit_of_filtered_frames_reaches_viewers_one_frame_at_a_time(stepped, scene):
    n = register_node(stepped)
    job = submit(stepped, scene, animation={"first": 1, "last": 6}, strips="auto")
    task = stepped.call("nodes.poll", n)
    assert (task["frame"], task["frame_last"], task["row_end"] - task["row_start"]) == (1, 3, 64)
    frames = [bytes([frame * 40 + (y % 5)]) * 24 for frame in range(3) for y in range(64)]
    stepped.call("nodes.complete", n, task["lease"], filtered_rows(task, b"".join(frames)), 1.0, FILTERED)
    feed = stepped.call("viewer.watch", job, 0, 0)
    assert [piece["frame"] for piece in feed["strips"]] == [1, 2, 3]
    for number, piece in enumerate(feed["strips"]):
        raw = decode_rows(piece["rows"].data, piece["encoding"], 64 * 24, 24, 3)
        assert raw == b"".join(frames[number * 64:(number + 1) * 64])


def test_viewer_feed_sends_each_strip_once_in_arrival_order(stepped, scene):
    job = submit(stepped, scene)
    assert stepped.call("viewer.watch", 0, 0, 0)["job"]["id"] == job
    n = register_node(stepped)
    first = stepped.call("nodes.poll", n)
    feed = stepped.call("viewer.watch", job, 0, 0)
    assert feed["strips"] == [] and feed["in_flight"][0]["node"] == "n1"
    stepped.call("nodes.complete", n, first["lease"], rows_for(first, 1), 1.0)
    feed = stepped.call("viewer.watch", job, 0, 5)
    assert [s["row_start"] for s in feed["strips"]] == [first["row_start"]]
    second = stepped.call("nodes.poll", n)
    stepped.call("nodes.complete", n, second["lease"], rows_for(second, 2), 1.0)
    stepped.settle()
    later = stepped.call("viewer.watch", job, feed["cursor"], 5)
    assert [s["row_start"] for s in later["strips"]] == [second["row_start"]]
    assert later["job"]["state"] == "done"
    assert stepped.call("viewer.watch", job, later["cursor"], 5)["strips"] == []


def test_viewer_long_poll_wakes_on_a_new_strip(stepped, scene):
    import threading
    import time

    job = submit(stepped, scene, strips=1)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    threading.Timer(0.3, stepped.call, ("nodes.complete", n, task["lease"], rows_for(task), 1.0)).start()
    started = time.monotonic()
    feed = stepped.call("viewer.watch", job, 0, 10)
    assert len(feed["strips"]) == 1 and time.monotonic() - started < 5


def test_a_full_database_is_a_storage_fault_and_work_resumes_when_space_returns(stepped, scene):
    job = submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    db = stepped.store.db._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")          # the disk is full: no page can be added
    storage = None
    try:
        submit(stepped, scene, animation={"first": 1, "last": 500})   # 500 frames: needs new pages
    except FarmError as caught:
        storage = caught
    assert storage is not None and storage.code is Code.STORAGE and "full" in str(storage)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.execute("PRAGMA max_page_count=1073741823")      # space returns
    stepped.call("nodes.complete", n, task["lease"], rows_for(task, 3), 1.0)
    second = stepped.call("nodes.poll", n)
    stepped.call("nodes.complete", n, second["lease"], rows_for(second, 4), 1.0)
    stepped.settle()
    assert stepped.call("jobs.status", job)["state"] == "done"


def test_an_image_that_cannot_be_written_is_written_by_a_later_tick(stepped, scene, monkeypatch):
    import errno
    from farm.service import stitcher

    job = submit(stepped, scene, strips=1)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    real_write = stitcher.write_atomically

    def disk_full(path, data):
        raise FarmError(Code.STORAGE, f"cannot write a png file: {os.strerror(errno.ENOSPC)}")
    monkeypatch.setattr(stitcher, "write_atomically", disk_full)
    stepped.call("nodes.complete", n, task["lease"], rows_for(task, 9), 1.0)
    stepped.settle()
    status = stepped.call("jobs.status", job)
    assert status["state"] == "rendering" and status["strips_done"] == 1   # the strip itself is stored
    monkeypatch.setattr(stitcher, "write_atomically", real_write)
    stepped.tick()
    assert stepped.call("jobs.status", job)["state"] == "done"
    assert set(decode_png(stepped.call("jobs.fetch", job).data).pixels) == {9}


def test_complete_and_poll_hands_over_the_next_task_with_the_result(stepped, scene):
    job = submit(stepped, scene)
    n = register_node(stepped)
    first = stepped.call("nodes.poll", n)
    second = stepped.call("nodes.complete_and_poll", n, first["lease"], rows_for(first, 1), 0.1)
    assert second["strip"] == 1 and second["lease"] != first["lease"]
    with pytest.raises(FarmError) as stale:   # a refused result leases nothing
        stepped.call("nodes.complete_and_poll", n, "1.9.feedfacecafe", rows_for(second, 2), 0.1)
    assert stale.value.code is Code.STALE_LEASE
    assert stepped.call("nodes.complete_and_poll", n, second["lease"], rows_for(second, 2), 0.1) == {}
    stepped.settle()
    assert stepped.call("jobs.status", job)["state"] == "done"


def test_every_write_is_on_disk_before_it_returns_even_when_commits_are_grouped(stepped, scene):
    """Sixteen threads complete strips while a commit is under way: they all wait, the next commit takes
    all their changes at once, and each then sees its strip committed through a connection of its own."""
    import sqlite3
    import threading

    job = submit(stepped, scene, height=512, strips=16)
    node_ids = [register_node(stepped, f"n{i}") for i in range(16)]
    tasks = [{**stepped.call("nodes.poll", node_id), "node": node_id} for node_id in node_ids]
    store, errors = stepped.store, []
    db = store.db

    def deliver(task: dict) -> None:
        store.units.complete(task["node"], task["lease"], b"x", 0.1, stepped.clock_())
        own = sqlite3.connect(str(store.path))
        state = own.execute("SELECT state FROM units WHERE lease=?", (task["lease"],)).fetchone()[0]
        own.close()
        if state != "done":
            errors.append(f"{task['lease']} is {state} after its call returned")

    with db._durable:
        db._committing = True     # as if another caller's commit were on its way to disk
    batch = db._batch
    threads = [threading.Thread(target=deliver, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()

    def all_written() -> bool:
        with db._lock:
            return db._db.execute("SELECT COUNT(*) FROM units WHERE state='done'").fetchone()[0] == len(tasks)
    wait_until(all_written, timeout=20, interval=0.01, what="every delivery written (not yet committed)")
    counts = {state.value: counts.units for state, counts in store.units.summary(job, ROWS, PREVIEW).items()}
    assert counts == {"leased": 16}                    # readers see committed data only
    assert db._committed < batch and not errors     # written, not committed: nobody has returned
    db._commit_batch()
    for thread in threads:
        thread.join(20)
    assert errors == [] and db._committed == batch   # one commit for all sixteen
    counts = {state.value: counts.units for state, counts in store.units.summary(job, ROWS, PREVIEW).items()}
    assert counts == {"done": 16}


def wire_task(**members) -> dict:
    """A task as nodes.poll sends it: a strip of a 32x32 still unless `members` say otherwise."""
    return {"lease": "1.1.aa", "job": 1, "frame": 1, "frame_last": 1, "strip": 0, "attempt": 1, "width": 32,
            "height": 32, "row_start": 0, "row_end": 32, "bundle": "sha256:" + "0" * 64, "scene": "s.pov",
            "options": [], "animation": [], "channels": 3, "bits": 8, "time_limit": 0.0, "kind": "rows",
            "radiosity_cache": False, **members}


def test_a_node_delivers_with_complete_to_a_controller_that_lists_no_combined_call(tmp_path):
    """A controller from before the feature list has none of the features: the node never tries
    nodes.complete_and_poll on it (such a controller answers fault 3), and delivers with nodes.complete."""
    from farm.node import Node
    from farm.rendering.task import RenderOutcome

    class OldController:
        url = "http://127.0.0.1:9"

        def __init__(self):
            self.calls = []

        def call(self, method, *args):
            self.calls.append(method)
            if method == "nodes.register":
                return {"node_id": "n1-abcd", "heartbeat_interval": 2.0}
            if method == "nodes.complete_and_poll":
                raise FarmError(Code.UNKNOWN_METHOD, "no such method")
            return True

    config = Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                    probe_cache=tmp_path / "probe.json")
    client = OldController()
    worker = Node(config, client)
    assert worker.register() == "n1-abcd"
    assert worker.delivery.complete("1.1.aa", RenderOutcome("done", rows=b"rows", seconds=0.5)) is None
    assert worker.delivery.complete("2.1.bb", RenderOutcome("done", rows=b"rows", seconds=0.5)) is None
    assert client.calls == ["nodes.register", "nodes.complete", "nodes.complete"]
    assert worker.strips_done == 2


# -- the preview ------------------------------------------------------------------------------------

def test_a_preview_goes_first_at_its_own_size_and_never_holds_the_frame_back(stepped, scene):
    job = submit(stepped, scene, width=64, height=64, preview=True, options=["+A0.3", "+AM2", "+UA"])
    n = register_node(stepped)
    preview = stepped.call("nodes.poll", n)
    assert preview["kind"] == "preview" and (preview["width"], preview["height"]) == (8, 8)
    assert (preview["row_start"], preview["row_end"]) == (0, 8)
    assert preview["options"] == ["+UA"]                     # no anti-aliasing in a preview
    rows = [stepped.call("nodes.poll", n) for _ in range(2)]
    assert [(t["kind"], t["width"], t["height"], t["options"]) for t in rows] == \
        [("rows", 64, 64, ["+A0.3", "+AM2", "+UA"])] * 2
    status = stepped.call("jobs.status", job)
    assert (status["strips_total"], status["preview"]) == (2, "leased")   # the preview is not a strip
    for value, task in enumerate(rows, start=1):
        stepped.call("nodes.complete", n, task["lease"], rows_for(task, value), 1.0)
    stepped.settle()
    status = stepped.call("jobs.status", job)
    assert (status["state"], status["progress"], status["strips_done"]) == ("done", 1.0, 2)
    assert status["preview"] == "canceled"                   # still in flight when the frame was done
    with pytest.raises(FarmError) as err:
        stepped.call("nodes.complete", n, preview["lease"], rows_for(preview, 99), 0.1)
    assert err.value.code is Code.STALE_LEASE
    image = decode_png(stepped.call("jobs.fetch", job).data)
    assert image.pixels == bytes([1]) * (32 * 64 * 4) + bytes([2]) * (32 * 64 * 4)


def test_a_preview_of_a_radiosity_scene_renders_without_radiosity():
    from farm.options import preview_options
    assert preview_options(["+A0.3", "+UA", "+Q9"], radiosity=False) == ("+UA", "+Q9")
    assert preview_options(["+A0.3", "+UA"], radiosity=True) == ("+UA", "+Q8")      # its pretrace costs seconds
    assert preview_options(["+Q4", "+UA"], radiosity=True) == ("+UA", "+Q4")        # never more than asked


def test_the_feed_carries_the_preview_as_its_own_piece_and_the_image_never_gets_it(stepped, scene):
    job = submit(stepped, scene, width=20, height=64, preview=True)
    n = register_node(stepped)
    preview = stepped.call("nodes.poll", n)
    stepped.call("nodes.complete", n, preview["lease"], rows_for(preview, 99), 0.2)
    feed = stepped.call("viewer.watch", job, 0, 0)
    (piece,) = feed["strips"]
    assert (piece["kind"], piece["width"], piece["height"], piece["row_start"], piece["row_end"]) == \
        ("preview", 2, 8, 0, 8)
    assert decompress_rows(piece["rows"].data, 2 * 8 * 3) == bytes([99]) * 48
    assert stepped.call("jobs.status", job)["strips_done"] == 0
    for value in (1, 2):
        task = stepped.call("nodes.poll", n)
        stepped.call("nodes.complete", n, task["lease"], rows_for(task, value), 1.0)
    stepped.settle()
    later = stepped.call("viewer.watch", job, feed["cursor"], 0)
    assert [(s["kind"], s["row_start"]) for s in later["strips"]] == [("rows", 0), ("rows", 32)]
    image = decode_png(stepped.call("jobs.fetch", job).data)
    assert 99 not in image.pixels and stepped.call("jobs.status", job)["preview"] == "done"


def test_a_failed_preview_is_given_up_but_a_scene_error_in_it_fails_the_job(stepped, scene):
    job = submit(stepped, scene, preview=True)
    n = register_node(stepped)
    preview = stepped.call("nodes.poll", n)
    stepped.call("nodes.fail", n, preview["lease"], "POV-Ray was killed by signal 9", False)
    status = stepped.call("jobs.status", job)
    assert status["state"] != "failed" and status["preview"] == "failed"
    assert stepped.call("nodes.poll", n)["kind"] == "rows"           # the job goes on without it

    broken = submit(stepped, scene, preview=True, priority=5)
    n2 = register_node(stepped, "n2")
    task = stepped.call("nodes.poll", n2)
    assert (task["job"], task["kind"]) == (broken, "preview")
    stepped.call("nodes.fail", n2, task["lease"], "Parse Error: No matching } in 'sphere'", True)
    status = stepped.call("jobs.status", broken)
    assert status["state"] == "failed" and "Parse Error" in status["error"]


def test_only_the_first_frame_of_an_animation_gets_a_preview():
    plans = with_preview(plan_units(96, 3, 10, slots=2), 128, 96, True)
    assert plans[0] == UnitPlan(3, 3, 0, 12, PREVIEW)
    assert [p.kind for p in plans[1:]] == ["rows"] * (len(plans) - 1)
    assert with_preview(plans[1:], 128, 96, False) == plans[1:]
    assert preview_size(7, 3000) == (1, 375)


def test_a_node_renders_a_preview_beside_its_strips_not_in_their_place(tmp_path):
    """The preview's POV-Ray mostly waits on its start-up: the slot that took it goes on to the next strip at
    once, and the preview is delivered on its own (nodes.complete, no next task)."""
    import threading

    from farm.node import Node
    from farm.rendering.task import RenderOutcome

    preview = wire_task(lease="1.1.aa", strip=0, row_end=1, kind="preview")
    strip = wire_task(lease="2.1.bb", strip=1, row_end=32, kind="rows")

    class FakeController:
        url = "http://127.0.0.1:9"

        def __init__(self):
            self.calls, self.tasks = [], [preview, strip]

        def call(self, method, *args):
            self.calls.append((method, args[1] if method.startswith("nodes.complete") else None))
            if method == "nodes.poll":
                return self.tasks.pop(0) if self.tasks else {}
            return {} if method == "nodes.complete_and_poll" else True

    config = Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                    probe_cache=tmp_path / "probe.json")
    client = FakeController()
    worker = Node(config, client)
    worker.node_id = "n1-abcd"
    strip_done, order = threading.Event(), []

    def render(task, strip_dir):
        if task.kind == "preview":
            assert strip_done.wait(10), "the strip waited for the preview"
        else:
            strip_done.set()
        order.append(task.kind)
        return RenderOutcome("done", rows=b"rows", seconds=0.1)

    worker.renderer.render = render
    assert worker.step()
    for aside in worker._asides:
        aside.join(10)
    worker.uploads.finish()
    assert order == ["rows", "preview"]
    assert ("nodes.complete", "1.1.aa") in client.calls and ("nodes.complete", "2.1.bb") in client.calls


def test_a_slow_upload_never_holds_a_slot_idle(tmp_path):
    """A finished strip goes up in the background: the slot polls and renders its next strip meanwhile,
    and the strip waiting to go up keeps its lease through the slot's heartbeats."""
    import threading

    from farm.node import Node
    from farm.rendering.task import RenderOutcome

    tasks = [wire_task(lease=f"{n}.1.aa", strip=n) for n in (1, 2)]
    upload_may_end, second_rendering = threading.Event(), threading.Event()

    class SlowUplink:
        url = "http://127.0.0.1:9"

        def __init__(self):
            self.calls = []

        def call(self, method, *args):
            self.calls.append((method, args[1] if len(args) > 1 else None))
            if method == "nodes.poll":
                return tasks.pop(0) if tasks else {}
            if method == "nodes.complete" and args[1] == "1.1.aa":
                assert upload_may_end.wait(10)          # the upload ends only once the next strip renders
            return {"stop": []} if method == "nodes.heartbeat" else True

    config = Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                    probe_cache=tmp_path / "probe.json", heartbeat_interval=0.0)
    client = SlowUplink()
    worker = Node(config, client)
    worker.node_id = "n1-abcd"

    def render(task, strip_dir):
        if task.strip == 2:
            second_rendering.set()
            worker.lease_watch(task.lease, strip_dir / "povray.log")()   # the slot's heartbeat
            upload_may_end.set()
        return RenderOutcome("done", rows=b"rows", seconds=0.1, encoding=FILTERED)

    worker.renderer.render = render
    assert worker.step() and worker.step()          # two strips, the first still uploading during the second
    assert second_rendering.is_set()
    worker.uploads.finish()
    assert [c for c in client.calls if c[0] == "nodes.complete"] == [("nodes.complete", "1.1.aa"),
                                                                     ("nodes.complete", "2.1.aa")]
    # The slot's heartbeat renewed the waiting strip's lease, as done.
    assert ("nodes.heartbeat", {"1.1.aa": 1.0, "2.1.aa": 0.0}) in client.calls
    assert worker.uploads.pending() == []


def test_a_node_reports_its_upload_rate_with_its_heartbeat_and_nodes_list_shows_it(stepped, scene):
    submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    assert stepped.call("nodes.list")[0]["upload_bps"] == 0.0
    assert stepped.call("nodes.heartbeat", n, {task["lease"]: 0.5}, {"upload_bps": 125000.0}) == {
        "stop": [], "live": []}
    assert stepped.call("nodes.list")[0]["upload_bps"] == 125000.0
    stepped.call("nodes.heartbeat", n, {task["lease"]: 0.6})                 # without stats: kept as it was
    assert stepped.call("nodes.list")[0]["upload_bps"] == 125000.0
    with pytest.raises(FarmError) as err:
        stepped.call("nodes.heartbeat", n, {}, {"upload_bps": "fast"})
    assert err.value.code is Code.BAD_ARGUMENT


def test_a_node_sends_one_heartbeat_per_interval_for_all_its_slots(tmp_path):
    """On a slow uplink every request counts: the slots' leases share one heartbeat, and a lease the
    controller withdraws stops the slot that holds it."""
    from farm.node import Node

    class Controller:
        url = "http://127.0.0.1:9"

        def __init__(self):
            self.beats = []

        def call(self, method, *args):
            assert method == "nodes.heartbeat"
            self.beats.append(args[1])
            return {"stop": ["b"] if len(self.beats) > 1 else []}

    clock = Clock()
    config = Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                    probe_cache=tmp_path / "probe.json")
    client = Controller()
    worker = Node(config, client, clock=clock)
    worker.node_id, worker.heartbeat_interval = "n1-abcd", 2.0
    slot_a, slot_b = (worker.lease_watch(lease, tmp_path / "none.log") for lease in ("a", "b"))
    clock.now += 2.0
    assert slot_a() is False and client.beats == [{"a": 0.0}]
    clock.now += 0.5
    assert slot_b() is False and len(client.beats) == 1        # noted, sent with the next beat
    clock.now += 1.5
    assert slot_a() is False and client.beats[1] == {"a": 0.0, "b": 0.0}
    clock.now += 0.5
    assert slot_b() is True                                    # withdrawn in that beat's reply
    worker.beats.forget("b")
    clock.now += 1.5
    slot_a()
    assert client.beats[2] == {"a": 0.0}


def test_the_controller_tells_a_node_its_heartbeat_interval_and_lease_timeout(stepped):
    reply = stepped.call("nodes.register", "n1", {"povray": "3.7"})
    assert reply["heartbeat_interval"] == 2.0 and reply["lease_timeout"] == 30.0


def test_on_a_slow_uplink_a_rendering_node_beats_less_often_but_within_its_leases(tmp_path):
    """A heartbeat costs a node on a 1 Mbit/s uplink about a kilobyte: there its slots' progress goes
    every slow_heartbeat_interval, never less often than every third of the lease timeout; on a fast
    uplink (or before it knows) every heartbeat_interval, as the controller asks."""
    from farm.client import UploadMeter
    from farm.node import Node

    class Controller:
        url = "http://127.0.0.1:9"

        def __init__(self):
            self.beats, self.uploads = [], UploadMeter()

        def call(self, method, *args):
            assert method == "nodes.heartbeat"
            self.beats.append(args[1:])
            return {"stop": []}

    clock = Clock()
    config = Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                    probe_cache=tmp_path / "probe.json")
    client = Controller()
    worker = Node(config, client, clock=clock)
    worker.node_id, worker.heartbeat_interval, worker.lease_timeout = "n1-abcd", 2.0, 3.0
    assert worker.beat_interval() == 1.0                       # a short lease: two beats may be late before it is
    worker.lease_timeout = 30.0
    assert worker.beat_interval() == 2.0                       # nothing measured yet
    assert worker._uploads_together() == 1                     # results one at a time until the link is known
    client.uploads.record(100_000, 0.8)                        # 125 kB/s: 1 Mbit/s
    assert worker.beat_interval() == 10.0
    worker.lease_timeout = 12.0
    assert worker.beat_interval() == 4.0                       # a third of the lease timeout at most
    worker.lease_timeout = None
    assert worker.beat_interval() == 2.0                       # a controller that does not say its timeout
    worker.lease_timeout = 30.0
    slot = worker.lease_watch("a", tmp_path / "none.log")
    for _ in range(20):                                        # 20 s of rendering, looked at every second
        clock.now += 1.0
        slot()
    assert len(client.beats) == 2
    assert client.beats[0] == ({"a": 0.0}, {"upload_bps": 125_000.0}) and client.beats[1] == ({"a": 0.0},)
    client.uploads.record(1_000_000, 0.01)                     # the link is fast now
    for _ in range(4):
        clock.now += 1.0
        slot()
    assert len(client.beats) == 4
    assert client.beats[2][1]["upload_bps"] > 125_000 * 1.1 and len(client.beats[3]) == 1   # changed, then not
    client.uploads.record(20_000, 0.24)                        # one call held back on a busy box...
    client.uploads.record(20_000, 0.24)
    assert worker.beat_interval() == 2.0 and not worker.slow_link()   # ...does not make the link slow
    assert worker.uplink(worst=True) < config.slow_uplink_bps          # (rows are filtered while any of three was,
    assert worker._uploads_together() == 1                             # and results go up one at a time)
    client.uploads.record(100_000, 0.8)                        # three slow ones in a row do
    assert worker.beat_interval() == 10.0 and worker.slow_link()
    for _ in range(3):
        client.uploads.record(1_000_000, 0.01)
    assert worker._uploads_together() == config.slots          # three fast in a row: results side by side


def test_the_slow_uplink_settings_come_in_layers(tmp_path):
    """Defaults, then the config file, then POVFARM_* variables (no flags for these)."""
    from farm.config import load_config

    empty, settings = tmp_path / "empty.ini", tmp_path / "povfarm.ini"
    empty.write_text("[povfarm]\n")
    settings.write_text("[povfarm]\nslow_heartbeat_interval = 8\nslow_uplink_bps = 100000\n")
    default = load_config({}, environ={}, config_file=empty)
    assert (default.slow_uplink_bps, default.slow_heartbeat_interval) == (500_000.0, 10.0)
    layered = load_config({}, environ={"POVFARM_SLOW_UPLINK_BPS": "250000"}, config_file=settings)
    assert (layered.slow_uplink_bps, layered.slow_heartbeat_interval) == (250_000.0, 8.0)


def database_steps(store: Store, read) -> int:
    """SQLite virtual-machine steps (in tens) that `read()` takes on the reading connection: a count
    that does not depend on the machine's speed."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with store.db.read() as db:
        db.set_progress_handler(count, 10)
    try:
        read()
    finally:
        with store.db.read() as db:
            db.set_progress_handler(None, 10)
    return steps


def test_the_node_list_and_the_retry_check_read_the_units_in_flight_not_the_farms_history(stepped, scene):
    submit(stepped, scene)
    n = register_node(stepped)
    assert stepped.call("nodes.poll", n)["lease"]
    reads = {"node list": lambda: stepped.call("nodes.list"),
             "retry check": lambda: stepped.store.units.retry_due(0.0, 1e12)}
    before = {name: database_steps(stepped.store, read) for name, read in reads.items()}
    with stepped.store.db.write() as db:       # a long-lived farm: 20 000 units of jobs long done
        db.executemany("INSERT INTO units (job, frame, frame_last, idx, row_start, row_end, state, node)"
                       " VALUES (999, 1, 1, ?, 0, 32, 'done', ?)", [(i, n) for i in range(20_000)])
    after = {name: database_steps(stepped.store, read) for name, read in reads.items()}
    assert stepped.call("nodes.list")[0]["current"]          # the node's lease is still found
    for name in reads:
        assert after[name] <= before[name] + 5, (name, before, after)


def test_jobs_list_shows_a_running_jobs_counts_a_moment_late_and_its_state_and_priority_at_once(stepped, scene):
    """Many pages list the jobs every 2 s while a job stores strips many times a second: its counts are
    recomputed at most once a second, but what a user changes shows at once."""
    job = submit(stepped, scene, strips=4, height=128)
    n = register_node(stepped)
    listed = lambda: stepped.call("jobs.list")[0]          # noqa: E731

    def store_one() -> None:
        task = stepped.call("nodes.poll", n)
        stepped.call("nodes.complete", n, task["lease"], rows_for(task), 0.5)

    store_one()
    assert (listed()["state"], listed()["strips_done"]) == ("rendering", 1)
    store_one()
    assert listed()["strips_done"] == 1                  # the same second: counted a moment later
    stepped.clock_.now += 1.0
    assert listed()["strips_done"] == 2
    store_one()
    assert stepped.call("jobs.set_priority", job, 5) and listed()["priority"] == 5
    assert stepped.call("jobs.pause", job) and listed()["state"] == "paused"
    assert listed()["strips_done"] == 3
    assert stepped.call("jobs.status", job)["strips_done"] == 3     # one job's own status is never late


def test_a_new_job_does_not_make_jobs_list_recompute_the_ended_ones(stepped, scene, monkeypatch):
    """Submitting a job is a farm-wide change (viewers following the newest job move to it); the status of
    every job already listed stays as it was, so listing a long history stays cheap."""
    for _ in range(5):
        stepped.call("jobs.cancel", submit(stepped, scene))
    assert len(stepped.call("jobs.list")) == 5
    computed = []
    views = stepped.services.views
    original = views.job_status
    monkeypatch.setattr(views, "job_status", lambda job, *rest: computed.append(job.id) or original(job, *rest))
    stepped.clock_.now += 60
    newest = submit(stepped, scene)
    assert len(stepped.call("jobs.list")) == 6
    assert computed == [newest]


def test_pages_listing_unchanged_jobs_share_one_encoding_of_the_list(server, scene, monkeypatch):
    """jobs.list is encoded once while nothing in it changes, however many pages ask; a change is
    encoded anew."""
    client = as_user(server)
    digest = client.call("bundles.upload", xmlrpc.client.Binary(pack(plan_bundle(scene))))
    job = client.call("jobs.submit", {"bundle": digest, "scene": "s.pov", "width": 8, "height": 64, "preview": False})
    client.call("jobs.cancel", job)
    encoded = []
    dumps = xmlrpc.client.dumps

    def counting(params, *args, methodresponse=None, **kwargs):
        if methodresponse and params and isinstance(params[0], list) and params[0] and "strips_total" in params[0][0]:
            encoded.append(params[0])
        return dumps(params, *args, methodresponse=methodresponse, **kwargs)

    monkeypatch.setattr(xmlrpc.client, "dumps", counting)
    pages = [Client(server.url, timeout=10, token=server.tokens["view"]) for _ in range(3)]
    listed = [page.call("jobs.list") for page in pages for _ in range(2)]
    assert all(jobs == listed[0] for jobs in listed) and listed[0][0]["state"] == "canceled"
    assert len(encoded) == 1
    client.call("jobs.submit", {"bundle": digest, "scene": "s.pov", "width": 8, "height": 64, "preview": False})
    assert len(pages[0].call("jobs.list")) == 2 and len(encoded) == 2


def test_a_job_no_live_node_can_render_says_why_and_stops_saying_it_once_one_can(stepped, scene):
    job = submit(stepped, scene)
    assert stepped.call("jobs.status", job)["blocked"] == ""          # just submitted: nodes may be coming
    stepped.clock_.now += 31                                          # a lease timeout with no node at all
    assert stepped.call("jobs.wait", job, 0)["blocked"] == "no node is connected to the controller"
    assert stepped.call("jobs.list")[0]["blocked"] == "no node is connected to the controller"

    missing = "POV-Ray was not found as '/nonexistent'; install it or pass --povray PATH"
    for name in ("n1", "n2"):
        stepped.call("nodes.register", name, {"povray": "", "error": missing})
    stepped.call("nodes.register", "n3", {"povray": "", "error": "POV-Ray runs, but not inside the sandbox"})
    reason = f"no node can render it: n1, n2: {missing}; n3: POV-Ray runs, but not inside the sandbox"
    assert stepped.call("jobs.status", job)["blocked"] == reason
    assert stepped.call("jobs.list")[0]["blocked"] == reason          # no change of the job's: seen all the same

    register_node(stepped, "good")
    assert stepped.call("jobs.status", job)["blocked"] == ""
    assert stepped.call("jobs.list")[0]["blocked"] == ""
    stepped.call("jobs.pause", job)
    stepped.clock_.now += 31
    stepped.tick()                                                    # every node silent: presumed dead
    assert stepped.call("jobs.status", job)["blocked"] == ""          # paused: it waits for nobody
    stepped.call("jobs.resume", job)
    assert stepped.call("jobs.status", job)["blocked"] == "no node is connected to the controller"


def test_the_files_a_scene_writes_are_kept_of_the_unit_written_last(stepped, scene):
    from farm import scenefiles
    from farm.client import binary

    job = submit(stepped, scene)
    n = register_node(stepped)
    tasks = [stepped.call("nodes.poll", n), stepped.call("nodes.poll", n)]
    lower = max(tasks, key=lambda task: task["row_start"])
    for task, text in ((lower, b"lower"), (min(tasks, key=lambda task: task["row_start"]), b"upper")):
        files = scenefiles.pack({"page.html": text, "sub/once.txt": text}, (task["frame"], task["row_start"]))
        assert stepped.call("nodes.scene_files", n, task["lease"], binary(files)) is True
    for bad in ({"../up.txt": b"x"}, {"/etc/x": b"x"}):
        with pytest.raises(FarmError) as err:
            stepped.call("nodes.scene_files", n, lower["lease"], binary(scenefiles.pack_kept(
                {name: ((1, 1), data) for name, data in bad.items()})))
        assert err.value.code is Code.BAD_ARGUMENT
    for task in tasks:
        stepped.call("nodes.complete", n, task["lease"], rows_for(task), 0.5)
    with pytest.raises(FarmError) as err:      # the lease is no longer current
        stepped.call("nodes.scene_files", n, lower["lease"], binary(scenefiles.pack({"late.txt": b"x"})))
    assert err.value.code is Code.STALE_LEASE
    kept = scenefiles.unpack(stepped.call("jobs.scene_files", job).data)
    assert {name: data for name, (_, data) in kept.items()} == {"page.html": b"lower", "sub/once.txt": b"lower"}
