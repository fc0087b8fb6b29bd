"""A node on a slow uplink, against the same node unshaped, side by side in one run.

It makes its own network namespace and veth pair, runs the controller in the root namespace (bound to
the veth's address) and one node inside the namespace, and times each case with the node's upstream
unshaped and shaped to 1 Mbit/s (`tc qdisc ... tbf`), alternating the order each round. The same node
renders every run (so `--strips auto` cuts every run alike; it downloads each scene's bundle once, in
its first run), and before each one a small warm-up job on the link as it then is: a node measures its
link, and on a slow one sends fewer heartbeats; without the warm-up the node would start each shaped run
believing it was on the fast link of the run before. It reports the medians, their
ratio, and the bytes the node sent per frame (counted on its veth: IP, TCP, HTTP and XML-RPC included)
against the size of a PNG of the frame (PNG's adaptive row filters, deflate level 9), and where those
bytes went (bench/wire.py counts the node's packets by RPC method: requests, TCP acknowledgements,
connections). The namespace and everything in it are removed at the end, also on failure or Ctrl-C.

    python bench/wan.py                     # chess2 640x480 +A0.3 (auto and 8 strips), a 30-frame animation
    python bench/wan.py --only still --repeat 2
    python bench/wan.py --only still --watched   # a viewer follows the jobs: the node sends live blocks too

With `--watched` a client in the root namespace follows the newest job with `viewer.watch` and live blocks
(as `povfarm viewer` does) through every run, so the node sends live blocks beside its rows; it reports
the live blocks the client received, and the wire breakdown shows what `nodes.live` cost the uplink.

Needs root, `ip` and `tc` (iproute2) and POV-Ray; it says why and exits 0 when it cannot run here.
Traffic goes only between the root namespace and the namespace it creates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.auth import read_token_file  # noqa: E402
from farm.client import Client  # noqa: E402
from farm.faults import FarmError  # noqa: E402
from farm.images.png import PNG_SIGNATURE, decode_png  # noqa: E402
from farm.images.raster import Raster  # noqa: E402
from farm.images.scanlines import filter_rows  # noqa: E402

SCENES = Path("/usr/share/povray-3.7/scenes")
RATE = "1mbit"
# tbf: a 4 KB bucket, and at most 200 ms of queue in front of the link, as a modem might hold.
SHAPE = ["tbf", "rate", RATE, "burst", "32kbit", "latency", "200ms"]

# name: (scene, ini or None, width, height, switches, frames)
CASES = {
    "still": ("advanced/chess2.pov", None, 640, 480, ["+A0.3"], 1),
    # The same with smaller units, as a scheduler that keeps the last units small would cut it.
    "still-8": ("advanced/chess2.pov", None, 640, 480, ["+A0.3", "--strips", "8"], 1),
    "animation": ("animations/camera2/camera2.pov", "animations/camera2/camera2.ini", 160, 120, ["+KFF30"], 30),
}

# One strip of some 35 KB: the node's upload rate is measured on requests over 16 KiB.
WARM_UP = ("advanced/chess2.pov", None, 200, 150, ["--strips", "1"], 1)


class Network:
    """A namespace with one end of a veth pair; the other end in the root namespace."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}"
        self.ns = f"povfarm-wan-{tag}"
        self.outer, self.inner = f"pfw{tag}o", f"pfw{tag}i"
        third = 100 + os.getpid() % 100
        self.outer_ip, self.inner_ip = f"10.213.{third}.1", f"10.213.{third}.2"
        self.made = False

    def __enter__(self) -> "Network":
        self.made = True
        run(["ip", "netns", "add", self.ns])
        run(["ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner])
        run(["ip", "link", "set", self.inner, "netns", self.ns])
        run(["ip", "addr", "add", f"{self.outer_ip}/30", "dev", self.outer])
        run(["ip", "link", "set", self.outer, "up"])
        self.exec(["ip", "addr", "add", f"{self.inner_ip}/30", "dev", self.inner])
        self.exec(["ip", "link", "set", self.inner, "up"])
        self.exec(["ip", "link", "set", "lo", "up"])
        return self

    def __exit__(self, *exc) -> None:
        if self.made:
            subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def exec(self, argv: list[str]) -> None:
        run(["ip", "netns", "exec", self.ns, *argv])

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def shape(self, on: bool) -> None:
        """The node's upstream: the namespace's end of the pair sends towards the controller."""
        subprocess.run([*self.prefix(), "tc", "qdisc", "del", "dev", self.inner, "root"], capture_output=True)
        if on:
            self.exec(["tc", "qdisc", "add", "dev", self.inner, "root", *SHAPE])

    def capture(self, out: Path) -> subprocess.Popen:
        """bench/wire.py counting the packets the node sends, by RPC method, into `out`."""
        return subprocess.Popen([*self.prefix(), sys.executable, str(ROOT / "bench" / "wire.py"), self.inner,
                                 str(out)], stdout=subprocess.DEVNULL, start_new_session=True)

    def sent_bytes(self) -> int:
        """Bytes the namespace's end has sent: the node's upstream, every header included."""
        out = subprocess.run([*self.prefix(), "cat", f"/sys/class/net/{self.inner}/statistics/tx_bytes"],
                             capture_output=True, text=True, check=True).stdout
        return int(out)


def run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def cannot_run() -> str:
    """Why this benchmark cannot run here, or ""."""
    if os.geteuid() != 0:
        return "it needs root to make a network namespace"
    for tool in ("ip", "tc", "povray"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not (SCENES / CASES["still"][0]).is_file():
        return f"the example scenes are missing ({SCENES}; apt-get install povray-examples)"
    probe = f"povfarm-wan-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def farm(*args: str) -> list[str]:
    return [sys.executable, "-m", "farm", *args]


class Farm:
    def __init__(self, net: Network, work: Path):
        self.net, self.work = net, work
        self.wire = work / "wire.json"
        self.counter = net.capture(self.wire)
        wait_for(self.wire.exists, "the packet counter")
        self.port = free_port(net.outer_ip)
        self.url = f"http://{net.outer_ip}:{self.port}"
        self.data = work / "controller"
        self.tokens = self.data / "tokens"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "POVFARM_TOKEN_FILE": str(self.tokens)}
        self.env.pop("POVFARM_TOKEN", None)
        self.controller = subprocess.Popen(
            farm("controller", "--bind", net.outer_ip, "--port", str(self.port), "--data-dir", str(self.data)),
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(work / "controller.log", "ab"),
            start_new_session=True)
        wait_for(lambda: self.tokens.exists() and self._answers(), "the controller")

    def _answers(self) -> bool:
        return subprocess.run(farm("jobs", "--controller", self.url), env=self.env,
                              capture_output=True).returncode == 0

    def node(self, name: str) -> subprocess.Popen:
        """The node, in its namespace, standing for a box of its own across the internet (its machine
        named apart from the controller's, which it shares here)."""
        work = self.work / name
        return subprocess.Popen(
            [*self.net.prefix(), *farm("node", "--controller", self.url, "--name", name, "--work-dir", str(work),
                                       "--token-file", str(self.tokens))],
            env={**self.env, "POVFARM_MACHINE": f"wan-{name}"}, stdout=subprocess.DEVNULL,
            stderr=open(self.work / f"{name}.log", "ab"), start_new_session=True)

    def registered(self, name: str) -> bool:
        listed = subprocess.run(farm("nodes", "--json", "--controller", self.url), env=self.env,
                                capture_output=True, text=True)
        return listed.returncode == 0 and any(n["name"] == name and n["state"] == "idle"
                                              for n in json.loads(listed.stdout))

    def packets(self) -> dict:
        """What the node has sent so far, by category (bench/wire.py)."""
        self.wire.unlink(missing_ok=True)
        self.counter.send_signal(signal.SIGUSR1)
        wait_for(self.wire.exists, "the packet counts", timeout=10)
        return json.loads(self.wire.read_text())

    def stop(self) -> None:
        stop(self.controller)
        stop(self.counter)


class Viewer(threading.Thread):
    """A client following the newest job with viewer.watch and live blocks, as `povfarm viewer` does,
    until `done` is set; counts the live blocks and the bytes of their pixels it received."""

    def __init__(self, the_farm: Farm):
        super().__init__(daemon=True)
        self.client = Client(the_farm.url, timeout=60, token=read_token_file(the_farm.tokens)["view"])
        self.done = threading.Event()
        self.blocks = self.bytes = 0

    def run(self) -> None:
        cursor, live_cursor = 2**31 - 1, 0
        while not self.done.is_set():
            try:
                reply = self.client.call("viewer.watch", 0, cursor, 2, live_cursor)
            except FarmError:
                self.done.wait(0.5)
                continue
            cursor, live_cursor = reply.get("cursor", cursor), reply.get("live_cursor", live_cursor)
            self.blocks += len(reply.get("live", []))
            self.bytes += sum(len(block["rows"].data) for block in reply.get("live", []))


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (a node finishes its strip), again (it gives up at once), then SIGKILL to its whole group."""
    for signum, grace in ((signal.SIGTERM, 5), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            continue


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def submit_command(the_farm: Farm, case, out: Path) -> list[str]:
    scene, ini, width, height, switches, _ = case
    argv = farm("submit", str(SCENES / scene), f"+W{width}", f"+H{height}", *switches, "--no-preview",
                "--controller", the_farm.url, "--output", str(out))
    return argv + (["--ini", str(SCENES / ini)] if ini else [])


def one_run(the_farm: Farm, name: str, case, shaped: bool, index: int) -> dict:
    """The node renders the case once: wall seconds from submit to image, bytes it sent, PNG sizes."""
    the_farm.net.shape(shaped)
    out = the_farm.work / f"out-{name}-{index}-{'shaped' if shaped else 'open'}"
    target = out if case[5] > 1 else out / "frame.png"
    out.mkdir()
    warm_up(the_farm, out / "warm-up.png")
    sent = the_farm.net.sent_bytes()
    packets = the_farm.packets()
    units = rendered_units(the_farm.work / "wan.log")
    delivered = delivered_bytes(the_farm.work / "wan.log")
    started = time.perf_counter()
    done = subprocess.run(submit_command(the_farm, case, target), env=the_farm.env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    finished = time.time()
    sent = the_farm.net.sent_bytes() - sent
    packets = difference(the_farm.packets(), packets)
    units = rendered_units(the_farm.work / "wan.log") - units
    if done.returncode != 0:
        raise RuntimeError(f"submit failed: {done.stderr[-2000:]}")
    delivered = delivered_bytes(the_farm.work / "wan.log") - delivered
    frames = sorted(out.glob("*.png"))
    if len(frames) != case[5]:
        raise RuntimeError(f"{len(frames)} frames written, expected {case[5]}")
    png = statistics.mean(adaptive_png_size(decode_png(path.read_bytes())) for path in frames)
    return {"seconds": seconds, "sent_per_frame": sent / case[5], "rows_per_frame": delivered / case[5],
            "png_per_frame": png, "tail": finished - last_render_end(the_farm.work / "wan.log"),
            "units": units, "packets": packets}


def difference(after: dict, before: dict) -> dict:
    empty = {"packets": 0, "bytes": 0, "calls": 0}
    return {name: {key: value - before.get(name, empty)[key] for key, value in counts.items()}
            for name, counts in after.items() if counts != before.get(name)}


def rendered_units(node_log: Path) -> int:
    text = node_log.read_text(errors="replace") if node_log.exists() else ""
    return len(re.findall(r"INFO farm\.node: job \d+ strip \d+ rendered: done", text))


def warm_up(the_farm: Farm, out: Path) -> None:
    """A small job on the link as it is now, before the one measured: a node on a link has measured it
    (its heartbeats go by what it measured), whereas this node was on the other link a moment ago."""
    done = subprocess.run(submit_command(the_farm, WARM_UP, out), env=the_farm.env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the warm-up failed: {done.stderr[-2000:]}")
    out.unlink()


def last_render_end(node_log: Path) -> float:
    """When the node's last POV-Ray run ended (Unix time, from its log). What the job waits for after it
    is the tail: the last results going up, stitching, and the client fetching the image; only the first
    differs between shaped and unshaped runs, and unlike the wall time it hardly depends on CPU load."""
    pattern = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO farm\.node: job \d+ strip \d+ rendered",
                         re.MULTILINE)
    stamps = [time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000
              for match in pattern.finditer(node_log.read_text(errors="replace"))]
    return max(stamps)


def delivered_bytes(node_log: Path) -> int:
    """Request bodies of the node's deliveries so far, as they went on the wire (its log says each)."""
    pattern = re.compile(r"sent nodes\.complete(?:_and_poll)?: (\d+) bytes")
    text = node_log.read_text(errors="replace") if node_log.exists() else ""
    return sum(int(match[1]) for match in pattern.finditer(text))


def adaptive_png_size(raster: Raster) -> int:
    """The bytes of a PNG of the image with PNG's adaptive row filters (all five) and deflate level 9: a
    good PNG."""
    scanlines = filter_rows(raster.pixels, raster.row_bytes, raster.channels * raster.bits // 8,
                            all_filters=True)
    idat = zlib.compress(scanlines, 9)
    return len(PNG_SIGNATURE) + (12 + 13) + (12 + len(idat)) + 12   # signature, IHDR, IDAT, IEND


def run_case(the_farm: Farm, name: str, case, repeat: int) -> dict:
    runs: dict[str, list[dict]] = {"open": [], "shaped": []}
    for round_ in range(repeat):
        order = [False, True] if round_ % 2 == 0 else [True, False]
        for shaped in order:
            result = one_run(the_farm, name, case, shaped, round_)
            runs["shaped" if shaped else "open"].append(result)
            print(f"  {name} round {round_ + 1} {'shaped' if shaped else 'open  '}: {result['seconds']:.2f} s "
                  f"(tail {result['tail']:.2f} s), "
                  f"sent {result['sent_per_frame'] / 1024:.1f} KiB/frame (rows {result['rows_per_frame'] / 1024:.1f}"
                  f"), PNG {result['png_per_frame'] / 1024:.1f} KiB/frame, live blocks "
                  f"{result['packets'].get('nodes.live', {}).get('bytes', 0) / 1024:.1f} KiB", flush=True)
    median = {kind: {key: statistics.median(r[key] for r in values) for key in values[0] if key != "packets"}
              for kind, values in runs.items()}
    return {"case": name, "runs": runs, "median": median,
            "time_ratio": median["shaped"]["seconds"] / median["open"]["seconds"],
            "wire_ratio": median["shaped"]["sent_per_frame"] / median["shaped"]["png_per_frame"],
            "rows_ratio": median["shaped"]["rows_per_frame"] / median["shaped"]["png_per_frame"]}


def markdown(results: list[dict], repeat: int) -> str:
    lines = [f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, one node (2 slots) "
             f"in a network namespace, upstream {RATE} ({' '.join(SHAPE)}) against unshaped; medians of {repeat} "
             f"runs each, alternating.", "",
             "| case | unshaped s | shaped s | time ratio | tail unshaped / shaped s | PNG / frame | "
             "deliveries / frame | ratio | all sent / frame | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o, s = r["median"]["open"], r["median"]["shaped"]
        lines.append(f"| {r['case']} | {o['seconds']:.2f} | {s['seconds']:.2f} | {r['time_ratio']:.3f} | "
                     f"{o['tail']:.2f} / {s['tail']:.2f} | "
                     f"{s['png_per_frame'] / 1024:.1f} KiB | {s['rows_per_frame'] / 1024:.1f} KiB | "
                     f"{r['rows_ratio']:.3f} | {s['sent_per_frame'] / 1024:.1f} KiB | {r['wire_ratio']:.3f} |")
    for r in results:
        lines += ["", *breakdown(r)]
    lines += ["", "Tail: from the end of the node's last POV-Ray run to the image written and fetched (the last "
              "results going up, stitching, fetching). Deliveries: the request bodies of the node's results as "
              "sent (gzip); all sent: every byte the node's interface sent during the run (headers of every "
              "layer, polls, heartbeats, TCP acknowledgements)."]
    return "\n".join(lines) + "\n"


def breakdown(result: dict) -> list[str]:
    """Where the shaped runs' bytes went, per frame (means over the runs), largest first."""
    runs = result["runs"]["shaped"]
    frames = CASES[result["case"]][5]
    per_frame = len(runs) * frames
    total: dict[str, dict[str, int]] = {}
    for run_ in runs:
        for name, counts in run_["packets"].items():
            entry = total.setdefault(name, {"packets": 0, "bytes": 0, "calls": 0})
            for key, value in counts.items():
                entry[key] += value
    units = statistics.mean(run_["units"] for run_ in runs)
    png = result["median"]["shaped"]["png_per_frame"]
    lines = [f"{result['case']}, shaped: what the node sent per frame ({units:g} units rendered per run; "
             f"bytes include every header down to Ethernet's)", "",
             "| sent as | calls | packets | bytes | of the PNG |", "|---|---|---|---|---|"]
    for name, counts in sorted(total.items(), key=lambda item: -item[1]["bytes"]):
        lines.append(f"| {name} | {counts['calls'] / per_frame:.1f} | {counts['packets'] / per_frame:.1f} | "
                     f"{counts['bytes'] / per_frame:,.0f} | {counts['bytes'] / per_frame / png:.4f} |")
    everything = sum(counts["bytes"] for counts in total.values()) / per_frame
    lines.append(f"| all | | {sum(c['packets'] for c in total.values()) / per_frame:.1f} | {everything:,.0f} | "
                 f"{everything / png:.4f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per case (default 3)")
    parser.add_argument("--only", help="comma-separated case names: " + ", ".join(CASES))
    parser.add_argument("--save", default=str(ROOT / "bench" / "results"), help="folder for the results")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, images) and say where")
    parser.add_argument("--watched", action="store_true", help="a viewer follows the jobs (live blocks)")
    args = parser.parse_args()
    reason = cannot_run()
    if reason:
        print(f"bench/wan.py skipped: {reason}")
        return 0
    names = args.only.split(",") if args.only else list(CASES)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))   # unwinds through the clean-up below
    work = Path(tempfile.mkdtemp(prefix="povfarm-wan-"))
    results = []
    try:
        with Network() as net:
            the_farm = Farm(net, work)
            node = the_farm.node("wan")
            viewer = Viewer(the_farm) if args.watched else None
            try:
                wait_for(lambda: the_farm.registered("wan"), "the node")
                if viewer is not None:
                    viewer.start()
                for name in names:
                    print(f"{name}:", flush=True)
                    results.append(run_case(the_farm, name, CASES[name], args.repeat))
            finally:
                if viewer is not None:
                    viewer.done.set()
                    print(f"the viewer received {viewer.blocks} live blocks, {viewer.bytes / 1024:.0f} KiB")
                stop(node)
                the_farm.stop()
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown(results, args.repeat)
    print("\n" + table)
    save = Path(args.save)
    save.mkdir(parents=True, exist_ok=True)
    (save / "wan.json").write_text(json.dumps(results, indent=2) + "\n")
    (save / "wan.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
