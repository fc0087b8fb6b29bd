"""`povfarm render` speaks POV-Ray's language: the same command line given to the real `povray` and to
`povfarm render` writes files of the same names with the same pixels. Also: clean stops on SIGINT/SIGTERM,
one error message per failure, and messages in the user's terms."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import ROOT, SCENES, farm_argv, needs_povray, run_cli, wait_until
from farm import povtext
from farm.images.png import PNG_SIGNATURE, decode_png
from farm.images.ppm import decode_ppm
from farm.images.raster import Raster

pytestmark = needs_povray

WINEGLASS = SCENES / "advanced" / "wineglass.pov"
CLOCKD = SCENES / "animations" / "clockd"
CHESS2 = SCENES / "advanced" / "chess2.pov"
SMALL = ["+W64", "+H48"]
# One example of every switch on the allowlist (farm/options.py), rendered together below.
EVERY_ALLOWED_SWITCH = ["+A0.3", "+AM2", "+AG1.0", "+J0.5", "+R2", "+Q8", "+UA", "+MB10", "+MV3.7", "+UL", "+UV",
                        "+UR", "+UD", "+BS16", "+K0.5", "+BM2", "+SU", "+HR", "+RVP", "Declare=Unused=1",
                       "File_Gamma=1.0"]


# -- side by side ---------------------------------------------------------------------------------

def files_under(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def decode(path: Path) -> Raster:
    data = path.read_bytes()
    if path.suffix == ".tga":
        from PIL import Image
        with Image.open(path) as image:          # a real Targa file, read by a decoder not ours
            assert image.format == "TGA" and image.mode in ("RGB", "RGBA")
            return Raster(image.width, image.height, len(image.mode), 8, image.tobytes())
    return decode_png(data) if data.startswith(PNG_SIGNATURE) else decode_ppm(data)


def side_by_side(tmp_path: Path, setup, native_args: list[str], farm_args: list[str] | None = None,
                 cwd: str = ".", env: dict | None = None) -> set[str]:
    """Set up two equal folders, run `povray ARGS -D` in one and `povfarm render ARGS` in the other, and
    assert that they wrote the same files, pixel for pixel. Returns the names written."""
    trees = {}
    for side in ("native", "farm"):
        trees[side] = tmp_path / side
        trees[side].mkdir()
        setup(trees[side])
    before = files_under(trees["native"])
    native = subprocess.run(["povray", *native_args, "-D"], cwd=trees["native"] / cwd, capture_output=True,
                            text=True, timeout=120, env=env)
    assert native.returncode == 0, native.stderr[-2000:]
    farm = run_cli("render", *(farm_args or native_args), "--nodes", "2", cwd=trees["farm"] / cwd, timeout=120,
                   env=env)
    assert farm.returncode == 0, farm.stderr
    assert "Traceback" not in farm.stderr
    written = files_under(trees["native"]) - before
    assert written, "POV-Ray wrote nothing"
    assert files_under(trees["farm"]) - before == written
    for name in written:
        assert decode(trees["farm"] / name) == decode(trees["native"] / name), name
    return written


def copy_scene(scene: Path, name: str | None = None):
    def setup(folder: Path) -> None:
        target = folder / (name or scene.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(scene, target)
    return setup


def test_a_still_is_written_beside_the_scene(tmp_path):
    written = side_by_side(tmp_path, copy_scene(WINEGLASS, "scenes/wineglass.pov"),
                           ["+Iscenes/wineglass.pov", *SMALL, "+A0.3"])
    assert written == {"scenes/wineglass.png"}


@pytest.mark.parametrize("switches, expected", [
    (["+FP16", "+Oout"], {"out.ppm"}),
    (["+FT", "+UA"], {"wineglass.tga"}),
    (["+FC", "+Oout.png"], {"out.png.tga"}),
    (["+FN16", "+UA", "+Oimages/"], {"images/wineglass.png"}),
])
def test_output_formats_and_names(tmp_path, switches, expected):
    def setup(folder: Path) -> None:
        copy_scene(WINEGLASS)(folder)
        (folder / "images").mkdir()
    assert side_by_side(tmp_path, setup, ["wineglass.pov", *SMALL, *switches]) == expected


def test_an_animation_with_frame_numbers_padded_as_povray_does(tmp_path):
    written = side_by_side(tmp_path, copy_scene(CLOCKD / "clockd.pov"),
                           ["clockd.pov", *SMALL, "+KFI1", "+KFF12", "+SF10", "+EF12", "+Ofr.png"])
    assert written == {"fr10.png", "fr11.png", "fr12.png"}


def test_an_ini_file_with_overrides(tmp_path):
    def setup(folder: Path) -> None:
        for name in ("clockd.pov", "clockd.ini"):
            shutil.copy(CLOCKD / name, folder / name)
    written = side_by_side(tmp_path, setup, ["clockd.ini", "+KFF3", *SMALL, "+FP"])
    assert written == {"clockd1.ppm", "clockd2.ppm", "clockd3.ppm"}


def test_a_scene_in_a_folder_with_spaces(tmp_path):
    written = side_by_side(tmp_path, copy_scene(WINEGLASS, "my scenes/my glass.pov"),
                           ['+I"my scenes/my glass.pov"', *SMALL],
                           ["my scenes/my glass.pov", *SMALL])      # as a shell passes a quoted path
    assert written == {"my scenes/my glass.png"}


def test_a_local_library_path_is_shipped_and_searched(tmp_path):
    def setup(folder: Path) -> None:
        (folder / "scene").mkdir()
        (folder / "my lib").mkdir()
        (folder / "my lib" / "mycolors.inc").write_text('#declare Glass = rgb <0.2, 0.9, 0.4>;\n'
                                                        '#include "more.inc"\n')
        (folder / "my lib" / "more.inc").write_text("#declare Size = 1.2;\n")
        (folder / "scene" / "lib.pov").write_text(
            '#include "colors.inc"\n#include "mycolors.inc"\n'
            "camera { location <0, 1, -4> look_at 0 }\nlight_source { <3, 5, -4> White }\n"
            "sphere { 0, Size pigment { Glass } }\nplane { y, -1.2 pigment { checker White Black } }\n")
    written = side_by_side(tmp_path, setup, ['+I"scene/lib.pov"', '+L"my lib"', *SMALL],
                           ["scene/lib.pov", "Library_Path=my lib", *SMALL])
    assert written == {"scene/lib.png"}


# -- POV-Ray's own defaults (povray.ini) ------------------------------------------------------------

def home_with_ini(tmp_path: Path, text: str | None) -> dict:
    """An environment whose HOME is a fresh folder, with `text` as its ~/.povray/3.7/povray.ini (None: no
    file, so the system's /etc/povray/3.7/povray.ini is the one read). The real files are never touched."""
    home = tmp_path / "home"
    if text is not None:
        (home / ".povray" / "3.7").mkdir(parents=True)
        (home / ".povray" / "3.7" / "povray.ini").write_text(text)
    else:
        home.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("POVINI", "POVINC")}
    return {**env, "HOME": str(home)}


