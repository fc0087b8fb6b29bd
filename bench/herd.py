"""A herd after a restart: many nodes reconnect at the same instant to a controller killed mid-job.

    python bench/herd.py                      # 300 two-slot nodes in 4 processes: about a minute
    python bench/herd.py --nodes 60 --processes 2 --unit-seconds 2 --save /tmp/herd

What it does, all on 127.0.0.1:
1. Starts a real controller process (`python -m farm controller`, a fresh data directory) and submits --jobs
   animations of many frames x 16 strips (--units-per-node units per node in all, so work remains after the
   restart).
2. Starts --nodes simulated nodes in --processes processes (threads, so the GIL of one client process is not
   what is measured). Each is the real `farm.node.Node` (its poll loop, uploads, heartbeats, delivery retries
   and back-off, as `povfarm node` runs them) with a stand-in renderer in place of the POV-Ray process: it
   plans the strip with bench/fake_povray.py's cost model (--unit-seconds per strip at 1x; node speeds 0.5x,
   1x and 2x in turn), sleeps that long while the node's heartbeats go on, and writes fake_povray's image.
   They all register at the same instant (a barrier).
3. When --kill-at of the units are done, `kill -9`s the controller. Every node notices (a failed call) and
   waits at a barrier; once all have, the controller is started again on the same port and data directory,
   and when it answers, all are released at once: every node's threads call it in the same instant, with
   new connections. From then on a node that is refused (503 with Retry-After, a reset, a refused connection)
   retries as `povfarm node` does, with its own back-off and jitter.
4. Reports the time until every node is back (a call answered by the new controller), the refused calls and the nodes' retry delays, the controller's
   peak RSS (VmHWM, before and after the restart), that every job finishes with every unit stored once (no
   unit delivered twice, every delivery the controller acknowledged before the kill still stored, every
   frame's rows complete), and that the controller's log has no traceback.

Goals (issue 23): all nodes back within 10 s, controller peak RSS under 150 MB, nothing lost. The exit
status is 1 when one is missed. Every process the bench starts dies with it (PR_SET_PDEATHSIG); every wait
has a deadline and --max-seconds bounds the run. Results: a table on stdout, bench/results/herd.json and
bench/results/herd.md (or under --save).
"""

from __future__ import annotations

import argparse
import collections
import logging
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_povray  # noqa: E402
from scale import (BLOCK, RESULTS, ROOT, SPEEDS, ControllerProcess, die_with_parent, fake_wrapper,  # noqa: E402
                   end_run, limit_run, machine, percentile, save_results, upload_scene, wait_until,
                   _split)

from farm.rendering import sandbox as sandboxes  # noqa: E402
from farm.rendering import povray
from farm.client import Client  # noqa: E402
from farm.config import Config  # noqa: E402
from farm.faults import Code, FarmError  # noqa: E402
from farm.node import Node  # noqa: E402
from farm.rendering.probe import probe_povray  # noqa: E402
from farm.states import ENDED  # noqa: E402

GOAL_BACK_S = 10.0          # every node registered and polling again within this, after the release
GOAL_PEAK_RSS_MB = 150.0    # the controller's peak resident memory
STRIPS_PER_FRAME = 16
REFUSED = "HTTP 503"        # how a 503 (no seat, Retry-After) reaches a node: an UNREACHABLE fault's text


def peak_rss_mb(pid: int) -> float:
    """VmHWM, the process's peak resident set, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- the simulated nodes: real farm.node.Node objects in threads ---------------------------------------------

class _Herd:
    """One simulated-node process's side of the barriers (the events are shared with the bench)."""

    def __init__(self, killed, released, noticed, done, max_wait: float):
        self.killed, self.released, self.noticed, self.done = killed, released, noticed, done
        self.max_wait = max_wait

    def down(self) -> bool:
        """The controller was killed and the herd is not released yet: a failed call joins the barrier."""
        return self.killed.is_set() and not self.released.is_set()


