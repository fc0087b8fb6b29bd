"""POV-Ray's own command line and INI files, read the way `povray` 3.7 reads them.

`povfarm render scene.pov +W640 +H480 +A0.3` and `povfarm render scene.ini +KFF6` take what `povray`
takes. This module turns such arguments into the farm's terms: the scene, the size, the output name and
format, the animation, local library paths, POV-Ray's stream files and console switches (farm.povstreams)
and the rendering switches a job carries (those are checked by the same allowlist as `--option`, in
farm.options). Switches that mean nothing on a farm but do no harm (`-D`, `+P`, `-V`) are ignored with
one note each; anything that could run commands or that the farm cannot honour is refused with the reason.

Pure: files are read through a function passed in, and nothing here writes. Settings apply in order
and the last one wins, as in POV-Ray, so `scene.ini +W320` overrides the INI's width.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

from farm import options as allow
from farm import povkeys, povstreams
from farm.faults import Code, FarmError

# Output file types: switch letter -> (name, extension POV-Ray gives the file).
FORMATS = {"N": ("PNG", ".png"), "P": ("PPM", ".ppm"), "T": ("Targa", ".tga"), "C": ("Targa (RLE)", ".tga"),
           "J": ("JPEG", ".jpg")}
_UNSUPPORTED_FORMATS = {"E": "OpenEXR", "H": "Radiance HDR", "S": "the system format", "B": "BMP"}
# File types that hold no alpha channel: POV-Ray renders them as if +UA were not given (measured: the
# pixels of `+FP +UA` equal those of `+FP`).
_NO_ALPHA = frozenset("PJ")

IGNORED_SWITCHES, REFUSED_SWITCHES = povkeys.IGNORED_SWITCHES, povkeys.REFUSED_SWITCHES

# Switches this module turns into job settings rather than options: those farm.options names, the scene
# and library folders.
_JOB_SWITCHES = frozenset({*allow.JOB_SWITCHES, "I", "L"})
# Every switch farm.options knows is known here too: one it owns that is not handled above is refused
# by farm.options, with its reason.
_SWITCH_NAMES = sorted({*allow.ALLOWED_SWITCHES, *allow.FARM_OWNED, *_JOB_SWITCHES, *IGNORED_SWITCHES,
                        *REFUSED_SWITCHES, *povstreams.SWITCHES}, key=len, reverse=True)

# INI keys with a reader of their own (a method of _Reader), by lowercase name.
_SPECIAL_KEYS = {"antialias_threshold": "threshold", "jitter_amount": "threshold", "file_gamma": "file_gamma",
                 "output_file_type": "file_type_key", "bits_per_color": "bits_key", "bits_per_colour": "bits_key",
                 "include_ini": "include_ini", "declare": "declare_key",
                 "compression": "compression_key", "append_file": "append_key",
                 **dict.fromkeys(povstreams.FILE_KEYS, "stream_file"),
                 **dict.fromkeys(povstreams.CONSOLE_KEYS, "stream_console")}
_TRUE, _FALSE = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
_TOKEN = re.compile(r'(?:[^\s"]+|"[^"]*")+')
_SECTION = re.compile(r"^(.*\.ini)\[([^\]]*)\]$", re.I)
MAX_INI_DEPTH = 10
STDOUT = "-"           # +O-: POV-Ray writes the image on standard output


@dataclasses.dataclass
class PovCommand:
    """What a POV-Ray command line asks for, in the farm's terms."""
    scene: Path | None = None
    width: int | None = None
    height: int | None = None
    output: str | None = None          # +O / Output_File_Name as given (relative to the working folder);
                                       # STDOUT (+O-): the image on standard output
    to_file: bool = True               # -F / Output_To_File=Off: POV-Ray writes no image at all
    file_type: str = "N"               # a key of FORMATS
    file_type_given: bool = False
    bits: int | None = None            # +FN16 / +FP16 / Bits_Per_Color
    quality: int = 0                   # Compression=: JPEG's quality, 0 for POV-Ray's own (85)
    options: list[str] = dataclasses.field(default_factory=list)   # rendering switches for the job
    animation: dict = dataclasses.field(default_factory=dict)      # keys of farm.animation.Animation
    library_paths: list[Path] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)     # one line per ignored switch
    streams: povstreams.StreamSettings = dataclasses.field(default_factory=povstreams.StreamSettings)

    @property
    def alpha(self) -> bool:
        return "+UA" in self.options

    def extension(self) -> str:
        return FORMATS[self.file_type][1]

    @property
    def to_stdout(self) -> bool:
        return self.to_file and self.output == STDOUT