SYSTEM_LIBRARY = ("Library_Path=/usr/share/povray-3.7\nLibrary_Path=/usr/share/povray-3.7/ini\n"
                  "Library_Path=/usr/share/povray-3.7/include\n")


def test_the_users_povray_ini_sets_size_antialiasing_and_library_paths(tmp_path):
    env = home_with_ini(tmp_path, "Width=64\nHeight=48\nAntialias=On\nAntialias_Threshold=0.3\n" + SYSTEM_LIBRARY)
    assert side_by_side(tmp_path, copy_scene(CHESS2), ["chess2.pov"], env=env) == {"chess2.png"}
    farm = run_cli("render", "chess2.pov", "--nodes", "1", "+W16", "+H12", cwd=tmp_path / "farm", env=env)
    assert f"read POV-Ray's defaults from {tmp_path}/home/.povray/3.7/povray.ini" in farm.stderr


def test_shipped_ini_files_are_found_through_povray_ini_library_paths(tmp_path):
    env = home_with_ini(tmp_path, SYSTEM_LIBRARY)
    written = side_by_side(tmp_path, copy_scene(WINEGLASS), ["wineglass.pov", "res120.ini", "+FP"], env=env)
    assert written == {"wineglass.ppm"}
    assert decode(tmp_path / "farm" / "wineglass.ppm").width == 120
    (tmp_path / "native").rename(tmp_path / "first")
    (tmp_path / "farm").rename(tmp_path / "first farm")
    section = '"quickres.ini[160x120, AA 0.3]"'        # povray wants the quotes inside the argument
    assert side_by_side(tmp_path, copy_scene(WINEGLASS), ["wineglass.pov", section], env=env) == {"wineglass.png"}
    farm = run_cli("render", "wineglass.pov", section.strip('"'), "--nodes", "1", cwd=tmp_path / "farm", env=env)
    assert farm.returncode == 0 and decode(tmp_path / "farm" / "wineglass.png").width == 160, farm.stderr


