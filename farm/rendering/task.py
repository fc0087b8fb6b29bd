"""The node's unit of work: a task as `nodes.poll` hands it over, and how its render ended.

The wire's task struct is read in one place, `Task.from_wire`: it checks every member's type, gives the
members an older controller did not send their defaults (a still, no time limit, ordinary rows, no shared
radiosity cache), and says in one sentence what is wrong with a malformed task. The node's code after it
reads typed attributes, never the struct (docs/protocol.md, nodes.poll).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from farm.faults import Code, FarmError
from farm.kinds import ROWS
from farm.options import validate_options
from farm.radiosity import band_pieces
from farm.rows import ZLIB
from farm.shear import Shear
from farm.unitlog import UnitLog
from farm.wire import shown


@dataclass(frozen=True)
class Task:
    """One leased unit: rows [row_start, row_end) of frames frame..frame_last of a job's scene."""
    lease: str
    job: int
    frame: int
    strip: int              # the unit's index in its job
    attempt: int
    width: int
    height: int
    row_start: int          # 0-based
    row_end: int            # exclusive
    bundle: str             # the scene bundle's digest
    scene: str              # the scene file's path inside the bundle
    options: tuple[str, ...]
    channels: int           # 3, or 4 with alpha
    bits: int               # 8 or 16 per channel
    # Members an older controller did not send, with what their absence meant:
    frame_last: int         # the frame itself: one frame
    animation: tuple[str, ...] = ()     # POV-Ray's animation switches; none for a still
    time_limit: float = 0.0             # seconds of wall clock; 0 for none
    kind: str = ROWS             # ROWS, PRETRACE or PREVIEW (an unknown kind renders as rows)
    radiosity_cache: bool = False       # load the frame's shared radiosity cache (nodes.radiosity_cache)
    cache_pending: bool = False         # ...which is not complete yet: it is fed as it comes (cache_feed)
    live: bool = False                  # a viewer watches: send finished blocks as they come (nodes.live)
    shear: int = 0                      # the rows are the frame's sheared image's, at this step (farm.shear); 0: none
    fold: bool = False                  # a band of a folded pre-pass: its mirror rows too (farm.radiosity)

    @classmethod
    def from_wire(cls, wire: Any) -> Task:
        """The task in a `nodes.poll` (or `nodes.complete_and_poll`) reply; FarmError (BAD_ARGUMENT)
        naming the member when it is malformed."""
        if not isinstance(wire, dict):
            raise _malformed(f"a task must be a struct, not {shown(wire)}")
        frame = _whole(wire, "frame")
        return cls(
            lease=_text(wire, "lease"), job=_whole(wire, "job"), frame=frame, strip=_whole(wire, "strip"),
            attempt=_whole(wire, "attempt"), width=_whole(wire, "width", low=1), height=_whole(wire, "height", low=1),
            row_start=_whole(wire, "row_start"), row_end=_whole(wire, "row_end", low=1),
            bundle=_text(wire, "bundle"), scene=_text(wire, "scene"), options=_texts(wire, "options"),
            channels=_choice(wire, "channels", (3, 4)), bits=_choice(wire, "bits", (8, 16)),
            frame_last=_whole(wire, "frame_last", default=frame), animation=_texts(wire, "animation", default=()),
            time_limit=_seconds(wire, "time_limit"), kind=_text(wire, "kind", default=ROWS),
            radiosity_cache=_flag(wire, "radiosity_cache"), cache_pending=_flag(wire, "cache_pending"),
            live=_flag(wire, "live"),
            shear=_whole(wire, "shear", default=0), fold=_flag(wire, "fold"))

    @property
    def frames(self) -> range:
        """The frames this unit renders."""
        return range(self.frame, self.frame_last + 1)

    @property
    def sheared_part(self) -> bool:
        """The unit's rows are some of its frame's sheared image: POV-Ray renders their blocks alone."""
        return bool(self.shear) and (self.row_start, self.row_end) != (0, self.height)

    @property
    def layout(self) -> Shear:
        """How its frame's rows lie in the sheared image it renders rows of (farm.shear)."""
        return Shear(self.width, self.height, validate_options(self.options).block, self.shear)

    @property
    def band_pieces(self) -> list[tuple[int, int]]:
        """The frame's rows a pre-pass unit pretraces, in the order POV-Ray sweeps them (farm.radiosity)."""
        return band_pieces(self.height, self.row_start, self.row_end, self.fold)

    @property
    def alpha(self) -> bool:
        return self.channels == 4


