"""Farm wall time against POV-Ray's own threading, on this machine, in one run.

For each case it times native `povray +WT<cores>` against the farm two ways, alternating the order each
round, and reports the medians and the ratio farm / native:
- two boxes (the main figure): a controller and two node processes standing for separate one-thread boxes
  (`--machine boxA` / `boxB`, `--threads 1`, bench/boxes.py), kept up for the whole run, each job submitted
  with `povfarm submit`; the controller plans for a real farm, so a still is cut into strips;
- one box: `povfarm render --nodes 2`, whose nodes share the controller's box (the one-box plan: a still
  goes out whole unless a viewer watches).
With `--pinned` each two-box node and its POV-Ray are held to a core of their own (`taskset`): separate
one-core boxes, where a box with nothing left cannot lend its core to the other's processes. With `--latency MS` the cases marked for it (chess2 and the animation) also run on two boxes behind a proxy
that delays each direction by MS (bench/proxy.py). For the two-box runs it reads each unit's profile from the
nodes' logs: the slot's wait for the unit, POV-Ray's start-up, parse, photons, radiosity and trace, the
node's own part, and the delivery. Results go to bench/results/latest.json and latest.md.

    python bench/run.py                      # every case, 3 rounds
    python bench/run.py --quick              # small sizes, one round: a couple of minutes
    python bench/run.py --only chess2 --repeat 5 --latency 150
    python bench/run.py --only chess2,balcony --against /tmp/previous --preview   # more variants, same rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from boxes import Boxes, profile_summary  # noqa: E402

SCENES = Path("/usr/share/povray-3.7/scenes")
CORES = os.cpu_count() or 1
LATENCY_CASES = ("chess2", "camera2-30f")   # the cases also run behind the delaying proxy (--latency)

# name: (scene, ini or None, width, height, options, note)
CASES = {
    "glasschess": ("advanced/glasschess/glasschess.pov", None, 640, 480, [], "plain"),
    "chess2": ("advanced/chess2.pov", None, 640, 480, ["+A0.3"], "plain, +A0.3"),
    "stackertransp": ("advanced/blocks/stackertransp.pov", None, 640, 480, [], "plain"),
    "grenadine": ("advanced/grenadine/grenadine.pov", None, 640, 480, [], "photons"),
    "balcony": ("advanced/balcony/balcony.pov", None, 640, 480, [], "radiosity"),
    "camera2-30f": ("animations/camera2/camera2.pov", "animations/camera2/camera2.ini", 160, 120, [],
                    "30-frame animation"),
}


def quick(case):
    """The case at half the size (an animation as it is): for --quick."""
    scene, ini, width, height, options, note = case
    return (scene, ini, width, height, options, note) if ini else (scene, ini, width // 2, height // 2, options, note)


def native_command(case, out: Path) -> tuple[list[str], Path]:
    scene, ini, width, height, options, _ = case
    path = SCENES / scene
    argv = ["povray", *([Path(ini).name] if ini else []), f"+I{path.name}", f"+W{width}", f"+H{height}",
            f"+WT{CORES}", *options, "-D", f"+O{out / (path.stem + '.png')}"]
    return argv, path.parent


def job_arguments(case, out: Path) -> list[str]:
    """The scene, size, options and output of a farm run of the case."""
    scene, ini, width, height, options, _ = case
    argv = [str(SCENES / scene), "--width", str(width), "--height", str(height),
            "--output", str(out if ini else out / "farm.png")]
    if ini:
        argv += ["--ini", str(SCENES / ini)]
    for option in options:
        argv += ["--option", option]
    return argv


def farm_command(case, nodes: int, out: Path, root: Path = ROOT, extra: tuple[str, ...] = ()) -> tuple[list[str], Path]:
    """`povfarm render` of the case with the farm of the checkout at `root` (its own `farm` package)."""
    argv = [sys.executable, "-m", "farm", "--log-level", "INFO", "render", *job_arguments(case, out),
            "--nodes", str(nodes), *extra]
    return argv, root


def variants(against: Path | None, preview: bool) -> dict[str, tuple[int, Path, tuple[str, ...]]]:
    """The one-box runs of a round: name -> (nodes, checkout, extra flags)."""
    runs = {"one box": (2, ROOT, ())}
    if preview:
        runs["one box preview"] = (2, ROOT, ("--preview",))
    if against is not None:
        runs["base one box"] = (2, against, ())
    return runs


UNIT_LINES = {"strips": re.compile(r"job \d+ unit \d+ done by"), "preview": re.compile(r"preview done by"),
              "pretrace": re.compile(r"radiosity pre-pass done by")}


def timed(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    """Wall seconds, and what the command wrote on stderr."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr[-2000:]}")
    return elapsed, done.stderr