def test_povray_ini_in_the_working_folder_comes_before_the_users(tmp_path):
    env = home_with_ini(tmp_path, "Width=64\nHeight=48\n")

    def setup(folder: Path) -> None:
        copy_scene(WINEGLASS)(folder)
        (folder / "povray.ini").write_text("Width=40\nHeight=30\n+FP\n" + SYSTEM_LIBRARY)
    assert side_by_side(tmp_path, setup, ["wineglass.pov"], env=env) == {"wineglass.ppm"}
    assert decode(tmp_path / "farm" / "wineglass.ppm").width == 40


PLAIN_SCENE = "background { rgb <0.2, 0.4, 0.6> }\n"


def test_the_system_povray_ini_gives_povrays_800x600_and_no_povray_ini_the_farms_640x480(tmp_path):
    env = home_with_ini(tmp_path, None)

    def setup(folder: Path) -> None:
        (folder / "plain.pov").write_text(PLAIN_SCENE)
    assert side_by_side(tmp_path, setup, ["plain.pov"], env=env) == {"plain.png"}
    assert decode(tmp_path / "farm" / "plain.png").width == 800          # Debian's /etc/povray/3.7/povray.ini
    farm = run_cli("render", "plain.pov", "--no-povray-ini", "--nodes", "1", cwd=tmp_path / "farm", env=env)
    assert farm.returncode == 0, farm.stderr
    assert "read POV-Ray's defaults" not in farm.stderr
    raster = decode(tmp_path / "farm" / "plain.png")
    assert (raster.width, raster.height) == (640, 480)


def test_benchmark_ini_renders_like_povray(tmp_path):
    """POV-Ray's benchmark.ini lists nearly every INI key (Bounding_Method, Display_Gamma, empty shell
    commands, End_Row=1 ...): the farm takes it. It turns Output_To_File off; both are told to write here.
    Its radiosity makes POV-Ray itself differ from run to run (+WT1 against +WT2: up to 10 levels), so the
    farm's image is held to that, not to bit-identity."""
    folders = {}
    for side in ("native", "farm"):
        folders[side] = tmp_path / side
        folders[side].mkdir()
        for name in ("benchmark.pov", "benchmark.ini"):
            shutil.copy(SCENES / "advanced" / "benchmark" / name, folders[side] / name)
    args = ["benchmark.ini", "+W32", "+H32", "Output_To_File=On"]
    native = subprocess.run(["povray", *args, "-D"], cwd=folders["native"], capture_output=True, text=True,
                            timeout=120)
    assert native.returncode == 0, native.stderr[-2000:]
    farm = run_cli("render", *args, "--nodes", "2", cwd=folders["farm"], timeout=120)
    assert farm.returncode == 0, farm.stderr
    assert "Bounding_Method" not in farm.stderr and "not allowed" not in farm.stderr
    ours, theirs = decode(folders["farm"] / "benchmark.png"), decode(folders["native"] / "benchmark.png")
    assert (ours.width, ours.height) == (theirs.width, theirs.height) == (32, 32)
    differences = [abs(a - b) for a, b in zip(ours.pixels, theirs.pixels)]
    assert max(differences) <= 32 and sum(differences) / len(differences) < 1


def test_every_allowed_switch_renders(tmp_path):
    """Each switch on the allowlist is one POV-Ray itself accepts (+HT was not)."""
    written = side_by_side(tmp_path, copy_scene(WINEGLASS), ["wineglass.pov", *SMALL, *EVERY_ALLOWED_SWITCH])
    assert written == {"wineglass.png"}


