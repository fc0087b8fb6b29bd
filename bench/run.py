"""Farm wall time against POV-Ray's own threading, on this machine, in one run.

For each case it times native `povray +WT<cores>` and `povfarm render --nodes 1` / `--nodes 2`
(same scene, size and options), alternating the order each round, and reports the medians and the
ratio farm / native. Results go to bench/results/latest.json and latest.md.

    python bench/run.py                      # every case, 3 rounds
    python bench/run.py --only chess2 --repeat 5
    python bench/run.py --against ../other   # and another checkout's farm, in the same rounds

With --against, the other checkout's `povfarm render` (run from its folder with this Python) is timed in
the same rounds, so two versions are compared side by side on the same noisy machine.
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


def farm_command(case, nodes: int, out: Path, tree: Path = ROOT) -> tuple[list[str], Path]:
    scene, ini, width, height, options, _ = case
    path = SCENES / scene
    target = out if ini else out / "farm.png"
    argv = [sys.executable, "-m", "farm", "render", str(path), "--nodes", str(nodes), "--width", str(width),
            "--height", str(height), "--output", str(target)]
    if ini:
        argv += ["--ini", str(SCENES / ini)]
    for option in options:
        argv += ["--option", option]
    return argv, tree


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr[-2000:]}")
    return elapsed


def run_case(name: str, case, repeat: int, against: Path | None = None) -> dict:
    order = ["native", "farm1", "farm2"] + (["against1", "against2"] if against else [])
    times: dict[str, list[float]] = {kind: [] for kind in order}
    for round_ in range(repeat):
        for kind in (order if round_ % 2 == 0 else list(reversed(order))):
            out = Path(tempfile.mkdtemp(prefix="povfarm-bench-"))
            try:
                if kind == "native":
                    argv, cwd = native_command(case, out)
                else:
                    argv, cwd = farm_command(case, int(kind[-1]), out, against if kind.startswith("against") else ROOT)
                times[kind].append(timed(argv, cwd))
            finally:
                shutil.rmtree(out, ignore_errors=True)
        print(f"  {name} round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
              flush=True)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    result = {"case": name, "note": case[5], "times": times, "median": medians,
              "ratio_nodes1": medians["farm1"] / medians["native"],
              "ratio_nodes2": medians["farm2"] / medians["native"]}
    if against:
        result["against_ratio_nodes1"] = medians["against1"] / medians["native"]
        result["against_ratio_nodes2"] = medians["against2"] / medians["native"]
    return result


def _describe(tree: Path) -> str:
    """A checkout as its folder and commit."""
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"{tree} ({commit.stdout.strip() or 'not a git checkout'})"


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
    if any("against_ratio_nodes1" in r for r in results):
        lines += ["", f"Against {info.get('against', 'the other checkout')}, in the same rounds:", "",
                  "| case | ratio 1 node: this / other | ratio 2 nodes: this / other |", "|---|---|---|"]
        lines += [f"| {r['case']} | {r['ratio_nodes1']:.3f} / {r['against_ratio_nodes1']:.3f} | "
                  f"{r['ratio_nodes2']:.3f} / {r['against_ratio_nodes2']:.3f} |" for r in results]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per case (default 3)")
    parser.add_argument("--only", help="comma-separated case names: " + ", ".join(CASES))
    parser.add_argument("--save", default=str(ROOT / "bench" / "results"), help="folder for the results")
    parser.add_argument("--against", type=Path, help="another povfarm checkout to time in the same rounds")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    info = machine()
    against = args.against.resolve() if args.against else None
    if against:
        info["against"] = _describe(against)
    results = []
    for name in names:
        print(f"{name}:", flush=True)
        results.append(run_case(name, CASES[name], args.repeat, against))
    table = markdown(results, info)
    print("\n" + table)
    save = Path(args.save)
    save.mkdir(parents=True, exist_ok=True)
    (save / "latest.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    (save / "latest.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
