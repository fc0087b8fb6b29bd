"""The viewers' stream (GET /feed): records in order, each piece once, framed once for every viewer."""

from __future__ import annotations

import json
import xmlrpc.client

import pytest

from farm.client import Client
from farm.faults import Code, FarmError
from farm.service.feed import FeedLog, Streams
from harness import Stepped, register_node, rows_for, submit


def parse(parts: list[bytes]) -> list[tuple[dict, bytes]]:
    chunk = b"".join(parts)
    records = []
    while chunk:
        line, _, rest = chunk.partition(b"\n")
        header = json.loads(line)
        records.append((header, rest[:header["size"]]))
        chunk = rest[header["size"]:]
    return records


def types(records) -> list[str]:
    return [header["type"] for header, _ in records]


def streams(stepped: Stepped, **kwargs) -> Streams:
    services = stepped.services
    kwargs = {"pace": 0.0, "sends_per_second": 1e9, "keepalive": 0.5, **kwargs}
    return Streams(stepped.store, services.changes, FeedLog(stepped.store, services.views, services.changes), **kwargs)


def test_status_first_then_each_piece_once_with_a_status_after_it_then_the_end(stepped, scene):
    job = submit(stepped, scene)
    n = register_node(stepped)
    feed = streams(stepped).watch(job, 0, gone=lambda: False)
    first = parse(next(feed))
    assert types(first) == ["job"] and first[0][0]["job"]["id"] == job and first[0][0]["job"]["state"] == "queued"
    sent = []
    for value in (1, 2):
        task = stepped.call("nodes.poll", n)
        rows = rows_for(task, value)
        stepped.call("nodes.complete", n, task["lease"], rows, 1.0)
        sent.append((task["row_start"], rows.data))
    stepped.settle()
    received = []
    while not received or types(received)[-1] != "end":
        received += parse(next(feed))
    pieces = [(h["row_start"], payload) for h, payload in received if h["type"] == "piece"]
    assert pieces == sent                                           # once each, in arrival order
    statuses = [h["job"]["state"] for h, _ in received if h["type"] == "job"]
    assert statuses[-1] == "done" and types(received)[-2:] == ["job", "end"]   # "done" after the last piece
    with pytest.raises(StopIteration):
        next(feed)


def test_a_viewer_resumes_from_its_cursor(stepped, scene):
    job = submit(stepped, scene)
    n = register_node(stepped)
    for value in (1, 2):
        task = stepped.call("nodes.poll", n)
        stepped.call("nodes.complete", n, task["lease"], rows_for(task, value), 1.0)
    records = parse(next(streams(stepped).watch(job, 0, gone=lambda: False)))
    cursors = [h["cursor"] for h, _ in records if h["type"] == "piece"]
    assert len(cursors) == 2
    again = parse(next(streams(stepped).watch(job, cursors[0], gone=lambda: False)))
    assert [h["cursor"] for h, _ in again if h["type"] == "piece"] == cursors[1:]


def test_following_the_newest_job_moves_to_a_new_one_from_its_start(stepped, scene):
    feed = streams(stepped).watch(0, 0, gone=lambda: False)
    assert parse(next(feed))[0][0]["job"] == {}                    # no job yet
    job = submit(stepped, scene)
    records = parse(next(feed))
    assert records[0][0]["type"] == "job" and records[0][0]["job"]["id"] == job


def test_many_viewers_share_one_read_of_the_store(stepped, scene, monkeypatch):
    job = submit(stepped, scene)
    n = register_node(stepped)
    shared = streams(stepped)
    viewers = [shared.watch(job, 0, gone=lambda: False) for _ in range(20)]
    for viewer in viewers:
        next(viewer)
    task = stepped.call("nodes.poll", n)
    stepped.call("nodes.complete", n, task["lease"], rows_for(task), 1.0)
    reads = []
    stored_after = stepped.store.units.stored_after
    monkeypatch.setattr(stepped.store.units, "stored_after", lambda *a, **k: reads.append(a) or stored_after(*a, **k))
    chunks = [b"".join(next(viewer)) for viewer in viewers]
    assert len(set(chunks)) == 1 and types(parse([chunks[0]]))[0] == "piece"
    assert len(reads) <= 2      # one read brings the piece (and one more finds nothing after it)


