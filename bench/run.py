"""Farm wall time against POV-Ray's own threading, on this machine, in one run.

For each case it times native `povray +WT<cores>` and `povfarm render --nodes 1` / `--nodes 2`
(same scene, size and options), alternating the order each round, and reports the medians and the
ratio farm / native. Results go to bench/results/latest.json and latest.md.

    python bench/run.py                      # every case, 3 rounds
    python bench/run.py --only chess2 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def farm_command(case, nodes: int, out: Path) -> tuple[list[str], Path]:
    scene, ini, width, height, options, _ = case
    path = SCENES / scene
    target = out if ini else out / "farm.png"
    argv = [sys.executable, "-m", "farm", "render", str(path), "--nodes", str(nodes), "--width", str(width),
            "--height", str(height), "--output", str(target)]
    if ini:
        argv += ["--ini", str(SCENES / ini)]
    for option in options:
        argv += ["--option", option]
    return argv, ROOT


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr[-2000:]}")
    return elapsed


def run_case(name: str, case, repeat: int) -> dict:
    times: dict[str, list[float]] = {"native": [], "farm1": [], "farm2": []}
    order = ["native", "farm1", "farm2"]
    for round_ in range(repeat):
        for kind in (order if round_ % 2 == 0 else list(reversed(order))):
            out = Path(tempfile.mkdtemp(prefix="povfarm-bench-"))
            try:
                if kind == "native":
                    argv, cwd = native_command(case, out)
                else:
                    argv, cwd = farm_command(case, 1 if kind == "farm1" else 2, out)
                times[kind].append(timed(argv, cwd))
            finally:
                shutil.rmtree(out, ignore_errors=True)
        print(f"  {name} round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
              flush=True)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    return {"case": name, "note": case[5], "times": times, "median": medians,
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
             "| case | kind | native +WT%d | farm 1 node | farm 2 nodes | ratio 1 node | ratio 2 nodes |" % CORES,
             "|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["median"]
        lines.append(f"| {r['case']} | {r['note']} | {m['native']:.2f} | {m['farm1']:.2f} | {m['farm2']:.2f} | "
                     f"{r['ratio_nodes1']:.3f} | {r['ratio_nodes2']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per case (default 3)")
    parser.add_argument("--only", help="comma-separated case names: " + ", ".join(CASES))
    parser.add_argument("--save", default=str(ROOT / "bench" / "results"), help="folder for the results")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    info = machine()
    results = []
    for name in names:
        print(f"{name}:", flush=True)
        results.append(run_case(name, CASES[name], args.repeat))
    table = markdown(results, info)
    print("\n" + table)
    save = Path(args.save)
    save.mkdir(parents=True, exist_ok=True)
    (save / "latest.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    (save / "latest.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