def one_run(kind: str, case, out: Path, runs: dict, farms: dict[str, Boxes]) -> tuple[float, dict, tuple | None]:
    """(seconds, units, (profiles, deliveries) for a two-box run) of one run of the case."""
    if kind == "native":
        argv, cwd = native_command(case, out)
        return timed(argv, cwd)[0], {}, None
    if kind in farms:
        boxes = farms[kind]
        marks = boxes.marks()
        seconds, _ = timed(boxes.command(job_arguments(case, out)), ROOT, boxes.env)
        time.sleep(0.3)     # the nodes' last log lines (the deliveries) are written as the job ends
        units, profiles, delivered = boxes.since(marks)
        return seconds, units, (profiles, delivered)
    nodes, root, extra = runs[kind]
    seconds, stderr = timed(*farm_command(case, nodes, out, root, extra))
    return seconds, {kind: len(pattern.findall(stderr)) for kind, pattern in UNIT_LINES.items()}, None


def run_case(name: str, case, repeat: int, runs: dict, farms: dict[str, Boxes]) -> dict:
    order = ["native", *(kind for kind in farms if " ms" not in kind or name in LATENCY_CASES), *runs]
    times: dict[str, list[float]] = {kind: [] for kind in order}
    units: dict[str, list[dict[str, int]]] = {kind: [] for kind in order if kind != "native"}
    profiles: dict[str, list] = {kind: [] for kind in order if kind in farms}
    for round_ in range(repeat):
        for kind in (order if round_ % 2 == 0 else list(reversed(order))):
            out = Path(tempfile.mkdtemp(prefix="povfarm-bench-"))
            try:
                seconds, counted, profile = one_run(kind, case, out, runs, farms)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            times[kind].append(seconds)
            if kind != "native":
                units[kind].append(counted)
            if profile is not None:
                profiles[kind].append(profile)
        print(f"  {name} round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
              flush=True)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    return {"case": name, "note": case[5], "size": f"{case[2]}x{case[3]}", "times": times, "median": medians,
            "units": units, "ratios": {kind: medians[kind] / medians["native"] for kind in order[1:]},
            "profile": {kind: profile_summary(runs_) for kind, runs_ in profiles.items()}}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    version = subprocess.run(["povray", "--version"], capture_output=True, text=True).stderr.splitlines()
    return {"cores": CORES, "cpu": cpu, "python": platform.python_version(), "system": platform.platform(),
            "povray": next((line for line in version if "POV-Ray" in line), ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg()}


def markdown(results: list[dict], info: dict) -> str:
    kinds = [kind for kind in results[0]["ratios"]]
    for result in results[1:]:
        kinds += [kind for kind in result["ratios"] if kind not in kinds]
    lines = [f"Machine: {info['cores']} cores, {info['cpu']}, {info['system']}, {info['povray'].strip()}, "
             f"{info['date']}, load average {info['load'][0]:.1f} at the start, {info['load_end'][0]:.1f} at "
             f"the end. Medians of {len(results[0]['times']['native'])} runs, wall seconds; ratio = farm / native "
             f"`povray +WT{CORES}`." + (" The two boxes' nodes were pinned to a core each (taskset)."
                                         if info.get("pinned") else ""), "",
             "| case | kind | size | native | " + " | ".join(kinds) + " | units |",
             "|---|---|---|---|" + "---|" * len(kinds) + "---|"]
    for r in results:
        cells = [f"{r['median'][kind]:.2f} (**{r['ratios'][kind]:.3f}**)" if kind in r["ratios"] else ""
                 for kind in kinds]
        lines.append(f"| {r['case']} | {r['note']} | {r['size']} | {r['median']['native']:.2f} | "
                     + " | ".join(cells) + " | " + " / ".join(_units_text(r["units"][kind]) for kind in kinds
                                                         if kind in r["units"]) + " |")
    lines += ["", "Units: strips per run (the range over the runs, in the order of the columns), + radiosity "
              "pre-passes / previews where the job had them.", "",
              "Per unit on the two-box farms (means over every unit of every run, seconds): the slot's wait for "
              "the unit after its previous one, POV-Ray's start-up (its wall time less the stages it reports), "
              "parse, photons, radiosity, trace, the node's own part (scene, rows), and the delivery:", "",
              "| case | farm | units | waited | start-up | parse | photons | radiosity | trace | node | delivery |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for kind, p in r["profile"].items():
            if p:
                lines.append(f"| {r['case']} | {kind} | {p['units']:.1f} | " + " | ".join(
                    f"{p[field]:.2f}" for field in ("waited", "start-up", "parse", "photons", "radiosity",
                                                    "trace", "node", "delivery")) + " |")
    if any("base" in kind for kind in kinds):
        lines += ["", f"base = the farm of {info.get('against', '')}, run the same way."]
    return "\n".join(lines) + "\n"


def _units_text(runs: list[dict[str, int]]) -> str:
    strips = sorted(run.get("strips", 0) for run in runs)
    text = f"{strips[0]}" if strips[0] == strips[-1] else f"{strips[0]}-{strips[-1]}"
    for kind in ("preview", "pretrace"):
        most = max(run.get(kind, 0) for run in runs)
        if most:
            text += f" + {most} {kind}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, help="rounds per case (default 3; 1 with --quick)")
    parser.add_argument("--only", help="comma-separated case names: " + ", ".join(CASES))
    parser.add_argument("--quick", action="store_true", help="stills at half the size, one round: a couple of "
                                                             "minutes")
    parser.add_argument("--latency", type=float, metavar="MS", help="also run chess2 and the animation on two "
                        "boxes behind a proxy that delays each direction by MS milliseconds")
    parser.add_argument("--save", default=str(ROOT / "bench" / "results"), help="folder for the results")
    parser.add_argument("--against", type=Path, help="another checkout whose farms (one box, two boxes) run in "
                                                     "the same rounds, e.g. an export of the previous version")
    parser.add_argument("--preview", action="store_true", help="also run the one-box farm with --preview, to "
                                                             "measure what the preview costs")
    parser.add_argument("--pinned", action="store_true", help="hold each two-box node (and its POV-Ray) to a core "
                                                            "of its own with taskset, as on separate boxes")
    args = parser.parse_args()
    repeat = args.repeat or (1 if args.quick else 3)
    names = args.only.split(",") if args.only else list(CASES)
    info = machine()
    if args.against:
        info["against"] = str(args.against.resolve())
    info["pinned"] = args.pinned
    runs = variants(args.against.resolve() if args.against else None, args.preview)
    work = Path(tempfile.mkdtemp(prefix="povfarm-boxes-"))
    farms: dict[str, Boxes] = {}
    try:
        pinned = args.pinned
        farms["two boxes"] = Boxes(work / "direct", pinned=pinned)
        if args.against:
            farms["base two boxes"] = Boxes(work / "base", root=args.against.resolve(), pinned=pinned)
        if args.latency:
            farms[f"two boxes +{args.latency:g} ms"] = Boxes(work / "latency", latency_ms=args.latency, pinned=pinned)
            if args.against:
                farms[f"base two boxes +{args.latency:g} ms"] = Boxes(work / "base-latency", latency_ms=args.latency,
                                                                       root=args.against.resolve(), pinned=pinned)
        results = []
        for name in names:
            print(f"{name}:", flush=True)
            case = quick(CASES[name]) if args.quick else CASES[name]
            results.append(run_case(name, case, repeat, runs, farms))
    finally:
        for boxes in farms.values():
            boxes.stop()
        shutil.rmtree(work, ignore_errors=True)
    info["load_end"] = os.getloadavg()
    table = markdown(results, info)
    print("\n" + table)
    save = Path(args.save)
    save.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    (save / f"{stem}.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    (save / f"{stem}.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
