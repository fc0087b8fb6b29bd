"""Farm wall time against POV-Ray's own threading, on this machine, in one run.

For each case it times native `povray +WT<cores>` and `povfarm render --nodes 1` / `--nodes 2`
(same scene, size and options), alternating the order each round, and reports the medians and the
ratio farm / native, and how many units each farm run used (strips, plus a preview and radiosity
pre-passes where the job had them), counted from the controller's log lines. Results go to
bench/results/latest.json and latest.md.

    python bench/run.py                      # every case, 3 rounds
    python bench/run.py --only chess2 --repeat 5
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
SCENES = Path("/usr/share/povray-3.7/scenes")
CORES = os.cpu_count() or 1

# name: (scene, ini or None, width, height, options, note)
CASES = {
    "glasschess": ("advanced/glasschess/glasschess.pov", None, 640, 480, [], "plain"),
    "chess2": ("advanced/chess2.pov", None, 640, 480, [], "plain"),
    "stackertransp": ("advanced/blocks/stackertransp.pov", None, 640, 480, [], "plain"),
    "grenadine": ("advanced/grenadine/grenadine.pov", None, 640, 480, [], "photons"),
    "balcony": ("advanced/balcony/balcony.pov", None, 640, 480, [], "radiosity"),
    "camera2-30f": ("animations/camera2/camera2.pov", "animations/camera2/camera2.ini", 160, 120, [],
                    "30-frame animation"),
}


def native_command(case, out: Path) -> tuple[list[str], Path]:
    scene, ini, width, height, options, _ = case
    path = SCENES / scene
    argv = ["povray", *([Path(ini).name] if ini else []), f"+I{path.name}", f"+W{width}", f"+H{height}",
            f"+WT{CORES}", *options, "-D", f"+O{out / (path.stem + '.png')}"]
    return argv, path.parent


def farm_command(case, nodes: int, out: Path, root: Path = ROOT, extra: tuple[str, ...] = ()) -> tuple[list[str], Path]:
    """`povfarm render` of the case with the farm of the checkout at `root` (its own `farm` package)."""
    scene, ini, width, height, options, _ = case
    path = SCENES / scene
    target = out if ini else out / "farm.png"
    argv = [sys.executable, "-m", "farm", "--log-level", "INFO", "render", str(path), "--nodes", str(nodes),
            "--width", str(width), "--height", str(height), "--output", str(target), *extra]
    if ini:
        argv += ["--ini", str(SCENES / ini)]
    for option in options:
        argv += ["--option", option]
    return argv, root


def variants(against: Path | None, preview: bool) -> dict[str, tuple[int, Path, tuple[str, ...]]]:
    """The farm runs of a round: name -> (nodes, checkout, extra flags)."""
    runs = {"farm1": (1, ROOT, ()), "farm2": (2, ROOT, ())}
    if preview:
        runs.update({"farm1 preview": (1, ROOT, ("--preview",)), "farm2 preview": (2, ROOT, ("--preview",))})
    if against is not None:
        runs.update({"base1": (1, against, ()), "base2": (2, against, ())})
    return runs


UNIT_LINES = {"strips": re.compile(r"job \d+ unit \d+ done by"), "preview": re.compile(r"preview done by"),
              "pretrace": re.compile(r"radiosity pre-pass done by")}


def timed(argv: list[str], cwd: Path) -> tuple[float, dict[str, int]]:
    """Wall seconds, and the units the controller logged as done (a farm run at INFO)."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr[-2000:]}")
    return elapsed, {kind: len(pattern.findall(done.stderr)) for kind, pattern in UNIT_LINES.items()}


