"""POV-Ray's command line and INI files (farm/povcmd.py), its file names, and the PPM/Targa encoders.
Pure: no processes. The same command lines against the real `povray` are in test_cli_povray.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm import options, povcmd
from farm.cli.parser import build_command_line
from farm.faults import Code, FarmError
from farm.images.ppm import decode_ppm, encode_ppm
from farm.images.raster import Raster
from farm.images.tga import encode_tga

CWD = Path("/work/scenes")


def parse(*args: str, files: dict[str, str] | None = None, ini_files=()):
    files = {CWD / name: text for name, text in (files or {}).items()}
    return povcmd.parse(args, CWD, read_text=lambda path: files[path], exists=lambda path: path in files,
                        ini_files=ini_files)


def test_a_plain_command_line():
    command = parse("scene.pov", "+W320", "+H240", "+A0.3", "-J", "+R3", "Declare=Detail=2")
    assert (command.scene, command.width, command.height) == (CWD / "scene.pov", 320, 240)
    assert command.options == ["+A0.3", "-J", "+R3", "Declare=Detail=2"]
    assert command.file_type == "N" and command.output is None and command.notes == []


def test_the_last_setting_wins_in_order():
    command = parse("+W100", "scene.pov", "+W200", "+A0.2", "-A", "+A0.4", "Width=300")
    assert command.width == 300 and command.options == ["+A0.4"]


def test_switches_in_one_argument_and_quoted_values():
    command = parse('+I"my scenes/my scene.pov"', "+W16 +H12", '+O"out dir/x.png"')
    assert command.scene == CWD / "my scenes/my scene.pov" and (command.width, command.height) == (16, 12)
    assert command.output == "out dir/x.png"
    # As the shell passes them: one argument each, spaces and all.
    command = parse("my scenes/my scene.pov", "+Lmy lib")
    assert command.scene == CWD / "my scenes/my scene.pov" and command.library_paths == [CWD / "my lib"]


def test_harmless_switches_are_ignored_with_one_note_each():
    command = parse("scene.pov", "-D", "+P", "-V", "+GP", "+WT4", "-D")
    assert command.options == []
    assert command.notes == ["-D: ignored, nodes never open a display", "+P: ignored, there is no window to pause",
                             "-V: ignored, povfarm shows its own progress",
                             "+GP: ignored, POV-Ray 3.7 writes nothing different for it",
                             "+WT4: ignored, each node sets its own thread count (povfarm render --threads)"]


def test_stream_files_and_console_switches_are_read_as_povray_reads_them():
    streams = parse("scene.pov", "All_File=alltext.txt", "Debug_File=true", "Warning_File=",
                    "Render_File=off", "+GSstats.txt", "-GR", "Append_File=on", "Fatal_Console=no").streams
    # as measured: true or nothing is POV-Ray's own name, any other word a name (`off` writes "off")
    assert streams.files == {"A": "alltext.txt", "D": "debug.out", "W": "warning.out", "R": "off",
                             "S": "stats.txt"}
    assert streams.silent == {"R", "F"} and streams.append
    assert parse("scene.pov", "-GA", "+GDd.txt").streams.silent == {"A", "F", "R", "S", "W"}
    assert parse("scene.pov", "+GAa.txt").streams.files == {"A": "a.txt"}
    with pytest.raises(FarmError, match="give a plain file name"):
        parse("scene.pov", "Debug_File=../d.txt")


@pytest.mark.parametrize("arg, reason", [
    ("+SR10", "renders whole images"), ("+EC0.5", "renders whole images"), ("+RFcache.rad", "radiosity files"),
    ("Pre_Scene_Command=rm -rf ~", "never runs shell commands"), ("Post_Frame_Command=x", "shell commands"),
    ("Start_Row=3", "renders whole images"), ("+HT", "not a POV-Ray switch"), ("+ZZ", "not a POV-Ray switch"),
    ("Frobnicate=1", "not a POV-Ray setting"), ("Bounding_Methd=2", "not a POV-Ray setting (the command line); "
                                                                   "did you mean Bounding_Method?"),
    ("+I-", "reads the scene from a file"), ("Dither=on", "does not dither"), ("+TH", "does not dither"),
    ("End_Row=0.5", "renders whole images"), ("Include_Header=x.inc", "#include the file"),
    ("+FE", "does not write OpenEXR"), ("+FX", "not an output file type"), ("+FN12", "8 or 16 bits"),
    ("+Wide", "not a POV-Ray switch"), ("+Qhigh", "bad value"),
])
def test_dangerous_or_unknown_settings_are_refused_with_the_reason(arg, reason):
    with pytest.raises(FarmError) as err:
        parse("scene.pov", arg)
    assert err.value.code is Code.BAD_OPTION and reason in str(err.value)


def test_an_ini_file_as_povray_reads_it():
    ini = ("; an animation\nInput_File_Name=clockd.pov\nAntialias=On\nAntialias_Threshold=0.3\n"
           "Antialias_Depth=3\nInitial_Frame=1\nFinal_Frame=20\nInitial_Clock=0\nFinal_Clock=1\n"
           "Cyclic_Animation=on\nPause_when_Done=off\n+W160 +H120\nOutput_File_Type=P\n"
           "[Other]\nWidth=999\n")
    command = parse("clockd.ini", "+KFF6", "-D", files={"clockd.ini": ini, "clockd.pov": ""})
    assert command.scene == CWD / "clockd.pov" and (command.width, command.height) == (160, 120)
    assert command.options == ["+A0.3", "+R3"] and command.file_type == "P"
    assert command.animation == {"first": 1, "last": 6, "initial_clock": 0.0, "final_clock": 1.0, "cyclic": True}
    # A section named after the file name is read too; the others are not.
    assert parse("clockd.ini[Other]", files={"clockd.ini": ini, "clockd.pov": ""}).width == 999


def test_ini_settings_refused_name_the_file_and_line():
    with pytest.raises(FarmError) as err:
        parse("x.ini", files={"x.ini": "Width=10\nFatal_Error_Command=curl evil\n"})
    assert "Fatal_Error_Command" in str(err.value) and "x.ini line 2" in str(err.value)


def test_threshold_alone_waits_for_antialias():
    assert parse("Antialias_Threshold=0.2", "scene.pov").options == []
    assert parse("Antialias_Threshold=0.2", "scene.pov", "+A").options == ["+A0.2"]


def test_output_off_and_on_standard_output():
    assert parse("scene.pov").to_file and not parse("scene.pov").to_stdout
    assert not parse("scene.pov", "-F").to_file and not parse("scene.pov", "Output_To_File=off").to_file
    assert parse("scene.pov", "-F", "+F").to_file and parse("scene.pov", "-F", "+FP").file_type == "P"
    assert parse("scene.pov", "+O-").to_stdout and parse("scene.pov", "Output_File_Name=-").to_stdout
    assert not parse("scene.pov", "+O-", "-F").to_stdout


def test_formats_and_alpha():
    assert parse("s.pov", "+FN16", "+UA").bits == 16
    command = parse("s.pov", "+FP", "+UA")
    assert command.options == [] and "+UA: ignored, PPM files have no alpha channel" in command.notes
    assert parse("s.pov", "+FT", "+UA").options == ["+UA"]
    with pytest.raises(FarmError, match="8 bits per channel"):
        parse("s.pov", "+FT", "Bits_Per_Color=16")


def test_rendering_options_take_several_switches_per_flag():
    assert povcmd.rendering_options(["+A0.3 +R3", "-J"]) == ["+A0.3", "+R3", "-J"]
    with pytest.raises(FarmError, match="give it after the scene"):
        povcmd.rendering_options(["+W640"])


@pytest.mark.parametrize("output, file_type, expected", [
    (None, "N", "/s/scene.png"), (None, "P", "/s/scene.ppm"), ("out", "N", "/w/out.png"),
    ("out.png", "N", "/w/out.png"), ("out.jpg", "N", "/w/out.jpg.png"), ("out.PNG", "N", "/w/out.PNG.png"),
    ("out.png", "T", "/w/out.png.tga"), ("out.tga", "C", "/w/out.tga"), ("x.y.z", "N", "/w/x.y.z.png"),
    ("frames/", "N", "/w/frames/scene.png"), ("/abs/o.ppm", "P", "/abs/o.ppm"),
])
def test_output_names_are_povrays(output, file_type, expected):
    """Measured with POV-Ray 3.7.0.10: the format's extension is added unless the name ends in exactly it."""
    base = povcmd.output_base(Path("/s/scene.pov"), output, povcmd.FORMATS[file_type][1], Path("/w"))
    assert povcmd.output_path(base) == Path(expected)


