"""Holding under abuse: each attack runs against a real controller on 127.0.0.1, and the test asserts
what the attacker gets (status codes, faults), what it costs the controller (peak memory from
/proc/PID/status VmHWM), and that other clients are still served, and how fast."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import io
import json
import os
import resource
import shutil
import signal
import struct
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
import zipfile
import zlib
from pathlib import Path

import pytest

from harness import ROOT, farm_argv, free_udp_port, needs_povray, run_cli, wait_ended, wait_until
from farm import auth, wire
from farm.rendering import povray
from farm.rendering import sandbox as sandboxes
from farm.server.admission import Quotas
from farm.bundle.rules import bundle_hash
from farm.client import Client
from farm.config import Config
from farm.faults import Code, FarmError
from farm.limits import connection_quotas

PEAK_RSS_LIMIT_MB = 150
SCENE = 'camera { location <0, 0, -3> look_at 0 } light_source { <2, 4, -3> rgb 1 }\n' \
        'sphere { 0, 1 pigment { rgb <1, 0.5, 0.2> } }\n'


# -- helpers ---------------------------------------------------------------------------------------

def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def token(farm, role: str) -> str:
    from farm.auth import read_token_file
    return read_token_file(farm.token_file)[role]


def post(farm, role: str | None, body: bytes = b"", headers: dict | None = None, send_body: bool = True,
         method: str | None = None, length: int | None = None, chunks=None) -> tuple[int, bytes]:
    """A raw POST; `chunks` (an iterable of bytes) streams a body of `length` bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=60)
    connection.putrequest("POST", "/RPC2", skip_accept_encoding=True)
    if role:
        connection.putheader("Authorization", f"Bearer {token(farm, role)}")
    if method:
        connection.putheader(wire.METHOD_HEADER, method)
    if length is not None or chunks is None:
        connection.putheader("Content-Length", str(len(body) if length is None else length))
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    connection.endheaders()
    try:
        if send_body:
            for chunk in chunks if chunks is not None else [body]:
                connection.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass   # the controller answered (and closed) before the whole body was sent
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def fault_code(data: bytes) -> int:
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(data)
    return fault.value.faultCode


