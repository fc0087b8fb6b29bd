"""A unit ends when POV-Ray's image does, not when POV-Ray exits (farm/rendering/finished.py, reaper.py): the
predicate on real POV-Ray files and torn ones, the runner handing a finished process to the reaper, and a
farm whose units are delivered while every POV-Ray still runs, pixels exact."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import SCENES, assert_same_pixels, native_render, needs_povray, submit, wait_ended, wait_until
from farm.rendering import povray
from farm.rendering.finished import image_complete, statistics_complete, unit_done
from farm.rendering.reaper import Reaper

WINEGLASS = SCENES / "advanced/wineglass.pov"
CLOCK_SCENE = ('camera { location <0, 0, -3> look_at 0 }\nlight_source { <2, 4, -3>, 1 }\n'
               'sphere { <clock - 0.5, 0, 0>, 0.6 pigment { rgb <1, clock, 0.3> } }\n')
STATS_END = "  Trace Time:       0 hours  0 minutes  0 seconds (0.007 seconds)\n" \
            "              using 1 thread(s) with 0.006 CPU-seconds total\n"


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Real POV-Ray output, small: {name: (image bytes, POV-Ray's log)} for PPM and PNG, 8 and 16 bits, alpha,
    and a run of three animation frames."""
    folder = tmp_path_factory.mktemp("renders")
    (folder / "clock.pov").write_text(CLOCK_SCENE)
    found = {}
    for name, options in (("ppm8.ppm", ["+FP"]), ("ppm16.ppm", ["+FP16"]), ("alpha.png", ["+FN", "+UA"]),
                          ("png16.png", ["+FN16"])):
        done = subprocess.run(["povray", "+Iclock.pov", "+W24", "+H16", f"+O{name}", *options, "-D", "-P", "+WT1"],
                              cwd=folder, capture_output=True, timeout=120, check=True)
        found[name] = ((folder / name).read_bytes(), done.stderr.decode())
    done = subprocess.run(["povray", "+Iclock.pov", "+W24", "+H16", "+KFI1", "+KFF3", "+Oanim.ppm", "+FP", "-D",
                           "-P", "+WT1"], cwd=folder, capture_output=True, timeout=120, check=True)
    found["anim"] = (b"", done.stderr.decode())
    return found


def whole(data: bytes, png: bool) -> bool:
    return image_complete(png, data[:1024], len(data), data[-12:])


@needs_povray
@pytest.mark.parametrize("name", ["ppm8.ppm", "ppm16.ppm", "alpha.png", "png16.png"])
@settings(max_examples=60, deadline=None)
@given(cut=st.floats(0, 1, exclude_max=True))
def test_an_image_is_complete_only_when_povray_has_written_all_of_it(renders, name, cut):
    data, _ = renders[name]
    png = name.endswith(".png")
    assert whole(data, png)
    torn = data[:int(len(data) * cut)]
    assert not whole(torn, png)
    assert not whole(torn + b"\0" * (len(data) - len(torn) - 1), png)   # a byte short


def test_what_is_not_an_image_is_never_complete():
    assert not whole(b"", False) and not whole(b"", True)
    assert not whole(b"P6\n2 1\n255\n" + b"\0" * 5, False) and whole(b"P6\n2 1\n255\n" + b"\0" * 6, False)
    assert not whole(b"P6\n2 1\n255\n" + b"\0" * 7, False)      # more than its header says: not POV-Ray's
    assert not whole(b"P3\n1 1\n255\n1 2 3\n", False)


