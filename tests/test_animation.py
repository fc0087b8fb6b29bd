"""Animations: settings, INI files, the frames x strips schedule, animated PNGs, and real renders of
POV-Ray's example animations compared frame by frame with POV-Ray rendering them in one process."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from farm import povcmd
from farm.animation import Animation, parse_clock, parse_range
from farm.faults import Code, FarmError
from farm.images.png import apng_from_pngs, encode_png
from farm.images.raster import Raster
from farm.planning import UnitPlan, plan_units

CLOCKD_INI = Path("/usr/share/povray-3.7/scenes/animations/clockd/clockd.ini")


def test_animation_settings_and_names():
    anim = Animation(first=1, last=30, initial_clock=0.0, final_clock=1.0, cyclic=True,
                     subset_first=3, subset_last=5)
    assert (anim.rendered_first, anim.rendered_last, anim.digits) == (3, 5, 2)
    assert anim.file_name("anim", 3) == "anim03.png"
    assert anim.povray_options() == ["+KFI1", "+KFF30", "+KI0.0", "+KF1.0", "+KC"]
    assert Animation.from_spec(anim.to_spec()) == anim
    assert Animation(first=1, last=9).digits == 1 and Animation(first=1, last=100).digits == 3


@pytest.mark.parametrize("spec", [
    {"first": 5, "last": 2}, {"first": 1, "last": 10, "subset_first": 11, "subset_last": 12},
    {"first": -1, "last": 3}, {"first": 1, "last": 3, "initial_clock": float("nan")},
    {"first": 1, "last": 3, "cyclic": "yes"}, {"first": 1, "last": 3, "colour": 1},
    {"first": 1, "last": 20000},
])
def test_bad_animation_settings_are_refused(spec):
    with pytest.raises(FarmError) as err:
        Animation.from_spec(spec)
    assert err.value.code is Code.BAD_ARGUMENT


def test_ranges_and_clocks_from_the_command_line():
    assert parse_range("1-30", "--frames") == (1, 30) and parse_range("7", "--frames") == (7, 7)
    assert parse_clock("0,2.5") == (0.0, 2.5)
    for bad in ("a-b", "1-", "-"):
        with pytest.raises(FarmError):
            parse_range(bad, "--frames")
    with pytest.raises(FarmError):
        parse_clock("1")


def test_the_example_animation_ini_is_read(tmp_path):
    """POV-Ray's own example animation INI, read the way `povfarm render clockd.ini` reads it."""
    folder = CLOCKD_INI.parent if CLOCKD_INI.exists() else tmp_path
    if not CLOCKD_INI.exists():
        (tmp_path / "clockd.ini").write_text(
            "Antialias=On\nAntialias_Threshold=0.3\nAntialias_Depth=3\nInput_File_Name=clockd.pov\n"
            "Initial_Frame=1\nFinal_Frame=20\nInitial_Clock=0\nFinal_Clock=1\nCyclic_Animation=on\n"
            "Pause_when_Done=off\n")
    command = povcmd.parse(["clockd.ini"], folder)
    assert command.scene == folder / "clockd.pov"
    assert command.options == ["+A0.3", "+R3"]
    assert command.animation == {"first": 1, "last": 20, "initial_clock": 0.0, "final_clock": 1.0, "cyclic": True}


@given(height=st.integers(1, 2000), frames=st.integers(1, 200), nodes=st.integers(1, 64),
       strips_=st.one_of(st.just("auto"), st.integers(1, 20)))
def test_units_cover_every_row_of_every_frame_once(height, frames, nodes, strips_):
    units = plan_units(height, 1, frames, nodes, strips_)
    covered = {}
    for unit in units:
        first, last, start, end = unit.first_frame, unit.last_frame, unit.row_start, unit.row_end
        assert unit.kind == "rows"
        assert 1 <= first <= last <= frames and 0 <= start < end <= height
        for frame in range(first, last + 1):
            covered.setdefault(frame, []).append((start, end))
    for frame in range(1, frames + 1):
        rows = sorted(covered[frame])
        assert rows[0][0] == 0 and rows[-1][1] == height
        assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))


def test_many_frames_make_runs_and_few_frames_make_strips():
    runs = plan_units(120, 1, 30, 2)
    assert all(unit.row_start == 0 and unit.row_end == 120 for unit in runs)
    assert 2 <= len(runs) <= 4 and sum(unit.last_frame - unit.first_frame + 1 for unit in runs) == 30
    split = plan_units(240, 1, 2, 8)     # cut as nodes ask: one remainder of every row per frame
    assert split == [UnitPlan(f, f, 0, 240, remainder=True) for f in (1, 2)]
    assert plan_units(20, 1, 1, 8) == [UnitPlan(1, 1, 0, 20)]   # one block: nothing to cut
    fixed = plan_units(240, 1, 2, 8, strips=3)
    assert [(u.first_frame, u.row_start, u.row_end) for u in fixed] == [
        (f, a, b) for f in (1, 2) for a, b in ((0, 96), (96, 192), (192, 240))]


