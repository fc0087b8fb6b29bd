"""The controller's rules, stepped with a fake clock, and its RPC surface over loopback."""

from __future__ import annotations

import http.client
import os
import xmlrpc.client
from pathlib import Path

import pytest

from farm import strips
from farm.bundle import bundle_hash, pack, plan_bundle
from farm.client import Client
from farm.config import Config
from farm.controller import Controller, Farm
from farm.faults import Code, FarmError
from farm.store import Store


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def scene(tmp_path) -> Path:
    path = tmp_path / "scene" / "s.pov"
    path.parent.mkdir()
    path.write_text('camera { location <0,0,-3> look_at 0 } sphere { 0, 1 pigment { rgb 1 } }\n')
    return path


@pytest.fixture
def farm(tmp_path):
    clock = Clock()
    config = Config(data_dir=tmp_path / "data", lease_timeout=30, max_attempts=3)
    store = Store(config.data_dir / "db.sqlite3")
    farm = Farm(config, store, clock)
    farm.clock_ = clock
    yield farm
    store.close()


def submit(farm: Farm, scene_file: Path, **spec) -> int:
    data = pack(plan_bundle(scene_file))
    digest = farm.bundles_upload(xmlrpc.client.Binary(data))
    assert digest == bundle_hash(data)
    return farm.jobs_submit({"bundle": digest, "scene": "s.pov", "width": 8, "height": 64, "strips": 2, **spec})


def rows_for(task: dict, value: int = 7) -> xmlrpc.client.Binary:
    size = (task["row_end"] - task["row_start"]) * strips.row_size(task["width"], task["channels"], task["bits"])
    return xmlrpc.client.Binary(strips.compress_rows(bytes([value]) * size))


def node(farm: Farm, name: str = "n1") -> str:
    return farm.nodes_register(name, {"povray": "3.7"})["node_id"]


def test_a_job_runs_to_a_stitched_png(farm, scene):
    job = submit(farm, scene)
    n = node(farm)
    for value in (10, 20):
        task = farm.nodes_poll(n)
        assert task["row_end"] - task["row_start"] == 32
        assert farm.nodes_complete(n, task["lease"], rows_for(task, value), 0.5)
    assert farm.nodes_poll(n) == {}
    status = farm.jobs_status(job)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["strips_done"] == 2
    image = strips.decode_png(farm.jobs_fetch(job).data)
    assert image.pixels == bytes([10]) * 32 * 24 + bytes([20]) * 32 * 24


def test_expired_lease_goes_back_and_a_late_result_is_refused(farm, scene):
    job = submit(farm, scene, strips=1)
    slow, fast = node(farm, "slow"), node(farm, "fast")
    first = farm.nodes_poll(slow)
    farm.clock_.now += 31          # the slow node went silent
    farm.nodes_heartbeat(fast, {})  # the fast one did not
    farm.tick()
    second = farm.nodes_poll(fast)
    assert second["strip"] == first["strip"] and second["attempt"] == 2
    with pytest.raises(FarmError) as late:
        farm.nodes_complete(slow, first["lease"], rows_for(first, 1), 1.0)
    assert late.value.code in (Code.STALE_LEASE, Code.UNKNOWN_NODE)
    farm.nodes_complete(fast, second["lease"], rows_for(second, 2), 1.0)
    # Re-sending an accepted result is harmless; the image keeps the accepted rows.
    farm.nodes_complete(fast, second["lease"], rows_for(second, 3), 1.0)
    assert set(strips.decode_png(farm.jobs_fetch(job).data).pixels) == {2}


def test_heartbeat_renews_the_lease(farm, scene):
    submit(farm, scene, strips=1)
    n = node(farm)
    task = farm.nodes_poll(n)
    for _ in range(5):
        farm.clock_.now += 20
        assert farm.nodes_heartbeat(n, {task["lease"]: 0.5}) == {"stop": []}
        farm.tick()
    assert farm.jobs_status(1)["strips"][0]["progress"] == 0.5
    assert farm.nodes_complete(n, task["lease"], rows_for(task), 1.0)


def test_scene_error_fails_the_job_at_once(farm, scene):
    job = submit(farm, scene)
    n = node(farm)
    task = farm.nodes_poll(n)
    farm.nodes_fail(n, task["lease"], "File 's.pov' line 1: Parse Error: oops", True)
    status = farm.jobs_status(job)
    assert status["state"] == "failed" and "line 1: Parse Error" in status["error"]
    assert farm.nodes_poll(n) == {}
    with pytest.raises(FarmError) as err:
        farm.jobs_fetch(job)
    assert err.value.code is Code.JOB_NOT_DONE


def test_a_strip_that_keeps_failing_fails_the_job_after_the_retry_limit(farm, scene):
    job = submit(farm, scene, strips=1)
    nodes = [node(farm, f"n{i}") for i in range(3)]
    for attempt, n in enumerate(nodes, start=1):
        task = farm.nodes_poll(n)
        assert task["attempt"] == attempt
        farm.nodes_fail(n, task["lease"], f"killed by signal 9 (try {attempt})", False)
    status = farm.jobs_status(job)
    assert status["state"] == "failed" and "failed 3 times" in status["error"] and "try 3" in status["error"]