class _Reader:
    """Applies arguments, INI lines and switches in order onto one PovCommand."""

    def __init__(self, cwd: Path, read_text: Callable[[Path], str], exists: Callable[[Path], bool]):
        self.cwd, self.read_text, self.exists = cwd, read_text, exists
        self.command = PovCommand()
        self._settings: dict[str, str] = {}      # rendering switch name -> the last switch given
        self._declares: dict[str, str] = {}
        self._threshold: dict[str, str] = {}     # A/J: threshold or amount given on its own (INI)
        self._ignored: dict[str, list[str]] = {}   # why -> what was ignored for that reason, in order
        self._depth = 0
        self._base = cwd                         # where relative names are looked for second (an INI's folder)
        self._quiet = False                      # reading povray.ini: its ignored settings go unsaid

    # -- entry points --------------------------------------------------------------------------

    def argument(self, arg: str) -> None:
        """One command-line argument as the shell passed it."""
        if not arg.strip():
            return
        pieces = _tokens(arg)
        if arg[0] in "+-" and len(pieces) > 1 and not all(piece[0] in "+-" for piece in pieces):
            pieces = [_unquote(arg)]     # "+Imy scene.pov": one switch whose value has spaces
        elif arg[0] not in "+-":
            pieces = [arg]               # "my scene.pov", "Library_Path=my lib": spaces and all
        for piece in pieces:
            self.item(piece, where="the command line")

    def item(self, item: str, where: str) -> None:
        if item[0] in "+-":
            self.switch(item, where)
        elif "=" in item:
            key, _, value = item.partition("=")
            self.ini_setting(key.strip(), _unquote(value.strip()), where)
        else:
            self.file_argument(_unquote(item))

    def file_argument(self, name: str) -> None:
        """A bare name: an INI file (`x.ini`, `x.ini[Section]`), else the scene (POV-Ray adds .pov)."""
        section_match = _SECTION.match(name)
        if section_match or name.lower().endswith(".ini"):
            path_text, section = section_match.groups() if section_match else (name, None)
            self.ini_file(self._find(path_text, "INI file"), section)
            return
        path = self._path(name)
        if not path.suffix and not self.exists(path) and self.exists(path.with_suffix(".pov")):
            path = path.with_suffix(".pov")
        self.command.scene = path

    # -- INI files -----------------------------------------------------------------------------

    def ini_file(self, path: Path, section: str | None = None) -> None:
        if self._depth >= MAX_INI_DEPTH:
            raise FarmError(Code.BAD_OPTION, f"INI files nested deeper than {MAX_INI_DEPTH} levels at {path}")
        try:
            text = self.read_text(path)
        except OSError as err:
            raise FarmError(Code.BAD_ARGUMENT, f"cannot read the INI file {path}: {err.strerror or err}") from None
        self._depth += 1
        base, self._base = self._base, path.parent
        try:
            for number, line in _ini_lines(text, section):
                for piece in _ini_items(line):
                    self.item(piece, where=f"{path.name} line {number}")
        finally:
            self._depth -= 1
            self._base = base

    def ini_setting(self, key: str, value: str, where: str) -> None:
        """One `Key=Value`, by farm.povkeys' table of every POV-Ray 3.7 INI key."""
        entry, shown = povkeys.lookup(key), f"{key}={value}"
        if entry is None:
            near = povkeys.closest(key)
            raise FarmError(Code.BAD_OPTION, f"INI setting {key!r} is not a POV-Ray setting ({where})"
                                             + (f"; did you mean {near}?" if near else ""))
        lowered = entry.name.lower()
        if entry.role == povkeys.REFUSED:
            off = value.strip().lower() in _FALSE
            if not entry.is_harmless(value, off):
                raise FarmError(Code.BAD_OPTION, f"INI setting {key} is not allowed: {entry.why} ({where})")
        elif lowered in _SPECIAL_KEYS:
            getattr(self, _SPECIAL_KEYS[lowered])(entry, value, shown)
        elif entry.boolean and entry.role == povkeys.IGNORED and not _boolean(key, value):
            return                                   # Display=Off, Pause_When_Done=Off: what a farm does anyway
        elif entry.boolean:
            self.switch(("+" if _boolean(key, value) else "-") + entry.switch, where, shown=shown)
        elif entry.switch in ("I", "O", "L"):
            if value or entry.switch != "O":        # an empty Output_File_Name= is POV-Ray's default name
                self.job_switch(entry.switch, value, shown, "+")
        elif entry.switch:
            self.switch(f"+{entry.switch}{value}", where, shown=shown)
        else:
            self.note(shown, entry.why)

    def threshold(self, entry: povkeys.Key, value: str, shown: str) -> None:
        """Antialias_Threshold / Jitter_Amount: the value, kept for a later Antialias=on / Jitter=on."""
        name = entry.switch
        self._threshold[name] = value
        if name in self._settings and self._settings[name].startswith("+"):
            self._setting(name, f"+{name}{value}", shown)

    def file_gamma(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self._setting(entry.name, f"{entry.name}={value}", shown)

    def file_type_key(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.switch(f"+F{value}", "", shown=shown)

    def bits_key(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.command.bits = _whole(value, shown)

    def include_ini(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.file_argument(value if value.lower().endswith(".ini") or "[" in value else value + ".ini")

    def compression_key(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.command.quality = _whole(value, shown)

    def declare_key(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.declare(value, shown)

    def stream_file(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.command.streams.file_key(povstreams.FILE_KEYS[entry.name.lower()], value)

    def stream_console(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.command.streams.console(povstreams.CONSOLE_KEYS[entry.name.lower()], _boolean(entry.name, value))

    def append_key(self, entry: povkeys.Key, value: str, shown: str) -> None:
        self.command.streams.append = _boolean(entry.name, value)

    # -- switches ------------------------------------------------------------------------------

    def switch(self, text: str, where: str, shown: str | None = None) -> None:
        shown = shown or text
        sign, body = text[0], text[1:]
        if body == "I-":
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown!r} is not allowed: the farm reads the scene "
                                             f"from a file")
        name = next((n for n in _SWITCH_NAMES if body.upper().startswith(n)), None)
        if name is None:
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown!r} is not a POV-Ray switch ({where}); "
                                             f"see 'povfarm render --help'")
        value = _unquote(body[len(name):])
        if name in IGNORED_SWITCHES:
            self.note(shown, IGNORED_SWITCHES[name])
        elif name in povstreams.SWITCHES:
            self.command.streams.switch(name[1], sign == "+", value)
        elif name in REFUSED_SWITCHES:
            if sign == "-" and name in povkeys.REFUSED_WHEN_ON:
                return
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown!r} is not allowed: {REFUSED_SWITCHES[name]}")
        elif name in ("W", "H") and value[:1].isalpha():
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown!r} is not a POV-Ray switch ({where}); "
                                             f"see 'povfarm render --help'")
        elif name in _JOB_SWITCHES:
            self.job_switch(name, value, shown, sign)
        else:
            self.render_switch(name, sign, value, shown)

    def render_switch(self, name: str, sign: str, value: str, shown: str) -> None:
        if name in self._threshold and not value and sign == "+":
            value = self._threshold[name]        # Antialias=on after Antialias_Threshold=0.3
        self._setting(name, f"{sign}{name}{value}", shown)

    def _setting(self, name: str, switch: str, shown: str) -> None:
        try:
            allow.validate_options([switch])
        except FarmError as err:
            raise FarmError(Code.BAD_OPTION, str(err).replace(repr(switch), repr(shown), 1)) from None
        self._settings.pop(name, None)           # the last one given wins, in the order given
        self._settings[name] = switch

    def declare(self, value: str, shown: str) -> None:
        option = f"Declare={value}"
        try:
            allow.validate_options([option])
        except FarmError:
            raise FarmError(Code.BAD_OPTION, f"{shown!r}: Declare takes NAME=NUMBER") from None
        self._declares.pop(value.partition("=")[0], None)
        self._declares[value.partition("=")[0]] = option

    def job_switch(self, name: str, value: str, shown: str, sign: str) -> None:
        command = self.command
        if name in ("W", "H"):
            setattr(command, "width" if name == "W" else "height", _whole(value, shown, minimum=1))
        elif name == "I":
            command.scene = self._path(_required(value, shown))
        elif name == "O":
            command.output = _required(value, shown)
        elif name == "L":
            command.library_paths.append(self._path(_required(value, shown), prefer_base=False))
        elif name == "F":
            self.file_type(sign, value, shown)
        elif name == "KC":
            command.animation["cyclic"] = sign == "+"
        elif name in ("KI", "KF"):
            key = "initial_clock" if name == "KI" else "final_clock"
            command.animation[key] = _number(value, shown)
        else:
            key = {"KFI": "first", "KFF": "last", "SF": "subset_first", "EF": "subset_last"}[name]
            command.animation[key] = _whole(value, shown)

    def file_type(self, sign: str, value: str, shown: str) -> None:
        """+F<type>[bits] / -F: the output file's type, and whether POV-Ray writes one at all (as in
        POV-Ray, -F turns the file off and +F alone turns it on with the type it had)."""
        self.command.to_file = sign == "+"
        if not value:
            return
        letter, digits = value[:1].upper(), value[1:]
        if letter in _UNSUPPORTED_FORMATS:
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown!r}: the farm does not write "
                                             f"{_UNSUPPORTED_FORMATS[letter]} files; use +FN (PNG), +FP (PPM), "
                                             f"+FT/+FC (Targa) or +FJ (JPEG)")
        if letter not in FORMATS or (digits and not digits.isdigit()):
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown!r} is not an output file type "
                                             f"(+FN, +FN16, +FP, +FP16, +FT, +FC, +FJ)")
        self.command.file_type, self.command.file_type_given = letter, True
        if letter == "J":
            if digits:
                self.note(shown, povkeys.JPEG_QUALITY_NOTE)
        elif digits:
            bits = int(digits)
            if letter in "NP" and bits not in (8, 16):
                raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown!r}: the farm renders 8 or 16 bits "
                                                 f"per channel")
            self.command.bits = bits

    def defaults(self, path: Path) -> None:
        """POV-Ray's own povray.ini, read first as `povray` reads it. What it ignores goes unsaid (Debian's
        turns the display on), and its file type is a default that `--output x.jpg` may still change."""
        self._quiet = True
        try:
            self.ini_file(path)
        except FarmError as err:
            raise FarmError(err.code, f"{err} (in POV-Ray's defaults {path}; --no-povray-ini skips them)") from None
        finally:
            self._quiet = False
        self.command.file_type_given = False

    def note(self, shown: str, why: str) -> None:
        """One note per reason: `-D, Display=On: ignored, nodes never open a display`."""
        if self._quiet:
            return
        shown_list = self._ignored.setdefault(why, [])
        if shown not in shown_list:
            shown_list.append(shown)

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, name: str, prefer_base: bool = True) -> Path:
        """A name relative to the working folder, as POV-Ray takes it; inside an INI file, when nothing is
        there, relative to the INI's own folder (where `povray` would fail, the farm helps)."""
        path = Path(os.path.expanduser(name))
        if path.is_absolute():
            return path
        first = self.cwd / path
        if prefer_base and self._base != self.cwd and not self.exists(first):
            second = self._base / path
            if self.exists(second) or self.exists(second.with_suffix(".pov")):
                return second
        if not prefer_base and self._base != self.cwd and not self.exists(first) and self.exists(self._base / path):
            return self._base / path
        return first

    def _find(self, name: str, what: str) -> Path:
        path = self._path(name)
        if self.exists(path):
            return path
        for folder in self.command.library_paths:   # POV-Ray looks for INI files in the library paths too
            if self.exists(folder / name):
                return folder / name
        raise FarmError(Code.BAD_ARGUMENT, f"{name}: no such {what}")

    def finish(self) -> PovCommand:
        command = self.command
        command.options = [*self._settings.values(), *self._declares.values()]
        command.notes.extend(f"{', '.join(shown)}: ignored, {why}" for why, shown in self._ignored.items())
        for name in command.streams.files.values():
            if Path(name).name != name or name in (".", ".."):
                raise FarmError(Code.BAD_OPTION, f"stream file {name!r}: POV-Ray writes its stream files "
                                                 f"beside the image; give a plain file name")
        settle_format(command)
        return command


