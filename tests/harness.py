"""What the tests share, in one place: where things are, running the CLI, waiting for a condition, the
real controller and nodes as processes on loopback (`LocalFarm`), the controller's rules stepped with a
fake clock (`Stepped`), submitting a scene, and comparing an image with POV-Ray's own rendering.

The fixtures built on these (`farm`, `stepped`, `scene`, `server`) are in conftest.py; a test file imports
helpers from here and never from another test file.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from farm import api
from farm.auth import read_token_file
from farm.bundle.packing import pack, plan_bundle
from farm.bundle.rules import bundle_hash
from farm.client import Client
from farm.config import Config
from farm.faults import FarmError
from farm.service import Services
from farm.states import ENDED
from farm.store import Store
from farm.images.raster import row_size
from farm.rows import compress_rows

ROOT = Path(__file__).resolve().parent.parent
SCENES = Path("/usr/share/povray-3.7/scenes")
EXAMPLE = ROOT / "examples" / "scenes" / "lantern" / "lantern.pov"
SMALL_SCENE = 'camera { location <0,0,-3> look_at 0 } sphere { 0, 1 pigment { rgb 1 } }\n'

needs_povray = pytest.mark.skipif(shutil.which("povray") is None or not SCENES.is_dir(),
                                  reason="needs povray and povray-examples (apt-get install povray povray-examples)")

T = TypeVar("T")


# -- processes and waiting -------------------------------------------------------------------------

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


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.1,
               what: str = "condition") -> T:
    """The predicate's first true value, asked every `interval` seconds; an AssertionError naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop_processes(processes: list[subprocess.Popen], timeout: float = 15) -> None:
    """SIGTERM to every process still running, a second one a second later to those still going (a node
    lets its current unit finish on the first: a test's teardown has no use for it), then wait for each;
    one that outlives `timeout` is killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(process.poll() is None for process in processes):
        time.sleep(0.05)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


# -- the controller's rules without the network ----------------------------------------------------

class Clock:
    """A clock that moves only when a test sets `now`."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Stepped:
    """The controller's API and rules over a store, without the network, stepped with a fake clock."""

    def __init__(self, config: Config, store: Store, clock: Clock):
        self.services = Services(config, store, clock)
        self.store = store
        self.clock_ = clock
        self._methods = {name: method for name, (method, _) in api.build(self.services).items()}

    def call(self, name: str, *args):
        return self._methods[name](*args)

    def settle(self) -> None:
        """Let the maintenance thread's stitcher write the frames that are ready."""
        self.services.stitcher.drain()

    def tick(self) -> None:
        self.services.tick()


def stepped_farm(data_dir: Path, **settings) -> tuple[Stepped, Store]:
    """A Stepped controller on a new store in `data_dir` (leases of 30 s, three attempts, unless
    `settings` say otherwise), and the store, for the caller to close."""
    config = Config(data_dir=data_dir, **{"lease_timeout": 30, "max_attempts": 3, **settings})
    store = Store(config.data_dir / "db.sqlite3")
    return Stepped(config, store, Clock()), store


def as_before(data_dir: Path, *statements: str) -> None:
    """Make a closed store in `data_dir` look as an older controller left it: run `statements` (each dropping
    what a later version added) on its database. The migration tests reopen it and check nothing was lost."""
    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        for statement in statements:
            db.execute(statement)
    db.close()


def register_node(stepped: Stepped, name: str = "n1") -> str:
    return stepped.call("nodes.register", name, {"povray": "3.7", "interleave": True})["node_id"]


def rows_for(task: dict, value: int = 7) -> xmlrpc.client.Binary:
    """A task's rows, every byte `value`, compressed as a node sends them."""
    size = (task["row_end"] - task["row_start"]) * row_size(task["width"], task["channels"], task["bits"])
    return xmlrpc.client.Binary(compress_rows(bytes([value]) * size))


# -- jobs ------------------------------------------------------------------------------------------