class HerdClient(Client):
    """A node's client: the real one, plus the barrier and a record of what the node saw."""

    def __init__(self, url: str, token: str, herd: _Herd):
        super().__init__(url, timeout=60, token=token)
        self.herd = herd
        self._lock = threading.Lock()
        self.noticed = False
        self.registered: list[float] = []       # when each nodes.register was answered
        self.back: float | None = None           # the first call the new controller answered (after release)
        self.back_method = ""
        self.failures: collections.Counter[str] = collections.Counter()     # after the release, by kind
        self.failures_before: collections.Counter[str] = collections.Counter()
        self.leases: dict[str, tuple] = {}       # lease -> its unit, from the tasks handed over
        self.accepted: list[tuple] = []          # units whose delivery was acknowledged, with when

    def call(self, method: str, *args: Any) -> Any:
        while True:
            try:
                reply = super().call(method, *args)
            except FarmError as err:
                if err.code is Code.UNREACHABLE and self.herd.down():
                    self._join_herd()
                    continue          # released: every node calls again in the same instant
                self._note_failure(err)
                raise
            self._note(method, args, reply)
            return reply

    def _join_herd(self) -> None:
        with self._lock:
            first, self.noticed = not self.noticed, True
        if first:
            with self.herd.noticed.get_lock():
                self.herd.noticed.value += 1
        self.herd.released.wait(self.herd.max_wait)

    def _note_failure(self, err: FarmError) -> None:
        kind = "503 refused" if REFUSED in str(err) else \
            "unreachable" if err.code is Code.UNREACHABLE else err.code.name.lower()
        with self._lock:
            (self.failures if self.herd.released.is_set() else self.failures_before)[kind] += 1

    def _note(self, method: str, args: tuple, reply: Any) -> None:
        now = time.monotonic()
        released = self.herd.released.is_set()
        with self._lock:
            if released and self.back is None:
                self.back, self.back_method = now, method
            if method == "nodes.register":
                self.registered.append(now)
            task = reply if method in ("nodes.poll", "nodes.complete_and_poll") and isinstance(reply, dict) else {}
            if task.get("lease"):
                self.leases[task["lease"]] = (task["job"], task["frame"], task["strip"], task["row_start"],
                                              task["row_end"], self.herd.killed.is_set())
            if method in ("nodes.complete", "nodes.complete_and_poll") and args[1] in self.leases:
                self.accepted.append((*self.leases.pop(args[1]), args[1], self.herd.killed.is_set()))
                delivered = True
            else:
                delivered = False
        if delivered:
            with self.herd.done.get_lock():
                self.herd.done.value += 1


class SimNode(Node):
    """`povfarm node` as it is, noting the retry delays its back-off picks once the herd is released."""

    herd: _Herd

    def _backoff(self, delay: float, ceiling: float) -> float:
        chosen = super()._backoff(delay, ceiling)
        if self.herd.released.is_set() and ceiling > self.config.poll_max:   # a retry, not an idle poll
            self.retry_delays.append(chosen)
        return chosen


class StandIn:
    """The POV-Ray process replaced by a call: fake_povray plans the strip, this sleeps its time (calling
    the node's heartbeat as povray.run_process does) and writes fake_povray's image."""

    def __init__(self, environ: dict[str, str]):
        self.environ = environ

    def __call__(self, argv, cwd, env, log_path: Path, timeout: float = 0.0, should_stop=lambda: False,
                 check_every: float = 0.5, **_ignored) -> povray.ProcessResult:
        started = time.monotonic()
        try:
            run = fake_povray.plan(argv[1:], self.environ, str(cwd))
        except SystemExit as exit_:
            return povray.ProcessResult(int(exit_.code or 1), None, False, False, time.monotonic() - started)
        while (left := run.planned - (time.monotonic() - started)) > 0:
            time.sleep(min(left, check_every))
            if should_stop():
                return povray.ProcessResult(None, None, False, True, time.monotonic() - started)
        with open(log_path, "w") as log:
            fake_povray.write_images(run, log)
        return povray.ProcessResult(0, None, False, False, time.monotonic() - started)


