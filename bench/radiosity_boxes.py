"""Radiosity scenes on a farm standing for two separate one-core boxes, against `povray +WT2`, and how close the
farm's images come to POV-Ray's own.

A controller and two nodes that say they run on machines of their own (`--machine boxA|boxB --threads 1`), so
every still is cut into strips and a radiosity frame gets its shared pre-pass. Each round times native
`povray +WT<cores>` and `povfarm submit --wait` on that farm, for this checkout and, with `--against DIR`,
another checkout (its own `farm` package, its own controller and nodes), in alternating order; medians are
reported. Fidelity as tests/test_radiosity.py measures it: the mean absolute difference of the farm's images
from the native ones against the native images' own spread.

    python bench/radiosity_boxes.py --repeat 3
    python bench/radiosity_boxes.py --only balcony --size 640x480 --against /tmp/base   # base: one pre-pass
    python bench/radiosity_boxes.py --bands 1 --against /tmp/base                       # the same, side by side
    python bench/radiosity_boxes.py --only balcony --size 640x480 --fresh --repeat 8 --against /tmp/base

With `--fresh` every round starts new farms, so each job is its scene's first (nothing of it measured: the
pre-pass is not cut by an earlier one's costs, and no node has its photon map); without it the farms stay up
for the whole run and only the first round is. Each farm run also says when its pre-pass ended.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from boxes import Boxes   # the two-box farm of bench/run.py

ROOT = Path(__file__).resolve().parent.parent
SCENES = Path("/usr/share/povray-3.7/scenes")
CORES = os.cpu_count() or 1
CASES = {"balcony": "advanced/balcony/balcony.pov", "cornell": "radiosity/cornell.pov"}


class TwoBoxes(Boxes):
    """A controller and two one-thread nodes on machines of their own, of the checkout at `root`, with the
    controller's pre-pass cut into `bands`."""

    def __init__(self, root: Path, work: Path, bands: int = 0):
        super().__init__(work, root=root, settings={"POVFARM_PRETRACE_BANDS": str(bands)})

    def render(self, scene: Path, width: int, height: int, out: Path) -> float:
        start = time.monotonic()
        subprocess.run([*self.command([str(scene), f"+W{width}", f"+H{height}"]), "--output", str(out)],
                       cwd=self.root, env=self.env, check=True, capture_output=True, timeout=900)
        return time.monotonic() - start

    def pretrace_units(self) -> int:
        return len(re.findall(r"radiosity pre-pass done by", self.controller_log.read_text(errors="replace")))

    def prepass_end(self) -> float | None:
        """Seconds from the newest job's queueing to the last band of its pre-pass, by the controller's log."""
        lines = self.controller_log.read_text(errors="replace").splitlines()
        queued = [(index, line) for index, line in enumerate(lines) if re.search(r"job \d+ queued", line)]
        if not queued:
            return None
        index, line = queued[-1]
        done = [stamp(later) for later in lines[index:] if "radiosity pre-pass done by" in later]
        return max(done) - stamp(line) if done else None


def stamp(line: str) -> float:
    """The time of a log line (`2026-12-06 12:43:19,627 INFO ...`), in seconds."""
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def native(scene: Path, width: int, height: int, out: Path) -> float:
    start = time.monotonic()
    subprocess.run(["povray", f"+I{scene.name}", f"+W{width}", f"+H{height}", f"+WT{CORES}", "-D", f"+O{out}"],
                   cwd=scene.parent, check=True, capture_output=True, timeout=900)
    return time.monotonic() - start


def pixels(path: Path) -> tuple[int, list[int]]:
    from PIL import Image
    with Image.open(path) as image:
        return image.width, list(image.convert("RGB").tobytes())


def rows_difference(a: list[int], b: list[int], width: int) -> list[float]:
    stride = width * 3
    return [statistics.fmean(abs(p - q) for p, q in zip(a[y:y + stride], b[y:y + stride]))
            for y in range(0, len(a), stride)]


def fidelity(farms: list[Path], natives: list[Path]) -> str:
    """Farm against native beside native against native: the mean absolute difference over all channels.
    (Strip edges fall where the scheduler cuts; bench/radiosity_split.py and the tests look for seams.)"""
    if len(natives) < 2:
        return "fidelity needs two native images or more (--repeat 2)"
    width = pixels(natives[0])[0]
    native_px = [pixels(p)[1] for p in natives]
    farm_px = [pixels(p)[1] for p in farms]
    between = statistics.fmean(statistics.fmean(rows_difference(a, b, width))
                               for a, b in itertools.combinations(native_px, 2))
    against = statistics.fmean(statistics.fmean(rows_difference(f, n, width)) for f in farm_px for n in native_px)
    return f"native vs native {between:.3f}, farm vs native {against:.3f} = {against / between:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="balcony,cornell")
    parser.add_argument("--size", default="400x300")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--against", type=Path, help="another checkout to time beside this one")
    parser.add_argument("--bands", type=int, default=0,
                        help="this checkout's pretrace_bands (default 0: the controller's own)")
    parser.add_argument("--fresh", action="store_true", help="new farms every round: every job its scene's first")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    load = os.getloadavg()
    print(f"load before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {CORES} cores", flush=True)
    roots = {"this": (ROOT, args.bands), **({"against": (args.against.resolve(), 0)} if args.against else {})}
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        farms: dict[str, TwoBoxes] = {}
        try:
            for name in args.only.split(","):
                scene = SCENES / CASES[name]
                times: dict[str, list[float]] = {"native": [], **{key: [] for key in roots}}
                images: dict[str, list[Path]] = {key: [] for key in times}
                units = {key: 0 for key in roots}
                for round_ in range(args.repeat):
                    order = ["native", *roots] if round_ % 2 == 0 else [*roots, "native"]
                    for key in order:
                        out = work / f"{name}-{key}-{round_}.png"
                        if key == "native":
                            seconds, said = native(scene, width, height, out), ""
                        else:
                            if key not in farms:
                                farms[key] = TwoBoxes(roots[key][0], work / f"{key}-{name}-{round_}", roots[key][1])
                            before = farms[key].pretrace_units()
                            seconds = farms[key].render(scene, width, height, out)
                            units[key] += farms[key].pretrace_units() - before
                            said = f", its pre-pass ended after {farms[key].prepass_end() or 0:.2f} s"
                            if args.fresh:
                                farms.pop(key).stop()
                        times[key].append(seconds)
                        images[key].append(out)
                        print(f"  {name} round {round_ + 1} {key}: {seconds:.2f} s{said}", flush=True)
                base = statistics.median(times["native"])
                for key in roots:
                    print(f"{name} {width}x{height} {key}: median {statistics.median(times[key]):.2f} s against "
                          f"native {base:.2f} s = {statistics.median(times[key]) / base:.3f}; "
                          f"{units[key] / args.repeat:.0f} pre-pass units per frame; "
                          f"{fidelity(images[key], images['native'])}", flush=True)
        finally:
            for farm in farms.values():
                farm.stop()
    load = os.getloadavg()
    print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
