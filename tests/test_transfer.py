"""Bytes between node and controller: compressed deliveries, their caps, and bundle downloads that resume."""

from __future__ import annotations

import base64
import http.client
import os
import sys
import xmlrpc.client
import zlib
from pathlib import Path

import pytest

from farm import client as client_module
from farm import strips
from farm.auth import read_token_file
from farm.images.png import decode_png
from farm.rows import FILTERED, FILTERED_BZ2, encode_rows
from farm.wire import read_xmlrpc
from harness import native_render, needs_povray, run_cli, wait_until

SCENE = """camera { location <0, 1, -4> look_at 0 }
light_source { <3, 5, -4>, rgb 1 }
plane { y, -1 pigment { granite scale 0.3 } }
sphere { 0, 1 pigment { bozo color_map { [0 rgb <1, 0.3, 0.2>] [1 rgb <0.2, 0.4, 1>] } scale 0.2 } }
"""


@needs_povray
@pytest.mark.parametrize("encoding", [FILTERED, FILTERED_BZ2])
def test_a_gzip_compressed_filtered_delivery_is_accepted_and_bit_identical(farm, tmp_path, monkeypatch, encoding):
    """A node's large requests go gzip-compressed; the rows inside are PNG-filtered, deflated or packed by bz2
    (a slow uplink's). The controller takes both apart and stitches exactly the image POV-Ray renders in one
    process; it keeps and relays bz2's rows as deflated scanlines, which every viewer decodes."""
    monkeypatch.setattr(client_module, "GZIP_THRESHOLD", 1024)
    scene = tmp_path / "scene" / "g.pov"
    scene.parent.mkdir()
    scene.write_text(SCENE)
    reference = decode_png(native_render(scene, 96, 96, ["+A0.3"], tmp_path / "ref.png").read_bytes())
    farm.start_controller()
    submitted = run_cli("submit", str(scene), "+W96", "+H96", "+A0.3", "--strips", "3", "--no-preview",
                        "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout)
    node = farm.client_as("node")
    node_id = node.call("nodes.register", "gz", {"povray": "3.7", "slots": 1})["node_id"]
    sizes = []
    while task := node.call("nodes.poll", node_id, 0):
        raw = strips.crop_rows(reference, task["row_start"], task["row_end"])
        rows = encode_rows(raw, encoding, reference.row_bytes, 3)
        sizes.append(len(rows))
        node.call("nodes.complete", node_id, task["lease"], xmlrpc.client.Binary(rows), 0.1, encoding)
    assert len(sizes) == 3 and min(sizes) > 1024           # every delivery was over the threshold...
    assert node.uploads.bytes_per_second() > 0               # ...so it went compressed, and was timed
    wait_until(lambda: farm.client.call("jobs.status", job)["state"] == "done", what="the job")
    assert decode_png(farm.client.call("jobs.fetch", job).data).pixels == reference.pixels
    pieces = farm.client_as("view").call("viewer.watch", job, 0, 0)["strips"]
    assert {piece["encoding"] for piece in pieces} == {FILTERED}


def test_a_compressed_delivery_that_inflates_past_the_cap_is_refused(farm, monkeypatch):
    """The node role's large-call limit holds for what a gzip body inflates to, not only its length."""
    monkeypatch.setenv("POVFARM_MAX_BUNDLE_BYTES", str(1 << 20))   # limit: 1 MiB * 4/3 + 1 MiB
    farm.start_controller()
    token = read_token_file(farm.token_file)["node"]
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = (b"<?xml version='1.0'?><methodCall><methodName>nodes.complete</methodName><params>"
            b"<param><value><string>n</string></value></param><param><value><string>l</string></value></param>"
            b"<param><value><base64>")
    bomb = packer.compress(head) + b"".join(packer.compress(b"A" * (1 << 20)) for _ in range(16)) + packer.flush()
    assert len(bomb) < 100_000
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=30)
    connection.putrequest("POST", "/RPC2", skip_accept_encoding=True)
    for key, value in {"Authorization": f"Bearer {token}", "X-Povfarm-Method": "nodes.complete",
                       "Content-Encoding": "gzip", "Content-Type": "text/xml",
                       "Content-Length": str(len(bomb))}.items():
        connection.putheader(key, value)
    connection.endheaders()
    try:
        connection.send(bomb)
    except (BrokenPipeError, ConnectionResetError):
        pass    # refused before the whole body was read
    assert connection.getresponse().status == 413
    connection.close()
    assert farm.client.call("api.version")["api"] == 1     # and the controller carries on