def test_a_quiet_stream_pings(stepped, scene):
    job = submit(stepped, scene)
    feed = streams(stepped, keepalive=0.05).watch(job, 0, gone=lambda: False)
    next(feed)
    assert "ping" in types(parse(next(feed)))


def test_a_departed_viewer_ends_its_stream(stepped, scene):
    job = submit(stepped, scene)
    left = []
    feed = streams(stepped).watch(job, 0, gone=lambda: bool(left))
    next(feed)
    left.append(True)
    with pytest.raises(StopIteration):
        next(feed)


# -- over HTTP -----------------------------------------------------------------------------------------

def test_the_stream_over_http_matches_the_long_poll_and_ends(server, scene):
    from farm.bundle.packing import pack, plan_bundle

    submitter = Client(server.url, timeout=10, token=server.tokens["submit"])
    digest = submitter.call("bundles.upload", xmlrpc.client.Binary(pack(plan_bundle(scene))))
    job = submitter.call("jobs.submit", {"bundle": digest, "scene": "s.pov", "width": 8, "height": 64,
                                         "strips": 2, "preview": False})
    worker = Client(server.url, timeout=10, token=server.tokens["node"])
    n = worker.call("nodes.register", "n1", {"povray": "3.7"})["node_id"]
    for value in (3, 4):
        task = worker.call("nodes.poll", n, 0)
        worker.call("nodes.complete", n, task["lease"], rows_for(task, value), 0.5)
    viewer = Client(server.url, timeout=10, token=server.tokens["view"])
    records = [record for read in viewer.stream("/feed", {"job": job, "cursor": 0}, timeout=20) for record in read]
    assert [h["type"] for h, _ in records][-1] == "end"
    polled = viewer.call("viewer.watch", job, 0, 0)["strips"]
    assert [(h["row_start"], payload) for h, payload in records if h["type"] == "piece"] == \
        [(s["row_start"], s["rows"].data) for s in polled]


@pytest.mark.parametrize("token, query, code, words", [
    ("view", {"job": "x"}, Code.BAD_ARGUMENT, "job must be given once"),
    ("view", {"job": 1, "cursor": -1}, Code.BAD_ARGUMENT, "cursor must be given once"),
    ("view", {"job": 999}, Code.UNKNOWN_JOB, "999"),
    ("view", {f"f{i}": 1 for i in range(40)}, Code.BAD_ARGUMENT, "fields"),
    ("node", {"job": 0}, Code.FORBIDDEN, "may not watch"),
    (None, {"job": 0}, Code.UNAUTHORIZED, "no access token"),
])
def test_bad_stream_requests_get_a_code_and_a_sentence(server, token, query, code, words):
    client = Client(server.url, timeout=10, token=server.tokens[token] if token else None)
    with pytest.raises(FarmError) as caught:
        next(client.stream("/feed", query, timeout=10))
    assert caught.value.code is code and words in str(caught.value)


def test_a_gathered_send_carries_on_after_partial_writes():
    from farm.server.handler import send_gathered

    class Trickle:
        """A socket that takes at most 5 bytes per call."""
        def __init__(self):
            self.got = b""

        def sendmsg(self, buffers):
            data = b"".join(bytes(b) for b in buffers)[:5]
            self.got += data
            return len(data)

    parts = [b"3\r\n", b"", b"abcdefgh", b"xy", b"\r\n" * 3]
    sock = Trickle()
    send_gathered(sock, parts)
    assert sock.got == b"".join(parts)