def _node_process(url: str, token: str, names: list[str], settings: dict, events: dict, results) -> None:
    """Simulated nodes, one Node each (threads), in this process; reports what they saw to `results`."""
    die_with_parent()
    tmp = Path(settings["tmp"])
    logging.basicConfig(filename=str(tmp / f"nodes-{os.getpid()}.log"), level=logging.WARNING,
                        format="%(asctime)s %(threadName)s %(levelname)s %(message)s")
    herd = _Herd(events["killed"], events["released"], events["noticed"], events["done"], settings["max_wait"])
    sandbox = sandboxes.build("none", settings["povray"])
    nodes: list[SimNode] = []
    for name in names:
        speed = SPEEDS[int(name.rsplit("-", 1)[1]) % len(SPEEDS)]
        config = Config(controller=url, token=token, name=name, povray=settings["povray"], slots=settings["slots"],
                        threads=1, sandbox="none", machine=name, work_dir=tmp / "nodes" / name,
                        probe_cache=Path(settings["probe_cache"]))
        environ = {"POVFARM_FAKE_ROW_COST": str(settings["row_cost"]), "POVFARM_FAKE_SPEED": str(speed)}
        node = SimNode(config, HerdClient(url, token, herd), runner=StandIn(environ), sandbox=sandbox)
        node.herd, node.retry_delays = herd, []
        nodes.append(node)
    threads = [threading.Thread(target=_run_node, args=(node, events["go"]), name=node.config.name, daemon=True)
               for node in nodes]
    for thread in threads:
        thread.start()
    with events["ready"].get_lock():
        events["ready"].value += len(nodes)
    events["stop"].wait(settings["max_wait"])
    for node in nodes:
        node.stop(now=True)
    for thread in threads:
        thread.join(10)
    results.put([_node_report(node) for node in nodes] + [{"cpu": time.process_time()}])


def _run_node(node: SimNode, go) -> None:
    go.wait()
    try:
        node.run()
    except FarmError as err:
        logging.getLogger("herd").error("node %s stopped: %s", node.config.name, err)


def _node_report(node: SimNode) -> dict:
    client: HerdClient = node.client
    return {"name": node.config.name, "registered": client.registered, "back": client.back,
            "back_method": client.back_method, "noticed": client.noticed,
            "failures": dict(client.failures), "failures_before": dict(client.failures_before),
            "retry_delays": node.retry_delays, "accepted": client.accepted}


# -- the run ---------------------------------------------------------------------------------------------------

