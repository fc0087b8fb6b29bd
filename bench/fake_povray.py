#!/usr/bin/env python3
"""A stand-in for the `povray` program, for benchmarks that need many render nodes on one box.

It is NOT POV-Ray: it parses no scene and traces no rays. It takes POV-Ray's command line as a
povfarm node passes it, sleeps as long as the strip would take by a simple cost model, and writes
a deterministic full-size image to the +O path, the rows outside +SR/+ER black, as POV-Ray does.
Because it is not POV-Ray, nodes that use it are started with `--sandbox none` (bubblewrap would
also clear the environment variables below).

    fake_povray.py --version                  prints "POV-Ray 3.7.0.10 (fake ...)" to stderr, exits 0
    fake_povray.py +Iscene.pov +W64 +H4096 +SR33 +ER64 +Ostrip.ppm +FP -D -P [+WT1] [+UA]
                   [+KFI1 +KFF100 +SF7 +EF9] [Declare=FAKE_SPEED=2] ...

Cost model: seconds = startup + row_cost * rows * frames / speed, where rows is the number of rows
between +SR and +ER (fractions as POV-Ray reads them) and frames the frames rendered (+SF..+EF).
  POVFARM_FAKE_ROW_COST   seconds per row per frame at speed 1 (default 0.001); Declare=FAKE_ROW_COST=S
                          in the job's options overrides it
  POVFARM_FAKE_SPEED      this node's speed factor (default 1; 2 renders twice as fast); Declare=FAKE_SPEED=X
                          overrides it (for every node of the job)
  POVFARM_FAKE_STARTUP    fixed seconds per run, not divided by the speed (POV-Ray's start-up and parse; default 0)
  POVFARM_FAKE_ROW_PROFILE  uneven rows: comma-separated weights of equal bands of the image, top to bottom
                          (e.g. "0.2,0.3,1.5,2,1"), scaled to a mean of 1: a row costs row_cost x its band's
                          weight (default: every row the same)
  POVFARM_FAKE_TRACE      if set, a file to which one line per run is appended:
                          node, speed, start, end (Unix times), rows, frames, planned seconds
  POVFARM_FAKE_NODE       the name written to the trace (default: the parent process id)

Output: +FP/+FP16 write binary PPM (P6, 8 or 16 bits), +FN/+FN16 PNG (RGBA with +UA, else RGB).
With an animation (+KFI/+KFF) one file per frame of +SF..+EF, named like POV-Ray names them: the
+O name's stem, the frame number zero-padded to the width of the final frame number, the suffix
(POV-Ray numbers no file when both +KFI and +KFF are 1). A missing +I scene is a parse error
(exit 1). Progress goes to stderr as POV-Ray's "Rendered N of M pixels" lines, about once a second.
Standard library only, and quick to start: it runs once per strip.
"""

import os
import struct
import sys
import time
import zlib

VERSION = "3.7.0.10"


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    sys.exit(code)


def number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        fail(f"Invalid value for {what}: {text!r}", 2)
        raise


def parse(argv):
    opts = {"declare": {}, "alpha": False}
    for arg in argv:
        if arg.startswith("Declare=") or arg.startswith("declare="):
            name, _, value = arg[len("Declare="):].partition("=")
            opts["declare"][name.upper()] = value
            continue
        if not arg or arg[0] not in "+-":
            continue
        sign, body = arg[0], arg[1:]
        upper = body.upper()
        if upper.startswith("I"):
            opts["input"] = body[1:]
        elif upper.startswith("O"):
            opts["output"] = body[1:]
        elif upper.startswith("F") and sign == "+":
            opts["format"] = upper[1:] or "N"
        elif upper == "UA":
            opts["alpha"] = sign == "+"
        else:
            for key in ("KFI", "KFF", "SF", "EF", "SR", "ER", "WT", "W", "H"):
                if upper.startswith(key) and len(upper) > len(key):
                    opts[key] = body[len(key):]
                    break
    return opts


