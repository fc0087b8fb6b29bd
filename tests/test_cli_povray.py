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
    if path.suffix in (".tga", ".jpg"):
        from PIL import Image
        with Image.open(path) as image:          # a real Targa or JPEG file, read by a decoder not ours
            assert image.format in ("TGA", "JPEG") and image.mode in ("RGB", "RGBA")
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


def parse_section(alltext: str) -> str:
    """alltext.out's lines between the options and the parser's statistics: the scene's messages."""
    start = alltext.index("Warning Stream to console")
    start = alltext.index("\n", start) + 1
    return alltext[start:alltext.index("-" * 20, start)]


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


# -- no file, or the image on standard output ------------------------------------------------------

@pytest.mark.parametrize("switch", ["-F", "Output_To_File=Off", "-FN"])
def test_no_image_is_written_when_output_to_file_is_off(tmp_path, switch):
    for side in ("native", "farm"):
        (tmp_path / side).mkdir()
        copy_scene(WINEGLASS)(tmp_path / side)
    native = subprocess.run(["povray", "wineglass.pov", *SMALL, switch, "-D"], cwd=tmp_path / "native",
                            capture_output=True, timeout=60)
    farm = run_cli("render", "wineglass.pov", *SMALL, switch, "--nodes", "1", cwd=tmp_path / "farm")
    assert native.returncode == farm.returncode == 0, farm.stderr
    assert files_under(tmp_path / "native") == files_under(tmp_path / "farm") == {"wineglass.pov"}
    assert "wrote nothing (Output_To_File is off)" in farm.stderr and farm.stdout == ""


def split_pngs(data: bytes) -> list[bytes]:
    return [PNG_SIGNATURE + piece for piece in data.split(PNG_SIGNATURE)[1:]]


@pytest.mark.parametrize("switches", [[], ["+FP16"], ["+KFI1", "+KFF3"]])
def test_o_minus_writes_the_image_on_standard_output(tmp_path, switches):
    copy_scene(CLOCKD / "clockd.pov")(tmp_path)
    args = ["clockd.pov", *SMALL, "+O-", *switches]
    native = subprocess.run(["povray", *args, "-D"], cwd=tmp_path, capture_output=True, timeout=60)
    farm = subprocess.run(farm_argv("render", *args, "--nodes", "2"), cwd=tmp_path, capture_output=True,
                          timeout=120)
    assert native.returncode == farm.returncode == 0, farm.stderr
    assert files_under(tmp_path) == {"clockd.pov"}
    if "+FP16" in switches:
        assert decode_ppm(farm.stdout) == decode_ppm(native.stdout)
        return
    ours, theirs = split_pngs(farm.stdout), split_pngs(native.stdout)
    assert len(ours) == len(theirs) == (3 if switches else 1)
    assert [decode_png(png) for png in ours] == [decode_png(png) for png in theirs]


# -- files the scene writes -----------------------------------------------------------------------------

WRITER = """\
#fopen Log "log.txt" write
#write (Log, "frame ", frame_number, " clock ", clock, "\\n")
#fclose Log
#fopen Page concat("page", str(frame_number, 0, 0), ".html") write
#write (Page, "<p>frame ", frame_number, "</p>\\n")
#fclose Page
camera { location <0, 1, -4> look_at 0 }
light_source { <3, 5, -4> rgb 1 }
sphere { <clock, 0, 0>, 1 pigment { rgb <1, 0.4, 0.2> } }
"""