def run(args, tmp: Path) -> dict:
    units = args.nodes * args.units_per_node
    frames = max(1, -(-units // (args.jobs * STRIPS_PER_FRAME)))
    height = STRIPS_PER_FRAME * BLOCK
    row_cost = args.unit_seconds / BLOCK
    print(f"[herd] {args.nodes} simulated nodes ({args.slots} slot(s) each) in {args.processes} processes; "
          f"{args.jobs} jobs of {frames} frames x {STRIPS_PER_FRAME} strips = {args.jobs * frames * STRIPS_PER_FRAME} "
          f"units, {args.unit_seconds:g} s each at 1x; kill -9 at {args.kill_at:.0%} done", flush=True)
    load_before = os.getloadavg()
    controller = ControllerProcess(tmp, ROOT)
    wrapper = fake_wrapper(tmp)
    probe_cache = tmp / "probe.json"
    probe_povray(str(wrapper), sandboxes.build("none", str(wrapper)), povray.CONSOLE, povray.run_process,
                 cache=probe_cache, scratch=tmp / "probe")     # once: the nodes read the answer from the cache
    ctx = mp.get_context("spawn")
    events = {"go": ctx.Event(), "killed": ctx.Event(), "released": ctx.Event(), "stop": ctx.Event(),
              "ready": ctx.Value("i", 0), "noticed": ctx.Value("i", 0), "done": ctx.Value("i", 0)}
    settings = {"tmp": str(tmp), "povray": str(wrapper), "probe_cache": str(probe_cache), "slots": args.slots,
                "row_cost": row_cost, "max_wait": args.max_seconds}
    results = ctx.Queue()
    workers: list = []
    report: dict[str, Any] = {"nodes": args.nodes, "processes": args.processes, "slots": args.slots,
                              "jobs": args.jobs, "frames_per_job": frames, "strips_per_frame": STRIPS_PER_FRAME,
                              "units": args.jobs * frames * STRIPS_PER_FRAME, "unit_seconds_at_1x": args.unit_seconds,
                              "loadavg_before": load_before[0]}
    try:
        submit, viewer = controller.client("submit"), controller.client("view")
        digest, scene = upload_scene(submit, tmp)
        job_ids = [submit.call("jobs.submit", {
            "bundle": digest, "scene": scene, "width": 16, "height": height, "strips": STRIPS_PER_FRAME,
            "name": f"herd-{j + 1}", "animation": {"first": 1, "last": frames}, "preview": False})
            for j in range(args.jobs)]
        names = [f"herd-{i + 1:03d}" for i in range(args.nodes)]
        for part in _split(names, args.processes):
            process = ctx.Process(target=_node_process, daemon=True,
                                  args=(controller.url, controller.tokens["node"], part, settings, events, results))
            process.start()
            workers.append(process)
        wait_until(lambda: _alive(workers) and events["ready"].value >= args.nodes, 120, "the nodes to be built")

        # The first herd: every node registers in the same instant.
        went = time.monotonic()
        events["go"].set()
        wait_until(lambda: _alive(workers) and len(viewer.call("nodes.list")) >= args.nodes, 60,
                   "every node to register")
        report["first_register_all_s"] = time.monotonic() - went
        print(f"  {args.nodes} nodes registered at once in {report['first_register_all_s']:.2f} s", flush=True)

        wait_until(lambda: _alive(workers) and events["done"].value >= args.kill_at * report["units"], 300,
                   f"{args.kill_at:.0%} of the units to be done", interval=0.05)
        report["peak_rss_mb_before_kill"] = peak_rss_mb(controller.pid)
        report["done_at_kill"] = events["done"].value
        events["killed"].set()
        controller.kill()
        killed = time.monotonic()
        print(f"  killed the controller (kill -9) with {report['done_at_kill']} units done; peak RSS "
              f"{report['peak_rss_mb_before_kill']:.0f} MB", flush=True)
        wait_until(lambda: _alive(workers) and events["noticed"].value >= args.nodes, 60,
                   "every node to notice the controller is gone", interval=0.05)
        report["all_noticed_after_s"] = time.monotonic() - killed

        # The herd: the controller again, same port and data; when it answers, every node at once.
        began = time.monotonic()
        controller = ControllerProcess(tmp, ROOT, port=controller.port)
        report["restart_s"] = time.monotonic() - began
        viewer = controller.client("view")
        released = time.monotonic()
        events["released"].set()
        print(f"  the controller answers again {report['restart_s']:.2f} s after its start; released "
              f"{args.nodes} nodes at once", flush=True)

        def finished() -> bool:
            return all(job["state"] in ENDED
                       for job in viewer.call("jobs.list") if job["id"] in job_ids)
        wait_until(lambda: _alive(workers) and finished(), args.max_seconds, "every job to finish", interval=0.5)
        report["jobs_done_after_release_s"] = time.monotonic() - released
        report["nodes_live_at_end"] = sum(1 for n in viewer.call("nodes.list") if n["state"] != "offline")
        statuses = [viewer.call("jobs.status", job_id) for job_id in job_ids]
        report["peak_rss_mb_after_restart"] = peak_rss_mb(controller.pid)
        report["controller_cpu_s_after_restart"] = controller.cpu()
        events["stop"].set()
        outs = [results.get(timeout=60) for _ in workers]
        for process in workers:
            process.join(30)
    finally:
        events["stop"].set()
        for process in workers:
            if process.is_alive():
                process.kill()
        controller.stop()
    report["loadavg_after"] = os.getloadavg()[0]
    report.update(_reconnection(outs, released))
    report.update(_accounting(outs, statuses, height))
    report["controller_log"] = _log_check(controller.log_path)
    report["goals"] = {
        f"every node back within {GOAL_BACK_S:g} s": report["all_back_after_s"] <= GOAL_BACK_S
        and report["nodes_live_at_end"] == args.nodes,
        f"controller peak RSS under {GOAL_PEAK_RSS_MB:g} MB":
            max(report["peak_rss_mb_before_kill"], report["peak_rss_mb_after_restart"]) < GOAL_PEAK_RSS_MB,
        "every job done, every unit stored once, nothing lost": report["jobs_ok"] and not report["units_twice"]
        and not report["acknowledged_then_lost"] and not report["frames_with_gaps"],
        "no traceback in the controller's log": report["controller_log"]["tracebacks"] == 0,
    }
    return report


def _alive(workers) -> bool:
    dead = [p for p in workers if not p.is_alive()]
    if dead:
        raise RuntimeError(f"{len(dead)} simulated-node process(es) died (exit {dead[0].exitcode})")
    return True


def _reconnection(outs: list[list[dict]], released: float) -> dict:
    nodes = [n for out in outs for n in out if "name" in n]
    back = [n["back"] - released for n in nodes if n["back"] is not None]
    failures: collections.Counter[str] = collections.Counter()
    for n in nodes:
        failures.update(n["failures"])
    delays = [d for n in nodes for d in n["retry_delays"]]
    return {
        "nodes_back": len(back), "nodes_noticed": sum(1 for n in nodes if n["noticed"]),
        "all_back_after_s": max(back) if len(back) == len(nodes) else float("inf"),
        "back_after_s": {"p50": percentile(back, 0.5), "p95": percentile(back, 0.95)},
        "back_first_call": dict(collections.Counter(n["back_method"] for n in nodes)),
        "registers_after_release": sum(1 for n in nodes for t in n["registered"] if t >= released),
        "failed_calls_after_release": dict(failures),
        "nodes_refused_after_release": sum(1 for n in nodes if n["failures"]),
        "retry_delay_s": {"n": len(delays), "min": min(delays, default=0.0), "p50": percentile(delays, 0.5),
                          "max": max(delays, default=0.0)},
        "sim_cpu_s": sum(out[-1]["cpu"] for out in outs),
    }


def _accounting(outs: list[list[dict]], statuses: list[dict], height: int) -> dict:
    """Every unit stored once: by the nodes' acknowledged deliveries and by the store's own account."""
    accepted = [a for out in outs for n in out if "name" in n for a in n["accepted"]]
    leases_by_unit: dict[tuple, set] = collections.defaultdict(set)
    for job, frame, strip, _rs, _re, _leased_after_kill, lease, _delivered_after_kill in accepted:
        leases_by_unit[job, frame, strip].add(lease)
    twice = sorted(unit for unit, leases in leases_by_unit.items() if len(leases) > 1)
    stored, retried, gaps, jobs_ok = set(), 0, [], True
    for status in statuses:
        jobs_ok &= (status["state"] == "done" and status["strips_done"] == status["strips_total"]
                    and status["frames_done"] == status["frames_total"])
        rows_by_frame: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
        for strip in status["strips"]:
            if strip["kind"] != "rows":
                continue
            jobs_ok &= strip["state"] == "done"
            stored.add((status["id"], strip["frame"], strip["index"]))
            retried += strip["attempts"] > 1
            rows_by_frame[strip["frame"]].append((strip["row_start"], strip["row_end"]))
        for frame, ranges in rows_by_frame.items():
            edges = sorted(ranges)
            if edges[0][0] != 0 or edges[-1][1] != height or any(a[1] != b[0] for a, b in zip(edges, edges[1:])):
                gaps.append((status["id"], frame))
    before_kill = {(a[0], a[1], a[2]) for a in accepted if not a[7]}
    return {
        "jobs_ok": jobs_ok, "units_stored": len(stored), "deliveries_acknowledged": len(accepted),
        "delivered_before_kill": len(before_kill),
        "held_across_restart": sum(1 for a in accepted if not a[5] and a[7]),
        "units_twice": [list(u) for u in twice], "units_retried": retried,
        "acknowledged_then_lost": len(before_kill - stored), "not_delivered_by_a_node": len(stored - set(leases_by_unit)),
        "frames_with_gaps": gaps,
    }


def _log_check(path: Path) -> dict:
    text = path.read_text(errors="replace")
    refusals = [line for line in text.splitlines() if "refused" in line and "connection" in line]
    return {"tracebacks": text.count("Traceback"), "refusal_lines": len(refusals), "refusal_samples": refusals[:3],
            "errors": sum(1 for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line)}


# -- report ---------------------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    r = report
    fails = ", ".join(f"{k} {v}" for k, v in r["failed_calls_after_release"].items()) or "none"
    delays = r["retry_delay_s"]
    lines = [
        "# A herd after a restart", "",
        f"{r['machine']['cores']} cores, {r['machine']['cpu']}, Python {r['machine']['python']}, data on "
        f"{r['machine']['data_fs']}, {r['machine']['date']}; load average {r['loadavg_before']:.1f} before, "
        f"{r['loadavg_after']:.1f} after; {r['seconds']:.0f} s in all. `{r['command']}`", "",
        f"{r['nodes']} simulated nodes (the real `farm.node.Node`, {r['slots']} slot(s) each, a stand-in renderer) "
        f"in {r['processes']} processes; {r['jobs']} jobs of {r['frames_per_job']} frames x {r['strips_per_frame']} "
        f"strips = {r['units']} units of {r['unit_seconds_at_1x']:g} s at 1x. The controller was killed "
        f"(`kill -9`) with {r['done_at_kill']} units done, restarted on the same port and data directory, and "
        f"every node released at it in the same instant.", "",
        "| measure | value | goal |", "|---|---|---|",
        f"| first herd: all registered (at once, fresh controller) | {r['first_register_all_s']:.2f} s | |",
        f"| every node noticed the kill after | {r['all_noticed_after_s']:.2f} s | |",
        f"| controller answering again after its start | {r['restart_s']:.2f} s | |",
        f"| **all nodes back** (a call answered), after the release | **{r['all_back_after_s']:.2f} s** "
        f"(p50 {r['back_after_s']['p50']:.2f}, p95 {r['back_after_s']['p95']:.2f}) | <= {GOAL_BACK_S:g} s |",
        f"| nodes the controller lists as live at the end | {r['nodes_live_at_end']} | {r['nodes']} |",
        f"| failed calls after the release | {fails} ({r['nodes_refused_after_release']} nodes) | retried |",
        f"| nodes' retry delays after the release | {delays['n']} retries, {delays['min']:.2f}-{delays['max']:.2f} s "
        f"(p50 {delays['p50']:.2f}) | |",
        f"| registrations after the release | {r['registers_after_release']} | |",
        f"| **controller peak RSS** (VmHWM) before kill / after restart | **{r['peak_rss_mb_before_kill']:.0f} / "
        f"{r['peak_rss_mb_after_restart']:.0f} MB** | < {GOAL_PEAK_RSS_MB:g} MB |",
        f"| jobs done after the release | {r['jobs_done_after_release_s']:.1f} s | |",
        f"| units stored / acknowledged deliveries | {r['units_stored']} / {r['deliveries_acknowledged']} | equal |",
        f"| results held across the restart, delivered after | {r['held_across_restart']} | |",
        f"| units delivered twice / acknowledged then lost / frames with gaps | {len(r['units_twice'])} / "
        f"{r['acknowledged_then_lost']} / {len(r['frames_with_gaps'])} | 0 / 0 / 0 |",
        f"| units leased again (the kill cut off the reply to their lease: they wait out the lease timeout) "
        f"| {r['units_retried']} | |",
        f"| tracebacks / refusal lines in the controller's log | {r['controller_log']['tracebacks']} / "
        f"{r['controller_log']['refusal_lines']} | 0 / |",
        "", "Goals: " + "; ".join(f"{name}: {'met' if ok else '**MISSED**'}" for name, ok in r["goals"].items()), ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--processes", type=int, default=4, help="processes for the simulated nodes (default 4)")
    parser.add_argument("--slots", type=int, default=Config.slots,
                        help=f"slots per node (default {Config.slots}, as `povfarm node`: each holds a connection, "
                             f"and the node one more for its uploads)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--units-per-node", type=int, default=4, help="units in all, per node (default 4)")
    parser.add_argument("--unit-seconds", type=float, default=3.0, help="a unit's render time at 1x (default 3)")
    parser.add_argument("--kill-at", type=float, default=0.3, help="kill the controller at this fraction done")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--max-seconds", type=float, default=300, help="abort the whole run after this (300)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the data directory and logs")
    parser.add_argument("--save", type=Path, default=RESULTS, help="folder for herd.json and herd.md")
    args = parser.parse_args()

    limit_run(args.max_seconds)
    began = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="povfarm-herd-", dir=args.tmp))
    try:
        report = run(args, tmp)
    finally:
        end_run(tmp, args.keep_tmp)
    report["machine"] = machine(args.tmp)
    report["command"] = " ".join(["python bench/herd.py", *sys.argv[1:]])
    report["seconds"] = time.monotonic() - began
    save_results(report, markdown(report), args.save, "herd")
    return 0 if all(report["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
