"""Scale beyond this machine, simulated: many render nodes against one real controller, on loopback.

    python bench/scale.py              # the full run: about 4 minutes on 2 cores
    python bench/scale.py --quick      # the same three parts, smaller: about 1 minute
    python bench/scale.py --only makespan --makespan-nodes 16,32,64
    python bench/scale.py --only plans --plans-nodes 8,16 --plans-rounds 3
    python bench/scale.py --only throughput --throughput-strips 20000 --status-every 0.3
    python bench/scale.py --only idle --idle-modes node,shortpoll
    python bench/scale.py --controller-root /tmp/other-checkout   # that tree's controller and nodes

Every part starts a real controller process (`python -m farm controller --port P --data-dir TMP`,
with a fresh data directory under --tmp; clients read its token file) and reports:

1. makespan: N real node processes (`python -m farm node --sandbox none --slots 1 --povray FAKE`)
   render one tall frame with bench/fake_povray.py, a stand-in for POV-Ray that sleeps by a cost model
   (seconds per row / the node's speed: POVFARM_FAKE_SPEED is 0.5, 1 and 2 in turn) and writes a
   deterministic full-size image. Makespan is the controller's submitted -> finished time; ideal is
   total work / total speed + one strip's time at 1x. Also reported: two simulations of the same strips
   on the same nodes with no overhead at all, the plain pull scheduler ("greedy") and one whose slow
   nodes decline strips that faster nodes would finish sooner ("tail-aware"); when each node started its
   first strip; how long the fastest nodes sat idle at the end; the nodes' overhead between two strips
   (from the fake's trace); and the CPU the node processes (with their fake POV-Rays) and the controller use.
1b. plans: the same nodes render the same frame, whose rows cost unevenly (chess2's profile), under the
   old fixed plans (one strip per slot, the default before; and 8 strips per node) and with strips cut at
   lease time (the default now); makespan against ideal for each, medians of rounds in alternating order
   (--plans picks which). A block costs --strip-seconds at 1x on average (8 s: chess2's blocks cost 1-6.5 s at
   +WT2 on this box), the dearest band twice that, so a slow node handed one block of it late takes 33 s.
2. throughput: the controller alone. Simulated nodes (threads in --processes processes, each thread a
   node speaking the real XML-RPC API as farm/node.py does: nodes.register, nodes.poll, then
   nodes.complete_and_poll with tiny zlib rows, which hands over the next task with the result)
   and a renderer that costs nothing; one animation job of frames x strips gives many units. Strips per
   second completed, controller CPU per strip (/proc/PID/stat) and disk writes (/proc/PID/io), p50/p95
   of poll and complete as the nodes see them; then the cost of the read calls a user or viewer makes
   on a job that size (jobs.list, jobs.status, nodes.list). --status-every 0.3 adds a client polling
   jobs.status during the run, as `submit --wait` does.
3. idle: many idle nodes (threads, real RPC) polling as farm/node.py does (long polls, when the
   node has them) and, in the full run, also with short polls and the 0.2-2 s back-off: errors (should
   be 0), polls per second, and the controller's CPU use as percent of one core.

All traffic is to 127.0.0.1. Every process the bench starts gets PR_SET_PDEATHSIG (it dies with the
bench) and is stopped at the end of its part; every wait has a deadline, and --max-seconds bounds the
whole run. Results: a table on stdout, bench/results/scale.json and bench/results/scale.md (scale-plans.* for a
run of part 1b alone). The data
directories live under --tmp (default: the system temp folder) and are removed unless --keep-tmp; the
controller's SQLite commits fsync, so that folder's file system matters: it is reported.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm import strips  # noqa: E402
from farm.auth import read_token_file  # noqa: E402
from farm.bundle.packing import pack, plan_bundle  # noqa: E402
from farm.bundle.rules import bundle_hash  # noqa: E402
from farm.client import Client  # noqa: E402
from farm.faults import Code, FarmError  # noqa: E402
from farm.states import ENDED  # noqa: E402
from farm.images.raster import row_size  # noqa: E402
from farm.rows import compress_rows  # noqa: E402

try:
    from farm.node import POLL_WAIT as NODE_POLL_WAIT   # the long-poll wait the node asks for
except ImportError:
    NODE_POLL_WAIT = 0.0

FAKE = ROOT / "bench" / "fake_povray.py"
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BLOCK = strips.DEFAULT_BLOCK
SPEEDS = (0.5, 1.0, 2.0)


# -- processes ------------------------------------------------------------------------------------------

def die_with_parent() -> None:
    """In a worker process: get SIGKILL when the bench goes away, however it goes (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


_LIBC_PRCTL = None


def _child_setup():
    """preexec_fn for subprocesses: PR_SET_PDEATHSIG, with libc looked up before the fork."""
    global _LIBC_PRCTL
    if _LIBC_PRCTL is None and sys.platform.startswith("linux"):
        _LIBC_PRCTL = ctypes.CDLL(None, use_errno=True).prctl   # looked up before fork, not in the child
    prctl = _LIBC_PRCTL

    def setup() -> None:
        if prctl is not None:
            prctl(1, signal.SIGKILL)
    return setup


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (plus its waited-for children's), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def io_write_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def stop(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


class ControllerProcess:
    """A real `python -m farm controller` on a free loopback port, with a fresh data directory (or, given
    `port`, on that port with the data directory under `tmp` as an earlier one left it: a restart)."""

    def __init__(self, tmp: Path, source: Path, log_level: str = "INFO", port: int | None = None):
        self.tmp = tmp
        self.source = source
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp / "controller"
        self.token_file = self.data_dir / "tokens"
        self.log_path = tmp / "controller.log"
        env = dict(os.environ, PYTHONPATH=str(source))
        env.pop("POVFARM_TOKEN", None)
        env.pop("POVFARM_CONFIG", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "farm", "--log-level", log_level, "controller", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                cwd=source, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                preexec_fn=_child_setup())
        self.tokens: dict[str, str] = {}

        def answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"the controller exited: see {self.log_path}")
            if not self.token_file.exists():
                return None
            try:
                self.tokens = read_token_file(self.token_file)
                return Client(self.url, timeout=10, token=self.tokens["submit"]).call("api.version")
            except (FarmError, KeyError):
                return None
        wait_until(answers, 30, "the controller to answer")
        self.pid = self.process.pid

    def client(self, role: str, timeout: float = 60.0) -> Client:
        return Client(self.url, timeout=timeout, token=self.tokens[role])

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        stop([self.process])

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it: no shutdown, nothing flushed."""
        self.process.kill()
        self.process.wait(10)


def upload_scene(client: Client, tmp: Path) -> tuple[str, str]:
    scene = tmp / "scene" / "scale.pov"
    scene.parent.mkdir(parents=True, exist_ok=True)
    scene.write_text("// rendered by bench/fake_povray.py, which only checks that the file exists\n"
                     "camera { location <0, 0, -3> look_at 0 } sphere { 0, 1 pigment { rgb 1 } }\n")
    data = pack(plan_bundle(scene))
    digest = bundle_hash(data)
    if not client.call("bundles.has", digest):
        client.call("bundles.upload", xmlrpc.client.Binary(data))
    return digest, scene.name


def wait_job(client: Client, job_id: int, timeout: float, interval: float = 0.5) -> dict:
    def finished():
        jobs = {job["id"]: job for job in client.call("jobs.list")}
        job = jobs[job_id]
        return job if job["state"] in ENDED else None
    return wait_until(finished, timeout, f"job {job_id} to finish", interval)


# -- 1. makespan: real node processes, fake POV-Ray ------------------------------------------------------

def fake_wrapper(tmp: Path) -> Path:
    """The program the nodes run as `povray`: this Python without site packages (-S, a quicker start)
    running bench/fake_povray.py, so no PATH lookup or version shim sits in the way."""
    wrapper = tmp / "fake-povray"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{FAKE}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def greedy_makespan(node_speeds: list[float], strip_costs: list[float]) -> float:
    """The makespan of a pull scheduler with no overhead: each node takes the next strip when free."""
    import heapq
    heap = [(0.0, i) for i in range(len(node_speeds))]
    heapq.heapify(heap)
    end = 0.0
    for cost in strip_costs:
        free, i = heapq.heappop(heap)
        done = free + cost / node_speeds[i]
        end = max(end, done)
        heapq.heappush(heap, (done, i))
    return end


def tail_aware_makespan(node_speeds: list[float], strip_costs: list[float]) -> float:
    """The same pull scheduler, no overhead, with one more rule: a polling node declines the next strip
    when the strictly faster nodes could, between them, finish every queued strip before this node
    would finish that one (so slow nodes stop taking the last strips). O(nodes) per poll."""
    n, busy, queue, now = len(node_speeds), [0.0] * len(node_speeds), list(strip_costs), 0.0
    while queue:
        for i in sorted((i for i in range(n) if busy[i] <= now + 1e-9), key=lambda i: -node_speeds[i]):
            if not queue:
                break
            cost = queue[0]
            mine = now + cost / node_speeds[i]
            others = sum(max(0, int((mine - max(busy[j], now)) // (cost / node_speeds[j])))
                         for j in range(n) if node_speeds[j] > node_speeds[i])
            if others < len(queue):
                queue.pop(0)
                busy[i] = now + cost / node_speeds[i]
        if queue:
            now = min(b for b in busy if b > now + 1e-9)
    return max(busy)


def run_makespan(args, tmp: Path, nodes: int, height: int, strip_count: int, strip_seconds: float) -> dict:
    print(f"\n[makespan] {nodes} node processes, a {args.width}x{height} frame in {strip_count} strips, "
          f"{strip_seconds:g} s per strip at 1x", flush=True)
    controller = ControllerProcess(tmp, args.controller_root, args.controller_log_level)
    node_processes: list[subprocess.Popen] = []
    trace = tmp / "trace.txt"
    wrapper = fake_wrapper(tmp)
    rows_per_strip = height / strip_count
    row_cost = strip_seconds / rows_per_strip
    speeds = [SPEEDS[i % len(SPEEDS)] for i in range(nodes)]
    try:
        submit = controller.client("submit")
        digest, scene = upload_scene(submit, tmp)
        began = time.monotonic()
        base_env = {k: v for k, v in os.environ.items() if k not in ("POVFARM_TOKEN", "POVFARM_CONFIG")}
        base_env.update(PYTHONPATH=str(args.controller_root), POVFARM_FAKE_ROW_COST=f"{row_cost:.9f}",
                        POVFARM_FAKE_TRACE=str(trace))
        for i, speed in enumerate(speeds):
            name = f"sim-{i + 1:03d}"
            # Each stands for a box of its own (an older checkout ignores the setting).
            env = dict(base_env, POVFARM_FAKE_SPEED=str(speed), POVFARM_FAKE_NODE=name, POVFARM_MACHINE=name)
            with open(tmp / f"{name}.log", "ab") as log:
                node_processes.append(subprocess.Popen(
                    [sys.executable, "-m", "farm", "--log-level", "WARNING", "node", "--controller", controller.url,
                     "--token-file", str(controller.token_file), "--name", name, "--povray", str(wrapper),
                     "--slots", "1", "--threads", "1", "--sandbox", "none", "--work-dir", str(tmp / "nodes" / name)],
                    cwd=args.controller_root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=log, preexec_fn=_child_setup()))
        viewer = controller.client("view")

        def registered():
            dead = [p for p in node_processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{len(dead)} node(s) exited at start; see {tmp}/sim-*.log")
            listed = viewer.call("nodes.list")
            return sum(1 for n in listed if n["state"] == "idle") >= nodes
        wait_until(registered, 60 + nodes, f"{nodes} nodes to register", interval=0.5)
        startup = time.monotonic() - began
        print(f"  {nodes} nodes registered in {startup:.1f} s", flush=True)

        # The nodes at rest: polling with back-off (they reached the 2 s ceiling while the others started).
        pids = [p.pid for p in node_processes]
        time.sleep(1.0)
        idle_window = 4.0
        idle_before = sum(cpu_seconds(pid, children=True) for pid in pids), controller.cpu()
        time.sleep(idle_window)
        idle_nodes_cpu = sum(cpu_seconds(pid, children=True) for pid in pids) - idle_before[0]
        idle_controller_cpu = controller.cpu() - idle_before[1]

        cpu_before = sum(cpu_seconds(pid, children=True) for pid in pids), controller.cpu()
        load_before = os.getloadavg()
        submitted_wall = time.time()
        job_id = submit.call("jobs.submit", {"bundle": digest, "scene": scene, "width": args.width,
                                             "height": height, "strips": strip_count, "name": "makespan",
                                             "preview": False})
        ideal_guess = strip_count * strip_seconds / sum(speeds) + strip_seconds
        job = wait_job(viewer, job_id, timeout=max(120.0, ideal_guess * 4))
        nodes_cpu = sum(cpu_seconds(pid, children=True) for pid in pids) - cpu_before[0]
        controller_cpu = controller.cpu() - cpu_before[1]
        status = viewer.call("jobs.status", job_id)
    finally:
        stop(node_processes)
        controller.stop()
    if job["state"] != "done":
        raise RuntimeError(f"the makespan job ended {job['state']}: {job.get('error')}")

    makespan = job["finished"] - job["submitted"]
    units = status["strips"]
    costs = [(u["row_end"] - u["row_start"]) * row_cost for u in units]
    total_work = sum(costs)
    one_strip = max(costs)
    ideal = total_work / sum(speeds) + one_strip
    greedy = greedy_makespan(speeds, costs)
    tail_aware = tail_aware_makespan(speeds, costs)
    runs = [line.split() for line in trace.read_text().splitlines() if line.strip()]
    runs = [(r[0], float(r[1]), float(r[2]), float(r[3]), float(r[6])) for r in runs
            if float(r[2]) >= submitted_wall - 1]
    by_node: dict[str, list[tuple[float, float, float]]] = {}
    for name, _speed, start, end, planned in runs:
        by_node.setdefault(name, []).append((start, end, planned))
    gaps, excess = [], []
    for seq in by_node.values():
        seq.sort()
        gaps += [b[0] - a[1] for a, b in zip(seq, seq[1:])]
        excess += [(end - start) - planned for start, end, planned in seq]
    first_start = min(r[2] for r in runs)
    node_starts = [min(start for start, _, _ in seq) - submitted_wall for seq in by_node.values()]
    busy_end = {name: max(end for _, end, _ in seq) for name, seq in by_node.items()}
    queue_empty = max(r[2] for r in runs) - submitted_wall     # the last strip started: nothing left queued
    last_end = max(r[3] for r in runs)
    retried = sum(1 for u in units if u["attempts"] > 1)
    strips_by_speed: dict[float, list[int]] = {}
    per_node = {name: len(seq) for name, seq in by_node.items()}
    for i, speed in enumerate(speeds):
        strips_by_speed.setdefault(speed, []).append(per_node.get(f"sim-{i + 1:03d}", 0))
    result = {
        "nodes": nodes, "speeds": {str(s): speeds.count(s) for s in SPEEDS}, "total_speed": sum(speeds),
        "width": args.width, "height": height, "strips": len(units), "strip_seconds_at_1x": strip_seconds,
        "strips_retried": retried, "runs_traced": len(runs),
        "makespan_s": makespan, "ideal_s": ideal, "ratio": makespan / ideal,
        "greedy_no_overhead_s": greedy, "greedy_ratio": greedy / ideal,
        "tail_aware_no_overhead_s": tail_aware, "tail_aware_ratio": tail_aware / ideal,
        "first_lease_after_s": job["started"] - job["submitted"],
        "first_render_after_s": first_start - submitted_wall,
        "last_render_end_to_finished_s": job["finished"] - last_end,
        "node_first_render_after_s": {"mean": statistics.mean(node_starts), "max": max(node_starts)},
        "last_strip_started_after_s": queue_empty,
        "tail_s": last_end - submitted_wall - queue_empty,
        "fast_nodes_idle_at_end_s": statistics.mean(
            last_end - busy_end[f"sim-{i + 1:03d}"] for i, sp in enumerate(speeds)
            if sp == max(speeds) and f"sim-{i + 1:03d}" in busy_end),
        "node_gap_between_strips_s": {"p50": percentile(gaps, 0.5), "p95": percentile(gaps, 0.95),
                                      "max": max(gaps) if gaps else float("nan")},
        "fake_overrun_s": {"p50": percentile(excess, 0.5), "p95": percentile(excess, 0.95)},
        "strips_per_node_by_speed": {str(s): round(statistics.mean(v), 2) for s, v in strips_by_speed.items()},
        "nodes_start_s": startup,
        "nodes_idle_cpu_cores": idle_nodes_cpu / idle_window,
        "nodes_idle_cpu_ms_per_node_s": 1000 * idle_nodes_cpu / idle_window / nodes,
        "controller_idle_cpu_cores": idle_controller_cpu / idle_window,
        "nodes_cpu_cores": nodes_cpu / makespan, "nodes_cpu_ms_per_strip": 1000 * nodes_cpu / len(units),
        "controller_cpu_cores": controller_cpu / makespan,
        "controller_cpu_ms_per_strip": 1000 * controller_cpu / len(units),
        "loadavg_before": load_before[0],
    }
    print(f"  makespan {makespan:.1f} s, ideal {ideal:.1f} s: ratio {result['ratio']:.3f} "
          f"(greedy without overhead {result['greedy_ratio']:.3f}); node gap p50 "
          f"{result['node_gap_between_strips_s']['p50'] * 1000:.0f} ms; nodes {result['nodes_cpu_cores']:.2f} cores, "
          f"controller {result['controller_cpu_cores']:.2f} cores", flush=True)
    return result


# -- 1b. plans: the old fixed plans against strips cut at lease time, on the same simulated work ------------

# Relative cost of the 15 blocks of chess2 at 640x480 +A0.3, top to bottom, as measured with one 32-row block
# per POV-Ray process at +WT2, less its start-up: the sky cheap, the pieces dear.
CHESS2_PROFILE = "0.47,0.57,1.68,4.05,3.85,5.86,4.69,3.48,2.88,3.19,2.57,2.32,1.58,1.65,1.81"
PLANS = ("one strip per slot", "8 strips per node", "cut at lease time")


def _plan_strips(plan: str, nodes: int) -> int | str:
    return {"one strip per slot": nodes, "8 strips per node": 8 * nodes, "cut at lease time": "auto"}[plan]


def run_plans(args, tmp: Path, nodes: int, height: int, row_cost: float, rounds: int,
              plans: tuple[str, ...] = PLANS) -> dict:
    """The same nodes (speeds 0.5/1/2x) render the same uneven frame under each plan, in turn, `rounds`
    times in alternating order; POV-Ray's start-up is simulated too (0.6 s a run, no CPU)."""
    print(f"\n[plans] {nodes} node processes, a {args.width}x{height} frame with uneven rows (chess2's profile), "
          f"{row_cost * height:.0f} s of work at 1x, {rounds} rounds", flush=True)
    controller = ControllerProcess(tmp, args.controller_root, "WARNING")
    node_processes: list[subprocess.Popen] = []
    speeds = [SPEEDS[i % len(SPEEDS)] for i in range(nodes)]
    wrapper = fake_wrapper(tmp)
    times: dict[str, list[float]] = {plan: [] for plan in plans}
    units: dict[str, list[int]] = {plan: [] for plan in plans}
    try:
        submit, viewer = controller.client("submit"), controller.client("view")
        digest, scene = upload_scene(submit, tmp)
        env = {k: v for k, v in os.environ.items() if k not in ("POVFARM_TOKEN", "POVFARM_CONFIG")}
        env.update(PYTHONPATH=str(args.controller_root), POVFARM_FAKE_ROW_COST=f"{row_cost:.9f}",
                   POVFARM_FAKE_ROW_PROFILE=CHESS2_PROFILE, POVFARM_FAKE_STARTUP="0.6")
        for i, speed in enumerate(speeds):
            name = f"plan-{i + 1:03d}"
            with open(tmp / f"{name}.log", "ab") as log:
                node_processes.append(subprocess.Popen(
                    [sys.executable, "-m", "farm", "--log-level", "WARNING", "node", "--controller", controller.url,
                     "--token-file", str(controller.token_file), "--name", name, "--povray", str(wrapper),
                     "--slots", "1", "--threads", "1", "--sandbox", "none", "--work-dir", str(tmp / "nodes" / name)],
                    cwd=args.controller_root, env=dict(env, POVFARM_FAKE_SPEED=str(speed), POVFARM_MACHINE=name),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=log, preexec_fn=_child_setup()))
        wait_until(lambda: sum(1 for n in viewer.call("nodes.list") if n["state"] == "idle") >= nodes,
                   60 + nodes, f"{nodes} nodes to register", interval=0.5)
        for round_ in range(rounds):
            for plan in (plans if round_ % 2 == 0 else tuple(reversed(plans))):
                job_id = submit.call("jobs.submit", {"bundle": digest, "scene": scene, "width": args.width,
                                                     "height": height, "strips": _plan_strips(plan, nodes),
                                                     "name": plan, "preview": False})
                job = wait_job(viewer, job_id, timeout=600, interval=0.2)
                if job["state"] != "done":
                    raise RuntimeError(f"the {plan} job ended {job['state']}: {job.get('error')}")
                times[plan].append(job["finished"] - job["submitted"])
                units[plan].append(viewer.call("jobs.status", job_id)["strips_total"])
                print(f"  round {round_ + 1} {plan}: {times[plan][-1]:.2f} s, {units[plan][-1]} strips", flush=True)
    finally:
        stop(node_processes)
        controller.stop()
    # Ideal: the work spread perfectly over the total speed, plus one start-up and one block at 1x (no plan
    # can end on less).
    ideal = row_cost * height / sum(speeds) + 0.6 + row_cost * BLOCK
    results = {plan: {"makespan_s": statistics.median(times[plan]), "runs_s": times[plan],
                      "ratio": statistics.median(times[plan]) / ideal, "strips": statistics.median(units[plan])}
               for plan in plans}
    for plan, r in results.items():
        print(f"  {plan}: median {r['makespan_s']:.2f} s, ratio to ideal {r['ratio']:.3f}, {r['strips']:.0f} strips")
    return {"nodes": nodes, "height": height, "work_s_at_1x": row_cost * height, "ideal_s": ideal,
            "rounds": rounds, "plans": results}


# -- simulated nodes: threads speaking the real API --------------------------------------------------------

def _sim_busy(url: str, token: str, names: list[str], width: int, go, stop_event, counter, results,
              deadline: float) -> None:
    """Busy nodes with a zero-cost renderer: poll, complete at once, poll again."""
    die_with_parent()
    row_bytes = row_size(width, 3, 8)
    payloads: dict[int, xmlrpc.client.Binary] = {}
    lock = threading.Lock()
    out = {"poll": [], "poll_empty": [], "complete": [], "errors": [], "done": 0, "first": None, "last": None}

    def node(name: str) -> None:
        client = Client(url, timeout=60, token=token)
        try:
            node_id = client.call("nodes.register", name, {"povray": "simulated", "threads": 1, "slots": 1})["node_id"]
        except FarmError as err:
            with lock:
                out["errors"].append(f"register: {err}")
            return
        go.wait(60)
        polls, empty, completes, done, errors = [], [], [], 0, []
        first = last = None
        task, combined = {}, True
        while not stop_event.is_set() and time.monotonic() < deadline:
            t1 = time.monotonic()
            if not task:   # as farm/node.py: poll only when the last delivery brought no next task
                try:
                    task = client.call("nodes.poll", node_id)
                except FarmError as err:
                    errors.append(f"poll: {err}")
                    time.sleep(0.05)
                    continue
                t0, t1 = t1, time.monotonic()
                if first is None:
                    first = t0
                if not task:
                    empty.append(t1 - t0)
                    stop_event.wait(0.02)
                    continue
                polls.append(t1 - t0)
            size = (task["frame_last"] - task["frame"] + 1) * (task["row_end"] - task["row_start"]) * row_bytes
            rows = payloads.get(size)
            if rows is None:
                rows = payloads.setdefault(size, xmlrpc.client.Binary(compress_rows(bytes(size))))
            try:
                if combined:
                    task = client.call("nodes.complete_and_poll", node_id, task["lease"], rows, 0.0)
                else:
                    client.call("nodes.complete", node_id, task["lease"], rows, 0.0)
                    task = {}
            except FarmError as err:
                if err.code is Code.UNKNOWN_METHOD:   # a --controller-root tree without the combined call
                    combined = False
                else:
                    errors.append(f"complete: {err}")
                    task = {}
                continue
            t2 = time.monotonic()
            completes.append(t2 - t1)
            last = t2
            done += 1
            with counter.get_lock():
                counter.value += 1
        client.close()
        with lock:
            out["poll"] += polls
            out["poll_empty"] += empty
            out["complete"] += completes
            out["errors"] += errors
            out["done"] += done
            if first is not None:
                out["first"] = first if out["first"] is None else min(out["first"], first)
            if last is not None:
                out["last"] = last if out["last"] is None else max(out["last"], last)

    threads = [threading.Thread(target=node, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + 30))
    out["cpu"] = time.process_time()
    results.put(out)


def _sim_idle(url: str, token: str, names: list[str], measure_from: float, measure_to: float, results,
              stagger: float, poll_wait: float) -> None:
    """Idle nodes, polling as farm/node.py's poll loop does: nodes.poll with a long-poll wait (when
    poll_wait > 0); a reply that took 1 s or more means the controller already waited, so ask again at
    once; a quick empty reply backs off 0.2 s doubling to 2 s, +-25% jitter."""
    die_with_parent()
    lock = threading.Lock()
    out = {"polls": 0, "polls_in_window": 0, "latency": [], "errors": [], "tasks": 0, "registered": 0}

    def node(index: int, name: str) -> None:
        time.sleep(index * stagger)          # do not connect all at once
        client = Client(url, timeout=60, token=token)
        rng = random.Random(index)
        try:
            node_id = client.call("nodes.register", name, {"povray": "simulated", "threads": 1, "slots": 1})["node_id"]
        except FarmError as err:
            with lock:
                out["errors"].append(f"register: {err}")
            return
        with lock:
            out["registered"] += 1
        delay, polls, in_window, latency, errors, tasks = 0.0, 0, 0, [], [], 0
        while time.monotonic() < measure_to:
            t0 = time.monotonic()
            wait = min(poll_wait, max(0.0, measure_to - t0))
            try:
                task = client.call("nodes.poll", node_id, wait) if wait > 0 else client.call("nodes.poll", node_id)
            except FarmError as err:
                errors.append(f"poll: {err}")
                task = None
            t1 = time.monotonic()
            polls += 1
            if measure_from <= t0 <= measure_to:
                in_window += 1
                latency.append(t1 - t0)
            if task:
                tasks += 1
                delay = 0.0
                continue
            if t1 - t0 >= 1.0:
                delay = 0.0
                continue
            base = min(max(delay * 2, 0.2), 2.0)
            delay = base * (0.75 + 0.5 * rng.random())
            time.sleep(max(0.0, min(delay, measure_to - time.monotonic())))
        client.close()
        with lock:
            out["polls"] += polls
            out["polls_in_window"] += in_window
            out["latency"] += latency
            out["errors"] += errors
            out["tasks"] += tasks

    threads = [threading.Thread(target=node, args=(i, name), daemon=True) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, measure_to - time.monotonic() + 60))
    out["cpu"] = time.process_time()
    results.put(out)


