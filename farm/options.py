"""Which POV-Ray options a job may carry, and what they imply for the farm.

Users pass rendering options (`+A0.3`, `+UA`, `Declare=Detail=2`, ...). The
farm itself owns size, rows, output, threads, display and input, so those are
refused with a fault that names the option. Anything not on the allowlist is
refused too: an unknown switch could write files or run commands on every node.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from typing import Iterable, Iterator

from farm.faults import Code, FarmError
from farm.wire import shown

# Rendering switches a job may set, by POV-Ray's switch name. Value pattern per switch.
_NUMBER = r"[0-9]*\.?[0-9]*"
ALLOWED_SWITCHES: dict[str, str] = {
    "A": _NUMBER,          # anti-aliasing (threshold)
    "AM": r"[123]?",       # anti-aliasing method
    "AG": _NUMBER,         # anti-aliasing gamma
    "J": _NUMBER,          # jitter amount
    "R": r"[0-9]*",        # anti-aliasing depth
    "Q": r"[0-9]*",        # quality
    "UA": "",              # alpha channel (RGBA output)
    "MB": r"[0-9]*",       # bounding threshold
    "MV": _NUMBER,         # language version
    "UL": "", "UV": "", "UR": "", "UD": "",   # light/vista buffers, remove bounds, draw vistas
    "BS": r"[0-9]*",       # render block size (the farm aligns strips to it)
    "BM": r"[12]?",        # bounding method (1 BVH, 2 BSP): speed only
    "SU": "",              # split unions (bounding): speed only
    "HR": "",              # high reproducibility
    "RVP": "",             # radiosity vain pretrace
    "K": _NUMBER,          # clock value for a single frame
}
# Every switch above is rendered once by the real POV-Ray in tests/test_cli_povray.py, so none is on
# the list that POV-Ray itself refuses (+HT was: "Failed to parse command-line option").

# Switches that say what to render rather than how: `povfarm render` takes them after the scene as job
# settings (farm.povcmd), and a job's options may not carry them. Switch -> (an example, povfarm's flag).
JOB_SWITCHES: dict[str, tuple[str, str]] = {
    "W": ("+W640", "--width"), "H": ("+H480", "--height"), "O": ("+Oout.png", "--output"), "F": ("+FP", ""),
    "KFI": ("+KFI1 +KFF30", "--frames"), "KFF": ("+KFI1 +KFF30", "--frames"),
    "KI": ("+KI0 +KF1", "--clock"), "KF": ("+KI0 +KF1", "--clock"), "KC": ("+KC", "--cyclic"),
    "SF": ("+SF3 +EF5", "--subset"), "EF": ("+SF3 +EF5", "--subset"),
}
_AFTER_SCENE = "give it after the scene, as with povray (povfarm render scene.pov {example}){flag}"
RADIOSITY_FILES = "radiosity files are managed by the farm"
# Switches the farm sets itself: the reason is part of the fault text.
FARM_OWNED: dict[str, str] = {
    **{name: _AFTER_SCENE.format(example=example, flag=f", or {flag}" if flag else "")
       for name, (example, flag) in JOB_SWITCHES.items()},
    "SR": "the farm chooses the rows",
    "ER": "the farm chooses the rows", "SC": "the farm renders whole rows",
    "EC": "the farm renders whole rows", "I": "the scene is the submitted file",
    "WT": "each node sets its own thread count", "D": "nodes never open a display",
    "V": "nodes set verbosity", "P": "nodes never pause",
    "GA": "log files are not allowed", "GD": "log files are not allowed",
    "GF": "log files are not allowed", "GR": "log files are not allowed",
    "GS": "log files are not allowed", "GW": "log files are not allowed",
    "RF": RADIOSITY_FILES,
}
# +L: only a folder inside the job's bundle, relative to the scene (the client ships local library
# folders in the bundle and names them so); the node's own library paths come after it.
_LIBRARY = re.compile(r'^"?(?![/\\])(?![A-Za-z]:)[^"\x00-\x1f:\\]{1,200}"?$')
_LIBRARY_HINT = "give it after the scene (povfarm render scene.pov +L../lib) and it is shipped with it"

_SWITCH_NAMES = sorted(set(ALLOWED_SWITCHES) | set(FARM_OWNED) | {"L"}, key=len, reverse=True)
_FILE_GAMMA = re.compile(r"(?i)^file_gamma=(srgb|[0-9]*\.?[0-9]+)$")   # the gamma of the image file
_DECLARE = re.compile(r"(?i)^declare=([A-Za-z_][A-Za-z0-9_]{0,39})=(-?[0-9]*\.?[0-9]+(e-?[0-9]+)?)$")
MAX_OPTIONS = 64


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    options: tuple[str, ...]   # validated, in the user's order
    alpha: bool                # +UA: the image has an alpha channel
    block: int                 # render block size: strip edges go on its multiples
    antialias: bool = False    # +A: anti-aliasing is on (method 1 samples differently near block edges)
    block_given: bool = False  # +BS: the user chose the block size


_ANTIALIASING_SWITCHES = frozenset({"A", "AM", "AG", "J", "R"})


def without_antialiasing(options: Iterable[str]) -> tuple[str, ...]:
    """Checked options minus the anti-aliasing switches (+A, +AM, +AG, +J, +R): for a quick preview."""
    kept = []
    for option in options:
        parts = _split_switch(option) if option[:1] in "+-" else None
        if parts is None or parts[0] not in _ANTIALIASING_SWITCHES:
            kept.append(option)
    return tuple(kept)


PREVIEW_QUALITY = 8   # POV-Ray's quality 9 adds media and radiosity; 8 renders everything else


def preview_options(options: Iterable[str], radiosity: bool) -> tuple[str, ...]:
    """A preview's options: without anti-aliasing, and for a scene with radiosity at quality 8 at most
    (no radiosity, no media). Radiosity's pretrace costs about the same at any size (balcony: 6 s of CPU
    for an 80x60 preview, against 0.3 s at +Q8), and it would compete with the frame's own pre-pass."""
    kept = without_antialiasing(options)
    if not radiosity:
        return kept
    quality, others = 9, []
    for option in kept:
        parts = _split_switch(option) if option[:1] in "+-" else None
        if parts is not None and parts[0] == "Q":
            quality = int(parts[1]) if parts[1] else 9
        else:
            others.append(option)
    return (*others, f"+Q{min(quality, PREVIEW_QUALITY)}")