def gzip_bomb(gigabytes: int = 1, prefix: bytes = b"", fill: bytes = b"\0") -> bytes:
    """gzip of `prefix` then `gigabytes` GiB of `fill`, about 1 MB per GiB. Built from one repeated
    full-flush block, so it costs no time to make; its trailer is never reached by a capped reader."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = fill * (1 << 20)
    head = packer.compress(prefix) + packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(zeros) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + block * (1024 * gigabytes - 1) + packer.flush()


def upload_body_chunks(payload: bytes) -> tuple[int, list[bytes]]:
    """bundles.upload(payload) as XML-RPC, in pieces (so the test never builds it whole)."""
    head = b"<?xml version='1.0'?><methodCall><methodName>bundles.upload</methodName><params><param>" \
           b"<value><base64>"
    tail = b"</base64></value></param></params></methodCall>"
    step = 3 * (1 << 20)
    pieces = [head] + [base64.b64encode(payload[i:i + step]) for i in range(0, len(payload), step)] + [tail]
    return sum(len(p) for p in pieces), pieces


def small_bundle() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("s.pov", SCENE)
    return buffer.getvalue()


def serves(client: Client) -> bool:
    try:
        client.call("jobs.list")
        return True
    except FarmError:
        return False


def leftovers(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.endswith(".tmp")]


# -- memory per request ----------------------------------------------------------------------------

def test_gzip_bombs_and_big_uploads_stay_in_bounded_memory(farm, monkeypatch):
    monkeypatch.setenv("POVFARM_MAX_BUNDLE_BYTES", str(64 * 1024 * 1024))
    farm.start_controller()
    pid = farm.controller.pid
    bomb = gzip_bomb(1)
    gz = {"Content-Encoding": "gzip", "Content-Type": "text/xml"}

    # A view token may only ever send a small call: 413 from the headers, the body never read.
    status, _ = post(farm, "view", b"", gz, send_body=False, length=len(bomb))
    assert status == 413
    status, _ = post(farm, "view", b"", send_body=False, method="bundles.upload", length=300 * 1024 * 1024)
    assert status == 413
    # ...and a bomb that fits its compressed limit is stopped at the cap while inflating.
    small_bomb = gzip_bomb(1)[:60 * 1024]
    assert post(farm, "view", small_bomb, gz)[0] == 413
    # A submit token sending 300 MiB as anything but a declared upload: 413 before the body.
    status, _ = post(farm, "submit", b"", send_body=False, length=300 * 1024 * 1024)
    assert status == 413

    # Three bombs at once, two of them inflated as far as their (large) caps allow; the last one is
    # well-formed base64 of an upload, so it is decoded into a temporary file until the cap stops it.
    xml_bomb = gzip_bomb(1, b"<?xml version='1.0'?><methodCall><methodName>bundles.upload</methodName>"
                            b"<params><param><value><base64>", fill=b"A")
    results = []

    def attack(role: str, body: bytes, method: str | None) -> None:
        results.append(post(farm, role, body, gz, method=method)[0])
    threads = [threading.Thread(target=attack, args=args)
               for args in [("view", bomb, None), ("submit", bomb, "bundles.upload"),
                            ("submit", xml_bomb, "bundles.upload")]]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    assert serves(farm.client_as("view")) and time.monotonic() - started < 5   # others are still served
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [413, 413, 413]

    # A real 48 MB bundle, streamed to disk and hashed on the way.
    payload = _big_zip(48 * 1024 * 1024)
    length, pieces = upload_body_chunks(payload)
    status, data = post(farm, "submit", method="bundles.upload", length=length, chunks=pieces)
    assert status == 200 and xmlrpc.client.loads(data)[0][0] == bundle_hash(payload)
    assert farm.client.call("bundles.has", bundle_hash(payload))
    # The same bundle by a view token: refused before a byte of it is read.
    status, _ = post(farm, "view", method="bundles.upload", length=length, chunks=pieces)
    assert status == 413
    # A node fetching it gets it streamed from disk.
    fetched = farm.client_as("node").call("bundles.fetch", bundle_hash(payload)).data
    assert bundle_hash(fetched) == bundle_hash(payload)
    del fetched

    peak = peak_rss_mb(pid)
    print(f"controller peak RSS after gzip bombs and a 48 MB bundle up and down: {peak:.1f} MB")
    assert peak < PEAK_RSS_LIMIT_MB
    assert not leftovers(farm.data_dir)
    assert serves(farm.client)

    # A controller killed mid-upload or mid-write leaves temporary files: the next start removes them.
    farm.controller.kill()
    farm.controller.wait()
    for path in (farm.data_dir / "uploads" / "upload-x.tmp", farm.data_dir / "jobs" / "1" / ".frame-00001.png.x.tmp"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    farm.start_controller()
    assert not leftovers(farm.data_dir)


def _big_zip(size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("s.pov", SCENE)
        archive.writestr("noise.bin", os.urandom(size))
    return buffer.getvalue()


# -- parsing ---------------------------------------------------------------------------------------

def test_dtds_deep_nesting_and_odd_lengths_are_refused(farm):
    farm.start_controller()
    entity = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "api.version">]>'
              '<methodCall><methodName>&a;</methodName></methodCall>')
    for body in (entity.encode("utf-16"), entity.replace("UTF-16", "UTF-8").encode("utf-8"),
                 entity.replace("UTF-16", "UTF-16BE").encode("utf-16-be")):   # with a BOM, without one
        status, data = post(farm, "view", body, {"Content-Type": "text/xml"})
        assert status == 200 and fault_code(data) == Code.BAD_REQUEST   # refused, not executed

    def nested(depth: int) -> bytes:
        return ("<?xml version='1.0'?><methodCall><methodName>jobs.list</methodName><params><param>"
                + "<value><array><data>" * depth + "</data></array></value>" * depth
                + "</param></params></methodCall>").encode()
    status, data = post(farm, "submit", nested(20_000))    # fits the size limit: refused for its depth
    assert status == 200 and fault_code(data) == Code.BAD_REQUEST
    assert post(farm, "submit", nested(100_000))[0] == 413  # 4 MB: over a submit token's limit for the method
    status, data = post(farm, "submit", _gzip(nested(100_000)), {"Content-Encoding": "gzip"})
    assert status == 413 or fault_code(data) == Code.BAD_REQUEST

    call = xmlrpc.client.dumps((), "jobs.list").encode()
    for lengths in (["1_0"], ["+10"], ["0x10"], ["1e3"], ["10, 10"], ["-0"], [str(len(call)), "0"]):
        connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=10)
        connection.putrequest("POST", "/RPC2")
        connection.putheader("Authorization", f"Bearer {token(farm, 'view')}")
        for value in lengths:
            connection.putheader("Content-Length", value)
        connection.endheaders()
        connection.send(call)
        assert connection.getresponse().status == 400, lengths
        connection.close()
    # The method a client names must be the one it calls.
    status, data = post(farm, "submit", xmlrpc.client.dumps((), "jobs.list").encode(), method="bundles.upload")
    assert status == 200 and fault_code(data) == Code.BAD_REQUEST

    assert serves(farm.client)
    log = farm.log("controller")
    assert "Traceback" not in log and "internal error" not in log


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data)


# -- connections -----------------------------------------------------------------------------------

def test_idle_sockets_do_not_lock_clients_out(farm):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        if hard != resource.RLIM_INFINITY and hard < 4096:
            pytest.skip(f"2,000 sockets need more open files than this machine allows ({hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    farm.start_controller()
    farm.client.close()
    idle = []
    try:
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", farm.port)))
        started = time.monotonic()
        result = run_cli("jobs", "--controller", farm.url)
        elapsed = time.monotonic() - started
        print(f"povfarm jobs with 2,000 idle sockets open: {elapsed:.2f} s")
        assert result.returncode == 0, result.stderr
        assert elapsed < 1.0
        started = time.monotonic()
        assert farm.client_as("view").call("jobs.list") == []
        assert time.monotonic() - started < 1.0
        # The controller keeps only as many as its pending pool holds, and drops the rest within seconds.
        fds = len(os.listdir(f"/proc/{farm.controller.pid}/fd"))
        assert fds < Quotas().pending + 100, f"the controller holds {fds} descriptors"
        trickle = socket.create_connection(("127.0.0.1", farm.port))
        trickle.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n")
        trickle.settimeout(8)
        started = time.monotonic()
        assert trickle.recv(100) == b"" and time.monotonic() - started < 7, "headers must arrive in seconds"
        trickle.close()
    finally:
        for sock in idle:
            sock.close()
    assert serves(farm.client_as("view"))


def test_a_long_poll_ends_when_its_client_leaves(farm, monkeypatch):
    monkeypatch.setenv("POVFARM_MAX_CONNECTIONS", "2")
    farm.start_controller()
    farm.client.close()
    body = xmlrpc.client.dumps((0, 0, 30.0), "viewer.watch").encode()
    # The polls are seated within moments. Not waited for by asking: a probing call would take one of the
    # two seats itself. On a busy box moments are longer: a probe answered means a poll was not seated yet,
    # and the polls are sent again, given longer.
    for settle in (0.5, 1.5, 3.0):
        watchers = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", farm.port))
            sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token(farm, "view").encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            watchers.append(sock)
        time.sleep(settle)
        probe = farm.client_as("view")
        try:
            probe.call("jobs.list")
        except FarmError as err:
            assert "503" in str(err)           # both slots are held by the waiting polls
            break
        finally:
            probe.close()
        for sock in watchers:
            sock.close()
        wait_until(lambda: serves(farm.client_as("view")), timeout=5, interval=0.1, what="the slots to be freed")
    else:
        raise AssertionError("two waiting long polls never held both seats")
    for sock in watchers:
        sock.close()
    started = time.monotonic()
    wait_until(lambda: serves(farm.client_as("view")), timeout=5, interval=0.1, what="the slots to be freed")
    print(f"long polls whose clients left freed their slots in {time.monotonic() - started:.2f} s")


# -- bounds on work --------------------------------------------------------------------------------

def test_total_work_is_bounded_and_submit_stays_fast(farm):
    from farm import limits
    farm.start_controller()
    digest = farm.client.call("bundles.upload", xmlrpc.client.Binary(small_bundle()))
    spec = {"bundle": digest, "scene": "s.pov", "width": 4, "height": 16000}

    started = time.monotonic()
    with pytest.raises(FarmError) as err:
        farm.client.call("jobs.submit", {**spec, "height": 32768 // 2, "strips": 1024,
                                         "animation": {"first": 1, "last": 1000}})
    assert err.value.code is Code.BAD_ARGUMENT and time.monotonic() - started < 1.0
    with pytest.raises(FarmError) as err:   # 200 frames of 16384x4096 RGBA at 16 bits: 100 GiB of pixels
        farm.client.call("jobs.submit", {**spec, "width": 16384, "height": 4096, "bits": 16, "options": ["+UA"],
                                         "animation": {"first": 1, "last": 200}})
    assert err.value.code is Code.BAD_ARGUMENT and "bytes" in str(err.value)

    # The largest job accepted: 40 frames x 500 strips = 20,000 units.
    largest = {**spec, "strips": 500, "animation": {"first": 1, "last": limits.MAX_JOB_UNITS // 500}}
    jobs, times = [], []
    for _ in range(limits.MAX_QUEUED_UNITS // limits.MAX_JOB_UNITS):
        started = time.monotonic()
        jobs.append(farm.client.call("jobs.submit", largest))
        times.append(time.monotonic() - started)
    print(f"submit of a {limits.MAX_JOB_UNITS}-unit job: {', '.join(f'{t:.2f}' for t in times)} s")
    assert farm.client.call("jobs.status", jobs[0])["strips_total"] == limits.MAX_JOB_UNITS
    assert sorted(times)[len(times) // 2] < 1.0     # the median: one busy moment of a shared machine aside
    with pytest.raises(FarmError) as err:   # the farm's queue is full
        farm.client.call("jobs.submit", largest)
    assert err.value.code is Code.BAD_ARGUMENT and "waiting" in str(err.value)
    farm.client.call("jobs.cancel", jobs[0])
    farm.client.call("jobs.submit", {**spec, "strips": 2})   # room again
    assert serves(farm.client)


# -- a full disk -----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(farm):
    """The controller's data dir on a 16 MB tmpfs of its own."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs for the data dir needs root and mount(8)")
    farm.data_dir.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(farm.data_dir)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield farm.data_dir
    finally:
        farm.stop()
        subprocess.run(["umount", "-l", str(farm.data_dir)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system under `directory` to the last byte."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 20, 4096, 64):
            with contextlib.suppress(OSError):
                while handle.write(bytes(size)):
                    pass
    return filler


@needs_povray
def test_nodes_outlive_a_full_disk_and_finish_when_space_returns(farm, small_disk, tmp_path):
    farm.start_controller()
    first = farm.start_node("n1")
    wait_until(lambda: farm.client.call("nodes.list"), what="the first node to register")
    digest = farm.client.call("bundles.upload", xmlrpc.client.Binary(small_bundle()))
    job = farm.client.call("jobs.submit", {"bundle": digest, "scene": "s.pov", "width": 64, "height": 256,
                                           "strips": 8})
    wait_until(lambda: farm.client.call("jobs.status", job)["strips_leased"], interval=0.02,
               what="the first node to start on the job")
    filler = fill(small_disk)             # the node's results and polls now meet a full disk
    second = farm.start_node("n2")        # started while the disk is full: it must wait, not exit

    with pytest.raises(FarmError) as err:
        farm.client.call("bundles.upload", xmlrpc.client.Binary(_big_zip(64 * 1024)))
    assert err.value.code is Code.STORAGE
    assert str(small_disk) not in str(err.value) and str(tmp_path) not in str(err.value)
    wait_until(lambda: "retrying" in farm.log("n1") and "retrying" in farm.log("n2"), timeout=20,
               what="both nodes to meet the full disk and retry")
    time.sleep(2)                         # the scenario: the disk stays full a while, the nodes retrying
    assert first.poll() is None and second.poll() is None, "nodes must outlive a full disk"
    assert farm.client.call("jobs.status", job)["state"] != "done"
    assert not leftovers(small_disk)

    filler.unlink()                       # space returns
    assert wait_ended(farm.client, job, timeout=90)["state"] == "done"
    assert farm.client.call("jobs.fetch", job).data.startswith(b"\x89PNG")
    assert first.poll() is None and second.poll() is None
    assert "registered" in farm.log("n2")
    assert not leftovers(small_disk)
    assert "Traceback" not in farm.log("n1") + farm.log("n2") + farm.log("controller")


# -- honest node errors ----------------------------------------------------------------------------

needs_bwrap = pytest.mark.skipif(sandboxes.build("auto").kind != "bwrap",
                                 reason="needs a working bubblewrap (apt-get install bubblewrap)")


@needs_bwrap
@needs_povray
def test_node_errors_name_the_signal_and_why_through_bubblewrap(tmp_path):
    from farm.node import Node
    confined = sandboxes.build("bwrap", "povray", memory_mb=1024, output_mb=1)
    config = Config(work_dir=tmp_path / "work", probe_cache=tmp_path / "probe.json", name="n1",
                    max_memory_mb=1024, max_output_mb=1)
    node = Node(config, Client("http://127.0.0.1:9"), sandbox=confined)

    def run(argv, scene_dir: Path) -> tuple[povray.ProcessResult, str]:
        command = confined.command(argv, scene_dir, scene_dir, povray.povray_env())
        log_path = scene_dir / "log.txt"
        result = povray.run_process(command.argv, cwd=scene_dir, env=command.env, log_path=log_path,
                                    limits=command.limits)
        return confined.outcome(result), log_path.read_text(errors="replace")

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "write.pov").write_text('#fopen F "big.txt" write\n#declare I = 0;\n#while (I < 100000)\n'
                                      '#write (F, "0123456789012345678901234567890123456789\\n")\n'
                                      '#declare I = I + 1;\n#end\n#fclose F\n' + SCENE)
    (scenes / "memory.pov").write_text("#declare A = array[400000000];\n" + SCENE)   # 3.2 GB

    def render(scene: str):
        return run(povray.render_command(shutil.which("povray"), scene, 32, 32, [], scenes / "out.ppm", "P", 1,
                                         scenes, []), scenes)

    result, stderr = render("write.pov")
    message, scene_error = node.renderer._failure(result, stderr, None)
    assert result.signal == signal.SIGXFSZ and not scene_error
    assert "SIGXFSZ" in message and "file too large" in message and "Parse" not in message, message

    result, stderr = render("memory.pov")
    message, scene_error = node.renderer._failure(result, stderr, None)
    assert "out of memory" in message and "1024 MB" in message and not scene_error, message

    result, stderr = run([shutil.which("sh"), "-c", "kill -SEGV $$"], scenes)
    assert result.signal == signal.SIGSEGV and result.returncode is None
    assert "signal 11 SIGSEGV" in result.describe() and "crashed" in result.describe()


# -- bursts and crowds: the front door ------------------------------------------------------------

API_VERSION = xmlrpc.client.dumps((), "api.version").encode()


def raw_request(bearer: str, path: str = "/RPC2") -> bytes:
    """A whole request as a client sends it: headers and body in one write (a feed stream when `path` is
    /feed)."""
    if path != "/RPC2":
        return f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\r\n".encode()
    return (f"POST /RPC2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n"
            f"Content-Length: {len(API_VERSION)}\r\n\r\n").encode() + API_VERSION


def status_of(sock: socket.socket) -> str:
    """The HTTP status a connection got ('closed' if it was closed unanswered)."""
    try:
        head = sock.recv(4096)
    except OSError as err:
        return type(err).__name__
    return head[9:12].decode() if head.startswith(b"HTTP/1.") else "closed"


def burst(farm, count: int, request: bytes, keep: bool = False) -> tuple[dict[str, int], list[socket.socket]]:
    """`count` connections opened at once, then each sends `request`: the statuses they got (and, with
    `keep`, the open sockets)."""
    socks = [socket.create_connection(("127.0.0.1", farm.port), timeout=20) for _ in range(count)]
    for sock in socks:
        sock.sendall(request)
    statuses: dict[str, int] = {}
    for sock in socks:
        status = status_of(sock)
        statuses[status] = statuses.get(status, 0) + 1
    if not keep:
        for sock in socks:
            sock.close()
    return statuses, socks


def answered_within(farm, role: str, seconds: float = 1.0) -> float:
    """A fresh client of `role` calls api.version; how long it took (it must answer within `seconds`)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", farm.port), timeout=seconds) as sock:
        sock.sendall(raw_request(token(farm, role)))
        assert status_of(sock) == "200"
    took = time.monotonic() - started
    assert took < seconds, f"a {role} call took {took:.2f} s"
    return took


def test_bursts_of_connections_never_stop_the_controller(farm):
    farm.start_controller()
    for _ in range(3):      # each pushes pending connections out of the lobby while they are being read
        statuses, _ = burst(farm, 150, raw_request("wrong-token"))
        assert set(statuses) <= {"401", "closed", "ConnectionResetError"}, statuses
        answered_within(farm, "submit")
    statuses, _ = burst(farm, 120, raw_request(token(farm, "node")))
    assert statuses == {"200": 120}
    answered_within(farm, "submit")
    assert "Traceback" not in (farm.tmp / "controller.log").read_text()


@pytest.mark.parametrize("path", ["/RPC2", "/feed?job=0"])
def test_a_view_token_cannot_crowd_out_nodes_and_submitters(farm, path):
    farm.start_controller()
    statuses, held = burst(farm, 600, raw_request(token(farm, "view"), path), keep=True)
    try:
        print(f"600 view connections to {path}: {statuses}")
        assert statuses.get("503", 0) > 0 and statuses.get("200", 0) <= 64
        took = [answered_within(farm, role) for role in ("node", "submit")]
        print(f"while they are held, a node call took {took[0]:.3f} s and a submit call {took[1]:.3f} s")
        with socket.create_connection(("127.0.0.1", farm.port), timeout=5) as sock:
            sock.sendall(raw_request(token(farm, "view"), path))
            head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: " in head, head
    finally:
        for sock in held:
            sock.close()
    log_text = (farm.tmp / "controller.log").read_text()
    assert log_text.count("refused") <= 2, "refusals are logged once per peer per minute"
    wait_until(lambda: serves(farm.client_as("view")), timeout=10, what="views served again")


def faulty_controller(farm, failures: int) -> subprocess.Popen:
    program = [sys.executable, str(Path(__file__).with_name("faulty_controller.py")), str(failures)]
    return subprocess.Popen([*program, "--port", str(farm.port), "--data-dir", str(farm.data_dir)],
                            stdout=subprocess.DEVNULL, stderr=open(farm.tmp / "controller.log", "ab"))


def test_a_failing_lobby_is_restarted_and_a_hopeless_one_ends_the_process(farm):
    farm.controller = faulty_controller(farm, failures=3)
    wait_until(farm.token_file.exists, what="the controller's token file")
    for _ in range(3):      # each connection that meets the bug waits while the lobby restarts, then is served
        with contextlib.suppress(FarmError):
            farm.client_as("submit").call("api.version")
    wait_until(lambda: serves(farm.client_as("submit")), timeout=10, what="the restarted lobby to serve")
    assert "the connection-lobby thread failed; restarting it" in (farm.tmp / "controller.log").read_text()
    farm.controller.terminate()
    farm.controller.wait(10)

    farm.controller = faulty_controller(farm, failures=-1)

    def ended() -> bool:
        with contextlib.suppress(FarmError):
            Client(farm.url, timeout=2, token=token(farm, "submit")).call("api.version")
        return farm.controller.poll() is not None
    wait_until(ended, timeout=30, what="the hopeless controller to exit")
    assert farm.controller.returncode == 70, "a controller that cannot accept must exit for its service manager"
    assert "keeps failing; exiting (status 70)" in (farm.tmp / "controller.log").read_text()


# -- discovery datagrams ---------------------------------------------------------------------------

HOSTILE_DATAGRAMS = (
    b"[" * 1000,                                                               # RecursionError in json.loads
    b'{"povfarm": 1, "body": "{\\"url\\": \\"u\\", \\"tls_sha256\\": \\"\\", \\"name\\": \\"x\\", '
    b'\\"nonce\\": \\"n\\", \\"time\\": 1}", "sig": {"node": "\\ud800"}}',      # a lone surrogate: UnicodeEncodeError
    b"\xff\xfe" * 300, b'{"povfarm": 1, "body": "{\\"time\\": 1e999}", "sig": {}}', b"x" * 1500, b"",
)


def test_a_node_listening_for_its_controller_outlives_hostile_datagrams(farm, monkeypatch):
    """A node started with `--controller discover` is sent every kind of malformed datagram, 600 in all,
    on its discovery port: it logs one line, goes on listening, and then finds the real controller."""
    port = free_udp_port()
    for name, value in (("DISCOVERY_PORT", port), ("DISCOVERY_TIMEOUT", 0), ("ANNOUNCE_TO", "127.0.0.1"),
                        ("ANNOUNCE_INTERVAL", 0.2)):
        monkeypatch.setenv(f"POVFARM_{name}", str(value))
    auth.create_token_file(farm.token_file)      # the node needs it before the controller starts
    node = subprocess.Popen(farm_argv("node", "--controller", "discover", "--name", "n1",
                                      "--work-dir", str(farm.tmp / "n1")),
                            stdout=subprocess.DEVNULL, stderr=open(farm.tmp / "n1.log", "ab"))
    farm.nodes.append(node)
    wait_until(lambda: "listening for its announcement" in farm.log("n1"), what="the node to listen")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        for _ in range(100):
            for datagram in HOSTILE_DATAGRAMS:
                attacker.sendto(datagram, ("127.0.0.1", port))
    wait_until(lambda: node.poll() is not None or "ignored a datagram from 127.0.0.1" in farm.log("n1"),
               what="the node to log the garbage")
    assert node.poll() is None, farm.log("n1")
    farm.start_controller("--announce", "--announce-url", farm.url)
    wait_until(lambda: farm.client.call("nodes.list"), what="the node to find the controller and register")
    log = farm.log("n1")
    assert node.poll() is None and "Traceback" not in log
    assert "found the controller" in log and log.count("ignored a datagram") == 1, log


# -- what the server says about itself -------------------------------------------------------------

def test_a_call_says_how_long_the_controller_spent_on_it_and_the_upload_meter_leaves_that_out(farm):
    """A busy controller is not a slow uplink: each answer says the controller's own time on the call
    (Server-Timing: app;dur=MS, from its body read to its answer), and a client timing its large requests
    takes it off what it records (farm/client.py)."""
    farm.start_controller()
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    started = time.monotonic()
    connection.request("POST", "/RPC2", body=xmlrpc.client.dumps((), "api.version"),
                       headers={"Authorization": f"Bearer {token(farm, 'view')}", "Content-Type": "text/xml"})
    response = connection.getresponse()
    response.read()
    elapsed = time.monotonic() - started
    connection.close()
    spent = wire.timing_seconds(response.getheader(wire.TIMING_HEADER))
    assert response.getheader(wire.TIMING_HEADER).startswith("app;dur=") and 0 <= spent <= elapsed
    assert wire.timing_seconds("db;dur=3, app;dur=12.5") == 0.0125
    assert wire.timing_seconds(None) == wire.timing_seconds("app;dur=soon") == 0.0


def test_the_server_header_names_povfarm_only(farm):
    """The Server header tells an attacker nothing about the Python underneath: on a call, a refusal,
    the web page and a missing page alike."""
    import farm as package

    farm.start_controller()
    answers = []
    for method, path, role in (("POST", "/RPC2", "view"), ("POST", "/RPC2", None), ("GET", "/", None),
                               ("GET", "/no-such-page", None)):
        connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
        headers = {"Authorization": f"Bearer {token(farm, role)}"} if role else {}
        connection.request(method, path, body=xmlrpc.client.dumps((), "api.version") if method == "POST" else None,
                           headers={**headers, "Content-Type": "text/xml"})
        response = connection.getresponse()
        response.read()
        answers.append((response.status, response.getheader("Server")))
        connection.close()
    assert {status for status, _ in answers} == {200, 401, 404}, answers
    assert all(server == f"povfarm/{package.__version__}" for _, server in answers), answers


# -- what faults say about the values sent ---------------------------------------------------------

WRONG_TYPED = (xmlrpc.client.Binary(b"\0ab"), {"a": xmlrpc.client.Binary(b"x")},
               [xmlrpc.client.Binary(b"x"), {"b": 1}], True, xmlrpc.client.DateTime("20240101T00:00:00"),
               "x" * 5000)
PLAUSIBLE = {"int": 1, "float": 0.5, "str": "x", "dict": {}, "dict | None": {}, "float | None": 0.5, "bool": False, "list": [],
             "list | None": [],
             "Binary": xmlrpc.client.Binary(b"")}


def api_calls():
    """(method, roles, params) for every public method: each parameter in turn wrong-typed, the others
    of their right type."""
    import inspect

    from farm.api.bundles import BundlesAPI
    from farm.api.jobs import JobsAPI
    from farm.api.nodes import NodesAPI
    from farm.api.viewer import ViewerAPI

    for namespace in (BundlesAPI, JobsAPI, NodesAPI, ViewerAPI):
        for name, function in inspect.getmembers(namespace, inspect.isfunction):
            if not hasattr(function, "rpc_roles"):
                continue
            params = [PLAUSIBLE[p.annotation] for p in list(inspect.signature(function).parameters.values())[1:]]
            for index in range(len(params)):
                for value in WRONG_TYPED:
                    yield f"{namespace.namespace}.{name}", function.rpc_roles, (*params[:index], value,
                                                                                   *params[index + 1:])


def test_faults_describe_wrong_values_by_type_not_by_repr(farm):
    """Whatever a client sends in place of a number, a text, a flag or a list, the fault names it by its
    XML-RPC type (`binary data (3 bytes)`, `a struct of 1 member(s)`) or a short rendering, never by a
    Python repr such as `<xmlrpc.client.Binary object at 0x7f...>`."""
    farm.start_controller()
    clients = {role: farm.client_as(role) for role in ("submit", "node", "view")}
    digest = clients["submit"].call("bundles.upload", xmlrpc.client.Binary(small_bundle()))
    valid = {"bundle": digest, "scene": "s.pov", "width": 8, "height": 8}
    calls = list(api_calls())
    for field in ("bundle", "scene", "width", "height", "options", "strips", "bits", "priority", "name",
                  "animation", "radiosity_prepass", "preview"):
        calls += [("jobs.submit", {"submit"}, ({**valid, field: value},)) for value in WRONG_TYPED]
    calls += [("jobs.submit", {"submit"}, ({**valid, "options": [value]},)) for value in WRONG_TYPED]
    calls += [("jobs.submit", {"submit"}, ({**valid, "animation": {name: value}},))
              for name in ("first", "initial_clock", "cyclic") for value in WRONG_TYPED]
    faults = []
    for method, roles, params in calls:
        try:
            clients[sorted(roles)[0]].call(method, *params)
        except FarmError as err:
            faults.append((method, err.code, str(err)))
    assert len(faults) > 300
    leaking = [fault for fault in faults if " at 0x" in fault[2] or "xmlrpc.client" in fault[2]
               or fault[1] is Code.INTERNAL]
    assert not leaking, leaking[:5]
    texts = {text for _method, _code, text in faults}
    assert "job must be a whole number from 1 to 2147483647, not binary data (3 bytes)" in texts
    assert "preview must be auto, always or never, not the date and time '20240101T00:00:00'" in texts
    assert "POV-Ray option an array of 2 value(s) is not a short string" in texts


# -- library folders stay inside the bundle --------------------------------------------------------

def test_a_library_path_outside_the_bundle_is_refused(farm, tmp_path):
    """`+L../..` would have every node's POV-Ray search the node's own folders: the controller refuses it
    with the way to do it right, `--option +L...` is refused before anything is sent, and a library
    folder inside the bundle is still taken."""
    farm.start_controller()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("scenes/s.pov", SCENE)
        archive.writestr("lib/x.inc", "\n")
    digest = farm.client.call("bundles.upload", xmlrpc.client.Binary(buffer.getvalue()))
    spec = {"bundle": digest, "scene": "scenes/s.pov", "width": 8, "height": 8}
    for option in ("+L../..", "+L../lib/../..", '+L"../../my lib"'):
        with pytest.raises(FarmError) as refused:
            farm.client.call("jobs.submit", {**spec, "options": [option]})
        assert refused.value.code is Code.BAD_OPTION, option
        assert "outside the job's bundle" in str(refused.value) and "+L../lib" in str(refused.value)
    job = farm.client.call("jobs.submit", {**spec, "options": ["+L../lib"]})
    farm.client.call("jobs.cancel", job)
    assert [row["id"] for row in farm.client.call("jobs.list")] == [job]
    scene = tmp_path / "s.pov"
    scene.write_text(SCENE)
    done = run_cli("submit", str(scene), "--option", "+L../..", "--controller", farm.url, timeout=60)
    assert done.returncode == 1 and "not allowed in --option" in done.stderr and "Traceback" not in done.stderr


# -- the systemd units -----------------------------------------------------------------------------

def unit_settings(path: Path) -> dict[str, list[str]]:
    """A systemd unit's settings, each key with every value it is given (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_node_unit_runs_a_node_with_the_token_it_loads(farm, tmp_path, monkeypatch):
    """The node unit used to pass no token, so its node exited and was restarted every 10 s. Its ExecStart
    parses with the CLI's own parser and names the token file that LoadCredential= provides; run as systemd
    would run it (the credential copied to a private folder), that node registers; with a wrong token it
    exits at once, saying so. The controller's unit parses too."""
    import shlex

    from harness import ROOT
    from farm.cli.parser import build_command_line

    units = ROOT / "examples" / "systemd"
    controller_argv = shlex.split(unit_settings(units / "povfarm-controller.service")["ExecStart"][0])
    assert build_command_line().parse(controller_argv[1:]).command == "controller"
    node_unit = unit_settings(units / "povfarm-node.service")
    argv = shlex.split(node_unit["ExecStart"][0])
    args = build_command_line().parse(argv[1:])
    credentials = dict(value.split(":", 1) for value in node_unit["LoadCredential"])
    name = args.token_file.removeprefix("${CREDENTIALS_DIRECTORY}/")
    assert args.command == "node" and Path(argv[0]).name == "povfarm" and name in credentials
    assert credentials[name].startswith("/etc/")

    farm.start_controller()
    monkeypatch.delenv("POVFARM_TOKEN_FILE")
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    (directory / name).write_text(token(farm, "node") + "\n")
    command = [arg.replace("${CREDENTIALS_DIRECTORY}", str(directory)) for arg in argv[1:]]
    node = subprocess.Popen(farm_argv(*command, "--controller", farm.url, "--work-dir", str(tmp_path / "n1")),
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "n1.log", "ab"))
    farm.nodes.append(node)
    wait_until(lambda: node.poll() is not None or farm.client.call("nodes.list"), what="the node to register")
    assert node.poll() is None, farm.log("n1")
    (directory / name).write_text("not-the-token\n")
    refused = run_cli(*command, "--controller", farm.url, "--work-dir", str(tmp_path / "n2"), timeout=60)
    assert refused.returncode == 1 and "refused the access token" in refused.stderr
    assert "Traceback" not in refused.stderr


