#!/usr/bin/env python3
"""A stand-in for POV-Ray for Windows' GUI engine (pvengine64.exe), for tests on Linux.

It behaves as the farm meets the real one: it takes `/EXIT`, `/NR` and `/RENDER file` (and plain
options), renders with the real `povray` (so the pixels are real), writes POV-Ray's messages only to
the stream files it is given (+GA, +GF... in the INI or on the command line; a GUI has no console),
writes the image only when the render succeeds, and exits 0 whatever happened. Without /EXIT it stays
open, as the GUI does.

A file `pvengine-mode` beside it may ask for trouble on strip renders (not the node's probe):
`crash N` crashes (SIGSEGV) on the first N of them, `vanish N` exits 0 at once on the first N without
rendering or writing anything (as a second GUI instance that hands its work to the first one would).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv):
    options, exit_when_done, render = [], False, None
    args = iter(argv)
    for arg in args:
        upper = arg.upper()
        if upper == "/EXIT":
            exit_when_done = True
        elif upper in ("/NR", "/NORESTORE"):
            pass
        elif upper == "/RENDER":
            render = next(args)
        elif arg.startswith("/"):
            pass                        # other GUI switches change nothing here
        else:
            options.append(arg)
    if render is None and not options:
        return idle()
    ini_text = Path(render).read_text() if render else ""
    trouble = None if "probe.pov" in ini_text else take_trouble()
    if trouble == "vanish":
        return 0
    # The GUI shows POV-Ray's text in its own window: nothing on stdout or stderr.
    subprocess.run(["povray", *([render] if render else []), *options], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if trouble == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    return 0 if exit_when_done else idle()


def take_trouble():
    """The mode file's trouble for this run, counting it down."""
    mode = HERE / "pvengine-mode"
    try:
        kind, count = mode.read_text().split()
    except (OSError, ValueError):
        return None
    if int(count) <= 0:
        return None
    mode.write_text(f"{kind} {int(count) - 1}\n")
    return kind


def idle():
    """The GUI, left open with nobody to close it."""
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
