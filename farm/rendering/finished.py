"""A unit's POV-Ray has done its work before its process exits: the image is, not the exit, is the unit's end.

POV-Ray 3.7 renders, deletes its render state file (only when the render succeeded: an aborted render keeps
it and writes no image), writes the image (a few 4 KiB writes), prints its statistics, ending with the Trace
Time line and its `using N thread(s)` line, and then idles 0.3-0.4 s while its threads wind down on 100-200 ms
polls before it says `POV-Ray finished` and exits 0. The node takes a unit as rendered when every image of the
unit is complete, no state file is left and the statistics of its last frame are printed; the process then
ends in the background (farm/rendering/reaper.py).

`image_complete` and `statistics_complete` are pure; `unit_done` looks at the files.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from farm.images.png import PNG_SIGNATURE, png_chunk
from farm.images.ppm import ppm_header
from farm.images.raster import row_size

STATE_SUFFIX = ".pov-state"       # POV-Ray's render state file, beside the image it will write
IEND = png_chunk(b"IEND", b"")    # a PNG's last 12 bytes
HEAD_BYTES = 1024                 # enough for the header of a PPM as POV-Ray writes it (four comment lines)
LOG_TAIL = 64 * 1024              # of POV-Ray's log: the last frame's statistics, and its progress lines
RENDERING = "[Rendering...]"      # the banner before each frame's render
_TRACE_TIME = re.compile(r"Trace Time:[^\n]*\n[ \t]*using \d+ thread\(s\)[^\n]*\n")


def image_complete(png: bool, head: bytes, size: int, tail: bytes) -> bool:
    """Whether an image POV-Ray writes is whole: a PPM of the size its header says, a PNG that ends with its
    IEND chunk. `head` and `tail` are the file's first and last bytes, `size` its size now."""
    if png:
        return head.startswith(PNG_SIGNATURE) and tail.endswith(IEND)
    try:
        width, height, bits, start = ppm_header(head)
    except ValueError:      # not a PPM's header, or not all of it yet
        return False
    return size == start + row_size(width, 3, bits) * height


def statistics_complete(text: str) -> bool:
    """Whether POV-Ray's log (its tail) has the closing time figures of its last render: a Trace Time line and
    its `using N thread(s)` line, whole, after the last `[Rendering...]` banner."""
    return _TRACE_TIME.search(text, max(text.rfind(RENDERING), 0)) is not None


def frame_files(output: Path, frames: range, animated: bool) -> list[Path]:
    """The image files POV-Ray writes for these frames: `output` for a still; for an animation,
    `<stem><N><suffix>` with N zero-padded to the width of the final frame number. ValueError naming the
    first frame it has not written (yet)."""
    if not animated:
        return [output]
    found = numbered(output.parent, output.stem, output.suffix)
    if len(frames) == 1 and frames[0] not in found and output.exists():
        return [output]   # an animation of one frame (+KFI1 +KFF1): POV-Ray writes no number
    missing = [frame for frame in frames if frame not in found]
    if missing:
        raise ValueError(f"POV-Ray wrote no image for frame {missing[0]}")
    return [found[frame] for frame in frames]


def numbered(folder: Path, stem: str, suffix: str) -> dict[int, Path]:
    """`<stem><N><suffix>` files in `folder` by N (POV-Ray numbers an animation's files by frame)."""
    found = {}
    for path in folder.glob(f"{glob.escape(stem)}*{suffix}"):
        number = path.name[len(stem):len(path.name) - len(suffix)]
        if number.isdigit():
            found[int(number)] = path
    return found


def unit_done(output: Path, frames: range, animated: bool, log_path: Path) -> bool:
    """Whether the unit's POV-Ray has done its work, cheapest look first: no render state file left, every
    frame's image complete, the last frame's statistics printed."""
    if any(output.parent.glob(f"{glob.escape(output.stem)}*{STATE_SUFFIX}")):
        return False
    try:
        if not all(_complete(path) for path in frame_files(output, frames, animated)):
            return False
        return statistics_complete(_tail(log_path, LOG_TAIL).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return False


def _complete(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - len(IEND)))
        return image_complete(path.suffix == ".png", head, size, handle.read())


def _tail(path: Path, limit: int) -> bytes:
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - limit))
        return handle.read()