def settle_format(command: PovCommand) -> None:
    """What the file type implies, as POV-Ray does it: no alpha in PPM and JPEG files (the pixels are
    those of a render without +UA), 8 bits only in Targa and JPEG files."""
    name = FORMATS[command.file_type][0]
    if command.file_type in _NO_ALPHA and "+UA" in command.options:
        command.options.remove("+UA")
        command.notes.append(f"+UA: ignored, {name} files have no alpha channel")
    if command.file_type not in "NP" and command.bits not in (None, 8):
        raise FarmError(Code.BAD_OPTION, f"{name} files hold 8 bits per channel; 16 bits need +FN16 or +FP16")


def parse(arguments: Sequence[str], cwd: Path, read_text: Callable[[Path], str] | None = None,
          exists: Callable[[Path], bool] | None = None, ini_files: Iterable[Path] = (),
          defaults: Path | None = None, include: str | None = None) -> PovCommand:
    """Read POV-Ray arguments (`scene.pov`, `scene.ini`, `+W320`, `Width=320`, ...) in order.
    `defaults` (POV-Ray's povray.ini, farm.povini) is read first, then `include` ($POVINC) is added to the
    library paths, then `ini_files` (the farm's --ini), so the arguments override them all."""
    reader = _Reader(Path(cwd), read_text or (lambda path: path.read_text(encoding="utf-8", errors="replace")),
                     exists or (lambda path: path.exists()))
    if defaults is not None:
        reader.defaults(defaults)
    if include:
        reader.command.library_paths.append(reader._path(include, prefer_base=False))
    for path in ini_files:
        reader.ini_file(reader._find(str(path), "INI file"))
    for argument in arguments:
        reader.argument(argument)
    return reader.finish()