# -- clients ride out a restart --------------------------------------------------------------------

class _Lines:
    """A process's stderr, read line by line on a thread as it comes (a test waits for a line with
    wait_until, never by sleeping)."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def text(self) -> str:
        self._thread.join(10)
        return "\n".join(self.lines)


@needs_povray
def test_submit_output_rides_out_a_kill_and_restart_of_the_controller(farm, tmp_path):
    from harness import SCENES, assert_same_pixels, farm_argv, native_render

    farm.start_controller()
    farm.start_node("n1", "--threads", "1")
    scene = SCENES / "advanced/chess2.pov"
    out = tmp_path / "chess2.png"
    client = subprocess.Popen(farm_argv("submit", str(scene), "--width", "160", "--height", "120", "--strips",
                                        "8", "--output", str(out), "--controller", farm.url),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stderr = _Lines(client)
    try:
        job = int(client.stdout.readline())
        status = wait_until(lambda: (lambda s: s if s["strips_done"] >= 1 else None)(
            farm.client.call("jobs.status", job)), what="the first strip")
        assert status["state"] == "rendering" and status["strips_done"] < status["strips_total"]
        farm.controller.kill()                      # kill -9, mid-job
        farm.controller.wait()
        wait_until(lambda: stderr.having("lost the controller"), timeout=15, what="the client to notice")
        farm.start_controller()                     # the same data directory and port
        assert client.wait(120) == 0, stderr.text()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    text = stderr.text()
    assert len(stderr.having(f"lost the controller at {farm.url}")) == 1, text
    assert len(stderr.having(f"reconnected to the controller at {farm.url}")) == 1, text
    assert "Traceback" not in text and "error" not in text, text
    assert_same_pixels(out, native_render(scene, 160, 120, [], tmp_path / "native.png"))


def test_render_with_a_povray_that_is_not_there_stops_at_once_with_the_probes_message(tmp_path):
    (tmp_path / "ball.pov").write_text(SCENE)
    started = time.monotonic()
    result = run_cli("render", str(tmp_path / "ball.pov"), "+W64", "+H48", "--povray", "/nonexistent",
                     timeout=60)
    seconds = time.monotonic() - started
    assert result.returncode == 1 and seconds < 10, (seconds, result.stderr)
    assert "POV-Ray was not found as '/nonexistent'" in result.stderr and "is blocked" in result.stderr
    assert result.stderr.count("POV-Ray was not found") == 1, result.stderr     # once, for both nodes
    assert "Traceback" not in result.stderr and not (tmp_path / "ball.png").exists()


def test_submit_wait_says_at_once_that_the_only_node_cannot_render_and_keeps_waiting(farm, tmp_path):
    from harness import farm_argv

    farm.start_controller()
    farm.start_node("n1", "--povray", "/nonexistent")
    wait_until(lambda: any(node["state"] == "broken" for node in farm.client.call("nodes.list")),
               what="the broken node to register")
    (tmp_path / "ball.pov").write_text(SCENE)
    client = subprocess.Popen(farm_argv("submit", str(tmp_path / "ball.pov"), "+W64", "+H48", "--wait",
                                        "--controller", farm.url),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stderr = _Lines(client)
    try:
        job = int(client.stdout.readline())
        started = time.monotonic()
        said = wait_until(lambda: stderr.having("is blocked"), timeout=10, what="the reason")
        assert time.monotonic() - started < 5
        assert said == [f"povfarm: job {job} is blocked: no node can render it: n1: POV-Ray was not found as "
                        f"'/nonexistent'; install it (Debian: apt-get install povray) or pass --povray PATH; "
                        f"waiting for one that can (up to 15 min)"], stderr.lines
        assert client.poll() is None          # a node may yet be mended: it waits
        status = run_cli("status", str(job), "--controller", farm.url)
        assert "blocked:  no node can render it: n1: POV-Ray was not found" in status.stdout, status.stdout
        jobs = run_cli("jobs", "--controller", farm.url)
        assert "queued (blocked)" in jobs.stdout and f"job {job} is blocked: no node" in jobs.stdout, jobs.stdout
        client.terminate()                    # stop waiting: the job stays on the farm
        assert client.wait(10) == 130
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert len(stderr.having("is blocked")) == 1 and "Traceback" not in stderr.text()
    assert farm.client.call("jobs.status", job)["state"] == "queued"


# -- memory per request, every role --------------------------------------------------------------

MEMORY_LIMIT_MB = 200      # the controller's peak RSS under any one role's heaviest requests


def node_call_bomb(method: str, lease: str) -> bytes:
    """A node's result call whose rows are 1 GiB of base64 (gzip: about 1 MB)."""
    prefix = (f"<?xml version='1.0'?><methodCall><methodName>{method}</methodName><params>"
              f"<param><value><string>n</string></value></param>"
              f"<param><value><string>{lease}</string></value></param><param><value><base64>").encode()
    return gzip_bomb(1, prefix, fill=b"A")


