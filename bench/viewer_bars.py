"""What a viewer sees of a render on this box: first pixels, how many deliveries, the longest wait.

A controller and two nodes (`povfarm node`, default slots) run here on loopback; a client follows
`viewer.watch` from before the submit, as `povfarm viewer` does, and notes when new pixels arrive. Each
round submits the same job twice, in alternating order: as submitted by default (the preview is rendered
because a viewer watches) and with `--no-preview`, both with the default plan (cut finer because
watched). Reported per run and as medians:

- first pixels: seconds from jobs.submit returning to the first pixels reaching the client (bar: <= 3 s);
- deliveries: how many replies brought final rows (bar: >= 8);
- longest gap: the longest stretch with no new pixels, from the first pixels to the job's end, as a fraction
  of the job's wall time (submit returned -> the client sees it done) (bar: <= 25%).

    python bench/viewer_bars.py                      # chess2 640x480 +A0.3, 3 rounds
    python bench/viewer_bars.py --rounds 5 --scene advanced/wineglass.pov --option +A0.3

All traffic is to 127.0.0.1; every process started here is stopped at the end. Results also go to
bench/results/viewer_bars.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.auth import read_token_file  # noqa: E402
from farm.bundle.packing import pack, plan_bundle  # noqa: E402
from farm.bundle.rules import bundle_hash  # noqa: E402
from farm.client import Client  # noqa: E402
from farm.faults import FarmError  # noqa: E402
from farm.states import ENDED  # noqa: E402

SCENES = Path("/usr/share/povray-3.7/scenes")
CURSOR_END = 2**31 - 1
VARIANTS = {"preview (auto)": {"preview": "auto"}, "no preview": {"preview": "never"}}


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


class Farm:
    """A controller and `nodes` node processes on loopback, in a temporary folder."""

    def __init__(self, tmp: Path, nodes: int, node_args: list[list[str]] | None = None, root: Path = ROOT):
        """`node_args`: more flags for each node (e.g. --machine, --threads); `root`: the tree whose farm runs."""
        self.tmp, port = tmp, free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in ("POVFARM_TOKEN", "POVFARM_CONFIG")}
        python = [sys.executable, "-m", "farm", "--log-level", "WARNING"]
        log = open(tmp / "farm.log", "ab")
        self.processes = [subprocess.Popen([*python, "controller", "--port", str(port), "--data-dir",
                                            str(tmp / "controller")], cwd=root, env=env, stdout=subprocess.DEVNULL,
                                           stderr=log)]
        tokens = tmp / "controller" / "tokens"
        wait_until(tokens.exists, 30, "the controller's token file")
        self.tokens = read_token_file(tokens)
        self.submit = Client(self.url, timeout=60, token=self.tokens["submit"])
        wait_until(lambda: self._answers(), 30, "the controller to answer")
        for i in range(nodes):
            self.processes.append(subprocess.Popen(
                [*python, "node", "--controller", self.url, "--token-file", str(tokens), "--name", f"bars-{i + 1}",
                 "--work-dir", str(tmp / f"node-{i + 1}"), *(node_args[i] if node_args else [])], cwd=root, env=env,
                stdout=subprocess.DEVNULL,
                stderr=log))
        wait_until(lambda: len(self.submit.call("nodes.list")) >= nodes, 60, "the nodes to register")

    def _answers(self) -> bool:
        try:
            return bool(self.submit.call("api.version"))
        except FarmError:
            return False

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Watcher(threading.Thread):
    """Follows the newest job through viewer.watch, noting when pixels arrive. Jobs up to `after` are
    old: it waits past them."""

    def __init__(self, client: Client, after: int):
        super().__init__(daemon=True)
        self.client, self.after = client, after
        self.arrivals: list[tuple[float, str, int]] = []     # (time, "preview"/"rows", pieces)
        self.done_at: float | None = None
        self.job: dict = {}

    def run(self) -> None:
        cursor = CURSOR_END
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            reply = self.client.call("viewer.watch", 0, cursor, 5)
            now = time.monotonic()
            job = reply["job"]
            if not job or job["id"] <= self.after:
                cursor = CURSOR_END
                continue
            if job["id"] != self.job.get("id") and cursor == CURSOR_END and not reply["strips"]:
                self.job, cursor = job, 0       # the new job, asked for with the old job's cursor: from the start
                continue
            self.job, cursor = job, reply["cursor"]
            kinds = [piece.get("kind", "rows") for piece in reply["strips"]]
            if "preview" in kinds:
                self.arrivals.append((now, "preview", 1))
            if kinds.count("rows"):
                self.arrivals.append((now, "rows", kinds.count("rows")))
            if job["state"] in ENDED and not reply["strips"]:
                self.done_at = now
                return


def upload(client: Client, scene: Path) -> str:
    data = pack(plan_bundle(scene))
    digest = bundle_hash(data)
    if not client.call("bundles.has", digest):
        client.call("bundles.upload", xmlrpc.client.Binary(data))
    return digest


def one_run(farm: Farm, digest: str, scene: Path, args, variant: str) -> dict:
    viewer = Client(farm.url, timeout=60, token=farm.tokens["view"])
    newest = max((job["id"] for job in farm.submit.call("jobs.list")), default=0)
    watcher = Watcher(viewer, newest)
    watcher.start()
    time.sleep(0.5)                       # the client is waiting before the submit, as a viewer would
    spec = {"bundle": digest, "scene": scene.name, "width": args.width, "height": args.height,
            "options": args.option, "name": f"bars-{variant}", **VARIANTS[variant]}
    farm.submit.call("jobs.submit", spec)
    submitted = time.monotonic()
    watcher.join(900)
    if watcher.done_at is None or watcher.job.get("state") != "done":
        raise RuntimeError(f"the {variant} job did not finish: {watcher.job}")
    wall = watcher.done_at - submitted
    times = [t for t, _, _ in watcher.arrivals]
    marks = [*times, watcher.done_at]
    gap = max((b - a for a, b in zip(marks, marks[1:])), default=0.0)
    status = farm.submit.call("jobs.status", watcher.job["id"])
    return {"variant": variant, "wall_s": wall, "first_pixels_s": times[0] - submitted,
            "first_final_rows_s": next(t for t, kind, _ in watcher.arrivals if kind == "rows") - submitted,
            "final_deliveries": sum(1 for _, kind, _ in watcher.arrivals if kind == "rows"),
            "longest_gap_s": gap, "longest_gap_fraction": gap / wall, "strips": status["strips_total"],
            "preview": status.get("preview", ""),
            "arrivals_s": [[round(t - submitted, 2), kind, n] for t, kind, n in watcher.arrivals],
            "strip_rows": [[u["row_start"], u["row_end"], round(u.get("seconds", 0.0), 2)] for u in status["strips"]
                           if u["kind"] == "rows"]}


def scene_arguments(doc: str) -> argparse.ArgumentParser:
    """A bench's parser with the scene, its size and POV-Ray options (chess2 640x480 +A0.3 by default)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="advanced/chess2.pov", help="a scene under " + str(SCENES))
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--option", action="append", help="POV-Ray option (default +A0.3)")
    return parser


