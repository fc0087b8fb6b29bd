"""Take the README's picture of the page mid-render, as bench/viewer_screenshot.py takes the pygame viewer's:
the preview shown scaled up, some final strips painted over it, strips in flight outlined per node.

A controller and two nodes run here on loopback (as in bench/viewer_bars.py); headless Chromium (Debian's
`chromium` and `chromium-driver`, through Selenium, 1280x860 as in tests/test_web.py) signs in with the view
token and follows the newest job from before the submit; the page is saved as soon as the job has its
preview, at least `--strips-done` final strips and a strip in flight.

    python bench/web_screenshot.py [--output docs/web.png] [--scene advanced/chess2.pov]
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

from farm.states import ENDED  # noqa: E402
from viewer_bars import SCENES, Farm, upload  # noqa: E402
from viewer_screenshot import ready  # noqa: E402

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--window-size=1280,860",
         "--force-device-scale-factor=1", "--hide-scrollbars"]


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"          # use the browser and driver given, fetch nothing
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "web.png")
    parser.add_argument("--scene", default="advanced/chess2.pov")
    parser.add_argument("--strips-done", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="povfarm-shot-") as tmp:
        farm = Farm(Path(tmp), 2)
        try:
            driver = browser(Path(tmp) / "profile")
            try:
                return shoot(driver, farm, args)
            finally:
                driver.quit()
        finally:
            farm.stop()


def shoot(driver, farm: Farm, args) -> int:
    from selenium.webdriver.common.by import By

    driver.get(farm.url + "/")
    driver.find_element(By.ID, "token").send_keys(farm.tokens["view"])
    driver.find_element(By.ID, "sign-in-button").click()
    deadline = time.monotonic() + 30
    while driver.find_element(By.ID, "link").text != "connected" and time.monotonic() < deadline:
        time.sleep(0.1)
    scene = SCENES / args.scene
    digest = upload(farm.submit, scene)
    time.sleep(1.0)                        # the page follows the farm before the submit
    job = farm.submit.call("jobs.submit", {"bundle": digest, "scene": scene.name, "width": 640, "height": 480,
                                           "options": ["+A0.3"], "name": scene.stem})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = farm.submit.call("jobs.status", job)
        if ready(status, args.strips_done):
            time.sleep(0.4)                # the feed's next send and the tables' refresh
            driver.save_screenshot(str(args.output))
            print(f"wrote {args.output}: {status['strips_done']} strips done, {status['strips_leased']} "
                  f"in flight, preview {status['preview']}")
            return 0
        if status["state"] in ENDED:
            break
        time.sleep(0.2)
    print("the job ended before the picture could be taken", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