def test_animated_png_frames_decode_to_the_stills():
    from PIL import Image, ImageSequence

    frames = [Raster(12, 6, channels, 8, bytes((i * 37 + j) % 256 for j in range(12 * 6 * channels)))
              for channels in (3,) for i in range(4)]
    # Built from the frames' PNG files without decoding them.
    image = Image.open(io.BytesIO(apng_from_pngs([encode_png(frame) for frame in frames], 80)))
    assert image.is_animated and image.n_frames == 4
    decoded = [frame.convert("RGB").tobytes() for frame in ImageSequence.Iterator(image)]
    assert decoded == [frame.pixels for frame in frames]
    with pytest.raises(ValueError):
        apng_from_pngs([encode_png(frames[0]), encode_png(Raster(1, 1, 3, 8, b"\0\0\0"))])


# -- real renders ---------------------------------------------------------------------------------

from harness import SCENES, needs_povray, run_cli  # noqa: E402

CLOCKD = SCENES / "animations/clockd/clockd.pov"


def native_animation(scene: Path, ini: Path | None, args: list[str], out_dir: Path) -> Path:
    """POV-Ray rendering the whole animation in one process."""
    out_dir.mkdir()
    command = ["povray", *([ini.name] if ini else []), f"+I{scene.name}", *args, "-D", f"+O{out_dir}/{scene.stem}.png"]
    subprocess.run(command, cwd=scene.parent, check=True, capture_output=True, timeout=300)
    return out_dir


def same_frames(ours: Path, theirs: Path, names: list[str]) -> None:
    from PIL import Image

    for name in names:
        with Image.open(ours / name) as a, Image.open(theirs / name) as b:
            assert a.tobytes() == b.tobytes(), f"frame {name} differs"


@needs_povray
def test_example_animation_with_its_ini_on_two_nodes(tmp_path):
    out = tmp_path / "frames"
    result = run_cli("render", str(CLOCKD), "--ini", str(CLOCKD.with_suffix(".ini")), "--width", "96",
                     "--height", "72", "--nodes", "2", "--output", str(out))
    assert result.returncode == 0, result.stderr
    names = [f"clockd{n:02d}.png" for n in range(1, 21)]
    assert sorted(p.name for p in out.iterdir()) == names
    native = native_animation(CLOCKD, CLOCKD.with_suffix(".ini"), ["+W96", "+H72"], tmp_path / "native")
    same_frames(out, native, names)


@needs_povray
def test_subset_frames_and_the_animated_png(farm, tmp_path):
    from PIL import Image, ImageSequence

    farm.start_controller()
    farm.start_node("n1")
    farm.start_node("n2")
    url = ["--controller", farm.url]
    out = tmp_path / "frames"
    result = run_cli("submit", str(CLOCKD), "--frames", "1-12", "--clock", "0,1", "--cyclic", "--subset", "4-7",
                     "--width", "64", "--height", "48", "--option", "+A0.3", "--wait", "--output", str(out), *url)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip()
    names = [f"clockd{n:02d}.png" for n in range(4, 8)]
    assert sorted(p.name for p in out.iterdir()) == names
    native = native_animation(CLOCKD, None, ["+W64", "+H48", "+A0.3", "+KFI1", "+KFF12", "+KI0", "+KF1", "+KC",
                                             "+SF4", "+EF7"], tmp_path / "native")
    same_frames(out, native, names)

    apng = tmp_path / "anim.png"
    assert run_cli("fetch", job, "--animation", str(apng), *url).returncode == 0
    with Image.open(apng) as image:
        frames = [frame.convert("RGB").tobytes() for frame in ImageSequence.Iterator(image)]
    stills = []
    for name in names:
        with Image.open(out / name) as still:
            stills.append(still.convert("RGB").tobytes())
    assert frames == stills


BROKEN_FRAME = """camera { location <0, 0, -3> look_at 0 }
light_source { <5, 5, -5> rgb 1 }
#if (frame_number = 4) #error "frame four is cursed" #end
sphere { 0, 1 pigment { rgb <clock, 0.5, 0.5> } }
"""


@needs_povray
def test_a_frame_with_a_scene_error_fails_the_job_naming_the_frame(tmp_path):
    scene = tmp_path / "cursed" / "cursed.pov"
    scene.parent.mkdir()
    scene.write_text(BROKEN_FRAME)
    result = run_cli("render", str(scene), "--frames", "1-6", "--width", "32", "--height", "24", "--nodes", "2",
                     "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "frame 4" in result.stderr and "frame four is cursed" in result.stderr, result.stderr


@needs_povray
def test_an_animation_of_one_frame(tmp_path):
    """POV-Ray does not number the file of a one-frame animation (+KFI1 +KFF1)."""
    out = tmp_path / "frames"
    result = run_cli("render", str(CLOCKD), "--frames", "1-1", "--width", "32", "--height", "24", "--nodes", "1",
                     "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["clockd1.png"]