def rendering_options(options: Sequence[str]) -> list[str]:
    """`--option` values, each of which may hold several switches ("+A0.3 +R3"); each must be a rendering
    switch (validated by farm.options)."""
    found: list[str] = []
    for option in options:
        pieces = _tokens(option)
        several = len(pieces) > 1 and all(piece[0] in "+-" for piece in pieces)
        if several:
            found.extend(_unquote(piece) for piece in pieces)
        else:
            found.append(option)
    allow.refuse_libraries(found)
    return list(allow.validate_options(found).options)


# -- output names ---------------------------------------------------------------------------------

def is_numbered(first: int, last: int) -> bool:
    """Whether POV-Ray numbers the output files of an animation from `first` to `last` (measured:
    +KFI1 +KFF1 and +KFI0 +KFF0 write `scene.png`, +KFI3 +KFF3 writes `scene3.png`)."""
    return first != last or last > 1


def output_base(scene: Path, output: str | None, extension: str, cwd: Path) -> tuple[Path, str]:
    """(folder + stem, extension) of the image, by POV-Ray 3.7's rules (measured): no +O -> beside the scene,
    named after it; `+Odir/` -> in that folder, named after the scene; `+Oname` -> `name` plus the
    format's extension unless `name` already ends in exactly that extension (so `+Oout.jpg` with PNG
    output gives `out.jpg.png`, never PNG data under a JPEG name)."""
    if not output:
        return scene.parent / scene.stem, extension
    if output.endswith(("/", os.sep)):
        return _resolve(cwd, output) / scene.stem, extension
    path = _resolve(cwd, output)
    if path.name.endswith(extension) and len(path.name) > len(extension):
        return path.with_name(path.name[:-len(extension)]), extension
    return path, extension