@needs_povray
@pytest.mark.parametrize("name", ["ppm8.ppm", "anim"])
def test_the_statistics_are_complete_only_with_the_last_frames_using_line(renders, name):
    text = renders[name][1]
    assert statistics_complete(text) and text.count("[Rendering...]") == (3 if name == "anim" else 1)
    end = text.rindex("CPU-seconds total\n") + len("CPU-seconds total\n")
    last = text.rindex("[Rendering...]") + len("[Rendering...]")
    for cut in range(last, end, max(1, (end - last) // 200)):
        assert not statistics_complete(text[:cut]), text[:cut][-200:]
    assert statistics_complete(text[:end])


def test_unit_done_wants_every_frame_whole_no_state_file_and_the_statistics(tmp_path):
    log_path, image = tmp_path / "povray.log", b"P6\n2 1\n255\n" + b"\1" * 6
    log_path.write_text("==== [Rendering...] ====\n" + STATS_END)
    still = tmp_path / "strip.ppm"
    assert not unit_done(still, range(1, 2), False, log_path)          # nothing written yet
    still.write_bytes(image[:-1])
    assert not unit_done(still, range(1, 2), False, log_path)          # torn
    still.write_bytes(image)
    (tmp_path / "strip.pov-state").write_bytes(b"POV-Ray Render State File\0\0")
    assert not unit_done(still, range(1, 2), False, log_path)          # the state file is still there
    (tmp_path / "strip.pov-state").unlink()
    assert unit_done(still, range(1, 2), False, log_path)
    log_path.write_text("==== [Rendering...] ====\n" + STATS_END[:-20])
    assert not unit_done(still, range(1, 2), False, log_path)          # the using line is not whole
    log_path.write_text("==== [Rendering...] ====\n" + STATS_END)
    still.unlink()
    (tmp_path / "strip3.ppm").write_bytes(image)
    (tmp_path / "strip5.ppm").write_bytes(image)
    assert not unit_done(still, range(3, 6), True, log_path)           # frame 4 missing
    (tmp_path / "strip4.ppm").write_bytes(image[:-2])
    assert not unit_done(still, range(3, 6), True, log_path)           # frame 4 torn
    (tmp_path / "strip4.ppm").write_bytes(image)
    assert unit_done(still, range(3, 6), True, log_path)


# -- the runner and the reaper, with stand-in processes ---------------------------------------------------

def lingering_command(folder: Path, code: int = 0, write: bool = True) -> list[str]:
    """A process that writes a whole image and statistics (unless not `write`), then waits for `release` and
    exits with `code`."""
    wrote = (f"printf 'P6\\n2 1\\n255\\n123456' > strip.ppm; printf '[Rendering...]\\n{STATS_END}' >&2; "
             if write else "echo 'Parse Error: nothing' >&2; ")
    return ["/bin/sh", "-c", f"{wrote}while [ ! -e release ]; do sleep 0.05; done; exit {code}"]


def run_early(folder: Path, reaper: Reaper, argv: list[str], timeout: float = 0.0) -> povray.ProcessResult:
    done = lambda: unit_done(folder / "strip.ppm", range(1, 2), False, folder / "povray.log")   # noqa: E731
    return povray.run_process(argv, folder, dict(os.environ), folder / "povray.log", timeout=timeout,
                              early=povray.EarlyEnd(done, reaper, "job 7 strip 3", folder))


def in_thread(call):
    """Run `call` in a thread that ends right after it (as a unit's thread does); its return value."""
    box = []
    thread = threading.Thread(target=lambda: box.append(call()))
    thread.start()
    thread.join(60)
    return box[0]


def test_a_finished_run_returns_at_once_and_the_reaper_waits_for_its_process(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    reaper = Reaper()
    result = in_thread(lambda: run_early(tmp_path, reaper, lingering_command(tmp_path, code=3)))
    assert result.early and result.returncode == 0 and not result.timed_out and not result.stopped
    removed = threading.Event()
    reaper.after(tmp_path, removed.set)
    assert reaper.lingering() == 1 and not removed.is_set()    # the thread that started it has ended: it runs on
    (tmp_path / "release").touch()
    assert reaper.finish(30) and removed.wait(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("job 7 strip 3: POV-Ray exited with code 3" in message for message in warnings), warnings
    assert not zombies()


def test_a_run_that_fails_writing_nothing_is_a_failure(tmp_path):
    (tmp_path / "release").touch()
    reaper = Reaper()
    argv = lingering_command(tmp_path, code=1, write=False)
    result = run_early(tmp_path, reaper, argv)
    assert not result.early and result.returncode == 1 and reaper.lingering() == 0


def test_a_kept_process_past_its_time_limit_or_at_an_abort_is_stopped(tmp_path, caplog):
    aborting = threading.Event()
    reaper = Reaper(aborting)
    overrun, aborted = tmp_path / "overrun", tmp_path / "aborted"
    for folder in (overrun, aborted):
        folder.mkdir()
    assert run_early(overrun, reaper, lingering_command(overrun), timeout=1.0).early
    assert reaper.finish(30)
    assert any("did not exit within the unit's time limit" in r.getMessage() for r in caplog.records)
    assert run_early(aborted, reaper, lingering_command(aborted)).early
    assert reaper.lingering() == 1
    aborting.set()
    assert reaper.finish(30) and not zombies()


def zombies() -> list[int]:
    """This process's children that have ended and were never waited for."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] == "Z" and int(fields[1]) == os.getpid():
                found.append(int(entry.name))
    return found


# -- a farm: units delivered while their POV-Ray runs on ---------------------------------------------------

def holding_povray(folder: Path, release: Path) -> str:
    """A povray that, once the real one has exited, waits for `release` before it exits with its code: every
    unit's process outlives the unit's delivery by as long as the test likes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "povray"
    path.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then exec povray --version; fi\npovray "$@"\n'
                    f'code=$?\nwhile [ ! -e "{release}" ]; do sleep 0.2; done\nexit $code\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def holders(program: str) -> list[int]:
    """The processes running `program` (a shell script: the shell's second argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().split(b"\0")[1:2] == [program.encode()]:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@needs_povray
def test_units_are_delivered_before_their_povray_exits_and_stay_exact(farm, tmp_path):
    release = tmp_path / "release"
    program = holding_povray(tmp_path / "bin", release)
    farm.start_controller()
    node = farm.start_node("n1", "--povray", program, "--sandbox", "none", "--slots", "2")
    anim_scene = tmp_path / "anim" / "clock.pov"
    anim_scene.parent.mkdir()
    anim_scene.write_text(CLOCK_SCENE)
    cases = {"ppm8": {}, "ppm16": {"bits": 16}, "alpha": {"options": ["+UA"]},
             "alpha16": {"options": ["+UA"], "bits": 16}}
    jobs = {name: submit(farm.client, WINEGLASS, width=96, height=64, strips=2, **spec)
            for name, spec in cases.items()}
    wait_until(lambda: farm.client.call("nodes.list"), what="the node to register")   # its slots plan the runs
    animation = submit(farm.client, anim_scene, width=32, height=24, strips="auto",
                       animation={"first": 1, "last": 6, "initial_clock": 0.0, "final_clock": 1.0})
    ended = {name: wait_ended(farm.client, job) for name, job in [*jobs.items(), ("anim", animation)]}
    assert all(status["state"] == "done" for status in ended.values()), ended
    assert any(unit["frame_last"] > unit["frame"] for unit in ended["anim"]["strips"])   # a run of frames
    held = holders(program)
    units = sum(len(status["strips"]) for status in ended.values())
    assert len(held) == units >= 12, "every unit was delivered while its POV-Ray ran on"
    strips = tmp_path / "n1" / "strips"
    assert any(strips.iterdir())                     # their folders wait for them
    assert "the unit is rendered, the process ends in the background" in farm.log("n1")

    node.send_signal(signal.SIGTERM)          # a stop waits for them, as for units at work
    wait_until(lambda: f"waiting for {units} POV-Ray process(es)" in farm.log("n1"), what="the node to wait")
    assert node.poll() is None
    release.touch()
    assert node.wait(60) == 0
    # Reaped, not left as zombies (whose /proc entry stays until their parent waits for them).
    assert not any(Path(f"/proc/{pid}").exists() for pid in held) and not any(strips.iterdir())
    assert farm.log("n1").count("after its image was complete") == units
    for name, spec in cases.items():
        fetched = tmp_path / f"{name}.png"
        fetched.write_bytes(farm.client.call("jobs.fetch", jobs[name]).data)
        native = native_render(WINEGLASS, 96, 64, spec.get("options", []), tmp_path / f"{name}-native.png",
                               file_type="N16" if spec.get("bits") == 16 else "N")
        assert_same_pixels(fetched, native)
    native_dir = tmp_path / "native-anim"
    shutil.copytree(anim_scene.parent, native_dir)
    subprocess.run(["povray", "+Iclock.pov", "+W32", "+H24", "+KFI1", "+KFF6", "+KI0", "+KF1", "+Of.png", "-D"],
                   cwd=native_dir, check=True, capture_output=True, timeout=120)
    for frame in range(1, 7):
        fetched = tmp_path / f"anim{frame}.png"
        fetched.write_bytes(farm.client.call("jobs.fetch", animation, frame).data)
        assert_same_pixels(fetched, native_dir / f"f{frame}.png")

