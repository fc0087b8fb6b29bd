"""A farm standing for separate boxes, for bench/run.py: a controller process and node processes that each say
they run on a machine of their own (`--machine boxA`, `boxB`...) with one POV-Ray thread, so the controller
plans as for a real farm (every still cut into strips), optionally behind a delaying proxy (bench/proxy.py).
It stays up for the whole benchmark; each run submits a job and waits for its image (`povfarm submit`).

The per-unit profile is read from the nodes' own log lines (farm/node.py `profile_line`, the uploads'
"delivered in" lines), between the offsets the logs had before and after the run.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
from pathlib import Path

from wan import stop, wait_for    # the same process handling as the WAN benchmark

ROOT = Path(__file__).resolve().parent.parent
PROFILE = re.compile(r"profile: waited ([\d.]+) s, POV-Ray ([\d.]+) s \(start-up ([\d.]+), parse ([\d.]+), "
                     r"photons ([\d.]+), radiosity ([\d.]+), trace ([\d.]+)\), node ([\d.]+) s")
PROFILE_FIELDS = ("waited", "povray", "start-up", "parse", "photons", "radiosity", "trace", "node")
DELIVERED = re.compile(r"delivered in ([\d.]+) s")
DONE = re.compile(r"job \d+ unit \d+ done by")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def farm(*args: str) -> list[str]:
    return [sys.executable, "-m", "farm", *args]


class Boxes:
    """A controller and `count` nodes standing for separate one-thread boxes; `latency_ms` puts a proxy
    delaying each direction by that much between the nodes and the controller."""

    def __init__(self, work: Path, count: int = 2, latency_ms: float = 0.0, threads: int = 1,
                 root: Path = ROOT, settings: dict[str, str] | None = None, pinned: bool = False):
        """`root`: the checkout the farm runs from; `settings`: POVFARM_* variables for every process;
        `pinned`: each node (and its POV-Ray) held to a core of its own (`taskset`), as on separate boxes,
        where a box with nothing left cannot lend its core to the others' processes."""
        self.root, self.work, self.processes = root, work, []
        work.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        tokens = work / "controller" / "tokens"
        self.env = {**os.environ, "PYTHONPATH": str(root), "POVFARM_TOKEN_FILE": str(tokens), **(settings or {})}
        self.env.pop("POVFARM_TOKEN", None)
        self.controller_log = work / "controller.log"
        self._start(farm("--log-level", "INFO", "controller", "--port", str(port), "--data-dir",
                         str(work / "controller")), self.controller_log)
        wait_for(lambda: tokens.exists() and self._answers(), "the controller")
        node_url = self.url
        if latency_ms > 0:
            proxy_port = free_port()
            self._start([sys.executable, str(ROOT / "bench" / "proxy.py"), "--listen", f"127.0.0.1:{proxy_port}",
                         "--to", f"127.0.0.1:{port}", "--delay-ms", str(latency_ms)], work / "proxy.log")
            node_url = f"http://127.0.0.1:{proxy_port}"
        self.node_logs = []
        cores = os.cpu_count() or 1
        for index in range(count):
            name = f"box{chr(ord('A') + index)}"
            self.node_logs.append(work / f"{name}.log")
            argv = farm("--log-level", "INFO", "node", "--controller", node_url, "--name", name,
                        "--machine", name, "--threads", str(threads), "--work-dir", str(work / name))
            # Each node stands for a box of `threads` cores, and says so (POVFARM_CORES: a version before the
            # setting ignores it), so the controller plans for that box, not for this one.
            self._start(["taskset", "-c", str(index % cores), *argv] if pinned else argv, self.node_logs[-1],
                        {**self.env, "POVFARM_CORES": str(threads)})
        wait_for(lambda: self._registered() >= count, "the nodes")

    def _start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.processes.append(subprocess.Popen(argv, cwd=self.root, env=env or self.env, stdout=subprocess.DEVNULL,
                                               stderr=open(log, "ab"), start_new_session=True))

    def _answers(self) -> bool:
        return subprocess.run(farm("jobs", "--controller", self.url), env=self.env, capture_output=True).returncode == 0

    def _registered(self) -> int:
        text = self.controller_log.read_text(errors="replace") if self.controller_log.exists() else ""
        return len(re.findall(r"node \S+ registered", text))

    def command(self, case_argv: list[str]) -> list[str]:
        """`povfarm submit` of a case's scene and switches, waiting for its image."""
        return farm("submit", *case_argv, "--no-preview", "--controller", self.url)

    def marks(self) -> list[int]:
        """Where the logs end now: what a run adds comes after."""
        return [path.stat().st_size if path.exists() else 0 for path in (self.controller_log, *self.node_logs)]

    def since(self, marks: list[int]) -> tuple[dict[str, int], list[dict[str, float]], list[float]]:
        """What the logs say happened since `marks`: units counted by the controller, each unit's profile
        and each delivery's seconds."""
        texts = []
        for path, mark in zip((self.controller_log, *self.node_logs), marks):
            with open(path, "rb") as handle:
                handle.seek(mark)
                texts.append(handle.read().decode("utf-8", "replace"))
        units = {"strips": len(DONE.findall(texts[0])),
                 "pretrace": len(re.findall(r"radiosity pre-pass done by", texts[0]))}
        profiles = [dict(zip(PROFILE_FIELDS, map(float, match))) for text in texts[1:]
                    for match in PROFILE.findall(text)]
        delivered = [float(seconds) for text in texts[1:] for seconds in DELIVERED.findall(text)]
        return units, profiles, delivered

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


def profile_summary(runs: list[tuple[list[dict[str, float]], list[float]]]) -> dict[str, float]:
    """Per unit, the mean seconds of each part over every run's units; 'units' their mean count per run."""
    units = [profile for profiles, _ in runs for profile in profiles]
    delivered = [seconds for _, deliveries in runs for seconds in deliveries]
    if not units:
        return {}
    summary = {field: statistics.fmean(unit[field] for unit in units) for field in PROFILE_FIELDS}
    summary["delivery"] = statistics.fmean(delivered) if delivered else 0.0
    summary["units"] = len(units) / len(runs)
    return summary