def output_path(base: tuple[Path, str], frame: int | None = None, digits: int = 0) -> Path:
    """The file for a still (frame None) or for one frame, numbered as POV-Ray numbers them."""
    stem, extension = base
    number = "" if frame is None else f"{frame:0{digits}d}"
    return stem.with_name(stem.name + number + extension)


def _resolve(cwd: Path, name: str) -> Path:
    path = Path(os.path.expanduser(name))
    return path if path.is_absolute() else cwd / path


# -- small readers --------------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    """Whitespace-separated items, where double quotes keep spaces inside an item (POV-Ray's rule)."""
    return _TOKEN.findall(text)


def _unquote(text: str) -> str:
    return text.replace('"', "") if '"' in text else text


def _ini_lines(text: str, section: str | None) -> Iterable[tuple[int, str]]:
    """(line number, content) of the lines POV-Ray reads: those before the first [section], and those of
    the named section; comments (`;` and `//`) removed."""
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.split(r";|//", raw, maxsplit=1)[0].strip() if not _quoted_comment(raw) else raw.strip()
        if not line:
            continue
        if line.startswith("["):
            current = line[1:line.find("]")].strip().lower() if "]" in line else line[1:].lower()
            continue
        if current is None or (section is not None and current == section.lower()):
            yield number, line


