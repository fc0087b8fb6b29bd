"""Live pixels as a client sees them: how soon, how often, the longest wait, and what watching costs.

A controller and two nodes standing for separate boxes (`--machine boxA` / `boxB`, `--threads 1`) run here on
loopback. A client follows `viewer.watch` (the newest job, with `live_cursor`) from before the submit, as
`povfarm viewer` does, and notes each moment new pixels arrive (final rows, a preview or live blocks):

- first pixels: seconds from jobs.submit returning to the first pixels at the client (bar: <= 2 s);
- moments: the distinct tenths of a second in which new pixels arrived (bar: >= 100);
- longest stretch: the longest time without new pixels, from the submit to the job's end seen by the
  client, as a share of that time (bar: <= 5%; for the animation <= 10%);
- the stored image against `povray`'s own render of the scene (bit-identical);
- where the longest stretch lies: "start" (before the first pixels), "end" (after the last) or "between";
  and the longest stretch after the first pixels (the start has its own bar: first pixels within 2 s; the
  start alone is POV-Ray's own start-up, 0.29 s here, a tenth of clockd's 3-s job);
- the cost of watching: in each round the same job unwatched (no viewer) and watched, alternating which goes
  first; wall time from the submit to the job done, and the CPU time of the job's POV-Ray runs (as each
  says) and of the two node processes (which the box's other work moves far less than the wall time); the
  ratio of the medians, and the median of each round's own ratio (bar: watched at most 3% dearer). The
  second is the steadier on a shared box: the two runs of a round meet the same load, where the load
  moves between rounds (one busy round moves both medians). A viewer.watch call counts as watching for 45 s (the
  controller's memory of a long poll), so an unwatched run waits that long after the last one.
- with `--against DIR` (a tree of another version, `git archive`), clockd's rounds also run on that version's
  farm, up beside this one and idle while it works, the two in alternating order: each round meets one load.

    python bench/live_bars.py                     # chess2 640x480 +A0.3, 3 rounds, then clockd 20 frames
    python bench/live_bars.py --rounds 1 --no-animation
    python bench/live_bars.py --rounds 0 --animation-rounds 5      # clockd alone, 5 times
    python bench/live_bars.py --rounds 0 --animation-rounds 12 --against /tmp/base   # beside another version
    python bench/live_bars.py --rounds 5 --width 320 --height 240 --no-animation    # the cost, shorter jobs

All traffic is to 127.0.0.1; every process started here is stopped at the end. Results also go to
bench/results/live_bars.json.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from viewer_bars import ROOT, SCENES, Farm, scene_arguments, upload  # noqa: E402

from farm.client import Client  # noqa: E402
from farm.service.watchers import POLL_MEMORY  # noqa: E402
from farm.states import ENDED  # noqa: E402

CURSOR_END = 2**31 - 1
MOMENT = 0.1            # seconds: new pixels within one tenth are one moment
CPU_SECONDS = re.compile(r"with ([0-9.]+) CPU-seconds total")
CLOCKD = "animations/clockd/clockd.pov"
CLOCKD_ANIMATION = {"first": 1, "last": 20, "initial_clock": 0.0, "final_clock": 1.0, "cyclic": True}


class LiveWatcher(threading.Thread):
    """Follows the newest job through viewer.watch with live blocks; jobs up to `after` are old."""

    def __init__(self, client: Client, after: int):
        super().__init__(daemon=True)
        self.client, self.after = client, after
        self.arrivals: list[tuple[float, int, int]] = []     # (time, final pieces, live blocks)
        self.done_at: float | None = None
        self.job: dict = {}
        self.last_call = time.monotonic()

    def run(self) -> None:
        cursor, live_cursor = CURSOR_END, 0
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            # Once the job is known, watched by its id: following "the newest job", the call after the one that
            # brought the last rows would wait out its timeout for a newer job before saying this one is done.
            known = self.job.get("id", 0) if cursor != CURSOR_END else 0
            reply = self.client.call("viewer.watch", known, cursor, 5, live_cursor)
            now = self.last_call = time.monotonic()
            job = reply["job"]
            if not job or job["id"] <= self.after:
                cursor, live_cursor = CURSOR_END, reply.get("live_cursor", 0)
                continue
            if job["id"] != self.job.get("id") and cursor == CURSOR_END and not reply["strips"]:
                self.job, cursor = job, 0       # the new job, asked for with the old job's cursor: from the start
            else:
                self.job, cursor = job, reply["cursor"]
            live_cursor = reply.get("live_cursor", live_cursor)
            if reply["strips"] or reply.get("live"):
                self.arrivals.append((now, len(reply["strips"]), len(reply.get("live", []))))
            if job["state"] in ENDED and not reply["strips"] and cursor != CURSOR_END:
                self.done_at = now
                return


def node_cpu(farm: Farm) -> float:
    """CPU seconds the node processes themselves have used (POV-Ray runs in bubblewrap's process tree, whose
    times do not reach the node's: `povray_cpu` counts them)."""
    total = 0
    for process in farm.processes[1:]:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()
        total += sum(int(value) for value in fields[11:13])     # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def povray_cpu(farm: Farm, job_id: int) -> float:
    """CPU seconds the job's POV-Ray runs took, as each said on stderr ("using 1 thread(s) with 1.234
    CPU-seconds total" for each stage), from the job's logs (jobs.log), previews included."""
    total, cursor = 0.0, 0
    while True:
        reply = farm.submit.call("jobs.log", job_id, {"after": cursor})
        for entry in reply["logs"]:
            total += sum(float(found) for _, text in entry["lines"] for found in CPU_SECONDS.findall(text))
        cursor = reply["cursor"]
        if not reply["more"]:
            return total


def where(marks: list[float]) -> str:
    """Where the longest stretch between `marks` (submit, arrivals..., done) lies."""
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    index = gaps.index(max(gaps))
    return "start" if index == 0 else "end" if index == len(gaps) - 1 else f"between, at {marks[index] - marks[0]:.2f} s"


def newest_job(farm: Farm) -> int:
    return max((job["id"] for job in farm.submit.call("jobs.list")), default=0)


def watched_run(farm: Farm, spec: dict) -> dict:
    viewer = Client(farm.url, timeout=60, token=farm.tokens["view"])
    watcher = LiveWatcher(viewer, newest_job(farm))
    watcher.start()
    time.sleep(0.5)                       # the client is waiting before the submit, as a viewer would
    cpu = node_cpu(farm)
    job_id = farm.submit.call("jobs.submit", spec)
    submitted = time.monotonic()
    watcher.join(1800)
    cpu = node_cpu(farm) - cpu
    if watcher.done_at is None or watcher.job.get("state") != "done":
        raise RuntimeError(f"the watched job did not finish: {watcher.job}")
    wall = watcher.done_at - submitted
    times = [t for t, _, _ in watcher.arrivals]
    marks = [submitted, *times, watcher.done_at]
    gap = max(b - a for a, b in zip(marks, marks[1:]))
    after_first = max(b - a for a, b in zip(marks[1:], marks[2:]))    # the start is first_pixels_s (<= 2 s)
    return {"job": job_id, "wall_s": wall, "cpu_s": cpu + povray_cpu(farm, job_id), "node_cpu_s": cpu,
            "first_pixels_s": times[0] - submitted,
            "moments": len({int((t - submitted) / MOMENT) for t in times}), "replies_with_pixels": len(times),
            "live_blocks": sum(n for _, _, n in watcher.arrivals), "longest_stretch_s": gap,
            "longest_stretch_share": gap / wall, "longest_stretch_at": where(marks),
            "longest_after_first_s": after_first, "longest_after_first_share": after_first / wall,
            "watch_ended": watcher.last_call,
            "arrivals_s": [[round(t - submitted, 2), rows, live] for t, rows, live in watcher.arrivals]}


def unwatched_run(farm: Farm, spec: dict) -> dict:
    cpu = node_cpu(farm)
    job_id = farm.submit.call("jobs.submit", spec)
    submitted = time.monotonic()
    while True:
        job = farm.submit.call("jobs.wait", job_id, 10)
        if job["state"] in ENDED:
            break
    if job["state"] != "done":
        raise RuntimeError(f"the unwatched job did not finish: {job}")
    wall, cpu = time.monotonic() - submitted, node_cpu(farm) - cpu
    return {"job": job_id, "wall_s": wall, "cpu_s": cpu + povray_cpu(farm, job_id), "node_cpu_s": cpu}


def same_as_povray(farm: Farm, job_id: int, scene: Path, args, tmp: Path) -> bool:
    ours = farm.submit.call("jobs.fetch", job_id).data
    native = tmp / "native.png"
    if not native.exists():
        subprocess.run(["povray", f"+I{scene.name}", f"+W{args.width}", f"+H{args.height}", *args.option, "-D",
                        f"+O{native}", "+FN"], cwd=scene.parent, check=True, capture_output=True, timeout=900)
    from PIL import Image
    import io
    with Image.open(io.BytesIO(ours)) as a, Image.open(native) as b:
        return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()


def still_rounds(farm: Farm, args, scene: Path, tmp: Path, result: dict) -> None:
    """`args.rounds` rounds of the still, unwatched and watched in alternating order."""
    spec = {"bundle": upload(farm.submit, scene), "scene": scene.name, "width": args.width,
            "height": args.height, "options": args.option, "name": "live-bars"}
    last_watch = 0.0
    for round_ in range(args.rounds):
        for kind in (("unwatched", "watched") if round_ % 2 == 0 else ("watched", "unwatched")):
            if kind == "unwatched":
                time.sleep(max(0.0, last_watch + POLL_MEMORY + 1 - time.monotonic()))
                run = unwatched_run(farm, spec)
            else:
                run = watched_run(farm, spec)
                last_watch = run["watch_ended"]
                run["same_as_povray"] = same_as_povray(farm, run["job"], scene, args, tmp)
            result[kind].append(run)
            print(f"round {round_ + 1} {kind}: wall {run['wall_s']:.2f} s, CPU {run['cpu_s']:.2f} s (nodes "
                  f"{run['node_cpu_s']:.2f} s), load {os.getloadavg()[0]:.1f}" + (
                f", first pixels {run['first_pixels_s']:.2f} s, {run['moments']} moments, longest stretch "
                f"{run['longest_stretch_s']:.2f} s ({run['longest_stretch_share'] * 100:.1f}%, "
                f"{run['longest_stretch_at']}), {run['live_blocks']} live blocks, same as povray: "
                f"{run['same_as_povray']}" if kind == "watched" else ""), flush=True)


def animation_rounds(farm: Farm, rounds: int, result: dict, base: Farm | None = None) -> None:
    """clockd, 20 frames 320x240, watched from before the submit, `rounds` times; with `base` (another tree's
    farm, up beside this one and idle meanwhile) each round runs it too, the two in alternating order."""
    clockd = SCENES / CLOCKD
    farms = {"animation": farm, **({"animation_base": base} if base else {})}
    specs = {key: {"bundle": upload(one.submit, clockd), "scene": clockd.name, "width": 320, "height": 240,
                   "options": ["+A0.3"], "animation": CLOCKD_ANIMATION, "name": "live-bars-clockd"}
             for key, one in farms.items()}
    for key in farms:
        result[key] = []
        if base:
            watched_run(farms[key], specs[key])     # each farm's first job once unmeasured: both start warm
    for round_ in range(rounds):
        for key in (list(farms) if round_ % 2 == 0 else list(farms)[::-1]):
            run = watched_run(farms[key], specs[key])
            result[key].append(run)
            print(f"{'base ' if key != 'animation' else ''}clockd 20 frames 320x240: wall {run['wall_s']:.2f} s, "
                  f"first pixels {run['first_pixels_s']:.2f} s, {run['moments']} moments, longest stretch "
                  f"{run['longest_stretch_s']:.2f} s ({run['longest_stretch_share'] * 100:.1f}%, "
                  f"{run['longest_stretch_at']}), after the first pixels {run['longest_after_first_s']:.2f} s "
                  f"({run['longest_after_first_share'] * 100:.1f}%), node CPU {run['node_cpu_s']:.2f} s, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    for key in farms if rounds else ():
        for share, what in (("longest_stretch_share", "from the submit"),
                            ("longest_after_first_share", "after the first pixels")):
            shares = sorted(run[share] for run in result[key])
            print(f"{'base ' if key != 'animation' else ''}clockd: longest stretch {what}, median "
                  f"{statistics.median(shares) * 100:.1f}% (range {shares[0] * 100:.1f}-{shares[-1] * 100:.1f}%; "
                  f"bar <= 10%); wall {statistics.median(run['wall_s'] for run in result[key]):.2f} s, "
                  f"first pixels {statistics.median(run['first_pixels_s'] for run in result[key]):.2f} s, "
                  f"moments {statistics.median(run['moments'] for run in result[key]):.0f}, node CPU "
                  f"{statistics.median(run['node_cpu_s'] for run in result[key]):.2f} s")
    if base and rounds:
        smaller = sum(ours["longest_stretch_share"] < theirs["longest_stretch_share"]
                      for ours, theirs in zip(result["animation"], result["animation_base"]))
        print(f"clockd: this tree's longest stretch the smaller in {smaller} of {rounds} rounds")


def summary(args, result: dict) -> None:
    """The still's medians and the cost of watching, as a README table row."""
    watched, unwatched = result["watched"], result["unwatched"]
    medians = {key: statistics.median(run[key] for run in watched) for key in (
        "wall_s", "cpu_s", "first_pixels_s", "moments", "longest_stretch_share")}
    medians["unwatched_wall_s"] = statistics.median(run["wall_s"] for run in unwatched)
    medians["unwatched_cpu_s"] = statistics.median(run["cpu_s"] for run in unwatched)
    medians["node_cpu_s"] = statistics.median(run["node_cpu_s"] for run in watched)
    medians["unwatched_node_cpu_s"] = statistics.median(run["node_cpu_s"] for run in unwatched)
    medians["cost"] = medians["wall_s"] / medians["unwatched_wall_s"] - 1
    medians["cpu_cost"] = medians["cpu_s"] / medians["unwatched_cpu_s"] - 1
    pairs = list(zip(watched, unwatched))
    medians["paired_cost"] = statistics.median(w["wall_s"] / u["wall_s"] for w, u in pairs) - 1
    medians["paired_cpu_cost"] = statistics.median(w["cpu_s"] / u["cpu_s"] for w, u in pairs) - 1
    result["medians"] = medians
    print(f"\n{args.scene} {args.width}x{args.height} {' '.join(args.option)}, boxA + boxB, 1 thread each, "
          f"medians of {args.rounds} (load {result['loadavg_before'][0]:.1f} before, "
          f"{result['loadavg_after'][0]:.1f} after):")
    print("| first pixels (<= 2 s) | moments (>= 100) | longest stretch (<= 5%) | same as povray | "
          "watched / unwatched wall | watched / unwatched CPU (POV-Ray and nodes) |\n|---|---|---|---|---|---|")
    print(f"| {medians['first_pixels_s']:.2f} s | {medians['moments']:.0f} | "
          f"{medians['longest_stretch_share'] * 100:.1f}% | {all(run['same_as_povray'] for run in watched)} | "
          f"{medians['wall_s']:.1f} s / {medians['unwatched_wall_s']:.1f} s ({medians['cost'] * 100:+.1f}%) | "
          f"{medians['cpu_s']:.1f} s / {medians['unwatched_cpu_s']:.1f} s ({medians['cpu_cost'] * 100:+.1f}%) |")
    print(f"the node processes' own CPU (reading, encoding and sending live blocks among the rest): "
          f"{medians['node_cpu_s']:.2f} s watched, {medians['unwatched_node_cpu_s']:.2f} s unwatched")
    print(f"each round's watched / unwatched, median: wall {medians['paired_cost'] * 100:+.1f}%, "
          f"CPU {medians['paired_cpu_cost'] * 100:+.1f}%")


def main() -> int:
    parser = scene_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-animation", action="store_true", help="skip clockd (20 frames, 320x240)")
    parser.add_argument("--animation-rounds", type=int, default=1, help="clockd runs (default 1)")
    parser.add_argument("--save", type=Path, default=ROOT / "bench" / "results" / "live_bars.json")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another tree of the farm (git archive of a commit): its clockd runs beside ours")
    args = parser.parse_args()
    args.option = args.option or ["+A0.3"]
    scene = SCENES / args.scene
    result: dict = {"scene": args.scene, "size": [args.width, args.height], "options": args.option,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_before": os.getloadavg(),
                    "watched": [], "unwatched": []}
    with tempfile.TemporaryDirectory(prefix="povfarm-live-") as tmp:
        boxes = [["--machine", "boxA", "--threads", "1"], ["--machine", "boxB", "--threads", "1"]]
        farm, base = Farm(Path(tmp), 2, boxes), None
        try:
            still_rounds(farm, args, scene, Path(tmp), result)
            if args.against and not args.no_animation:
                (Path(tmp) / "base").mkdir()
                base = Farm(Path(tmp) / "base", 2, boxes, root=args.against.resolve())
            animation_rounds(farm, 0 if args.no_animation else args.animation_rounds, result, base)
        finally:
            farm.stop()
            if base:
                base.stop()
    result["loadavg_after"] = os.getloadavg()
    if result["watched"]:
        summary(args, result)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
