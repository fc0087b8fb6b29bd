"""Take the README's picture of the pygame viewer mid-render: the preview shown scaled up, some final strips
painted over it, strips in flight outlined per node.

A controller and two nodes run here on loopback (as in bench/viewer_bars.py); the viewer's own window
(`farm.viewing.window.Window`, without a screen: SDL's dummy driver) follows the newest job from before the
submit, as `povfarm viewer` does; the window is saved as soon as the job has its preview, at least
`--strips-done` final strips and a strip in flight.

    python bench/viewer_screenshot.py [--output docs/viewer.png] [--scene advanced/chess2.pov]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from farm.client import Client  # noqa: E402
from farm.states import ENDED  # noqa: E402
from farm.viewing.feed import Feed  # noqa: E402
from farm.viewing.state import ViewerState  # noqa: E402
from farm.viewing.window import Window, import_pygame  # noqa: E402
from viewer_bars import SCENES, Farm, upload  # noqa: E402


def ready(status: dict, strips_done: int) -> bool:
    return (status.get("preview") == "done" and status.get("strips_done", 0) >= strips_done
            and status.get("strips_leased", 0) >= 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "viewer.png")
    parser.add_argument("--scene", default="advanced/chess2.pov")
    parser.add_argument("--strips-done", type=int, default=6)
    args = parser.parse_args()
    pygame = import_pygame()
    with tempfile.TemporaryDirectory(prefix="povfarm-shot-") as tmp:
        farm = Farm(Path(tmp), 2)
        try:
            view = lambda timeout: Client(farm.url, timeout=timeout, token=farm.tokens["view"])  # noqa: E731
            feed = Feed(farm.url, make_client=view).start()
            window = Window(pygame, ViewerState(0), feed, url=farm.url)
            try:
                return shoot(pygame, window, farm, args)
            finally:
                feed.stop()
                pygame.quit()
        finally:
            farm.stop()


def shoot(pygame, window: Window, farm: Farm, args) -> int:
    scene = SCENES / args.scene
    digest = upload(farm.submit, scene)
    for _ in range(15):                    # the viewer is following the farm before the submit
        window.step()
        time.sleep(1 / 30)
    job = farm.submit.call("jobs.submit", {"bundle": digest, "scene": scene.name, "width": 640, "height": 480,
                                           "options": ["+A0.3"], "name": scene.stem})
    deadline, checked = time.monotonic() + 600, 0.0
    while time.monotonic() < deadline:
        window.step()
        if time.monotonic() - checked > 0.2:
            checked = time.monotonic()
            status = farm.submit.call("jobs.status", job)
            if ready(status, args.strips_done):
                for _ in range(10):        # let the window take in what the feed brought
                    window.step()
                    time.sleep(1 / 30)
                pygame.image.save(pygame.display.get_surface(), str(args.output))
                print(f"wrote {args.output}: {status['strips_done']} strips done, {status['strips_leased']} "
                      f"in flight, preview {status['preview']}")
                return 0
            if status["state"] in ENDED:
                break
        time.sleep(1 / 30)
    print("the job ended before the picture could be taken", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
