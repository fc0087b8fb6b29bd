"""`povfarm viewer`: a window that paints every strip of a render the moment it is stored.

`run_viewer` wires the parts of `farm.viewing` together: a `ViewerState` (with a `Canvas` per frame) that
is pure, a `Feed` that talks to the controller in threads, and the pygame `Window` that shows the state.
pygame is imported only when the window opens, so the rest of the farm never needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from farm.client import Client, check_url
from farm.faults import Code, FarmError
from farm.retry import Outage
from farm.viewing.feed import CURSOR_END, Feed
from farm.viewing.state import ViewerState
from farm.viewing.window import Window, import_pygame


def _say(text: str) -> None:
    sys.stderr.write(f"povfarm: {text}\n")
    sys.stderr.flush()


def _image_size(job: dict) -> tuple[int, int] | None:
    try:
        return int(job["width"]), int(job["height"])
    except (KeyError, TypeError, ValueError):
        return None


def run_viewer(url: str, job: int = 0, *, snapshot: Path | None = None, exit_when_done: bool = False,
               scale: str | float = "fit", rpc_timeout: float = 30.0,
               make_client: Callable[[float], Client] | None = None, patience: float = 0.0) -> int:
    """`povfarm viewer`: open the window and run until the user quits (or the job ends, if asked).

    `make_client(timeout)` builds a `Client` for the controller (default: a plain one for `url`). An
    outage is said once each way on stderr; with `exit_when_done`, one longer than `patience` seconds
    (0: none) ends the viewer with 1."""
    pygame = import_pygame()
    check_url(url)
    make_client = make_client or (lambda timeout: Client(url, timeout=timeout))
    first: dict = {}     # the job shown first, whose size the window is opened at
    try:        # a wrong job id or token is one sentence now; an unreachable controller is retried later
        if job:
            first = make_client(rpc_timeout).call("jobs.status", job)
        else:
            first = make_client(rpc_timeout).call("viewer.watch", 0, CURSOR_END, 0).get("job") or {}
    except FarmError as err:
        if err.code is not Code.UNREACHABLE:
            raise
    state = ViewerState(job, outage=Outage(url, patience, _say))
    feed = Feed(url, rpc_timeout=rpc_timeout, make_client=make_client).start()
    try:
        try:
            window = Window(pygame, state, feed, url=url, scale=scale, snapshot=snapshot,
                            exit_when_done=exit_when_done, image_size=_image_size(first))
        except pygame.error as err:
            raise FarmError(Code.BAD_ARGUMENT, f"cannot open a window: {err} (is DISPLAY set?)") from None
        return window.run()
    finally:
        feed.stop()
        pygame.quit()