def test_cancel_tells_the_node_to_stop(farm, scene):
    job = submit(farm, scene)
    n = node(farm)
    task = farm.nodes_poll(n)
    farm.jobs_cancel(job)
    assert farm.nodes_heartbeat(n, {task["lease"]: 0.1}) == {"stop": [task["lease"]]}
    with pytest.raises(FarmError) as err:
        farm.nodes_complete(n, task["lease"], rows_for(task), 1.0)
    assert err.value.code is Code.STALE_LEASE
    assert farm.jobs_status(job)["state"] == "canceled"


def test_wrong_sized_rows_are_refused(farm, scene):
    submit(farm, scene)
    n = node(farm)
    task = farm.nodes_poll(n)
    with pytest.raises(FarmError) as err:
        farm.nodes_complete(n, task["lease"], xmlrpc.client.Binary(strips.compress_rows(b"short")), 1.0)
    assert err.value.code is Code.BAD_ARGUMENT


def test_higher_priority_first_then_first_come(farm, scene):
    low = submit(farm, scene, strips=1)
    high = submit(farm, scene, strips=1, priority=5)
    n = node(farm)
    assert farm.nodes_poll(n)["job"] == high
    assert farm.nodes_poll(n)["job"] == low


def test_a_restarted_node_gives_its_leases_back(farm, scene):
    submit(farm, scene, strips=1)
    first = farm.nodes_poll(node(farm, "box"))
    again = farm.nodes_poll(node(farm, "box"))     # same name registers again after a crash
    assert again["strip"] == first["strip"] and again["attempt"] == 2


def test_restart_keeps_jobs_and_finished_strips(tmp_path, scene):
    config = Config(data_dir=tmp_path / "data")
    clock = Clock()
    store = Store(config.data_dir / "db.sqlite3")
    farm = Farm(config, store, clock)
    job = submit(farm, scene)
    n = node(farm)
    task = farm.nodes_poll(n)
    farm.nodes_complete(n, task["lease"], rows_for(task, 5), 1.0)
    in_flight = farm.nodes_poll(n)
    store.close()

    reopened = Farm(config, Store(config.data_dir / "db.sqlite3"), clock)
    reopened.recover()
    assert reopened.jobs_status(job)["strips_done"] == 1
    # The lease in flight survives the restart and its node can still deliver.
    assert reopened.nodes_complete(n, in_flight["lease"], rows_for(in_flight, 6), 1.0)
    assert reopened.jobs_status(job)["state"] == "done"


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
def test_bad_job_specs_are_refused_with_a_code(farm, scene, spec, code):
    with pytest.raises(FarmError) as err:
        submit(farm, scene, **spec)
    assert err.value.code is code


# -- over the wire ---------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    controller = Controller(Config(data_dir=tmp_path / "data", port=0))
    controller.start_in_thread()
    yield controller
    controller.shutdown()


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
        assert name.split(".")[0] in ("api", "bundles", "jobs", "nodes", "system", "viewer")
        assert client.call("system.methodHelp", name).startswith(name), name


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


def test_viewer_feed_sends_each_strip_once_in_arrival_order(farm, scene):
    job = submit(farm, scene)
    assert farm.viewer_watch(0, 0, 0)["job"]["id"] == job
    n = node(farm)
    first = farm.nodes_poll(n)
    feed = farm.viewer_watch(job, 0, 0)
    assert feed["strips"] == [] and feed["in_flight"][0]["node"] == "n1"
    farm.nodes_complete(n, first["lease"], rows_for(first, 1), 1.0)
    feed = farm.viewer_watch(job, 0, 5)
    assert [s["row_start"] for s in feed["strips"]] == [first["row_start"]]
    second = farm.nodes_poll(n)
    farm.nodes_complete(n, second["lease"], rows_for(second, 2), 1.0)
    later = farm.viewer_watch(job, feed["cursor"], 5)
    assert [s["row_start"] for s in later["strips"]] == [second["row_start"]]
    assert later["job"]["state"] == "done"
    assert farm.viewer_watch(job, later["cursor"], 5)["strips"] == []


def test_viewer_long_poll_wakes_on_a_new_strip(farm, scene):
    import threading
    import time

    job = submit(farm, scene, strips=1)
    n = node(farm)
    task = farm.nodes_poll(n)
    threading.Timer(0.3, farm.nodes_complete, (n, task["lease"], rows_for(task), 1.0)).start()
    started = time.monotonic()
    feed = farm.viewer_watch(job, 0, 10)
    assert len(feed["strips"]) == 1 and time.monotonic() - started < 5


