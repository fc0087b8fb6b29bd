"""Which POV-Ray options a job may carry, and what they imply for the farm.

Users pass rendering options (`+A0.3`, `+UA`, `Declare=Detail=2`, ...). The
farm itself owns size, rows, output, threads, display and input, so those are
refused with a fault that names the option. Anything not on the allowlist is
refused too: an unknown switch could write files or run commands on every node.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from farm.faults import Code, FarmError

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
    "K": _NUMBER,          # clock value for a single frame
    "HT": r"[0-9.]*",      # render pattern tuning
}

# Switches the farm sets itself: the reason is part of the fault text.
FARM_OWNED: dict[str, str] = {
    "W": "use --width", "H": "use --height", "O": "the farm chooses the output file",
    "F": "the farm chooses the output format", "SR": "the farm chooses the rows",
    "ER": "the farm chooses the rows", "SC": "the farm renders whole rows",
    "EC": "the farm renders whole rows", "I": "the scene is the submitted file",
    "WT": "each node sets its own thread count", "D": "nodes never open a display",
    "V": "nodes set verbosity", "P": "nodes never pause", "L": "library paths are the node's own",
    "GA": "log files are not allowed", "GD": "log files are not allowed",
    "GF": "log files are not allowed", "GR": "log files are not allowed",
    "GS": "log files are not allowed", "GW": "log files are not allowed",
    "KFI": "animations are not supported yet", "KFF": "animations are not supported yet",
    "KI": "animations are not supported yet", "KF": "animations are not supported yet",
    "KC": "animations are not supported yet", "SF": "animations are not supported yet",
    "EF": "animations are not supported yet", "RF": "radiosity files are managed by the farm",
}

_SWITCH_NAMES = sorted(set(ALLOWED_SWITCHES) | set(FARM_OWNED), key=len, reverse=True)
_DECLARE = re.compile(r"(?i)^declare=([A-Za-z_][A-Za-z0-9_]{0,39})=(-?[0-9]*\.?[0-9]+(e-?[0-9]+)?)$")
MAX_OPTIONS = 64


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    options: tuple[str, ...]   # validated, in the user's order
    alpha: bool                # +UA: the image has an alpha channel
    block: int                 # render block size: strip edges go on its multiples


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
    if name in FARM_OWNED:
        raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} is not allowed: {FARM_OWNED[name]}")
    if not re.fullmatch(ALLOWED_SWITCHES[name], value):
        raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} has a bad value")
    return name, value


def validate_options(options: Iterable[str], default_block: int = 32) -> RenderOptions:
    """Check every option against the allowlist; return them with what they imply."""
    checked: list[str] = []
    alpha, block = False, default_block
    for option in options:
        if not isinstance(option, str) or not option or len(option) > 100:
            raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r} is not a short string")
        if _DECLARE.match(option):
            checked.append(option)
            continue
        if option[0] not in "+-":
            raise FarmError(Code.BAD_OPTION,
                            f"POV-Ray option {option!r} is not allowed: use +X/-X switches or Declare=NAME=VALUE")
        name, value = _check_switch(option)
        if name == "UA":
            alpha = option[0] == "+"
        elif name == "BS" and value:
            block = int(value)
            if not 1 <= block <= 4096:
                raise FarmError(Code.BAD_OPTION, f"POV-Ray option {option!r}: block size out of range")
        checked.append(option)
    if len(checked) > MAX_OPTIONS:
        raise FarmError(Code.BAD_OPTION, f"too many POV-Ray options (at most {MAX_OPTIONS})")
    return RenderOptions(tuple(checked), alpha, block)