@pytest.mark.parametrize("switches", [["+KFI1", "+KFF3"], ["+H96", "--strips", "3"], ["-F"]])
def test_files_the_scene_writes_come_back_as_povray_leaves_them(tmp_path, switches):
    """An animation's: of each name the last frame's; a still's cut into strips: the bottom strip's (each
    strip's POV-Ray writes them as the whole render would); with -F too (POV-Ray writes them anyway)."""
    for side in ("native", "farm"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "writer.pov").write_text(WRITER)
    native_switches = [switch for switch in switches if switch not in ("--strips", "3")]
    native = subprocess.run(["povray", "writer.pov", "+W32", "+H24", *native_switches, "-D"],
                            cwd=tmp_path / "native", capture_output=True, timeout=60)
    farm = run_cli("render", "writer.pov", "+W32", "+H24", *switches, "--nodes", "2", cwd=tmp_path / "farm")
    assert native.returncode == farm.returncode == 0, farm.stderr
    texts = {name for name in files_under(tmp_path / "native") if name.endswith((".txt", ".html"))}
    assert texts >= {"log.txt", "page1.html" if "+KFI1" in switches else "page0.html"}
    assert {name for name in files_under(tmp_path / "farm") if name.endswith((".txt", ".html"))} == texts
    for name in texts:
        assert (tmp_path / "farm" / name).read_bytes() == (tmp_path / "native" / name).read_bytes(), name
    assert f"povfarm: the scene wrote {', '.join(sorted(texts))}" in farm.stderr


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
    commands, End_Row=1 ...): the farm takes it. It turns Output_To_File off; both are told to write here,
    then the farm is not (and writes nothing, as povray).
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
    # A busy box changes the threads' order and so an odd radiosity sample: a few values may stray far.
    assert sum(d > 32 for d in differences) <= len(differences) // 100, differences
    assert sum(differences) / len(differences) < 1
    # As it comes, it writes nothing at all, as with povray.
    (folders["farm"] / "benchmark.png").unlink()
    quiet = run_cli("render", "benchmark.ini", "+W16", "+H16", "--nodes", "1", cwd=folders["farm"], timeout=120)
    assert quiet.returncode == 0 and "wrote nothing" in quiet.stderr, quiet.stderr
    # Its All_File= (empty: POV-Ray's own name) writes alltext.out, the scene's messages as povray's
    assert files_under(folders["farm"]) == files_under(folders["native"]) - {"benchmark.png"} \
        == {"benchmark.pov", "benchmark.ini", "alltext.out"}
    ours, theirs = (folders[side] / "alltext.out" for side in ("farm", "native"))
    assert parse_section(ours.read_text()) == parse_section(theirs.read_text())


DESK = SCENES / "advanced" / "desk"


def test_desk_ini_renders_its_frames_in_order_each_with_the_ones_before(tmp_path):
    """desk.ini: frame N image_maps frame N-1's desk<N-1>.png. The farm finds that, renders one frame after
    another and writes the same four files as povray. The scene's crand makes POV-Ray itself repeat only
    in one thread and one piece: +WT1 against --threads 1 --strips 1."""
    folders = {}
    for side in ("native", "farm"):
        folders[side] = tmp_path / side
        folders[side].mkdir()
        for name in ("desk.pov", "desk.ini"):
            shutil.copy(DESK / name, folders[side] / name)
    args = ["desk.ini", "+W160", "+H120"]
    native = subprocess.run(["povray", *args, "+WT1", "-D"], cwd=folders["native"], capture_output=True,
                            timeout=120)
    assert native.returncode == 0, native.stderr[-2000:]
    farm = run_cli("render", *args, "--threads", "1", "--strips", "1", "--nodes", "2", cwd=folders["farm"])
    assert farm.returncode == 0, farm.stderr
    assert ("povfarm: the scene reads the animation's own output (desk1.png, desk2.png, desk3.png): its frames "
            "render one after another") in farm.stderr
    written = files_under(folders["native"]) - {"desk.pov", "desk.ini"}
    assert written == {f"desk{n}.png" for n in range(1, 5)} == files_under(folders["farm"]) - {"desk.pov", "desk.ini"}
    for name in written:
        assert decode(folders["farm"] / name) == decode(folders["native"] / name), name


def test_frames_that_read_no_output_of_their_own_render_side_by_side(tmp_path):
    from argparse import Namespace

    from farm.cli.chained import frames_read_back, plan_of
    from farm.cli.job_request import prepare_job

    copy_scene(CLOCKD / "clockd.pov")(tmp_path)
    (tmp_path / "reads.pov").write_text('#include "clockd.pov"\n#declare Map = "clockd02";\n'
                                        '// "clockd03.png" is a comment\n')

    def read_back(scene: str, *switches: str) -> list[int]:
        args = Namespace(povray_args=[scene, "+KFI1", "+KFF12", *switches], ini=None, povray_ini=False, width=None,
                         height=None, bits=None, frames=None, clock=None, cyclic=None, subset=None, output=None,
                         options=[], assets=[], command="render", wait=False)
        request = prepare_job(args, cwd=tmp_path)
        return frames_read_back(request, plan_of(args, request))
    assert read_back("clockd.pov") == []
    assert read_back("reads.pov", "+Oclockd") == [2]        # named without its extension, as POV-Ray allows
    assert read_back("reads.pov", "+Oelsewhere/clockd") == []  # where POV-Ray would not look for it
    assert read_back("reads.pov", "+Oclockd", "-F") == []


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


def png_metadata(data: bytes) -> list[tuple[bytes, bytes]]:
    """Every chunk but the pixels', with the parts that differ naturally (the time) taken out."""
    chunks, at = [], 8
    while at < len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + size]
        if kind == b"tIME":
            body = b""
        elif body.startswith(b"Comment\0"):
            body = b"\n".join(line for line in body.split(b"\n") if b"Render Date" not in line)
        if kind != b"IDAT":
            chunks.append((kind, body))
        at += 12 + size
    return chunks


