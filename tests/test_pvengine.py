"""Nodes driving POV-Ray for Windows' GUI engine (pvengine64.exe), tested here without Windows.

The node code path for that flavour runs for real: a stand-in `pvengine64.exe` (tests/standin_pvengine.py)
behaves as the farm meets the real one (exit 0 always, messages only in the stream files it is given,
the image only on success) and renders with the real `povray`, so the pixels are real.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import SCENES, assert_same_pixels, native_render, needs_povray, run_cli
from farm.rendering import povray
from farm.rendering.povray import ProcessResult

STANDIN = Path(__file__).resolve().parent / "standin_pvengine.py"
BROKEN_SCENE = """#include "colors.inc"
camera { location <0, 1, -3> look_at 0 }
sphere { 0, 1 pigment { Red }
box { 0, 1 }
"""
# What the console front end adds after every scene error; the GUI's streams never carry it.
CONSOLE_TRAILER = ("Fatal error in parser: Cannot parse input.", "Render failed")


def pvengine(tmp_path: Path, trouble: str = "") -> Path:
    """The stand-in, installed as pvengine64.exe in a folder of its own (with its trouble mode)."""
    folder = tmp_path / "POV-Ray" / "bin"
    folder.mkdir(parents=True)
    program = folder / "pvengine64.exe"
    shutil.copyfile(STANDIN, program)
    program.chmod(0o755)
    if trouble:
        (folder / "pvengine-mode").write_text(trouble)
    return program


# -- pure parts ------------------------------------------------------------------------------------

def test_the_flavour_comes_from_the_program_name():
    assert povray.flavour_of(r"C:\Program Files\POV-Ray\v3.7\bin\pvengine64.exe") == povray.PVENGINE
    assert povray.flavour_of(r"C:\POV\bin\PVENGINE.EXE") == povray.PVENGINE
    assert povray.flavour_of("/usr/bin/povray") == povray.CONSOLE
    assert povray.flavour_of(r"C:\POV\bin\povconsole.exe") == povray.CONSOLE


def test_the_gui_gets_its_options_in_an_ini_file_and_exits_when_done(tmp_path):
    console = povray.render_command("C:\\POV\\pvengine64.exe", "my scene.pov", 320, 240, ["+SR33", "+ER64"],
                                    tmp_path / "strip.ppm", "P", 2, tmp_path / "scene", ["+A0.3"])
    argv = povray.gui_command(console, tmp_path / povray.GUI_INI)
    assert argv == ["C:\\POV\\pvengine64.exe", "/EXIT", "/NR", "/RENDER", str(tmp_path / povray.GUI_INI)]
    lines = (tmp_path / povray.GUI_INI).read_text().splitlines()
    assert lines == [*console[1:], f"+GA{povray.ALL_STREAM}", f"+GF{povray.FATAL_STREAM}"]
    assert '+I"my scene.pov"' in lines and "-D" in lines and "+SR33" in lines


def test_stream_messages_read_as_the_console_prints_them():
    streams = ("Parser Options\n  Input file: x.pov\n"
               "File: x.pov  Line: 1\nPossible Parse Error: Cannot find file 'a.inc', even after trying to\n"
               " append file type extension.\n"
               "File: x.pov  Line: 4\nFile Context (5 lines):\ncamera { }\nParse Error: halted\nbox\n"
               "Parse Error: No matching } in 'sphere', box found instead\n")
    text = povray.console_transcript(streams)
    assert text.splitlines()[2:] == [
        "File 'x.pov' line 1: Possible Parse Error: Cannot find file 'a.inc', even after trying to",
        " append file type extension.",
        "File 'x.pov' line 4: Parse Error: No matching } in 'sphere', box found instead"]


def test_a_section_heading_printed_among_an_error_is_no_part_of_it():
    """POV-Ray's console prints its "==== [Parsing...] ====" heading from another thread: now and then it lands
    after the error's first lines (a CI run's console render did so), and the message leaves it out."""
    stderr = ("File 'broken.pov' line 4: Parse Error: No matching } in 'sphere', box found\n instead\n"
              "==== [Parsing...] ==========================================================\n"
              "Fatal error in parser: Cannot parse input.\nRender failed\n")
    assert povray.error_text(stderr) == ("File 'broken.pov' line 4: Parse Error: No matching } in 'sphere', box found"
                                         " instead\nFatal error in parser: Cannot parse input.\nRender failed", True)


def test_exit_zero_with_a_fatal_stream_is_an_error_exit_and_a_crash_keeps_its_code(tmp_path):
    ok = ProcessResult(returncode=0, signal=None, timed_out=False, stopped=False, seconds=1.0)
    (tmp_path / povray.FATAL_STREAM).write_text("File: x.pov  Line: 2\nParse Error: Expected 'object'\n")
    (tmp_path / povray.ALL_STREAM).write_text("File: x.pov  Line: 2\nParse Error: Expected 'object'\n")
    log = tmp_path / "povray.log"
    assert povray.gui_outcome(ok, tmp_path, log).returncode == 1
    assert povray.error_text(log.read_text()) == ("File 'x.pov' line 2: Parse Error: Expected 'object'", True)
    crashed = ProcessResult(returncode=0xC0000005, signal=None, timed_out=False, stopped=False, seconds=1.0)
    assert povray.gui_outcome(crashed, tmp_path, log).returncode == 0xC0000005
    assert "access violation" in crashed.describe()


# -- the stand-in under the real code -----------------------------------------------------------------

@needs_povray
def test_the_probe_renders_a_test_scene_the_farm_way(tmp_path):
    version, problem = povray.probe_gui(str(pvengine(tmp_path)), tmp_path / "probe")
    assert (version, problem) == ("3.7", None)


@needs_povray
def test_a_gui_that_renders_nothing_is_reported_at_the_probe(tmp_path):
    program = pvengine(tmp_path)
    program.write_text("#!/bin/sh\nexit 0\n")
    version, problem = povray.probe_gui(str(program), tmp_path / "probe")
    assert version is None and "did not render a test scene" in problem


def _status(farm, job: int) -> dict:
    return json.loads(run_cli("status", str(job), "--json", "--controller", farm.url).stdout)


def _node(farm) -> dict:
    [node] = json.loads(run_cli("nodes", "--json", "--controller", farm.url).stdout)
    return node


def _submit(farm, scene: Path, out: Path | None, *args: str) -> subprocess.CompletedProcess:
    output = ["--output", str(out)] if out else []
    return run_cli("submit", str(scene), "--controller", farm.url, "--wait", *output, *args)


@needs_povray
def test_a_pvengine_node_renders_exact_pixels_and_shows_its_flavour(farm, tmp_path):
    farm.start_controller()
    farm.start_node("win", "--povray", str(pvengine(tmp_path)), "--sandbox", "none")
    scene = SCENES / "advanced/drums2/drums.pov"
    out = tmp_path / "drums.png"
    done = _submit(farm, scene, out, "--width", "160", "--height", "120", "--strips", "4", "--option", "+A0.3")
    assert done.returncode == 0, done.stderr + farm.log("win")
    assert_same_pixels(out, native_render(scene, 160, 120, ["+A0.3"], tmp_path / "native.png"))
    node = _node(farm)
    assert node["povray_flavour"] == "pvengine" and node["povray"] == "3.7" and node["strips_failed"] == 0
    table = run_cli("nodes", "--controller", farm.url).stdout
    assert "3.7 (pvengine)" in table


@needs_povray
def test_a_parse_error_fails_the_job_with_povrays_message_as_on_linux(farm, tmp_path):
    broken = tmp_path / "broken" / "broken.pov"
    broken.parent.mkdir()
    broken.write_text(BROKEN_SCENE)
    console = subprocess.run(["povray", "+Ibroken.pov", "+W64", "+H48", "-D", "+O-"], cwd=broken.parent,
                             capture_output=True, text=True, timeout=60)
    linux_message, _ = povray.error_text(console.stderr)
    assert linux_message.endswith("\n".join(CONSOLE_TRAILER))

    farm.start_controller()
    farm.start_node("win", "--povray", str(pvengine(tmp_path)), "--sandbox", "none")
    failed = _submit(farm, broken, None, "--width", "64", "--height", "48")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    job = _status(farm, int(failed.stdout.strip()))
    assert job["state"] == "failed"
    assert job["error"] == linux_message[:-len("\n".join(CONSOLE_TRAILER))].rstrip("\n")
    assert job["error"].startswith("File 'broken.pov' line 4: Parse Error: No matching } in 'sphere'")
    assert _node(farm)["strips_failed"] == 1     # a scene error is not retried


@needs_povray
@pytest.mark.parametrize("trouble, message", [
    ("crash 1", "SIGSEGV: POV-Ray crashed"),
    ("vanish 1", "POV-Ray reported no error but wrote no image"),
])
def test_a_crash_or_a_missing_image_is_a_failed_strip_that_is_retried(farm, tmp_path, trouble, message):
    farm.start_controller()
    farm.start_node("win", "--povray", str(pvengine(tmp_path, trouble)), "--sandbox", "none")
    scene = SCENES / "advanced/wineglass.pov"
    out = tmp_path / "glass.png"
    done = _submit(farm, scene, out, "--width", "96", "--height", "64", "--strips", "2")
    assert done.returncode == 0, done.stderr + farm.log("win")
    assert_same_pixels(out, native_render(scene, 96, 64, [], tmp_path / "native.png"))
    assert _node(farm)["strips_failed"] == 1
    assert message in farm.log("win")