def _split(names: list[str], parts: int) -> list[list[str]]:
    return [names[i::parts] for i in range(parts)]


# -- 2. throughput ---------------------------------------------------------------------------------------

def run_throughput(args, tmp: Path, nodes: int, total: int, time_cap: float) -> dict:
    per_frame = min(args.throughput_strips_per_frame, 512)
    frames = max(1, -(-total // per_frame))
    height = per_frame * BLOCK
    print(f"\n[throughput] {nodes} simulated nodes in {args.processes} processes, zero-cost renderer, "
          f"one job of {frames} frames x {per_frame} strips = {frames * per_frame} units "
          f"({args.width}x{height}), at most {time_cap:.0f} s", flush=True)
    controller = ControllerProcess(tmp, args.controller_root, args.controller_log_level)
    ctx = mp.get_context("spawn")
    workers = []
    try:
        submit = controller.client("submit")
        digest, scene = upload_scene(submit, tmp)
        spec = {"bundle": digest, "scene": scene, "width": args.width, "height": height, "strips": per_frame,
                "name": "throughput", "animation": {"first": 1, "last": frames}, "preview": False}
        t0 = time.monotonic()
        job_id = submit.call("jobs.submit", spec)
        submit_seconds = time.monotonic() - t0
        go, stop_event = ctx.Event(), ctx.Event()
        counter = ctx.Value("i", 0)
        results = ctx.Queue()
        deadline = time.monotonic() + 60 + time_cap
        names = [f"busy-{i + 1:03d}" for i in range(nodes)]
        for part in _split(names, args.processes):
            process = ctx.Process(target=_sim_busy, daemon=True,
                                  args=(controller.url, controller.tokens["node"], part, args.width, go, stop_event,
                                        counter, results, deadline))
            process.start()
            workers.append(process)
        viewer = controller.client("view")
        wait_until(lambda: len(viewer.call("nodes.list")) >= nodes, 60, "the simulated nodes to register")
        time.sleep(0.5)
        load_before = os.getloadavg()[0]
        cpu0, io0, wall0 = controller.cpu(), io_write_bytes(controller.pid), time.monotonic()
        workers_cpu0 = sum(cpu_seconds(p.pid) for p in workers)
        watcher_stop = threading.Event()
        status_calls: list[float] = []

        def watch_status() -> None:
            """What `povfarm submit --wait` does: jobs.status every few tenths of a second."""
            client = controller.client("view")
            while not watcher_stop.wait(args.status_every):
                t = time.monotonic()
                client.call("jobs.status", job_id)
                status_calls.append(time.monotonic() - t)
        wait_calls: list[float] = []

        def wait_like_cli() -> None:
            """What `povfarm submit --wait` does: jobs.wait(job, 1.0) in a loop, redrawing its progress line."""
            client = controller.client("view")
            while not watcher_stop.is_set():
                t = time.monotonic()
                client.call("jobs.wait", job_id, 1.0)
                wait_calls.append(time.monotonic() - t)
        watcher = threading.Thread(target=watch_status, daemon=True)
        if args.status_every > 0:
            watcher.start()
        waiters = [threading.Thread(target=wait_like_cli, daemon=True) for _ in range(args.wait_clients)]
        for thread in waiters:
            thread.start()
        go.set()
        cap = wall0 + time_cap
        while counter.value < frames * per_frame and time.monotonic() < cap:
            time.sleep(0.05)
        watcher_stop.set()
        wall1, cpu1, io1 = time.monotonic(), controller.cpu(), io_write_bytes(controller.pid)
        workers_cpu1 = sum(cpu_seconds(p.pid) for p in workers)
        stop_event.set()
        outs = [results.get(timeout=90) for _ in workers]
        for process in workers:
            process.join(30)
        # What a user or a viewer pays on a job this size (the job as the run left it).
        reads = {}
        time.sleep(1.5)    # let the last frame be written and the maintenance loop settle
        for method, call_args in (("jobs.list", ()), ("jobs.status", (job_id,)), ("nodes.list", ())):
            cpu, t = controller.cpu(), time.monotonic()
            viewer.call(method, *call_args)
            reads[method + "_ms"] = 1000 * (time.monotonic() - t)
            reads[method + "_controller_cpu_ms"] = 1000 * (controller.cpu() - cpu)
        final = {job["id"]: job for job in viewer.call("jobs.list")}[job_id]
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
        controller.stop()
    done = sum(o["done"] for o in outs)
    first = min(o["first"] for o in outs if o["first"] is not None)
    last = max(o["last"] for o in outs if o["last"] is not None)
    polls = [x for o in outs for x in o["poll"]]
    empty = [x for o in outs for x in o["poll_empty"]]
    completes = [x for o in outs for x in o["complete"]]
    errors = [x for o in outs for x in o["errors"]]
    ms = lambda values, f: 1000 * percentile(values, f)   # noqa: E731
    result = {
        "nodes": nodes, "processes": args.processes, "units": frames * per_frame, "frames": frames,
        "strips_per_frame": per_frame, "width": args.width, "height": height,
        "submit_s": submit_seconds, "completed": done, "job_state": final["state"],
        "frames_done": final["frames_done"], "seconds": last - first,
        "strips_per_second": done / (last - first) if last > first else float("nan"),
        "controller_cpu_cores": (cpu1 - cpu0) / (wall1 - wall0),
        "controller_cpu_ms_per_strip": 1000 * (cpu1 - cpu0) / max(1, done),
        "controller_disk_kb_per_strip": (io1 - io0) / 1024 / max(1, done),
        "sim_nodes_cpu_cores": (workers_cpu1 - workers_cpu0) / (wall1 - wall0),
        "poll_ms": {"p50": ms(polls, 0.5), "p95": ms(polls, 0.95), "max": ms(polls, 1.0), "n": len(polls)},
        "empty_polls": len(empty),
        "complete_ms": {"p50": ms(completes, 0.5), "p95": ms(completes, 0.95), "max": ms(completes, 1.0),
                        "n": len(completes)},
        "errors": len(errors), "error_samples": errors[:5],
        "wait_clients": args.wait_clients, "wait_calls": len(wait_calls),
        "wait_call_ms_p50": 1000 * percentile(wait_calls, 0.5) if wait_calls else None,
        "status_every_s": args.status_every, "status_calls": len(status_calls),
        "status_call_ms_p50": 1000 * percentile(status_calls, 0.5) if status_calls else None,
        "reads_after_ms": reads, "loadavg_before": load_before,
    }
    print(f"  {done} strips in {result['seconds']:.1f} s: {result['strips_per_second']:.0f} strips/s; controller "
          f"{result['controller_cpu_cores']:.2f} cores, {result['controller_cpu_ms_per_strip']:.2f} ms CPU/strip; "
          f"poll p50/p95 {result['poll_ms']['p50']:.1f}/{result['poll_ms']['p95']:.1f} ms, complete "
          f"{result['complete_ms']['p50']:.1f}/{result['complete_ms']['p95']:.1f} ms; errors {len(errors)}",
          flush=True)
    print("  then: " + ", ".join(f"{m} {reads[m + '_ms']:.0f} ms "
                                 f"({reads[m + '_controller_cpu_ms']:.0f} ms controller CPU)"
                                 for m in ("jobs.list", "jobs.status", "nodes.list")), flush=True)
    return result


# -- 3. idle polling -----------------------------------------------------------------------------------------

def run_idle(args, tmp: Path, nodes: int, seconds: float, poll_wait: float) -> dict:
    warmup = 6.0
    how = f"long polls of up to {poll_wait:g} s" if poll_wait > 0 else "short polls with back-off"
    print(f"\n[idle] {nodes} idle simulated nodes in {args.processes} processes, {how}, "
          f"{warmup:.0f} s warm-up + {seconds:.0f} s measured", flush=True)
    controller = ControllerProcess(tmp, args.controller_root, args.controller_log_level)
    ctx = mp.get_context("spawn")
    workers = []
    try:
        stagger = 2.0 / nodes          # all registered within about 2 s
        start = time.monotonic() + 1.0
        measure_from, measure_to = start + warmup, start + warmup + seconds
        results = ctx.Queue()
        names = [f"idle-{i + 1:03d}" for i in range(nodes)]
        for part in _split(names, args.processes):
            process = ctx.Process(target=_sim_idle, daemon=True,
                                  args=(controller.url, controller.tokens["node"], part, measure_from, measure_to,
                                        results, stagger * args.processes, poll_wait))
            process.start()
            workers.append(process)
        time.sleep(max(0.0, measure_from - time.monotonic()))
        load_before = os.getloadavg()[0]
        cpu0, io0, t0 = controller.cpu(), io_write_bytes(controller.pid), time.monotonic()
        time.sleep(max(0.0, measure_to - time.monotonic()))
        cpu1, io1, t1 = controller.cpu(), io_write_bytes(controller.pid), time.monotonic()
        outs = [results.get(timeout=120) for _ in workers]
        for process in workers:
            process.join(30)
        viewer = controller.client("view")
        t = time.monotonic()
        listed = viewer.call("nodes.list")
        nodes_list_ms = 1000 * (time.monotonic() - t)
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
        controller.stop()
    latency = [x for o in outs for x in o["latency"]]
    errors = [x for o in outs for x in o["errors"]]
    window = t1 - t0
    result = {
        "nodes": nodes, "poll_wait_s": poll_wait, "registered": sum(o["registered"] for o in outs),
        "listed": len(listed),
        "seconds": window, "errors": len(errors), "error_samples": errors[:5],
        "tasks": sum(o["tasks"] for o in outs),
        "polls_per_second": sum(o["polls_in_window"] for o in outs) / window,
        "poll_ms": {"p50": 1000 * percentile(latency, 0.5), "p95": 1000 * percentile(latency, 0.95),
                    "max": 1000 * percentile(latency, 1.0)},
        "controller_cpu_percent_of_core": 100 * (cpu1 - cpu0) / window,
        "controller_cpu_ms_per_poll": 1000 * (cpu1 - cpu0) / max(1, sum(o["polls_in_window"] for o in outs)),
        "controller_disk_kb_per_s": (io1 - io0) / 1024 / window,
        "nodes_list_ms": nodes_list_ms, "loadavg_before": load_before,
    }
    print(f"  {result['registered']} registered, errors {len(errors)}; {result['polls_per_second']:.0f} polls/s, "
          f"poll p50/p95 {result['poll_ms']['p50']:.1f}/{result['poll_ms']['p95']:.1f} ms; controller "
          f"{result['controller_cpu_percent_of_core']:.1f}% of a core, "
          f"disk {result['controller_disk_kb_per_s']:.0f} KB/s",
          flush=True)
    return result


# -- report -------------------------------------------------------------------------------------------------

def filesystem_of(path: Path) -> str:
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return f"{kind} at {best}" if best else kind


def machine(tmp: Path) -> dict:
    """The box a run's figures come from, and the file system its data directories were on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "system": platform.platform(),
            "data_fs": filesystem_of(tmp), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def limit_run(seconds: float) -> None:
    """--max-seconds: the main thread gets a TimeoutError when the run takes longer."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"the run took longer than --max-seconds {seconds:.0f}")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(seconds))


def end_run(tmp: Path, keep: bool) -> None:
    """The run is over, however it ended: no more alarm, and its data directories removed unless kept."""
    signal.alarm(0)
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def save_results(report: dict, table: str, folder: Path, name: str) -> None:
    """The table on stdout, and NAME.json and NAME.md in `folder`."""
    print("\n" + table)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / f"{name}.md").write_text(table)
    print(f"saved {folder / name}.json and {name}.md; {report['seconds']:.0f} s in all")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# povfarm at scale, simulated", "",
             f"{m['cores']} cores, {m['cpu']}, Python {m['python']}, data on {m['data_fs']}, "
             f"{m['date']}, mode {report['mode']}, {report['seconds']:.0f} s in all.", ""]
    if report.get("makespan"):
        lines += ["## 1. Makespan vs ideal (real node processes, fake POV-Ray)", "",
                  "| nodes | strips | s/strip at 1x | makespan s | ideal s | ratio | greedy, no overhead | "
                  "tail-aware, no overhead | nodes' first strip after s (mean/max) | fast nodes idle at end s | "
                  "node gap p50/p95 ms | nodes CPU (cores) | node CPU ms/strip | nodes idle CPU (cores) | "
                  "controller CPU (cores) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["makespan"]:
            g = r["node_gap_between_strips_s"]
            lines.append(f"| {r['nodes']} | {r['strips']} | {r['strip_seconds_at_1x']:g} | {r['makespan_s']:.1f} | "
                         f"{r['ideal_s']:.1f} | **{r['ratio']:.3f}** | {r['greedy_ratio']:.3f} | "
                         f"{r['tail_aware_ratio']:.3f} | {r['node_first_render_after_s']['mean']:.2f}/"
                         f"{r['node_first_render_after_s']['max']:.2f} | {r['fast_nodes_idle_at_end_s']:.1f} | "
                         f"{g['p50'] * 1000:.0f}/{g['p95'] * 1000:.0f} | {r['nodes_cpu_cores']:.2f} | "
                         f"{r['nodes_cpu_ms_per_strip']:.0f} | {r['nodes_idle_cpu_cores']:.2f} | "
                         f"{r['controller_cpu_cores']:.2f} |")
        lines += ["", "Speeds 0.5x/1x/2x in turn. Ideal = total work / total speed + one strip at 1x. "
                  "Greedy = the same strips pulled by the same nodes with no overhead at all (a simulation): "
                  "what the strip size alone costs. Tail-aware = that simulation with slow nodes declining a "
                  "strip that faster nodes would finish sooner. Ratios are to ideal. Node gap = from one fake "
                  "POV-Ray exiting to the next one starting on the same node.", ""]
    if report.get("plans"):
        plans = list(report["plans"][0]["plans"])
        lines += ["## 1b. Fixed plans against strips cut at lease time (same nodes, same uneven frame)", "",
                  "| nodes | work at 1x s | ideal s | " + " | ".join(f"{p}: makespan s (ratio, strips)" for p in plans)
                  + " |", "|---|---|---|" + "---|" * len(plans)]
        for r in report["plans"]:
            lines.append(f"| {r['nodes']} | {r['work_s_at_1x']:.0f} | {r['ideal_s']:.1f} | " + " | ".join(
                f"{r['plans'][p]['makespan_s']:.1f} (**{r['plans'][p]['ratio']:.3f}**, {r['plans'][p]['strips']:.0f})"
                for p in plans) + " |")
        lines += ["", "Speeds 0.5x/1x/2x in turn; rows cost by chess2's profile (15 bands, 0.47 to 5.86); 0.6 s "
                  "simulated start-up per run. Ideal = work / total speed + one start-up + one block at 1x. "
                  "Medians of the rounds, plans run in alternating order.", ""]
    if report.get("throughput"):
        t = report["throughput"]
        lines += ["## 2. Controller throughput (simulated nodes, zero-cost renderer)", "",
                  "| nodes | units | strips/s | controller CPU ms/strip | controller cores | sim nodes cores | "
                  "poll p50/p95 ms | complete p50/p95 ms | disk KB/strip | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  f"| {t['nodes']} | {t['completed']}/{t['units']} | **{t['strips_per_second']:.0f}** | "
                  f"{t['controller_cpu_ms_per_strip']:.2f} | {t['controller_cpu_cores']:.2f} | "
                  f"{t['sim_nodes_cpu_cores']:.2f} | {t['poll_ms']['p50']:.1f}/{t['poll_ms']['p95']:.1f} | "
                  f"{t['complete_ms']['p50']:.1f}/{t['complete_ms']['p95']:.1f} | "
                  f"{t['controller_disk_kb_per_strip']:.1f} | {t['errors']} |", "",
                  "Read calls on that job afterwards, wall (controller CPU): " + ", ".join(
                      f"{m} {t['reads_after_ms'][m + '_ms']:.0f} ms "
                      f"({t['reads_after_ms'][m + '_controller_cpu_ms']:.0f} ms)"
                      for m in ("jobs.list", "jobs.status", "nodes.list")) + ".", ""]
    if report.get("idle"):
        lines += ["## 3. Idle nodes polling", "",
                  "| nodes | polling | seconds | errors | polls/s | poll p50/p95/max ms | controller CPU % of a core | "
                  "controller CPU ms/poll | controller disk KB/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i in report["idle"]:
            how = f"long poll {i['poll_wait_s']:g} s" if i["poll_wait_s"] > 0 else "back-off 0.2-2 s"
            lines.append(f"| {i['nodes']} | {how} | {i['seconds']:.0f} | **{i['errors']}** | "
                         f"{i['polls_per_second']:.0f} | {i['poll_ms']['p50']:.1f}/{i['poll_ms']['p95']:.1f}/"
                         f"{i['poll_ms']['max']:.0f} | **{i['controller_cpu_percent_of_core']:.1f}** | "
                         f"{i['controller_cpu_ms_per_poll']:.2f} | {i['controller_disk_kb_per_s']:.0f} |")
        lines += ["", "A long poll's latency is mostly its wait at the controller (the controller caps the "
                  "wait at a third of the lease timeout).", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run of about a minute")
    parser.add_argument("--only", default="makespan,plans,throughput,idle",
                        help="comma-separated parts: makespan, plans, throughput, idle (default: all)")
    parser.add_argument("--plans-nodes", help="node counts for part 1b, e.g. 8,16 (default 16; quick 8)")
    parser.add_argument("--plans-rounds", type=int, help="rounds of part 1b (default 3; quick 1)")
    parser.add_argument("--plans", default=",".join(PLANS),
                        help=f"the plans part 1b compares, comma-separated (default: {','.join(PLANS)})")
    parser.add_argument("--makespan-nodes", help="node counts for part 1, e.g. 16,32,64 (default 64; quick 16)")
    parser.add_argument("--strip-seconds", type=float, help="seconds per strip at 1x (default 8; quick 2)")
    parser.add_argument("--strips-per-node", type=int, default=8, help="strips per node in part 1 (default 8)")
    parser.add_argument("--throughput-nodes", type=int, default=64)
    parser.add_argument("--throughput-strips", type=int, help="units in part 2 (default 20000; quick 5000)")
    parser.add_argument("--throughput-strips-per-frame", type=int, default=200)
    parser.add_argument("--throughput-seconds", type=float, help="time cap of part 2 (default 75; quick 20)")
    parser.add_argument("--status-every", type=float, default=0.0, metavar="S",
                        help="in part 2, also call jobs.status every S seconds, as `submit --wait` does (0.3); "
                             "default 0: no")
    parser.add_argument("--wait-clients", type=int, default=0, metavar="N",
                        help="in part 2, also run N clients that wait for the job as `submit --wait` does "
                             "(jobs.wait in a loop); default 0")
    parser.add_argument("--idle-nodes", type=int, default=256)
    parser.add_argument("--idle-seconds", type=float, help="measured seconds of part 3 (default 30; quick 10)")
    parser.add_argument("--idle-modes", metavar="MODES",
                        help="part 3's polling: 'node' (as farm/node.py polls: long polls when it has them), "
                             "'shortpoll' (nodes.poll without a wait, 0.2-2 s back-off), comma-separated "
                             "(default node,shortpoll; quick: node)")
    parser.add_argument("--processes", type=int, default=4, help="processes for the simulated nodes (default 4)")
    parser.add_argument("--width", type=int, default=16, help="image width in pixels (default 16)")
    parser.add_argument("--controller-root", type=Path, default=ROOT,
                        help="the source tree whose `python -m farm` runs the controller and nodes (default: this one)")
    parser.add_argument("--controller-log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="the controller's --log-level (default INFO, as deployed: a line per lease and result)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the data directories go (its file system's fsync cost matters)")
    parser.add_argument("--max-seconds", type=float, default=600, help="abort the whole run after this (600)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the data directories, logs and traces")
    parser.add_argument("--save", type=Path, default=RESULTS, help="folder for scale.json and scale.md")
    args = parser.parse_args()
    args.controller_root = args.controller_root.resolve()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    quick = args.quick
    makespan_nodes = [int(n) for n in (args.makespan_nodes or ("16" if quick else "64")).split(",")]
    strip_seconds = args.strip_seconds or (2.0 if quick else 8.0)
    throughput_strips = args.throughput_strips or (5000 if quick else 20000)
    throughput_seconds = args.throughput_seconds or (20.0 if quick else 75.0)
    idle_seconds = args.idle_seconds or (10.0 if quick else 30.0)
    idle_modes = [m.strip() for m in (args.idle_modes or ("node" if quick else "node,shortpoll")).split(",")]
    idle_modes = ["longpoll" if m == "node" and NODE_POLL_WAIT > 0 else "shortpoll" if m == "node" else m
                  for m in idle_modes]
    idle_modes = list(dict.fromkeys(idle_modes))

    limit_run(args.max_seconds)
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="povfarm-scale-", dir=args.tmp))
    report: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "machine": {**machine(tmp), "controller_root": str(args.controller_root)},
    }
    try:
        if "makespan" in parts:
            report["makespan"] = []
            for n in makespan_nodes:
                strip_count = args.strips_per_node * n
                height = min(16384, strip_count * BLOCK)      # one 32-row block per strip
                strip_count = min(strip_count, height // BLOCK)
                part_tmp = tmp / f"makespan-{n}"
                part_tmp.mkdir()
                report["makespan"].append(run_makespan(args, part_tmp, n, height, strip_count, strip_seconds))
        if "plans" in parts:
            report["plans"] = []
            for n in [int(n) for n in (args.plans_nodes or ("8" if quick else "16")).split(",")]:
                height = 8 * n * BLOCK                         # room for the 8-strips-per-node plan
                part_tmp = tmp / f"plans-{n}"
                part_tmp.mkdir()
                row_cost = strip_seconds / BLOCK               # a block costs --strip-seconds at 1x on average
                report["plans"].append(run_plans(args, part_tmp, n, height, row_cost,
                                                 args.plans_rounds or (1 if quick else 3),
                                                 tuple(plan for plan in PLANS if plan in args.plans.split(","))))
        if "throughput" in parts:
            part_tmp = tmp / "throughput"
            part_tmp.mkdir()
            report["throughput"] = run_throughput(args, part_tmp, args.throughput_nodes, throughput_strips,
                                                  throughput_seconds)
        if "idle" in parts:
            part_tmp = tmp / "idle"
            part_tmp.mkdir()
            report["idle"] = []
            for mode in idle_modes:
                mode_tmp = part_tmp / mode
                mode_tmp.mkdir()
                wait = NODE_POLL_WAIT if mode == "longpoll" else 0.0
                report["idle"].append(run_idle(args, mode_tmp, args.idle_nodes, idle_seconds, wait))
    finally:
        end_run(tmp, args.keep_tmp)
    report["seconds"] = time.monotonic() - began
    name = "scale-plans" if parts == ["plans"] else "scale"     # a run of part 1b alone keeps the full results
    save_results(report, markdown(report), args.save, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
