"""Sharing a radiosity pretrace between boxes: what one box's pretrace costs against parts of it run side by side,
and how close strips rendered from the merged caches come to single renders.

Straight POV-Ray, no farm: each part is one `povray +WT1` (a one-core box) with `+RFO`, stopped when its final pass
begins (as the farm's pre-pass is); the parts run at the same time. Strips then load the cache (the farm's wrapper
scene, `+RFI`) and are stitched; their image is compared with `povray +WT2` single renders as tests/test_radiosity.py
does: mean absolute difference against the singles' own spread, and rows beside strip edges (and columns beside
pretrace part edges) against the others.

    python bench/radiosity_split.py                                  # balcony 400x300
    python bench/radiosity_split.py --scene radiosity/cornell.pov --size 160x120 --split whole,rows,thin,evenodd \
        --parts 4 --singles 5

Splits: whole (one POV-Ray), framerows (bands of rows on block edges, each pretraced over the whole frame's
area with the other blocks skipped by +C, as the farm's pre-pass bands are), rows and columns (even bands or
columns cut with +SR/+ER or +SC/+EC), thin (the last rows split's caches, keeping every depth-0 sample but only every
n-th deeper one), evenodd (row bands, the odd ones pretraced after the even ones and loading their samples).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm import radiosity, strips  # noqa: E402
from farm.images.ppm import decode_ppm  # noqa: E402
from farm.rendering.statefile import continue_file  # noqa: E402

SCENES = Path("/usr/share/povray-3.7/scenes")
NEWLINE = b"\n"
CPU: dict[str, float] = {}   # log path -> CPU seconds of its POV-Ray


def run(argv: list[str], cwd: Path, log: Path, stop_at_final_pass: bool = False) -> float:
    """Run POV-Ray; with `stop_at_final_pass`, terminate it once the pixel counter drops back (pretrace done)."""
    start = time.monotonic()
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=out)
    if stop_at_final_pass:
        watch = radiosity.PretraceWatch(log, cwd / "none")
        watch._judge = lambda w=watch: _pretrace_over(w)
        while process.poll() is None and not watch():
            time.sleep(0.05)
        process.terminate()
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    CPU[str(log)] = usage.ru_utime + usage.ru_stime
    return time.monotonic() - start


def _pretrace_over(watch) -> str | None:
    for done, _total in watch._new_counts():
        if watch._last is not None and done < watch._last:
            return radiosity.PRETRACED
        watch._last = done
    return None


def parts(kind: str, width: int, height: int, count: int) -> list[list[str]]:
    """Each part's POV-Ray area options ("framerows": the whole frame's area with +C, see `pretrace`)."""
    if kind == "whole":
        return [[]]
    if kind == "framerows":
        return [["+C"] for _ in strips.plan_strips(height, count)]
    size = height if kind == "rows" else width
    cuts = [round(size * i / count) for i in range(count + 1)]
    letter = "R" if kind == "rows" else "C"
    return [[f"+S{letter}{cuts[i] + 1}", f"+E{letter}{cuts[i + 1]}"] for i in range(count)]


def pretrace(scene: Path, size: tuple[int, int], kind: str, count: int, work: Path) -> tuple[float, bytes]:
    """Run the pretrace parts side by side: (wall seconds of the slowest, merged cache). "evenodd": row bands,
    the even ones first, then the odd ones loading the even ones' samples (+RFI +RFO), so no two bands
    pretrace beside each other without the other's samples."""
    width, height = size
    times = {}
    areas = parts("rows" if kind == "evenodd" else kind, width, height, count)
    loaded: dict[int, int] = {}

    def one(i: int, area: list[str]) -> None:
        load = ["+RFI"] if i in loaded else []
        if kind == "framerows":     # the farm's bands: the frame's block layout, other blocks skipped
            first, last = strips.plan_strips(height, count)[i]
            (work / f"pre{i}.ppm").unlink(missing_ok=True)    # +C renders nothing when the image exists
            (work / f"pre{i}.pov-state").write_bytes(
                continue_file(width, height, strips.DEFAULT_BLOCK, first, last))
        argv = ["povray", f"+I{scene.name}", f"+L{scene.parent}", f"+W{width}", f"+H{height}", "+WT1", "-D",
                "+FP", f"+O{work / f'pre{i}.ppm'}", *area, f"+RF{work / f'pre{i}.rad'}", *load, "+RFO"]
        times[i] = run(argv, scene.parent, work / f"pre{i}.log", True)
    start = time.monotonic()
    if kind == "evenodd":
        two_boxes([(i, area) for i, area in enumerate(areas) if i % 2 == 0], one)
        evens = b"".join(radiosity.trim_cache((work / f"pre{i}.rad").read_bytes()) for i in range(0, len(areas), 2))
        for i in range(1, len(areas), 2):
            (work / f"pre{i}.rad").write_bytes(evens)
            loaded[i] = len(evens)
        two_boxes([(i, area) for i, area in enumerate(areas) if i % 2 == 1], one)
    else:
        two_boxes(list(enumerate(areas)), one)
    wall = time.monotonic() - start
    caches = [(work / f"pre{i}.rad").read_bytes()[loaded.get(i, 0):] for i in range(len(areas))]
    merged = b"".join(radiosity.trim_cache(cache) for cache in caches)
    THIN[0] = thin_deep(caches)
    cpu = [CPU[str(work / f"pre{i}.log")] for i in range(len(areas))]
    print(f"  {kind} x{len(areas)}: parts {', '.join(f'{times[i]:.2f}' for i in range(len(areas)))} s wall, "
          f"{', '.join(f'{c:.2f}' for c in cpu)} s CPU, "
          f"{merged.count(NEWLINE)} samples", flush=True)
    return wall, merged