def run_case(name: str, case, repeat: int, runs: dict[str, tuple[int, Path, tuple[str, ...]]]) -> dict:
    order = ["native", *runs]
    times: dict[str, list[float]] = {kind: [] for kind in order}
    units: dict[str, list[dict[str, int]]] = {kind: [] for kind in runs}
    for round_ in range(repeat):
        for kind in (order if round_ % 2 == 0 else list(reversed(order))):
            out = Path(tempfile.mkdtemp(prefix="povfarm-bench-"))
            try:
                if kind == "native":
                    argv, cwd = native_command(case, out)
                else:
                    nodes, root, extra = runs[kind]
                    argv, cwd = farm_command(case, nodes, out, root, extra)
                seconds, counted = timed(argv, cwd)
                times[kind].append(seconds)
                if kind != "native":
                    units[kind].append(counted)
            finally:
                shutil.rmtree(out, ignore_errors=True)
        print(f"  {name} round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
              flush=True)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    return {"case": name, "note": case[5], "times": times, "median": medians, "units": units,
            "ratios": {kind: medians[kind] / medians["native"] for kind in runs},
            "ratio_nodes1": medians["farm1"] / medians["native"],
            "ratio_nodes2": medians["farm2"] / medians["native"]}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    version = subprocess.run(["povray", "--version"], capture_output=True, text=True).stderr.splitlines()
    return {"cores": CORES, "cpu": cpu, "python": platform.python_version(), "system": platform.platform(),
            "povray": next((line for line in version if "POV-Ray" in line), ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(results: list[dict], info: dict) -> str:
    lines = [f"Machine: {info['cores']} cores, {info['cpu']}, {info['system']}, {info['povray'].strip()}, "
             f"{info['date']}. Medians of {len(results[0]['times']['native'])} runs, wall seconds.", "",
             "| case | kind | native +WT%d | farm 1 node | farm 2 nodes | ratio 1 node | ratio 2 nodes | "
             "units 1 node | units 2 nodes |" % CORES,
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["median"]
        lines.append(f"| {r['case']} | {r['note']} | {m['native']:.2f} | {m['farm1']:.2f} | {m['farm2']:.2f} | "
                     f"{r['ratio_nodes1']:.3f} | {r['ratio_nodes2']:.3f} | {_units_text(r['units']['farm1'])} | "
                     f"{_units_text(r['units']['farm2'])} |")
    lines += ["", "Units: strips per run (the range over the runs), + a preview / + radiosity pre-passes where "
              "the job had them."]
    others = [kind for kind in results[0]["ratios"] if kind not in ("farm1", "farm2")]
    if others:
        lines += ["", "Side by side in the same rounds (farm / native, medians; units over the runs):", "",
                  "| case | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for r in results:
            lines.append(f"| {r['case']} | " + " | ".join(
                f"{r['ratios'][kind]:.3f} ({_units_text(r['units'][kind])})" for kind in others) + " |")
        if "base1" in others:
            lines += ["", f"base = the farm of {info.get('against', '')}, run the same way."]
    return "\n".join(lines) + "\n"


def _units_text(runs: list[dict[str, int]]) -> str:
    strips = sorted(run["strips"] for run in runs)
    text = f"{strips[0]}" if strips[0] == strips[-1] else f"{strips[0]}-{strips[-1]}"
    for kind in ("preview", "pretrace"):
        most = max(run[kind] for run in runs)
        if most:
            text += f" + {most} {kind}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per case (default 3)")
    parser.add_argument("--only", help="comma-separated case names: " + ", ".join(CASES))
    parser.add_argument("--save", default=str(ROOT / "bench" / "results"), help="folder for the results")
    parser.add_argument("--against", type=Path, help="another checkout whose farm runs in the same rounds "
                                                     "(base1/base2), e.g. an export of the previous version")
    parser.add_argument("--preview", action="store_true", help="also run the farm with --preview, to measure "
                                                             "what the preview costs")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    info = machine()
    if args.against:
        info["against"] = str(args.against.resolve())
    runs = variants(args.against.resolve() if args.against else None, args.preview)
    results = []
    for name in names:
        print(f"{name}:", flush=True)
        results.append(run_case(name, CASES[name], args.repeat, runs))
    table = markdown(results, info)
    print("\n" + table)
    save = Path(args.save)
    save.mkdir(parents=True, exist_ok=True)
    (save / "latest.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    (save / "latest.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
