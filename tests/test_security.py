"""Hostile networks: tokens and roles, TLS, request limits. Every test also checks the controller is
still serving afterwards."""

from __future__ import annotations

import gzip
import http.client
import http.server
import io
import socket
import subprocess
import threading
import time
import xmlrpc.client
import zipfile
from pathlib import Path

import pytest

from harness import SCENES, run_cli, wait_until
from farm.client import Client
from farm.faults import Code, FarmError

WINEGLASS = SCENES / "advanced/wineglass.pov"


def still_serving(farm) -> None:
    assert farm.client.call("api.version")["api"] == 1


def raw_post(farm, body: bytes, headers: dict[str, str], send_body: bool = True) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=10)
    connection.putrequest("POST", "/RPC2")
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    if send_body:
        connection.send(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def call_body(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


def test_tokens_and_roles(farm):
    farm.start_controller()
    assert farm.token_file.stat().st_mode & 0o777 == 0o600
    body = call_body("jobs.list")
    assert raw_post(farm, body, {"Content-Length": str(len(body))})[0] == 401
    assert raw_post(farm, body, {"Content-Length": str(len(body)), "Authorization": "Bearer wrong"})[0] == 401
    # Refused before the body is read: the server answers though no body is ever sent.
    status, _ = raw_post(farm, b"", {"Content-Length": "100000", "Authorization": "Bearer wrong"},
                         send_body=False)
    assert status == 401
    unauthenticated = run_cli("jobs", "--controller", farm.url, env={"PATH": "/usr/bin:/bin"})
    assert unauthenticated.returncode == 1 and "no access token was given" in unauthenticated.stderr

    node, view = farm.client_as("node"), farm.client_as("view")
    with pytest.raises(FarmError) as err:
        node.call("jobs.submit", {})
    assert err.value.code is Code.FORBIDDEN
    with pytest.raises(FarmError) as err:
        view.call("jobs.cancel", 1)
    assert err.value.code is Code.FORBIDDEN
    assert view.call("jobs.list") == []
    still_serving(farm)


def test_token_show_prints_each_role(farm):
    farm.start_controller()
    shown = run_cli("token", "show", "--data-dir", str(farm.data_dir))
    assert shown.returncode == 0
    assert [line.split(":")[0] for line in shown.stdout.splitlines()] == ["submit", "node", "view", "metrics"]
    node_token = run_cli("token", "show", "--role", "node", "--data-dir", str(farm.data_dir)).stdout.strip()
    assert Client(farm.url, token=node_token).call("nodes.register", "x", {})["node_id"].startswith("x-")


def make_ca_and_cert(tmp: Path) -> tuple[Path, Path, Path]:
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=povfarm test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


def test_tls_round_trip_and_clean_failures(farm, tmp_path):
    ca, cert, key = make_ca_and_cert(tmp_path)
    https = f"https://127.0.0.1:{farm.port}"
    farm.url, farm.ca_file = https, str(ca)
    farm.start_controller("--tls-cert", str(cert), "--tls-key", str(key))

    # A client that connects and says nothing does not hold up the others.
    silent = socket.create_connection(("127.0.0.1", farm.port))
    try:
        started = time.monotonic()
        ok = run_cli("jobs", "--json", "--controller", https, "--ca-file", str(ca))
        assert ok.returncode == 0, ok.stderr
        assert time.monotonic() - started < 8
    finally:
        silent.close()

    untrusted = run_cli("jobs", "--controller", https)
    assert untrusted.returncode == 1 and "TLS" in untrusted.stderr and "Traceback" not in untrusted.stderr
    plain = run_cli("jobs", "--controller", f"http://127.0.0.1:{farm.port}")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    still_serving(farm)


def test_request_limits(farm, monkeypatch):
    monkeypatch.setenv("POVFARM_MAX_BUNDLE_BYTES", "100000")      # the body limit follows the bundle limit
    farm.start_controller()
    token = read_token(farm, "submit")
    auth = {"Authorization": f"Bearer {token}"}

    status, _ = raw_post(farm, b"", {**auth, "Content-Length": str(10 * 1024 * 1024)}, send_body=False)
    assert status == 413
    assert raw_post(farm, b"", {**auth, "Content-Length": "-5"}, send_body=False)[0] == 400
    connection = http.client.HTTPConnection("127.0.0.1", farm.port, timeout=10)
    connection.putrequest("POST", "/RPC2", skip_accept_encoding=True)
    connection.putheader("Authorization", f"Bearer {token}")
    connection.endheaders()
    assert connection.getresponse().status == 411
    connection.close()

    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024))
    status, _ = raw_post(farm, bomb, {**auth, "Content-Length": str(len(bomb)), "Content-Encoding": "gzip"})
    assert status == 413

    laughs = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                         for i in range(1, 10))
              + b']><methodCall><methodName>jobs.list</methodName><params><param><value>&lol9;</value>'
                b'</param></params></methodCall>')
    status, data = raw_post(farm, laughs, {**auth, "Content-Length": str(len(laughs))})
    assert status == 200
    with pytest.raises(xmlrpc.client.Fault) as fault:
        xmlrpc.client.loads(data)
    assert fault.value.faultCode == Code.BAD_REQUEST
    with pytest.raises(FarmError) as err:
        farm.client.call("system.multicall", [])
    assert err.value.code is Code.UNKNOWN_METHOD
    still_serving(farm)


