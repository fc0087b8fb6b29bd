"""What the screen shows: POV-Ray's own `+D` window, the pygame viewer and the page, side by side, one run.

Under Xvfb (a screen of its own, started here), with a controller and two nodes standing for separate boxes
(`--machine boxA` / `boxB`, `--threads 1`, `--render-nice 0`: POV-Ray's window renders at the same time, on equal
terms) on loopback: the pygame viewer (`povfarm viewer`, overlay off)
and the page (chromium under the same screen, overlay hidden) follow the farm from before the submit; then
at one moment `povray +D` renders the scene in a window of its own (`+WT2`: the farm's two threads) and the
same job is submitted to the farm. The screen is captured every 0.2 s; for each of the three images (the
window's image area only, no status text):

- first change: seconds from the start to the first capture that differs;
- changes: captures that differ from the one before;
- longest still: the longest stretch without a change, from the start to its last change.

Bars: each viewer changes at least half as often as POV-Ray's window and is never still for more than 3x
POV-Ray's longest stretch.

    python bench/live_screen.py                     # chess2 640x480 +A0.3
    python bench/live_screen.py --width 320 --height 240

Needs Xvfb, chromium and chromedriver. All traffic is to 127.0.0.1; every process started here is stopped
at the end. Results also go to bench/results/live_screen.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from viewer_bars import ROOT, SCENES, Farm, scene_arguments, upload, wait_until  # noqa: E402

from farm.states import ENDED  # noqa: E402

DISPLAY = ":57"
SCREEN = (2000, 1100)
EVERY = 0.2
POVRAY_AT, VIEWER_AT, PAGE_AT = (0, 0), (660, 0), (1310, 0)
VIEWER = """
import sys
from farm.client import Client
from farm.viewing import window
opened = window.Window.__init__
def without_overlay(self, *args, **kwargs):
    opened(self, *args, **kwargs)
    self.overlay = False
window.Window.__init__ = without_overlay
from farm.viewer import run_viewer
url, token = sys.argv[1], sys.argv[2]
sys.exit(run_viewer(url, make_client=lambda timeout: Client(url, timeout=timeout, token=token)))
"""


def start_page(url: str, token: str, size: tuple[int, int], profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    os.environ["SE_OFFLINE"] = "true"          # Selenium Manager: use the browser and driver given, fetch nothing
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--app={url}/",
                     f"--window-position={PAGE_AT[0]},{PAGE_AT[1]}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("excludeSwitches", ["enable-automation"])     # no infobar over the page
    options.add_experimental_option("prefs", {"credentials_enable_service": False,   # nor a password prompt
                                              "profile.password_manager_enabled": False})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    wait_until(lambda: driver.find_elements(By.ID, "token"), 30, "the page")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in-button").click()
    wait_until(lambda: driver.execute_script("return !!window.povfarm && window.povfarm.state().role"), 30,
               "signed in")
    driver.execute_script("document.getElementById('overlay').style.visibility = 'hidden'")
    return driver


def canvas_box(driver) -> tuple[int, int, int, int]:
    """The page's image on the screen (no window decorations under a bare X server)."""
    left, top, width, height, above = driver.execute_script(
        "const r = document.getElementById('image').getBoundingClientRect();"
        "return [r.left, r.top, r.width, r.height, window.outerHeight - window.innerHeight];")
    x, y = PAGE_AT[0], PAGE_AT[1] + above
    return round(x + left) + 1, round(y + top) + 1, round(x + left + width) - 1, round(y + top + height) - 1


def _screen_up(grabber) -> bool:
    try:
        return bool(grabber.grab(xdisplay=DISPLAY))
    except OSError:
        return False


def measure(shots: list[tuple[float, dict[str, str]]], name: str) -> dict:
    changes = [t for (t, now), (_, before) in zip(shots[1:], shots) if now[name] != before[name]]
    if not changes:
        return {"first_change_s": None, "changes": 0, "longest_still_s": None}
    marks = [0.0, *changes]
    return {"first_change_s": changes[0], "changes": len(changes), "last_change_s": changes[-1],
            "longest_still_s": max(b - a for a, b in zip(marks, marks[1:]))}


def warm_up(farm: Farm, driver, spec: dict, tmp: Path, size: tuple[int, int]) -> dict[str, tuple]:
    """A quick job of the same size first: both viewers size their image for it, as for the job measured.
    Returns the three image areas on the screen."""
    warm = tmp / "warm" / "warm.pov"
    warm.parent.mkdir()
    warm.write_text("camera { location <0, 0, -3> look_at 0 }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    warm_id = farm.submit.call("jobs.submit", {**spec, "bundle": upload(farm.submit, warm), "scene": warm.name,
                                               "options": [], "name": "warm-up"})

    def shown() -> bool:
        state = driver.execute_script("return window.povfarm.state()")
        return state["drained"] and state["job"] == warm_id
    wait_until(shown, 300, "the warm-up job")
    time.sleep(3)                     # both viewers show it and follow the farm
    # The pygame window: the image (scaled to fit, centred) above a status bar of about 46 pixels.
    window = max(480, size[0]), max(270 - 46, size[1])
    return {"povray": (*POVRAY_AT, POVRAY_AT[0] + size[0], POVRAY_AT[1] + size[1]),
            "pygame": (*VIEWER_AT, VIEWER_AT[0] + window[0], VIEWER_AT[1] + window[1] - 4),
            "page": canvas_box(driver)}


