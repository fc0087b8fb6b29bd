"""POV-Ray's message-stream files and console switches: which a command line asks for, and each file's text
made from a run's output as the console showed it.

POV-Ray 3.7 has six streams, each with a console switch and a file: `All_File`/`+GA`, `Debug_File`/`+GD`,
`Fatal_File`/`+GF`, `Render_File`/`+GR`, `Statistic_File`/`+GS`, `Warning_File`/`+GW`. A file key takes a
name; `true` (on, yes, 1) or nothing (`All_File=`, as benchmark.ini has it) stands for POV-Ray's own name
(alltext.out, debug.out, fatal.out, render.out, stats.out, warning.out), and any other word is a name
(measured: `Debug_File=off` writes a file called `off`); `+GDname` names the file and turns the console
on, `-GDname` names it and turns the console off. Measured on 3.7.0.10: the files are written in the output image's folder (a name elsewhere is
an error), each is emptied at the start of a run unless `Append_File=on`, an animation's frames follow one
another in it, and the files hold no banner, no `==== [...]` section lines and no progress. A located
message reads `File: s.pov  Line: 2` then the message on the next line, where the console has
`File 's.pov' line 2: ` before it. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from farm import povtext

# Each stream: its switch letter (+G<letter>), its INI name, POV-Ray's default file name and the
# povtext kinds of console lines it holds.
STREAMS = {
    "A": ("All", "alltext.out", frozenset(povtext.KINDS) - {povtext.BANNER}),
    "D": ("Debug", "debug.out", frozenset({povtext.DEBUG})),
    "F": ("Fatal", "fatal.out", frozenset({povtext.ERROR})),
    "R": ("Render", "render.out", frozenset({povtext.RENDER})),
    "S": ("Statistic", "stats.out", frozenset({povtext.STATISTICS})),
    "W": ("Warning", "warning.out", frozenset({povtext.WARNING})),
}
SWITCHES = frozenset(f"G{letter}" for letter in STREAMS)
FILE_KEYS = {f"{name}_file".lower(): letter for letter, (name, _, _) in STREAMS.items()}
CONSOLE_KEYS = {f"{name}_console".lower(): letter for letter, (name, _, _) in STREAMS.items()}
_DEFAULT_NAME = ("", "on", "true", "yes", "1")     # values that stand for POV-Ray's own file name
_RULE = re.compile(r"^-{20,}$")
_WRAPPED = re.compile(r"^ \S")         # the next line of a message POV-Ray wrapped
WIDTH = povtext.WRAP_WIDTH
_LOCATED = re.compile(r"^File '(.*)' line (\d+):\s*(.*)$")
_LEFT_OUT = re.compile(r"^(==== \[|POV-Ray finished|Rendered \d+ of \d+ pixels|Parsing \d|"
                       r"Rendering frame \d+ of \d+)")


@dataclasses.dataclass
class StreamSettings:
    """The stream files a command line names (by switch letter) and the streams it keeps off the console."""
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    silent: set[str] = dataclasses.field(default_factory=set)       # letters turned off on the console
    append: bool = False

    def file_key(self, letter: str, value: str) -> None:
        """`Debug_File=name`; `=true` or `=`: POV-Ray's own name."""
        text = value.strip()
        self.files[letter] = STREAMS[letter][1] if text.lower() in _DEFAULT_NAME else text

    def console(self, letter: str, on: bool) -> None:
        """`Debug_Console=off`, `-GD`; the All stream turns every stream on or off."""
        letters = set(STREAMS) if letter == "A" else {letter}
        if on:
            self.silent -= letters
        else:
            self.silent |= letters

    def switch(self, letter: str, on: bool, name: str) -> None:
        """`+GDname` / `-GDname`: the console on or off, and the file named when a name is given."""
        self.console(letter, on)
        if name:
            self.files[letter] = name

    def shown(self, kind: str) -> bool:
        """Whether the console shows lines of povtext `kind`."""
        return not any(kind in STREAMS[letter][2] and letter != "A" for letter in self.silent)


def file_text(letter: str, lines: Iterable[tuple[str, str]]) -> str:
    """The text one run's console lines (povtext.classify) put in stream `letter`'s file."""
    lines = list(lines)
    while lines and not lines[-1][1].strip():
        lines.pop()             # the blank line after "POV-Ray finished"
    kinds = STREAMS[letter][2]
    out: list[str] = []
    index = 0
    while index < len(lines):
        kind, line = lines[index]
        following = lines[index + 1][0] if index + 1 < len(lines) else ""
        index += 1
        if kind == povtext.STATISTICS and _RULE.match(line) and following == povtext.RENDER:
            kind = povtext.RENDER       # the rule above "Render Options" is the render stream's
        if kind not in kinds or _LEFT_OUT.match(line):
            continue
        located = _LOCATED.match(line) if kind in (povtext.WARNING, povtext.ERROR) else None
        if located is None:
            out.append(line + "\n")
            continue
        message, width = located.group(3), len(line)
        while index < len(lines) and (width == WIDTH and lines[index][1]       # a word cut where the line was full
                                      or lines[index][0] == kind and _WRAPPED.match(lines[index][1])):
            message += lines[index][1]      # the console wrapped it with the place in front: unwrap it
            width = len(lines[index][1])
            index += 1
        out.append(f"File: {located.group(1)}  Line: {located.group(2)}\n")
        out.extend(f"{piece}\n" for piece in _wrapped(message))
    return "".join(out)


def _wrapped(text: str) -> list[str]:
    """`text` cut as POV-Ray cuts a message (base/textstreambuffer.cpp, and measured): a line that would pass
    WIDTH characters is cut before the last space within its last quarter (the next line starts with it),
    else where it is full."""
    pieces = []
    while len(text) > WIDTH:
        cut = next((at for at in range(WIDTH, WIDTH - WIDTH // 4, -1) if text[at].isspace()), WIDTH)
        pieces.append(text[:cut])
        text = text[cut:]
    return [*pieces, text]


def console_text(settings: StreamSettings, messages: str) -> str:
    """The scene's messages (debug and warning text, as farm.povtext.parse_messages gives them) without
    the streams the command line keeps off the console."""
    if not settings.silent:
        return messages
    lines = povtext.classify("==== [Parsing...]\n" + messages)[1:]
    return "".join(f"{line}\n" for kind, line in lines if settings.shown(kind))