def read_token(farm, role: str) -> str:
    from farm.auth import read_token_file
    return read_token_file(farm.token_file)[role]


def test_a_slow_loris_cannot_hold_the_server(farm, monkeypatch):
    monkeypatch.setenv("POVFARM_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("POVFARM_MAX_CONNECTIONS", "8")
    farm.start_controller()
    loris = socket.create_connection(("127.0.0.1", farm.port))
    loris.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n")
    idle = [socket.create_connection(("127.0.0.1", farm.port)) for _ in range(4)]
    try:
        still_serving(farm)
        closed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                loris.sendall(b"X-Trickle: 1\r\n")
            except OSError:
                closed = True
                break
            time.sleep(0.5)
            loris.settimeout(0.01)
            try:
                if loris.recv(1) == b"":
                    closed = True
                    break
            except (socket.timeout, BlockingIOError):
                pass
            except OSError:
                closed = True
                break
        assert closed, "a trickling request must be cut off at the request deadline"
        still_serving(farm)
    finally:
        loris.close()
        for sock in idle:
            sock.close()


def test_connection_cap(farm, monkeypatch):
    monkeypatch.setenv("POVFARM_MAX_CONNECTIONS", "3")
    farm.start_controller()
    farm.client.close()
    # Sockets that never show a token wait apart from the cap (and are pushed out by newcomers).
    idle = [socket.create_connection(("127.0.0.1", farm.port)) for _ in range(10)]
    view = read_token(farm, "view")
    held = [Client(farm.url, timeout=5, token=view) for _ in range(3)]   # keep-alive: each holds a connection
    try:
        for client in held:
            assert client.call("jobs.list") == []
        with pytest.raises(FarmError) as err:
            Client(farm.url, timeout=5, token=view).call("jobs.list")
        assert err.value.code is Code.UNREACHABLE and "503" in str(err.value)
    finally:
        for client in held:
            client.close()
        for sock in idle:
            sock.close()
    wait_until(lambda: _serves(farm), timeout=10, what="service after the connections closed")


def _serves(farm) -> bool:
    try:
        return Client(farm.url, timeout=5, token=read_token(farm, "view")).call("jobs.list") == []
    except FarmError:
        return False


def test_a_gzip_bomb_in_a_response_is_stopped_at_the_client(tmp_path):
    bomb = gzip.compress(b"<" * (64 * 1024 * 1024))

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(f"http://127.0.0.1:{server.server_address[1]}", timeout=10, max_response=1024 * 1024)
        with pytest.raises(FarmError) as err:
            client.call("api.version")
        assert err.value.code is Code.UNREACHABLE and "limit" in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_unsafe_bundles_and_options_are_refused_at_submit(farm):
    farm.start_controller()
    for name in ("../escape.pov", "/etc/passwd", "C:/x.pov", "a/../../b.pov"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, "sphere { 0, 1 }")
        with pytest.raises(FarmError) as err:
            farm.client.call("bundles.upload", xmlrpc.client.Binary(buffer.getvalue()))
        assert err.value.code is Code.BAD_BUNDLE, name
    for option in ("+O/tmp/x.png", "+L/etc", "+GA/tmp/log", "Pre_Scene_Command=touch /tmp/x",
                   "Post_Frame_Command=rm -rf /", "+FN", "+WT64"):
        result = run_cli("submit", str(WINEGLASS), "--option", option, "--controller", farm.url)
        assert result.returncode == 1 and "not allowed" in result.stderr and repr(option) in result.stderr, option
    still_serving(farm)