def leased_unit(farm) -> tuple[Client, str, dict]:
    """A registered node (its client and id) holding the lease of a one-strip 64x64 job."""
    digest = farm.client.call("bundles.upload", xmlrpc.client.Binary(small_bundle()))
    farm.client.call("jobs.submit", {"bundle": digest, "scene": "s.pov", "width": 64, "height": 64, "strips": 1,
                                     "preview": "never"})
    node = farm.client_as("node")
    node_id = node.call("nodes.register", "n1", {"povray": "3.7", "threads": 1, "slots": 1})["node_id"]
    return node, node_id, node.call("nodes.poll", node_id)


def test_node_gzip_bombs_stay_in_bounded_memory(farm):
    farm.start_controller()
    node, node_id, task = leased_unit(farm)
    gz = {"Content-Encoding": "gzip", "Content-Type": "text/xml"}
    bombs = [("nodes.complete", task["lease"]), ("nodes.complete_and_poll", task["lease"]),
             ("nodes.complete", "no-such-lease"), ("nodes.complete_and_poll", "no-such-lease")]
    results = []

    def attack(method: str, lease: str) -> None:
        results.append(post(farm, "node", node_call_bomb(method, lease), gz, method=method))
    threads = [threading.Thread(target=attack, args=bomb) for bomb in bombs]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.monotonic() - started
    peak = peak_rss_mb(farm.controller.pid)
    print(f"four node gzip bombs (1 GiB of base64 each): controller peak RSS {peak:.1f} MB, {elapsed:.1f} s")
    for status, data in results:   # the lease's unit bounds the rows: far below 1 GiB; no lease, no rows
        assert status == 413 or (status == 200 and fault_code(data) == Code.STALE_LEASE), (status, data[:200])
    assert peak < MEMORY_LIMIT_MB

    # The honest result still goes in, and a stale lease still gets its fault.
    raw = bytes((task["row_end"] - task["row_start"]) * task["width"] * task["channels"] * task["bits"] // 8)
    assert node.call("nodes.complete", node_id, task["lease"], xmlrpc.client.Binary(zlib.compress(raw)), 0.1)
    with pytest.raises(FarmError) as err:
        node.call("nodes.complete", node_id, "no-such-lease", xmlrpc.client.Binary(zlib.compress(raw)), 0.1)
    assert err.value.code is Code.STALE_LEASE
    assert "Traceback" not in farm.log("controller")


def many_member_zip(count: int) -> bytes:
    """A well-formed zip64 archive of `count` empty members, built directly (zipfile takes minutes)."""
    locals_, directory, offset = [], [], 0
    for index in range(count):
        name = b"%x" % index
        locals_.append(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 33, 0, 0, 0, len(name), 0) + name)
        directory.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 33, 0, 0, 0, len(name),
                                     0, 0, 0, 0, 0, offset) + name)
        offset += len(locals_[-1])
    size = sum(len(entry) for entry in directory)
    end64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, offset + size, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return b"".join(locals_) + b"".join(directory) + end64 + locator + end


