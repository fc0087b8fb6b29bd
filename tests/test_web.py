"""The farm's page, driven by a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
through Selenium, against a real controller, real nodes and the real POV-Ray, all on 127.0.0.1."""

from __future__ import annotations

import base64
import http.client
import os
import zipfile
import zlib
from pathlib import Path

import pytest

from farm.auth import read_token_file
from farm.faults import Code
from farm.images.png import decode_png
from farm.images.raster import Raster
from farm.images.scanlines import filter_rows
from farm.shear import step_for
from harness import EXAMPLE, SCENES, assert_same_pixels, native_render, needs_povray, run_cli, submit, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINEGLASS = SCENES / "advanced/wineglass.pov"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability", "--no-pings",
    "--disable-client-side-phishing-detection", "--disable-features=Translate,OptimizationHints,MediaRouter",
    # Every host name but loopback fails to resolve: the page fetches nothing from anywhere else.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--window-size=1280,860", "--force-device-scale-factor=1",
]

try:
    import selenium  # noqa: F401
    HAS_SELENIUM = True
except ImportError:
    HAS_SELENIUM = False

needs_browser = pytest.mark.skipif(
    not (HAS_SELENIUM and CHROMIUM.exists() and CHROMEDRIVER.exists()) and os.environ.get("CI") != "true",
    reason="needs selenium (pip install '.[test]') and Debian's chromium + chromium-driver")