def test_huffman_only_gzip_is_ordinary_gzip_and_wins_back_base64s_third():
    large = b"<methodCall><base64>" + base64.b64encode(os.urandom(30_000))
    packed = client_module.gzip_huffman(large)
    assert len(packed) < 0.78 * len(large) and zlib.decompress(packed, 16 + zlib.MAX_WBITS) == large


def test_an_interrupted_bundle_download_resumes_where_it_stopped(farm, tmp_path, monkeypatch):
    """A node whose link drops mid-download (or that is restarted) fetches only the rest of the bundle,
    by ranges, and unpacks exactly what was uploaded."""
    from farm.bundle.packing import pack, plan_bundle
    from farm.config import Config
    from farm.faults import Code, FarmError
    from farm.node import Node

    monkeypatch.setattr("farm.bundle.cache.DOWNLOAD_CHUNK", 64 * 1024)
    scene = tmp_path / "big" / "b.pov"
    scene.parent.mkdir()
    scene.write_text('sphere { 0, 1 pigment { image_map { png "noise.png" } } }\n')
    (scene.parent / "noise.png").write_bytes(os.urandom(600 * 1024))     # an asset that does not compress
    data = pack(plan_bundle(scene))
    farm.start_controller()
    digest = farm.client.call("bundles.upload", xmlrpc.client.Binary(data))

    class Flaky:
        """The node's client, with a link that drops after `budget` ranges."""

        def __init__(self, real, budget: int):
            self.real, self.budget, self.offsets = real, budget, []
            self.url, self.uploads = real.url, real.uploads

        def call(self, method, *args):
            if method == "bundles.fetch_range":
                self.offsets.append(args[1])
                if len(self.offsets) > self.budget:
                    raise FarmError(Code.UNREACHABLE, "the link dropped")
            return self.real.call(method, *args)

    def node_with(client) -> Node:
        config = Config(povray=str(tmp_path / "no-povray"), sandbox="none", work_dir=tmp_path / "work",
                        probe_cache=tmp_path / "probe.json", poll_min=0.01, poll_max=0.02)
        return Node(config, client)

    cut = Flaky(farm.client_as("node"), budget=4)
    monkeypatch.setattr("farm.rendering.downloads.RETRY_CEILING", 0.02)
    with pytest.raises(FarmError) as err:                 # the link stays down: every try fails at once
        node_with(cut).downloads.fetch(digest)
    assert err.value.code is Code.UNREACHABLE
    assert cut.offsets[:4] == [0, 65536, 131072, 196608] and set(cut.offsets[4:]) == {262144}

    restarted = Flaky(farm.client_as("node"), budget=1000)
    node = node_with(restarted)
    unpacked = node.renderer.bundles.ensure(digest, lambda: node.downloads.fetch(digest))
    assert restarted.offsets[0] == 262144                 # not a byte fetched twice
    assert (unpacked / "noise.png").read_bytes() == (scene.parent / "noise.png").read_bytes()
    assert not node.renderer.bundles.download_path(digest).exists()


def test_povfarm_nodes_shows_upload_rates_in_bits_per_second():
    from farm.cli.jobs import _upload_rate

    assert [_upload_rate(rate) for rate in (0.0, 90.0, 125_000.0, 1_500_000.0, 2.5e9)] == \
        ["-", "720 bit/s", "1 Mbit/s", "12 Mbit/s", "20 Gbit/s"]


