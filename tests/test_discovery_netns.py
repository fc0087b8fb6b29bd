"""Discovery across a real link: two network namespaces joined by a veth pair that the test creates
(and deletes, whatever happens). The controller announces itself in one; in the other a node with no
URL finds it and renders, the CLI finds it too, a node with a wrong token is refused, and a forged
announcement is ignored. Traffic stays on that link and on each namespace's loopback."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import (ROOT, SCENES, assert_same_pixels, make_cert, native_render, needs_povray, stop_processes,
                     wait_until)
from farm import auth, discovery
from farm.config import DISCOVERY_PORT

SCENE = SCENES / "advanced/drums2/drums.pov"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Lan:
    """Namespace `ctl` (the controller's box, 10.231.N.1 and a spare .3) and `box` (a render box, .2)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        tag = f"{os.getpid() % 100000}{random.randrange(100)}"
        self.ctl, self.box = f"pfctl{tag}", f"pfbox{tag}"
        self.net = f"10.231.{random.randrange(16, 240)}"
        self.veth = (f"pfa{tag}", f"pfb{tag}")
        self.processes: list[subprocess.Popen] = []

    def create(self) -> None:
        veth_ctl, veth_box = self.veth
        _ip("netns", "add", self.ctl)
        _ip("netns", "add", self.box)
        _ip("link", "add", veth_ctl, "type", "veth", "peer", "name", veth_box)
        _ip("link", "set", veth_ctl, "netns", self.ctl)
        _ip("link", "set", veth_box, "netns", self.box)
        for ns, veth, hosts in ((self.ctl, veth_ctl, (1, 3)), (self.box, veth_box, (2,))):
            for host in hosts:
                _ip("-n", ns, "addr", "add", f"{self.net}.{host}/24", "brd", "+", "dev", veth)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", veth, "up")
        # A default route onto the link only, so a controller bound to 0.0.0.0 has a LAN to announce to.
        _ip("-n", self.ctl, "route", "add", "default", "dev", veth_ctl)

    def delete(self) -> None:
        stop_processes(self.processes)
        for ns in (self.ctl, self.box):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        # Gone with its namespace, unless creating failed before the pair was moved there.
        subprocess.run(["ip", "link", "del", self.veth[0]], capture_output=True, timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("POVFARM_")}
        return {**env, "POVFARM_DISCOVERY_TIMEOUT": "60", **extra}

    def start(self, ns: str, log: str, *args: str, **env: str) -> subprocess.Popen:
        process = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "farm", *args], cwd=ROOT,
                                   env=self.env(**env), stdout=subprocess.DEVNULL,
                                   stderr=open(self.tmp / f"{log}.log", "ab"))
        self.processes.append(process)
        return process

    def run(self, ns: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "farm", *args], cwd=ROOT,
                              env=self.env(**env), capture_output=True, text=True, timeout=timeout)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def forge(self, datagram: bytes, count: int = 1) -> None:
        """Broadcast `datagram` from the controller's box, from its spare address."""
        code = ("import socket, sys, time\n"
                "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n"
                f"s.bind(('{self.net}.3', 0))\n"
                f"for _ in range({count}):\n"
                f"    s.sendto(bytes.fromhex(sys.argv[1]), ('255.255.255.255', {DISCOVERY_PORT}))\n"
                "    time.sleep(0.2)\n")
        subprocess.run(["ip", "netns", "exec", self.ctl, sys.executable, "-c", code, datagram.hex()],
                       check=True, capture_output=True, timeout=30)


@pytest.fixture
def lan(tmp_path):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 ('ip') to create network namespaces and a veth pair")
    lan = Lan(tmp_path)
    try:
        try:
            lan.create()
        except subprocess.CalledProcessError as err:
            pytest.skip(f"cannot create network namespaces and a veth pair here: {err.stderr.strip()}")
        yield lan
    finally:
        lan.delete()


def controller_tokens(tmp: Path) -> dict[str, str]:
    return auth.create_token_file(tmp / "controller" / "tokens")


def write_token(tmp: Path, name: str, token: str) -> Path:
    path = tmp / name
    path.write_text(token + "\n")
    return path