def start_browser(profile: Path, downloads: Path, *flags: str):
    """Debian's Chromium, headless, with a fresh profile, driven through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"          # Selenium Manager: use the browser and driver given, fetch nothing
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.downloads = downloads
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_browser(tmp_path_factory.mktemp("chromium-profile"), tmp_path_factory.mktemp("downloads"))
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The page in the browser, for one test's farm."""

    def __init__(self, driver, farm):
        self.driver, self.farm = driver, farm
        driver.get("about:blank")
        driver.get(farm.url + "/")

    def el(self, element_id: str):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return self.el(element_id).text

    def sign_in(self, token: str) -> None:
        box = self.el("token")
        box.clear()
        box.send_keys(token)
        self.el("sign-in-button").click()

    def state(self) -> dict:
        return self.driver.execute_script("return window.povfarm.state()")

    def wait(self, predicate, timeout: float = 60.0, what: str = "the page"):
        return wait_until(predicate, timeout=timeout, interval=0.1, what=what)

    def call(self, method: str, *params):
        """An API call made by the page's own client (its token); returns [ok, result or [code, message]]."""
        return self.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            window.povfarm.call(arguments[0], ...arguments[1])
              .then((r) => done([true, r instanceof Uint8Array ? r.length : r]))
              .catch((e) => done([false, [e.code, e.message]]));""", method, list(params))

    def canvas_rgba(self) -> bytes:
        data = self.driver.execute_script("""
            const c = document.getElementById('image');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let s = '';
            for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
            return btoa(s);""")
        return base64.b64decode(data)


def token(farm, role: str) -> str:
    return read_token_file(farm.token_file)[role]


def rgba(raster: Raster) -> bytes:
    """A stored 8-bit RGB image as the canvas holds it."""
    assert raster.channels == 3 and raster.bits == 8
    out = bytearray(raster.width * raster.height * 4)
    out[0::4], out[1::4], out[2::4] = raster.pixels[0::3], raster.pixels[1::3], raster.pixels[2::3]
    out[3::4] = b"\xff" * (raster.width * raster.height)
    return bytes(out)


def get(url: str, path: str) -> tuple[int, dict, bytes]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# -- serving -------------------------------------------------------------------------------------------------

def test_the_page_is_served_without_a_token_but_the_api_still_needs_one(farm):
    farm.start_controller()
    status, headers, body = get(farm.url, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"povfarm" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    for name in ("app.js", "colours.js", "eta.js", "words.js", "canvas.js", "feed.js", "submit.js",
                 "downloads.js", "xmlrpc.js", "zip.js", "logs.js", "style.css"):
        status, headers, body = get(farm.url, "/" + name)
        assert status == 200 and body, name
        assert not any(marker in body for marker in (b"http://", b"https://")), f"{name} names another host"
    assert get(farm.url, "/../farm/controller.py")[0] == 404
    assert get(farm.url, "/tokens")[0] == 404
    host, port = farm.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    body = b"<?xml version='1.0'?><methodCall><methodName>jobs.list</methodName><params/></methodCall>"
    connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
    assert connection.getresponse().status == 401
    connection.close()


# -- watching ------------------------------------------------------------------------------------------------

@needs_browser
@needs_povray
def test_a_view_token_watches_a_render_paint_and_may_change_nothing(browser, farm, tmp_path):
    farm.start_controller()
    page = Page(browser, farm)
    page.sign_in("not-the-token")
    page.wait(lambda: "refused" in page.text("sign-in-error"), what="the wrong token refused")
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["role"] == "view", what="signed in")
    assert not page.el("actions").is_displayed() and not page.el("submit").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('povfarm.token')") == token(farm, "view")

    farm.start_node("n1")
    farm.start_node("n2", "--tags", "fast,linux")
    submitted = run_cli("submit", str(WINEGLASS), "--width", "160", "--height", "120", "--strips", "4",
                        "--option", "+A0.3", "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)
    page.wait(lambda: page.state()["job"] == job_id, what="the page to follow the new job")
    page.wait(lambda: page.state()["rows"] > 0, what="the first strip painted")
    page.wait(lambda: page.state()["drained"], timeout=90, what="the job to finish painting")
    assert page.state()["jobState"] == "done" and page.state()["rows"] == 120
    assert page.state()["via"] == "stream"          # the feed stream, not long polls
    fetched = decode_png(farm.client.call("jobs.fetch", job_id).data)
    assert page.canvas_rgba() == rgba(fetched)

    page.wait(lambda: len(page.driver.find_elements("css selector", "#nodes-body tr")) == 2, what="two nodes")
    row = page.driver.find_element("css selector", f"#jobs-body tr[data-job='{job_id}']").text
    assert "wineglass" in row and "done" in row and "4/4" in row
    nodes = [tr.text for tr in page.driver.find_elements("css selector", "#nodes-body tr")]
    assert nodes[0].endswith(" -") and nodes[1].endswith(" fast,linux")      # each node's tags
    page.wait(lambda: "Controller disk:" in page.text("farm-disk") and " images" in page.text("farm-disk"),
              what="the controller's disk use")

    # Reloading the tab keeps the token; the view token is refused every change.
    browser.refresh()
    page.wait(lambda: browser.execute_script("return !!window.povfarm && window.povfarm.state().role") == "view",
              what="signed in again after a reload")
    for method in ("jobs.cancel", "jobs.pause", "jobs.resume"):
        ok, (code, message) = page.call(method, job_id)
        assert not ok and code == Code.FORBIDDEN and f"may not call {method}" in message
    ok, (code, _) = page.call("jobs.set_priority", job_id, 5)
    assert not ok and code == Code.FORBIDDEN
    assert farm.client.call("jobs.status", job_id)["priority"] == 0

    # The PNG download is the stored image.
    page.el("download-png").click()
    saved = page.wait(lambda: [p for p in browser.downloads.glob("wineglass*.png")], what="the download")[0]
    assert decode_png(saved.read_bytes()) == fetched

    # Following the farm, the page counts as a viewer of what comes next: the next job gets its preview
    # (by default rendered only for a job that someone watches) and the page shows it.
    page.wait(lambda: page.state()["drained"], what="the finished job painted again")
    second = run_cli("submit", str(WINEGLASS), "--width", "160", "--height", "120", "--controller", farm.url)
    assert second.returncode == 0, second.stderr
    second_id = int(second.stdout)
    page.wait(lambda: page.state()["job"] == second_id, what="the page to follow the next job")
    page.wait(lambda: farm.client.call("jobs.status", second_id)["state"] == "done", timeout=90, what="the next job")
    assert farm.client.call("jobs.status", second_id)["preview"] == "done"
    # Cut as the nodes asked, its strips were interleaved (farm/shear.py) in 16-pixel blocks: the page put
    # their blocks in place.
    second_status = farm.client.call("jobs.status", second_id)
    assert (second_status["shear"], second_status["block"]) == (step_for(120 // 16), 16)
    page.wait(lambda: page.state()["drained"], timeout=30, what="the next job painted")
    assert page.canvas_rgba() == rgba(decode_png(farm.client.call("jobs.fetch", second_id).data))


@needs_browser
@needs_povray
def test_the_page_shows_the_scenes_messages_once_and_each_units_povray_output(browser, farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1", slots=2)
    scene = tmp_path / "speak.pov"
    scene.write_text('#version 3.7;\nglobal_settings { assumed_gamma 1 }\n#debug "hello\\n"\n#warning "mind the gap"\n'
                     'camera { location -3 look_at 0 }\nsphere { 0, 1 pigment { rgb 1 } }\n')
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["role"] == "view", what="signed in")
    submitted = run_cli("submit", str(scene), "+W64", "+H128", "--strips", "2", "--wait", "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr

    def runs():   # the strips' runs: a page open before the job watches it, so a preview run may be there too
        return [run for run in page.driver.find_elements("css selector", ".log-run")
                if "(preview)" not in run.find_element("css selector", "summary").text]
    page.wait(lambda: page.el("logs").is_displayed() and len(runs()) == 2, what="both units' logs on the page")
    assert page.text("log-messages") == "hello\nFile 'speak.pov' line 4: Parse Warning: mind the gap"
    assert all("n1" in run.text and "done, exit 0" in run.text for run in runs())
    runs()[0].find_element("css selector", "summary").click()
    shown = runs()[0].find_element("css selector", "pre").text
    assert "povray +Ispeak.pov" in shown and "hello" in shown and "Render Statistics" in shown
    assert "Persistence of Vision" not in shown      # the banner is kept but not shown


@needs_browser
@needs_povray
def test_the_page_says_reconnecting_while_the_controller_restarts_then_carries_on(browser, farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1")
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.text("link") == "connected", what="connected")
    shots = Path(os.environ.get("POVFARM_WEB_SCREENSHOT", tmp_path / "web.png"))

    farm.controller.terminate()
    farm.controller.wait(15)
    page.wait(lambda: "reconnecting" in page.text("link"), timeout=20, what="reconnecting")
    assert "stale" in page.el("farm").get_attribute("class")      # the figures are as of its last answer
    farm.start_controller()
    farm.start_node("n2")
    page.wait(lambda: page.text("link") == "connected", timeout=30, what="connected again")
    assert "stale" not in page.el("farm").get_attribute("class")
    submitted = run_cli("submit", str(EXAMPLE), "--width", "320", "--height", "240", "--strips", "8",
                        "--option", "+A0.3", "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)
    page.wait(lambda: page.state()["job"] == job_id and page.state()["rows"] >= 96, timeout=60,
              what="the new job painting")
    if page.state()["jobState"] != "done":
        browser.save_screenshot(str(shots))     # mid-render, for the README
    page.wait(lambda: page.state()["drained"], timeout=90, what="the job to finish painting")
    fetched = decode_png(farm.client.call("jobs.fetch", job_id).data)
    assert page.canvas_rgba() == rgba(fetched)


# -- acting --------------------------------------------------------------------------------------------------

@needs_browser
def test_a_submit_token_pauses_resumes_reprioritises_and_cancels(browser, farm, tmp_path):
    farm.start_controller()                    # no nodes: the job stays queued while the page acts on it
    job_id = submit_queued(farm, tmp_path)
    page = Page(browser, farm)
    page.sign_in(token(farm, "submit"))
    page.wait(lambda: page.state()["role"] == "submit" and page.state()["jobState"] == "queued",
              what="the queued job shown")
    assert page.el("actions").is_displayed()

    def state():
        return farm.client.call("jobs.status", job_id)["state"]

    page.el("action-pause").click()
    page.wait(lambda: state() == "paused", what="paused")
    page.wait(lambda: page.state()["jobState"] == "paused", what="the page showing paused")
    page.el("action-resume").click()
    page.wait(lambda: state() == "queued", what="resumed")
    priority = page.el("priority")
    priority.clear()
    priority.send_keys("7")
    page.el("action-priority").click()
    page.wait(lambda: farm.client.call("jobs.status", job_id)["priority"] == 7, what="priority 7")
    page.el("action-cancel").click()
    page.wait(lambda: state() == "canceled", what="canceled")
    page.wait(lambda: page.state()["jobState"] == "canceled", what="the page showing canceled")
    ok, (code, _) = page.call("jobs.pause", job_id)
    assert not ok and code == Code.JOB_FINISHED


def submit_queued(farm, tmp_path, width: int = 64, height: int = 64) -> int:
    scene = tmp_path / "q" / "q.pov"
    scene.parent.mkdir()
    scene.write_text("camera { location <0, 0, -3> look_at 0 } sphere { 0, 1 pigment { rgb 1 } }\n")
    # In POV-Ray's default 32-pixel blocks, as the pieces fed to the page by hand are cut (a sheared job
    # without anti-aliasing would get 16-pixel ones: farm.shear.fine_block).
    submitted = run_cli("submit", str(scene), "--width", str(width), "--height", str(height), "--option", "+BS32",
                        "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    return int(submitted.stdout)


@needs_browser
@needs_povray
def test_submitting_a_scene_from_the_page(browser, farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1", slots=2)
    page = Page(browser, farm)
    page.sign_in(token(farm, "submit"))
    page.wait(lambda: page.state()["role"] == "submit", what="signed in")
    scene_dir = EXAMPLE.parent
    files = sorted(str(p) for p in scene_dir.iterdir() if p.is_file())

    # Options the farm owns are refused with the controller's sentence, as on the command line.
    fill_submit(page, "\n".join(files), 160, 120, "+O/tmp/x.png")
    page.el("submit-button").click()
    page.wait(lambda: "is not allowed" in page.text("submit-result"), what="+O refused")
    assert farm.client.call("jobs.list") == []

    fill_submit(page, "\n".join(files), 160, 120, "+A0.3")
    page.el("submit-button").click()
    first = int(page.wait(lambda: _queued(page), what="the job queued"))

    # A zip of the scene's folder, as zip tools make it (a folder entry first).
    archive = tmp_path / "lantern.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("lantern/", b"")
        for path in scene_dir.iterdir():
            z.write(path, f"lantern/{path.name}")
    fill_submit(page, str(archive), 160, 120, "+A0.3")
    page.wait(lambda: page.el("submit-scene").get_attribute("value") == "lantern/lantern.pov", what="scene chosen")
    page.el("submit-button").click()
    second = int(page.wait(lambda: (n := _queued(page)) and int(n) != first and n, what="the second job"))

    reference = native_render(EXAMPLE, 160, 120, ["+A0.3"], tmp_path / "native.png")
    for job_id in (first, second):
        wait_until(lambda: farm.client.call("jobs.status", job_id)["state"] in ("done", "failed"), timeout=90,
                   what=f"job {job_id}")
        status = farm.client.call("jobs.status", job_id)
        assert status["state"] == "done", status["error"]
        out = tmp_path / f"{job_id}.png"
        out.write_bytes(farm.client.call("jobs.fetch", job_id).data)
        assert_same_pixels(out, reference)
    assert farm.client.call("jobs.status", second)["scene"] == "lantern/lantern.pov"


def fill_submit(page, paths: str, width: int, height: int, options: str) -> None:
    files = page.el("submit-files")
    page.driver.execute_script("arguments[0].value = ''", files)
    files.send_keys(paths)
    page.wait(lambda: page.el("submit-scene").get_attribute("value"), what="the scene list")
    for element_id, value in (("submit-width", width), ("submit-height", height), ("submit-options", options)):
        box = page.el(element_id)
        box.clear()
        box.send_keys(str(value))


def _queued(page):
    text = page.text("submit-result")
    return text.split()[1] if text.startswith("job ") and text.endswith("queued") else None


# -- the feed, encoded once ----------------------------------------------------------------------------------

@needs_browser
@needs_povray
def test_an_animation_steps_through_its_frames_and_downloads_as_an_animated_png(browser, farm, tmp_path):
    from PIL import Image

    farm.start_controller()
    farm.start_node("n1", slots=2)
    scene = tmp_path / "spin" / "spin.pov"
    scene.parent.mkdir()
    scene.write_text("camera { location <0, 0, -4> look_at 0 }\nlight_source { <2, 4, -3> rgb 1 }\n"
                     "box { -1, 1 pigment { checker rgb <1, 0.3, 0.2> rgb <0.2, 0.4, 1> } rotate y * clock * 90 }\n")
    submitted = run_cli("submit", str(scene), "--width", "64", "--height", "48", "--frames", "1-3",
                        "--controller", farm.url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout)
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["job"] == job_id and page.state()["drained"], timeout=90, what="all frames")
    assert page.state()["frame"] == 3 and page.el("frame-controls").is_displayed()
    frames = [decode_png(farm.client.call("jobs.fetch", job_id, n).data) for n in (1, 2, 3)]
    assert page.canvas_rgba() == rgba(frames[2])
    page.el("frame-prev").click()
    page.el("frame-prev").click()
    assert page.state()["frame"] == 1 and "frame 1" in page.text("frame-label")
    assert page.canvas_rgba() == rgba(frames[0])

    page.el("download-apng").click()
    saved = page.wait(lambda: [p for p in browser.downloads.glob("spin-animation*.png")], what="the APNG")[0]
    with Image.open(saved) as animation:
        assert animation.n_frames == 3
        for index, frame in enumerate(frames):
            animation.seek(index)
            assert animation.convert("RGB").tobytes() == frame.pixels, f"frame {index + 1}"


@needs_browser
@needs_povray
def test_an_animation_shows_its_newest_frame_with_pixels_live_and_plays_its_finished_frames_while_it_runs(
        browser, farm):
    """clockd, 6 frames in two runs of 3 on one node, the page open from before the submit."""
    farm.start_controller()
    farm.start_node("n1")
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["role"] == "view", what="signed in")
    job_id = submit(farm.client, SCENES / "animations/clockd/clockd.pov", width=240, height=180, strips="auto",
                    options=["+A0.3"],
                    animation={"first": 1, "last": 6, "initial_clock": 0.0, "final_clock": 1.0, "cyclic": True})
    seen = []

    def stepped_while_running():
        state = page.state()
        seen.append(state)
        return state["job"] == job_id and len(state["framesWithPixels"]) >= 2 and state["jobState"] == "rendering"
    page.wait(stepped_while_running, timeout=90, what="two frames with pixels while the job runs")
    newest = page.state()["frame"]
    page.el("frame-prev").click()
    assert page.state()["frame"] < newest and page.state()["pixels"]
    page.el("frame-play").click()
    played = set()
    page.wait(lambda: played.add(page.state()["frame"]) or len(played) >= 2, what="the frames playing")
    assert page.state()["playing"]
    page.el("frame-follow").click()
    assert not page.state()["playing"]

    def ended():
        state = page.state()
        seen.append(state)
        return state["drained"] and state["jobState"] == "done"
    page.wait(ended, timeout=90, what="the job's end")
    shown = [state for state in seen if state["job"] == job_id and state["framesWithPixels"]]
    assert all(state["pixels"] for state in shown), [s for s in shown if not s["pixels"]][:3]   # never empty
    assert any(state["rows"] == 0 for state in shown)      # live blocks before any final rows of the frame
    assert page.state()["frame"] == 6


@needs_browser
def test_a_preview_is_shown_scaled_up_until_the_frames_rows_replace_it(browser, farm, tmp_path):
    import zlib

    farm.start_controller()                    # no nodes: the job waits, and the page is fed by hand
    job_id = submit_queued(farm, tmp_path)
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["job"] == job_id and page.state()["jobState"] == "queued", what="the job")
    info = farm.client.call("jobs.list")[0]

    def reply(*pieces):
        return {"job": info, "cursor": 0, "in_flight": [], "strips": [
            {**piece, "rows": base64.b64encode(zlib.compress(piece["rows"])).decode()} for piece in pieces]}

    red, blue = bytes([200, 10, 10]), bytes([10, 10, 200])
    preview = {"kind": "preview", "frame": 1, "width": 16, "height": 16, "row_start": 0, "row_end": 16,
               "rows": red * 16 * 16}
    browser.execute_async_script("window.povfarm.paint(arguments[0]).then(arguments[1])", reply(preview))
    pixels = page.canvas_rgba()
    assert pixels == bytes([200, 10, 10, 255]) * 64 * 64          # the 16x16 preview fills the 64x64 frame
    rows = {"frame": 1, "row_start": 0, "row_end": 32, "rows": blue * 64 * 32}
    browser.execute_async_script("window.povfarm.paint(arguments[0]).then(arguments[1])", reply(rows))
    pixels = page.canvas_rgba()
    assert pixels[:64 * 32 * 4] == bytes([10, 10, 200, 255]) * 64 * 32   # final rows replace it...
    assert pixels[64 * 32 * 4:] == bytes([200, 10, 10, 255]) * 64 * 32   # ...and the rest stays the preview


@needs_browser
def test_the_page_derives_colours_times_and_words_as_the_viewer_does(browser, farm):
    from farm.viewing.colours import css, node_colour
    from farm.viewing.eta import ShownEta

    farm.start_controller()
    Page(browser, farm)                        # loaded: no need to sign in
    names = ["boxA", "boxB", "view", "n1", "node-7", "büro", "渲染", "a b", "x" * 60, *(f"node{i}" for i in range(50))]
    assert browser.execute_script("return arguments[0].map(window.povfarm.colour)", names) == [
        css(node_colour(name)) for name in names]
    steps = [("measure", 240.0, -2.0, True), ("measure", 200.0, -1.0, True), ("measure", 50.0, 0.0, False),
             ("measure", 26.0, 1.5, False), ("measure", 36.0, 3.0, False), ("hold", None, 4.0, False),
             ("resume", None, 9.0, False), ("measure", 30.0, 12.0, False), ("measure", 90.0, 13.0, True)]
    shown = ShownEta()
    expected = []
    for what, value, at, guess in steps:
        getattr(shown, what)(*((value, at, guess) if what == "measure" else (at,)))
        expected.append(shown.left(at + 0.5))
    got = browser.execute_script("""
        const eta = new window.povfarm.EtaShown();
        return arguments[0].map(([what, value, at, guess]) => {
          if (what === "measure") eta.measure(value, at, guess); else eta[what](at);
          return eta.left(at + 0.5);
        });""", steps)
    assert got == pytest.approx(expected)
    node = {"name": "n1", "current": "2/1/0,2/1/3,3/4/1"}
    assert browser.execute_script("return window.povfarm.currentWork(arguments[0])", node) == (
        "job 2, frame 1, strips 0, 3; job 3, frame 4, strip 1")


@needs_browser
def test_the_preview_is_outlined_whole_and_an_image_shown_at_its_size_at_1280_px(browser, farm, tmp_path):
    farm.start_controller()                    # no nodes: the job waits, and the page is fed by hand
    job_id = submit_queued(farm, tmp_path, 640, 480)
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["job"] == job_id and page.state()["jobState"] == "queued", what="the job")
    info = {**farm.client.call("jobs.list")[0], "state": "rendering", "started": 1.0}
    assert info["shear"] == 8          # cut as nodes ask: interleaved (farm/shear.py)
    in_flight = [{"frame": 1, "row_start": 0, "row_end": 60, "node": "view", "progress": 0.0, "kind": "preview"},
                 {"frame": 1, "row_start": 0, "row_end": 64, "node": "boxB", "progress": 0.0, "kind": "rows"}]
    browser.execute_async_script("window.povfarm.paint(arguments[0]).then(arguments[1])",
                                 {"job": info, "cursor": 0, "strips": [], "in_flight": in_flight})
    boxes = browser.execute_script("""
        const rect = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
        const stage = document.getElementById('stage'), image = document.getElementById('image');
        return {stage: rect(stage), image: rect(image), rendering: image.style.imageRendering,
                boxes: [...document.querySelectorAll('.in-flight:not(.part)')].map((b) => [b.dataset.node, rect(b),
                        rect(b.querySelector('span')), b.querySelector('span').textContent]),
                parts: [...document.querySelectorAll('.in-flight.part')].map(rect)};""")
    assert boxes["image"][2] - boxes["image"][0] == 640                 # its own size: no shrinking
    (_, whole, preview, text), (_, _, label, _) = sorted(boxes["boxes"], key=lambda b: b[0] != "view")
    assert text == "view preview 0%" and whole[1] == boxes["stage"][1] and whole[3] == boxes["stage"][3]
    # The sheared strip's two block rows lie a block column at a time all over the frame: 64 rows of each.
    assert len(boxes["parts"]) >= 20 and {round(part[2] - part[0]) for part in boxes["parts"]} == {32}
    assert sum((part[2] - part[0]) * (part[3] - part[1]) for part in boxes["parts"]) == pytest.approx(640 * 64, rel=0.01)
    assert len({round(part[1]) for part in boxes["parts"]}) > 10
    assert preview[0] >= label[2] or preview[1] >= label[3]         # the labels do not overlap
    try:
        browser.set_window_size(700, 860)
        page.wait(lambda: browser.execute_script("return document.getElementById('image').style.imageRendering")
                  == "auto", timeout=10, what="the shrunk image smoothed")
    finally:
        browser.set_window_size(1280, 860)
    assert "0 of " in page.text("job-status") and "strips so far" in page.text("job-status")


@needs_browser
@needs_povray
def test_a_page_open_before_the_first_job_watches_it_from_its_start(browser, farm, tmp_path):
    farm.start_controller()
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["awaiting"], what="the page watching for a first job")
    job_id = submit_queued(farm, tmp_path)
    page.wait(lambda: page.state()["job"] == job_id, what="the page showing the job")
    farm.start_node("n1")
    page.wait(lambda: page.state()["drained"], timeout=90, what="the job painted")
    assert farm.client.call("jobs.status", job_id)["preview"] == "done"     # watched as it started


@needs_browser
def test_the_page_unfilters_rows_sent_in_the_compact_filtered_form(browser, farm, tmp_path):
    """Rows as current nodes deliver them (PNG scanlines): every one of the five filters is undone."""
    import random

    farm.start_controller()
    job_id = submit_queued(farm, tmp_path)
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: page.state()["job"] == job_id and page.state()["jobState"] == "queued", what="the job")
    info = farm.client.call("jobs.list")[0]
    noise = random.Random(17)
    pixels = bytes((x * 3 + y * 5 + noise.randrange(0, 40 if y % 3 else 256)) & 255
                   for y in range(64) for x in range(64 * 3))
    scanlines = filter_rows(pixels, 64 * 3, 3, all_filters=True)    # nodes use only 0-2; any may come
    assert {scanlines[y * (64 * 3 + 1)] for y in range(64)} == {0, 1, 2, 3, 4}
    piece = {"frame": 1, "row_start": 0, "row_end": 64, "kind": "rows", "encoding": "filtered",
             "rows": base64.b64encode(zlib.compress(scanlines)).decode()}
    browser.execute_async_script("window.povfarm.paint(arguments[0]).then(arguments[1])",
                                 {"job": info, "cursor": 0, "in_flight": [], "strips": [piece]})
    assert page.canvas_rgba() == rgba(Raster(64, 64, 3, 8, pixels))


@needs_browser
def test_fifty_jobs_and_sixty_four_nodes_fit_in_the_tables(browser, farm, tmp_path):
    import xmlrpc.client

    from farm.bundle.packing import pack, plan_bundle
    from farm.bundle.rules import bundle_hash

    farm.start_controller()
    scene = tmp_path / "s" / "s.pov"
    scene.parent.mkdir()
    scene.write_text("sphere { 0, 1 pigment { rgb 1 } }\n")
    data = pack(plan_bundle(scene))
    farm.client.call("bundles.upload", xmlrpc.client.Binary(data))
    for n in range(50):
        farm.client.call("jobs.submit", {"bundle": bundle_hash(data), "scene": "s.pov", "width": 32, "height": 32,
                                         "name": f"shot-{n + 1:02d}"})
    nodes = farm.client_as("node")
    for n in range(64):
        node_id = nodes.call("nodes.register", f"box-{n + 1:02d}", {"povray": "3.7.0.10", "threads": 2, "slots": 2})
    nodes.call("nodes.heartbeat", node_id["node_id"], {}, {"upload_bps": 125000.0})   # box-64 on a 1 Mbit/s link
    page = Page(browser, farm)
    page.sign_in(token(farm, "view"))
    page.wait(lambda: len(browser.find_elements("css selector", "#jobs-body tr.job")) == 50, what="50 jobs")
    page.wait(lambda: len(browser.find_elements("css selector", "#nodes-body tr")) == 64, what="64 nodes")
    first = browser.find_element("css selector", "#jobs-body tr.job").text
    assert first.startswith("50 shot-50")                         # newest first
    page.wait(lambda: "1 Mbit/s" in browser.find_elements("css selector", "#nodes-body tr")[-1].text,
              what="box-64's upload rate")
    assert page.state()["job"] == 50                              # following the newest job


@needs_browser
def test_the_page_over_tls_with_the_controllers_certificate(farm, tmp_path):
    import hashlib
    import subprocess

    from test_security import make_ca_and_cert

    ca, cert, key = make_ca_and_cert(tmp_path)
    farm.url, farm.ca_file = f"https://127.0.0.1:{farm.port}", str(ca)
    farm.start_controller("--tls-cert", str(cert), "--tls-key", str(key))
    public = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                            capture_output=True).stdout
    pin = base64.b64encode(hashlib.sha256(public).digest()).decode()
    # The browser trusts exactly this server key (the test CA is not in its store).
    driver = start_browser(tmp_path / "profile", tmp_path / "downloads", f"--ignore-certificate-errors-spki-list={pin}")
    try:
        page = Page(driver, farm)
        assert driver.execute_script("return location.protocol") == "https:"
        page.sign_in(token(farm, "view"))
        page.wait(lambda: page.state()["role"] == "view" and page.text("link") == "connected", what="signed in")
        ok, versions = page.call("api.version")
        assert ok and versions["api"] == 1
    finally:
        driver.quit()
