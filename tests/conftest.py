"""Fixtures that start the real controller and nodes as processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.client import Client
from farm.faults import FarmError

ROOT = Path(__file__).resolve().parent.parent
SCENES = Path("/usr/share/povray-3.7/scenes")
EXAMPLE = ROOT / "examples" / "scenes" / "lantern" / "lantern.pov"

needs_povray = pytest.mark.skipif(shutil.which("povray") is None or not SCENES.is_dir(),
                                  reason="needs povray and povray-examples (apt-get install povray povray-examples)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test that needs POV-Ray and was skipped is a failure: a box without POV-Ray or its
    example scenes must not pass by skipping the renders."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CI") == "true"
            and any(mark.kwargs.get("reason", "").startswith("needs povray") or mark.name == "povray"
                    for mark in item.iter_markers())):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must not happen: {report.longrepr}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def farm_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "farm", *args]


def run_cli(*args: str, timeout: float = 300, cwd: Path | None = None, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run `python -m farm ARGS` to completion, as a user would."""
    return subprocess.run(farm_argv(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or ROOT, env=env)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class LocalFarm:
    """A controller process plus node processes, all on loopback, torn down at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "controller"
        self.token_file = self.data_dir / "tokens"
        self.ca_file: str | None = None
        self.controller: subprocess.Popen | None = None
        self.nodes: list[subprocess.Popen] = []
        self.client = Client(self.url, timeout=30)

    def start_controller(self, *extra: str, program: list[str] | None = None) -> None:
        """`povfarm controller`, or `program` taking the same arguments (a controller as an older version)."""
        self.controller = subprocess.Popen(
            [*(program or farm_argv("controller")), "--port", str(self.port), "--data-dir", str(self.data_dir),
             *extra],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "controller.log", "ab"))

        def answers():
            if not self.token_file.exists():
                return None
            self.client = self.client_as("submit")
            try:
                return self.client.call("api.version")
            except FarmError:
                return None
        wait_until(answers, what="the controller to answer")

    def client_as(self, role: str) -> Client:
        from farm.auth import read_token_file
        return Client(self.url, timeout=30, token=read_token_file(self.token_file)[role], ca_file=self.ca_file)

    def start_node(self, name: str, *extra: str, threads: int = 1, slots: int = 1) -> subprocess.Popen:
        node = subprocess.Popen(
            farm_argv("node", "--controller", self.url, "--name", name, "--threads", str(threads),
                      "--slots", str(slots),
                      "--work-dir", str(self.tmp / name), *extra),
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"{name}.log", "ab"))
        self.nodes.append(node)
        return node

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_processes([process for process in [*self.nodes, self.controller] if process is not None])


def stop_processes(processes: list[subprocess.Popen], timeout: float = 15) -> None:
    """SIGTERM to every process still running, then wait for each; one that outlives `timeout` is killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def farm(tmp_path, monkeypatch):
    farm = LocalFarm(tmp_path)
    # Every CLI and node process started by the test finds the controller's role file this way.
    monkeypatch.setenv("POVFARM_TOKEN_FILE", str(farm.token_file))
    monkeypatch.delenv("POVFARM_TOKEN", raising=False)
    yield farm
    farm.stop()


def native_render(scene: Path, width: int, height: int, options: list[str], out: Path,
                  file_type: str = "N") -> Path:
    """POV-Ray rendering the scene in one process, as a user would: the reference image."""
    subprocess.run(["povray", f"+I{scene.name}", f"+W{width}", f"+H{height}", *options, "-D",
                    f"+O{out}", f"+F{file_type}"],
                   cwd=scene.parent, check=True, capture_output=True, timeout=300)
    return out


def assert_same_pixels(a: Path, b: Path) -> None:
    from PIL import Image, ImageChops

    with Image.open(a) as first, Image.open(b) as second:
        assert first.size == second.size, f"sizes differ: {first.size} vs {second.size}"
        assert first.mode == second.mode, f"modes differ: {first.mode} vs {second.mode}"
        if first.tobytes() != second.tobytes():
            diff = ImageChops.difference(first.convert("RGBA"), second.convert("RGBA"))
            raise AssertionError(f"pixels differ: bbox {diff.getbbox()}, extrema {diff.getextrema()}")