def test_animation_names_are_numbered_and_padded_as_povray_does():
    base = povcmd.output_base(Path("/s/scene.pov"), "fr.png", ".png", Path("/w"))
    assert povcmd.output_path(base, 7, 2) == Path("/w/fr07.png")
    assert [povcmd.is_numbered(a, b) for a, b in ((1, 1), (0, 0), (3, 3), (1, 2), (0, 1))] == [
        False, False, True, True, True]


def test_farm_flags_and_povray_switches_are_told_apart_in_order():
    split_povray_args = build_command_line().split_povray_args
    farm, povray = split_povray_args(["--log-level", "INFO", "render", "s.pov", "-J", "--option", "-A",
                                      "+W10", "--nodes", "1", "--out", "x.png", "Width=3", "--wait"])
    assert farm == ["--log-level", "INFO", "render", "--option=-A", "--nodes=1", "--output=x.png", "--wait"]
    assert povray == ["s.pov", "-J", "+W10", "Width=3"]
    assert split_povray_args(["jobs", "--json"]) == (["jobs", "--json"], [])


def test_every_subcommand_explains_itself_with_an_example():
    commands = build_command_line().commands
    for name, sub in commands.items():
        text = sub.format_help()
        assert sub.description and "example:" in text and f"povfarm {name}" in text, name
    assert "{show} show" not in commands["token"].format_help()
    submit = commands["submit"].format_help()
    assert "+UA" in submit and "implied by --output" in submit and "+KFI" in submit


