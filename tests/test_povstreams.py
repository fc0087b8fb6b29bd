"""POV-Ray's stream files made from its console output (farm/povstreams.py), against the files `povray`
itself writes for the same run."""

from __future__ import annotations

import subprocess

import pytest

from harness import needs_povray
from farm import povtext
from farm.povstreams import STREAMS, WIDTH, StreamSettings, _wrapped, console_text, file_text

# a message cut at a space, one whose word fills a line, a located warning longer than a line
SCENE = ('#version 3.7;\nglobal_settings { assumed_gamma 1 }\n#debug "hello\\n"\n'
         '#warning "mind the gap"\n#warning "' + "x" * 60 + ' yyyy zz"\n#warning "' + "w" * 90 + '"\n'
         'camera { location <0, 0, -3> look_at 0 }\nlight_source { <2, 4, -3> rgb 1 }\n'
         'sphere { 0, 1 pigment { rgb 1 } }\n')


@needs_povray
def test_each_stream_file_is_what_povray_writes_for_the_same_run(tmp_path):
    (tmp_path / "s.pov").write_text(SCENE)
    files = [f"{name}_File=true" for name, _, _ in STREAMS.values()]
    run = subprocess.run(["povray", "s.pov", "+W32", "+H24", "-D", *files], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = povtext.classify(run.stderr)
    for letter, (_, name, _) in STREAMS.items():
        assert file_text(letter, lines) == (tmp_path / name).read_text(), name


def test_messages_are_cut_as_povray_cuts_them():
    assert _wrapped("a" * WIDTH) == ["a" * WIDTH]
    assert _wrapped("a" * 78 + " bb cc") == ["a" * 78, " bb cc"]
    assert _wrapped("a" * 90) == ["a" * WIDTH, "a" * 10]


@pytest.mark.parametrize("switches, shown", [
    ((), "hello\nFile 's.pov' line 4: Parse Warning: mind the gap\n"),
    ((("D", False),), "File 's.pov' line 4: Parse Warning: mind the gap\n"),
    ((("W", False),), "hello\n"),
    ((("A", False), ("D", True)), "hello\n"),
    ((("A", False),), ""),
])
def test_console_switches_keep_their_streams_off_the_console(switches, shown):
    settings = StreamSettings()
    for letter, on in switches:
        settings.console(letter, on)
    assert console_text(settings, "hello\nFile 's.pov' line 4: Parse Warning: mind the gap\n") == shown
