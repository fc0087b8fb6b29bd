"""The farm as users run it: real controller and node processes, real povray, pixels compared
with POV-Ray rendering the same scene in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import EXAMPLE, SCENES, assert_same_pixels, native_render, needs_povray, run_cli

pytestmark = needs_povray


def _render(scene: Path, out: Path, *args: str, nodes: int = 2):
    result = run_cli("render", str(scene), "--nodes", str(nodes), "--output", str(out), *args)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("scene, options, strips", [
    # Local #include and a local image map, anti-aliased with strips on block edges.
    (SCENES / "advanced/drums2/drums.pov", ["+A0.3"], "4"),
    # Refraction, no anti-aliasing, more strips than nodes.
    (SCENES / "advanced/wineglass.pov", [], "6"),
    # An alpha channel: RGBA all the way through.
    (SCENES / "advanced/wineglass.pov", ["+UA"], "3"),
    # The adaptive anti-aliasing method and automatic strips.
    (SCENES / "textures/pigments/crack1.pov", ["+A0.1", "+AM2"], "auto"),
], ids=["drums-aa", "wineglass", "wineglass-alpha", "crack1-am2"])
def test_render_matches_single_process_povray(tmp_path, scene, options, strips):
    out = tmp_path / "farm.png"
    opts = [arg for option in options for arg in ("--option", option)]
    _render(scene, out, "--width", "320", "--height", "240", "--strips", strips, *opts)
    reference = native_render(scene, 320, 240, options, tmp_path / "native.png", once=True)
    assert_same_pixels(out, reference)


def test_sixteen_bits_per_channel(tmp_path):
    from farm.images.png import decode_png

    scene = SCENES / "advanced/wineglass.pov"
    out = tmp_path / "farm.png"
    _render(scene, out, "--width", "160", "--height", "120", "--strips", "3", "--bits", "16")
    reference = native_render(scene, 160, 120, [], tmp_path / "native.png", file_type="N16")
    ours, theirs = decode_png(out.read_bytes()), decode_png(reference.read_bytes())
    assert (ours.bits, ours.channels) == (16, 3)
    assert ours.pixels == theirs.pixels


def test_example_scene_of_the_readme(tmp_path):
    out = tmp_path / "lantern.png"
    _render(EXAMPLE, out, "--width", "320", "--height", "240", "--option", "+A0.3")
    assert_same_pixels(out, native_render(EXAMPLE, 320, 240, ["+A0.3"], tmp_path / "native.png"))


def test_chess2_in_eight_strips_on_two_nodes(tmp_path):
    """The foundation's acceptance command, exactly."""
    scene = SCENES / "advanced/chess2.pov"
    out = tmp_path / "out.png"
    _render(scene, out, "--width", "320", "--height", "240", "--strips", "8", "--option", "+A0.3")
    assert_same_pixels(out, native_render(scene, 320, 240, ["+A0.3"], tmp_path / "native.png"))


BROKEN_SCENE = """#include "colors.inc"
camera { location <0, 1, -3> look_at 0 }
sphere { 0, 1 pigment { Red }
box { 0, 1 }
"""


def test_separate_controller_and_nodes(farm, tmp_path):
    farm.start_controller()
    farm.start_node("n1")
    farm.start_node("n2")
    url = ["--controller", farm.url]
    scene = SCENES / "advanced/drums2/drums.pov"

    # A good job through submit --wait.
    out = tmp_path / "drums.png"
    done = run_cli("submit", str(scene), "--width", "160", "--height", "120", "--strips", "4",
                   "--option", "+A0.3", "--wait", "--output", str(out), *url)
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.strip())
    assert_same_pixels(out, native_render(scene, 160, 120, ["+A0.3"], tmp_path / "native.png"))

    status = json.loads(run_cli("status", str(job_id), "--json", *url).stdout)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["error"] is None
    assert (status["width"], status["height"], status["strips_total"], status["strips_done"]) == (160, 120, 4, 4)

    # A broken scene fails once, with POV-Ray's file, line and message.
    broken = tmp_path / "broken" / "broken.pov"
    broken.parent.mkdir()
    broken.write_text(BROKEN_SCENE)
    failed = run_cli("submit", str(broken), "--width", "64", "--height", "48", "--wait", *url)
    assert failed.returncode != 0
    assert "broken.pov' line 4" in failed.stderr and "Parse Error" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr

    # Controller and nodes keep serving: the next job renders.
    again = run_cli("submit", str(scene), "--width", "96", "--height", "64", "--wait",
                    "--output", str(tmp_path / "again.png"), *url)
    assert again.returncode == 0, again.stderr
    jobs = json.loads(run_cli("jobs", "--json", *url).stdout)
    assert [job["state"] for job in jobs] == ["done", "failed", "done"]
    nodes = json.loads(run_cli("nodes", "--json", *url).stdout)
    assert sorted(node["name"] for node in nodes) == ["n1", "n2"]
    assert all(node["state"] in ("idle", "busy") for node in nodes)
    assert all(node["sandbox"] in ("bwrap", "none") and node["slots"] == 1 for node in nodes)
    assert all(node["upload_bps"] >= 0 for node in nodes)
    table = run_cli("nodes", *url).stdout
    assert "SANDBOX" in table and "UPLOAD" in table and "n1" in table and "n2" in table

    fetched = tmp_path / "fetched.png"
    assert run_cli("fetch", str(job_id), "--output", str(fetched), *url).returncode == 0
    assert_same_pixels(fetched, out)