def _split_switch(option: str) -> tuple[str, str] | None:
    """('A', '0.3') for '+A0.3'; None when no known switch matches."""
    body = option[1:]
    for name in _SWITCH_NAMES:
        if body.upper().startswith(name):
            return name, body[len(name):]
    return None


def _check_switch(option: str) -> tuple[str, str]:
    parts = _split_switch(option)
    if parts is None:
        raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} is not allowed")
    name, value = parts
    if name == "L":
        if (not _LIBRARY.match(value) or value.count('"') not in (0, 2)
                or (" " in value and not value.startswith('"'))):
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} is not allowed: a library path must be "
                                             f"a folder beside the scene; {_LIBRARY_HINT}")
        return name, value
    if name in FARM_OWNED:
        raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} is not allowed: {FARM_OWNED[name]}")
    if not re.fullmatch(ALLOWED_SWITCHES[name], value):
        raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} has a bad value"
                                         + (" (one switch per --option)" if " " in value else ""))
    return name, value


def validate_options(options: Iterable[str], default_block: int = 32) -> RenderOptions:
    """Check every option against the allowlist; return them with what they imply."""
    checked: list[str] = []
    alpha, block, antialias, block_given = False, default_block, False, False
    for option in options:
        if not isinstance(option, str) or not option or len(option) > 100:
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {shown(option)} is not a short string")
        if _DECLARE.match(option) or _FILE_GAMMA.match(option):
            checked.append(option)
            continue
        if option[0] not in "+-":
            raise FarmError(Code.BAD_OPTION,
                            f"POV-Ray option {option!r} is not allowed: use +X/-X switches, Declare=NAME=VALUE "
                            f"or File_Gamma=VALUE")
        name, value = _check_switch(option)
        if name == "UA":
            alpha = option[0] == "+"
        elif name == "A":
            antialias = option[0] == "+"
        elif name == "BS" and value:
            block, block_given = int(value), True
            if not 1 <= block <= 4096:
                raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r}: block size out of range")
        checked.append(option)
    if len(checked) > MAX_OPTIONS:
        raise FarmError(Code.BAD_OPTION, f"too many POV-Ray options (at most {MAX_OPTIONS})")
    return RenderOptions(tuple(checked), alpha, block, antialias, block_given)


def check_libraries(options: Iterable[str], scene: str) -> None:
    """Refuse a +L whose folder, taken from the scene's folder in the bundle as POV-Ray takes it (the
    node runs it there), is outside the bundle: library folders travel inside it, and `+L../..` would
    have POV-Ray search the node's own folders instead."""
    for option, value in _libraries(options):
        folder = posixpath.normpath(posixpath.join(posixpath.dirname(scene), value.strip('"')))
        if folder == ".." or folder.startswith("../"):
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} is not allowed: seen from the scene "
                                             f"{scene!r}, that folder is outside the job's bundle; {_LIBRARY_HINT}")


def refuse_libraries(options: Iterable[str]) -> None:
    """Refuse +L among options given apart from the scene (`--option`): a library folder must be packed
    with the scene, so that the node finds it inside the bundle."""
    library = next(_libraries(options), None)
    if library is not None:
        raise FarmError(Code.BAD_OPTION, f"POV-Ray option {library[0]!r} is not allowed in --option: {_LIBRARY_HINT}")


def _libraries(options: Iterable[str]) -> Iterator[tuple[str, str]]:
    for option in options:
        parts = _split_switch(option) if option[:1] in "+-" else None
        if parts is not None and parts[0] == "L":
            yield option, parts[1]