def row_range(opts, height: int):
    """0-based [start, end) from +SR/+ER: a value below 1 (start) or up to 1 (end) is a fraction."""
    start, end = 0, height
    if "SR" in opts:
        v = number(opts["SR"], "+SR")
        start = int(height * v) if v < 1 else int(v) - 1
    if "ER" in opts:
        v = number(opts["ER"], "+ER")
        end = int(height * v) if v <= 1 else int(v)
    start, end = max(0, min(start, height)), max(0, min(end, height))
    if end <= start:
        fail(f"Invalid row range +SR{opts.get('SR')} +ER{opts.get('ER')} for height {height}", 2)
    return start, end


def frames_of(opts):
    """(frames to write, digits, animated)."""
    if "KFI" not in opts and "KFF" not in opts:
        return [0], 0, False
    first = int(number(opts.get("KFI", "1"), "+KFI"))
    last = int(number(opts.get("KFF", str(first)), "+KFF"))
    if last < first:
        fail(f"Final frame {last} is before the initial frame {first}", 2)
    sub_first = int(number(opts["SF"], "+SF")) if "SF" in opts else first
    sub_last = int(number(opts["EF"], "+EF")) if "EF" in opts else last
    frames = list(range(max(first, sub_first), min(last, sub_last) + 1))
    animated = not (first == 1 and last == 1)
    return frames, len(str(last)), animated