def test_the_allowlist_examples_cover_every_allowed_switch():
    from test_cli_povray import EVERY_ALLOWED_SWITCH
    named = {options._split_switch(option)[0] for option in EVERY_ALLOWED_SWITCH if option[0] in "+-"}
    assert named == set(options.ALLOWED_SWITCHES)
    options.validate_options(EVERY_ALLOWED_SWITCH)


def test_library_paths_in_jobs_must_stay_relative():
    options.validate_options(["+L../lib", '+L"my lib"', "+Llib/sub"])
    for bad in ("+L/tmp", "+LC:/x", "+Lmy lib", '+L"x', "+L\\\\server\\share"):
        with pytest.raises(FarmError, match="not allowed"):
            options.validate_options([bad])



@pytest.mark.parametrize("scene, option, inside", [
    ("s.pov", "+Llib", True), ("s.pov", "+L.", True), ("a/b/s.pov", "+L../..", True),
    ("a/b/s.pov", '+L"../my lib"', True), ("a/s.pov", "+Llib/../../a", True),
    ("s.pov", "+L..", False), ("s.pov", "+L../..", False), ("a/b/s.pov", "+L../../..", False),
    ("a/s.pov", "+Llib/../../../x", False), ("s.pov", '+L"../my lib"', False), ("s.pov", "-L..", False),
])
def test_library_paths_stay_inside_the_bundle(scene, option, inside):
    """A +L folder is taken from the scene's folder in the bundle, as the node's POV-Ray takes it; the
    folder must be in the bundle (README: library folders travel inside it)."""
    options.validate_options([option])
    if inside:
        options.check_libraries(["+A0.3", "Declare=X=1", option], scene)
        return
    with pytest.raises(FarmError) as refused:
        options.check_libraries(["+A0.3", "Declare=X=1", option], scene)
    assert refused.value.code is Code.BAD_OPTION and "outside the job's bundle" in str(refused.value)
    assert repr(option) in str(refused.value) and "+L../lib" in str(refused.value)


def test_library_paths_in_option_flags_are_refused():
    """`--option +L...` would send a folder that nobody packed: refused, saying where it goes instead."""
    for option in ("+Llib", "+L../..", '+L"my lib"'):
        with pytest.raises(FarmError) as refused:
            povcmd.rendering_options([f"+A0.3 {option}"])
        assert "not allowed in --option" in str(refused.value) and "after the scene" in str(refused.value)
    assert povcmd.rendering_options(["+A0.3 +R3"]) == ["+A0.3", "+R3"]