def _quoted_comment(raw: str) -> bool:
    """A `;` inside quotes (a file name) is not a comment."""
    quote = raw.find('"')
    semi = raw.find(";")
    return 0 <= quote < semi


def _ini_items(line: str) -> list[str]:
    """A line of switches (`+W320 +H240`) is several items; `Key=value` is one, spaces and all."""
    if line[0] in "+-":
        return [_unquote(piece) for piece in _tokens(line)]
    return [line]


def _boolean(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise FarmError(Code.BAD_OPTION, f"INI setting {key}={value!r} is not on or off")


def _whole(value: str, shown: str, minimum: int = 0) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FarmError(Code.BAD_OPTION, f"{shown!r} needs a whole number") from None
    if number < minimum:
        raise FarmError(Code.BAD_OPTION, f"{shown!r} must be at least {minimum}")
    return number


def _number(value: str, shown: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FarmError(Code.BAD_OPTION, f"{shown!r} needs a number") from None


def _required(value: str, shown: str) -> str:
    if not value:
        raise FarmError(Code.BAD_OPTION, f"{shown!r} needs a file name")
    return value


def library_option(path: str) -> str:
    """The +L switch for a library folder inside a bundle, relative to the scene's folder there; quoted
    when it has spaces, since POV-Ray splits its option values on spaces."""
    text = PurePosixPath(path).as_posix()
    return f'+L"{text}"' if " " in text else f"+L{text}"
