"""POV-Ray's messages through the farm: a scene's `#debug`/`#warning` text printed once per frame as `povray`
prints it, the stream files (`All_File`...) written beside the image as `povray` writes them, and each unit's
run kept for `povfarm log`. Compared with the real `povray`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import farm_argv, needs_povray, run_cli
from farm import povtext
from test_cli_povray import files_under, parse_section

pytestmark = needs_povray

# -- POV-Ray's messages and logs ------------------------------------------------------------------

SPEAKING_SCENE = ('#version 3.7;\nglobal_settings { assumed_gamma 1 }\n#debug "hello\\n"\n'
                  '#warning "mind the gap"\n#debug concat("frame ", str(frame_number, 0, 0), "\\n")\n'
                  'camera { location <0, 0, -3> look_at 0 }\nlight_source { <2, 4, -3> rgb 1 }\n'
                  'sphere { 0, 1 pigment { rgb <1, 0, 0> } }\n')


def povray_parse_messages(folder: Path, *args: str) -> list[str]:
    """What `povray` itself prints while it parses, per frame (read as farm/povtext.py reads a node's log: a
    busy POV-Ray may print the messages just before its `==== [Parsing...]` line)."""
    native = subprocess.run(["povray", *args, "-D", "+Onative.png"], cwd=folder, capture_output=True, text=True,
                            timeout=60)
    assert native.returncode == 0, native.stderr[-2000:]
    return [text.rstrip("\n") for text in povtext.parse_messages(native.stderr)]


def test_a_scenes_debug_and_warning_text_is_printed_once_in_scene_order_as_povray_prints_it(tmp_path):
    (tmp_path / "speak.pov").write_text(SPEAKING_SCENE)
    done = run_cli("render", "speak.pov", "+W64", "+H128", "--strips", "4", "--nodes", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("hello") == 1
    [native] = povray_parse_messages(tmp_path, "speak.pov", "+W64", "+H128")
    assert native == "hello\nFile 'speak.pov' line 4: Parse Warning: mind the gap\nframe 0"
    assert native + "\n" in done.stderr
    assert done.stderr.index(native) < done.stderr.index("job 1 done in")


def test_an_animations_messages_come_once_per_frame_in_frame_order(tmp_path):
    (tmp_path / "speak.pov").write_text(SPEAKING_SCENE)
    animation = ["+KFI1", "+KFF4", "+W32", "+H64"]
    done = run_cli("render", "speak.pov", *animation, "--nodes", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = [line for line in done.stderr.splitlines() if line.startswith(("hello", "frame ", "File 'speak"))]
    # What `povray` prints for each frame of this animation (as the still's test compares, measured here)
    expected = [f"hello\nFile 'speak.pov' line 4: Parse Warning: mind the gap\nframe {n}" for n in range(1, 5)]
    assert printed == "\n".join(expected).splitlines(), done.stderr


def stream_sides(tmp_path: Path, ini: str, native_args: list[str], farm_args: list[str]) -> tuple[Path, Path, str]:
    """The speaking scene and `ini` in two folders, rendered by `povray` in one and `povfarm render` in the
    other: (the native folder, the farm's, render's stderr)."""
    folders = []
    for side in ("native", "farm"):
        folder = tmp_path / side
        (folder / "out").mkdir(parents=True, exist_ok=True)
        (folder / "speak.pov").write_text(SPEAKING_SCENE)
        (folder / "speak.ini").write_text(ini)
        folders.append(folder)
    native = subprocess.run(["povray", "speak.ini", *native_args, "-D"], cwd=folders[0], capture_output=True,
                            text=True, timeout=60)
    assert native.returncode == 0, native.stderr[-2000:]
    done = run_cli("render", "speak.ini", *native_args, *farm_args, cwd=folders[1], timeout=120)
    assert done.returncode == 0, done.stderr
    return folders[0], folders[1], done.stderr


def test_stream_files_are_written_beside_the_image_as_povray_writes_them(tmp_path):
    ini = ("Input_File_Name=speak.pov\nWidth=64\nHeight=128\nOutput_File_Name=out/\nAll_File=alltext.out\n"
           "Debug_File=true\nWarning_File=warn.txt\nStatistic_File=\n")
    native, farm, stderr = stream_sides(tmp_path, ini, ["-GD"], ["--strips", "4", "--nodes", "2"])
    names = {"speak.png", "alltext.out", "debug.out", "warn.txt", "stats.out"}
    assert files_under(native / "out") == files_under(farm / "out") == names
    for name in ("debug.out", "warn.txt"):
        assert (farm / "out" / name).read_text() == (native / "out" / name).read_text(), name
    assert (farm / "out" / "debug.out").read_text() == "hello\nframe 0\n"
    ours, theirs = (folder / "out" / "alltext.out" for folder in (farm, native))
    assert parse_section(ours.read_text()) == parse_section(theirs.read_text())
    assert "Render Statistics" in ours.read_text() and "Render Statistics" in (farm / "out/stats.out").read_text()
    assert "POV-Ray's streams written to" in stderr
    # -GD keeps the debug stream off the console (its file is still written); the warning is printed
    assert "hello" not in stderr and "mind the gap" in stderr


def test_an_animations_stream_file_holds_each_frame_in_turn_and_append_file_adds_to_it(tmp_path):
    ini = "Input_File_Name=speak.pov\nWidth=32\nHeight=32\nOutput_File_Name=out/\nDebug_File=d.txt\n"
    animation = ["+KFI1", "+KFF3", "Append_File=on"]
    for _ in range(2):      # the second run adds to the first's file, as povray's does
        native, farm, _ = stream_sides(tmp_path, ini, animation, ["--nodes", "2"])
    ours, theirs = (farm / "out/d.txt").read_text(), (native / "out/d.txt").read_text()
    assert ours == theirs == "".join(f"hello\nframe {n}\n" for n in range(1, 4)) * 2


def test_povfarm_log_prints_each_units_run_and_submit_wait_the_messages_once(farm, tmp_path):
    (tmp_path / "speak.pov").write_text(SPEAKING_SCENE)
    farm.start_controller()
    farm.start_node("n1", slots=2)
    submitted = run_cli("submit", "speak.pov", "+W64", "+H128", "--strips", "2", "--wait", "--controller", farm.url,
                        cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stderr.count("hello\nFile 'speak.pov' line 4: Parse Warning: mind the gap\nframe 0\n") == 1
    shown = run_cli("log", "1", "--controller", farm.url)
    assert shown.returncode == 0, shown.stderr
    blocks = shown.stdout.split("== unit ")[1:]
    strips = farm.client.call("jobs.status", 1)["strips"]
    units = sorted(strip["index"] for strip in strips if strip["kind"] == "rows")
    assert len(units) == 2 and sorted(int(block.split(",")[0]) for block in blocks) == units
    for block in blocks:
        header, command = block.splitlines()[:2]
        assert "frame 1, attempt 1, node n1: done, exit 0" in header
        assert command.startswith("$ ") and "povray +Ispeak.pov " in command and "+SR" in command
        assert str(farm.tmp) not in command and "<work-dir>" in command
        assert "hello" in block and "Render Statistics" in block and "Persistence of Vision" not in block
    only = run_cli("log", "1", "--unit", str(units[1]), "--kind", "debug", "--kind", "warning", "--controller",
                   farm.url)
    assert only.returncode == 0, only.stderr
    assert only.stdout.count("== unit ") == 1 and f"== unit {units[1]}," in only.stdout
    assert only.stdout.splitlines()[2:5] == ["hello", "File 'speak.pov' line 4: Parse Warning: mind the gap",
                                             "frame 0"]
    viewer = farm.client_as("view").call("jobs.log", 1, {"unit": units[0]})
    assert [entry["unit"] for entry in viewer["logs"]] == [units[0]] and viewer["size"] > 0


def test_a_failed_units_log_is_kept_and_follow_ends_with_the_job(farm, tmp_path):
    (tmp_path / "bad.pov").write_text('#debug "before the error\\n"\nsphere { 0, 1 pigment { rgb 1 }\n')
    farm.start_controller()
    submitted = run_cli("submit", "bad.pov", "+W32", "+H24", "--controller", farm.url, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    follow = subprocess.Popen(farm_argv("log", "1", "--follow", "--controller", farm.url), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    farm.start_node("n1")     # after the follower started: it waits for the job's logs
    stdout, stderr = follow.communicate(timeout=60)
    assert follow.returncode == 0, stderr
    assert "node n1: failed, exit 1" in stdout
    assert "before the error" in stdout and "Parse Error" in stdout
    assert farm.client.call("jobs.status", 1)["state"] == "failed"


def test_a_scene_that_prints_a_lot_keeps_the_head_and_says_what_was_cut(tmp_path):
    (tmp_path / "loud.pov").write_text('#version 3.7;\n#declare I = 0;\n#while (I < 5000)\n'
                                       '  #debug concat("line ", str(I, 0, 0), "\\n")\n  #declare I = I + 1;\n#end\n'
                                       'camera { location -3 look_at 0 }\nsphere { 0, 1 pigment { rgb 1 } }\n')
    done = run_cli("render", "loud.pov", "+W32", "+H24", "--nodes", "1", cwd=tmp_path,
                   env=dict(os.environ, POVFARM_UNIT_LOG_KB="4"))
    assert done.returncode == 0, done.stderr
    assert "line 0\nline 1\n" in done.stderr and "line 4999" not in done.stderr
    assert "bytes of POV-Ray's output cut here]" in done.stderr
    assert len(done.stderr) < 8000