def write_scene(folder: Path, text: str = SMALL_SCENE) -> Path:
    """A small scene, `folder/s.pov`."""
    path = folder / "s.pov"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def submit(controller: Any, scene_file: Path, /, **spec) -> int:
    """Upload the scene's bundle and submit a job of it through `controller` (anything with `call`: a
    Client, a Stepped); `spec` overrides the job's fields (by default 8x64 pixels in 2 strips, no preview;
    even `scene` and `bundle`)."""
    data = pack(plan_bundle(scene_file))
    assert controller.call("bundles.upload", xmlrpc.client.Binary(data)) == bundle_hash(data)
    return controller.call("jobs.submit", {"bundle": bundle_hash(data), "scene": scene_file.name, "width": 8,
                                           "height": 64, "strips": 2, "preview": False, **spec})


def wait_ended(client: Client, job: int, timeout: float = 180, through_restarts: bool = False) -> dict:
    """The job's status once it has ended. `through_restarts`: a refused or failed call means the
    controller is restarting, and the wait goes on."""
    def ended():
        try:
            info = client.call("jobs.status", job)
        except FarmError:
            if through_restarts:
                return None
            raise
        return info if info["state"] in ENDED else None
    return wait_until(ended, timeout=timeout, interval=0.2, what=f"job {job} to end")


# -- TLS ---------------------------------------------------------------------------------------------

def make_cert(tmp: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for a name nobody resolves, and its SHA-256 as openssl prints it."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
                    "cert.pem", "-days", "2", "-subj", "/CN=farm.invalid"], cwd=tmp, check=True, capture_output=True)
    printed = subprocess.run(["openssl", "x509", "-in", "cert.pem", "-noout", "-fingerprint", "-sha256"], cwd=tmp,
                             check=True, capture_output=True, text=True).stdout
    return tmp / "cert.pem", tmp / "key.pem", printed.strip().partition("=")[2]


# -- images ----------------------------------------------------------------------------------------

_NATIVE_RENDERS: dict[tuple, Path] = {}   # reference images of the system's example scenes, this session


def native_render(scene: Path, width: int, height: int, options: list[str], out: Path,
                  file_type: str = "N", once: bool = False) -> Path:
    """POV-Ray rendering the scene in one process, as a user would: the reference image. With `once`, an
    example scene of the system's (read-only) is rendered once per session for each size and set of options:
    several tests compare against the same reference of a scene that renders the same every time, and each
    render is seconds of the suite (a radiosity scene's renders differ: the tests measuring that never
    pass `once`)."""
    key = (str(scene), width, height, tuple(options), file_type)
    reusable = once and scene.is_relative_to(SCENES)
    if reusable and key in _NATIVE_RENDERS:
        shutil.copyfile(_NATIVE_RENDERS[key], out)
        return out
    subprocess.run(["povray", f"+I{scene.name}", f"+W{width}", f"+H{height}", *options, "-D",
                    f"+O{out}", f"+F{file_type}"],
                   cwd=scene.parent, check=True, capture_output=True, timeout=300)
    if reusable:
        kept = Path(tempfile.mkdtemp(prefix="povfarm-native-")) / out.name
        atexit.register(shutil.rmtree, kept.parent, True)
        shutil.copyfile(out, kept)
        _NATIVE_RENDERS[key] = kept
    return out


def assert_same_pixels(a: Path, b: Path) -> None:
    from PIL import Image, ImageChops

    with Image.open(a) as first, Image.open(b) as second:
        assert first.size == second.size, f"sizes differ: {first.size} vs {second.size}"
        assert first.mode == second.mode, f"modes differ: {first.mode} vs {second.mode}"
        if first.tobytes() != second.tobytes():
            diff = ImageChops.difference(first.convert("RGBA"), second.convert("RGBA"))
            raise AssertionError(f"pixels differ: bbox {diff.getbbox()}, extrema {diff.getextrema()}")