def test_a_node_refuses_a_library_path_outside_the_bundle(tmp_path):
    """Whatever the controller let through (an older one checked nothing), the node refuses the job before
    fetching its bundle or starting POV-Ray: the job's fault, so it fails instead of going round the farm."""
    import threading

    from farm.config import Config
    from farm.rendering.render import UnitRenderer
    from farm.rendering.task import Task

    def never(*_args, **_kwargs):
        raise AssertionError("must not be reached")

    renderer = UnitRenderer(Config(work_dir=tmp_path, name="n1"), "povray", None, never, never, never, never,
                            threading.Event())
    task = Task.from_wire({"lease": "1.1.aa", "job": 1, "frame": 1, "strip": 0, "attempt": 1, "width": 32,
                           "height": 32, "row_start": 0, "row_end": 32, "bundle": "0" * 64, "scene": "s.pov",
                           "options": ["+L../.."], "channels": 3, "bits": 8})
    outcome = renderer.render(task, tmp_path / "strip")
    assert outcome.kind == "failed" and outcome.scene_error
    assert "node n1 refuses the job" in outcome.error and "outside the job's bundle" in outcome.error

rasters = st.builds(
    lambda w, h, channels, data: Raster(w, h, channels, 8, (data * (w * h * channels))[:w * h * channels]),
    st.integers(1, 9), st.integers(1, 5), st.sampled_from([3, 4]), st.binary(min_size=1, max_size=7))


@given(rasters, st.booleans())
def test_targa_decodes_in_pillow(raster, rle):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(encode_tga(raster, rle=rle))) as image:
        assert (image.format, image.size, len(image.getbands())) == ("TGA", (raster.width, raster.height),
                                                                     raster.channels)
        assert image.tobytes() == raster.pixels


@given(st.integers(1, 6), st.integers(1, 4), st.sampled_from([8, 16]), st.binary(min_size=1, max_size=5))
def test_ppm_round_trips(width, height, bits, data):
    size = width * height * 3 * bits // 8
    raster = Raster(width, height, 3, bits, (data * size)[:size])
    assert decode_ppm(encode_ppm(raster)) == raster


def test_library_folders_are_searched_shipped_and_named_for_the_node(tmp_path):
    from farm.bundle.packing import plan_bundle

    (tmp_path / "scenes" / "my scene").mkdir(parents=True)
    (tmp_path / "lib").mkdir()
    (tmp_path / "unused lib").mkdir()
    (tmp_path / "lib" / "mycolors.inc").write_text('#include "deeper.inc"\n')
    (tmp_path / "lib" / "deeper.inc").write_text("#declare X = 1;\n")
    (tmp_path / "lib" / "unrelated.inc").write_text("\n")
    scene = tmp_path / "scenes" / "my scene" / "s.pov"
    scene.write_text('#include "colors.inc"\n#include "mycolors.inc"\nsphere { 0, X }\n')
    plan = plan_bundle(scene, library_paths=[tmp_path / "unused lib", tmp_path / "lib",
                                             Path("/usr/share/povray-3.7/include")])
    assert plan.files == ("lib/deeper.inc", "lib/mycolors.inc", "scenes/my scene/s.pov")
    assert plan.scene == "scenes/my scene/s.pov" and plan.library_dirs == ("../../lib",)
    assert povcmd.library_option("../../my lib") == '+L"../../my lib"'


# -- POV-Ray's own defaults (farm/povini.py) ------------------------------------------------------

def test_povray_ini_is_the_first_found_in_povrays_order_and_only_that_one():
    from farm.povini import SYSTEM_INI, find_povray_ini
    home = Path("/home/u")
    everything = {Path("/x/my.ini"), CWD / "povray.ini", home / ".povray/3.7/povray.ini", SYSTEM_INI,
                  home / ".povrayrc", Path("/etc/povray.ini")}
    order = [Path("/x/my.ini"), CWD / "povray.ini", home / ".povray/3.7/povray.ini", SYSTEM_INI,
             home / ".povrayrc", Path("/etc/povray.ini")]
    env = {"POVINI": "/x/my.ini", "HOME": str(home)}
    for expected in order:
        assert find_povray_ini(env, CWD, lambda path: path in everything) == expected
        everything.discard(expected)
    assert find_povray_ini(env, CWD, lambda path: path in everything) is None
    # $POVINI naming a missing file is passed over, as POV-Ray does (it warns)
    assert find_povray_ini({"POVINI": "/gone.ini"}, CWD, lambda path: path == SYSTEM_INI) == SYSTEM_INI
    assert find_povray_ini({}, CWD, lambda path: path == Path("/home/u/.povrayrc")) is None   # no HOME


def parse_with_defaults(*args: str, defaults: str, files: dict[str, str] | None = None, include=None):
    files = {CWD / name: text for name, text in {"povray.ini": defaults, **(files or {})}.items()}
    return povcmd.parse(args, CWD, read_text=lambda path: files[path], exists=lambda path: path in files,
                        defaults=CWD / "povray.ini", include=include)