def test_a_million_member_zip_is_refused_from_its_directory_record(farm):
    farm.start_controller()
    payload = many_member_zip(1_000_000)
    assert len(zipfile.ZipFile(io.BytesIO(many_member_zip(3))).namelist()) == 3   # the builder is sound
    length, pieces = upload_body_chunks(payload)
    del payload
    started = time.monotonic()
    status, data = post(farm, "submit", method="bundles.upload", length=length, chunks=pieces)
    elapsed = time.monotonic() - started
    peak = peak_rss_mb(farm.controller.pid)
    print(f"a million-member zip: refused in {elapsed:.1f} s, controller peak RSS {peak:.1f} MB")
    assert status == 200 and fault_code(data) == Code.BUNDLE_TOO_LARGE
    assert b"1000000" in data
    assert peak < MEMORY_LIMIT_MB
    assert not leftovers(farm.data_dir)
    assert farm.client.call("bundles.upload", xmlrpc.client.Binary(small_bundle())).startswith("sha256:")


def streamed_base64_digest(response: http.client.HTTPResponse) -> str:
    """SHA-256 of the bytes of a response's one base64 value, decoded as they are read, so that this
    process never holds the value whole."""
    digest, text, inside = hashlib.sha256(), b"", False
    while chunk := response.read(1 << 20):
        text += chunk
        if not inside:
            at = text.find(b"<base64>")
            if at < 0:
                continue
            text, inside = text[at + len(b"<base64>"):], True
        end = text.find(b"<")
        usable = b"".join((text if end < 0 else text[:end]).split())
        cut = len(usable) if end >= 0 else len(usable) - len(usable) % 4
        digest.update(base64.b64decode(usable[:cut]))
        if end >= 0:
            break
        text = usable[cut:]
    return digest.hexdigest()