@needs_povray
def test_a_node_with_no_url_finds_the_controller_over_tls_and_renders(lan, tmp_path):
    tokens = controller_tokens(tmp_path)
    node_token = write_token(tmp_path, "node.token", tokens["node"])
    cert, key, _printed = make_cert(tmp_path)
    node = lan.start(lan.box, "node", "node", "--name", "lan-node", "--threads", "1", "--slots", "1",
                     "--work-dir", str(tmp_path / "node"), "--token-file", str(node_token))

    # First a forgery: the right form, a decoy URL, signed with a guessed token. The node says so, and waits on.
    decoy = f"https://{lan.net}.3:8642"
    forged = discovery.encode(decoy, "ab" * 32, "decoy", discovery.role_keys({"node": "guessed"}), time.time())
    wait_until(lambda: lan.forge(forged, count=3) or f"ignored an announcement from {lan.net}.3" in lan.log("node"),
               timeout=30, what="the node to ignore the forged announcement")
    assert "does not match" in lan.log("node") and node.poll() is None

    lan.start(lan.ctl, "controller", "controller", "--bind", f"{lan.net}.1", "--data-dir",
              str(tmp_path / "controller"), "--tls-cert", str(cert), "--tls-key", str(key), "--announce")
    wait_until(lambda: "registered with" in lan.log("node"), timeout=60, what="the node to find the controller")
    assert "found the controller" in lan.log("node") and f"https://{lan.net}.1:8642" in lan.log("node")
    assert decoy not in lan.log("node").split("found the controller")[1]

    # The CLI on the render box finds it the same way, with the submit token, and the image is exact.
    out = tmp_path / "drums.png"
    done = lan.run(lan.box, "submit", str(SCENE), "--width", "160", "--height", "120", "--strips", "4",
                   "--option", "+A0.3", "--wait", "--output", str(out), POVFARM_TOKEN=tokens["submit"])
    assert done.returncode == 0, done.stderr
    assert "found the controller" in done.stderr
    assert_same_pixels(out, native_render(SCENE, 160, 120, ["+A0.3"], tmp_path / "native.png"))

    # A view token finds it too: the node list, and the viewer (without a screen) writing the job's image.
    listed = lan.run(lan.box, "nodes", "--json", POVFARM_TOKEN=tokens["view"])
    assert listed.returncode == 0, listed.stderr
    assert [n["name"] for n in json.loads(listed.stdout)] == ["lan-node"]
    snapshot = tmp_path / "viewer.png"
    shown = lan.run(lan.box, "viewer", done.stdout.strip(), "--snapshot", str(snapshot), "--exit-when-done",
                    POVFARM_TOKEN=tokens["view"], SDL_VIDEODRIVER="dummy", SDL_AUDIODRIVER="dummy")
    assert shown.returncode == 0, shown.stderr
    assert "found the controller" in shown.stderr
    assert_same_pixels(snapshot, out)


def test_a_node_with_a_wrong_token_does_not_join(lan, tmp_path):
    tokens = controller_tokens(tmp_path)
    lan.start(lan.ctl, "controller", "controller", "--bind", "0.0.0.0", "--data-dir", str(tmp_path / "controller"),
              "--announce")
    wrong = write_token(tmp_path, "wrong.token", "not-this-farms-token-" + "x" * 30)

    # With no URL it cannot check the announcements it hears, and says why.
    lost = lan.run(lan.box, "node", "--name", "stranger", "--work-dir", str(tmp_path / "stranger"),
                   "--token-file", str(wrong), POVFARM_DISCOVERY_TIMEOUT="6")
    assert lost.returncode == 1 and "Traceback" not in lost.stderr
    assert f"ignored an announcement from {lan.net}.1" in lost.stderr
    assert "the node token is wrong" in lost.stderr and "povfarm token show --role node" in lost.stderr

    # Told the URL (announced as the address the controller sends from), the controller refuses it.
    refused = lan.run(lan.box, "node", "--controller", f"http://{lan.net}.1:8642", "--name", "stranger",
                      "--work-dir", str(tmp_path / "stranger"), "--token-file", str(wrong))
    assert refused.returncode == 1 and "refused the access token" in refused.stderr, refused.stderr

    listed = lan.run(lan.box, "nodes", "--json", POVFARM_TOKEN=tokens["view"])
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    assert f"http://{lan.net}.1:8642" in listed.stderr      # found, by the address it announced