def test_a_request_body_is_compact_xml_rpc_the_controller_reads_back():
    """Base64 in one line (a line break every 76 characters costs 1.8% after Huffman coding), no line
    breaks between tags; text with < > and line breaks of its own comes through unchanged."""
    data = os.urandom(10_000)
    params = ("node-1", {"a.1.ff": 0.5, "x>\n<y": 1.0}, xmlrpc.client.Binary(data), "line\n>\n<break", 2.5)
    body = client_module.request_body("nodes.complete", params)
    encoded = base64.b64encode(data)
    assert encoded in body and b"><" in body
    assert body.count(b"\n") == 4       # the three inside the text values, and the last
    read, method = read_xmlrpc([body])
    assert method == "nodes.complete" and read[:2] == params[:2] and read[2].data == data
    assert read[3:] == params[3:]
    assert len(body) < len(xmlrpc.client.dumps(params, "nodes.complete").encode())


def test_a_small_request_leaves_in_one_write(farm):
    """Headers and body in one write: one packet, not a body that waits for the headers' acknowledgement."""
    farm.start_controller()
    client = farm.client_as("view")
    writes = _recorded(client)
    assert client.call("api.version")["api"] == 1
    assert len(writes) == 1 and writes[0].startswith(b"POST ") and writes[0].endswith(b"</methodCall>\n")
    assert b"User-Agent: povfarm/" in writes[0]


def test_small_bodies_go_gzipped_and_a_nodes_frequent_calls_ask_for_no_gzip_back(farm):
    """A heartbeat's 460 bytes of XML go as about 220; nodes.poll, heartbeat and complete never get a reply
    worth compressing, so they do not offer to take one."""
    farm.start_controller()
    client = farm.client_as("node")
    writes = _recorded(client)
    node_id = client.call("nodes.register", "gz", {"povray": "3.7", "slots": 1, "host": "box " * 100})["node_id"]
    assert client.call("nodes.heartbeat", node_id, {"1.1.aabbccddeeff": 0.5, "2.1.aabbccddeeff": 0.25}) == {
        "stop": ["1.1.aabbccddeeff", "2.1.aabbccddeeff"], "live": []}
    register, heartbeat = writes
    assert b"Content-Encoding: gzip" in register and b"Accept-Encoding: gzip" in register
    assert b"Content-Encoding: gzip" in heartbeat and b"Accept-Encoding" not in heartbeat
    assert len(heartbeat.partition(b"\r\n\r\n")[2]) < 0.7 * len(client_module.request_body(
        "nodes.heartbeat", (node_id, {"1.1.aabbccddeeff": 0.5, "2.1.aabbccddeeff": 0.25})))


def _recorded(client) -> list[bytes]:
    """What the client's connection (for this thread) writes from now on."""
    writes: list[bytes] = []
    connection = client._transport().make_connection(client._host)
    connection.connect()
    connection.sock = _Recording(connection.sock, writes)
    return writes

class _Recording:
    """A socket that notes what is written to it."""

    def __init__(self, sock, writes: list):
        self._sock, self._writes = sock, writes

    def sendall(self, data):
        self._writes.append(bytes(data))
        return self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


@needs_povray
def test_a_node_sends_plain_zlib_rows_to_a_controller_that_refuses_their_encoding(farm, tmp_path):
    """A controller from before filtered rows refuses the `encoding` argument (fault 10, argument count) and
    lists no features: the node, told so once when it registers, sends every strip as plain zlib and
    heartbeats without stats, so nothing is refused; the image is POV-Ray's own."""
    scene = tmp_path / "scene" / "old.pov"
    scene.parent.mkdir()
    scene.write_text(SCENE)
    reference = decode_png(native_render(scene, 96, 96, ["+A0.3"], tmp_path / "ref.png").read_bytes())
    farm.start_controller(program=[sys.executable, str(Path(__file__).with_name("older_controller.py"))])
    submitted = run_cli("submit", str(scene), "+W96", "+H96", "+A0.3", "--strips", "3", "--no-preview",
                        "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    job = int(submitted.stdout)
    farm.start_node("old", slots=1)
    wait_until(lambda: farm.client.call("jobs.status", job)["state"] == "done", timeout=120, what="the job")
    assert decode_png(farm.client.call("jobs.fetch", job).data).pixels == reference.pixels
    log = farm.log("old")
    (said,) = [line for line in log.splitlines() if "does not list" in line]
    assert "filtered_rows" in said and "heartbeat_stats" in said and "refused:" not in log