def main() -> int:
    parser = scene_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--save", type=Path, default=ROOT / "bench" / "results" / "viewer_bars.json")
    args = parser.parse_args()
    args.option = args.option or ["+A0.3"]
    scene = SCENES / args.scene
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="povfarm-bars-") as tmp:
        farm = Farm(Path(tmp), args.nodes)
        try:
            digest = upload(farm.submit, scene)
            for round_ in range(args.rounds):
                for variant in (list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]):
                    runs.append(one_run(farm, digest, scene, args, variant))
                    r = runs[-1]
                    print(f"round {round_ + 1} {variant:6s}: wall {r['wall_s']:.2f} s, first pixels "
                          f"{r['first_pixels_s']:.2f} s, first final rows {r['first_final_rows_s']:.2f} s, "
                          f"{r['final_deliveries']} deliveries, longest gap {r['longest_gap_s']:.2f} s "
                          f"({r['longest_gap_fraction'] * 100:.0f}%), {r['strips']} strips", flush=True)
        finally:
            farm.stop()
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {key: statistics.median(r[key] for r in mine) for key in (
            "wall_s", "first_pixels_s", "first_final_rows_s", "final_deliveries", "longest_gap_fraction", "strips")}
    print(f"\n{args.scene} {args.width}x{args.height} {' '.join(args.option)}, {args.nodes} nodes, medians of "
          f"{args.rounds}:")
    print("| variant | wall s | first pixels s (<= 3) | first final rows s | final deliveries (>= 8) | "
          "longest gap (<= 25%) | strips |\n|---|---|---|---|---|---|---|")
    for variant, s in summary.items():
        print(f"| {variant} | {s['wall_s']:.2f} | {s['first_pixels_s']:.2f} | {s['first_final_rows_s']:.2f} | "
              f"{s['final_deliveries']:.0f} | {s['longest_gap_fraction'] * 100:.0f}% | {s['strips']:.0f} |")
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps({"scene": args.scene, "size": [args.width, args.height],
                                     "options": args.option, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                   time.gmtime()),
                                     "loadavg": os.getloadavg(), "runs": runs, "medians": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