THIN = [b""]


def thin_deep(caches: list[bytes]) -> bytes:
    """Every depth-0 sample (C1) of every part, and of the deeper ones only every n-th of each part."""
    out = []
    for i, cache in enumerate(caches):
        deep = 0
        for line in radiosity.trim_cache(cache).splitlines(keepends=True):
            if line.startswith(b"C1"):
                out.append(line)
            else:
                if deep % len(caches) == i:
                    out.append(line)
                deep += 1
    return b"".join(out)


def render_strips(scene: Path, size: tuple[int, int], cache: bytes, count: int, work: Path) -> tuple[list[int], float]:
    """Strips loading `cache`, two at a time (two one-core boxes): the stitched pixels and the wall time."""
    width, height = size
    (work / "cache.rad").write_bytes(cache)
    wrapper = work / "wrapper.pov"
    wrapper.write_text(radiosity.wrapper_text(str(scene)) or "", encoding="utf-8")
    plan = strips.plan_strips(height, count)
    start = time.monotonic()

    def one(i: int, rows: tuple[int, int]) -> None:
        argv = ["povray", f"+I{wrapper}", f"+L{scene.parent}", f"+W{width}", f"+H{height}", "+WT1", "-D", "+FP",
                f"+O{work / f'strip{i}.ppm'}", *strips.povray_row_options(rows[0], rows[1], height),
                f"+RF{work / 'cache.rad'}", "+RFI"]
        run(argv, scene.parent, work / f"strip{i}.log")

    two_boxes(list(enumerate(plan)), one)
    wall = time.monotonic() - start
    print(f"  strips CPU {sum(CPU[str(work / f'strip{i}.log')] for i in range(len(plan))):.2f} s", flush=True)
    pixels = bytearray()
    for i, (first, last) in enumerate(plan):
        raster = decode_ppm((work / f"strip{i}.ppm").read_bytes())
        pixels += strips.crop_rows(raster, first, last)
    return list(pixels), wall


