"""Animations: POV-Ray's frame and clock settings, validated, and how frames are named.

The farm mirrors POV-Ray's own switches: frames FIRST-LAST (+KFI/+KFF), the clock
START,END (+KI/+KF), cyclic (+KC) and a subset A-B (+SF/+EF) that renders only some
frames with the clock values they have in the whole animation. Every unit of work
passes the whole animation to POV-Ray plus the subset it renders, so POV-Ray computes
each frame's clock itself and every frame is its own render's bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from farm.faults import Code, FarmError

MAX_FRAME = 999_999
MAX_FRAMES = 10_000


@dataclasses.dataclass(frozen=True)
class Animation:
    first: int = 1                 # +KFI
    last: int = 1                  # +KFF
    initial_clock: float = 0.0     # +KI
    final_clock: float = 1.0       # +KF
    cyclic: bool = False           # +KC
    subset_first: int = 0          # +SF; 0 means from the first frame
    subset_last: int = 0           # +EF; 0 means to the last frame

    def __post_init__(self) -> None:
        for name in ("first", "last", "subset_first", "subset_last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FRAME:
                raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a frame number from 0 to {MAX_FRAME}")
        for name in ("initial_clock", "final_clock"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise FarmError(Code.BAD_ARGUMENT, f"{name} must be a finite number")
        if self.last < self.first:
            raise FarmError(Code.BAD_ARGUMENT, f"the last frame ({self.last}) is before the first ({self.first})")
        if not self.first <= self.rendered_first <= self.rendered_last <= self.last:
            raise FarmError(Code.BAD_ARGUMENT, f"the subset {self.rendered_first}-{self.rendered_last} is not "
                                               f"within frames {self.first}-{self.last}")
        if self.rendered_last - self.rendered_first + 1 > MAX_FRAMES:
            raise FarmError(Code.BAD_ARGUMENT, f"a job renders at most {MAX_FRAMES} frames")

    @property
    def rendered_first(self) -> int:
        return self.subset_first or self.first

    @property
    def rendered_last(self) -> int:
        return self.subset_last or self.last

    @property
    def digits(self) -> int:
        """POV-Ray pads frame numbers in file names to the width of the final frame number."""
        return len(str(self.last))

    def file_name(self, stem: str, frame: int, suffix: str = ".png") -> str:
        return f"{stem}{frame:0{self.digits}d}{suffix}"

    def povray_options(self) -> list[str]:
        """The animation as POV-Ray switches (without the subset, which each unit adds for itself)."""
        return [f"+KFI{self.first}", f"+KFF{self.last}", f"+KI{self.initial_clock!r}",
                f"+KF{self.final_clock!r}", "+KC" if self.cyclic else "-KC"]

    def to_spec(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_spec(cls, spec: Any) -> "Animation":
        if not isinstance(spec, dict):
            raise FarmError(Code.BAD_ARGUMENT, "animation must be a struct")
        unknown = set(spec) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise FarmError(Code.BAD_ARGUMENT, f"unknown animation settings: {', '.join(sorted(unknown))}")
        values = dict(spec)
        for name in ("initial_clock", "final_clock"):
            if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
                values[name] = float(values[name])
        if "cyclic" in values and not isinstance(values["cyclic"], bool):
            raise FarmError(Code.BAD_ARGUMENT, "cyclic must be true or false")
        return cls(**values)


def parse_range(text: str, what: str) -> tuple[int, int]:
    """'1-30' or '7' -> (1, 30) / (7, 7), for --frames and --subset."""
    first, sep, last = text.partition("-")
    try:
        low = int(first)
        high = int(last) if sep else low
    except ValueError:
        raise FarmError(Code.BAD_ARGUMENT, f"{what} takes FIRST-LAST, like 1-30, not {text!r}") from None
    return low, high


def parse_clock(text: str) -> tuple[float, float]:
    """'0,1' -> (0.0, 1.0), for --clock."""
    start, sep, end = text.partition(",")
    try:
        values = (float(start), float(end))
    except ValueError:
        raise FarmError(Code.BAD_ARGUMENT, f"--clock takes START,END, like 0,1, not {text!r}") from None
    if not sep or not all(math.isfinite(v) for v in values):
        raise FarmError(Code.BAD_ARGUMENT, f"--clock takes START,END, like 0,1, not {text!r}")
    return values
