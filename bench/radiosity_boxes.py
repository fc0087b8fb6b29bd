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
"""

from __future__ import annotations

import argparse
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
                        help="this checkout's pretrace_bands (default 0: the controller's own, two per live node)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    load = os.getloadavg()
    print(f"load before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {CORES} cores", flush=True)
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        farms = {"this": TwoBoxes(ROOT, work / "this", args.bands)}
        if args.against:
            farms["against"] = TwoBoxes(args.against.resolve(), work / "against")
        try:
            for name in args.only.split(","):
                scene = SCENES / CASES[name]
                times: dict[str, list[float]] = {"native": [], **{key: [] for key in farms}}
                images: dict[str, list[Path]] = {key: [] for key in times}
                before = {key: farm.pretrace_units() for key, farm in farms.items()}
                for round_ in range(args.repeat):
                    order = ["native", *farms] if round_ % 2 == 0 else [*farms, "native"]
                    for key in order:
                        out = work / f"{name}-{key}-{round_}.png"
                        seconds = (native(scene, width, height, out) if key == "native"
                                   else farms[key].render(scene, width, height, out))
                        times[key].append(seconds)
                        images[key].append(out)
                        print(f"  {name} round {round_ + 1} {key}: {seconds:.2f} s", flush=True)
                base = statistics.median(times["native"])
                for key, farm in farms.items():
                    units = (farm.pretrace_units() - before[key]) / args.repeat
                    print(f"{name} {width}x{height} {key}: median {statistics.median(times[key]):.2f} s against "
                          f"native {base:.2f} s = {statistics.median(times[key]) / base:.3f}; {units:.0f} pre-pass "
                          f"units per frame; {fidelity(images[key], images['native'])}", flush=True)
        finally:
            for farm in farms.values():
                farm.stop()
    load = os.getloadavg()
    print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