def two_boxes(pending: list, one) -> None:
    """Run `one(*item)` for every item, two at a time: two one-core boxes taking work as they free up."""
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                item = pending.pop(0)
            one(*item)
    workers = [threading.Thread(target=worker) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def single(scene: Path, size: tuple[int, int], work: Path, i: int) -> tuple[list[int], float]:
    width, height = size
    out = work / f"single{i}.ppm"
    argv = ["povray", f"+I{scene.name}", f"+L{scene.parent}", f"+W{width}", f"+H{height}", "+WT2", "-D", "+FP",
            f"+O{out}"]
    wall = run(argv, scene.parent, work / f"single{i}.log")
    return list(decode_ppm(out.read_bytes()).pixels), wall


def difference(a: list[int], b: list[int], width: int, edge_rows: set[int], edge_columns: set[int]) -> dict:
    stride = width * 3
    rows = [statistics.fmean(abs(p - q) for p, q in zip(a[y * stride:(y + 1) * stride], b[y * stride:(y + 1) * stride]))
            for y in range(len(a) // stride)]
    columns = [statistics.fmean(abs(a[y * stride + x * 3 + c] - b[y * stride + x * 3 + c])
                                for y in range(len(rows)) for c in range(3)) for x in range(width)]
    return {"mean": statistics.fmean(rows), "max": max(abs(p - q) for p, q in zip(a, b)),
            "edge": statistics.fmean(rows[y] for y in edge_rows),
            "other": statistics.fmean(m for y, m in enumerate(rows) if y not in edge_rows),
            "edge_col": statistics.fmean(columns[x] for x in edge_columns) if edge_columns else 0.0,
            "other_col": statistics.fmean(m for x, m in enumerate(columns) if x not in edge_columns)}


def average(results: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="advanced/balcony/balcony.pov")
    parser.add_argument("--size", default="400x300")
    parser.add_argument("--split", default="whole,framerows,rows", help="pretrace splits to try")
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--strips", type=int, default=4)
    parser.add_argument("--singles", type=int, default=3)
    args = parser.parse_args()
    scene = SCENES / args.scene
    width, height = (int(v) for v in args.size.split("x"))
    edges = [end for _, end in strips.plan_strips(height, args.strips)][:-1]
    edge_rows = {row for edge in edges for row in (edge - 1, edge)}
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        singles = [single(scene, (width, height), work, i) for i in range(args.singles)]
        print(f"{args.scene} {width}x{height}: povray +WT2 {statistics.median(s[1] for s in singles):.2f} s",
              flush=True)
        between = [difference(a[0], b[0], width, edge_rows, set()) for a, b in itertools.combinations(singles, 2)]
        print(f"  single vs single: mean {average(between, 'mean'):.3f} max {max(r['max'] for r in between)}, "
              f"edge rows "
              f"{average(between, 'edge'):.3f} other {average(between, 'other'):.3f}; CPU "
              f"{statistics.median(CPU[str(work / f'single{i}.log')] for i in range(args.singles)):.2f} s")
        for kind in args.split.split(","):
            if kind == "thin":
                cache = THIN[0]
            else:
                seconds, cache = pretrace(scene, (width, height), kind, args.parts, work)
            pixels, wall = render_strips(scene, (width, height), cache, args.strips, work)
            cuts = [round(width * i / args.parts) for i in range(1, args.parts)] if kind == "columns" else []
            edge_columns = {x for cut in cuts for x in (cut - 1, cut)}
            cuts = [round(height * i / args.parts) for i in range(1, args.parts)] if kind == "rows" else []
            all_edges = edge_rows | {y for cut in cuts for y in (cut - 1, cut)}
            farm = [difference(pixels, s[0], width, all_edges, edge_columns) for s in singles]
            print(f"  {kind}: pretrace {seconds:.2f} s + strips {wall:.2f} s = {seconds + wall:.2f} s; vs single "
                  f"mean {average(farm, 'mean'):.3f} ({average(farm, 'mean') / average(between, 'mean'):.2f}x) "
                  f"max {max(r['max'] for r in farm)}, edge rows {average(farm, 'edge'):.3f} other "
                  f"{average(farm, 'other'):.3f}, edge columns {average(farm, 'edge_col'):.3f} other "
                  f"{average(farm, 'other_col'):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