def test_povray_ini_comes_first_and_the_command_line_overrides_it():
    defaults = "Width=800\nHeight=600\nDisplay=On\nVerbose=On\nOutput_File_Type=N8\nAntialias=On\n" \
               "Antialias_Threshold=0.2\nLibrary_Path=ini\n"
    command = parse_with_defaults("scene.pov", "res120.ini", defaults=defaults,
                                  files={"ini/res120.ini": "Width=120\nHeight=90\n"})
    assert (command.width, command.height, command.options) == (120, 90, ["+A0.2"])
    assert command.notes == []                     # what povray.ini sets that the farm ignores goes unsaid
    assert not command.file_type_given             # its file type is only a default (--output x.jpg wins)
    assert parse_with_defaults("scene.pov", "+W64", defaults=defaults).width == 64
    assert parse_with_defaults("scene.pov", defaults="", include="inc").library_paths == [CWD / "inc"]


def test_a_refused_setting_in_povray_ini_names_the_file_and_the_way_out():
    with pytest.raises(FarmError, match=r"Pre_Scene_Command.*povray.ini; --no-povray-ini skips them"):
        parse_with_defaults("scene.pov", defaults="Pre_Scene_Command=rm -rf /\n")


# -- every INI key and switch of POV-Ray 3.7 (farm/povkeys.py) ------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


def documented(name: str) -> list[str]:
    lines = (FIXTURES / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_table_holds_exactly_povrays_documented_ini_keys():
    from farm.povkeys import INI_KEYS
    assert sorted(key.name for key in INI_KEYS.values()) == sorted(documented("povray37_ini_keys.txt"))


# A value of each kind, for the check below.
_SAMPLES = {"A": "0.3", "R": "3", "AG": "2.5", "AM": "2", "J": "0.5", "Q": "9", "MB": "3", "BM": "2", "MV": "3.7",
            "BS": "16", "K": "0.5", "W": "320", "H": "240", "I": "other.pov", "O": "out.png", "L": "lib",
            "KFI": "1", "KFF": "3", "KI": "0", "KF": "1", "SF": "1", "EF": "2", "SP": "8", "EP": "1", "WT": "2",
            "WL": "2", "declare": "Detail=2", "file_gamma": "1.0", "output_file_type": "P",
            "bits_per_color": "16", "bits_per_colour": "16", "include_ini": "more.ini"}
_DOING = {"off": "on", "empty": "x", "start": "0.5", "end": "0.5", "": "1"}      # refused: a value that acts
_IDLE = {"off": "off", "empty": "", "start": "0", "end": "1"}                     # ... and one that does not


@pytest.mark.parametrize("name", sorted(documented("povray37_ini_keys.txt")))
def test_each_ini_key_does_what_the_table_says(name):
    from farm import povkeys
    entry = povkeys.lookup(name)
    if entry.role == povkeys.REFUSED:
        with pytest.raises(FarmError, match=re.escape(entry.why)):
            parse("scene.pov", f"{name}={_DOING[entry.harmless]}")
        if entry.harmless:
            command = parse("scene.pov", f"{name}={_IDLE[entry.harmless]}")
            assert command.options == [] and command.notes == []
        return
    value = "on" if entry.boolean else _SAMPLES.get(entry.switch) or _SAMPLES.get(name.lower(), "1")
    partner = {"antialias_threshold": ["Antialias=on"], "jitter_amount": ["Jitter=on"]}.get(name.lower(), [])
    command = parse("scene.pov", f"{name}={value}", *partner, files={"more.ini": "Width=100\n"})
    if entry.role == povkeys.PASSED:
        assert command.options and command.notes == [], command
    elif entry.role == povkeys.FARM:
        assert command.options == [] and command.notes == [], command
    else:
        assert command.options == [] and command.notes == [f"{name}={value}: ignored, {entry.why}"]


def test_every_documented_switch_is_known():
    """A switch POV-Ray documents is passed, handled, ignored or refused with its reason: never 'not a
    POV-Ray switch'. (A0, SF0 and EF0 are POV-Ray's own spellings of +A, +SF and +EF with a fraction.)"""
    for name in documented("povray37_switches.txt"):
        try:
            parse("scene.pov", f"+{name}")
        except FarmError as err:
            assert "not a POV-Ray switch" not in str(err), name