@dataclass(frozen=True)
class RenderOutcome:
    """How one POV-Ray run on a node ended.

    kind: "done" (rows delivered), "failed" (error, with scene_error when the scene itself is broken),
    "release" (hand the lease back: not the unit's fault) or "dropped" (the controller said stop)."""
    kind: str
    rows: bytes = b""
    seconds: float = 0.0
    error: str = ""
    scene_error: bool = False
    encoding: str = ZLIB   # of rows (farm.rows.ENCODINGS)
    files: bytes = b""     # the files the scene wrote (farm.scenefiles' zip), b"" when none
    # POV-Ray's own seconds by stage (povray.stage_seconds), for the node's profile line
    stages: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    # The same rows as plain zlib, made when asked: for a controller that takes no other encoding.
    as_zlib: Callable[[], bytes] | None = field(default=None, compare=False, repr=False)
    log: UnitLog | None = field(default=None, compare=False, repr=False)   # POV-Ray's run, when it ran
    # A radiosity pre-pass: seconds its pretrace spent on each few rows (radiosity.sweep_costs), for the
    # controller's next cut of the scene's pre-pass.
    costs: tuple[tuple[int, int, float], ...] = field(default=(), compare=False, repr=False)
    cache_wait: float = 0.0     # seconds POV-Ray waited for its frame's radiosity cache (not in `seconds`)

    @property
    def overhead(self) -> float | None:
        """Seconds of the run spent other than tracing and shooting photons (start-up, parse, caches loaded),
        by POV-Ray's own figures; None when it gave none (a radiosity pre-pass, a run that failed)."""
        if not self.stages:
            return None
        return max(0.0, self.seconds - self.stages.get("trace", 0.0) - self.stages.get("photons", 0.0))


_MISSING = object()


def _malformed(why: str) -> FarmError:
    return FarmError(Code.BAD_ARGUMENT, f"the controller sent a malformed task: {why}")


def _member(wire: dict, name: str, default: Any) -> Any:
    value = wire.get(name, default)
    if value is _MISSING:
        raise _malformed(f"it has no {name}")
    return value


def _whole(wire: dict, name: str, default: Any = _MISSING, low: int = 0) -> int:
    value = _member(wire, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _malformed(f"{name} must be a whole number of at least {low}, not {shown(value)}")
    return value


def _choice(wire: dict, name: str, choices: tuple[int, ...]) -> int:
    value = _member(wire, name, _MISSING)
    if isinstance(value, bool) or not isinstance(value, int) or value not in choices:
        raise _malformed(f"{name} must be one of {', '.join(map(str, choices))}, not {shown(value)}")
    return value


def _seconds(wire: dict, name: str) -> float:
    value = _member(wire, name, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise _malformed(f"{name} must be a number of seconds, not {shown(value)}")
    return float(value)


def _text(wire: dict, name: str, default: Any = _MISSING) -> str:
    value = _member(wire, name, default)
    if not isinstance(value, str) or not value:
        raise _malformed(f"{name} must be a non-empty text, not {shown(value)}")
    return value


def _texts(wire: dict, name: str, default: Any = _MISSING) -> tuple[str, ...]:
    value = _member(wire, name, default)
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        raise _malformed(f"{name} must be an array of texts, not {shown(value)}")
    return tuple(value)


def _flag(wire: dict, name: str) -> bool:
    value = _member(wire, name, False)
    if not isinstance(value, bool):
        raise _malformed(f"{name} must be a boolean, not {shown(value)}")
    return value
