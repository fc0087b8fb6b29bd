"""What live viewers see and what they cost: the viewer.watch feed under load.

Starts a controller in this process (port 0, a temporary data directory), simulated render nodes in a
second process (threads that register, poll and deliver synthetic strips over the real RPC API; no
POV-Ray), and viewers in processes of their own, each running the viewer's real network code
(`farm.viewing.feed.Feed`, pinned to the job) without a window, or the calls the browser page makes
(`page_process`: the same methods, arguments and timers as the page (farm/web/feed.js, app.js), made from Python so
twenty of them fit on a small box beside the controller). Reports:

1. delay: from the moment a node starts its `nodes.complete` call to the moment a waiting viewer has
   the strip (both read from the system-wide monotonic clock), median and p95 over every (strip,
   viewer) pair, with 1 and with 20 viewers; the nodes take `--render-time` seconds per strip, so the
   controller is busy but not saturated.
2. cost: strips per second the nodes get through when they deliver as fast as the controller lets
   them, with no viewer, with 20 pygame viewers and with 20 pages watching, each repeated `--repeat`
   times (medians; each round starts with another of the three, and the cost is also given round by
   round against the same round's run without viewers). Writing the finished PNG (after the last
   strip) is left out. Viewers stand for people's own machines: by default they run at the idle
   scheduling priority (`--viewer-priority idle`, Linux's SCHED_IDLE; elsewhere nice 19), so on a small
   box they get only the CPU the controller and the nodes leave, and what is measured is the
   controller's cost. `--viewer-priority nice` runs them at nice 19 (twenty of them together still take
   a share of the CPU when they all wake at once), `equal` as the controller.

    python bench/viewer_feed.py [--viewers 20] [--nodes 4] [--repeat 3] [--viewer-priority idle]

Prints a table and saves the figures as bench/results/viewer_feed.json (or under --output).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.bundle.packing import pack, plan_bundle  # noqa: E402
from farm.bundle.rules import bundle_hash  # noqa: E402
from farm.client import Client  # noqa: E402
from farm.config import Config  # noqa: E402
from farm.api.viewer import ViewerAPI  # noqa: E402
from farm.controller import Controller  # noqa: E402
from farm.images.raster import row_size  # noqa: E402
from farm.rows import compress_rows  # noqa: E402
from farm.service.feed import Streams  # noqa: E402

WIDTH = 320
BLOCK = 32


def make_client(url: str, token: str | None, timeout: float = 60.0) -> Client:
    return Client(url, timeout=timeout, token=token) if token else Client(url, timeout=timeout)


def synthetic_rows(width: int, rows: int, seed: int) -> bytes:
    """Rows that compress about as well as a rendered image (to roughly half)."""
    import random
    rng = random.Random(seed)
    size = row_size(width, 3, 8) * rows
    noise = bytes(rng.getrandbits(4) for _ in range(size // 2))
    return compress_rows((noise + bytes(size - len(noise)))[:size])


# -- simulated nodes (their own process) --------------------------------------------------------------------

def nodes_process(url: str, token: str | None, count: int, commands, results) -> None:
    clients = [make_client(url, token) for _ in range(count)]
    ids = [c.call("nodes.register", f"sim-{i + 1}", {"povray": "simulated", "threads": 1})["node_id"]
           for i, c in enumerate(clients)]
    rows = xmlrpc.client.Binary(synthetic_rows(WIDTH, BLOCK, 1))
    results.put("ready")
    while True:
        command = commands.get()
        if command is None:
            return
        render_time = command["render_time"]
        done: list[tuple[int, int, float, float]] = []
        lock = threading.Lock()

        def work(client: Client, node_id: str) -> None:
            while True:
                task = client.call("nodes.poll", node_id)
                if not task:
                    return
                if render_time:
                    time.sleep(render_time)
                sent = time.monotonic()
                client.call("nodes.complete", node_id, task["lease"], rows, render_time)
                with lock:
                    done.append((task["frame"], task["row_start"], sent, time.monotonic()))

        started = time.monotonic()
        threads = [threading.Thread(target=work, args=(c, i)) for c, i in zip(clients, ids)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results.put({"started": started, "done": done})


# -- viewers (a process each) ------------------------------------------------------------------------------

def lower_priority(priority: str) -> None:
    """Give this viewer process the CPU the controller and the nodes leave (see --viewer-priority)."""
    if priority == "equal":
        return
    if priority == "idle" and hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(19)


def viewer_process(url: str, token: str | None, commands, results, priority: str = "equal") -> None:
    from farm.states import ENDED
    from farm.viewing.feed import Feed

    lower_priority(priority)
    results.put("ready")
    session = 0
    while True:
        job = commands.get()
        if job is None:
            return
        session += 1
        feed = Feed(url, make_client=lambda timeout: make_client(url, token, timeout))
        feed.follow = False
        feed.start()
        feed.watch(session, job)
        received: dict[str, float] = {}
        results.put("watching")
        while True:
            kind, *rest = feed.messages.get()
            if kind != "feed":
                continue
            now = time.monotonic()
            reply = rest[1]
            for s in reply["strips"]:
                received.setdefault(f"{s['frame']}:{s['row_start']}", now)
            if reply["job"].get("state") in ENDED and not reply["strips"]:
                break
        feed.stop()
        results.put(received)


PAGE_POLL_TIMEOUT = 25.0     # feed.js: POLL_TIMEOUT
PAGE_REFRESH = 2.0           # app.js: REFRESH_MS, the jobs and nodes tables


def page_process(url: str, token: str | None, commands, results, priority: str = "equal") -> None:
    """What an open page asks of the controller while it shows a job: the feed stream (GET /feed, read
    as it comes), and jobs.list plus nodes.list every couple of seconds."""
    lower_priority(priority)
    results.put("ready")
    while True:
        job = commands.get()
        if job is None:
            return
        feed, tables = make_client(url, token, PAGE_POLL_TIMEOUT + 30), make_client(url, token)
        stop = threading.Event()

        def refresh_tables() -> None:     # at once, as the page does when it opens, then every PAGE_REFRESH
            while True:
                tables.call("jobs.list")
                tables.call("nodes.list")
                if stop.wait(PAGE_REFRESH):
                    return

        refresher = threading.Thread(target=refresh_tables, daemon=True)
        refresher.start()
        received: dict[str, float] = {}
        results.put("watching")
        for records in feed.stream("/feed", {"job": job, "cursor": 0}, PAGE_POLL_TIMEOUT + 30):
            now = time.monotonic()       # the page, too, takes what one read brought (farm/web/xmlrpc.js)
            for header, _ in records:
                if header["type"] == "piece":
                    received.setdefault(f"{header['frame']}:{header['row_start']}", now)
            if records[-1][0]["type"] == "end":
                break
        stop.set()
        refresher.join()
        tables.close()
        results.put(received)


# -- the bench -----------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="povfarm-bench-"))
        self._count_waiting_viewers()
        config = Config(data_dir=self.tmp / "data", bind="127.0.0.1", port=0, lease_timeout=60)
        self.controller = Controller(config)
        self.controller.start_in_thread()
        self.url = self.controller.url
        tokens = getattr(self.controller, "tokens", None) or {}
        self.node_token, self.view_token = tokens.get("node"), tokens.get("view")
        self.client = make_client(self.url, tokens.get("submit"))
        scene = self.tmp / "scene" / "s.pov"
        scene.parent.mkdir()
        scene.write_text("camera { location <0, 0, -3> look_at 0 } sphere { 0, 1 pigment { rgb 1 } }\n")
        data = pack(plan_bundle(scene))
        self.client.call("bundles.upload", xmlrpc.client.Binary(data))
        self.digest = bundle_hash(data)
        ctx = mp.get_context("spawn")
        self.node_commands, self.node_results = ctx.Queue(), ctx.Queue()
        self.nodes = ctx.Process(target=nodes_process, daemon=True,
                                 args=(self.url, self.node_token, args.nodes, self.node_commands, self.node_results))
        self.nodes.start()
        self.viewers: dict[str, list] = {"pygame": [], "page": []}
        for kind, target in (("pygame", viewer_process), ("page", page_process)):
            for _ in range(args.viewers):
                commands, results = ctx.Queue(), ctx.Queue()
                process = ctx.Process(target=target, daemon=True,
                                      args=(self.url, self.view_token, commands, results, args.viewer_priority))
                process.start()
                self.viewers[kind].append((process, commands, results))
        assert self.node_results.get(timeout=60) == "ready"
        for _, _, results in self.viewers["pygame"] + self.viewers["page"]:
            assert results.get(timeout=60) == "ready"

    def _count_waiting_viewers(self) -> None:
        """Count viewer.watch calls and feed streams in progress, so a run starts only once every viewer is in
        place (new connections arriving all at once can wait for TCP to retry a dropped handshake)."""
        self.polls_in_progress, lock = 0, threading.Lock()
        original = ViewerAPI.watch

        @functools.wraps(original)
        def counted(farm, *args):
            with lock:
                self.polls_in_progress += 1
            try:
                return original(farm, *args)
            finally:
                with lock:
                    self.polls_in_progress -= 1

        ViewerAPI.watch = counted
        streamed = Streams.watch

        def counted_stream(streams, *args):
            with lock:
                self.polls_in_progress += 1
            try:
                yield from streamed(streams, *args)
            finally:
                with lock:
                    self.polls_in_progress -= 1

        Streams.watch = counted_stream

    def run(self, viewers: int, strip_count: int, render_time: float, kind: str = "pygame") -> dict:
        job = self.client.call("jobs.submit", {"bundle": self.digest, "scene": "s.pov", "width": WIDTH,
                                               "height": strip_count * BLOCK, "strips": strip_count,
                                               "preview": False})
        watching = self.viewers.get(kind, [])[:viewers]
        for _, commands, _ in watching:
            commands.put(job)
        for _, _, results in watching:
            assert results.get(timeout=60) == "watching"
        deadline = time.monotonic() + 30
        while self.polls_in_progress < viewers and time.monotonic() < deadline:
            time.sleep(0.01)          # every viewer's long poll is waiting before the work starts
        cpu_before = self._cpu(watching)
        self.node_commands.put({"render_time": render_time})
        outcome = self.node_results.get(timeout=300)
        cpu = {k: v - cpu_before[k] for k, v in self._cpu(watching).items()}
        seen = [results.get(timeout=120) for _, _, results in watching]
        done = outcome["done"]
        last_sent = max(sent for _, _, sent, _ in done)
        delays = []
        for received in seen:
            for frame, start, sent, _ in done:
                delays.append(received[f"{frame}:{start}"] - sent)
            assert len(received) == len(done)
        return {"viewers": viewers, "kind": kind if viewers else "none", "strips": len(done), "render_time": render_time,
                "strips_per_second": len(done) / (last_sent - outcome["started"]),
                "complete_call_ms": statistics.median((ret - sent) * 1000 for _, _, sent, ret in done),
                "cpu_ms_per_strip": {k: 1000 * v / len(done) for k, v in cpu.items()},
                "delays_ms": [d * 1000 for d in delays]}

    def _cpu(self, watching) -> dict[str, float]:
        return {"controller": time.process_time(), "nodes": cpu_seconds(self.nodes.pid),
                "viewers": sum(cpu_seconds(process.pid) for process, _, _ in watching)}

    def close(self) -> None:
        self.node_commands.put(None)
        everyone = self.viewers["pygame"] + self.viewers["page"]
        for _, commands, _ in everyone:
            commands.put(None)
        self.nodes.join(10)
        for process, _, _ in everyone:
            process.join(10)
        self.controller.shutdown()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; 0 where that is not available)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def round_costs(runs: list[dict], kind: str) -> list[float]:
    """Per round, what the viewers of `kind` cost against the run without viewers of the same round."""
    rates = {(r["round"], r["kind"]): r["strips_per_second"] for r in runs}
    return [1 - rates[round_, kind] / rates[round_, "none"] for round_, k in rates if k == kind]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--strips", type=int, default=500,
                        help="strips per job in the throughput runs (long enough that opening 20 streams is "
                             "a small part of a run, as it is of a real job)")
    parser.add_argument("--delay-strips", type=int, default=40, help="strips per job in the delay runs")
    parser.add_argument("--render-time", type=float, default=0.1, help="simulated seconds per strip (delay runs)")
    parser.add_argument("--viewer-priority", choices=("idle", "nice", "equal"), default="idle",
                        help="CPU priority of the viewer processes: viewers run on people's own boxes, so by "
                             "default they get only CPU the controller and nodes leave (idle: SCHED_IDLE; "
                             "nice: nice 19; equal: compete as equals)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    began = time.monotonic()
    bench = Bench(args)
    delay_runs, throughput_runs = [], []
    kinds = [(0, "none"), (args.viewers, "pygame"), (args.viewers, "page")]
    try:
        for round_ in range(args.repeat):
            for viewers in (1, args.viewers):
                delay_runs.append(bench.run(viewers, args.delay_strips, args.render_time))
            # Each round starts with another kind: the store's history grows and the box drifts from run
            # to run, and neither should weigh on one kind more than on another.
            for viewers, kind in kinds[round_ % 3:] + kinds[:round_ % 3]:
                throughput_runs.append({**bench.run(viewers, args.strips, 0.0, kind), "round": round_})
    finally:
        bench.close()

    summary = {"delay": {}, "throughput": {}}
    for viewers in (1, args.viewers):
        delays = [d for r in delay_runs if r["viewers"] == viewers for d in r["delays_ms"]]
        summary["delay"][viewers] = {"median_ms": statistics.median(delays), "p95_ms": percentile(delays, 0.95),
                                     "max_ms": max(delays), "samples": len(delays)}
    for kind in ("none", "pygame", "page"):
        runs = [r for r in throughput_runs if r["kind"] == kind]
        summary["throughput"][kind] = {
            "strips_per_second_median": statistics.median(r["strips_per_second"] for r in runs),
            "runs": [round(r["strips_per_second"], 1) for r in runs],
            "complete_call_ms_median": statistics.median(r["complete_call_ms"] for r in runs),
            "controller_cpu_ms_per_strip": statistics.median(r["cpu_ms_per_strip"]["controller"] for r in runs),
            "viewers_cpu_ms_per_strip": statistics.median(r["cpu_ms_per_strip"]["viewers"] for r in runs)}

    print(f"viewer feed: {args.nodes} simulated nodes, {WIDTH}-pixel-wide strips of {BLOCK} rows, "
          f"{os.cpu_count()} CPUs, everything on this box, viewers at {args.viewer_priority} priority")
    print(f"\ndelay, strip delivered -> viewer has it ({args.delay_strips} strips x {args.repeat} runs, "
          f"{args.render_time * 1000:.0f} ms per strip per node)")
    print(f"  {'viewers':>8} {'median':>10} {'p95':>10} {'max':>10} {'samples':>8}")
    for viewers, d in summary["delay"].items():
        print(f"  {viewers:>8} {d['median_ms']:>8.1f}ms {d['p95_ms']:>8.1f}ms {d['max_ms']:>8.1f}ms {d['samples']:>8}")
    print(f"\nthroughput, nodes delivering flat out ({args.strips} strips per job, median of {args.repeat})")
    print(f"  {'viewers':>14} {'strips/s':>10} {'runs':>24} {'complete':>10} {'controller CPU':>16} "
          f"{'viewers CPU':>14}")
    for kind, t in summary["throughput"].items():
        label = "none" if kind == "none" else f"{args.viewers} {kind}{'s' if kind == 'page' else ''}"
        print(f"  {label:>14} {t['strips_per_second_median']:>10.1f} {str(t['runs']):>24} "
              f"{t['complete_call_ms_median']:>8.1f}ms {t['controller_cpu_ms_per_strip']:>8.1f}ms/strip "
              f"{t['viewers_cpu_ms_per_strip']:>8.1f}ms/strip")
    base = summary["throughput"]["none"]["strips_per_second_median"]
    print()
    for kind in ("pygame", "page"):
        loaded = summary["throughput"][kind]["strips_per_second_median"]
        paired = round_costs(throughput_runs, kind)
        summary["throughput"][kind].update(cost=round(1 - loaded / base, 4), round_costs=[round(c, 4) for c in paired])
        print(f"{args.viewers} {'pygame viewers' if kind == 'pygame' else 'pages'} cost "
              f"{100 * (1 - loaded / base):.1f}% of the farm's strip throughput (round by round: median "
              f"{100 * statistics.median(paired):.1f}%, {100 * min(paired):.1f} to {100 * max(paired):.1f}%)")
    print(f"run took {time.monotonic() - began:.0f} s")

    args.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.output / "viewer_feed.json"     # the latest run; earlier ones are in git's history
    out.write_text(json.dumps({
        "when": stamp, "python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "delays_ms"} for r in delay_runs + throughput_runs],
    }, indent=2))
    print(f"saved {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