def test_a_full_database_is_a_storage_fault_and_work_resumes_when_space_returns(farm, scene):
    job = submit(farm, scene)
    n = node(farm)
    task = farm.nodes_poll(n)
    db = farm.store._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")          # the disk is full: no page can be added
    storage = None
    try:
        submit(farm, scene, animation={"first": 1, "last": 500})   # 500 frames: needs new pages
    except FarmError as caught:
        storage = caught
    assert storage is not None and storage.code is Code.STORAGE and "full" in str(storage)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.execute("PRAGMA max_page_count=1073741823")      # space returns
    assert farm.nodes_complete(n, task["lease"], rows_for(task, 3), 1.0)
    second = farm.nodes_poll(n)
    farm.nodes_complete(n, second["lease"], rows_for(second, 4), 1.0)
    assert farm.jobs_status(job)["state"] == "done"


def test_an_image_that_cannot_be_written_is_written_by_a_later_tick(farm, scene, monkeypatch):
    import errno
    from farm import controller

    job = submit(farm, scene, strips=1)
    n = node(farm)
    task = farm.nodes_poll(n)
    real_write = controller._write_atomically

    def disk_full(path, data):
        raise FarmError(Code.STORAGE, f"cannot write {path}: {os.strerror(errno.ENOSPC)}")
    monkeypatch.setattr(controller, "_write_atomically", disk_full)
    assert farm.nodes_complete(n, task["lease"], rows_for(task, 9), 1.0)   # the strip itself is stored
    assert farm.jobs_status(job)["state"] == "rendering"
    monkeypatch.setattr(controller, "_write_atomically", real_write)
    farm.tick()
    assert farm.jobs_status(job)["state"] == "done"
    assert set(strips.decode_png(farm.jobs_fetch(job).data).pixels) == {9}


def test_complete_and_poll_hands_over_the_next_task_with_the_result(farm, scene):
    job = submit(farm, scene)
    n = node(farm)
    first = farm.nodes_poll(n)
    second = farm.nodes_complete_and_poll(n, first["lease"], rows_for(first, 1), 0.1)
    assert second["strip"] == 1 and second["lease"] != first["lease"]
    with pytest.raises(FarmError) as stale:   # a refused result leases nothing
        farm.nodes_complete_and_poll(n, "1.9.feedfacecafe", rows_for(second, 2), 0.1)
    assert stale.value.code is Code.STALE_LEASE
    assert farm.nodes_complete_and_poll(n, second["lease"], rows_for(second, 2), 0.1) == {}
    assert farm.jobs_status(job)["state"] == "done"


def test_every_write_is_on_disk_before_it_returns_even_when_commits_are_grouped(farm, scene):
    """Sixteen threads complete strips while a commit is under way: they all wait, the next commit takes
    all their changes at once, and each then sees its strip committed through a connection of its own."""
    import sqlite3
    import threading
    import time

    job = submit(farm, scene, height=512, strips=16)
    node_ids = [node(farm, f"n{i}") for i in range(16)]
    tasks = [{**farm.nodes_poll(node_id), "node": node_id} for node_id in node_ids]
    store, errors = farm.store, []

    def deliver(task: dict) -> None:
        store.complete_strip(task["node"], task["lease"], b"x", 0.1, farm.clock())
        own = sqlite3.connect(str(store.path))
        state = own.execute("SELECT state FROM strips WHERE lease=?", (task["lease"],)).fetchone()[0]
        own.close()
        if state != "done":
            errors.append(f"{task['lease']} is {state} after its call returned")

    with store._durable:
        store._committing = True     # as if another caller's commit were on its way to disk
    batch = store._batch
    threads = [threading.Thread(target=deliver, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with store._lock:
            written = store._db.execute("SELECT COUNT(*) FROM strips WHERE state='done'").fetchone()[0]
        if written == len(tasks):
            break
        time.sleep(0.01)
    assert written == len(tasks)
    assert store.strip_counts(job) == {"leased": 16}   # readers see committed data only
    assert store._committed < batch and not errors     # written, not committed: nobody has returned
    store._commit_batch()
    for thread in threads:
        thread.join(20)
    assert errors == [] and store._committed == batch   # one commit for all sixteen
    assert store.strip_counts(job) == {"done": 16}


def test_a_node_falls_back_to_complete_when_the_controller_has_no_combined_call(tmp_path):
    from farm.node import Node

    class OldController:
        url = "http://127.0.0.1:9"

        def __init__(self):
            self.calls = []

        def call(self, method, *args):
            self.calls.append(method)
            if method == "nodes.complete_and_poll":
                raise FarmError(Code.UNKNOWN_METHOD, "no such method")
            return True

    config = Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                    probe_cache=tmp_path / "probe.json")
    client = OldController()
    worker = Node(config, client)
    worker.node_id = "n1-abcd"
    assert worker._complete("1.1.aa", b"rows", 0.5) is None
    assert worker._complete("2.1.bb", b"rows", 0.5) is None
    assert client.calls == ["nodes.complete_and_poll", "nodes.complete", "nodes.complete"]
    assert worker.strips_done == 2