def pixel_row(y: int, frame: int, width: int, channels: int, bits: int) -> bytes:
    """One deterministic row: a pattern of x, y and the frame number."""
    row = bytearray(width * channels)
    row[0::channels] = bytes((x * 5 + y * 3 + frame * 7) & 255 for x in range(width))
    row[1::channels] = bytes(((x * 11) ^ y) & 255 for x in range(width))
    row[2::channels] = bytes((y * 13 + frame + x // 8) & 255 for x in range(width))
    if channels == 4:
        row[3::channels] = b"\xff" * width
    if bits == 16:   # v * 257, big-endian: the same picture at 16 bits
        return bytes(b for v in row for b in (v, v))
    return bytes(row)


def image_rows(width, height, start, end, frame, channels, bits) -> list:
    size = width * channels * (bits // 8)
    black = bytes(size)
    return [pixel_row(y, frame, width, channels, bits) if start <= y < end else black for y in range(height)]


def write_ppm(path, width, height, bits, rows) -> None:
    header = (f"P6\n# Software: POV-Ray {VERSION} (fake)\n{width} {height}\n"
              f"{65535 if bits == 16 else 255}\n").encode()
    with open(path, "wb") as handle:
        handle.write(header)
        handle.write(b"".join(rows))


def write_png(path, width, height, channels, bits, rows) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, bits, 6 if channels == 4 else 2, 0, 0, 0)
    data = zlib.compress(b"".join(b"\x00" + row for row in rows), 1)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def row_weights(start: int, end: int, height: int, profile) -> float:
    """Rows [start, end) of `height`, each counted by its band's weight in `profile` (mean weight 1)."""
    if not profile:
        return float(end - start)
    mean = sum(profile) / len(profile)
    return sum(profile[min(len(profile) - 1, y * len(profile) // height)] for y in range(start, end)) / mean


class Run:
    """One run as planned from POV-Ray's command line: what to write and how long it takes."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def plan(argv, environ=os.environ, cwd: str = ".") -> Run:
    """The run `argv` asks for (relative paths from `cwd`), by the cost model; exits as POV-Ray would on a
    bad command line. Also for an in-process stand-in (bench/herd.py), which sleeps and writes itself."""
    opts = parse(argv)
    scene = opts.get("input")
    if not scene:
        fail("Parse Error: No input file was given (+I)")
    if not os.path.isfile(os.path.join(cwd, scene)):
        fail(f"Parse Error: Cannot open input file '{scene}'.")
    if "output" not in opts:
        fail("Fatal error: no output file (+O) was given", 2)
    width = int(number(opts.get("W", "800"), "+W"))
    height = int(number(opts.get("H", "600"), "+H"))
    if width < 1 or height < 1:
        fail("Invalid image size", 2)
    start, end = row_range(opts, height)
    frames, digits, animated = frames_of(opts)
    fmt = opts.get("format", "N")
    png = fmt.startswith("N")
    declare = opts["declare"]

    def setting(name: str, default: float) -> float:
        raw = environ.get(f"POVFARM_{name}", "")
        return number(declare[name], name) if name in declare else number(raw, name) if raw else default
    row_cost, speed = setting("FAKE_ROW_COST", 0.001), setting("FAKE_SPEED", 1.0)
    if speed <= 0:
        fail("FAKE_SPEED must be positive", 2)
    startup = number(environ.get("POVFARM_FAKE_STARTUP") or "0", "POVFARM_FAKE_STARTUP")
    profile = [number(w, "POVFARM_FAKE_ROW_PROFILE") for w in environ.get("POVFARM_FAKE_ROW_PROFILE", "").split(",")
               if w.strip()]
    weights = row_weights(start, end, height, profile) * continued_share(argv, cwd, opts.get("output", ""),
                                                                          width, height)
    planned = startup + row_cost * weights * len(frames) / speed
    return Run(width=width, height=height, start=start, end=end, frames=frames, digits=digits, animated=animated,
               png=png, bits=16 if fmt.endswith("16") else 8, channels=4 if (png and opts["alpha"]) else 3,
               output=os.path.join(cwd, opts["output"]), speed=speed, startup=startup, planned=planned,
               pixels=width * (end - start) * len(frames))


def continued_share(argv, cwd: str, output: str, width: int, height: int, block: int = 32) -> float:
    """With +C, the part of the area's blocks left to render: POV-Ray skips those its render state file
    (beside the output) lists, as a node's file for a sheared unit does (farm/shear.py). The fake writes the
    whole image all the same, which is all the node reads of it."""
    if "+C" not in argv:
        return 1.0
    try:
        with open(os.path.join(cwd, os.path.splitext(output)[0] + ".pov-state"), "rb") as state:
            skipped = state.read().count(b"POVRAYMS")
    except OSError:
        return 1.0
    total = -(-width // block) * -(-height // block)
    return max(0.0, total - skipped) / total


def write_images(run: Run, log=sys.stderr) -> None:
    """The run's image files, as POV-Ray names them."""
    stem, suffix = os.path.splitext(run.output)
    for index, frame in enumerate(run.frames):
        if run.animated:
            log.write(f"Rendering frame {index + 1} of {len(run.frames)}\n")
        path = f"{stem}{frame:0{run.digits}d}{suffix}" if run.animated else run.output
        rows = image_rows(run.width, run.height, run.start, run.end, frame, run.channels, run.bits)
        if run.png:
            write_png(path, run.width, run.height, run.channels, run.bits, rows)
        else:
            write_ppm(path, run.width, run.height, run.bits, rows)


def main(argv) -> int:
    if "--version" in argv or "-version" in argv:
        sys.stderr.write(f"POV-Ray {VERSION} (fake: a stand-in for benchmarks, renders nothing)\n")
        return 0
    started = time.time()
    run = plan(argv)

    # Sleep by the cost model, reporting progress the way POV-Ray does.
    if run.startup > 0:
        time.sleep(run.startup)
    render = run.planned - run.startup
    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        left = render - elapsed
        done = int(run.pixels * min(1.0, elapsed / render)) if render > 0 else run.pixels
        sys.stderr.write(f"Rendered {done} of {run.pixels} pixels ({100 * done // max(1, run.pixels)}%)\n")
        sys.stderr.flush()
        if left <= 0:
            break
        time.sleep(min(left, 1.0))

    write_images(run)
    trace = os.environ.get("POVFARM_FAKE_TRACE")
    if trace:
        line = (f"{os.environ.get('POVFARM_FAKE_NODE', os.getppid())} {run.speed:g} {started:.6f} {time.time():.6f} "
                f"{run.end - run.start} {len(run.frames)} {run.planned:.6f}\n")
        fd = os.open(trace, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())   # one write of one short line: appends do not interleave
        finally:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