class Reads:
    """A response whose read1 returns `size` bytes at a time (the way a socket may cut a stream)."""

    def __init__(self, data: bytes, size: int):
        self.data, self.size = data, size

    def read1(self, limit: int) -> bytes:
        piece, self.data = self.data[:min(self.size, limit)], self.data[min(self.size, limit):]
        return piece


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20])
def test_the_client_takes_whole_records_off_reads_of_any_size(size):
    from farm.client import _records
    from farm.service.feed import END
    from farm.wire import record

    sent = [({"type": "job", "job": {"id": 1}}, b""), ({"type": "piece", "cursor": 1}, b"a\nb" * 40),
            ({"type": "piece", "cursor": 2}, b""), ({"type": "ping"}, b""), ({"type": "end"}, b"")]
    data = b"".join(record(header, payload) for header, payload in sent[:-1]) + END
    reads = list(_records("http://x", Reads(data, size)))
    assert all(reads)                                       # only reads that completed a record
    got = [(header, payload) for read in reads for header, payload in read]
    assert got == [({**header, "size": len(payload)}, payload) for header, payload in sent]
    if size >= len(data):
        assert len(reads) == 1                              # one read: one list of every record


@pytest.mark.parametrize("data, words", [
    (b'{"type":"piece","size":5}\nabc', "ended inside a record"),
    (b'{"type":"piece","size":-1}\n', "a record of -1 bytes"),
    (b"not json\n", "bad feed"),
    (b'{"type":"ping","size":0} {}\n', "not one JSON object"),
    (b'[1, 2]\n', "not one JSON object"),
])
def test_a_broken_stream_is_a_clear_error(data, words):
    from farm.client import _records

    with pytest.raises(FarmError) as caught:
        list(_records("http://x", Reads(data, 4)))
    assert caught.value.code is Code.UNREACHABLE and words in str(caught.value)


def test_a_header_line_without_end_is_refused_at_the_limit_not_read_for_ever(monkeypatch):
    import farm.client
    import farm.wire

    monkeypatch.setattr(farm.wire, "MAX_RECORD_HEADER", 64)
    with pytest.raises(FarmError) as caught:
        list(farm.client._records("http://x", Reads(b"x" * 1000, 16)))
    assert caught.value.code is Code.UNREACHABLE and "header over the size limit" in str(caught.value)


def test_the_pace_grows_with_the_viewers_so_their_sends_stay_within_the_budget(stepped, scene):
    job = submit(stepped, scene)
    shared = streams(stepped, pace=0.1, sends_per_second=40)
    viewers = [shared.watch(job, 0, gone=lambda: False) for _ in range(20)]
    for viewer in viewers[:4]:
        next(viewer)
    assert shared.pace() == 0.1                    # a few viewers: news every 0.1 s
    for viewer in viewers[4:]:
        next(viewer)
    assert shared.pace() == 0.5                    # twenty: 40 sends a second for all of them together
    for viewer in viewers:
        viewer.close()
    assert shared.pace() == 0.1


def test_sends_keep_to_the_pace_while_the_job_changes_all_the_time(stepped, scene):
    """A busy job changes faster than the shared reads follow it (a viewer is nearly always "behind"
    them): that must not bring its sends closer together than the pace."""
    job = submit(stepped, scene, height=32 * 30, strips=30)
    n = register_node(stepped)
    now = [0.0]

    def store_a_strip() -> None:
        task = stepped.call("nodes.poll", n)
        if task:
            stepped.call("nodes.complete", n, task["lease"], rows_for(task), 1.0)
            stepped.settle()

    def sleep(seconds: float) -> None:
        """Time passes; other viewers have the job's status built, then a strip is stored."""
        now[0] += seconds
        log.status(job)
        store_a_strip()

    class Busy:
        """The farm's versions, where a wait for a change sees the next strip stored at once."""
        def __getattr__(self, name):
            return getattr(stepped.services.changes, name)

        def wait(self, *args):
            now[0] += 0.01
            store_a_strip()

    services = stepped.services
    log = FeedLog(stepped.store, services.views, services.changes, clock=lambda: now[0])
    shared = Streams(stepped.store, Busy(), log, pace=0.5, sends_per_second=1e9, keepalive=60,
                     clock=lambda: now[0], sleep=sleep)
    sent, pieces = [], 0
    for chunk in shared.watch(job, 0, gone=lambda: False):
        got = types(parse(chunk))
        if "piece" in got:
            sent.append(now[0])
            pieces += got.count("piece")
    assert pieces == 30 and got == ["end"]
    assert all(later - earlier >= 0.5 for earlier, later in zip(sent, sent[1:])), sent