def capture(farm: Farm, povray: subprocess.Popen, job_id: int, boxes: dict, start: float, save: Path) -> dict:
    """Capture the screen every EVERY seconds until POV-Ray and the farm's job have ended, and measure."""
    from PIL import ImageGrab

    shots: list[tuple[float, dict[str, str]]] = []
    povray_ended = farm_ended = None
    while time.monotonic() - start < 1800:
        at = time.monotonic() - start
        screen = ImageGrab.grab(xdisplay=DISPLAY)
        shots.append((at, {name: hashlib.sha1(screen.crop(box).tobytes()).hexdigest() for name, box in boxes.items()}))
        if povray_ended is None and povray.poll() is not None:
            povray_ended = at
        if farm_ended is None and farm.submit.call("jobs.status", job_id)["state"] in ENDED:
            farm_ended = at
        if povray_ended is not None and farm_ended is not None and at > max(povray_ended, farm_ended) + 3:
            break
        time.sleep(max(0.0, start + at + EVERY - time.monotonic()))
    screen.save(save.with_suffix(".png"))
    # POV-Ray's window closes when it ends: what it showed is measured up to then.
    return {"povray_s": povray_ended, "farm_s": farm_ended, "captures": len(shots), "boxes": boxes,
            "povray": measure([shot for shot in shots if shot[0] < povray_ended], "povray"),
            "pygame": measure(shots, "pygame"), "page": measure(shots, "page")}


def report(args, result: dict) -> None:
    ref = result["povray"]
    print(f"\n{args.scene} {args.width}x{args.height} {' '.join(args.option)}: povray +WT2 {result['povray_s']:.1f} s, "
          f"the farm (boxA + boxB, 1 thread each) {result['farm_s']:.1f} s; load {result['loadavg_before'][0]:.1f} "
          f"before, {result['loadavg_after'][0]:.1f} after; captured every {EVERY} s")
    print("| | POV-Ray `+D` window | pygame viewer | page |\n|---|---|---|---|")
    for key, label in (("first_change_s", "first change (s)"), ("changes", "changes"),
                       ("longest_still_s", "longest still (s)")):
        cells = [result[name][key] for name in ("povray", "pygame", "page")]
        print(f"| {label} | " + " | ".join(f"{cell:.1f}" if isinstance(cell, float) else str(cell) for cell in cells)
              + " |")
    for name in ("pygame", "page"):
        mine = result[name]
        often = mine["changes"] >= ref["changes"] / 2
        still = mine["longest_still_s"] is not None and mine["longest_still_s"] <= 3 * ref["longest_still_s"]
        print(f"{name}: changes >= half of POV-Ray's: {often}; longest still <= 3x POV-Ray's: {still}")


def stop(started: list[subprocess.Popen]) -> None:
    for process in reversed(started):
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = scene_arguments(__doc__)
    parser.add_argument("--save", type=Path, default=ROOT / "bench" / "results" / "live_screen.json")
    args = parser.parse_args()
    args.option = args.option or ["+A0.3"]
    scene = SCENES / args.scene
    missing = [program for program in ("Xvfb", "chromium", "chromedriver") if shutil.which(program) is None]
    if missing:
        print(f"live_screen: needs {', '.join(missing)} (Debian: apt-get install xvfb chromium chromium-driver)",
              file=sys.stderr)
        return 2
    from PIL import ImageGrab

    started = [subprocess.Popen(["Xvfb", DISPLAY, "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    os.environ["DISPLAY"] = DISPLAY
    driver = farm = None
    result: dict = {"scene": args.scene, "size": [args.width, args.height], "options": args.option,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="povfarm-screen-") as tmp:
        try:
            wait_until(lambda: _screen_up(ImageGrab), 30, "the X server")
            # --render-nice 0: POV-Ray's own window renders at the same time, and a node's POV-Ray otherwise
            # yields to the box's other work (its default), here to the very render it is compared with.
            farm = Farm(Path(tmp), 2, [["--machine", "boxA", "--threads", "1", "--render-nice", "0"],
                                       ["--machine", "boxB", "--threads", "1", "--render-nice", "0"]])
            env = dict(os.environ, SDL_VIDEO_WINDOW_POS=f"{VIEWER_AT[0]},{VIEWER_AT[1]}", PYTHONPATH=str(ROOT))
            started.append(subprocess.Popen([sys.executable, "-c", VIEWER, farm.url, farm.tokens["view"]], env=env,
                                            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            driver = start_page(farm.url, farm.tokens["view"], (SCREEN[0] - PAGE_AT[0], SCREEN[1]),
                                Path(tmp) / "profile")
            spec = {"bundle": upload(farm.submit, scene), "scene": scene.name, "width": args.width,
                    "height": args.height, "options": args.option, "name": "screen"}
            boxes = warm_up(farm, driver, spec, Path(tmp), (args.width, args.height))
            start = time.monotonic()
            povray = subprocess.Popen(["povray", f"+I{scene.name}", f"+W{args.width}", f"+H{args.height}",
                                       *args.option, "+D", "-P", "+WT2", f"+O{Path(tmp) / 'native.png'}"],
                                      cwd=scene.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append(povray)
            result.update(capture(farm, povray, farm.submit.call("jobs.submit", spec), boxes, start, args.save))
            result["loadavg_after"] = os.getloadavg()
        finally:
            if driver is not None:
                driver.quit()
            if farm is not None:
                farm.stop()
            stop(started)
    report(args, result)
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
