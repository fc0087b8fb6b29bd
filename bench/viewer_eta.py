"""How much the viewer's ETA moves beyond its own countdown, before and after smoothing (README, "The
pygame viewer").

A controller and two nodes run here on loopback (as in bench/viewer_bars.py); the viewer's state
(`farm.viewing.state.ViewerState`, fed by its `Feed`, no window) follows the farm from before the submit of
chess2 640x480 +A0.3. Every 0.5 s it samples the ETA as shown now (smoothed, farm/viewing/eta.py) and as it
was shown before (the latest reply's estimate, counted down since that reply); from the controller's first
measured estimate on, it prints the largest and the median move beyond the countdown per sample, and how
many moves were over 3 s.

    python bench/viewer_eta.py [--scene advanced/chess2.pov]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from farm.client import Client  # noqa: E402
from farm.states import ENDED  # noqa: E402
from farm.viewing.feed import Feed  # noqa: E402
from farm.viewing.state import ViewerState  # noqa: E402
from viewer_bars import SCENES, Farm, upload  # noqa: E402

SAMPLE = 0.5     # seconds between samples


def follow(farm: Farm, scene: Path) -> list[tuple[float, float | None, float | None]]:
    """(when, ETA as shown before, ETA as shown now) every SAMPLE seconds until the job ends."""
    feed = Feed(farm.url, make_client=lambda t: Client(farm.url, timeout=t, token=farm.tokens["view"])).start()
    state, samples = ViewerState(0), []
    try:
        job = farm.submit.call("jobs.submit", {"bundle": upload(farm.submit, scene), "scene": scene.name,
                                               "width": 640, "height": 480, "options": ["+A0.3"]})
        replied = next_at = time.time()
        while state.job.get("id") != job or state.job.get("state") not in ENDED:
            while not feed.messages.empty():
                message = feed.messages.get()
                state.handle(message)
                replied = time.time() if message[0] == "feed" else replied
            if feed.wanted != state.wanted():
                feed.watch(*state.wanted())
            if time.time() >= next_at:
                next_at += SAMPLE
                raw = state.job.get("eta")
                before = None if raw is None else max(0.0, raw - (time.time() - replied))
                samples.append((time.time(), before, state.timing()[1]))
            time.sleep(0.02)
    finally:
        feed.stop()
    return samples


def moves(samples, which: int) -> list[float]:
    """How far the ETA moved between two samples beyond counting down."""
    return [abs(b[which] - a[which] + b[0] - a[0]) for a, b in zip(samples, samples[1:])
            if a[which] is not None and b[which] is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="advanced/chess2.pov")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="povfarm-eta-") as tmp:
        farm = Farm(Path(tmp), 2)
        try:
            samples = follow(farm, SCENES / args.scene)
        finally:
            farm.stop()
    measured = [i for i, sample in enumerate(samples) if sample[1] is not None]
    samples = samples[measured[0]:] if measured else []
    for name, which in (("before (each reply as it came)", 1), ("now (smoothed)", 2)):
        found = moves(samples, which) or [0.0]
        print(f"{name}: largest move beyond the countdown per {SAMPLE} s {max(found):.1f} s, median "
              f"{statistics.median(found):.2f} s, over 3 s: {sum(m > 3 for m in found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