def test_submit_without_wait_prints_the_job_id_then_cancel(farm, tmp_path):
    farm.start_controller()   # no nodes: the job stays queued
    url = ["--controller", farm.url]
    submitted = run_cli("submit", str(SCENES / "advanced/wineglass.pov"), *url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert json.loads(run_cli("status", job_id, "--json", *url).stdout)["state"] == "queued"
    not_done = run_cli("fetch", job_id, "--output", str(tmp_path / "x.png"), *url)
    assert not_done.returncode == 1 and "is queued" in not_done.stderr
    assert run_cli("cancel", job_id, *url).returncode == 0
    assert json.loads(run_cli("status", job_id, "--json", *url).stdout)["state"] == "canceled"
    again = run_cli("cancel", job_id, *url)
    assert again.returncode == 1 and "already canceled" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["status", "999"], "there is no job 999"),
    (["fetch", "999", "--output", "x.png"], "there is no job 999"),
    (["cancel", "999"], "there is no job 999"),
    (["submit", "/no/such/scene.pov"], "no such scene file"),
    (["submit", "SCENE", "--option", "+O/etc/passwd"], "not allowed"),
    (["submit", "SCENE", "--option", "+L/tmp"], "not allowed"),
])
def test_bad_input_gets_one_clear_sentence(farm, args, message):
    farm.start_controller()
    args = [str(SCENES / "advanced/wineglass.pov") if arg == "SCENE" else arg for arg in args]
    result = run_cli(*args, "--controller", farm.url)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreachable_controller(tmp_path):
    from harness import free_port

    result = run_cli("jobs", "--controller", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach the controller" in result.stderr and "Traceback" not in result.stderr


def test_controller_url_from_environment(farm):
    import os

    farm.start_controller()
    env = dict(os.environ, POVFARM_CONTROLLER=farm.url)
    result = run_cli("jobs", "--json", env=env)
    assert result.returncode == 0 and json.loads(result.stdout) == []


def test_photon_scene_shares_one_photon_map_per_node_and_stays_exact(farm, tmp_path):
    """Strips load the photon map their node shot once for the frame, instead of shooting it again:
    POV-Ray's own statistics, which each node reports per strip, show it."""
    scene = SCENES / "advanced/grenadine/grenadine.pov"
    farm.start_controller()
    farm.start_node("n1")
    farm.start_node("n2")
    out = tmp_path / "farm.png"
    result = run_cli("submit", str(scene), "--width", "160", "--height", "120", "--strips", "4", "--preview",
                     "--output", str(out), "--controller", farm.url)
    assert result.returncode == 0, result.stderr
    # Photon shooting is repeatable on one thread, so the reference is a one-thread render.
    assert_same_pixels(out, native_render(scene, 160, 120, ["+WT1"], tmp_path / "native.png"))
    logs = farm.log("n1") + farm.log("n2")
    shot, loaded = logs.count(" photons shot"), logs.count("photon map loaded")
    # The 4 strips and the preview (the map does not depend on the size or anti-aliasing): the preview,
    # leased first, shoots its node's map at a twentieth of the size, and the strips load it.
    assert shot + loaded == 5, logs
    assert shot <= 2 and loaded >= 3, logs      # at most one shot per node for the frame


def test_photon_block_is_found_only_in_global_settings():
    from farm.rendering.photons import photons_block, with_photon_file

    assert photons_block("// global_settings { photons { } }\nsphere { 0, 1 }") is None
    assert photons_block("global_settings { assumed_gamma 1 } object { o photons { target } }") is None
    assert photons_block('global_settings { photons { spacing 0.1 save_file "x.ph" } }') is None
    text = 'global_settings { /* } */ photons { spacing 0.1 } } sphere { 0, 1 photons { target } }'
    assert with_photon_file(text, save=False) == (
        'global_settings { /* } */ photons { load_file "povfarm-photons.ph"  spacing 0.1 } }'
        ' sphere { 0, 1 photons { target } }')


def test_the_preview_reaches_a_watching_viewer_first_and_never_the_image(farm, tmp_path):
    """A viewer watching from before the submit gets the preview (its own size) before any final row, by
    default (the preview is rendered because someone watches); the stored image is still exactly
    POV-Ray's single render."""
    import threading

    from farm.images.raster import row_size
    from farm.kinds import preview_size
    from farm.rows import decode_rows

    scene = SCENES / "advanced/wineglass.pov"
    farm.start_controller()
    farm.start_node("n1", slots=2)
    viewer, pieces, stop = farm.client_as("view"), [], threading.Event()

    def watch():
        cursor, job = 0, 0
        while not stop.is_set():
            reply = viewer.call("viewer.watch", job, cursor, 2)
            if reply["job"] and not job:
                job = reply["job"]["id"]
            pieces.extend(reply["strips"])
            cursor = reply["cursor"]
            if reply["job"].get("state") in ("done", "failed") and not reply["strips"]:
                return
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = tmp_path / "farm.png"
    result = run_cli("submit", str(scene), "--width", "320", "--height", "240", "--option", "+A0.3",
                     "--output", str(out), "--controller", farm.url)
    assert result.returncode == 0, result.stderr
    watcher.join(60)
    stop.set()
    assert_same_pixels(out, native_render(scene, 320, 240, ["+A0.3"], tmp_path / "native.png"))
    kinds = [piece["kind"] for piece in pieces]
    assert kinds[0] == "preview" and kinds.count("preview") == 1 and len(kinds) >= 3, kinds
    first = pieces[0]
    assert (first["width"], first["height"]) == preview_size(320, 240) == (40, 30)
    preview = decode_rows(first["rows"].data, first["encoding"], row_size(40, 3, 8) * 30, row_size(40, 3, 8), 3)
    assert any(preview)                                    # a real picture, not black
    rows = sorted((p["row_start"], p["row_end"]) for p in pieces[1:])
    assert rows[0][0] == 0 and rows[-1][1] == 240 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))