def without_lines(data: bytes, *starts: bytes) -> bytes:
    return b"\n".join(line for line in data.split(b"\n") if not line.lstrip(b"# ").startswith(starts))


# What the farm cannot know of the nodes' POV-Ray, and so leaves out: the compiler it was built with.
COMPILER = b"Compiler: "


@pytest.mark.parametrize("switches", [["+FN"], ["+FN16", "+UA"], ["+FN", "File_Gamma=1.0"], ["+FN", "File_Gamma=2.2"],
                                      ["+FT"], ["+FC", "+UA"], ["+FP"], ["+FJ"], ["+FJ50", "Compression=30"]])
def test_files_carry_povrays_metadata_and_jpeg_its_quality(tmp_path, switches):
    """PNG's chunks, PPM's comments, Targa's 2.0 extension area, JPEG's tables and sampling (so its very
    bytes after the comment) are POV-Ray's; only the render date and the compiler line differ."""
    written = side_by_side(tmp_path, copy_scene(WINEGLASS), ["wineglass.pov", *SMALL, *switches, "+Oout"])
    (name,) = written
    ours, theirs = (tmp_path / side / name for side in ("farm", "native"))
    if name.endswith(".png"):
        expected = [(kind, without_lines(body, COMPILER)) for kind, body in png_metadata(theirs.read_bytes())]
        assert png_metadata(ours.read_bytes()) == expected
    elif name.endswith(".ppm"):
        assert without_lines(ours.read_bytes(), b"Render Date", COMPILER) == \
            without_lines(theirs.read_bytes(), b"Render Date", COMPILER)
    elif name.endswith(".tga"):
        a, b = ours.read_bytes(), theirs.read_bytes()
        extension = len(b) - 26 - 495
        assert len(a) == len(b) and a[:extension] == b[:extension] and a[-26:] == b[-26:]
        area, their_area = bytearray(a[extension:-26]), bytearray(b[extension:-26])
        for blank in (area, their_area):
            blank[43 + 81:43 + 162] = bytes(81)          # the compiler line
            blank[367:379] = bytes(12)                   # the date
        assert area == their_area
    else:
        from PIL import Image
        a, b = ours.read_bytes(), theirs.read_bytes()
        assert a[a.index(b"\xff\xdb"):] == b[b.index(b"\xff\xdb"):]       # tables, sampling, pixels
        assert a[:20] == b[:20]                                            # the JFIF header
        with Image.open(ours) as image:
            comment = image.info["comment"]
        assert comment.startswith(b"Render Date: ") and b"\nSoftware: POV-Ray 3.7" in comment


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


SLOW_FROM_FRAME_5 = """\
#if (frame_number >= 5)
  #declare I = 0;
  #while (I < 1e9) #declare I = I + 1; #end
#end
camera { location <0, 1, -4> look_at 0 }
light_source { <3, 5, -4> rgb 1 }
sphere { <clock * 2 - 1, 0, 0>, 0.5 pigment { rgb <1, 0.5, 0.2> } }
"""


def test_ctrl_c_during_an_animation_keeps_the_finished_frames(tmp_path):
    """As povray keeps the frames it finished before the Ctrl-C: frames 5 and 6 never end."""
    (tmp_path / "slow.pov").write_text(SLOW_FROM_FRAME_5)
    render = Render(tmp_path, "slow.pov", "+W32", "+H24", "+KFI1", "+KFF6", "--nodes", "2")

    def frames_done() -> int:
        counts = [int(line.split(": ")[1].split("/")[0]) for line in render.lines if " rendering: " in line]
        return max(counts, default=0)
    wait_until(lambda: frames_done() >= 2, timeout=60, what="two frames to finish")
    code, _ = render.stop(signal.SIGINT)
    assert code == 130, render.lines
    kept = {name for name in files_under(tmp_path) - {"slow.pov"} if not name.startswith("tmp/")}
    assert kept and kept <= {f"slow{n}.png" for n in range(1, 5)}, kept
    assert any(line.startswith(f"povfarm: kept the {len(kept)} finished frame") for line in render.lines)
    native = tmp_path / "native"
    native.mkdir()
    (native / "slow.pov").write_text(SLOW_FROM_FRAME_5)
    subprocess.run(["povray", "slow.pov", "+W32", "+H24", "+KFI1", "+KFF6", "+SF1", "+EF4", "-D"], cwd=native,
                   capture_output=True, timeout=60, check=True)
    for name in kept:
        assert decode(tmp_path / name) == decode(native / name), name


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
