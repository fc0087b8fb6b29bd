"""Ages as people write them: `30d`, `12h`, `90m`, `45s`, `2w`, or plain seconds."""

from __future__ import annotations

import re

from farm.wire import shown

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_AGE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([smhdw]?)\s*", re.IGNORECASE)


def parse_age(text: object) -> float:
    """Seconds from `30d` (days), `12h`, `90m`, `45s`, `2w` (weeks) or a number of seconds; ValueError
    with a sentence otherwise."""
    match = _AGE.fullmatch(str(text))
    if match is None:
        raise ValueError(f"an age is a number with s, m, h, d or w after it (30d: thirty days), "
                         f"not {shown(text)}")
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


def age_text(seconds: float) -> str:
    """The shortest exact way parse_age reads `seconds` back: 2592000 -> 30d."""
    for unit in ("w", "d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:.15g}{unit}"
    return f"{seconds:.15g}s"