def test_jpeg_only_through_a_real_encoder(tmp_path):
    shutil.copy(WINEGLASS, tmp_path / "wineglass.pov")
    hidden = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['PIL'] = None; from farm.cli import main; "
                               "sys.exit(main(sys.argv[1:]))", "render", "wineglass.pov", *SMALL, "+FJ"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert hidden.returncode == 1 and "JPEG output (+FJ) needs Pillow" in hidden.stderr
    assert len(hidden.stderr.strip().splitlines()) == 1 and not (tmp_path / "wineglass.jpg").exists()
    done = run_cli("render", "wineglass.pov", *SMALL, "--output", "glass.jpg", "--nodes", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "glass.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    # A name of another format gets the format's extension added, as POV-Ray does: never PNG in a .jpg.
    done = run_cli("render", "wineglass.pov", *SMALL, "+Oout.jpg", "--nodes", "1", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "out.jpg.png").read_bytes()[:4] == b"\x89PNG"


def test_harmless_switches_get_one_note_and_bad_ones_one_sentence(tmp_path):
    shutil.copy(WINEGLASS, tmp_path / "wineglass.pov")
    done = run_cli("render", "wineglass.pov", "+W32", "+H24", "-D", "+P", "-V", "--nodes", "1", cwd=tmp_path)
    assert done.returncode == 0
    notes = [line for line in done.stderr.splitlines() if line.startswith("povfarm: ") and "ignored" in line]
    assert notes == ["povfarm: -D: ignored, nodes never open a display",
                     "povfarm: +P: ignored, there is no window to pause",
                     "povfarm: -V: ignored, povfarm shows its own progress"]
    refused = run_cli("render", "wineglass.pov", "Pre_Scene_Command=touch /tmp/x", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "povfarm: error: INI setting Pre_Scene_Command is not allowed: a farm never runs shell commands on its "
        "nodes (the command line)"]


# -- clean stops ----------------------------------------------------------------------------------

def processes_mentioning(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


class Render:
    """`povfarm render` as a process of its own, its stderr collected as it comes."""

    def __init__(self, tmp_path: Path, *args: str):
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        env = dict(os.environ, TMPDIR=str(self.tmp))    # the render's workspace, nodes and POV-Ray under it
        self.process = subprocess.Popen(farm_argv("render", *args), cwd=tmp_path, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self, signum: int) -> tuple[int, float]:
        started = time.monotonic()
        self.process.send_signal(signum)
        code = self.process.wait(10)
        elapsed = time.monotonic() - started
        self._reader.join(5)
        return code, elapsed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_render_stops_cleanly_and_quickly(tmp_path, signum):
    render = Render(tmp_path, str(CHESS2), "+W320", "+H240", "+A0.3", "+Oout.png", "--nodes", "2")
    wait_until(lambda: any("rendering" in line for line in render.lines), timeout=60, what="the render to start")
    wait_until(lambda: any("povray" in cmd for cmd in processes_mentioning(str(render.tmp))), timeout=30,
               what="POV-Ray to run")
    time.sleep(0.5)     # the scenario: stopped mid-render
    code, elapsed = render.stop(signum)
    stderr = "\n".join(render.lines)
    assert code == 130, stderr
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
    assert "Traceback" not in stderr and "closed database" not in stderr and "refused" not in stderr
    assert "second stop request" not in stderr
    messages = [line for line in render.lines if not line.startswith(("job ", "povfarm: read POV-Ray's defaults"))]
    assert messages == ["povfarm: interrupted; stopping the local nodes"]
    # The kernel delivers the parent-death signals of anything that was killed.
    wait_until(lambda: processes_mentioning(str(render.tmp)) == [], timeout=0.3, interval=0.02,
               what="every process to end")
    assert not (tmp_path / "out.png").exists()


def test_a_failed_render_says_povrays_error_once(tmp_path):
    (tmp_path / "bad.pov").write_text("camera { location -3 look_at 0 }\nsphere { 0, 1 pigment { rgb 1 }\n"
                                      "box { 0, 1 }\n")
    done = run_cli("render", "bad.pov", "+W64", "+H128", "--strips", "4", "--nodes", "2", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("Parse Error") == 1 and "Traceback" not in done.stderr
    assert "povfarm: job 1 failed:\nFile 'bad.pov' line 3: Parse Error: No matching } in 'sphere'" in done.stderr
    assert not [line for line in done.stderr.splitlines() if "WARNING" in line or "ERROR" in line]


def test_ctrl_c_on_submit_wait_leaves_the_job_running_and_says_how_to_follow_it(farm, tmp_path):
    farm.start_controller()              # no nodes: the job stays queued
    process = subprocess.Popen(farm_argv("submit", str(WINEGLASS), *SMALL, "--wait", "--controller", farm.url),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    job_id = process.stdout.readline().strip()
    assert job_id == "1"
    time.sleep(0.5)     # the scenario: interrupted while it waits for the job
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert "job 1 goes on rendering" in stderr
    for command in ("status", "viewer", "cancel"):
        assert f"povfarm {command} 1 --controller {farm.url}" in stderr
    assert farm.client.call("jobs.status", 1)["state"] == "queued"


def test_token_errors_speak_of_tokens_and_roles(farm, tmp_path):
    farm.start_controller()
    from farm.auth import read_token_file

    tokens = read_token_file(farm.token_file)
    env = {key: value for key, value in os.environ.items() if not key.startswith("POVFARM_")}
    as_node = run_cli("submit", str(WINEGLASS), "--controller", farm.url, env=dict(env, POVFARM_TOKEN=tokens["node"]))
    assert as_node.returncode == 1
    assert "this is a node token; submitting a job needs the submit token" in as_node.stderr
    as_viewer = run_cli("cancel", "1", "--controller", farm.url, env=dict(env, POVFARM_TOKEN=tokens["view"]))
    assert "this is a view token; canceling a job needs the submit token" in as_viewer.stderr
    nothing = run_cli("jobs", "--controller", farm.url, env=env)
    assert nothing.returncode == 1 and "no access token was given" in nothing.stderr


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