def test_a_zips_end_records_are_read_as_zipfile_reads_them():
    from farm.bundle.checking import check_archive
    assert check_archive(many_member_zip(3)) == ["0", "1", "2"]
    commented = io.BytesIO()
    with zipfile.ZipFile(commented, "w") as archive:
        archive.writestr("s.pov", SCENE)
        archive.comment = b"a comment moves the end record away from the end"
    assert check_archive(commented.getvalue()) == ["s.pov"]
    # A zip64 end record claiming more entries, or a larger directory, than the plain one.
    for fields in ((10**6, 10**6, 0), (3, 3, 10**9)):
        forged = bytearray(many_member_zip(3))
        at = forged.rfind(b"PK\x06\x06")
        forged[at + 24:at + 48] = struct.pack("<3Q", *fields)
        with pytest.raises(FarmError) as err:
            check_archive(bytes(forged))
        assert err.value.code is Code.BUNDLE_TOO_LARGE


def test_ranged_fetches_are_streamed_from_disk(farm):
    farm.start_controller()
    payload = _big_zip(20 * 1024 * 1024)
    length, pieces = upload_body_chunks(payload)
    status, data = post(farm, "submit", method="bundles.upload", length=length, chunks=pieces)
    digest = xmlrpc.client.loads(data)[0][0]
    node = farm.client_as("node")
    whole = node.call("bundles.fetch_range", digest, 1, 16 * 1024 * 1024)   # an honest client's view
    assert whole["size"] == len(payload) and whole["data"].data == payload[1:1 + 16 * 1024 * 1024]
    tail = node.call("bundles.fetch_range", digest, len(payload) - 10, 16 * 1024 * 1024)
    assert tail["size"] == len(payload) and tail["data"].data == payload[-10:]
    del whole, tail, pieces
    body = xmlrpc.client.dumps((digest, 0, 16 * 1024 * 1024), "bundles.fetch_range").encode()
    expected = hashlib.sha256(payload[:16 * 1024 * 1024]).hexdigest()
    del payload
    digests = []

    def fetch() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=120)
        connection.request("POST", "/RPC2", body, {"Authorization": f"Bearer {token(farm, 'node')}",
                                                   wire.METHOD_HEADER: "bundles.fetch_range"})
        response = connection.getresponse()
        digests.append(streamed_base64_digest(response) if response.status == 200 else response.status)
        connection.close()
    threads = [threading.Thread(target=fetch) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    peak = peak_rss_mb(farm.controller.pid)
    print(f"16 concurrent 16 MiB bundles.fetch_range calls: controller peak RSS {peak:.1f} MB")
    assert digests == [expected] * 16
    assert peak < MEMORY_LIMIT_MB


def test_data_after_the_end_of_a_gzip_body_is_refused(farm):
    farm.start_controller()
    call = _gzip(xmlrpc.client.dumps((), "jobs.list").encode())
    gz = {"Content-Encoding": "gzip", "Content-Type": "text/xml"}
    assert post(farm, "view", call, gz)[0] == 200
    for body in (call + b"trailing bytes", call + call, call + b"\0"):
        status, data = post(farm, "view", body, gz)
        assert status == 400 and b"follows the end" in data, (status, data)
    assert serves(farm.client_as("view"))


def bytes_written_mb(pid: int) -> float:
    """What the process has passed to write(2) so far (files, its log; not its sockets' sends)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1]) / (1 << 20)
    raise AssertionError("no wchar in /proc/PID/io")


def held_upload(farm, decoded: int) -> socket.socket:
    """An upload that sends `decoded` bytes of its bundle, then holds on without finishing."""
    length, pieces = upload_body_chunks(bytes(decoded))
    sock = socket.create_connection(("127.0.0.1", farm.port))
    sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token(farm, "submit").encode()
                 + b"\r\n" + wire.METHOD_HEADER.encode() + b": bundles.upload\r\nContent-Length: "
                 + str(length + 1000).encode() + b"\r\n\r\n" + b"".join(pieces[:-1]))
    return sock


def spooled_mb(farm) -> float:
    return sum(path.stat().st_size for path in (farm.data_dir / "uploads").glob("upload-*")) / (1 << 20)


def test_uploads_are_bounded_in_number_and_in_disk(farm, monkeypatch):
    for name, value in (("MAX_BUNDLE_BYTES", 64 << 20), ("MAX_SPOOL_BYTES", 24 << 20), ("MAX_UPLOADS", 2),
                        ("BUSY_WAIT", 0.5)):
        monkeypatch.setenv(f"POVFARM_{name}", str(value))
    farm.start_controller()
    pid = farm.controller.pid
    first = held_upload(farm, 12 << 20)
    wait_until(lambda: spooled_mb(farm) >= 11.9, what="the first upload to be spooled")
    second = held_upload(farm, 1 << 20)
    wait_until(lambda: spooled_mb(farm) >= 12.9, what="the second upload to be spooled")

    # Both places are taken: a third upload waits half a second, then is told to come back.
    length, pieces = upload_body_chunks(small_bundle())
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    connection.request("POST", "/RPC2", b"".join(pieces), {"Authorization": f"Bearer {token(farm, 'submit')}",
                                                           wire.METHOD_HEADER: "bundles.upload"})
    response = connection.getresponse()
    assert response.status == 503 and int(response.getheader("Retry-After")) > 0
    assert b"at once" in response.read()
    connection.close()
    assert serves(farm.client)     # other calls are not held up

    # A place frees; a gzip bomb takes it, and writes no more than the disk left for uploads (11 MiB).
    second.close()
    wait_until(lambda: spooled_mb(farm) < 12.1, what="the second upload's file to go")
    xml_bomb = gzip_bomb(1, b"<?xml version='1.0'?><methodCall><methodName>bundles.upload</methodName>"
                            b"<params><param><value><base64>", fill=b"A")
    before = bytes_written_mb(pid)
    status, data = post(farm, "submit", xml_bomb, {"Content-Encoding": "gzip"}, method="bundles.upload")
    written = bytes_written_mb(pid) - before
    print(f"a gzip bundles.upload bomb with 12 MiB of 24 spooled by another: {written:.1f} MB written")
    assert status == 503 and b"room" in data
    assert written < 13

    # The held upload ends; an honest one goes in, and nothing is left behind.
    first.close()
    wait_until(lambda: not leftovers(farm.data_dir), what="the first upload's file to go")
    assert farm.client.call("bundles.upload", xmlrpc.client.Binary(small_bundle())).startswith("sha256:")
    assert "Traceback" not in farm.log("controller")


# -- a herd after a restart ------------------------------------------------------------------------

def test_a_herd_of_nodes_is_back_at_once_after_a_controller_restart(tmp_path):
    """bench/herd.py, smaller: 60 two-slot nodes (the real node code, a stand-in renderer) are working when
    the controller is killed (kill -9); it restarts on the same port and data, and every node calls it in
    the same instant. All are back within 10 s, its peak RSS stays under 150 MB, the jobs finish with every
    unit stored once and nothing acknowledged lost, and its log has no traceback. A shorter lease timeout
    keeps the run short: a lease whose reply the kill cut off waits it out before going to another node."""
    # The bench's 300 (python bench/herd.py) fit the defaults: each node holds a connection per slot and one more.
    assert connection_quotas(Config()).role_cap("node") >= 300 * (Config.slots + 1)
    env = dict(os.environ, POVFARM_LEASE_TIMEOUT="10")
    result = subprocess.run(
        [sys.executable, "bench/herd.py", "--nodes", "60", "--processes", "2", "--units-per-node", "3",
         "--unit-seconds", "1.5", "--max-seconds", "120", "--tmp", str(tmp_path), "--save", str(tmp_path)],
        cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=180)
    print(result.stdout[-3000:])
    report = json.loads((tmp_path / "herd.json").read_text())
    assert report["nodes_noticed"] == report["nodes_back"] == report["nodes_live_at_end"] == 60
    assert report["all_back_after_s"] <= 10.0
    assert max(report["peak_rss_mb_before_kill"], report["peak_rss_mb_after_restart"]) < PEAK_RSS_LIMIT_MB
    assert report["jobs_ok"] and report["units_stored"] == report["units"] == report["deliveries_acknowledged"]
    assert report["units_twice"] == [] and report["acknowledged_then_lost"] == 0 and report["frames_with_gaps"] == []
    assert report["held_across_restart"] > 0, "the kill must catch results on their way"
    assert report["controller_log"]["tracebacks"] == 0
    assert result.returncode == 0, result.stderr[-3000:]