def test_a_busy_jobs_status_is_built_once_per_pace_for_all_viewers(stepped, scene):
    job = submit(stepped, scene, height=32 * 8, strips=8)
    n = register_node(stepped)
    now = [0.0]
    services = stepped.services
    log = FeedLog(stepped.store, services.views, services.changes, clock=lambda: now[0])
    built = []
    build = log._build_status
    log._build_status = lambda *args: built.append(now[0]) or build(*args)
    for step in range(8):             # a strip stored every 0.1 s: the job changes before each ask
        task = stepped.call("nodes.poll", n)
        stepped.call("nodes.complete", n, task["lease"], rows_for(task), 1.0)
        log.status(job, fresh=0.5)
        now[0] += 0.1
    assert built == [0.0, 0.5]
    shared = Streams(stepped.store, services.changes, log, pace=0.1, sends_per_second=40, clock=lambda: now[0],
                     sleep=lambda seconds: None)
    asked = []
    log.status = lambda job_id, fresh: asked.append(fresh) or FeedLog.status(log, job_id, fresh)
    viewers = [shared.watch(job, 0, gone=lambda: False) for _ in range(20)]
    for viewer in viewers:
        next(viewer)
    assert asked[0] == 0.25 and asked[-1] == 0.5      # one viewer: STATUS_FRESH; twenty: their pace


def test_a_log_over_half_the_budget_forgets_its_front_and_a_viewer_behind_it_reads_the_store(stepped, scene):
    job = submit(stepped, scene, height=128, strips=4)
    n = register_node(stepped)
    for value in range(4):
        task = stepped.call("nodes.poll", n)
        stepped.call("nodes.complete", n, task["lease"], rows_for(task, value), 1.0)
    services = stepped.services
    log = FeedLog(stepped.store, services.views, services.changes, budget=1)      # keeps only the newest piece
    cursor, pieces, _ = log.pieces_after(job, 0, complete=True)
    assert len(pieces) == 4                         # the asking viewer gets all, then the log is trimmed
    first = json.loads(pieces[0].partition(b"\n")[0])["cursor"]
    again, rest, _ = log.pieces_after(job, first, complete=True)               # behind the log: read anew
    assert again == cursor and rest == pieces[1:]


def test_a_live_stream_relays_the_blocks_of_units_in_flight_and_forgets_them_with_the_final_rows(stepped, scene):
    import zlib
    job = submit(stepped, scene)
    n = register_node(stepped)
    task = stepped.call("nodes.poll", n)
    rgb = zlib.compress(bytes(2 * 2 * 3))
    block = {"frame": task["frame"], "left": 0, "top": task["row_start"], "right": 1,
             "bottom": task["row_start"] + 1, "rows": xmlrpc.client.Binary(rgb)}
    assert stepped.call("nodes.live", n, task["lease"], [block]) == {"live": False}   # nobody watches
    with pytest.raises(FarmError) as raised:
        stepped.call("nodes.live", n, task["lease"], [{**block, "right": 99}])
    assert raised.value.code is Code.BAD_ARGUMENT
    live = stepped.services.live
    feed = streams(stepped, live=live).watch(job, 0, gone=lambda: False, live=True)   # a late viewer
    first = parse(next(feed))
    assert types(first) == ["job", "piece"] and first[1][0]["kind"] == "live" and first[1][1] == rgb
    assert (first[1][0]["left"], first[1][0]["bottom"]) == (0, task["row_start"] + 1)
    reply = stepped.call("viewer.watch", job, 0, 0.0, 0)
    assert [b["rows"].data for b in reply["live"]] == [rgb] and reply["live_cursor"] == 1
    assert "live" not in stepped.call("viewer.watch", job, 0, 0.0)        # an older viewer gets none
    stepped.call("nodes.complete", n, task["lease"], rows_for(task, 1), 1.0)
    assert live.after(job, 0) == (1, [])
